//! One child process of this executable, as both `Process` and the pool's workers hold it:
//! started with its control socket and liveness pipe, signalled through its pidfd, reaped on
//! drop (killed first if it still runs).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::net::sockopt::Timeout;

use crate::entry::{self, CLOSE_ENV, DEPTH_ENV, WORKER_ENV};
use crate::error::{Error, Result};
use crate::output::{Forwarder, Output};
use crate::sys::{self, Sig};
use crate::wire::doorbell::Doorbell;
use crate::wire::frame::{Frame, FrameReader, OutFrame, RecvError};
use crate::wire::handshake::build_id;
use crate::wire::message::{self, Hello, PROTOCOL};

/// How to start a child: the parts of `ProcessBuilder` the spawn needs.
#[derive(Clone, Debug)]
pub(crate) struct Spawn<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) env: &'a [(std::ffi::OsString, Option<std::ffi::OsString>)],
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    pub(crate) executable: Option<&'a std::path::Path>,
    /// A `Process` child exits after one call; a pool worker serves until hung up.
    pub(crate) one_shot: bool,
    /// The longest frame either side may send.
    pub(crate) max_frame_len: usize,
    /// How long the child has to answer the handshake.
    pub(crate) handshake_timeout: Duration,
}

/// A started child.
#[derive(Debug)]
pub(crate) struct ChildProc {
    pub(crate) pid: u32,
    pub(crate) executable: PathBuf,
    /// `None` for an MPI rank (not a child of this process).
    child: Option<Child>,
    /// Readable once the child ended (for an MPI rank: once its session ended).
    pidfd: OwnedFd,
    /// The child ends when this closes: when this is dropped, or this process dies.
    _liveness: Option<OwnedFd>,
    /// Rung by a local pool worker after each reply.
    pub(crate) doorbell: Option<Doorbell>,
    pub(crate) reader: FrameReader,
    forwarder: Option<Forwarder>,
    status: Option<ExitStatus>,
    /// The last signal sent through this handle.
    sent: Option<Sig>,
    /// When the child must have answered the handshake by.
    pub(crate) handshake_deadline: Instant,
    pub(crate) handshake_timeout: Duration,
    /// The session with an MPI rank serving as this worker: its frames go there, not through
    /// `reader` (last: it ends after the rest is dropped).
    #[cfg(feature = "mpi")]
    link: Option<crate::mpi::Link>,
}

impl ChildProc {
    /// Starts a child and sends it the handshake, then `first` if given. A child that dies at
    /// once is not an error here: reading from it then tells how it died. A `first` frame over
    /// the frame limit is refused before anything starts; one the child does not read within
    /// the handshake's time is [`Error::HandshakeTimedOut`], and the child is killed.
    pub(crate) fn spawn(how: &Spawn<'_>, first: Option<OutFrame>) -> Result<ChildProc> {
        if let Some(first) = &first {
            first.check_len(how.max_frame_len)?;
        }
        let depth = entry::child_depth()?;
        let (ours, theirs) =
            sys::socketpair().map_err(|e| Error::io("could not create a socketpair for the child", e))?;
        let (live_read, live_write) =
            sys::liveness_pipe().map_err(|e| Error::io("could not create the child's liveness pipe", e))?;
        let executable = how.executable.map_or_else(|| PathBuf::from("/proc/self/exe"), PathBuf::from);
        let mut cmd = Command::new(&executable);
        if how.executable.is_none() {
            if let Some(arg0) = std::env::args_os().next() {
                cmd.arg0(arg0);
            }
        }
        cmd.stdin(Stdio::from(theirs))
            .stdout(how.stdout.stdio())
            .stderr(how.stderr.stdio())
            .env(WORKER_ENV, "1")
            .env(DEPTH_ENV, depth.to_string());
        // A child keeps only its stdio (and what the handshake sends it): a descriptor this
        // process has without FD_CLOEXEC is named to the child, whose start-up hook closes it
        // before anything else runs. (A pre-exec hook could close it, but makes std fork
        // instead of posix_spawn: 0.25 ms more a spawn here, more for a large parent.)
        let inherited = sys::inheritable_above_stdio();
        if !inherited.is_empty() {
            let list: Vec<String> = inherited.iter().map(i32::to_string).collect();
            cmd.env(CLOSE_ENV, list.join(","));
        } else {
            cmd.env_remove(CLOSE_ENV);
        }
        for (key, value) in how.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let mut child = cmd.spawn().map_err(|source| Error::Spawn { program: executable.clone(), error: source })?;
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
        let stdout = if forward(how.stdout) { child.stdout.take() } else { None };
        let stderr = if forward(how.stderr) { child.stderr.take() } else { None };
        let forwarder = Forwarder::start(stdout, stderr);

        let handshake_deadline = Instant::now() + how.handshake_timeout;
        let mut reader = FrameReader::new(ours);
        reader.set_max_len(how.max_frame_len);
        crate::current::started(child.id());
        let proc = ChildProc {
            pid: child.id(),
            executable,
            child: Some(child),
            pidfd,
            _liveness: Some(live_write),
            doorbell: None,
            reader,
            forwarder,
            status: None,
            sent: None,
            handshake_deadline,
            handshake_timeout: how.handshake_timeout,
            #[cfg(feature = "mpi")]
            link: None,
        };
        proc.greet(how, first, Some(live_read))
    }

    /// Uses a free MPI rank (the lowest that serves no pool) as a pool worker: opens a session
    /// with it, and greets it as a child (the same handshake and build check, without a
    /// liveness pipe: a rank ends with the job).
    #[cfg(feature = "mpi")]
    pub(crate) fn attach_rank(how: &Spawn<'_>, first: Option<OutFrame>) -> Result<ChildProc> {
        if let Some(first) = &first {
            first.check_len(how.max_frame_len)?;
        }
        let io = |e| Error::io("could not open a session with an MPI rank", e);
        let mut link = crate::mpi::open_free().map_err(io)?;
        link.set_max_len(how.max_frame_len);
        let pidfd = link.quiet_clone().map_err(io)?;
        let reader = FrameReader::new(link.quiet_clone().map_err(io)?);
        let mut proc = ChildProc {
            pid: link.peer() as u32,
            executable: std::env::current_exe().unwrap_or_default(),
            child: None,
            pidfd,
            _liveness: None,
            doorbell: None,
            reader,
            forwarder: None,
            status: None,
            sent: None,
            handshake_deadline: Instant::now() + how.handshake_timeout,
            handshake_timeout: how.handshake_timeout,
            link: Some(link),
        };
        proc.send_to_rank(message::hello_frame(&hello(how, false))?, how.max_frame_len)?;
        if let Some(first) = first {
            proc.send_to_rank(first, how.max_frame_len)?;
        }
        Ok(proc)
    }

    /// Sends a whole frame to the rank serving as this worker.
    #[cfg(feature = "mpi")]
    fn send_to_rank(&mut self, frame: OutFrame, max: usize) -> Result<()> {
        let link = self.link.as_mut().expect("only for a rank");
        link.send(&frame.finish(max)?.bytes)
    }

    /// The session with the MPI rank serving as this worker, if it is one.
    #[cfg(feature = "mpi")]
    pub(crate) fn link(&mut self) -> Option<&mut crate::mpi::Link> {
        self.link.as_mut()
    }

    /// The next frame from the child, waiting at most until `deadline`.
    pub(crate) fn read(&mut self, deadline: Option<Instant>) -> std::result::Result<Frame, RecvError> {
        #[cfg(feature = "mpi")]
        if let Some(link) = &mut self.link {
            return link.read(deadline);
        }
        self.reader.read(deadline)
    }

    /// The next frame from the child if one is whole, without waiting.
    pub(crate) fn try_read(&mut self) -> std::result::Result<Option<Frame>, RecvError> {
        #[cfg(feature = "mpi")]
        if let Some(link) = &mut self.link {
            return link.try_read();
        }
        self.reader.try_read()
    }

    /// Whether a reply may be waiting that a poll of [`socket`](Self::socket) would not show
    /// (an MPI rank's: it comes as a message, with no descriptor to poll).
    #[cfg(feature = "mpi")]
    pub(crate) fn has_message(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.has_message())
    }

    /// Whether this worker is an MPI rank (whose replies are looked for, not polled).
    pub(crate) fn is_rank(&self) -> bool {
        #[cfg(feature = "mpi")]
        if self.link.is_some() {
            return true;
        }
        false
    }

    /// Tells the child no more calls come: it exits (a rank: ends the session) once its
    /// current call is done.
    pub(crate) fn hang_up(&mut self) {
        #[cfg(feature = "mpi")]
        if let Some(link) = &mut self.link {
            link.hang_up();
            return;
        }
        let _ = rustix::net::shutdown(self.reader.socket(), rustix::net::Shutdown::Write);
    }

    /// Sends the handshake (with the liveness pipe's read end, for a local child), then
    /// `first`.
    fn greet(mut self, how: &Spawn<'_>, first: Option<OutFrame>, liveness: Option<OwnedFd>) -> Result<ChildProc> {
        // a local pool worker's replies are awaited by spinning on its doorbell
        if !how.one_shot && liveness.is_some() {
            self.doorbell = Doorbell::new().ok();
        }
        let hello = hello(how, self.doorbell.is_some());
        // A child that reads nothing (not a multiproc binary) makes a send wait: no send may
        // wait longer than the handshake's time without progress.
        let sock = self.reader.socket();
        let _ = rustix::net::sockopt::set_socket_timeout(sock, Timeout::Send, Some(how.handshake_timeout));
        let mut hello = message::hello_frame(&hello)?;
        if let Some(bell) = &self.doorbell {
            hello.fds.push(bell.fd().try_clone_to_owned().map_err(|e| Error::io("could not share a doorbell", e))?);
        }
        hello.fds.extend(liveness); // ours closes once sent: the child's is then the only one
        let mut sent = hello.send(sock, how.max_frame_len);
        if let (Ok(()), Some(first)) = (&sent, first) {
            sent = first.send(sock, how.max_frame_len);
            if let (Ok(()), Some(bell)) = (&sent, &self.doorbell) {
                bell.ring(1); // a call, as the worker counts them
            }
        }
        let _ = rustix::net::sockopt::set_socket_timeout(sock, Timeout::Send, None);
        match sent {
            Err(Error::Io { error: source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
                self.kill_and_reap();
                Err(self.handshake_timed_out())
            }
            // A child that died at once (broken pipe): joining it tells how.
            _ => Ok(self),
        }
    }

    /// The error of a child that did not answer the handshake in time.
    pub(crate) fn handshake_timed_out(&self) -> Error {
        Error::HandshakeTimedOut { pid: self.pid, executable: self.executable.clone(), timeout: self.handshake_timeout }
    }

    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.reader.socket()
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The child's resident memory in bytes (from `/proc/<pid>/statm`); `None` for a rank or
    /// a child that is gone.
    pub(crate) fn resident_bytes(&self) -> Option<u64> {
        self.child.as_ref()?;
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * rustix::param::page_size() as u64)
    }

    /// Whether the child has ended (without reaping it). A rank: whether its session's end
    /// has been read.
    pub(crate) fn has_exited(&self) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(link) = &self.link {
            return self.status.is_some() || link.peer_ended();
        }
        self.status.is_some() || sys::wait_readable(self.pidfd.as_fd(), Some(Instant::now())).unwrap_or(false)
    }

    /// The exit status, reaping the child if it has ended.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = match &mut self.child {
                Some(child) => child.try_wait().ok().flatten(),
                None => self.rank_ended(None).then(|| ExitStatus::from_raw(0)),
            };
        }
        self.status
    }

    /// Whether the rank serving as this worker has ended its session (taking what it sent
    /// before that), looking until `deadline` (`None`: now only).
    fn rank_ended(&mut self, deadline: Option<Instant>) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(link) = &mut self.link {
            return match deadline {
                None => link.drain_now(),
                Some(d) => link.finish(Some(d)),
            };
        }
        let _ = deadline;
        self.has_exited()
    }

    /// Sends `sig`; nothing happens once the child has been reaped.
    pub(crate) fn signal(&mut self, sig: Sig) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.sent = Some(sig);
        if self.child.is_none() {
            self.end_session();
            return Ok(());
        }
        sys::pidfd_signal(self.pidfd.as_fd(), sig).map_err(|e| Error::io("could not signal the child", e))
    }

    /// Waits for the child to exit and reaps it. `None` when the deadline passed first.
    pub(crate) fn wait_exit(&mut self, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let exited = match self.child {
            Some(_) => sys::wait_readable(self.pidfd.as_fd(), deadline)
                .map_err(|e| Error::io("could not wait for the child", e))?,
            None => self.rank_ended(Some(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)))),
        };
        if !exited {
            return Ok(None);
        }
        let status = match &mut self.child {
            Some(child) => child.wait().map_err(|e| Error::io("could not reap the child", e))?,
            None => ExitStatus::from_raw(0),
        };
        self.status = Some(status);
        self.finish_output();
        Ok(Some(status))
    }

    /// Prints what the (exited) child left in its output pipes.
    fn finish_output(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.finish();
        }
    }

    /// Kills the child (if it still runs) and reaps it.
    pub(crate) fn kill_and_reap(&mut self) {
        if self.status.is_none() {
            match &mut self.child {
                Some(child) => {
                    let _ = sys::pidfd_signal(self.pidfd.as_fd(), Sig::Kill);
                    self.status = child.wait().ok();
                }
                None => {
                    self.end_session();
                    self.status = Some(ExitStatus::from_raw(0));
                }
            }
        }
        self.finish_output();
    }

    /// Ends an MPI rank's session: it sees the session end once its task (if any) is done. A
    /// rank cannot be killed from here.
    fn end_session(&mut self) {
        self.hang_up();
    }

    /// Why a child that gave no reply ended. `greeted`: it had passed the handshake.
    pub(crate) fn death(&self, status: ExitStatus, greeted: bool) -> Error {
        let pid = self.pid;
        if let Some(signal) = status.signal() {
            if self.sent.is_some_and(|s| s.number() == signal) {
                return Error::Killed { pid, signal, name: sys::signal_name(signal) };
            }
            // Even before the handshake, a signal is a death to report as such (a kill from
            // outside, the OOM killer, a crash at start-up): a binary that is not multiproc's
            // would exit, not be signaled.
            crate::trace::event!(warn, pid, signal, "a child process was killed by a signal");
            return Error::Signaled { pid, signal, name: sys::signal_name(signal) };
        }
        if !greeted {
            return Error::NoHandshake { pid, executable: self.executable.clone() };
        }
        Error::Exited { pid, code: status.code().unwrap_or(-1) }
    }

    pub(crate) fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    pub(crate) fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.as_mut()?.stderr.take()
    }
}

/// The handshake a child (or a rank) is greeted with.
fn hello(how: &Spawn<'_>, doorbell: bool) -> Hello {
    Hello {
        protocol: PROTOCOL,
        build_id: build_id().to_vec(),
        name: how.name.map(str::to_owned),
        one_shot: how.one_shot,
        max_frame_len: how.max_frame_len as u64,
        doorbell,
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill_and_reap();
        crate::current::gone(self.pid);
    }
}
