//! The state a pool's callers, its driver thread and its respawn threads share, and the one
//! place it changes.
//!
//! Every change goes through [`Inner::update`], which wakes whoever waits for a change
//! ([`Inner::wait_until`], the only wait on the condition variable). The two counts a waiter
//! waits on are never written by hand: a task is counted by the [`Outstanding`] token it
//! carries, a worker being started by a [`Starting`] token, and each token gives its count back
//! when it is dropped, on every path (return, error, unwind).

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rustix::event::EventfdFlags;

use crate::error::{Error, Result};
use crate::pool::config::Config;
use crate::pool::task::{Delivery, Failure, Sink, Task};
use crate::pool::worker::{StartError, Worker};
use crate::sys::{self, Sig};
use crate::wire::frame::Encoded;

/// A pool, shared.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    state: Mutex<State>,
    /// Signalled by `update` when someone waits.
    changed: Condvar,
    /// Wakes the driver from its poll.
    wake: OwnedFd,
    next_id: AtomicU64,
}

/// What is waiting, who is free, and whether the pool still takes work.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Workers with nothing to do, owned by nobody.
    pub(crate) idle: Vec<Worker>,
    /// Tasks no worker has yet.
    pub(crate) queue: VecDeque<Task>,
    /// Tasks that exist, wherever they are. Changed only by [`Outstanding`].
    outstanding: usize,
    /// Workers being started. Changed only by [`Starting`].
    starting: usize,
    /// Every live worker process, starting ones included, with a pidfd to kill it by.
    pub(crate) members: BTreeMap<u32, Member>,
    /// Workers told to exit, for the driver to reap.
    pub(crate) exiting: Vec<Worker>,
    pub(crate) closed: bool,
    pub(crate) terminated: bool,
    /// No worker can be started: the initializer's failure.
    pub(crate) broken: Option<String>,
    /// Workers started so far, to name the next.
    pub(crate) started: usize,
    /// Threads in `wait_until`.
    waiters: usize,
    /// Tasks to cancel even if they run (their worker killed), for the driver.
    pub(crate) kill_requests: Vec<u64>,
}

/// A worker process the pool knows of.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) pidfd: Arc<OwnedFd>,
    /// It answered the handshake and ran the initializer: it serves.
    pub(crate) ready: bool,
}

impl State {
    /// Why a new task cannot be taken, if it cannot.
    pub(crate) fn refusal(&self) -> Option<Failure> {
        if self.terminated {
            Some(Failure::Terminated)
        } else if self.closed {
            Some(Failure::Closed)
        } else {
            self.broken.clone().map(Failure::Broken)
        }
    }

    /// Tasks that exist now.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Workers being started now.
    pub(crate) fn starting(&self) -> usize {
        self.starting
    }

    /// Whether a worker that has just become free should go: the pool takes no more work and
    /// none is waiting.
    fn done_with_workers(&self) -> bool {
        self.terminated || (self.closed && self.queue.is_empty())
    }
}

thread_local! {
    /// The pool whose lock this thread holds inside `update`, if any.
    static HOLDING: Cell<*const Inner> = const { Cell::new(std::ptr::null()) };
    /// Tokens of that pool (tasks, starts) dropped while its lock was held: given back when its
    /// `update` ends.
    static DEFERRED: Cell<(*const Inner, usize, usize)> = const { Cell::new((std::ptr::null(), 0, 0)) };
}

/// Counts one task as outstanding while it exists.
#[derive(Debug)]
pub(crate) struct Outstanding(Weak<Inner>);

impl Outstanding {
    /// Counts a new task; made only under the lock, where the count lives.
    fn new(inner: &Arc<Inner>, st: &mut State) -> Outstanding {
        st.outstanding += 1;
        Outstanding(Arc::downgrade(inner))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.give_back(1, 0);
        }
    }
}

/// Counts one worker as being started while it exists.
#[derive(Debug)]
pub(crate) struct Starting(Weak<Inner>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.give_back(0, 1);
        }
    }
}

impl Inner {
    /// Runs `encode` (a task's frame): over MPI ranks, with every large value inline, as
    /// descriptors do not cross hosts.
    pub(crate) fn encoding<R>(&self, encode: impl FnOnce() -> R) -> R {
        match self.config.mpi {
            true => crate::wire::large::inline_only(encode),
            false => encode(),
        }
    }

    pub(crate) fn new(config: Config) -> Result<Inner> {
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::io("could not create the pool's eventfd", e.into()))?;
        Ok(Inner {
            config,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake,
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state, then wakes whoever waits for a change (the driver waits in `poll`,
    /// and is woken by the changes that concern it).
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.lock();
        let outer = HOLDING.with(|h| h.replace(self));
        let r = f(&mut st);
        HOLDING.with(|h| h.set(outer));
        let (tasks, starts) = DEFERRED.with(|d| match d.get() {
            (pool, tasks, starts) if std::ptr::eq(pool, self) => {
                d.set((std::ptr::null(), 0, 0));
                (tasks, starts)
            }
            _ => (0, 0),
        });
        let wake = take_back(&mut st, tasks, starts);
        let notify = st.waiters > 0;
        drop(st);
        if notify {
            self.changed.notify_all();
        }
        if wake {
            self.wake_driver();
        }
        r
    }

    /// Reads the state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    /// Waits until `done` holds, at most `timeout` if given; returns whether it holds.
    pub(crate) fn wait_until(&self, timeout: Option<Duration>, mut done: impl FnMut(&State) -> bool) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        st.waiters += 1;
        let held = loop {
            if done(&st) {
                break true;
            }
            match deadline {
                None => st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break false;
                    }
                    st = self.changed.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        };
        st.waiters -= 1;
        held
    }

    /// A token's count comes back: at once, or at the end of the `update` this thread is in.
    fn give_back(&self, tasks: usize, starts: usize) {
        if HOLDING.with(|h| std::ptr::eq(h.get(), self)) {
            DEFERRED.with(|d| {
                let (_, t, s) = d.get();
                d.set((self, t + tasks, s + starts));
            });
            return;
        }
        if self.update(|st| take_back(st, tasks, starts)) {
            self.wake_driver();
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Wakes the driver.
    pub(crate) fn wake_driver(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Clears the driver's wake-ups.
    pub(crate) fn drain_wake(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
    }

    /// Queues a task for the driver, or fails it at once if the pool takes no more work (or,
    /// over MPI ranks, if it carries handles).
    pub(crate) fn submit(
        self: &Arc<Self>,
        function: &'static str,
        id: u64,
        frame: Arc<Encoded>,
        timeout: Option<Duration>,
        retries_left: u32,
        sink: Sink,
    ) {
        if self.config.mpi && !frame.fds.is_empty() {
            let failure =
                Failure::Encode { type_name: "the arguments".into(), message: HANDLES_STAY_ON_THEIR_HOST.into() };
            sink.deliver(Delivery::Failed(failure));
            return;
        }
        let refused = self.update(|st| match st.refusal() {
            Some(failure) => Some((sink, failure)),
            None => {
                let _counted = Outstanding::new(self, st);
                let span = crate::trace::TaskSpan::new(function, id);
                st.queue.push_back(Task { id, frame, timeout, sink, _counted, span, retries_left });
                None
            }
        });
        match refused {
            Some((sink, failure)) => sink.deliver(Delivery::Failed(failure)),
            None => self.wake_driver(),
        }
    }

    /// Takes an idle worker and counts a task for it, for a caller that drives it itself.
    /// `Err` when the pool takes no work; `Ok(None)` when no worker is idle or tasks queue.
    pub(crate) fn lease(self: &Arc<Self>) -> std::result::Result<Option<(Worker, Outstanding)>, Failure> {
        self.update(|st| {
            if let Some(refusal) = st.refusal() {
                return Err(refusal);
            }
            if !st.queue.is_empty() {
                return Ok(None);
            }
            Ok(st.idle.pop().map(|w| (w, Outstanding::new(self, st))))
        })
    }

    /// Cancels the tasks among `ids` that no worker has yet: they never run, and complete with
    /// [`Failure::Cancelled`]. Returns how many there were.
    pub(crate) fn cancel_queued(&self, ids: &[u64]) -> usize {
        let cancelled: Vec<Task> = self.update(|st| {
            let (gone, kept): (VecDeque<Task>, VecDeque<Task>) =
                std::mem::take(&mut st.queue).into_iter().partition(|t| ids.contains(&t.id));
            st.queue = kept;
            gone.into_iter().collect()
        });
        let n = cancelled.len();
        for task in cancelled {
            task.complete(Delivery::Failed(Failure::Cancelled { killed: false }));
        }
        n
    }

    /// Asks the driver to cancel task `id` wherever it is: taken from the queue if no worker
    /// has it, its worker killed (and replaced) once it runs.
    pub(crate) fn request_kill(&self, id: u64) {
        self.update(|st| st.kill_requests.push(id));
        self.wake_driver();
    }

    /// Puts tasks that never started back at the front of the queue, in order (or fails them,
    /// after `terminate`).
    pub(crate) fn requeue(&self, tasks: impl DoubleEndedIterator<Item = Task>) {
        let refused: Vec<Task> = self.update(|st| {
            if st.terminated {
                return tasks.collect();
            }
            for task in tasks.rev() {
                st.queue.push_front(task);
            }
            Vec::new()
        });
        for task in refused {
            task.complete(Delivery::Failed(Failure::Terminated));
        }
        self.wake_driver();
    }

    /// Takes back a worker that has nothing in flight: idle again, retired if the pool is done
    /// with it, replaced if it is due.
    pub(crate) fn release(self: &Arc<Self>, worker: Worker) {
        let due = worker.retiring
            || self.config.max_tasks_per_child.is_some_and(|max| worker.done >= max)
            || self
                .config
                .max_memory_per_child
                .is_some_and(|max| worker.child.resident_bytes().is_some_and(|rss| rss > max));
        if due {
            self.replace(worker);
            return;
        }
        let queued = self.update(|st| {
            if st.done_with_workers() {
                retire(st, worker);
                return true;
            }
            st.idle.push(worker);
            !st.queue.is_empty()
        });
        if queued {
            self.wake_driver();
        }
    }

    /// Ends a worker (it is dead, killed, or due to be recycled) and starts another in its
    /// place, unless the pool is terminated, broken, or closed with no work left.
    pub(crate) fn replace(self: &Arc<Self>, worker: Worker) {
        crate::trace::event!(info, pid = worker.pid(), "replacing a pool worker");
        let token = self.update(|st| {
            retire(st, worker);
            let wanted = !st.done_with_workers() && st.broken.is_none();
            wanted.then(|| {
                st.starting += 1;
                st.started += 1;
                (Starting(Arc::downgrade(self)), st.started - 1)
            })
        });
        self.wake_driver();
        let Some((token, index)) = token else { return };
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("multiproc-respawn".into()).spawn(move || {
            let worker = Worker::start(&inner, index);
            inner.add_started(token, worker);
        });
        if let Err(e) = spawned {
            // the closure, and the token in it, are dropped: the count comes back
            let reason = format!("could not start a thread to replace a worker: {e}");
            let failed = self.update(|st| {
                st.broken = Some(reason.clone());
                st.queue.drain(..).collect::<Vec<_>>()
            });
            for task in failed {
                task.complete(Delivery::Failed(Failure::Broken(reason.clone())));
            }
        }
    }

    /// Records a worker started by `replace`. A worker whose initializer failed breaks the pool
    /// (no endless respawn loop), and fails every queued task with the cause.
    fn add_started(&self, token: Starting, started: std::result::Result<Worker, StartError>) {
        let pid = started.as_ref().ok().map(Worker::pid);
        let (late, failed) = self.update(move |st| {
            let _token = token; // the worker is in its place (or gone) before the count drops
            match started {
                Ok(w) if st.terminated => {
                    st.members.remove(&w.pid());
                    (Some(w), Vec::new())
                }
                Ok(w) => {
                    if st.done_with_workers() {
                        retire(st, w);
                    } else {
                        if let Some(m) = pid.and_then(|p| st.members.get_mut(&p)) {
                            m.ready = true;
                        }
                        st.idle.push(w);
                    }
                    (None, Vec::new())
                }
                Err(StartError::Stopped) => (None, Vec::new()),
                Err(StartError::Fatal(e)) => {
                    st.broken = Some(e.to_string());
                    (None, st.queue.drain(..).collect())
                }
            }
        });
        drop(late); // killed and reaped, outside the lock
        let reason = self.read(|st| st.broken.clone());
        for task in failed {
            task.complete(Delivery::Failed(Failure::Broken(reason.clone().unwrap_or_default())));
        }
        self.wake_driver();
    }

    /// Records a worker process as soon as it exists, so that `terminate` can kill it. `false`
    /// when the pool is already terminated (the caller then drops it).
    pub(crate) fn enlist(&self, pid: u32, pidfd: BorrowedFd<'_>) -> bool {
        let pidfd = match pidfd.try_clone_to_owned() {
            Ok(fd) => Arc::new(fd),
            Err(_) => return true, // still served; only `terminate` cannot reach it early
        };
        self.update(|st| {
            if st.terminated {
                return false;
            }
            st.members.insert(pid, Member { pidfd, ready: false });
            true
        })
    }

    /// Forgets a worker process that never became a member (its start failed).
    pub(crate) fn delist(&self, pid: u32) {
        self.update(|st| st.members.remove(&pid));
    }

    /// Kills every worker process, starting ones too (`terminate`): the ones in use notice
    /// and fail their tasks.
    pub(crate) fn kill_all(&self) {
        self.kill_where(|_| true);
    }

    /// Kills the workers still starting (their start then fails and is not retried).
    pub(crate) fn kill_starting(&self) {
        self.kill_where(|m| !m.ready);
    }

    fn kill_where(&self, which: impl Fn(&Member) -> bool) {
        let pidfds: Vec<Arc<OwnedFd>> =
            self.read(|st| st.members.values().filter(|m| which(m)).map(|m| Arc::clone(&m.pidfd)).collect());
        for pidfd in pidfds {
            let _ = sys::pidfd_signal(pidfd.as_fd(), Sig::Kill);
        }
    }
}

/// Takes tokens' counts back; `true` when a closed pool's driver must hear of it (the counts
/// may be what it waits for to finish).
fn take_back(st: &mut State, tasks: usize, starts: usize) -> bool {
    st.outstanding -= tasks;
    st.starting -= starts;
    st.closed && tasks + starts > 0
}

/// Sends a worker on its way out: it is told to exit (its socket closes for writing), and the
/// driver reaps it. A dead one is simply reaped.
pub(crate) fn retire(st: &mut State, mut worker: Worker) {
    st.members.remove(&worker.pid());
    worker.child.hang_up();
    st.exiting.push(worker);
}

/// Closes the workers' sockets so that they exit on their own, then reaps them (killing any
/// that takes more than a second).
pub(crate) fn shut_down(workers: Vec<Worker>) {
    let mut workers = workers;
    for w in &mut workers {
        w.child.hang_up();
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    for w in &mut workers {
        if let Ok(None) | Err(_) = w.child.wait_exit(Some(deadline)) {
            w.child.kill_and_reap();
        }
    }
}

/// Why a frame with handles is refused on a pool of MPI ranks.
pub(crate) const HANDLES_STAY_ON_THEIR_HOST: &str = "a handle (Queue, Pipe end, Value, Array, SharedMemory, a lock, a \
     local Manager's proxy) holds file descriptors of this host, and cannot cross to another MPI rank; pass plain \
     values, or a remote Manager's proxies (Manager::serve), which cross by address";
