//! The state a pool's callers, its driver thread and its respawn threads share.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::EventfdFlags;

use crate::error::{Error, Result};
use crate::pool::config::Config;
use crate::pool::task::{Delivery, Failure, Task};
use crate::pool::worker::Worker;
use crate::sys::{self, Sig};

/// A pool, shared.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) state: Mutex<State>,
    /// Signalled when a worker becomes idle and when the outstanding count reaches zero.
    pub(crate) changed: Condvar,
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
    /// Tasks submitted and not yet delivered, wherever they are.
    pub(crate) outstanding: usize,
    /// Workers being started.
    pub(crate) starting: usize,
    /// Every live worker's pid, and a pidfd to kill it with on `terminate`.
    pub(crate) workers: BTreeMap<u32, OwnedFd>,
    pub(crate) closed: bool,
    pub(crate) terminated: bool,
    /// No worker can be started: the initializer's failure.
    pub(crate) broken: Option<String>,
    /// Workers started so far, to name the next.
    pub(crate) started: usize,
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
}

impl Inner {
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
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

    /// Queues a task for the driver, or fails it at once if the pool takes no more work.
    pub(crate) fn submit(&self, task: Task) {
        let mut st = self.lock();
        if let Some(failure) = st.refusal() {
            drop(st);
            (task.sink)(Delivery::Failed(failure));
            return;
        }
        st.outstanding += 1;
        st.queue.push_back(task);
        drop(st);
        self.wake_driver();
    }

    /// Delivers a task's outcome and counts it done. A sink that panics anyway is contained:
    /// the driver thread that runs it must live on.
    pub(crate) fn complete(&self, task: Task, delivery: Delivery) {
        let sink = task.sink;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || sink(delivery)));
        self.finished_one();
    }

    /// Counts a task done (one that went by the direct path has no sink to call).
    pub(crate) fn finished_one(&self) {
        let mut st = self.lock();
        st.outstanding -= 1;
        if st.outstanding == 0 {
            self.changed.notify_all();
        }
    }

    /// Puts tasks that never started back at the front of the queue, in order (or fails them,
    /// after `terminate`).
    pub(crate) fn requeue(&self, tasks: impl DoubleEndedIterator<Item = Task>) {
        let mut st = self.lock();
        if st.terminated {
            drop(st);
            for task in tasks {
                self.complete(task, Delivery::Failed(Failure::Terminated));
            }
            return;
        }
        for task in tasks.rev() {
            st.queue.push_front(task);
        }
    }

    /// Takes back a worker that has nothing in flight: idle again, or replaced if it is due.
    pub(crate) fn release(self: &Arc<Self>, worker: Worker) {
        let due = worker.retiring || self.config.max_tasks_per_child.is_some_and(|max| worker.done >= max);
        if due {
            self.replace(worker);
            return;
        }
        let mut st = self.lock();
        if st.terminated {
            drop(st);
            self.forget(worker);
            return;
        }
        let queued = !st.queue.is_empty();
        st.idle.push(worker);
        drop(st);
        self.changed.notify_all();
        if queued {
            self.wake_driver();
        }
    }

    /// Ends a worker (gracefully if it is idle, else it is already dead or killed) and starts
    /// another in its place, unless the pool is terminated.
    pub(crate) fn replace(self: &Arc<Self>, worker: Worker) {
        let start = {
            let mut st = self.lock();
            let start = !st.terminated && st.broken.is_none();
            if start {
                st.starting += 1;
            }
            start
        };
        self.forget(worker);
        if start {
            let inner = Arc::clone(self);
            let spawned = std::thread::Builder::new().name("multiproc-respawn".into()).spawn(move || {
                let index = {
                    let mut st = inner.lock();
                    st.started += 1;
                    st.started - 1
                };
                let worker = Worker::start(&inner.config, index);
                inner.add_started(worker);
            });
            if spawned.is_err() {
                let mut st = self.lock();
                st.starting -= 1;
                st.broken = Some("could not start a thread to replace a worker".into());
            }
        }
    }

    /// Records a worker started by `replace` (or its failure, which breaks the pool: no
    /// endless respawn loop).
    pub(crate) fn add_started(&self, worker: Result<Worker>) {
        let mut st = self.lock();
        st.starting -= 1;
        match worker {
            Ok(w) if st.terminated => {
                drop(st);
                drop(w);
                return;
            }
            Ok(w) => {
                if let Ok(fd) = w.child.pidfd().try_clone_to_owned() {
                    st.workers.insert(w.pid(), fd);
                }
                st.idle.push(w);
            }
            Err(e) => {
                st.broken = Some(e.to_string());
                let failed: Vec<Task> = st.queue.drain(..).collect();
                st.outstanding -= failed.len();
                let failure = Failure::Broken(e.to_string());
                drop(st);
                for task in failed {
                    (task.sink)(Delivery::Failed(failure.clone()));
                }
                self.changed.notify_all();
                self.wake_driver();
                return;
            }
        }
        drop(st);
        self.changed.notify_all();
        self.wake_driver();
    }

    /// Ends a worker: an idle one is asked to exit (its socket closes), then reaped.
    pub(crate) fn forget(&self, worker: Worker) {
        self.lock().workers.remove(&worker.pid());
        shut_down(vec![worker]);
    }

    /// Kills every worker (`terminate`): the ones in use notice and fail their tasks.
    pub(crate) fn kill_all(&self) {
        let st = self.lock();
        for pidfd in st.workers.values() {
            let _ = sys::pidfd_signal(pidfd.as_fd(), Sig::Kill);
        }
    }
}

/// Closes the workers' sockets so that they exit on their own, then reaps them (killing any
/// that takes more than a second).
pub(crate) fn shut_down(workers: Vec<Worker>) {
    let mut workers = workers;
    for w in &workers {
        let _ = rustix::net::shutdown(w.child.socket(), rustix::net::Shutdown::Write);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    for w in &mut workers {
        if let Ok(None) | Err(_) = w.child.wait_exit(Some(deadline)) {
            w.child.kill_and_reap();
        }
    }
}
