//! One child process running one function: Python's `Process`, typed.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdout, ExitStatus};
use std::time::{Duration, Instant};

use std::mem::ManuallyDrop;

use crate::child::{ChildProc, Spawn};
use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::output::Output;
use crate::registry;
use crate::sys::Sig;
use crate::wire::codec::{self, ValueReader};
use crate::wire::fds;
use crate::wire::frame::{Frame, Kind, OutFrame, RecvError, MAX_FRAME_LEN};
use crate::wire::handshake::{build_id, hex};
use crate::wire::message::{self, FailReport, PanicReport};

/// Options for starting a child process: Python's `Process(name=...)` and friends.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Output, ProcessBuilder};
///
/// #[process_fn]
/// fn greet(who: String) -> String {
///     format!("hello, {who} from {}", std::env::var("GREETING_FROM").unwrap())
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let child = ProcessBuilder::new()
///     .name("greeter")
///     .env("GREETING_FROM", "a child")
///     .stderr(Output::Null)
///     .spawn(greet, ("you".to_string(),))?;
/// assert_eq!(child.join()?, "hello, you from a child");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ProcessBuilder {
    name: Option<String>,
    env: Vec<(OsString, Option<OsString>)>,
    stdout: Output,
    stderr: Output,
    executable: Option<PathBuf>,
    max_frame_len: usize,
    handshake_timeout: Duration,
    daemon: bool,
}

impl Default for ProcessBuilder {
    fn default() -> Self {
        ProcessBuilder {
            name: None,
            env: Vec::new(),
            stdout: Output::default(),
            stderr: Output::default(),
            executable: None,
            max_frame_len: MAX_FRAME_LEN,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            daemon: true,
        }
    }
}

/// How long a child has, by default, to answer the handshake (it takes about a millisecond).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl ProcessBuilder {
    /// Default options: the same executable, the parent's environment, output inherited.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a dropped handle kills its child (`true`, the default: Python's
    /// `daemon=True`, and nothing is left running). With `false` (Python's default
    /// non-daemonic children) a handle dropped without a join lets the child run to its end,
    /// its result thrown away, and this process, when it exits normally (returns from `main`
    /// or calls `std::process::exit`), first waits for every such child. The child still ends
    /// if this process dies (killed, aborted): no child outlives its parent.
    pub fn daemon(&mut self, daemon: bool) -> &mut Self {
        self.daemon = daemon;
        self
    }

    /// Names the child: the name is shown by `ps` (the first 15 bytes) and by
    /// [`Process::name`].
    pub fn name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = Some(name.into());
        self
    }

    /// Sets an environment variable in the child.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable from the child's environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Where the child's stdout goes; [`Output::Inherit`] by default.
    pub fn stdout(&mut self, output: Output) -> &mut Self {
        self.stdout = output;
        self
    }

    /// Where the child's stderr goes; [`Output::Inherit`] by default.
    pub fn stderr(&mut self, output: Output) -> &mut Self {
        self.stderr = output;
        self
    }

    /// Starts another executable instead of this one (Python's `set_executable`). It must be
    /// the same build: a different one is refused with [`Error::BuildMismatch`].
    pub fn executable(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.executable = Some(path.into());
        self
    }

    /// The longest message either side may send, arguments or result: [`MAX_FRAME_LEN`] (1 GiB)
    /// by default, and never more. Arguments over it are refused before the child starts, a
    /// result over it is [`Error::FrameTooLarge`] for that call; lower it to bound what a
    /// child can make this process hold.
    pub fn max_frame_len(&mut self, bytes: usize) -> &mut Self {
        self.max_frame_len = bytes.min(MAX_FRAME_LEN);
        self
    }

    /// How long the child has to answer the handshake ([`DEFAULT_HANDSHAKE_TIMEOUT`] by
    /// default): one that does not, such as an [`executable`](Self::executable) that is not a
    /// multiproc binary, is killed, and joining it gives [`Error::HandshakeTimedOut`].
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Starts `f(args)` in a new child process.
    ///
    /// The arguments are serialized first: if that fails, or they are over the frame limit,
    /// the error comes back before any process starts.
    pub fn spawn<F: ProcessFn>(&self, f: F, args: F::Args) -> Result<Process<F::Output>> {
        let _ = f;
        registry::lookup(F::NAME)?;
        let call = message::call_frame::<F>(0, &args)?;
        let p = self.spawn_call(call, read_whole::<F>)?;
        crate::trace::event!(debug, pid = p.pid(), function = F::NAME, "started a child process");
        Ok(p)
    }

    /// The frame limit of a child started with these options.
    pub(crate) fn frame_limit(&self) -> usize {
        self.max_frame_len
    }

    /// How to start a child with these options.
    pub(crate) fn how(&self, one_shot: bool) -> Spawn<'_> {
        Spawn {
            name: self.name.as_deref(),
            env: &self.env,
            stdout: self.stdout,
            stderr: self.stderr,
            executable: self.executable.as_deref(),
            one_shot,
            max_frame_len: self.max_frame_len,
            handshake_timeout: self.handshake_timeout,
        }
    }

    /// Starts a child and sends it `call`, whatever function it names; `decode` reads its result.
    pub(crate) fn spawn_call<T>(&self, call: OutFrame, decode: fn(&[u8]) -> Result<T>) -> Result<Process<T>> {
        let child = ChildProc::spawn(&self.how(true), Some(call))?;
        Ok(Process {
            child: ManuallyDrop::new(child),
            daemon: self.daemon,
            name: self.name.clone(),
            greeted: false,
            closed: false,
            reply: None,
            broken: None,
            joined: false,
            decode,
        })
    }
}

/// A running child process whose function returns a `T`: Python's `Process`, with a typed
/// result.
///
/// Get one from `f.spawn(args…)` or [`ProcessBuilder::spawn`], then [`join`](Process::join) it.
///
/// # Dropping
///
/// Dropping a handle that was not joined kills the child (`SIGKILL`) and reaps it, so no
/// child is left running and no zombie remains. Join it to keep its work, or start it with
/// [`ProcessBuilder::daemon(false)`](ProcessBuilder::daemon) to let it finish on its own.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::process_fn;
///
/// #[process_fn]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let child = square.spawn(7)?;
/// println!("started {}", child.pid());
/// assert_eq!(child.join()?, 49);
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a Process kills the child; call join() to wait for its result"]
pub struct Process<T> {
    /// Dropped with the handle (killed), or, for a non-daemon, kept to be waited for at exit.
    child: ManuallyDrop<ChildProc>,
    daemon: bool,
    name: Option<String>,
    /// The child answered the handshake.
    greeted: bool,
    /// The child closed its end.
    closed: bool,
    reply: Option<Frame>,
    /// The child broke the protocol; it has been killed.
    broken: Option<Error>,
    joined: bool,
    decode: fn(&[u8]) -> Result<T>,
}

impl<T> Drop for Process<T> {
    fn drop(&mut self) {
        // SAFETY: `child` is taken once, here, and never used again: the handle is going.
        let child = unsafe { ManuallyDrop::take(&mut self.child) };
        if self.daemon || self.joined {
            drop(child); // killed (if it still runs) and reaped
            return;
        }
        detached::keep(child);
    }
}

/// Non-daemon children whose handles were dropped: waited for when this process exits.
mod detached {
    use std::sync::{Mutex, Once};

    use crate::child::ChildProc;

    static KEPT: Mutex<Vec<ChildProc>> = Mutex::new(Vec::new());

    /// Lets `child` run to its end, and has this process wait for it at exit.
    pub(super) fn keep(mut child: ChildProc) {
        if child.try_status().is_some() {
            return; // already over: reaped now
        }
        static AT_EXIT: Once = Once::new();
        // SAFETY: `wait_for_all` is an `extern "C" fn()` that does not unwind (a panic in it
        // is caught), as atexit requires.
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(wait_for_all);
        });
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain_mut(|c| c.try_status().is_none()); // reap the ones already over
        kept.push(child);
    }

    extern "C" fn wait_for_all() {
        let _ = std::panic::catch_unwind(|| {
            let kept = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|p| p.into_inner()));
            for mut child in kept {
                // its reply is not wanted, but a large one would block it in sending: read and
                // drop what comes (descriptors in it are closed by the kernel) until it ends
                let mut sink = vec![0u8; 64 * 1024];
                loop {
                    let soon = std::time::Instant::now() + std::time::Duration::from_millis(10);
                    if !matches!(child.wait_exit(Some(soon)), Ok(None)) {
                        break;
                    }
                    while matches!(
                        rustix::net::recv(child.reader.socket(), &mut sink, rustix::net::RecvFlags::DONTWAIT),
                        Ok((n, _)) if n > 0
                    ) {}
                }
            }
        });
    }
}

impl<T> fmt::Debug for Process<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process").field("pid", &self.child.pid).field("name", &self.name).finish_non_exhaustive()
    }
}

impl<T> Process<T> {
    /// Waits for the child to finish and returns its result.
    ///
    /// # Errors
    ///
    /// A panic, an exit, a signal, a kill by this handle or a broken protocol, each as its own
    /// [`Error`] variant.
    pub fn join(mut self) -> Result<T> {
        self.join_until(None, Duration::ZERO)
    }

    /// Waits at most `timeout` for the child to finish.
    ///
    /// On [`Error::TimedOut`] the child keeps running and the handle stays usable: join again,
    /// or [`kill`](Process::kill) it. After any other outcome the result has been taken, and a
    /// further join gives [`Error::AlreadyJoined`].
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.join_until(Some(Instant::now() + timeout), timeout)
    }

    fn join_until(&mut self, deadline: Option<Instant>, timeout: Duration) -> Result<T> {
        if self.joined {
            return Err(Error::AlreadyJoined);
        }
        let pid = self.child.pid;
        let timed_out = || Error::TimedOut { pid, timeout };
        while self.reply.is_none() && !self.closed && self.broken.is_none() {
            // Until the child has answered the handshake, it has only until the handshake's
            // deadline: a child that is not a multiproc binary never answers.
            let handshake = (!self.greeted).then_some(self.child.handshake_deadline);
            let wait_until = match (deadline, handshake) {
                (Some(d), Some(h)) => Some(d.min(h)),
                (d, h) => d.or(h),
            };
            match self.child.reader.read(wait_until) {
                Ok(frame) => match frame.kind {
                    Kind::Ready => self.greeted = true,
                    Kind::Return | Kind::Panic | Kind::Fail => self.reply = Some(frame),
                    other => self.break_off(format!("unexpected {other:?} frame from the child")),
                },
                Err(RecvError::Closed | RecvError::Truncated) => self.closed = true,
                Err(RecvError::TimedOut) if handshake.is_some_and(|h| Instant::now() >= h) => {
                    self.child.kill_and_reap();
                    self.joined = true;
                    return Err(self.child.handshake_timed_out());
                }
                Err(RecvError::TimedOut) => return Err(timed_out()),
                Err(RecvError::Failed(e)) => {
                    let _ = self.child.signal(Sig::Kill);
                    self.broken = Some(e);
                }
            }
        }
        let status = match self.child.wait_exit(deadline)? {
            Some(status) => status,
            None => return Err(timed_out()),
        };
        self.joined = true;
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        match self.reply.take() {
            Some(frame) => self.outcome(frame),
            None => Err(self.child.death(status, self.greeted)),
        }
    }

    fn break_off(&mut self, reason: String) {
        let _ = self.child.signal(Sig::Kill);
        self.broken = Some(Error::BadFrame { reason });
    }

    /// Turns the child's reply into the result.
    fn outcome(&self, frame: Frame) -> Result<T> {
        let (_, body) = message::split_id(&frame.payload)
            .ok_or_else(|| Error::BadFrame { reason: "reply without a task id".into() })?;
        match frame.kind {
            Kind::Return => fds::provide(frame.fds, || (self.decode)(body)).0,
            Kind::Panic => {
                let report: PanicReport = codec::decode("message", body)?;
                Err(Error::Panicked {
                    pid: self.child.pid,
                    message: report.message,
                    location: report.location,
                    backtrace: report.backtrace,
                })
            }
            _ => Err(self.failure(codec::decode("message", body)?)),
        }
    }

    fn failure(&self, report: FailReport) -> Error {
        fail_error(report, &self.child.executable)
    }
}

impl<T> Process<T> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid
    }

    /// The name given with [`ProcessBuilder::name`].
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the child is still running (it may have returned its result already).
    pub fn is_alive(&self) -> bool {
        !self.child.has_exited()
    }

    /// The child's exit status, once it has ended: a code, or the signal that ended it
    /// (`ExitStatusExt::signal`). `None` while it runs. Python's `exitcode`.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_status()
    }

    /// Asks the child to stop with `SIGTERM` (Python's `terminate`). A join then gives
    /// [`Error::Killed`], unless the child had already returned its result.
    pub fn terminate(&mut self) -> Result<()> {
        self.child.signal(Sig::Term)
    }

    /// Stops the child with `SIGKILL` (Python's `kill`). A join then gives [`Error::Killed`],
    /// unless the child had already returned its result.
    pub fn kill(&mut self) -> Result<()> {
        self.child.signal(Sig::Kill)
    }

    /// The child's pidfd (readable once it has ended), for `wait`.
    pub(crate) fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.child.pidfd()
    }

    /// The read end of the child's stdout, when it was started with [`Output::Piped`]; taken
    /// once.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.take_stdout()
    }

    /// The read end of the child's stderr, when it was started with [`Output::Piped`]; taken
    /// once.
    pub fn stderr(&mut self) -> Option<ChildStderr> {
        self.child.take_stderr()
    }
}

/// Decodes a whole reply as `F`'s output.
#[inline]
pub(crate) fn read_whole<F: ProcessFn>(bytes: &[u8]) -> Result<F::Output> {
    let mut reader = ValueReader::new(bytes, "result");
    let output = F::read_output(&mut reader)?;
    reader.finish()?;
    Ok(output)
}

/// The error a child's failure report stands for.
pub(crate) fn fail_error(report: FailReport, executable: &std::path::Path) -> Error {
    match report {
        FailReport::BuildMismatch { found } => {
            Error::BuildMismatch { executable: executable.to_path_buf(), expected: hex(build_id()), found: hex(&found) }
        }
        FailReport::Protocol { message } => Error::BadFrame { reason: message },
        FailReport::UnknownFunction { name, known } => Error::UnknownFunction { name, known },
        FailReport::DuplicateFunction { name } => Error::DuplicateFunction { name },
        FailReport::Decode { what, type_name, message } => {
            Error::Decode { what: static_what(&what), type_name, message }
        }
        FailReport::Encode { what, type_name, message } => {
            Error::Encode { what: static_what(&what), type_name, message }
        }
        FailReport::FrameTooLarge { len, max } => Error::FrameTooLarge { len, max },
        FailReport::ChildInit { hook, message } => crate::child_init::failed(hook, message),
    }
}

fn static_what(what: &str) -> &'static str {
    match what {
        "arguments" => "arguments",
        "result" => "result",
        _ => "message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[crate::process_fn(crate = crate)]
    fn double(x: u64) -> u64 {
        x * 2
    }

    fn join_within<T>(mut p: Process<T>) -> Result<T> {
        let r = p.join_timeout(Duration::from_secs(60));
        assert!(!matches!(r, Err(Error::TimedOut { .. })), "the child hung");
        r
    }

    #[test]
    fn the_macro_works_inside_the_runtime() {
        assert_eq!(join_within(double.spawn(21).unwrap()).unwrap(), 42);
    }

    #[test]
    fn an_unknown_function_is_an_error_listing_the_known_ones() {
        let call = message::call_frame_with(0, "no::such::function", |out| codec::encode_into("arguments", &1u64, out))
            .unwrap();
        let p: Process<u64> = ProcessBuilder::new().spawn_call(call, |b| codec::decode("result", b)).unwrap();
        match join_within(p) {
            Err(Error::UnknownFunction { name, known }) => {
                assert_eq!(name, "no::such::function");
                assert!(known.iter().any(|k| k == "multiproc_runtime::process::tests::double"), "{known:?}");
            }
            other => panic!("expected an unknown function, got {other:?}"),
        }
    }

    #[test]
    fn arguments_of_the_wrong_type_are_a_decode_error_in_the_child() {
        let spawn_with = |args: &dyn Fn(&mut Vec<u8>)| {
            let call = message::call_frame_with(0, double.name(), |out| {
                args(out);
                Ok(())
            })
            .unwrap();
            join_within(ProcessBuilder::new().spawn_call::<u64>(call, |b| codec::decode("result", b)).unwrap())
        };
        // too short for the u64 parameter
        match spawn_with(&|out| out.push(1)) {
            Err(Error::Decode { what: "arguments", type_name, .. }) => assert_eq!(type_name, "u64"),
            other => panic!("expected a decode error, got {other:?}"),
        }
        // a u64 and then more: the left-over bytes are an error, not ignored
        match spawn_with(&|out| out.extend_from_slice(&[0; 12])) {
            Err(Error::Decode { what: "arguments", message, .. }) => {
                assert!(message.contains("4 bytes left over"), "{message}")
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
}
