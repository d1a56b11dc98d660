//! The child's side: take the control socket, check the handshake, then read a call, look the
//! function up, decode, call (catching a panic), encode, reply.

use crate::error::Error;
use crate::function::ProcessFn;
use crate::panic;
use crate::registry;
use crate::sys;
use crate::wire::codec::{self, ArgReader};
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

/// How a registered function is called on bytes: decode the arguments, run, encode the output
/// onto the reply.
pub(crate) type Invoke = fn(&[u8], &mut Vec<u8>) -> Result<(), CallFailure>;

/// Why a call did not return a value.
#[derive(Debug)]
pub(crate) enum CallFailure {
    Panic(PanicReport),
    Fail(Error),
}

/// The dispatch entry of `F`, generic so that the macro emits no logic.
pub(crate) fn invoke<F: ProcessFn>(args: &[u8], out: &mut Vec<u8>) -> Result<(), CallFailure> {
    let decoded = panic::catch(|| {
        let mut reader = ArgReader::new(args);
        let decoded = F::decode_args(&mut reader)?;
        reader.finish().map(|()| decoded)
    });
    let args = match decoded {
        Ok(Ok(args)) => args,
        Ok(Err(e)) => return Err(CallFailure::Fail(e)),
        Err(report) => return Err(CallFailure::Panic(report)),
    };
    // Encoding runs under the catch too: a `Serialize` impl may panic.
    match panic::catch(|| {
        let output = F::call(args);
        F::encode_output(&output, out)
    }) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CallFailure::Fail(e)),
        Err(report) => Err(CallFailure::Panic(report)),
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
            return refuse(
                reader,
                FailReport::Protocol { message: "no liveness pipe in the handshake".into() },
                EXIT_PROTOCOL,
            )
        }
    }
    if let Some(name) = &hello.name {
        sys::set_thread_name(name);
    }
    if OutFrame::new(Kind::Ready).send(reader.socket(), &[]).is_err() {
        return EXIT_PARENT_GONE;
    }
    loop {
        let frame = match reader.read(None) {
            Ok(f) if f.kind == Kind::Call => f,
            Ok(_) | Err(RecvError::Failed(_)) => return EXIT_PROTOCOL,
            Err(RecvError::Closed) | Err(RecvError::TimedOut) => return 0,
        };
        let reply = match message::parse_call(&frame.payload) {
            Ok((id, name, args)) => answer(id, name, args),
            Err(_) => return EXIT_PROTOCOL,
        };
        if reply.send(reader.socket(), &[]).is_err() {
            return EXIT_PARENT_GONE;
        }
        if hello.one_shot {
            return 0;
        }
    }
}

/// Makes the call and builds its reply.
fn answer(id: u64, name: &str, args: &[u8]) -> OutFrame {
    let fail = |e: Error| fail_frame(id, FailReport::from_error(e));
    let registration = match registry::lookup(name) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut reply = OutFrame::new(Kind::Return);
    reply.payload().extend_from_slice(&id.to_le_bytes());
    match (registration.invoke)(args, reply.payload()) {
        Ok(()) => reply,
        Err(CallFailure::Fail(e)) => fail(e),
        Err(CallFailure::Panic(report)) => message::reply_frame(Kind::Panic, id, "message", &report)
            .unwrap_or_else(|e| fail_frame(id, FailReport::from_error(e))),
    }
}

fn fail_frame(id: u64, report: FailReport) -> OutFrame {
    message::reply_frame(Kind::Fail, id, "message", &report).expect("a FailReport is plain strings and always encodes")
}

fn refuse(reader: &FrameReader, report: FailReport, code: i32) -> i32 {
    let _ = fail_frame(0, report).send(reader.socket(), &[]);
    code
}
