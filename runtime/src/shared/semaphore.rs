//! `Semaphore` and `BoundedSemaphore`: counts shared by processes, that a dead holder gives
//! back.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::shared::region::{self, Kind, Region, Type, MEMBERS};
use crate::sys::robust::{Locked, Relock};
use crate::sys::shm;

/// A counting semaphore shared by processes and threads: Python's
/// `multiprocessing.Semaphore`.
///
/// [`acquire`](Semaphore::acquire) takes one count and returns a guard that gives it back
/// when dropped. [`release`](Semaphore::release) adds a count without a guard (Python's
/// `release()`, for a semaphore used to signal), and [`SemaphoreGuard::forget`] keeps a count
/// taken.
///
/// # A holder that dies
///
/// A count held by a guard in a process that dies, however it dies, comes back: each process
/// using the semaphore holds a member slot whose liveness the kernel tracks (a byte-range lock
/// that goes with the process), and records there the counts its guards hold. A thread that
/// waits for a count looks for dead members after 1 ms, then at growing intervals (at most
/// 100 ms), and gives their counts back; [`recover`](Semaphore::recover) does it at once.
/// Counts taken without a guard (forgotten) are the program's to manage, as in Python.
///
/// A count and the record of who holds it change together, under a robust lock with a journal:
/// a process killed in the middle of taking or giving back a count leaves no count lost or
/// doubled (the next holder of the lock undoes the half-made change).
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Semaphore};
///
/// #[process_fn]
/// fn work(slots: Semaphore) {
///     let _slot = slots.acquire(); // at most 2 children in here at once
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let slots = Semaphore::new(2)?;
/// let children: Vec<_> = (0..4).map(|_| work.spawn(slots.clone())).collect::<Result<_, _>>()?;
/// for child in children {
///     child.join()?;
/// }
/// assert_eq!(slots.value(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    region: Arc<Region>,
}

const SEMAPHORE: Type = Type::with_members(Kind::Semaphore, bury);
const VALUE: usize = 0;
const SLEEPERS: usize = 1;
/// The bound of a `BoundedSemaphore` (0: none).
const BOUND: usize = 2;
/// The journal of the change in progress under the lock: `1 + member` (or `1 + MEMBERS` for
/// none; 0: no change in progress), and the value and the member's counts before it.
const JOURNAL: usize = 3;
const VALUE_BEFORE: usize = 4;
const HELD_BEFORE: usize = 5;

/// The longest a waiter sleeps before looking for dead holders again.
const LONGEST_NAP: Duration = Duration::from_millis(100);

impl Semaphore {
    /// A new semaphore holding `value` counts.
    pub fn new(value: u32) -> Result<Semaphore> {
        Semaphore::make(value, 0)
    }

    fn make(value: u32, bound: u32) -> Result<Semaphore> {
        let region = Region::create(SEMAPHORE, 0, Relock::Refuse, |h, _| {
            h.words[VALUE].store(value, Relaxed);
            h.words[BOUND].store(bound, Relaxed);
        })?;
        Ok(Semaphore { region })
    }

    /// Waits for a count and takes it.
    pub fn acquire(&self) -> SemaphoreGuard<'_> {
        self.acquire_until(None).expect("a wait without a deadline ends with a count")
    }

    /// Takes a count if one is free.
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        self.acquire_until(Some(Instant::now()))
    }

    /// Waits at most `timeout` for a count (Python's `acquire(timeout=...)`).
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
        self.acquire_until(crate::shared::poison::deadline_in(timeout))
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> Option<SemaphoreGuard<'_>> {
        let r = &self.region;
        let (value, sleepers) = (r.word(VALUE), r.word(SLEEPERS));
        let mut nap = Duration::from_millis(1);
        loop {
            if value.load(Acquire) > 0 && change(r, r.my_slot(), |v, held| (v > 0).then(|| (v - 1, held + 1))) {
                return Some(SemaphoreGuard { sem: self });
            }
            let left = super::left(deadline)?;
            let left = Some(left.map_or(nap, |l| l.min(nap)));
            sleepers.fetch_add(1, SeqCst);
            if value.load(SeqCst) == 0 {
                let before = Instant::now();
                shm::futex_wait(value, 0, left);
                if before.elapsed() >= nap {
                    r.sweep(); // gives back what dead holders held
                    nap = (nap * 2).min(LONGEST_NAP);
                }
            }
            sleepers.fetch_sub(1, SeqCst);
        }
    }

    /// Adds one count (Python's `release()`), waking a waiter.
    ///
    /// # Errors
    ///
    /// For a [`BoundedSemaphore`], [`Error::OverReleased`] when the count would pass its
    /// initial value; nothing changes then.
    pub fn release(&self) -> Result<()> {
        let r = &self.region;
        let bound = r.word(BOUND).load(Relaxed);
        if !change(r, None, |v, held| (bound == 0 || v < bound).then(|| (v.wrapping_add(1), held))) {
            return Err(Error::OverReleased { bound });
        }
        wake(r, 1);
        Ok(())
    }

    /// The counts free now.
    pub fn value(&self) -> u32 {
        self.region.word(VALUE).load(Acquire)
    }

    /// Gives back at once the counts held by guards in processes that died; returns the
    /// process id of one of them, if any was found. Waiters do this on their own after a
    /// while (see the type's documentation).
    pub fn recover(&self) -> Option<u32> {
        self.region.sweep()
    }
}

/// Changes the count and `member`'s held counts together, under the semaphore's lock: `f`
/// gets both and returns the new ones, or `None` to change nothing. A journal makes the change
/// whole or nothing: the next holder undoes one its process died in the middle of.
fn change(region: &Region, member: Option<usize>, f: impl FnOnce(u32, u32) -> Option<(u32, u32)>) -> bool {
    let h = region.header();
    match h.lock.mutex.lock(None) {
        Ok(Locked::OwnerDied) => roll_back(region),
        Ok(_) => {}
        Err(e) => panic!("a multiproc Semaphore's mutex failed: {e}"),
    }
    let value = region.word(VALUE).load(SeqCst);
    let held_word = member.map(|m| &h.members[m].held);
    let held = held_word.map_or(0, |w| w.load(SeqCst));
    let changed = match f(value, held) {
        Some((new_value, new_held)) => {
            region.word(VALUE_BEFORE).store(value, SeqCst);
            region.word(HELD_BEFORE).store(held, SeqCst);
            region.word(JOURNAL).store(1 + member.unwrap_or(MEMBERS) as u32, SeqCst);
            region.word(VALUE).store(new_value, SeqCst);
            if let Some(w) = held_word {
                w.store(new_held, SeqCst);
            }
            region.word(JOURNAL).store(0, SeqCst);
            true
        }
        None => false,
    };
    h.lock.mutex.unlock();
    changed
}

/// Undoes the change a dead holder of the lock left half made.
fn roll_back(region: &Region) {
    let journal = region.word(JOURNAL).load(SeqCst);
    if journal == 0 {
        return;
    }
    region.word(VALUE).store(region.word(VALUE_BEFORE).load(SeqCst), SeqCst);
    if let Some(member) = region.header().members.get(journal as usize - 1) {
        member.held.store(region.word(HELD_BEFORE).load(SeqCst), SeqCst);
    }
    region.word(JOURNAL).store(0, SeqCst);
}

fn wake(region: &Region, n: u32) {
    if region.word(SLEEPERS).load(SeqCst) > 0 {
        shm::futex_wake(region.word(VALUE), n);
    }
}

/// Gives back what a dead member's guards held, once.
fn bury(region: &Region, slot: usize, state: u32) {
    let member = &region.header().members[slot];
    let mut returned = 0;
    // under the semaphore's lock: a second burial finds nothing held, and a slot taken over
    // since (its state changed) is left alone
    change(region, Some(slot), |v, held| {
        if member.state.load(SeqCst) != state || held == 0 {
            return None;
        }
        returned = held;
        Some((v.wrapping_add(held), 0))
    });
    if returned > 0 {
        shm::futex_wake(region.word(VALUE), returned);
    }
}

/// One count of a [`Semaphore`]; given back when dropped.
#[must_use = "the count is given back as soon as the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
}

impl SemaphoreGuard<'_> {
    /// Keeps the count taken: it is not given back when this guard goes, nor if this process
    /// dies (Python's `acquire()` without a `release()`).
    pub fn forget(self) {
        let r = &self.sem.region;
        change(r, r.my_slot(), |v, held| Some((v, held.saturating_sub(1))));
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let r = &self.sem.region;
        change(r, r.my_slot(), |v, held| Some((v.wrapping_add(1), held.saturating_sub(1))));
        wake(r, 1);
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard").finish_non_exhaustive()
    }
}

/// A semaphore whose count cannot pass its initial value: Python's
/// `multiprocessing.BoundedSemaphore`. A [`release`](Semaphore::release) past it is
/// [`Error::OverReleased`], a bug caught where it happens. Everything else is [`Semaphore`]'s
/// (through `Deref`).
#[derive(Clone)]
pub struct BoundedSemaphore {
    sem: Semaphore,
}

impl BoundedSemaphore {
    /// A new bounded semaphore holding `value` counts, at most.
    ///
    /// # Errors
    ///
    /// [`Error::SharedConfig`] for a bound of zero.
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        if value == 0 {
            return Err(Error::SharedConfig { reason: "a BoundedSemaphore needs a bound of at least 1".into() });
        }
        Ok(BoundedSemaphore { sem: Semaphore::make(value, value)? })
    }
}

impl Deref for BoundedSemaphore {
    type Target = Semaphore;

    fn deref(&self) -> &Semaphore {
        &self.sem
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore").field("value", &self.value()).finish()
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore").field("value", &self.value()).finish()
    }
}

region::region_handle!(Semaphore, SEMAPHORE);

impl Serialize for BoundedSemaphore {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.sem.serialize(s)
    }
}

impl<'de> Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let sem = Semaphore::deserialize(d)?;
        if sem.region.word(BOUND).load(Relaxed) == 0 {
            return Err(serde::de::Error::custom("a Semaphore arrived where a BoundedSemaphore was expected"));
        }
        Ok(BoundedSemaphore { sem })
    }
}
