//! `Barrier`: a meeting point for a fixed number of parties, that breaks rather than hangs.

use std::fmt;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::shared::region::{self, Kind, Region, Type};
use crate::sys::robust::Relock;
use crate::sys::shm;

/// A barrier for a fixed number of parties, across processes and threads: Python's
/// `multiprocessing.Barrier`.
///
/// Each party calls [`wait`](Barrier::wait); all return together once the last arrives, and
/// the barrier is ready for the next round. Each gets its arrival index, `0..parties`.
///
/// # Broken, never hung
///
/// The barrier breaks, and every waiter (and later caller, until [`reset`](Barrier::reset))
/// gets [`Error::BrokenBarrier`] saying why, when:
/// - a process holding a handle dies (killed, crashed, aborted: anything but an exit) while
///   still holding it: a party that died cannot arrive. A process that exits, even with a
///   handle kept in a `static`, has left, and breaks nothing. Waiters look for dead processes
///   after 1 ms of waiting, then at growing intervals, at most 100 ms apart. Each process
///   using the barrier holds a member slot whose liveness the kernel tracks (a byte-range lock
///   that goes with the process);
/// - a wait with a timeout runs out (Python's rule: the waiter breaks the barrier);
/// - [`abort`](Barrier::abort) is called.
///
/// Python's `action` (a callable run by one party) is not offered: the party that gets index
/// `parties - 1` arrived last, and can run it.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Barrier};
///
/// #[process_fn]
/// fn party(b: Barrier) -> usize {
///     b.wait().unwrap()
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let b = Barrier::new(3)?;
/// let children: Vec<_> = (0..2).map(|_| party.spawn(b.clone())).collect::<Result<_, _>>()?;
/// let mine = b.wait()?;
/// let mut indexes = vec![mine];
/// for child in children {
///     indexes.push(child.join()?);
/// }
/// indexes.sort();
/// assert_eq!(indexes, [0, 1, 2]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Barrier {
    region: Arc<Region>,
}

const BARRIER: Type = Type::with_members(Kind::Barrier, bury);
/// `generation << 13 | broken << 12 | arrived`.
const STATE: usize = 0;
const PARTIES: usize = 1;
/// Resets so far: a waiter that sees it change was reset away.
const RESETS: usize = 2;
/// Why it broke, and the dead party's process id.
const REASON: usize = 3;
const DEAD_PID: usize = 4;

const COUNT_BITS: u32 = 12;
const BROKEN: u32 = 1 << COUNT_BITS;
const GENERATION: u32 = 1 << (COUNT_BITS + 1);
/// The most parties a barrier can have.
pub const MAX_PARTIES: usize = (1 << COUNT_BITS) - 1;

const ABORTED: u32 = 1;
const TIMED_OUT: u32 = 2;
const PARTY_DIED: u32 = 3;

const LONGEST_NAP: Duration = Duration::from_millis(100);

impl Barrier {
    /// A new barrier for `parties` parties.
    ///
    /// # Errors
    ///
    /// [`Error::SharedConfig`] for no parties, or more than 4,095.
    pub fn new(parties: usize) -> Result<Barrier> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(Error::SharedConfig {
                reason: format!("a Barrier needs 1 to {MAX_PARTIES} parties, not {parties}"),
            });
        }
        let region =
            Region::create(BARRIER, 0, Relock::Refuse, |h, _| h.words[PARTIES].store(parties as u32, Relaxed))?;
        Ok(Barrier { region })
    }

    /// Waits until every party has arrived; returns this party's arrival index.
    ///
    /// # Errors
    ///
    /// [`Error::BrokenBarrier`] when the barrier is broken, or breaks while waiting.
    pub fn wait(&self) -> Result<usize> {
        self.wait_until(None)
    }

    /// As [`wait`](Barrier::wait), for at most `timeout`; running out breaks the barrier
    /// for every party.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        self.wait_until(crate::shared::poison::deadline_in(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<usize> {
        let r = &self.region;
        let (state, parties) = (r.word(STATE), r.word(PARTIES).load(Relaxed));
        let (index, generation, resets) = loop {
            let s = state.load(Acquire);
            if s & BROKEN != 0 {
                return Err(self.broken_error());
            }
            let resets = r.word(RESETS).load(Acquire);
            let arrived = s & (BROKEN - 1);
            if arrived + 1 == parties {
                let next = (s & !(GENERATION - 1)).wrapping_add(GENERATION);
                if state.compare_exchange(s, next, AcqRel, Acquire).is_ok() {
                    shm::futex_wake(state, shm::WAKE_ALL);
                    return Ok(arrived as usize);
                }
            } else if state.compare_exchange(s, s + 1, AcqRel, Acquire).is_ok() {
                break (arrived as usize, s / GENERATION, resets);
            }
        };
        let mut nap = Duration::from_millis(1);
        loop {
            let s = state.load(Acquire);
            if s / GENERATION != generation {
                if r.word(RESETS).load(Acquire) != resets {
                    return Err(Error::BrokenBarrier { reason: "reset() was called while this party waited".into() });
                }
                return Ok(index);
            }
            if s & BROKEN != 0 {
                return Err(self.broken_error());
            }
            let Some(left) = super::left(deadline) else {
                self.break_with(TIMED_OUT, 0);
                return Err(self.broken_error());
            };
            let before = Instant::now();
            shm::futex_wait(state, s, Some(left.map_or(nap, |l| l.min(nap))));
            if before.elapsed() >= nap {
                r.sweep(); // breaks the barrier if a party died
                nap = (nap * 2).min(LONGEST_NAP);
            }
        }
    }

    /// Breaks the barrier: every waiter, and every later caller until
    /// [`reset`](Barrier::reset), gets [`Error::BrokenBarrier`].
    pub fn abort(&self) {
        self.break_with(ABORTED, 0);
    }

    /// Makes the barrier whole and empty again. Parties waiting now get
    /// [`Error::BrokenBarrier`].
    pub fn reset(&self) {
        let r = &self.region;
        r.sweep(); // dead parties found now do not break the new round
        r.word(RESETS).fetch_add(1, AcqRel);
        let state = r.word(STATE);
        let _ = state.fetch_update(AcqRel, Acquire, |s| Some((s & !(GENERATION - 1)).wrapping_add(GENERATION)));
        r.word(REASON).store(0, Release);
        shm::futex_wake(state, shm::WAKE_ALL);
    }

    /// The number of parties.
    pub fn parties(&self) -> usize {
        self.region.word(PARTIES).load(Relaxed) as usize
    }

    /// Parties waiting now.
    pub fn n_waiting(&self) -> usize {
        let s = self.region.word(STATE).load(Acquire);
        if s & BROKEN != 0 {
            0
        } else {
            (s & (BROKEN - 1)) as usize
        }
    }

    /// Whether the barrier is broken (it first looks for parties that died).
    pub fn is_broken(&self) -> bool {
        self.region.sweep();
        self.region.word(STATE).load(Acquire) & BROKEN != 0
    }

    fn break_with(&self, reason: u32, pid: u32) {
        break_region(&self.region, reason, pid)
    }

    fn broken_error(&self) -> Error {
        let r = &self.region;
        let reason = match r.word(REASON).load(Acquire) {
            ABORTED => "abort() was called".to_string(),
            TIMED_OUT => "a party's wait timed out".to_string(),
            PARTY_DIED => format!(
                "process {} died holding it, so a party will never arrive; reset() makes it usable again",
                r.word(DEAD_PID).load(Acquire)
            ),
            _ => "it was broken".to_string(),
        };
        Error::BrokenBarrier { reason }
    }
}

fn break_region(region: &Region, reason: u32, pid: u32) {
    let state = region.word(STATE);
    if state.load(Acquire) & BROKEN != 0 {
        return; // the first reason stands
    }
    region.word(DEAD_PID).store(pid, Release);
    region.word(REASON).store(reason, Release);
    let _ = state.fetch_update(AcqRel, Acquire, |s| Some(s | BROKEN));
    shm::futex_wake(state, shm::WAKE_ALL);
}

/// A member died without leaving: a party that will never arrive.
fn bury(region: &Region, slot: usize, state: u32) {
    let member = &region.header().members[slot];
    if member.state.load(Acquire) == state {
        break_region(region, PARTY_DIED, member.pid.load(Relaxed));
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier").field("parties", &self.parties()).field("n_waiting", &self.n_waiting()).finish()
    }
}

region::region_handle!(Barrier, BARRIER);
