//! Python's `multiprocessing`, typed: mark a function with [`#[process_fn]`](process_fn), and
//! run it in a child process with a call the compiler checks.
//!
//! ```
//! use multiproc::process_fn;
//!
//! #[process_fn]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! assert_eq!(square(3), 9); // still an ordinary function, called here
//!
//! let child = square.spawn(7)?; // Process(target=square, args=(7,)).start()
//! assert_eq!(child.join()?, 49); // join(), with the typed result
//! # Ok(())
//! # }
//! ```
//!
//! The child is this same executable, started again: it finds `square` by name, decodes the
//! arguments, runs it, and sends the result back. A panic, an exit, a crash or a timeout in the
//! child comes back as an [`Error`], never as a hang.
//!
//! # Several processes at once
//!
//! ```
//! use multiproc::process_fn;
//!
//! #[process_fn]
//! fn work(id: u32) -> String {
//!     format!("worker {id} ran in process {}", std::process::id())
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let children: Vec<_> = (0..4).map(|id| work.spawn(id)).collect::<Result<_, _>>()?;
//! for child in children {
//!     println!("{}", child.join()?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # A pool of workers
//!
//! ```
//! use multiproc::{process_fn, Pool};
//!
//! #[process_fn]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[process_fn]
//! fn add(a: u64, b: u64) -> u64 {
//!     a + b
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let pool = Pool::new(4)?; // with Pool(4) as pool:
//! assert_eq!(pool.map(square, 0..10)?, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
//! assert_eq!(pool.starmap(add, [(1, 2), (3, 4)])?, [3, 7]);
//! let later = pool.apply_async(add, (5, 6)); // AsyncResult: wait, wait_timeout, try_get, .await
//! assert_eq!(later.wait()?, 11);
//! # Ok(())
//! # }
//! ```
//!
//! A [`Pool`] keeps its workers; a call goes over a connection that stays open, several tasks
//! in flight per worker, maps in chunks. A worker that dies or overruns its
//! [`task_timeout`](PoolBuilder::task_timeout) fails only the task it was running (one call,
//! or one chunk of a map) and is replaced; a worker that dies while idle or while it starts is
//! replaced before it is given work; a panic, or a value that cannot be encoded or decoded,
//! fails only its item; dropping the pool finishes the work submitted.
//!
//! # What a process function can be
//!
//! A free function whose parameters are plain names of owned types, and whose parameters and
//! result implement serde's `Serialize` and `Deserialize`; `()` and `Result<T, E>` results
//! included. Generic, `async`, `unsafe`, `self`, borrowed (`&T`, `&str`), `impl Trait` and
//! pattern parameters are refused at compile time, each with a message that names the fix, and
//! so is a type that is not serializable, at that type. Calls are checked like any call:
//! `square.spawn("7")` does not compile, and neither does `let s: String = square.spawn(7)?.join()?`.
//!
//! The attribute keeps the function as written and puts beside it a value of the same name
//! that stands for it: `square(3)` calls it here (the value dereferences to the function
//! pointer, so `(0..4).map(*square)` works too), `square.spawn(..)` starts it in a child, and
//! `square` is what you pass wherever a [`ProcessFn`] is expected.
//!
//! Arguments have one shape: everything generic over a [`ProcessFn`] takes them as a tuple,
//! in the order of the parameters, as Python's `args=(x,)` does: `pool.apply(f, (x, y))`,
//! `pool.apply_async(f, (x,))`, `ProcessBuilder::new().spawn(f, (x,))`, `pool.starmap(f, [(x,
//! y), ..])`, and `pool.map(f, [x, ..])` for a function of one parameter. The function's own
//! `f.spawn(x, y)` is sugar for `ProcessBuilder::new().spawn(f, (x, y))` with the parameter
//! list as written; it is the only place arguments are not a tuple. The compiler checks the
//! tuple against the function either way.
//!
//! A function that uses multiproc inside can return [`multiproc::Result<T>`](Result) and use
//! `?`: an [`Error`] crosses back whole.
//!
//! Options: `#[process_fn(name = "stable::name")]` registers the function under a name of your
//! choosing instead of `module::path::function` (two functions under one name are an error, at
//! the first use of either); `#[process_fn(crate = path)]` says where this crate is when it is
//! not `::multiproc`.
//!
//! # Start-up
//!
//! A child runs no `main`: with the default `auto-init` feature, a hook that runs before `main`
//! sees that the process was started as a worker and serves the call. Nothing is needed in
//! binaries, examples, integration tests (under `cargo test` and `cargo nextest`) or doctests.
//! Without the feature, call [`init()`] as the first line of `main`; the code before it runs
//! again in every child. Spawning without the hook fails with [`Error::HookMissing`], which says
//! so, and children may nest at most 8 deep ([`Error::NestingTooDeep`]; `MULTIPROC_MAX_DEPTH`
//! raises it), so a function that spawns itself forever is an error, not a fork bomb.
//!
//! # Lifetimes
//!
//! - [`Process::join`] waits for the child and reaps it: no zombie remains.
//! - Dropping a [`Process`] that was not joined kills the child and reaps it.
//! - No child outlives its parent: when the parent dies, however it dies (even `SIGKILL`), the
//!   kernel ends its children at once; their children follow in turn.
//! - A child's stdout and stderr appear as the parent's own ([`Output::Inherit`]: the parent
//!   re-prints them, so libtest captures them in tests); they can also be piped or discarded.
//!
//! # Failure is data
//!
//! | in the child | [`Error`] |
//! |---|---|
//! | `panic!` | [`Panicked`](Error::Panicked): message, `file:line:col`, backtrace with `RUST_BACKTRACE=1` |
//! | `std::process::exit(3)` | [`Exited`](Error::Exited) `{ code: 3 }` |
//! | `abort()`, a segfault, `kill -9` from outside, the OOM killer | [`Signaled`](Error::Signaled): the signal and its name |
//! | [`Process::kill`] / [`Process::terminate`] | [`Killed`](Error::Killed), told apart from the above |
//! | still running at a [`join_timeout`](Process::join_timeout) deadline | [`TimedOut`](Error::TimedOut): the child keeps running |
//! | an argument whose `Serialize` fails (or panics) | [`Encode`](Error::Encode), before any process starts; in a map, for that item only |
//! | a result whose `Deserialize` fails (or panics) in the parent | [`Decode`](Error::Decode), for that call or item only |
//! | an argument or a result over the frame limit | [`FrameTooLarge`](Error::FrameTooLarge), for that call or item; the worker goes on |
//! | an executable that never answers the handshake | [`HandshakeTimedOut`](Error::HandshakeTimedOut): it is killed |
//! | another build of the executable | [`BuildMismatch`](Error::BuildMismatch), from the handshake |
//! | an executable that cannot start | [`Spawn`](Error::Spawn), with the OS error |
//! | a pool task over its limit | [`TaskTimedOut`](Error::TaskTimedOut): its worker is killed and replaced |
//! | a map item that failed | [`Item`](Error::Item) `{ index, error }` |
//!
//! # From Python's `multiprocessing`
//!
//! | Python | multiproc |
//! |---|---|
//! | `def f(x): ...` | `#[process_fn] fn f(x: T) -> R { ... }` |
//! | `p = Process(target=f, args=(x,)); p.start()` | `let p = f.spawn(x)?;` |
//! | `p.join()` | `let r: R = p.join()?;` (the result comes back; Python's is lost) |
//! | `p.join(timeout)` | `p.join_timeout(d)` (`Err(TimedOut)`, the child still runs) |
//! | `p.pid`, `p.is_alive()`, `p.exitcode` | `p.pid()`, `p.is_alive()`, `p.exit_status()` |
//! | `p.terminate()`, `p.kill()` | `p.terminate()`, `p.kill()` |
//! | `Process(name=...)` | `ProcessBuilder::new().name(..).spawn(f, (x,))` |
//! | `set_executable(path)` | `ProcessBuilder::new().executable(path)` (must be the same build) |
//! | `if __name__ == "__main__":` | nothing (or `multiproc::init()` without `auto-init`) |
//! | `Pool(4)`, `Pool(initializer=, maxtasksperchild=)` | [`Pool::new(4)`](Pool::new), [`Pool::builder()`](Pool::builder) |
//! | `pool.map`, `starmap`, `apply` | [`Pool::map`], [`Pool::starmap`], [`Pool::apply`] |
//! | `apply_async`, `map_async`, `AsyncResult.get(timeout)` | [`Pool::apply_async`], [`Pool::map_async`], [`AsyncResult::wait_timeout`] |
//! | `imap`, `imap_unordered` | [`Pool::imap`], [`Pool::imap_unordered`] (lazy, bounded) |
//! | `close`, `join`, `terminate` | [`Pool::close`], [`Pool::join`], [`Pool::terminate`] |
//! | `Queue()`, `Queue(maxsize)`, `JoinableQueue()` | [`Queue::new`], [`Queue::bounded`], [`JoinableQueue::new`] |
//! | `put`, `get` (`block`, `timeout`, `_nowait`) | [`Queue::put`], [`Queue::get`], `*_timeout`, `try_*` |
//! | a list put as one item, to batch by hand | [`Queue::put_many`], [`Queue::get_many`] (each still an item) |
//! | `Pipe()`, `Pipe(duplex=False)` | [`pipe`], [`pipe_one_way`] |
//! | `send`, `recv`, `poll`, `send_bytes`, `recv_bytes` | [`Connection::send`], [`Connection::recv`], [`Connection::poll`], ... |
//! | `connection.wait(objects, timeout)` | [`wait`] |
//! | `Value`, `Array` (with their lock) | [`Value`], [`Array`]: `lock()` (a guard), `get`, `set` |
//! | `Value(..., lock=False)` | [`AtomicValue`]: `fetch_add`, `load`, `store`, ... |
//! | `shared_memory.SharedMemory` | [`SharedMemory`] (no name, nothing to unlink) |
//! | `Lock`, `RLock`, `Semaphore`, `BoundedSemaphore` | [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`] |
//! | `Condition`, `Event`, `Barrier` | [`Condition`], [`Event`], [`Barrier`] |
//! | `Manager()`: `dict`, `list`, `Value`, `Queue`, `Lock`, `Event` | [`Manager::start`]: [`DictProxy`], [`ListProxy`], [`ValueProxy`], [`QueueProxy`], [`LockProxy`], [`EventProxy`] |
//! | `BaseManager.register`, remote `serve_forever`/`connect` | [`Served`] with [`served!`], [`Manager::serve`], [`Manager::connect`] |
//!
//! # Queues and pipes
//!
//! Processes share no memory: they talk through a [`Queue`] (any number of producers and
//! consumers) or a [`pipe`] (two typed ends). Both are handles, passed to a child as ordinary
//! arguments (alone or inside a struct, a `Vec`, an `Option`), returned by children, given to
//! pool tasks: each crosses as file descriptors, with the frame that carries it.
//!
//! ```
//! use multiproc::{process_fn, Queue};
//!
//! #[process_fn]
//! fn producer(q: Queue<String>) {
//!     q.put("Hello from child".to_string()).unwrap();
//! }
//!
//! #[process_fn]
//! fn consumer(q: Queue<String>) -> String {
//!     q.get().unwrap()
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let q = Queue::new()?;
//! let p1 = producer.spawn(q.clone())?;
//! let p2 = consumer.spawn(q)?;
//! p1.join()?;
//! assert_eq!(p2.join()?, "Hello from child");
//! # Ok(())
//! # }
//! ```
//!
//! A `put` that returned has its item in the queue (no feeder thread), a value that cannot be
//! serialized is an error from `put`, and a process killed at any instant leaves the queue
//! whole; see [`Queue`] for what can be lost. A pipe end whose other end is gone gives
//! [`Error::Disconnected`] at once. [`wait`] waits on many pipe ends, queues and processes from
//! one thread.
//!
//! **Large values** need nothing special: a byte run of 256 KiB or more in an argument, a
//! result, a map item or a pipe message (a `Vec<u8>`, a `String`, a `serde_bytes` field, a
//! process function's `Vec<f64>` or other `Vec` of plain numbers, [`Connection::send_bytes`])
//! crosses as a memfd, copied once on each side instead of through the socket.
//! `MULTIPROC_LARGE_MIN=<bytes>` moves the threshold. To share memory without copying at all,
//! pass an [`Array`] or a [`SharedMemory`].
//!
//! # Shared memory and locks
//!
//! [`Value`], [`AtomicValue`], [`Array`] and [`SharedMemory`] hold data that every process with
//! the handle sees; [`Lock`], [`RLock`], [`Condition`], [`Event`], [`Semaphore`],
//! [`BoundedSemaphore`] and [`Barrier`] synchronize processes and threads. All are handles,
//! passed as ordinary arguments; none has a name in `/dev/shm`, and each is freed with its
//! last handle.
//!
//! ```
//! use multiproc::{process_fn, Array, Value};
//!
//! #[process_fn]
//! fn f(n: Value<f64>, a: Array<i32>) {
//!     n.set(2.5).unwrap();
//!     for x in a.lock().unwrap().iter_mut() {
//!         *x = -*x;
//!     }
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let num = Value::new(0.0)?;
//! let arr = Array::from_slice(&[0, 1, 2, 3])?;
//! f.spawn(num.clone(), arr.clone())?.join()?;
//! assert_eq!(num.get()?, 2.5);
//! assert_eq!(arr.to_vec()?, [0, -1, -2, -3]);
//! # Ok(())
//! # }
//! ```
//!
//! A process that dies holding a lock never deadlocks the others: the next locker gets
//! [`HolderDied`], with the guard inside (the data may be half-updated), and the lock works
//! again. Counts a dead process held of a [`Semaphore`] come back; a [`Barrier`] one of whose
//! parties died is broken ([`Error::BrokenBarrier`]), not hung.
//!
//! # Managers
//!
//! A [`Manager`] is a server process holding shared dicts, lists, values, queues, locks,
//! events and your own [`Served`] types; proxies reach them from any process (they are
//! ordinary arguments), or from other machines over TCP with a key.
//!
//! ```
//! use multiproc::{process_fn, DictProxy, Manager};
//!
//! #[process_fn]
//! fn count(d: DictProxy<String, u64>) {
//!     d.update(&"hits".to_string(), |n| Some(n.unwrap_or(0) + 1)).unwrap();
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let manager = Manager::start()?;
//! let d = manager.dict()?;
//! let children: Vec<_> = (0..3).map(|_| count.spawn(d.clone())).collect::<Result<_, _>>()?;
//! for child in children {
//!     child.join()?;
//! }
//! assert_eq!(d.get(&"hits".to_string())?, Some(3));
//! # Ok(())
//! # }
//! ```
//!
//! # More than one machine
//!
//! With the `mpi` feature, `PoolBuilder::mpi_ranks` makes a pool's workers the other ranks
//! of an MPI job (`mpirun -n N ./app`, Slurm `srun`): the same program on many hosts, the same
//! typed calls. See the README's "More than one machine".
//!
//! # Platforms
//!
//! Linux (kernel 5.3 or newer, for pidfds). The public API names nothing Linux-only.

#![deny(missing_docs)]

/// Marks a function that can run in a child process.
///
/// See the [crate docs](crate) for what it accepts and what it generates.
///
/// # Examples
///
/// ```
/// use multiproc::process_fn;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Job {
///     pub id: u32,
///     pub words: Vec<String>,
/// }
///
/// /// Counts the words of a job.
/// #[process_fn]
/// pub fn count(job: Job) -> (u32, usize) {
///     (job.id, job.words.len())
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let job = Job { id: 1, words: vec!["a".into(), "b".into()] };
/// assert_eq!(count.spawn(job)?.join()?, (1, 2));
/// # Ok(())
/// # }
/// ```
///
/// A type that cannot cross, and the error that says so:
///
/// ```compile_fail
/// use multiproc::process_fn;
///
/// #[process_fn]
/// fn shout(text: &str) -> String { // error: `#[process_fn]` parameters cannot borrow ...; take a `String`
///     text.to_uppercase()
/// }
/// # fn main() {}
/// ```
pub use multiproc_macros::process_fn;

/// Marks a function every child process runs once before its first call (a spawned process,
/// a pool worker, a manager's server): for what `main` sets up and a child needs, since a
/// child never runs `main`, such as a logger.
///
/// ```
/// use multiproc::{child_init, process_fn};
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// static LOGGER_READY: AtomicBool = AtomicBool::new(false);
///
/// #[child_init]
/// fn setup_logging() {
///     // env_logger::init(), a tracing subscriber, ...
///     LOGGER_READY.store(true, Ordering::SeqCst);
/// }
///
/// #[process_fn]
/// fn logger_ready() -> bool {
///     LOGGER_READY.load(Ordering::SeqCst)
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// setup_logging(); // the parent calls it itself, as an ordinary function
/// assert!(logger_ready.spawn()?.join()?, "the child ran the hook before its call");
/// # Ok(())
/// # }
/// ```
///
/// It takes no arguments and returns nothing. A hook that panics fails the child's start with
/// [`Error::ChildInitFailed`] (its name and panic message); a pool whose workers cannot start
/// says so when it is created. Hooks run in the order of their paths. `#[child_init(crate =
/// path)]` says where this crate is when it is not `multiproc`.
pub use multiproc_macros::child_init;

pub use multiproc_runtime::{
    active_children, as_completed, current_process, init, parent_process, pipe, pipe_one_way, wait, wait_results,
    AsCompleted, AsyncResult, Connection, CurrentProcess, Descriptor, Error, Imap, InitOutcome, JoinableQueue,
    Listener, Output, Pool, PoolBuilder, Process, ProcessBuilder, ProcessFn, Progress, Queue, QueueIter, Receiver,
    RecvIter, Result, ReturnWhen, Role, Sender, Waitable, DEFAULT_HANDSHAKE_TIMEOUT, MAX_FDS_PER_FRAME, MAX_FRAME_LEN,
};
pub use multiproc_runtime::{
    served, BarrierProxy, ConditionProxy, ConditionProxyGuard, DictProxy, EventProxy, JoinableQueueProxy, ListProxy,
    LockProxy, LockProxyGuard, Manager, ObjectProxy, QueueProxy, RLockProxy, SemaphoreProxy, SemaphoreProxyGuard,
    Served, ValueProxy,
};
pub use multiproc_runtime::{
    Array, ArrayGuard, AtomicInt, AtomicValue, Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, HolderDied,
    Lock, LockGuard, LockResult, LockResultExt, RLock, RLockGuard, Semaphore, SemaphoreGuard, SharedMemory,
    TryLockError, TryLockResult, Value, ValueGuard, MAX_PARTIES,
};

/// The crate behind the plain-data bound of [`Value`] and [`Array`]: derive its `Pod` and
/// `Zeroable` (or `NoUninit` and `CheckedBitPattern`) for a `#[repr(C)]` struct of your own.
///
/// Through this re-export (without `bytemuck` in your own `Cargo.toml`) the derives need to be
/// told where the crate is, with `#[bytemuck(crate = "multiproc::bytemuck")]`; with `bytemuck`
/// as your own dependency (`features = ["derive"]`), plain `#[derive(Pod, Zeroable)]` works.
///
/// # Examples
///
/// A struct inside a [`Value`], changed by a child under the value's lock:
///
/// ```
/// use multiproc::bytemuck::{Pod, Zeroable};
/// use multiproc::{process_fn, Value};
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "multiproc::bytemuck")]
/// struct Particle {
///     position: [f32; 3],
///     mass: f32,
/// }
///
/// #[process_fn]
/// fn heavier(p: Value<Particle>) {
///     p.lock().unwrap().mass *= 2.0;
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let p = Value::new(Particle { position: [0.0; 3], mass: 1.5 })?;
/// heavier.spawn(p.clone())?.join()?;
/// assert_eq!(p.get()?.mass, 3.0);
/// # Ok(())
/// # }
/// ```
pub use multiproc_runtime::bytemuck;

#[cfg(feature = "progress")]
pub use multiproc_runtime::progress_bar;

/// Not public API: what `#[process_fn]` expands to names only this.
#[doc(hidden)]
pub use multiproc_runtime::__private;
