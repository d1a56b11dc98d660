//! Proxies to a manager's synchronization objects: locks (plain and reentrant), conditions,
//! semaphores, barriers, events. A client that dies holding a lock or a semaphore's count
//! gives it back: the server sees its connection close.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Result;
use crate::manager::client;
use crate::manager::proto::{Answer, Failure, Op};
use crate::manager::proxy::{count, done, flag, proxy_impls, unexpected, Handle};
use crate::manager::queue_proxy::millis;

/// This thread's number, for the server to tell a lock's holder among a process's threads.
fn thread_id() -> u64 {
    thread_local! {
        static ID: u64 = {
            static NEXT: AtomicU64 = AtomicU64::new(1);
            NEXT.fetch_add(1, Relaxed)
        };
    }
    ID.with(|id| *id)
}

/// Takes a lock (plain, reentrant, or a condition's) for this thread: `Ok(false)` if the wait
/// ran out.
fn acquire(handle: &Handle, timeout: Option<Duration>) -> Result<bool> {
    match handle.call_raw(Op::LockAcquire { thread: thread_id(), timeout_ms: millis(timeout) })? {
        Ok(answer) => done(answer).map(|()| true),
        Err(Failure::TimedOut) => Ok(false),
        Err(f) => Err(client::failure(f)),
    }
}

/// Takes a lock (plain or reentrant) for this thread: its guard, or `None` if the wait ran out.
fn lock_guard(handle: &Handle, timeout: Option<Duration>) -> Result<Option<LockProxyGuard<'_>>> {
    Ok(acquire(handle, timeout)?.then(|| LockProxyGuard { handle, _not_send: PhantomData }))
}

fn release(handle: &Handle) {
    let _ = handle.call(Op::LockRelease { thread: thread_id() });
}

/// A proxy to a lock held by a [`Manager`](crate::Manager): Python's `manager.Lock()`. A
/// client that dies holding it releases it.
pub struct LockProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(LockProxy);

impl LockProxy {
    /// Waits for the lock and takes it; dropping the guard releases it. The lock is not
    /// reentrant: if this thread holds it already, this is an error rather than a deadlock
    /// ([`RLockProxy`] is reentrant).
    pub fn acquire(&self) -> Result<LockProxyGuard<'_>> {
        lock_guard(&self.handle, None)?.ok_or_else(|| unexpected(Answer::Done))
    }

    /// Waits at most `timeout`: `Ok(None)` if the lock stayed held. If this thread holds it
    /// already, no wait can free it, so this is `Ok(None)` at once, for any timeout.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockProxyGuard<'_>>> {
        lock_guard(&self.handle, Some(timeout))
    }
}

/// Holds a [`LockProxy`] or an [`RLockProxy`]; dropping it releases the lock (once, for a
/// reentrant lock taken several times).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockProxyGuard<'a> {
    handle: &'a Handle,
    /// The server knows the holder by its thread's connection.
    _not_send: PhantomData<*const ()>,
}

impl Drop for LockProxyGuard<'_> {
    fn drop(&mut self) {
        release(self.handle);
    }
}

impl fmt::Debug for LockProxyGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockProxyGuard").finish_non_exhaustive()
    }
}

/// A proxy to a reentrant lock held by a [`Manager`](crate::Manager): Python's
/// `manager.RLock()`. The thread that holds it may take it again; it is free once every guard
/// is dropped. A client that dies holding it releases it, however many times it took it.
pub struct RLockProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(RLockProxy);

impl RLockProxy {
    /// Waits for the lock and takes it (at once, if this thread holds it).
    pub fn acquire(&self) -> Result<LockProxyGuard<'_>> {
        lock_guard(&self.handle, None)?.ok_or_else(|| unexpected(Answer::Done))
    }

    /// Waits at most `timeout`: `Ok(None)` if another thread kept it.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockProxyGuard<'_>>> {
        lock_guard(&self.handle, Some(timeout))
    }
}

/// A proxy to a condition variable held by a [`Manager`](crate::Manager), with a reentrant
/// lock of its own: Python's `manager.Condition()`.
///
/// Take the lock ([`acquire`](Self::acquire)), then wait or notify on the guard. A waiter
/// whose client dies while it waits gives a notification it got to the next waiter; a holder
/// that dies releases the lock.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, ConditionProxy, Manager, ValueProxy};
///
/// #[process_fn]
/// fn produce(cond: ConditionProxy, ready: ValueProxy<bool>) -> multiproc::Result<()> {
///     let held = cond.acquire()?;
///     ready.set(true)?;
///     held.notify_all()?;
///     Ok(())
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let m = Manager::start()?;
/// let (cond, ready) = (m.condition()?, m.value(false)?);
/// let held = cond.acquire()?;
/// let child = produce.spawn(cond.clone(), ready.clone())?;
/// assert!(held.wait_for(None, || ready.get().unwrap_or(false))?);
/// drop(held);
/// child.join()??;
/// # Ok(())
/// # }
/// ```
pub struct ConditionProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(ConditionProxy);

impl ConditionProxy {
    /// Waits for the condition's lock and takes it.
    pub fn acquire(&self) -> Result<ConditionProxyGuard<'_>> {
        self.acquire_within(None)?.ok_or_else(|| unexpected(Answer::Done))
    }

    /// Waits at most `timeout` for the lock: `Ok(None)` if another thread kept it.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<ConditionProxyGuard<'_>>> {
        self.acquire_within(Some(timeout))
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<Option<ConditionProxyGuard<'_>>> {
        Ok(acquire(&self.handle, timeout)?
            .then(|| ConditionProxyGuard { handle: &self.handle, _not_send: PhantomData }))
    }
}

/// Holds a [`ConditionProxy`]'s lock: wait and notify here. Dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionProxyGuard<'a> {
    handle: &'a Handle,
    _not_send: PhantomData<*const ()>,
}

impl ConditionProxyGuard<'_> {
    /// Releases the lock, waits to be notified, and takes the lock again.
    pub fn wait(&self) -> Result<()> {
        self.wait_within(None).map(drop)
    }

    /// As [`wait`](Self::wait), for at most `timeout` (the lock is taken again either way);
    /// returns whether it was notified.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_within(Some(timeout))
    }

    fn wait_within(&self, timeout: Option<Duration>) -> Result<bool> {
        flag(self.handle.call(Op::ConditionWait { thread: thread_id(), timeout_ms: millis(timeout) })?)
    }

    /// Waits until `ready` returns true, checked first and after each wake-up (Python's
    /// `wait_for`), for at most `timeout` in all; returns what `ready` last said.
    pub fn wait_for(&self, timeout: Option<Duration>, mut ready: impl FnMut() -> bool) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if ready() {
                return Ok(true);
            }
            match deadline {
                None => self.wait()?,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    self.wait_timeout(left)?;
                }
            }
        }
    }

    /// Wakes up to `n` of the threads waiting now; returns how many.
    pub fn notify(&self, n: usize) -> Result<usize> {
        count(self.handle.call(Op::ConditionNotify { thread: thread_id(), n: n as u64 })?)
    }

    /// Wakes every thread waiting now; returns how many.
    pub fn notify_all(&self) -> Result<usize> {
        count(self.handle.call(Op::ConditionNotify { thread: thread_id(), n: u64::MAX })?)
    }
}

impl Drop for ConditionProxyGuard<'_> {
    fn drop(&mut self) {
        release(self.handle);
    }
}

impl fmt::Debug for ConditionProxyGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionProxyGuard").finish_non_exhaustive()
    }
}

/// A proxy to a semaphore held by a [`Manager`](crate::Manager): Python's
/// `manager.Semaphore(n)` and `BoundedSemaphore(n)`.
///
/// A count taken with a guard ([`acquire`](Self::acquire)) is given back when the guard is
/// dropped, or when its client dies; one taken and [`forget`](SemaphoreProxyGuard::forget)ten,
/// and [`release`](Self::release) without a guard, are the program's to manage, as in Python.
pub struct SemaphoreProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(SemaphoreProxy);

impl SemaphoreProxy {
    /// Waits for a count and takes it.
    pub fn acquire(&self) -> Result<SemaphoreProxyGuard<'_>> {
        self.acquire_within(None)?.ok_or_else(|| unexpected(Answer::Done))
    }

    /// Waits at most `timeout`: `Ok(None)` if no count came.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<SemaphoreProxyGuard<'_>>> {
        self.acquire_within(Some(timeout))
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<Option<SemaphoreProxyGuard<'_>>> {
        match self.handle.call_raw(Op::SemaphoreAcquire { timeout_ms: millis(timeout) })? {
            Ok(answer) => {
                done(answer).map(|()| Some(SemaphoreProxyGuard { handle: &self.handle, _not_send: PhantomData }))
            }
            Err(Failure::TimedOut) => Ok(None),
            Err(f) => Err(client::failure(f)),
        }
    }

    /// Adds a count without a guard (Python's `release()`).
    ///
    /// # Errors
    ///
    /// [`Error::OverReleased`](crate::Error::OverReleased) past a bounded semaphore's bound.
    pub fn release(&self) -> Result<()> {
        done(self.handle.call(Op::SemaphoreRelease { guarded: false })?)
    }

    /// The counts free now.
    pub fn value(&self) -> Result<usize> {
        count(self.handle.call(Op::SemaphoreValue)?)
    }
}

/// Holds one count of a [`SemaphoreProxy`]; dropping it gives the count back.
#[must_use = "the count is given back as soon as the guard is dropped"]
pub struct SemaphoreProxyGuard<'a> {
    handle: &'a Handle,
    _not_send: PhantomData<*const ()>,
}

impl SemaphoreProxyGuard<'_> {
    /// Keeps the count taken: not given back now, nor when this client dies.
    pub fn forget(self) -> Result<()> {
        let handle = self.handle;
        std::mem::forget(self);
        done(handle.call(Op::SemaphoreForget)?)
    }
}

impl Drop for SemaphoreProxyGuard<'_> {
    fn drop(&mut self) {
        let _ = self.handle.call(Op::SemaphoreRelease { guarded: true });
    }
}

impl fmt::Debug for SemaphoreProxyGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreProxyGuard").finish_non_exhaustive()
    }
}

/// A proxy to a barrier held by a [`Manager`](crate::Manager): Python's `manager.Barrier(n)`.
///
/// # Broken, never hung
///
/// Every waiter gets [`Error::BrokenBarrier`](crate::Error::BrokenBarrier) saying why (and so
/// does every later caller, until [`reset`](Self::reset)) when a party's client dies while it
/// waits; when a process that waited at it before has gone (every connection closed, no
/// process with its pid left on the server's machine) while others wait; when a wait with a
/// timeout runs out; and on [`abort`](Self::abort). A process that has never waited at it
/// cannot be known to be a party: one that dies before its first wait is not seen (a timeout
/// covers that).
pub struct BarrierProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(BarrierProxy);

impl BarrierProxy {
    /// Waits until every party has arrived; returns this one's arrival index, `0..parties`.
    pub fn wait(&self) -> Result<usize> {
        count(self.handle.call(Op::BarrierWait { timeout_ms: None })?)
    }

    /// As [`wait`](Self::wait), at most `timeout`: the barrier breaks if it runs out.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        count(self.handle.call(Op::BarrierWait { timeout_ms: millis(Some(timeout)) })?)
    }

    /// Makes it ready again; whoever waits now gets a broken barrier (Python's rule).
    pub fn reset(&self) -> Result<()> {
        done(self.handle.call(Op::BarrierReset)?)
    }

    /// Breaks it: every waiter, and every later caller until a reset, gets a broken barrier.
    pub fn abort(&self) -> Result<()> {
        done(self.handle.call(Op::BarrierAbort)?)
    }

    /// The parties waiting now.
    pub fn n_waiting(&self) -> Result<usize> {
        count(self.handle.call(Op::BarrierWaiting)?)
    }

    /// Whether it is broken.
    pub fn is_broken(&self) -> Result<bool> {
        flag(self.handle.call(Op::BarrierIsBroken)?)
    }
}

/// A proxy to an event held by a [`Manager`](crate::Manager): Python's `manager.Event()`.
pub struct EventProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(EventProxy);

impl EventProxy {
    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> Result<()> {
        done(self.handle.call(Op::EventSet)?)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        done(self.handle.call(Op::EventClear)?)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        flag(self.handle.call(Op::EventIsSet)?)
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<()> {
        flag(self.handle.call(Op::EventWait { timeout_ms: None })?).map(drop)
    }

    /// Waits at most `timeout`; returns whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        flag(self.handle.call(Op::EventWait { timeout_ms: millis(Some(timeout)) })?)
    }
}
