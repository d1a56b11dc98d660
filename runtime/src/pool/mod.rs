//! A pool of worker processes: Python's `Pool`, with the supervision it lacks.

mod async_result;
mod completion;
mod config;
mod decode;
mod driver;
mod lease;
mod map;
#[cfg(feature = "progress")]
mod progress_bar;
mod shared;
mod task;
mod worker;

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use async_result::AsyncResult;
pub use completion::{as_completed, wait_results, AsCompleted, ReturnWhen};
pub use config::InitOutcome;
pub use map::{Imap, Progress};
#[cfg(feature = "progress")]
pub use progress_bar::progress_bar;

use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::output::Output;
use crate::process::ProcessBuilder;
use crate::registry;
use crate::wire::frame::Encoded;
use crate::wire::message;
use config::{Config, Initializer};
use shared::{shut_down, Inner};
use task::Sink;
use worker::{StartError, Worker};

/// A fixed set of worker processes that run `#[process_fn]` calls: Python's `Pool`.
///
/// A worker that crashes, is killed, or overruns its task's time limit fails only the task it
/// was running and is replaced; every other task goes on. A panic fails only its own task and
/// costs no respawn. Dropping the pool finishes the work already submitted, then stops the
/// workers (`close` + `join`); [`terminate`](Pool::terminate) stops them at once.
///
/// `Pool` is `Send + Sync`: share it between threads by reference or in an `Arc`.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Pool};
///
/// #[process_fn]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[process_fn]
/// fn add(a: u64, b: u64) -> u64 {
///     a + b
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(4)?;
/// assert_eq!(pool.map(square, 0..10)?, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// assert_eq!(pool.starmap(add, [(1, 2), (3, 4)])?, [3, 7]);
/// assert_eq!(pool.apply(add, (5, 6))?, 11);
/// let later = pool.apply_async(square, (12,));
/// assert_eq!(later.wait()?, 144);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Pool {
    inner: Arc<Inner>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

/// Options for a [`Pool`]: `Pool::builder().workers(4).initializer(setup, ()).build()`.
#[derive(Debug, Default)]
pub struct PoolBuilder {
    workers: Option<usize>,
    process: ProcessBuilder,
    initializer: Option<Result<Initializer>>,
    max_tasks_per_child: Option<u64>,
    max_memory_per_child: Option<u64>,
    retries: u32,
    task_timeout: Option<Duration>,
    window: Option<usize>,
    chunksize: Option<usize>,
    /// Workers are MPI ranks, not local processes.
    mpi: bool,
}

impl PoolBuilder {
    /// How many worker processes; by default, the CPUs this process may use (its affinity mask
    /// and cgroup CPU quota, not the host's count).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = Some(n);
        self
    }

    /// A function run once in each worker before its first task (and in each replacement),
    /// with these arguments: load a model, open a connection. It may return `()` or a
    /// `Result`.
    ///
    /// What happened decides what follows. An initializer that returns `Err`, panics, or
    /// overruns the [`task_timeout`](Self::task_timeout) fails [`build`](PoolBuilder::build)
    /// with its cause; in a replacement worker, it stops the pool from starting more (calls
    /// then fail with [`Error::InitializerFailed`]: no endless respawn loop). A worker that
    /// *dies* while it starts (killed from outside, by the OOM killer, say) is replaced, with a
    /// growing pause; only six such deaths in a row count as a failure.
    pub fn initializer<F: ProcessFn>(&mut self, f: F, args: F::Args) -> &mut Self
    where
        F::Output: InitOutcome,
    {
        let _ = f;
        self.initializer = Some(registry::lookup(F::NAME).and_then(|_| Initializer::new::<F>(args)));
        self
    }

    /// Replaces a worker after it has run this many tasks (a task is one call, or one chunk of
    /// a map): Python's `maxtasksperchild`, against leaks. Zero is a configuration error.
    pub fn max_tasks_per_child(&mut self, n: u64) -> &mut Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Replaces a worker whose resident memory (RSS) is over `bytes` after a task, before it
    /// takes another: loky's leak protection, for native code that leaks or a cache that grows.
    /// Checked only when set (one read of `/proc/<pid>/statm` per task). Zero is a
    /// configuration error.
    pub fn max_memory_per_child(&mut self, bytes: u64) -> &mut Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Runs a task again, on another worker, when its worker died running it (killed from
    /// outside, the OOM killer, a crash, an `exit`): up to `n` more times, then its error is
    /// the last death's. Never for a panic, an encoding error or a task over its
    /// [`task_timeout`](Self::task_timeout) (deterministic, or likely to hang again), nor for
    /// one cancelled with `cancel_or_kill`. **Only for idempotent functions**: a retried task
    /// may have done part of its work before it died.
    pub fn retries(&mut self, n: u32) -> &mut Self {
        self.retries = n;
        self
    }

    /// The longest one call may run. A worker still busy with a call after this is killed and
    /// replaced, the call fails with [`Error::TaskTimedOut`], and the rest goes on. A chunk of
    /// a map gets this limit times its length; with a limit set, maps default to chunks of one.
    /// The initializer gets the same limit: one that overruns it fails the pool's creation.
    /// Zero is a configuration error.
    pub fn task_timeout(&mut self, limit: Duration) -> &mut Self {
        self.task_timeout = Some(limit);
        self
    }

    /// How many items an [`imap`](Pool::imap) keeps in flight by default (it reads its input
    /// only as results are taken, so memory stays flat); 64 by default. Zero is a
    /// configuration error.
    pub fn imap_window(&mut self, items: usize) -> &mut Self {
        self.window = Some(items);
        self
    }

    /// Items per task for `map`, `starmap` and their variants, instead of the automatic size
    /// (the length divided by four times the workers, as in Python). Zero is a configuration
    /// error.
    ///
    /// A task is what a worker death takes down: a worker killed while it runs a chunk fails
    /// every item of that chunk (automatic chunks hold up to 64 KiB of arguments: 8,192 `u64`s).
    /// Smaller chunks bound that loss, at the price of more round trips: `chunksize(1)` loses
    /// one item per death and runs about ten times slower on tiny items.
    pub fn chunksize(&mut self, items: usize) -> &mut Self {
        self.chunksize = Some(items);
        self
    }

    /// The longest message between the pool and a worker, a chunk of arguments or a result:
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN) (1 GiB) by default, and never more. Arguments
    /// over it fail their call or item with [`Error::FrameTooLarge`] before they are sent; a
    /// result over it fails its call or item the same way, and the worker goes on.
    pub fn max_frame_len(&mut self, bytes: usize) -> &mut Self {
        self.process.max_frame_len(bytes);
        self
    }

    /// Where the workers' stdout goes ([`Output::Inherit`] by default).
    pub fn stdout(&mut self, output: Output) -> &mut Self {
        self.process.stdout(output);
        self
    }

    /// Where the workers' stderr goes ([`Output::Inherit`] by default).
    pub fn stderr(&mut self, output: Output) -> &mut Self {
        self.process.stderr(output);
        self
    }

    /// Makes the workers the other ranks of an MPI job (`mpirun -n N ./app`, Slurm `srun`):
    /// one worker per rank but 0 that serves no other pool (at most [`workers`](Self::workers),
    /// when set), on whatever hosts the launcher put them. Several pools of one job share the
    /// ranks out this way, each rank serving one pool at a time; a rank goes back when its pool
    /// is dropped. Everything else is
    /// the same pool: `map`, `imap`, `starmap`, `apply_async`, chunking, progress. Results come
    /// from whichever rank finishes first, so faster hosts take more work.
    ///
    /// Over ranks, handles (queues, shared memory, locks, a local manager's proxies) cannot be
    /// arguments: they hold this host's file descriptors, and such a call fails with
    /// [`Error::Encode`] saying so. A rank cannot be killed from here, so `task_timeout` and
    /// `max_tasks_per_child` are refused ([`Error::PoolConfig`]), and `terminate` waits for the
    /// tasks running on ranks to end. A rank that dies ends the whole job (MPI's rule); rank 0
    /// says so on stderr as it goes. Where the pool names a worker by process id
    /// ([`Pool::pids`], errors), a rank is named by its rank number.
    ///
    /// # Errors
    ///
    /// `build` fails with [`Error::PoolConfig`] when the program was not started by an MPI
    /// launcher with at least two ranks, or when every worker rank serves another pool.
    #[cfg(feature = "mpi")]
    pub fn mpi_ranks(&mut self) -> &mut Self {
        self.mpi = true;
        self
    }

    /// Sets an environment variable in the workers.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.process.env(key, value);
        self
    }

    /// Checks the options: zero workers, tasks per child, chunk size, window or time limit
    /// cannot work.
    fn check(&self) -> Result<()> {
        let zero = [
            (self.workers == Some(0), "a pool needs at least one worker"),
            (self.max_tasks_per_child == Some(0), "max_tasks_per_child must be at least 1"),
            (self.max_memory_per_child == Some(0), "max_memory_per_child must be more than zero bytes"),
            (self.chunksize == Some(0), "chunksize must be at least 1"),
            (self.window == Some(0), "imap_window must be at least 1"),
            (self.task_timeout == Some(Duration::ZERO), "task_timeout must be longer than zero"),
        ];
        match zero.iter().find(|(bad, _)| *bad) {
            Some((_, reason)) => Err(Error::PoolConfig { reason: reason.to_string() }),
            None => Ok(()),
        }
    }

    /// The worker ranks of an MPI pool, checked against its options.
    fn ranks(&self) -> Result<usize> {
        let refuse = |reason: &str| Err(Error::PoolConfig { reason: reason.into() });
        #[cfg(feature = "mpi")]
        let (ranks, free) = (crate::mpi::worker_ranks(), crate::mpi::free_ranks().unwrap_or(0));
        #[cfg(not(feature = "mpi"))]
        let (ranks, free): (Option<usize>, usize) = (None, 0);
        match ranks {
            None => refuse("a pool over MPI ranks needs the program started by an MPI launcher (mpirun, srun)"),
            Some(0) => refuse("a pool over MPI ranks needs at least two ranks (mpirun -n 2 or more)"),
            Some(n) if free == 0 => Err(Error::PoolConfig {
                reason: format!(
                    "every worker rank of this job ({n}) serves another pool: drop one, or give each pool \
                     fewer with .workers(k)"
                ),
            }),
            Some(_) if self.task_timeout.is_some() => {
                refuse("task_timeout cannot work over MPI ranks: a rank cannot be killed and replaced")
            }
            Some(_) if self.max_tasks_per_child.is_some() || self.max_memory_per_child.is_some() => refuse(
                "max_tasks_per_child and max_memory_per_child cannot work over MPI ranks: a rank cannot be replaced",
            ),
            Some(_) => Ok(self.workers.map_or(free, |w| w.min(free))),
        }
    }

    /// Starts the workers (and runs the initializer in each).
    ///
    /// # Errors
    ///
    /// [`Error::PoolConfig`] for options that cannot work, [`Error::InitializerFailed`] when
    /// the initializer fails, and whatever stops a worker from starting.
    pub fn build(&mut self) -> Result<Pool> {
        self.check()?;
        let workers = match self.mpi {
            true => self.ranks()?,
            false => self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        };
        let initializer = self.initializer.take().transpose()?;
        let config = Config {
            workers,
            process: self.process.clone(),
            initializer,
            max_tasks_per_child: self.max_tasks_per_child,
            max_memory_per_child: self.max_memory_per_child,
            retries: self.retries,
            task_timeout: self.task_timeout,
            per_worker: 2,
            window: self.window.unwrap_or(64),
            chunksize: self.chunksize,
            mpi: self.mpi,
        };
        let inner = Arc::new(Inner::new(config)?);
        let started: Vec<Result<Worker>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|i| {
                    let inner = &inner;
                    s.spawn(move || {
                        Worker::start(inner, i).map_err(|e| match e {
                            StartError::Fatal(e) => e,
                            StartError::Stopped => Error::PoolTerminated,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err(Error::PoolConfig { reason: "a worker start panicked".into() }))
                })
                .collect()
        });
        let mut ok = Vec::new();
        let mut first_error = None;
        for w in started {
            match w {
                Ok(w) => ok.push(w),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if let Some(e) = first_error {
            shut_down(ok);
            return Err(e);
        }
        inner.update(|st| {
            st.started = workers;
            for w in &ok {
                if let Some(m) = st.members.get_mut(&w.pid()) {
                    m.ready = true;
                }
            }
            st.idle = ok;
        });
        let driver = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("multiproc-pool".into())
                .spawn(move || driver::run(inner))
                .map_err(|e| Error::io("could not start the pool's driver thread", e))?
        };
        Ok(Pool { inner, driver: Mutex::new(Some(driver)) })
    }
}

impl Pool {
    /// A pool of `workers` processes with default options (`Pool(workers)`).
    pub fn new(workers: usize) -> Result<Pool> {
        Pool::builder().workers(workers).build()
    }

    /// Options for a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// How many workers the pool keeps.
    pub fn workers(&self) -> usize {
        self.inner.config.workers
    }

    /// The process ids of the workers alive and ready now (not the ones still starting).
    pub fn pids(&self) -> Vec<u32> {
        self.inner.read(|st| st.members.iter().filter(|(_, m)| m.ready).map(|(pid, _)| *pid).collect())
    }

    /// Runs `f(args)` in a worker and waits for the result (`Pool.apply`).
    ///
    /// An idle worker is used directly from this thread (no hand-off), so a blocking call costs
    /// about one round trip between two processes.
    pub fn apply<F: ProcessFn>(&self, f: F, args: F::Args) -> Result<F::Output>
    where
        F::Output: Send + 'static,
    {
        let _ = f;
        registry::lookup(F::NAME)?;
        let id = self.inner.next_id();
        let frame = Arc::new(self.inner.encoding(|| message::call_frame::<F>(id, &args))?.finish(self.frame_limit())?);
        // retries left after runs from here go with the task if it must queue
        let mut retries = self.inner.config.retries;
        if let Some(result) = lease::call::<F>(&self.inner, id, Arc::clone(&frame), &mut retries) {
            return result;
        }
        self.submit_frame::<F>(id, frame, retries).wait()
    }

    /// Submits `f(args)` and returns at once (`Pool.apply_async`): wait on the handle, poll it,
    /// or `.await` it.
    pub fn apply_async<F: ProcessFn>(&self, f: F, args: F::Args) -> AsyncResult<F::Output>
    where
        F::Output: Send + 'static,
    {
        let _ = f;
        let id = self.inner.next_id();
        let frame = registry::lookup(F::NAME)
            .and_then(|_| self.inner.encoding(|| message::call_frame::<F>(id, &args)))
            .and_then(|frame| frame.finish(self.frame_limit()));
        match frame {
            Ok(frame) => self.submit_frame::<F>(id, Arc::new(frame), self.inner.config.retries),
            Err(e) => AsyncResult::done(Err(e)),
        }
    }

    fn frame_limit(&self) -> usize {
        self.inner.config.process.frame_limit()
    }

    fn submit_frame<F: ProcessFn>(&self, id: u64, frame: Arc<Encoded>, retries: u32) -> AsyncResult<F::Output>
    where
        F::Output: Send + 'static,
    {
        let (result, slot) = AsyncResult::new();
        let executable = std::path::PathBuf::from("/proc/self/exe");
        let sink = Sink::new(move |delivery| slot.fill(decode::single::<F>(delivery, &executable)));
        self.inner.submit(F::NAME, id, frame, self.inner.config.task_timeout, retries, sink);
        result.with_tasks(async_result::Tasks { pool: Arc::downgrade(&self.inner), ids: vec![id] })
    }

    /// Stops taking work; what was submitted still runs (`Pool.close`). Workers exit once the
    /// work is done, as Python's do.
    pub fn close(&self) {
        self.inner.update(|st| st.closed = true);
        self.inner.wake_driver();
    }

    /// Waits until every submitted task is done, then stops the workers (`close` first, if it
    /// was not called). After [`terminate`](Pool::terminate), waits for the workers to be gone.
    pub fn join(&self) {
        self.close();
        self.inner.wait_until(None, |st| st.outstanding() == 0);
        // No work is left, so no worker still starting is needed: stop them rather than wait.
        self.inner.kill_starting();
        self.inner.wait_until(None, |st| st.starting() == 0);
        if let Some(driver) = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take() {
            self.inner.wake_driver();
            let _ = driver.join();
        }
        let left = self.inner.update(|st| {
            st.members.clear();
            let mut left = std::mem::take(&mut st.idle);
            left.append(&mut st.exiting);
            left
        });
        shut_down(left);
    }

    /// Stops at once (`Pool.terminate`): the workers are killed, and every task not finished
    /// fails with [`Error::PoolTerminated`] (an [`AsyncResult`] of it returns that error, it
    /// never hangs).
    pub fn terminate(&self) {
        let queued = self.inner.update(|st| {
            st.terminated = true;
            st.closed = true;
            std::mem::take(&mut st.queue)
        });
        for task in queued {
            task.complete(task::Delivery::Failed(task::Failure::Terminated));
        }
        self.inner.kill_all();
        self.inner.wake_driver();
        self.join();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.join();
    }
}
