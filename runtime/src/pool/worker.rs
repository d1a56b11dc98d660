//! One worker process of a pool, from the parent's side: its connection, the frames waiting to
//! be written, and the tasks it holds, in the order it runs them.

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::net::SendFlags;

use crate::child::ChildProc;
use crate::error::Error;
use crate::pool::config::Config;
use crate::pool::shared::{Inner, State};
use crate::pool::task::{Failure, Task};
use crate::process::fail_error;
use crate::wire::codec;
use crate::wire::frame::{self, Encoded, Frame, Kind, RecvError};
use crate::wire::message::{self, PanicReport};

/// A live worker.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) child: ChildProc,
    /// Tasks sent (or queued to send), oldest first: the worker runs them in this order.
    pub(crate) inflight: VecDeque<Task>,
    /// Bytes not yet written: whole frames, and how much of the first is sent.
    outq: VecDeque<std::sync::Arc<Encoded>>,
    sent: usize,
    /// Tasks it has finished.
    pub(crate) done: u64,
    /// When the task at the head started running (roughly: when the previous one finished).
    head_since: Instant,
    /// Retire it once its in-flight tasks are done (max tasks per child reached).
    pub(crate) retiring: bool,
    /// It was killed to cancel the task with this id, running at its head.
    pub(crate) killing: Option<u64>,
}

/// Why a worker could not be started.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The initializer failed (it returned an error, panicked, or overran the task limit), or
    /// the worker cannot work at all: the pool must not start more.
    Fatal(Error),
    /// The pool stopped wanting it (terminated, or joined with no work left).
    Stopped,
}

/// Why one attempt to start a worker failed.
enum Setback {
    Fatal(Error),
    /// The process died, or never answered, before it was ready: a kill from outside (the OOM
    /// killer, say) is survived by trying again.
    Died(Error),
}

/// Starts that die in a row before the pool gives up: a worker killed from outside while it
/// starts is replaced, but an initializer that crashes every time must not respawn forever.
const MAX_DEATHS_IN_A_ROW: u32 = 6;
/// The pause before the first retry; it doubles each time, up to a second.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

impl Worker {
    /// Starts a worker, runs the initializer in it, and waits until it is ready. A death
    /// before then is retried (with a growing pause, a bounded number of times in a row); a
    /// failing initializer is fatal at once.
    pub(crate) fn start(inner: &Arc<Inner>, index: usize) -> std::result::Result<Worker, StartError> {
        let mut deaths = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            if inner.read(stopped) {
                return Err(StartError::Stopped);
            }
            match Self::attempt(inner, index) {
                Ok(w) => {
                    crate::trace::event!(debug, pid = w.pid(), worker = index, "started a pool worker");
                    return Ok(w);
                }
                Err(Setback::Fatal(e)) => return Err(StartError::Fatal(e)),
                Err(Setback::Died(_)) if inner.read(stopped) => return Err(StartError::Stopped),
                Err(Setback::Died(e)) => {
                    deaths += 1;
                    if deaths >= MAX_DEATHS_IN_A_ROW {
                        let message = format!("{deaths} workers in a row died while starting; the last: {e}");
                        return Err(StartError::Fatal(Error::InitializerFailed { message }));
                    }
                    // the pause ends early if the pool stops wanting the worker
                    inner.wait_until(Some(backoff), stopped);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn attempt(inner: &Inner, index: usize) -> std::result::Result<Worker, Setback> {
        let config = &inner.config;
        let name = format!("multiproc-w{index}");
        let mut how = config.process.how(false);
        how.name = Some(&name);
        let first = match &config.initializer {
            Some(init) => match init.frame() {
                Ok(f) => Some(f),
                Err(e) => return Err(Setback::Fatal(e)),
            },
            None => None,
        };
        // Over MPI, a worker is a rank: a death there ends the job, so nothing is retried.
        #[cfg(feature = "mpi")]
        if config.mpi {
            let rank = ChildProc::attach_rank(&how, first).map_err(Setback::Fatal)?;
            return Self::spawned(inner, Ok(rank));
        }
        Self::spawned(inner, ChildProc::spawn(&how, first))
    }

    fn spawned(inner: &Inner, spawned: Result<ChildProc, Error>) -> std::result::Result<Worker, Setback> {
        let config = &inner.config;
        let mut child = match spawned {
            Ok(child) => child,
            // a full process table, say: worth another try
            Err(e @ (Error::Spawn { .. } | Error::HandshakeTimedOut { .. } | Error::Io { .. })) => {
                return Err(Setback::Died(e))
            }
            Err(e) => return Err(Setback::Fatal(e)),
        };
        if !inner.enlist(child.pid, child.pidfd()) {
            return Err(Setback::Died(Error::PoolTerminated));
        }
        let ready = Self::handshake(config, &mut child)
            .and_then(|()| child.reader.set_nonblocking(true).map_err(Setback::Fatal));
        if let Err(setback) = ready {
            inner.delist(child.pid);
            child.kill_and_reap();
            return Err(setback);
        }
        Ok(Worker {
            child,
            inflight: VecDeque::new(),
            outq: VecDeque::new(),
            sent: 0,
            done: 0,
            head_since: Instant::now(),
            retiring: false,
            killing: None,
        })
    }

    /// Waits for the child's `Ready`, then for the initializer's reply, and classifies what
    /// happened by what it was: a reply that says the initializer failed is fatal, a death or
    /// silence is not.
    fn handshake(config: &Config, child: &mut ChildProc) -> std::result::Result<(), Setback> {
        let mut greeted = false;
        let mut init_deadline = None;
        loop {
            let deadline = if greeted { init_deadline } else { Some(child.handshake_deadline) };
            match child.read(deadline) {
                Ok(f) if f.kind == Kind::Ready => {
                    greeted = true;
                    let Some(_) = &config.initializer else { return Ok(()) };
                    init_deadline = config.task_timeout.map(|limit| Instant::now() + limit);
                }
                Ok(f) if !greeted => {
                    // a refusal (another build, say) comes instead of `Ready`
                    let e = reply_error(child.pid, &f, &child.executable)
                        .unwrap_or_else(|| Error::BadFrame { reason: "a reply before the handshake".into() });
                    return Err(Setback::Fatal(e));
                }
                Ok(f) => {
                    let init = config.initializer.as_ref().expect("a reply after Ready answers the initializer");
                    if let Some(e) = reply_error(child.pid, &f, &child.executable) {
                        return Err(Setback::Fatal(Error::InitializerFailed { message: e.to_string() }));
                    }
                    let (_, body) = message::split_id(&f.payload).unwrap_or((0, &[]));
                    return init.check(body).map_err(Setback::Fatal);
                }
                Err(RecvError::Failed(e)) => {
                    return Err(Setback::Fatal(Error::InitializerFailed { message: e.to_string() }))
                }
                Err(RecvError::TimedOut) if !greeted => return Err(Setback::Died(child.handshake_timed_out())),
                Err(RecvError::TimedOut) => {
                    let limit = config.task_timeout.unwrap_or_default();
                    let message = format!("it ran longer than the task limit of {limit:?} and was killed");
                    return Err(Setback::Fatal(Error::InitializerFailed { message }));
                }
                Err(RecvError::Closed | RecvError::Truncated) => {
                    let e = match child.wait_exit(None) {
                        Ok(Some(status)) => child.death(status, greeted),
                        Ok(None) => Error::NoHandshake { pid: child.pid, executable: child.executable.clone() },
                        Err(e) => e,
                    };
                    return Err(Setback::Died(e));
                }
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.pid
    }

    /// Queues a task's frame for writing.
    pub(crate) fn push(&mut self, task: Task) {
        if self.inflight.is_empty() {
            self.head_since = Instant::now();
        }
        task.span.sent_to(self.pid());
        self.outq.push_back(std::sync::Arc::clone(&task.frame));
        self.inflight.push_back(task);
    }

    /// Whether it may take another task: under the per-worker limit, and under its task limit
    /// counting the ones it holds.
    pub(crate) fn has_room(&self, per_worker: usize, max_tasks: Option<u64>) -> bool {
        let held = self.inflight.len();
        !self.retiring && held < per_worker && max_tasks.is_none_or(|max| self.done + (held as u64) < max)
    }

    /// Whether frames wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        !self.outq.is_empty()
    }

    /// Writes what it can without blocking. An error means the worker is gone.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(link) = self.child.link() {
            // a frame to a rank is one message, posted whole: the driver goes on to its other
            // ranks while MPI moves it
            while let Some(front) = self.outq.pop_front() {
                link.post(crate::mpi::Outgoing::Shared(front)).map_err(|e| io::Error::other(e.to_string()))?;
            }
            return Ok(());
        }
        while let Some(front) = self.outq.front() {
            let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
            match frame::send_part(self.child.socket(), &front.bytes, &front.fds, self.sent, flags) {
                Ok(n) => {
                    self.sent += n;
                    if self.sent == front.bytes.len() {
                        self.outq.pop_front();
                        self.sent = 0;
                        if let Some(bell) = &self.child.doorbell {
                            bell.ring(1); // a call sent: the worker may be watching for it
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes everything, waiting as needed (for a caller that owns the worker alone).
    pub(crate) fn flush_all(&mut self) -> io::Result<()> {
        loop {
            self.flush()?;
            if self.outq.is_empty() {
                return Ok(());
            }
            let mut fds = [rustix::event::PollFd::from_borrowed_fd(self.child.socket(), rustix::event::PollFlags::OUT)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next reply that has arrived, paired with its task; `Ok(None)` when none is complete
    /// yet. An error means the worker is gone or broke the protocol.
    pub(crate) fn next_reply(&mut self) -> std::result::Result<Option<(Task, Frame)>, RecvError> {
        loop {
            let Some(frame) = self.child.try_read()? else { return Ok(None) };
            if frame.kind == Kind::Ready {
                continue;
            }
            let id = message::split_id(&frame.payload).map(|(id, _)| id);
            let Some(task) = self.inflight.pop_front() else {
                return Err(RecvError::Failed(Error::BadFrame { reason: "a reply with no task in flight".into() }));
            };
            if id != Some(task.id) {
                let reason = format!("a reply for task {id:?} while task {} was first in line", task.id);
                self.inflight.push_front(task);
                return Err(RecvError::Failed(Error::BadFrame { reason }));
            }
            self.done += 1;
            self.head_since = Instant::now();
            return Ok(Some((task, frame)));
        }
    }

    /// When the task at the head must be done by.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let head = self.inflight.front()?;
        Some(self.head_since + head.timeout?)
    }

    /// Why the task at the head got no answer, now that the worker is gone: kills it if it
    /// still runs, and reaps it.
    pub(crate) fn failure(&mut self, timed_out: bool) -> Failure {
        let pid = self.pid();
        if timed_out {
            let timeout = self.inflight.front().and_then(|t| t.timeout).unwrap_or_default();
            crate::trace::event!(
                warn,
                pid,
                ?timeout,
                "a task ran past its time limit: its worker is killed and replaced"
            );
            self.child.kill_and_reap();
            return Failure::TimedOut { pid, timeout };
        }
        // EOF or a broken frame: it is dying or must die.
        let status = match self.child.wait_exit(Some(Instant::now() + std::time::Duration::from_millis(500))) {
            Ok(Some(status)) => Some(status),
            _ => {
                self.child.kill_and_reap();
                self.child.try_status()
            }
        };
        let (signal, code) = (status.and_then(|s| s.signal()), status.and_then(|s| s.code()));
        crate::trace::event!(warn, pid, signal, code, "a pool worker died running a task");
        Failure::Died { pid, signal, code }
    }
}

/// The error a single-call reply stands for, or `None` for a `Return`.
pub(crate) fn reply_error(pid: u32, frame: &Frame, executable: &std::path::Path) -> Option<Error> {
    let body = match message::split_id(&frame.payload) {
        Some((_, body)) => body,
        None => return Some(Error::BadFrame { reason: "reply without a task id".into() }),
    };
    match frame.kind {
        Kind::Return | Kind::BatchReturn => None,
        Kind::Panic => Some(match codec::decode::<PanicReport>("message", body) {
            Ok(r) => Error::Panicked { pid, message: r.message, location: r.location, backtrace: r.backtrace },
            Err(e) => e,
        }),
        Kind::Fail => Some(match codec::decode("message", body) {
            Ok(report) => fail_error(report, executable),
            Err(e) => e,
        }),
        other => Some(Error::BadFrame { reason: format!("unexpected {other:?} frame from a worker") }),
    }
}

/// Whether the pool no longer wants new workers.
fn stopped(st: &State) -> bool {
    st.terminated || (st.closed && st.queue.is_empty() && st.outstanding() == 0)
}
