//! The runtime of [multiproc](https://docs.rs/multiproc): everything that runs. Use it through
//! the `multiproc` crate, which re-exports this API and the `#[process_fn]` attribute.

#![deny(missing_docs)]

mod channel;
mod child;
mod child_init;
mod current;
mod entry;
mod error;
mod function;
mod manager;
#[cfg(feature = "mpi")]
mod mpi;
mod output;
mod panic;
mod pool;
mod process;
mod registry;
mod shared;
mod sys;
mod trace;
mod wire;
mod worker;

/// The crate behind the plain-data bound of [`Value`] and [`Array`]: derive its `Pod` and
/// `Zeroable` (or `NoUninit` and `CheckedBitPattern`) for a `#[repr(C)]` struct of your own.
pub use bytemuck;

#[doc(hidden)]
pub mod private;

pub use channel::{
    pipe, pipe_one_way, wait, Connection, Descriptor, JoinableQueue, Listener, Queue, QueueIter, Receiver, RecvIter,
    Sender, Source, Waitable,
};
pub use current::{active_children, current_process, parent_process, CurrentProcess, Role};
pub use entry::init;
pub use error::{Error, Result};
pub use function::ProcessFn;
pub use manager::{
    BarrierProxy, ConditionProxy, ConditionProxyGuard, DictProxy, EventProxy, JoinableQueueProxy, ListProxy, LockProxy,
    LockProxyGuard, Manager, ObjectProxy, QueueProxy, RLockProxy, SemaphoreProxy, SemaphoreProxyGuard, Served,
    ValueProxy,
};
pub use multiproc_macros::{child_init, process_fn};
pub use output::Output;
#[cfg(feature = "progress")]
pub use pool::progress_bar;
pub use pool::{
    as_completed, wait_results, AsCompleted, AsyncResult, Imap, InitOutcome, Pool, PoolBuilder, Progress, ReturnWhen,
};
pub use process::{Process, ProcessBuilder, DEFAULT_HANDSHAKE_TIMEOUT};
pub use shared::{
    Array, ArrayGuard, AtomicInt, AtomicValue, Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, HolderDied,
    Lock, LockGuard, LockResult, LockResultExt, RLock, RLockGuard, Semaphore, SemaphoreGuard, SharedMemory,
    TryLockError, TryLockResult, Value, ValueGuard, MAX_PARTIES,
};
pub use wire::frame::{MAX_FDS_PER_FRAME, MAX_FRAME_LEN};

/// Not public API: what `#[process_fn]` expands to names only this.
#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
