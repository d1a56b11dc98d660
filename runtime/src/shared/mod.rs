//! Shared memory and synchronization across processes: `Value`, `AtomicValue`, `Array`,
//! `SharedMemory`, `Lock`, `RLock`, `Condition`, `Event`, `Semaphore`, `BoundedSemaphore`,
//! `Barrier`.
//!
//! Each object is a handle to a memfd of its own (see `region.rs`): it crosses to a child as an
//! ordinary argument, has no name anywhere in a filesystem, and is freed with its last handle,
//! however the processes holding it end. Locks are robust process-shared pthread mutexes in
//! that memory (a dead holder is reported to the next locker); the rest are atomics and futexes.

mod array;
mod barrier;
mod condition;
mod event;
mod lock;
mod memory;
mod poison;
mod region;
mod semaphore;
mod value;

use std::time::{Duration, Instant};

pub use array::{Array, ArrayGuard};
pub use barrier::{Barrier, MAX_PARTIES};
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use memory::SharedMemory;
pub use poison::{HolderDied, LockResult, LockResultExt, TryLockError, TryLockResult};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};
pub use value::{AtomicInt, AtomicValue, Value, ValueGuard};

/// What is left of a wait until `deadline`: `Some(None)` for no deadline, `None` once it has
/// passed.
pub(crate) fn left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(Some(left)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests;
