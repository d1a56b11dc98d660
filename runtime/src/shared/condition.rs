//! `Condition`: a lock, and a way to sleep under it until notified.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::shared::poison::{self, Acquired, HolderDied, LockResult, TryLockResult};
use crate::shared::region::{self, Kind, Region, Type};
use crate::sys::robust::Relock;
use crate::sys::shm;

/// A condition variable with its own lock, shared by processes and threads: Python's
/// `multiprocessing.Condition`.
///
/// Lock it, then wait on the guard ([`ConditionGuard::wait`]) until another holder of the lock
/// notifies ([`ConditionGuard::notify`]). Waiting and notifying happen on the guard, so both
/// hold the lock, as Python requires (and checks at run time).
///
/// `notify(n)` wakes `n` of the threads waiting at that moment, or all of them if fewer wait;
/// a thread that starts waiting after the notify (the notifier itself, waiting next) does not
/// take it. A waiter whose process was killed while waiting may leave its notification to a
/// later waiter, which then wakes with nothing to see; so wait in a loop on what you wait for:
/// [`wait_while`](ConditionGuard::wait_while).
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, AtomicValue, Condition};
///
/// #[process_fn]
/// fn ready(cond: Condition, flag: AtomicValue<u32>) {
///     let g = cond.lock().unwrap();
///     flag.store(1);
///     g.notify_all();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let cond = Condition::new()?;
/// let flag = AtomicValue::new(0u32)?;
/// let child = ready.spawn(cond.clone(), flag.clone())?;
/// let g = cond.lock()?;
/// let _g = g.wait_while(|| flag.load() == 0)?;
/// child.join()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Condition {
    region: Arc<Region>,
}

const CONDITION: Type = Type::bare(Kind::Condition);
/// Threads waiting that no notification counted yet (changed under the lock only).
const WAITING: usize = 0;
/// Notifications made and not yet taken by a waiter.
const TOKENS: usize = 1;
/// The round a waiter registers in (moved on by each notify, under the lock).
const ROUND: usize = 2;
/// The round of the last notify: a waiter takes a notification only if it registered in that
/// round or before, so one that starts waiting after a notify (the notifier itself, say)
/// cannot take it from a thread that was already waiting.
const NOTIFIED_ROUND: usize = 3;

impl Condition {
    /// A new condition with its own lock.
    pub fn new() -> Result<Condition> {
        Ok(Condition { region: Region::create(CONDITION, 0, Relock::Refuse, |_, _| {})? })
    }

    /// Waits for the lock and takes it.
    pub fn lock(&self) -> LockResult<ConditionGuard<'_>> {
        poison::lock_result(poison::acquire(&self.region, None, "Condition"), || self.guard())
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> TryLockResult<ConditionGuard<'_>> {
        poison::try_lock_result(poison::acquire(&self.region, Some(Instant::now()), "Condition"), || self.guard())
    }

    /// Waits at most `timeout` for the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ConditionGuard<'_>> {
        poison::try_lock_result(poison::acquire(&self.region, poison::deadline_in(timeout), "Condition"), || {
            self.guard()
        })
    }

    fn guard(&self) -> ConditionGuard<'_> {
        ConditionGuard { cond: self, _not_send: PhantomData }
    }
}

/// Holds a [`Condition`]'s lock; waits and notifies through it. Dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    _not_send: PhantomData<*const ()>,
}

impl<'a> ConditionGuard<'a> {
    /// Releases the lock, sleeps until notified, and takes the lock again.
    ///
    /// # Errors
    ///
    /// [`HolderDied`] when, while this thread slept, a holder of the lock died holding it; the
    /// guard is inside, and the lock is held.
    pub fn wait(self) -> LockResult<ConditionGuard<'a>> {
        self.wait_until(None).map(|(g, _)| g).map_err(|e| e.map(|(g, _)| g))
    }

    /// As [`wait`](ConditionGuard::wait), for at most `timeout`; the flag says whether it was
    /// notified (`false`: the time ran out). The lock is held again either way.
    pub fn wait_timeout(self, timeout: Duration) -> LockResult<(ConditionGuard<'a>, bool)> {
        self.wait_until(poison::deadline_in(timeout))
    }

    /// Waits for as long as `condition` returns `true` (checked under the lock, before each
    /// wait).
    pub fn wait_while(mut self, mut condition: impl FnMut() -> bool) -> LockResult<ConditionGuard<'a>> {
        while condition() {
            self = self.wait()?;
        }
        Ok(self)
    }

    /// Python's `wait_for(predicate, timeout)`: waits until `predicate` returns `true`, at
    /// most `timeout`; returns the guard and the predicate's last answer.
    pub fn wait_for(
        mut self,
        mut predicate: impl FnMut() -> bool,
        timeout: Duration,
    ) -> LockResult<(ConditionGuard<'a>, bool)> {
        let deadline = poison::deadline_in(timeout);
        loop {
            if predicate() {
                return Ok((self, true));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((self, false));
            }
            self = self.wait_until(deadline)?.0;
        }
    }

    /// Wakes up to `n` of the threads waiting now.
    pub fn notify(&self, n: usize) {
        let r = &self.cond.region;
        let waiting = r.word(WAITING).load(Relaxed);
        let k = waiting.min(n.min(u32::MAX as usize) as u32);
        if k == 0 {
            return;
        }
        r.word(WAITING).store(waiting - k, Relaxed);
        let round = r.word(ROUND).load(Relaxed);
        r.word(NOTIFIED_ROUND).store(round, Release);
        r.word(ROUND).store(round.wrapping_add(1), Relaxed);
        r.word(TOKENS).fetch_add(k, SeqCst);
        // All: the kernel would pick `k` sleepers of any round, and one that came after this
        // notify would only go back to sleep.
        shm::futex_wake(r.word(TOKENS), shm::WAKE_ALL);
    }

    /// Wakes one waiting thread.
    pub fn notify_one(&self) {
        self.notify(1)
    }

    /// Wakes every waiting thread.
    pub fn notify_all(&self) {
        self.notify(usize::MAX)
    }

    fn wait_until(self, deadline: Option<Instant>) -> LockResult<(ConditionGuard<'a>, bool)> {
        let cond = self.cond;
        let r = &cond.region;
        let (waiting, tokens) = (r.word(WAITING), r.word(TOKENS));
        waiting.fetch_add(1, Relaxed);
        let round = r.word(ROUND).load(Relaxed);
        drop(self); // releases the lock
        let take = || take_token(tokens, r.word(NOTIFIED_ROUND), round);
        let mut notified = false;
        while !notified {
            let seen = tokens.load(Acquire);
            notified = take();
            if notified {
                break;
            }
            let Some(left) = super::left(deadline) else { break };
            shm::futex_wait(tokens, seen, left);
        }
        let acquired = poison::acquire(r, None, "Condition");
        if !notified {
            // Timed out: a notification may have come since; else leave the count of waiters.
            notified = take();
            if !notified {
                waiting.fetch_sub(1, Relaxed);
            }
        }
        let guard = cond.guard();
        match acquired {
            Acquired::HolderDied(pid) => Err(HolderDied::new((guard, notified), pid)),
            _ => Ok((guard, notified)),
        }
    }
}

/// Takes one notification, if there is one that a waiter registered in `round` may take.
fn take_token(tokens: &AtomicU32, notified_round: &AtomicU32, round: u32) -> bool {
    // rounds count up and wrap: "at or before" is a difference below half the range
    let eligible = (notified_round.load(Acquire).wrapping_sub(round) as i32) >= 0;
    eligible && tokens.fetch_update(AcqRel, Acquire, |t| t.checked_sub(1)).is_ok()
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        self.cond.region.header().lock.mutex.unlock();
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard").finish_non_exhaustive()
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}

region::region_handle!(Condition, CONDITION);
