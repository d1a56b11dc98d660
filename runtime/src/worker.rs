//! The child's side: take the control socket, check the handshake, then serve calls: read a
//! frame, look the function up, decode, call (catching a panic), encode, reply.
//!
//! A one-shot child (a `Process`) exits after its call; a pool worker serves until its parent
//! hangs up, and ignores `SIGINT` (Ctrl-C goes to the whole process group: the parent decides).

use crate::error::Error;
use crate::function::ProcessFn;
use crate::panic;
use crate::registry;
use crate::sys;
use crate::wire::codec::{self, ValueReader};
use crate::wire::frame::{FrameReader, Kind, OutFrame, RecvError};
use crate::wire::handshake::build_id;
use crate::wire::message::{self, FailReport, Hello, PanicReport, PROTOCOL};

/// Exit code of a process that was marked as a worker but given no control socket.
pub(crate) const EXIT_NOT_A_WORKER: i32 = 86;
/// Exit code after the parent broke the protocol.
pub(crate) const EXIT_PROTOCOL: i32 = 87;
/// Exit code after refusing a parent of another build.
pub(crate) const EXIT_BUILD_MISMATCH: i32 = 88;
/// Exit code when the parent went away.
pub(crate) const EXIT_PARENT_GONE: i32 = 89;

/// How a registered function is called on bytes: decode one argument tuple from the reader,
/// run, append the encoded output.
pub(crate) type Invoke = fn(&mut ValueReader<'_>, &mut Vec<u8>) -> Result<(), CallFailure>;

/// Why a call did not return a value.
#[derive(Debug)]
pub(crate) enum CallFailure {
    Panic(PanicReport),
    Fail(Error),
}

/// The dispatch entry of `F`, generic so that the macro emits no logic.
pub(crate) fn invoke<F: ProcessFn>(args: &mut ValueReader<'_>, out: &mut Vec<u8>) -> Result<(), CallFailure> {
    // Decoding and encoding run under the catch too: serde impls may panic.
    let args = match panic::catch(|| F::decode_args(args)) {
        Ok(Ok(args)) => args,
        Ok(Err(e)) => return Err(CallFailure::Fail(e)),
        Err(report) => return Err(CallFailure::Panic(report)),
    };
    match panic::catch(|| {
        let output = F::call(args);
        F::encode_output(&output, out)
    }) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CallFailure::Fail(e)),
        Err(report) => Err(CallFailure::Panic(report)),
    }
}

/// How a registered function runs a batch: `count` argument tuples from the reader, each
/// result (or failure) appended to the batch reply.
pub(crate) type InvokeBatch = fn(&mut ValueReader<'_>, u32, &mut Batch<'_>);

/// The batch entry of `F`: one panic catch around the whole loop (re-entered after an item that
/// panicked), instead of one per item.
pub(crate) fn invoke_batch<F: ProcessFn>(reader: &mut ValueReader<'_>, count: u32, batch: &mut Batch<'_>) {
    let mut next = 0;
    while next < count {
        let mut failure: Option<(Error, bool)> = None;
        let caught = panic::catch(|| {
            while next < count {
                batch.begin();
                let args = match F::decode_args(reader) {
                    Ok(args) => args,
                    Err(e) => {
                        failure = Some((e, true));
                        return;
                    }
                };
                let output = F::call(args);
                if let Err(e) = F::encode_output(&output, batch.out()) {
                    failure = Some((e, false));
                    return;
                }
                batch.end_ok();
                next += 1;
            }
        });
        match (caught, failure) {
            (Ok(()), None) => break,
            (Ok(()), Some((e, out_of_step))) => {
                let message = format!("an earlier item of the batch could not be decoded: {e}");
                batch.end_failed(CallFailure::Fail(e));
                next += 1;
                if out_of_step {
                    // the reader lost its place: every later item fails with it
                    for _ in next..count {
                        batch.begin();
                        batch.end_failed(CallFailure::Fail(Error::BadFrame { reason: message.clone() }));
                    }
                    break;
                }
            }
            (Err(report), _) => {
                batch.end_failed(CallFailure::Panic(report));
                next += 1;
            }
        }
    }
}

/// Runs this process as a worker and exits; never returns to `main`.
pub(crate) fn run_child() -> ! {
    sys::ignore_sigpipe();
    let sock = match sys::take_control_socket() {
        Ok(sock) => sock,
        Err(e) => {
            eprintln!(
                "multiproc: this process was started as a worker ({} is set) but has no control socket ({e}); \
                 it was not started by multiproc: unset the variable",
                crate::entry::WORKER_ENV
            );
            sys::exit_now(EXIT_NOT_A_WORKER);
        }
    };
    panic::install_hook();
    let mut reader = FrameReader::new(sock);
    let code = serve(&mut reader);
    std::process::exit(code)
}

/// Serves calls until the parent hangs up (or after one call, for a one-shot child).
fn serve(reader: &mut FrameReader) -> i32 {
    let (hello, liveness) = match reader.read(None) {
        Ok(mut f) if f.kind == Kind::Hello => match codec::decode::<Hello>("message", &f.payload) {
            Ok(h) => (h, f.fds.pop()),
            Err(e) => return refuse(reader, FailReport::Protocol { message: e.to_string() }, EXIT_PROTOCOL),
        },
        Ok(_) | Err(RecvError::Failed(_)) => return EXIT_PROTOCOL,
        Err(RecvError::Closed) | Err(RecvError::TimedOut) => return 0,
    };
    if hello.protocol != PROTOCOL {
        let message = format!("the parent speaks protocol {}, this child {PROTOCOL}", hello.protocol);
        return refuse(reader, FailReport::Protocol { message }, EXIT_PROTOCOL);
    }
    if hello.build_id != build_id() {
        return refuse(reader, FailReport::BuildMismatch { found: build_id().to_vec() }, EXIT_BUILD_MISMATCH);
    }
    // The parent's end of this pipe closes when the parent dies, however it dies: end with it.
    match liveness.map(sys::die_with_writer) {
        Some(Ok(())) => {}
        Some(Err(e)) => eprintln!("multiproc: this worker could not tie its life to its parent's: {e}"),
        None => {
            let message = "no liveness pipe in the handshake".into();
            return refuse(reader, FailReport::Protocol { message }, EXIT_PROTOCOL);
        }
    }
    if !hello.one_shot {
        sys::ignore_sigint();
    }
    if let Some(name) = &hello.name {
        sys::set_thread_name(name);
    }
    if OutFrame::new(Kind::Ready).send(reader.socket(), &[]).is_err() {
        return EXIT_PARENT_GONE;
    }
    loop {
        let frame = match reader.read(None) {
            Ok(f) => f,
            Err(RecvError::Closed) | Err(RecvError::TimedOut) => return 0,
            Err(RecvError::Failed(_)) => return EXIT_PROTOCOL,
        };
        let reply = match frame.kind {
            Kind::Call => match message::parse_call(&frame.payload) {
                Ok((id, name, args)) => answer(id, name, args),
                Err(_) => return EXIT_PROTOCOL,
            },
            Kind::Batch => match message::parse_batch(&frame.payload) {
                Ok((id, name, count, items)) => answer_batch(id, name, count, items),
                Err(_) => return EXIT_PROTOCOL,
            },
            _ => return EXIT_PROTOCOL,
        };
        if reply.send(reader.socket(), &[]).is_err() {
            return EXIT_PARENT_GONE;
        }
        if hello.one_shot {
            return 0;
        }
    }
}

/// Makes one call and builds its reply.
fn answer(id: u64, name: &str, args: &[u8]) -> OutFrame {
    let fail = |e: Error| fail_frame(id, FailReport::from_error(e));
    let registration = match registry::lookup(name) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut reply = OutFrame::new(Kind::Return);
    reply.payload().extend_from_slice(&id.to_le_bytes());
    let mut reader = ValueReader::new(args, "arguments");
    let result = (registration.invoke)(&mut reader, reply.payload());
    match result.and_then(|()| reader.finish().map_err(CallFailure::Fail)) {
        Ok(()) => reply,
        Err(CallFailure::Fail(e)) => fail(e),
        Err(CallFailure::Panic(report)) => message::reply_frame(Kind::Panic, id, "message", &report)
            .unwrap_or_else(|e| fail_frame(id, FailReport::from_error(e))),
    }
}

/// Makes the calls of a batch. While every item succeeds, the outputs are simply appended; the
/// first failure switches the reply to one tagged entry per item, so that only the failed
/// items fail.
fn answer_batch(id: u64, name: &str, count: u32, items: &[u8]) -> OutFrame {
    let registration = match registry::lookup(name) {
        Ok(r) => r,
        Err(e) => return fail_frame(id, FailReport::from_error(e)),
    };
    let mut reply = OutFrame::with_capacity(Kind::BatchReturn, items.len() + 16);
    let mut batch = Batch::new(reply.payload(), id, count as usize);
    let mut reader = ValueReader::new(items, "arguments");
    (registration.invoke_batch)(&mut reader, count, &mut batch);
    reply
}

/// A batch reply being written: outputs back to back until the first failure, then one tagged
/// entry (tag, u32 length, bytes) per item.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    out: &'a mut Vec<u8>,
    mode_at: usize,
    /// Where each item's output starts, while untagged.
    starts: Vec<usize>,
    tagged: bool,
    /// Where the item being written starts.
    open: usize,
}

impl<'a> Batch<'a> {
    fn new(out: &'a mut Vec<u8>, id: u64, count: usize) -> Self {
        out.extend_from_slice(&id.to_le_bytes());
        let mode_at = out.len();
        out.push(message::BATCH_ALL_OK);
        Batch { out, mode_at, starts: Vec::with_capacity(count), tagged: false, open: mode_at + 1 }
    }

    /// Where the current item's output goes.
    #[inline]
    pub(crate) fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Starts an item.
    #[inline]
    pub(crate) fn begin(&mut self) {
        self.open = self.out.len();
        if self.tagged {
            self.out.push(message::ITEM_OK);
            self.out.extend_from_slice(&[0; 4]);
        }
    }

    /// The item's output is complete.
    #[inline]
    pub(crate) fn end_ok(&mut self) {
        if self.tagged {
            let len_at = self.open + 1;
            let len = (self.out.len() - len_at - 4) as u32;
            self.out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        } else {
            self.starts.push(self.open);
        }
    }

    /// The item failed: whatever it wrote is dropped, and its failure recorded.
    pub(crate) fn end_failed(&mut self, failure: CallFailure) {
        self.out.truncate(self.open);
        self.retag();
        let (tag, body) = match failure {
            CallFailure::Panic(report) => (message::ITEM_PANIC, encode_report(&report)),
            CallFailure::Fail(e) => (message::ITEM_FAIL, encode_report(&FailReport::from_error(e))),
        };
        self.out.push(tag);
        self.out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&body);
    }

    /// Rewrites the outputs so far as tagged entries.
    fn retag(&mut self) {
        if self.tagged {
            return;
        }
        self.tagged = true;
        self.out[self.mode_at] = message::BATCH_TAGGED;
        let first = self.mode_at + 1;
        let plain = self.out.split_off(first);
        let mut ends: Vec<usize> = self.starts.iter().skip(1).map(|s| s - first).collect();
        ends.push(plain.len());
        let mut at = 0;
        for end in ends.into_iter().take(self.starts.len()) {
            self.out.push(message::ITEM_OK);
            self.out.extend_from_slice(&((end - at) as u32).to_le_bytes());
            self.out.extend_from_slice(&plain[at..end]);
            at = end;
        }
        self.starts.clear();
    }
}

fn encode_report<T: serde::Serialize>(report: &T) -> Vec<u8> {
    let mut body = Vec::new();
    if codec::encode_into("message", report, &mut body).is_err() {
        body.clear();
        let fallback = FailReport::Protocol { message: "a failure report could not be encoded".into() };
        codec::encode_into("message", &fallback, &mut body).expect("plain strings encode");
    }
    body
}

fn fail_frame(id: u64, report: FailReport) -> OutFrame {
    message::reply_frame(Kind::Fail, id, "message", &report).expect("a FailReport is plain strings and always encodes")
}

fn refuse(reader: &FrameReader, report: FailReport, code: i32) -> i32 {
    let _ = fail_frame(0, report).send(reader.socket(), &[]);
    code
}
