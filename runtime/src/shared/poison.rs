//! What a lock returns when its previous holder died holding it, std's `PoisonError` way: the
//! guard is inside, and the data it guards may be half-updated.

use std::fmt;
use std::time::Instant;

use crate::error::Error;
use crate::shared::region::Region;
use crate::sys::robust::Locked;

/// A lock was taken, and its previous holder had died holding it.
///
/// The lock is yours (the guard is inside) and works normally from now on: only the first
/// locker after the death is told. What the lock guards may have been left half-updated by the
/// process that died; look at it through [`HolderDied::into_inner`] and repair it, or give up
/// with `?` (it converts to [`Error::HolderDied`]).
pub struct HolderDied<G> {
    guard: G,
    pid: u32,
}

impl<G> HolderDied<G> {
    pub(crate) fn new(guard: G, pid: u32) -> HolderDied<G> {
        HolderDied { guard, pid }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// The guard, borrowed.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// The guard, borrowed mutably.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// The process id of the holder that died (or `0` when unknown).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> HolderDied<H> {
        HolderDied { guard: f(self.guard), pid: self.pid }
    }
}

impl<G> fmt::Debug for HolderDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HolderDied").field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl<G> fmt::Display for HolderDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Error::HolderDied { pid: self.pid }, f)
    }
}

impl<G> std::error::Error for HolderDied<G> {}

impl<G> From<HolderDied<G>> for Error {
    fn from(e: HolderDied<G>) -> Error {
        Error::HolderDied { pid: e.pid }
    }
}

/// The result of taking a lock: the guard, or the guard inside [`HolderDied`].
pub type LockResult<G> = Result<G, HolderDied<G>>;

/// Why `try_lock` or `lock_timeout` did not simply return the guard.
#[derive(Debug)]
pub enum TryLockError<G> {
    /// Taken, and its previous holder had died holding it.
    HolderDied(HolderDied<G>),
    /// Held by someone else (until the timeout ran out, for `lock_timeout`), or, for a
    /// non-re-entrant lock, by this very thread.
    WouldBlock,
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::HolderDied(e) => fmt::Display::fmt(e, f),
            TryLockError::WouldBlock => f.write_str("the lock is held elsewhere"),
        }
    }
}

impl<G: fmt::Debug> std::error::Error for TryLockError<G> {}

impl<G> From<TryLockError<G>> for Error {
    fn from(e: TryLockError<G>) -> Error {
        match e {
            TryLockError::HolderDied(e) => e.into(),
            TryLockError::WouldBlock => Error::LockBusy,
        }
    }
}

/// The result of `try_lock` and `lock_timeout`.
pub type TryLockResult<G> = Result<G, TryLockError<G>>;

/// `?` on a lock's result where the function's error is not [`multiproc::Error`](Error):
/// `anyhow::Error`, `Box<dyn std::error::Error>`, or the result of a `#[process_fn]`.
///
/// [`HolderDied`] and [`TryLockError`] carry the guard, which borrows the lock and must stay
/// in its thread, so they cannot become an `anyhow::Error`. `or_error` drops the guard
/// (releasing the lock) and gives [`Error::HolderDied`] or [`Error::LockBusy`] instead;
/// a function that returns `multiproc::Result` can use `?` on the lock's result directly.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::LockResultExt;
///
/// fn bump(v: &multiproc::Value<u64>) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
///     let mut g = v.lock().or_error()?; // `v.lock()?` would not compile here
///     *g += 1;
///     Ok(*g)
/// }
/// let v = multiproc::Value::new(41u64)?;
/// assert_eq!(bump(&v).unwrap(), 42);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait LockResultExt<G> {
    /// The guard, or the library's error without the guard (the lock released).
    fn or_error(self) -> Result<G, Error>;
}

impl<G> LockResultExt<G> for LockResult<G> {
    fn or_error(self) -> Result<G, Error> {
        self.map_err(Error::from)
    }
}

impl<G> LockResultExt<G> for TryLockResult<G> {
    fn or_error(self) -> Result<G, Error> {
        self.map_err(Error::from)
    }
}

/// How taking a region's mutex went.
pub(crate) enum Acquired {
    Yes,
    /// The holder with this process id had died.
    HolderDied(u32),
    Busy,
}

/// Takes a region's mutex, waiting until `deadline` (forever for `None`). `reentrant` locks
/// let a thread that holds the mutex take it again; others panic (`lock`) or report it busy.
#[inline]
pub(crate) fn acquire(region: &Region, deadline: Option<Instant>, what: &str) -> Acquired {
    let h = region.header();
    match h.lock.mutex.lock(deadline) {
        Ok(Locked::Yes) => {
            h.lock.holder.store(region.pid, std::sync::atomic::Ordering::Relaxed);
            Acquired::Yes
        }
        Ok(Locked::OwnerDied) => {
            let pid = h.lock.holder.swap(region.pid, std::sync::atomic::Ordering::Relaxed);
            Acquired::HolderDied(pid)
        }
        Ok(Locked::Busy) => Acquired::Busy,
        Ok(Locked::ByThisThread) if deadline.is_some() => Acquired::Busy,
        Ok(Locked::ByThisThread) => {
            panic!("this thread already holds this {what}, and locking it again would wait forever; use an RLock to lock again")
        }
        // The mutex is ours, initialized and never left inconsistent (an owner's death is
        // always made consistent): any other error is a broken invariant.
        Err(e) => panic!("a multiproc {what}'s mutex failed: {e}"),
    }
}

/// Maps an acquisition to `lock`'s result, making the guard with `guard`.
#[inline]
pub(crate) fn lock_result<G>(acquired: Acquired, guard: impl FnOnce() -> G) -> LockResult<G> {
    match acquired {
        Acquired::Yes => Ok(guard()),
        Acquired::HolderDied(pid) => Err(HolderDied::new(guard(), pid)),
        Acquired::Busy => unreachable!("a wait without a deadline ends with the lock"),
    }
}

/// Maps an acquisition to `try_lock`'s result.
#[inline]
pub(crate) fn try_lock_result<G>(acquired: Acquired, guard: impl FnOnce() -> G) -> TryLockResult<G> {
    match acquired {
        Acquired::Yes => Ok(guard()),
        Acquired::HolderDied(pid) => Err(TryLockError::HolderDied(HolderDied::new(guard(), pid))),
        Acquired::Busy => Err(TryLockError::WouldBlock),
    }
}

/// Runs `f` with the guard `guard` makes, once the region's mutex is taken. When the previous
/// holder died holding it, `f` does not run: the guard is dropped (the lock works again) and
/// the result is [`Error::HolderDied`]. For `get`/`set`-style calls.
pub(crate) fn with_lock<G, R>(
    region: &Region,
    what: &str,
    guard: impl FnOnce() -> G,
    f: impl FnOnce(G) -> crate::Result<R>,
) -> crate::Result<R> {
    match acquire(region, None, what) {
        Acquired::Yes => f(guard()),
        Acquired::HolderDied(pid) => {
            drop(guard());
            Err(Error::HolderDied { pid })
        }
        Acquired::Busy => unreachable!("a wait without a deadline ends with the lock"),
    }
}

/// A deadline `timeout` from now (`None`: too far to matter).
pub(crate) fn deadline_in(timeout: std::time::Duration) -> Option<Instant> {
    Some(
        Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1 << 32)),
    )
}
