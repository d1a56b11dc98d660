//! The one error type: every failure a user can meet has a variant.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A `&'static str` field, written so that serde's derive does not take it for a borrow of
/// the input (it is interned on arrival: see `wire::error`).
type StaticText = &'static str;

/// The result type of every fallible multiproc operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when running a function in another process.
///
/// Failures in the child come back as data: a panic carries its message and location, a crash
/// names its signal, an early exit its code. Messages are meant to be shown to a person as they
/// are: they say what happened and what to do about it.
///
/// An `Error` crosses between processes (it is `Serialize` and `Deserialize`): a
/// `#[process_fn]` may return `multiproc::Result<T>` and use `?` on queues, locks, pipes and
/// managers inside; the parent's `join()` gives `Ok(Err(e))` with the child's error whole. An
/// I/O error keeps its OS error code (or its kind and message when it has none).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The function panicked in the child.
    #[error("the child process {pid} panicked at {}: {message}", location.as_deref().unwrap_or("an unknown location"))]
    Panicked {
        /// The child's process id.
        pid: u32,
        /// The panic message (the payload, if it was a string).
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
        /// The child's backtrace, captured when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) was set.
        backtrace: Option<String>,
    },

    /// The child exited (for example with `std::process::exit`) before it returned a result.
    #[error("the child process {pid} exited with code {code} before returning a result; its stderr may say why")]
    Exited {
        /// The child's process id.
        pid: u32,
        /// The exit code it gave.
        code: i32,
    },

    /// The child was ended by a signal it did not get from this handle: a crash (`SIGSEGV`,
    /// `SIGABRT`), the OOM killer, or a `kill` from outside, whether it had started the
    /// function or not.
    #[error("the child process {pid} was killed by signal {signal} ({name}) before returning a result: a crash, an abort, the OOM killer or a kill from outside")]
    Signaled {
        /// The child's process id.
        pid: u32,
        /// The signal number.
        signal: i32,
        /// The signal's name, such as `SIGSEGV`.
        #[serde(deserialize_with = "crate::wire::error::interned")]
        name: StaticText,
    },

    /// The child was stopped by [`Process::kill`](crate::Process::kill) or
    /// [`Process::terminate`](crate::Process::terminate) before it returned a result.
    #[error("the child process {pid} was stopped with {name} by its handle before returning a result")]
    Killed {
        /// The child's process id.
        pid: u32,
        /// The signal the handle sent.
        signal: i32,
        /// The signal's name, `SIGKILL` or `SIGTERM`.
        #[serde(deserialize_with = "crate::wire::error::interned")]
        name: StaticText,
    },

    /// A wait with a deadline ran out. The child is still running and the handle still usable.
    #[error(
        "the child process {pid} did not finish within {timeout:?}; it is still running: join it again, or kill it"
    )]
    TimedOut {
        /// The child's process id.
        pid: u32,
        /// How long the wait lasted.
        timeout: Duration,
    },

    /// A value could not be serialized. For arguments, this happens in the caller before any
    /// process starts.
    #[error("could not serialize the {what} (`{type_name}`): {message}")]
    Encode {
        /// What was being encoded: `arguments`, `result`.
        #[serde(deserialize_with = "crate::wire::error::interned")]
        what: StaticText,
        /// The Rust type that failed.
        type_name: String,
        /// The serializer's message.
        message: String,
    },

    /// Bytes from the other side could not be turned back into the expected type.
    #[error("could not deserialize the {what} as `{type_name}`: {message}; both sides must run the same build")]
    Decode {
        /// What was being decoded: `arguments`, `result`, `message`.
        #[serde(deserialize_with = "crate::wire::error::interned")]
        what: StaticText,
        /// The Rust type that was expected.
        type_name: String,
        /// The deserializer's message.
        message: String,
    },

    /// A frame longer than the hard maximum was about to be sent or was announced by the peer.
    #[error("a frame of {len} bytes exceeds the maximum of {max} bytes; pass large data in smaller pieces")]
    FrameTooLarge {
        /// The length that was sent or announced.
        len: u64,
        /// The maximum frame length.
        max: u64,
    },

    /// The peer sent bytes that are not a valid multiproc frame.
    #[error("received a malformed frame ({reason}); the peer is not speaking multiproc's protocol")]
    BadFrame {
        /// What was wrong with it.
        reason: String,
    },

    /// The child executable is a different build from the parent.
    #[error("the child executable {} is a different build (build id {found}, expected {expected}); spawn the same binary or rebuild both", executable.display())]
    BuildMismatch {
        /// The executable that was started.
        executable: PathBuf,
        /// The parent's build id.
        expected: String,
        /// The child's build id.
        found: String,
    },

    /// The child does not know the requested function.
    #[error("no #[process_fn] named `{name}` is registered in the child (known: {}); spawn the same binary", known.join(", "))]
    UnknownFunction {
        /// The requested name.
        name: String,
        /// The names the child knows.
        known: Vec<String>,
    },

    /// Two `#[process_fn]` functions were registered under one name.
    #[error("two #[process_fn] functions are registered as `{name}`; give one of them another name with #[process_fn(name = \"...\")]")]
    DuplicateFunction {
        /// The name registered twice.
        name: String,
    },

    /// The child process could not be started at all.
    #[error("could not start the child process {}: {error}", program.display())]
    Spawn {
        /// The executable that was started.
        program: PathBuf,
        /// The operating system's error (in the message too; not also given as `source()`, so
        /// that a report of the chain prints it once).
        #[serde(with = "crate::wire::error::io_error")]
        error: io::Error,
    },

    /// The child exited before it answered the handshake: it is probably not a multiproc
    /// binary. (A child killed by a signal before its handshake is [`Error::Signaled`].)
    #[error("the child process {pid} ({}) ended without answering the handshake; is it a binary built with multiproc?", executable.display())]
    NoHandshake {
        /// The child's process id.
        pid: u32,
        /// The executable that was started.
        executable: PathBuf,
    },

    /// The child did not answer the handshake in time, so it was killed: it is not a multiproc
    /// binary, or it hangs before it gets to the worker.
    #[error("the child process {pid} ({}) did not answer the handshake within {timeout:?} and was killed; is it a binary built with multiproc?", executable.display())]
    HandshakeTimedOut {
        /// The child's process id.
        pid: u32,
        /// The executable that was started.
        executable: PathBuf,
        /// How long it had.
        timeout: Duration,
    },

    /// An operating-system call failed.
    #[error("{context}: {error}")]
    Io {
        /// What multiproc was doing.
        #[serde(deserialize_with = "crate::wire::error::interned")]
        context: StaticText,
        /// The operating system's error (in the message too; not also given as `source()`, so
        /// that a report of the chain prints it once).
        #[serde(with = "crate::wire::error::io_error")]
        error: io::Error,
    },

    /// The start-up hook did not run, so a child could not find its way to the worker.
    #[error("multiproc's start-up hook did not run in this binary, so a child would run `main` again; call `multiproc::init()` as the first line of `main`, or enable the `auto-init` feature")]
    HookMissing,

    /// Children nest deeper than the limit: a function that spawns itself without end.
    #[error("refusing to start a child at nesting depth {depth} (the limit is {max}): a #[process_fn] that spawns itself without end would be a fork bomb; set MULTIPROC_MAX_DEPTH to allow more")]
    NestingTooDeep {
        /// The depth the new child would have.
        depth: u32,
        /// The limit.
        max: u32,
    },

    /// A `#[child_init]` hook panicked in the child, so the child could not start.
    #[error("the #[child_init] hook `{hook}` panicked in the child: {message}; the child could not start")]
    ChildInitFailed {
        /// The hook's path (`crate::module::function`).
        hook: String,
        /// Its panic message and where it panicked.
        message: String,
    },

    /// A pool task ran past the pool's time limit: its worker was killed and replaced.
    #[error("the task ran longer than its limit of {timeout:?}; its worker {pid} was killed and replaced")]
    TaskTimedOut {
        /// The worker that was killed.
        pid: u32,
        /// The limit.
        timeout: Duration,
    },

    /// A wait on a pool result ran out; the task goes on and the handle stays usable.
    #[error("the result was not ready within {timeout:?}; the task goes on: wait again")]
    NotReady {
        /// How long the wait lasted.
        timeout: Duration,
    },

    /// The task was cancelled: before it started (it never ran), or, when `killed`, while it
    /// ran, by killing its worker (which was replaced).
    #[error("the task was cancelled {}", if *killed { "while it ran: its worker was killed and replaced" } else { "before it started: it did not run" })]
    Cancelled {
        /// Whether it had started (its worker was killed to stop it).
        killed: bool,
    },

    /// A message was longer than the buffer given to `recv_bytes_into`; it is here, whole.
    #[error("a message of {} bytes does not fit a buffer of {capacity}; it is in this error (`message`), nothing is lost", message.len())]
    BufferTooShort {
        /// The buffer's length.
        capacity: usize,
        /// The message, whole.
        message: Vec<u8>,
    },

    /// The pool no longer takes work.
    #[error("the pool is closed and takes no more work; submit to a new pool")]
    PoolClosed,

    /// The pool was terminated before the task finished.
    #[error("the pool was terminated before this task finished")]
    PoolTerminated,

    /// The pool's initializer failed in a worker, so the pool cannot start workers; or a
    /// manager's failed in its server ([`Manager::start_with`](crate::Manager::start_with)).
    #[error("the initializer failed ({message}); fix it, then create the pool or manager again")]
    InitializerFailed {
        /// What went wrong in the initializer.
        message: String,
    },

    /// A pool was given options it cannot work with.
    #[error("invalid pool options: {reason}")]
    PoolConfig {
        /// What is wrong.
        reason: String,
    },

    /// One item of a `map` failed; the error says how.
    #[error("item {index} failed: {error}")]
    Item {
        /// The item's position in the input.
        index: usize,
        /// Why it failed (in the message too; not also given as `source()`).
        error: Box<Error>,
    },

    /// The handle's result was already taken by an earlier join.
    #[error("this process was already joined and its result taken")]
    AlreadyJoined,

    /// The other end of a pipe is gone: every copy of it was dropped, or its process ended.
    #[error("the other end of the pipe is closed (dropped, or its process ended); nothing more will arrive")]
    Disconnected,

    /// Nothing to take: a queue or pipe was empty (within the time given, for a wait).
    #[error("nothing to take: the queue or pipe was empty{}", waited.map(|w| format!(" for {w:?}")).unwrap_or_default())]
    Empty {
        /// How long it was waited for, if at all.
        waited: Option<Duration>,
    },

    /// No room: a bounded queue held `maxsize` items, or this producer's buffer in the queue
    /// was full (within the time given, for a wait).
    #[error("the queue is full ({}){}", match maxsize { Some(n) => format!("it holds its maximum of {n} items"), None => "this producer's 16 GiB of items waits to be taken".into() }, waited.map(|w| format!(" for {w:?}")).unwrap_or_default())]
    Full {
        /// The queue's bound, or `None` when the producer's buffer was what was full.
        maxsize: Option<usize>,
        /// How long it was waited for, if at all.
        waited: Option<Duration>,
    },

    /// The queue was shut down (`shutdown`): it takes nothing more, and gives nothing more once
    /// empty (or at once, after an immediate shutdown).
    #[error("the queue was shut down")]
    ShutDown,

    /// The queue was closed in this process (`close`).
    #[error("this process closed the queue; it can no longer put or get here")]
    QueueClosed,

    /// Tasks of a `JoinableQueue` that can never be marked done: the process that took them
    /// ended (killed, crashed, or returned) before its `task_done`. `join` says so instead of
    /// waiting for ever; join again to wait for the other tasks. Call `task_done` in the
    /// process that took the item: the loss is counted where the take was.
    #[error("process {pid} ended holding {tasks} task(s) it had taken from the queue and not marked done: they are lost (put them again if they matter); join again to wait for the rest")]
    TasksLost {
        /// The process that took them (the last one, if several processes lost tasks in one
        /// participant slot).
        pid: u32,
        /// How many.
        tasks: u64,
    },

    /// `join_timeout` ran out with tasks unfinished; they go on, and the queue stays usable.
    #[error(
        "{tasks} task(s) of the queue were still unfinished after {waited:?}: they go on; join again to wait more"
    )]
    TasksUnfinished {
        /// How long it was waited for.
        waited: Duration,
        /// Tasks put and not yet done (or lost) when it gave up.
        tasks: u64,
    },

    /// `task_done` was called more times than items were put.
    #[error("task_done was called more times than there were items put on the queue")]
    TaskDoneTooMany,

    /// A queue was given options it cannot work with.
    #[error("invalid queue options: {reason}")]
    QueueConfig {
        /// What is wrong.
        reason: String,
    },

    /// A lock was taken, and its previous holder had died holding it; what it guards may be
    /// half-updated. The lock works again. (The lock's own methods return
    /// [`HolderDied`](crate::HolderDied), with the guard inside; this is what it becomes
    /// with `?`, and what `get`/`set` return.)
    #[error("the previous holder of the lock (process {pid}) died holding it: what it guards may be half-updated; the lock works again")]
    HolderDied {
        /// The process id of the holder that died (0 when unknown).
        pid: u32,
    },

    /// A lock was held elsewhere (until the timeout ran out, for a wait with a timeout).
    #[error("the lock is held elsewhere")]
    LockBusy,

    /// A shared object was given options it cannot work with, or cannot be made.
    #[error("invalid shared object: {reason}")]
    SharedConfig {
        /// What is wrong.
        reason: String,
    },

    /// An index or byte range past the end of an `Array` or `SharedMemory`.
    #[error("index {index} is out of range for a length of {len}")]
    OutOfRange {
        /// The index (or the end of the range) asked for.
        index: usize,
        /// The length.
        len: usize,
    },

    /// A barrier is broken; [`Barrier::reset`](crate::Barrier::reset) makes it usable again.
    #[error("the barrier is broken: {reason}")]
    BrokenBarrier {
        /// Why it broke.
        reason: String,
    },

    /// A `BoundedSemaphore` was released more times than it was acquired.
    #[error("the semaphore was released past its bound of {bound}")]
    OverReleased {
        /// The bound.
        bound: u32,
    },

    /// The manager's server is gone (its owner dropped the manager, or it died): nothing more
    /// can be asked of it.
    #[error("the manager's server is gone (shut down, or its process died); its objects are lost")]
    ManagerGone,

    /// A remote manager and its client do not share the key (or the other side is not a
    /// multiproc manager); nothing was read or changed.
    #[error("authentication with the manager failed: the two sides do not have the same key")]
    AuthenticationFailed,

    /// The manager refused or failed an operation: an object of another type, a served
    /// object's operation that panicked (the server goes on), a lock not held.
    #[error("the manager could not do it: {message}")]
    ManagerOperation {
        /// What the server said.
        message: String,
    },

    /// A pipe received another kind of message than the call reads.
    #[error("expected {expected} and received {found}: match send with recv, and send_bytes with recv_bytes")]
    MessageKind {
        /// What the call reads.
        #[serde(deserialize_with = "crate::wire::error::interned")]
        expected: StaticText,
        /// What arrived.
        #[serde(deserialize_with = "crate::wire::error::interned")]
        found: StaticText,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str, source: io::Error) -> Self {
        Error::Io { context, error: source }
    }

    /// Returns `true` when a wait ran out and the work goes on: [`Error::TimedOut`],
    /// [`Error::NotReady`], [`Error::TasksUnfinished`], and [`Error::Empty`] or
    /// [`Error::Full`] after a wait.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::TimedOut { .. }
                | Error::NotReady { .. }
                | Error::TasksUnfinished { .. }
                | Error::Empty { waited: Some(_) }
                | Error::Full { waited: Some(_), .. }
        )
    }

    /// Returns `true` for [`Error::Panicked`].
    pub fn is_panic(&self) -> bool {
        matches!(self, Error::Panicked { .. })
    }

    /// The child's process id, for the errors that concern one child.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Error::Panicked { pid, .. }
            | Error::Exited { pid, .. }
            | Error::Signaled { pid, .. }
            | Error::Killed { pid, .. }
            | Error::TimedOut { pid, .. }
            | Error::TaskTimedOut { pid, .. }
            | Error::NoHandshake { pid, .. }
            | Error::HandshakeTimedOut { pid, .. }
            | Error::TasksLost { pid, .. } => Some(*pid),
            Error::Item { error, .. } => error.pid(),
            _ => None,
        }
    }
}
