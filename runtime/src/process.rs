//! One child process running one function: Python's `Process`, typed.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::entry::{self, DEPTH_ENV, WORKER_ENV};
use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::output::{Forwarder, Output};
use crate::registry;
use crate::sys::{self, Sig};
use crate::wire::codec;
use crate::wire::frame::{Frame, FrameReader, Kind, OutFrame, RecvError};
use crate::wire::handshake::{build_id, hex};
use crate::wire::message::{self, FailReport, Hello, PanicReport, PROTOCOL};

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
#[derive(Clone, Debug, Default)]
pub struct ProcessBuilder {
    name: Option<String>,
    env: Vec<(OsString, Option<OsString>)>,
    stdout: Output,
    stderr: Output,
    executable: Option<PathBuf>,
}

impl ProcessBuilder {
    /// Default options: the same executable, the parent's environment, output inherited.
    pub fn new() -> Self {
        Self::default()
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

    /// Starts `f(args)` in a new child process.
    ///
    /// The arguments are serialized first: if that fails, the error comes back before any
    /// process starts.
    pub fn spawn<F: ProcessFn>(&self, f: F, args: F::Args) -> Result<Process<F::Output>> {
        let _ = f;
        registry::lookup(F::NAME)?;
        let call = message::call_frame::<F>(0, &args)?;
        self.spawn_call(call, F::decode_output)
    }

    /// Starts a child and sends it `call`, whatever function it names; `decode` reads its result.
    pub(crate) fn spawn_call<T>(&self, call: OutFrame, decode: fn(&[u8]) -> Result<T>) -> Result<Process<T>> {
        let depth = entry::child_depth()?;
        let (ours, theirs) =
            sys::socketpair().map_err(|e| Error::io("could not create a socketpair for the child", e))?;
        let (live_read, live_write) =
            sys::liveness_pipe().map_err(|e| Error::io("could not create the child's liveness pipe", e))?;
        let executable = self.executable.clone().unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        let mut cmd = Command::new(&executable);
        if self.executable.is_none() {
            if let Some(arg0) = std::env::args_os().next() {
                cmd.arg0(arg0);
            }
        }
        cmd.stdin(Stdio::from(theirs))
            .stdout(self.stdout.stdio())
            .stderr(self.stderr.stdio())
            .env(WORKER_ENV, "1")
            .env(DEPTH_ENV, depth.to_string());
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let mut child = cmd.spawn().map_err(|source| Error::Spawn { program: executable.clone(), source })?;
        drop(cmd); // closes our copy of the child's end: EOF now means the child is gone
        let pidfd = match sys::pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::io("could not open a pidfd for the child", e));
            }
        };
        let forward = |on: Output| on == Output::Inherit;
        let stdout = if forward(self.stdout) { child.stdout.take() } else { None };
        let stderr = if forward(self.stderr) { child.stderr.take() } else { None };
        let forwarder = Forwarder::start(stdout, stderr);

        let hello =
            Hello { protocol: PROTOCOL, build_id: build_id().to_vec(), name: self.name.clone(), one_shot: true };
        let hello = message::hello_frame(&hello)?;
        // A child that died at once makes these fail; `join` then reports how it died.
        let _ = hello.send(ours.as_fd(), &[live_read.as_fd()]).and_then(|()| call.send(ours.as_fd(), &[]));
        drop(live_read);

        Ok(Process {
            pid: child.id(),
            name: self.name.clone(),
            executable,
            child,
            pidfd,
            _liveness: live_write,
            reader: FrameReader::new(ours),
            greeted: false,
            closed: false,
            reply: None,
            broken: None,
            status: None,
            sent: None,
            forwarder,
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
/// child is left running and no zombie remains. Join it to keep its work.
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
    pid: u32,
    name: Option<String>,
    executable: PathBuf,
    child: Child,
    pidfd: OwnedFd,
    /// The child ends when this closes: when the handle is dropped, or this process dies.
    _liveness: OwnedFd,
    reader: FrameReader,
    /// The child answered the handshake.
    greeted: bool,
    /// The child closed its end.
    closed: bool,
    reply: Option<Frame>,
    /// The child broke the protocol; it has been killed.
    broken: Option<Error>,
    status: Option<ExitStatus>,
    /// The last signal this handle sent.
    sent: Option<Sig>,
    forwarder: Option<Forwarder>,
    joined: bool,
    decode: fn(&[u8]) -> Result<T>,
}

impl<T> fmt::Debug for Process<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
            .field("name", &self.name)
            .field("status", &self.status)
            .finish_non_exhaustive()
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
        let pid = self.pid;
        let timed_out = || Error::TimedOut { pid, timeout };
        while self.reply.is_none() && !self.closed && self.broken.is_none() {
            match self.reader.read(deadline) {
                Ok(frame) => match frame.kind {
                    Kind::Ready => self.greeted = true,
                    Kind::Return | Kind::Panic | Kind::Fail => self.reply = Some(frame),
                    other => self.break_off(format!("unexpected {other:?} frame from the child")),
                },
                Err(RecvError::Closed) => self.closed = true,
                Err(RecvError::TimedOut) => return Err(timed_out()),
                Err(RecvError::Failed(e)) => {
                    let _ = sys::pidfd_signal(self.pidfd.as_fd(), Sig::Kill);
                    self.broken = Some(e);
                }
            }
        }
        let status = match self.wait_exit(deadline)? {
            Some(status) => status,
            None => return Err(timed_out()),
        };
        self.joined = true;
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.finish();
        }
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        match self.reply.take() {
            Some(frame) => self.outcome(frame),
            None => Err(self.death(status)),
        }
    }

    fn break_off(&mut self, reason: String) {
        let _ = sys::pidfd_signal(self.pidfd.as_fd(), Sig::Kill);
        self.broken = Some(Error::BadFrame { reason });
    }

    /// Turns the child's reply into the result.
    fn outcome(&self, frame: Frame) -> Result<T> {
        let (_, body) = message::split_id(&frame.payload)
            .ok_or_else(|| Error::BadFrame { reason: "reply without a task id".into() })?;
        match frame.kind {
            Kind::Return => (self.decode)(body),
            Kind::Panic => {
                let report: PanicReport = codec::decode("message", body)?;
                Err(Error::Panicked {
                    pid: self.pid,
                    message: report.message,
                    location: report.location,
                    backtrace: report.backtrace,
                })
            }
            _ => Err(self.failure(codec::decode("message", body)?)),
        }
    }

    fn failure(&self, report: FailReport) -> Error {
        fail_error(report, &self.executable)
    }

    /// Why a child that gave no reply ended.
    fn death(&self, status: ExitStatus) -> Error {
        let pid = self.pid;
        if let Some(signal) = status.signal() {
            if self.sent.is_some_and(|s| s.number() == signal) {
                return Error::Killed { pid, signal, name: sys::signal_name(signal) };
            }
            if !self.greeted {
                return Error::NoHandshake { pid, executable: self.executable.clone() };
            }
            return Error::Signaled { pid, signal, name: sys::signal_name(signal) };
        }
        if !self.greeted {
            return Error::NoHandshake { pid, executable: self.executable.clone() };
        }
        Error::Exited { pid, code: status.code().unwrap_or(-1) }
    }
}

impl<T> Process<T> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given with [`ProcessBuilder::name`].
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the child is still running (it may have returned its result already).
    pub fn is_alive(&self) -> bool {
        self.status.is_none() && !sys::wait_readable(self.pidfd.as_fd(), Some(Instant::now())).unwrap_or(false)
    }

    /// The child's exit status, once it has ended: a code, or the signal that ended it
    /// (`ExitStatusExt::signal`). `None` while it runs. Python's `exitcode`.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Asks the child to stop with `SIGTERM` (Python's `terminate`). A join then gives
    /// [`Error::Killed`], unless the child had already returned its result.
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(Sig::Term)
    }

    /// Stops the child with `SIGKILL` (Python's `kill`). A join then gives [`Error::Killed`],
    /// unless the child had already returned its result.
    pub fn kill(&mut self) -> Result<()> {
        self.signal(Sig::Kill)
    }

    fn signal(&mut self, sig: Sig) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.sent = Some(sig);
        sys::pidfd_signal(self.pidfd.as_fd(), sig).map_err(|e| Error::io("could not signal the child", e))
    }

    /// The read end of the child's stdout, when it was started with [`Output::Piped`]; taken
    /// once.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The read end of the child's stderr, when it was started with [`Output::Piped`]; taken
    /// once.
    pub fn stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for the child to exit and reaps it. `None` when the deadline passed first.
    fn wait_exit(&mut self, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let exited = sys::wait_readable(self.pidfd.as_fd(), deadline)
            .map_err(|e| Error::io("could not wait for the child", e))?;
        if !exited {
            return Ok(None);
        }
        let status = self.child.wait().map_err(|e| Error::io("could not reap the child", e))?;
        self.status = Some(status);
        Ok(Some(status))
    }
}

impl<T> Drop for Process<T> {
    fn drop(&mut self) {
        if self.status.is_none() {
            if !self.joined {
                let _ = sys::pidfd_signal(self.pidfd.as_fd(), Sig::Kill);
            }
            self.status = self.child.wait().ok();
        }
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.finish();
        }
    }
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
