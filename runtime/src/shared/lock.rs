//! `Lock` and `RLock`: mutual exclusion across processes and threads, that a dead holder never
//! leaves locked.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::shared::poison::{self, LockResult, TryLockResult};
use crate::shared::region::{self, Kind, Region, Type};
use crate::sys::robust::Relock;

/// A lock shared by processes and threads: Python's `multiprocessing.Lock`.
///
/// [`lock`](Lock::lock) returns a guard; the lock is released when the guard is dropped, so it
/// is never released by anyone but its holder, nor twice. The guard cannot move to another
/// thread. Locking it again from the thread that holds it would wait forever: `lock` panics
/// instead, `try_lock` and `lock_timeout` return [`TryLockError::WouldBlock`](crate::TryLockError::WouldBlock)
/// (use an [`RLock`] to lock again).
///
/// # A holder that dies
///
/// If the process (or thread) holding the lock dies, however it dies, the next locker gets the
/// lock with [`HolderDied`](crate::HolderDied), which holds the guard and names the process.
/// The lock works normally afterwards. It is a robust, process-shared pthread mutex: the kernel
/// marks it when its holder dies.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Lock};
///
/// #[process_fn]
/// fn report(lock: Lock, n: u32) {
///     let _held = lock.lock().unwrap();
///     println!("hello from {n}");
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let lock = Lock::new()?;
/// let children: Vec<_> = (0..3).map(|n| report.spawn(lock.clone(), n)).collect::<Result<_, _>>()?;
/// for child in children {
///     child.join()?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Lock {
    region: Arc<Region>,
}

const LOCK: Type = Type::bare(Kind::Lock);
const RLOCK: Type = Type::bare(Kind::RLock);

impl Lock {
    /// A new lock, unlocked.
    pub fn new() -> Result<Lock> {
        Ok(Lock { region: Region::create(LOCK, 0, Relock::Refuse, |_, _| {})? })
    }

    /// Waits for the lock and takes it.
    #[inline]
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        poison::lock_result(poison::acquire(&self.region, None, "Lock"), || self.guard())
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        poison::try_lock_result(poison::acquire(&self.region, Some(std::time::Instant::now()), "Lock"), || self.guard())
    }

    /// Waits at most `timeout` for the lock (Python's `acquire(timeout=...)`).
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        poison::try_lock_result(poison::acquire(&self.region, poison::deadline_in(timeout), "Lock"), || self.guard())
    }

    fn guard(&self) -> LockGuard<'_> {
        LockGuard { region: &self.region, _not_send: PhantomData }
    }
}

/// Holds a [`Lock`]; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    region: &'a Region,
    _not_send: PhantomData<*const ()>,
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.region.header().lock.mutex.unlock();
    }
}

/// A re-entrant lock: the thread that holds it may lock it again, and it is released when the
/// last of its guards is dropped. Python's `multiprocessing.RLock`.
///
/// Only the holder releases it (its guards cannot move to another thread), so Python's
/// "release by a non-owner" cannot happen. A holder that dies is reported as for [`Lock`].
#[derive(Clone)]
pub struct RLock {
    region: Arc<Region>,
}

impl RLock {
    /// A new re-entrant lock, unlocked.
    pub fn new() -> Result<RLock> {
        Ok(RLock { region: Region::create(RLOCK, 0, Relock::Count, |_, _| {})? })
    }

    /// Waits for the lock and takes it (again, if this thread holds it).
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        poison::lock_result(poison::acquire(&self.region, None, "RLock"), || self.guard())
    }

    /// Takes the lock if it is free or held by this thread.
    pub fn try_lock(&self) -> TryLockResult<RLockGuard<'_>> {
        poison::try_lock_result(poison::acquire(&self.region, Some(std::time::Instant::now()), "RLock"), || {
            self.guard()
        })
    }

    /// Waits at most `timeout` for the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        poison::try_lock_result(poison::acquire(&self.region, poison::deadline_in(timeout), "RLock"), || self.guard())
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard { region: &self.region, _not_send: PhantomData }
    }
}

/// Holds an [`RLock`] once; the lock is released when the last guard is dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    region: &'a Region,
    _not_send: PhantomData<*const ()>,
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        self.region.header().lock.mutex.unlock();
    }
}

macro_rules! debug_impls {
    ($ty:ident, $guard:ident) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty)).finish_non_exhaustive()
            }
        }

        impl fmt::Debug for $guard<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($guard)).finish_non_exhaustive()
            }
        }
    };
}

debug_impls!(Lock, LockGuard);
debug_impls!(RLock, RLockGuard);
region::region_handle!(Lock, LOCK);
region::region_handle!(RLock, RLOCK);
