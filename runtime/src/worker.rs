//! The child's side: take the control socket, check the handshake, then serve calls: read a
//! frame, look the function up, decode, call (catching a panic), encode, reply.
//!
//! A one-shot child (a `Process`) exits after its call; a pool worker serves until its parent
//! hangs up, and ignores `SIGINT` (Ctrl-C goes to the whole process group: the parent decides).

use std::os::fd::OwnedFd;

use crate::error::Error;
use crate::function::ProcessFn;
use crate::panic;
use crate::registry;
use crate::sys;

use crate::wire::codec::{self, ValueReader};
use crate::wire::doorbell::Doorbell;
use crate::wire::fds;
use crate::wire::frame::{self, Frame, FrameReader, Kind, OutFrame, RecvError, HEADER_LEN, MAX_FRAME_LEN};
use crate::wire::handshake::build_id;
use crate::wire::items::{ItemsReader, ItemsWriter, ITEM_FAIL, ITEM_PANIC};
use crate::wire::message::{self, FailReport, Hello, PanicReport, PROTOCOL};

/// Exit code of a process that was marked as a worker but given no control socket.
pub(crate) const EXIT_NOT_A_WORKER: i32 = 86;
/// Exit code after the parent broke the protocol.
pub(crate) const EXIT_PROTOCOL: i32 = 87;
/// How long an idle worker watches its doorbell for the next call before it sleeps.
const WATCH_FOR_CALLS: std::time::Duration = std::time::Duration::from_micros(20);
/// Exit code after refusing a parent of another build.
pub(crate) const EXIT_BUILD_MISMATCH: i32 = 88;
/// Exit code when the parent went away.
pub(crate) const EXIT_PARENT_GONE: i32 = 89;
/// A `#[child_init]` hook panicked (the parent has the report).
pub(crate) const EXIT_CHILD_INIT: i32 = 90;

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

/// How a registered function runs a batch: `count` argument tuples from the item list, each
/// result (or failure) appended to the batch reply.
pub(crate) type InvokeBatch = fn(&mut ItemsReader<'_>, u32, &mut Batch<'_>);

/// The batch entry of `F`: one panic catch around the whole loop (re-entered after an item that
/// panicked), instead of one per item. Each item's arguments are read from their own bytes, so
/// one that fails to decode fails alone: in the uniform layout, in one pass whose position is
/// put right after a failure (every item is as long as the first).
pub(crate) fn invoke_batch<F: ProcessFn>(items: &mut ItemsReader<'_>, count: u32, batch: &mut Batch<'_>) {
    let uniform = items.uniform();
    let mut next = 0;
    while next < count {
        let mut failure: Option<Error> = None;
        let caught = panic::catch(|| match uniform {
            Some((len, region)) => {
                let mut reader = ValueReader::new(&region[next as usize * len..], "arguments");
                run_items::<F>(&mut next, count, batch, &mut failure, |item| {
                    let args = F::decode_args(&mut reader)?;
                    let read = region.len() - item as usize * len - reader.remaining();
                    match read == len {
                        true => Ok(args),
                        false => Err(misread(len, read)),
                    }
                })
            }
            None => run_items::<F>(&mut next, count, batch, &mut failure, |_| {
                items.next_item().and_then(|(_, bytes)| decode_args::<F>(bytes))
            }),
        });
        match (caught, failure) {
            (Ok(()), None) => break,
            (Ok(()), Some(e)) => batch.end_failed(CallFailure::Fail(e)),
            (Err(report), _) => batch.end_failed(CallFailure::Panic(report)),
        }
        // the tagged reader is past the failed item already; the uniform one restarts after it
        next += 1;
    }
}

/// Calls `F` on items `next..count`, each one's arguments from `args_of(item)`, appending the
/// outputs to the batch; stops at the first failure (`failure`), with `next` at its item.
#[inline(always)]
fn run_items<F: ProcessFn>(
    next: &mut u32,
    count: u32,
    batch: &mut Batch<'_>,
    failure: &mut Option<Error>,
    mut args_of: impl FnMut(u32) -> Result<F::Args, Error>,
) {
    while *next < count {
        batch.begin();
        let output = match args_of(*next) {
            Ok(args) => F::call(args),
            Err(e) => {
                *failure = Some(e);
                return;
            }
        };
        if let Err(e) = F::encode_output(&output, batch.out()) {
            *failure = Some(e);
            return;
        }
        batch.end_ok();
        *next += 1;
    }
}

/// The error of arguments whose `Deserialize` read another length than was written.
fn misread(len: usize, read: usize) -> Error {
    Error::Decode {
        what: "arguments",
        type_name: "the arguments".into(),
        message: format!("{len} bytes were written for them and {read} were read"),
    }
}

/// Decodes one item's arguments, every byte of them.
fn decode_args<F: ProcessFn>(bytes: &[u8]) -> Result<F::Args, Error> {
    let mut reader = ValueReader::new(bytes, "arguments");
    let args = F::decode_args(&mut reader)?;
    reader.finish()?;
    Ok(args)
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
    let code = serve(&mut reader, true);
    std::process::exit(code)
}

/// Serves a pool's session on an MPI rank, in messages to and from rank 0: as a child does,
/// but with no liveness pipe (a rank ends with its job). Returns when the pool hangs up.
#[cfg(feature = "mpi")]
pub(crate) fn serve_link(link: &mut crate::mpi::Link) {
    let _ = serve(link, false);
}

/// How a worker talks to its pool: a socket (a local child) or MPI messages (a rank).
trait Conn {
    /// The next frame, waiting as long as it takes.
    fn next(&mut self) -> Result<Frame, RecvError>;
    /// Whether a whole frame is here already.
    fn has_frame(&self) -> bool;
    fn set_max_len(&mut self, max: usize);
    fn send(&mut self, frame: OutFrame, limit: usize) -> Result<(), Error>;
}

impl Conn for FrameReader {
    fn next(&mut self) -> Result<Frame, RecvError> {
        self.read(None)
    }

    fn has_frame(&self) -> bool {
        FrameReader::has_frame(self)
    }

    fn set_max_len(&mut self, max: usize) {
        FrameReader::set_max_len(self, max);
    }

    fn send(&mut self, frame: OutFrame, limit: usize) -> Result<(), Error> {
        frame.send(self.socket(), limit)
    }
}

#[cfg(feature = "mpi")]
impl Conn for crate::mpi::Link {
    fn next(&mut self) -> Result<Frame, RecvError> {
        self.read(None)
    }

    fn has_frame(&self) -> bool {
        self.has_message()
    }

    fn set_max_len(&mut self, max: usize) {
        crate::mpi::Link::set_max_len(self, max);
    }

    fn send(&mut self, frame: OutFrame, limit: usize) -> Result<(), Error> {
        let encoded = frame.finish(limit)?;
        if !encoded.fds.is_empty() {
            // a result holding handles: that call's error, and the session goes on
            let at = HEADER_LEN..HEADER_LEN + 8;
            let id = encoded.bytes.get(at).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            let e = Error::Encode {
                what: "result",
                type_name: "a value holding handles".into(),
                message: "a handle (Queue, Pipe end, Value, Array, SharedMemory, a lock, a local Manager's proxy) \
                          holds file descriptors of its host, and cannot cross from an MPI rank to rank 0"
                    .into(),
            };
            let fail = fail_frame(id, FailReport::from_error(e)).finish(limit)?;
            return self.post(crate::mpi::Outgoing::Owned(fail.bytes));
        }
        // posted: the rank goes on to its next call (usually here already) while rank 0 takes it
        self.post(crate::mpi::Outgoing::Owned(encoded.bytes))
    }
}

/// Serves calls until the parent hangs up (or after one call, for a one-shot child). A local
/// child must get a liveness pipe in the handshake (`tied`), to end with its parent.
fn serve(reader: &mut impl Conn, tied: bool) -> i32 {
    let (hello, liveness, bell) = match reader.next() {
        Ok(mut f) if f.kind == Kind::Hello => match codec::decode::<Hello>("message", &f.payload) {
            Ok(h) => {
                let liveness = f.fds.pop();
                let bell = if h.doorbell { f.fds.pop() } else { None };
                (h, liveness, bell)
            }
            Err(e) => return refuse(reader, FailReport::Protocol { message: e.to_string() }, EXIT_PROTOCOL),
        },
        Ok(_) | Err(RecvError::Failed(_)) => return EXIT_PROTOCOL,
        Err(RecvError::Closed | RecvError::Truncated | RecvError::TimedOut) => return 0,
    };
    if hello.protocol != PROTOCOL {
        let message = format!("the parent speaks protocol {}, this child {PROTOCOL}", hello.protocol);
        return refuse(reader, FailReport::Protocol { message }, EXIT_PROTOCOL);
    }
    let limit = usize::try_from(hello.max_frame_len).unwrap_or(usize::MAX).min(MAX_FRAME_LEN);
    reader.set_max_len(limit);
    if hello.build_id != build_id() {
        return refuse(reader, FailReport::BuildMismatch { found: build_id().to_vec() }, EXIT_BUILD_MISMATCH);
    }
    // The parent's end of this pipe closes when the parent dies, however it dies: end with it.
    match liveness.map(sys::die_with_writer) {
        Some(Ok(())) => {}
        Some(Err(e)) => eprintln!("multiproc: this worker could not tie its life to its parent's: {e}"),
        None if !tied => {}
        None => {
            let message = "no liveness pipe in the handshake".into();
            return refuse(reader, FailReport::Protocol { message }, EXIT_PROTOCOL);
        }
    }
    if !hello.one_shot {
        sys::ignore_sigint();
    }
    let role = match (hello.one_shot, tied) {
        (true, _) => crate::current::Role::Child,
        (false, true) => crate::current::Role::PoolWorker,
        (false, false) => crate::current::Role::MpiRank,
    };
    crate::current::set(role, hello.name.clone());
    if let Err((hook, message)) = crate::child_init::run_all() {
        return refuse(reader, FailReport::ChildInit { hook, message }, EXIT_CHILD_INIT);
    }
    if let Some(name) = &hello.name {
        sys::set_thread_name(name);
    }
    let bell = match bell.map(Doorbell::attach) {
        Some(Err(e)) => {
            return refuse(reader, FailReport::Protocol { message: format!("a bad doorbell: {e}") }, EXIT_PROTOCOL)
        }
        Some(Ok(b)) => Some(b),
        None => None,
    };
    if reader.send(OutFrame::new(Kind::Ready), limit).is_err() {
        return EXIT_PARENT_GONE;
    }
    let mut calls = 0; // frames received since the handshake
    loop {
        // Calls come back to back (a caller loops over apply): watch the doorbell a little
        // before sleeping in recvmsg, which would cost a wake-up per call.
        if let Some(bell) = &bell {
            if !reader.has_frame() {
                bell.wait_past(1, calls, WATCH_FOR_CALLS);
            }
        }
        let frame = match reader.next() {
            Ok(f) => f,
            Err(RecvError::Closed | RecvError::Truncated | RecvError::TimedOut) => return 0,
            Err(RecvError::Failed(_)) => return EXIT_PROTOCOL,
        };
        calls += 1;
        let reply = match frame.kind {
            Kind::Call => match message::parse_call(&frame.payload) {
                Ok((id, name, args)) => with_handles(frame.fds, || answer(id, name, args, limit)),
                Err(_) => return EXIT_PROTOCOL,
            },
            Kind::Batch => match message::parse_batch(&frame.payload) {
                Ok((id, name, count, items)) => with_handles(frame.fds, || answer_batch(id, name, count, items, limit)),
                Err(_) => return EXIT_PROTOCOL,
            },
            _ => return EXIT_PROTOCOL,
        };
        if reader.send(reply, limit).is_err() {
            return EXIT_PARENT_GONE;
        }
        if let Some(bell) = &bell {
            bell.ring(0);
        }
        if hello.one_shot {
            return 0;
        }
    }
}

/// Runs a call with the descriptors its frame brought on offer to the arguments' handles, and
/// attaches to the reply the descriptors of the handles in its result. The frame's own copies
/// close afterwards: the handles made from them hold theirs.
fn with_handles(received: Vec<OwnedFd>, answer: impl FnOnce() -> OutFrame) -> OutFrame {
    let ((mut reply, _received), sent) = fds::collect(|| fds::provide(received, answer));
    reply.attach(sent);
    reply
}

/// Makes one call and builds its reply. A result over the connection's frame limit is that
/// call's `FrameTooLarge`: the worker goes on.
fn answer(id: u64, name: &str, args: &[u8], limit: usize) -> OutFrame {
    let fail = |e: Error| fail_frame(id, FailReport::from_error(e));
    let registration = match registry::lookup(name) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut reply = OutFrame::new(Kind::Return);
    reply.payload().extend_from_slice(&id.to_le_bytes());
    let mut reader = ValueReader::new(args, "arguments");
    let result = (registration.invoke)(&mut reader, reply.payload());
    let reply = match result.and_then(|()| reader.finish().map_err(CallFailure::Fail)) {
        Ok(()) => reply,
        Err(CallFailure::Fail(e)) => fail(e),
        Err(CallFailure::Panic(report)) => message::reply_frame(Kind::Panic, id, "message", &report)
            .unwrap_or_else(|e| fail_frame(id, FailReport::from_error(e))),
    };
    // what went out of line counts too (it is attached to the reply after)
    match frame::check_len(reply.payload_len().saturating_add(fds::large_so_far() as usize), limit) {
        Ok(()) => reply,
        Err(e) => {
            fds::uncount_large_since(0);
            fail(e)
        }
    }
}

/// Makes the calls of a batch, one entry of the reply per item: only the items that fail
/// fail. The reply is bounded by the frame limit item by item.
fn answer_batch(id: u64, name: &str, count: u32, items: &[u8], limit: usize) -> OutFrame {
    let registration = match registry::lookup(name) {
        Ok(r) => r,
        Err(e) => return fail_frame(id, FailReport::from_error(e)),
    };
    let mut reply = OutFrame::with_capacity(Kind::BatchReturn, items.len() + 16);
    let mut items = match ItemsReader::new(items, count as usize) {
        Ok(items) => items,
        Err(e) => return fail_frame(id, FailReport::from_error(e)),
    };
    let mut batch = Batch::new(reply.payload(), id, count as usize, limit);
    (registration.invoke_batch)(&mut items, count, &mut batch);
    // Failure reports are not bounded item by item: the whole reply is the last resort.
    match reply.check_len(limit) {
        Ok(()) => reply,
        Err(e) => fail_frame(id, FailReport::from_error(e)),
    }
}

/// Room kept in a batch reply for each item still to come, so that an item that does not fit
/// can still be reported as such (a tagged `FrameTooLarge` report takes 25 bytes).
const ROOM_PER_ITEM: usize = 32;

/// A batch reply being written: the task id, then one entry per item (an item list).
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    out: &'a mut Vec<u8>,
    list: ItemsWriter,
    /// Where the payload starts in `out` (after the frame header).
    payload_at: usize,
    /// The longest payload allowed.
    limit: usize,
    /// Items not yet finished.
    left: usize,
    /// Bytes out of line before the current item.
    large_before: u64,
}

impl<'a> Batch<'a> {
    /// `out` is a new frame's buffer: its header, nothing more yet.
    fn new(out: &'a mut Vec<u8>, id: u64, count: usize, limit: usize) -> Self {
        let payload_at = HEADER_LEN;
        out.extend_from_slice(&id.to_le_bytes());
        let list = ItemsWriter::new(out);
        Batch { out, list, payload_at, limit, left: count, large_before: 0 }
    }

    /// Where the current item's output goes.
    #[inline]
    pub(crate) fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Starts an item.
    #[inline(always)]
    pub(crate) fn begin(&mut self) {
        self.list.begin(self.out);
        self.large_before = fds::large_so_far();
    }

    /// The item's output is complete. One that would take the reply over the frame limit fails
    /// with `FrameTooLarge` instead.
    #[inline(always)]
    pub(crate) fn end_ok(&mut self) {
        self.left = self.left.saturating_sub(1);
        let len = self.out.len() - self.payload_at + fds::large_so_far() as usize;
        if len + self.left * ROOM_PER_ITEM > self.limit {
            self.too_large(len);
            return;
        }
        self.list.end(self.out);
    }

    #[cold]
    #[inline(never)]
    fn too_large(&mut self, len: usize) {
        let e = Error::FrameTooLarge { len: len as u64, max: self.limit as u64 };
        self.left += 1;
        self.end_failed(CallFailure::Fail(e));
    }

    /// The item failed: whatever it wrote is dropped, and its failure recorded.
    pub(crate) fn end_failed(&mut self, failure: CallFailure) {
        self.left = self.left.saturating_sub(1);
        fds::uncount_large_since(self.large_before);
        let (tag, body) = match failure {
            CallFailure::Panic(report) => (ITEM_PANIC, encode_report(&report)),
            CallFailure::Fail(e) => (ITEM_FAIL, encode_report(&FailReport::from_error(e))),
        };
        self.list.fail(self.out, tag, &body);
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

fn refuse(reader: &mut impl Conn, report: FailReport, code: i32) -> i32 {
    let _ = reader.send(fail_frame(0, report), MAX_FRAME_LEN);
    code
}
