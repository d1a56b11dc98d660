//! Sleeping and waking: a futex word per kind of wait, and who is registered on it (see the
//! module docs of `lane.rs` for why the first sleep is short).

use std::sync::atomic::Ordering::*;

use std::time::{Duration, Instant};

use crate::channel::pipe::Wait;
use crate::channel::queue::attach::Shared;
use crate::channel::queue::layout::*;
use crate::sys::shm;

/// How long a waker may take to see a registration (see the module docs).
const FIRST_SLEEP: Duration = Duration::from_millis(1);
/// Wake-ups in a row that woke nobody before the registrations of dead processes are swept.
const FUTILE_WAKES: u32 = 64;

impl Shared {
    /// Wakes sleepers of `kind`, if any are registered: one, or all. A run of wake-ups that
    /// woke nobody means a registered sleeper may be dead (killed in its sleep): its
    /// registration is taken back, so that puts stop paying a system call each.
    pub(crate) fn wake(&self, kind: Sleep, all: bool) {
        let h = self.header();
        let waiters = waiters(h, kind);
        if waiters.sleepers.load(Relaxed) > 0 {
            waiters.seq.fetch_add(1, Release);
            let woke = shm::futex_wake(&waiters.seq, if all { shm::WAKE_ALL } else { 1 });
            if woke > 0 {
                self.futile_wakes.store(0, Relaxed);
            } else if self.futile_wakes.fetch_add(1, Relaxed) + 1 >= FUTILE_WAKES {
                self.futile_wakes.store(0, Relaxed);
                self.sweep_dead();
            }
        }
        if kind == Sleep::Items && waiters.pollers.load(Relaxed) > 0 {
            shm::ring(self.doorbell_ref());
        }
    }

    /// Registers (or unregisters) a thread of this process as waiting in `multiproc::wait`.
    pub(crate) fn poll_register(&self, on: bool) {
        let h = self.header();
        let mine = &h.participants[self.me as usize].polling;
        if on {
            h.items.0.pollers.fetch_add(1, SeqCst);
            mine.fetch_add(1, AcqRel);
        } else {
            h.items.0.pollers.fetch_sub(1, AcqRel);
            let _ = mine.fetch_update(AcqRel, Acquire, |n| Some(n.saturating_sub(1)));
        }
    }

    pub(crate) fn doorbell_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.doorbell)
    }
}

fn waiters(h: &Header, kind: Sleep) -> &Waiters {
    match kind {
        Sleep::Items => &h.items.0,
        Sleep::Space => &h.space.0,
        Sleep::Done => &h.done.0,
    }
}

/// A thread's registration as a sleeper of one kind, for one call (see the module docs).
pub(super) struct Sleeper<'a> {
    shared: &'a Shared,
    kind: Sleep,
    pub(super) registered: bool,
    slept: u32,
}

impl<'a> Sleeper<'a> {
    pub(super) fn new(shared: &'a Shared, kind: Sleep) -> Self {
        Sleeper { shared, kind, registered: false, slept: 0 }
    }

    /// Waits for the futex to move on from `seq`: the first call only registers (the caller
    /// then looks again), the next sleeps at most a millisecond, later ones until woken or the
    /// wait's end (at most `cap`). `false` when the wait has run out.
    pub(super) fn sleep(&mut self, seq: u32, wait: Wait, cap: Option<Duration>) -> bool {
        let deadline = wait.deadline();
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return false;
        }
        let h = self.shared.header();
        if !self.registered {
            self.registered = true;
            waiters(h, self.kind).sleepers.fetch_add(1, SeqCst);
            h.participants[self.shared.me as usize].sleeping[self.kind as usize].fetch_add(1, AcqRel);
            return true;
        }
        let first = (self.slept == 0).then_some(FIRST_SLEEP);
        let timeout = [left, first, cap].into_iter().flatten().min();
        shm::futex_wait(&waiters(h, self.kind).seq, seq, timeout);
        self.slept += 1;
        true
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        if self.registered {
            let h = self.shared.header();
            waiters(h, self.kind).sleepers.fetch_sub(1, AcqRel);
            let mine = &h.participants[self.shared.me as usize].sleeping[self.kind as usize];
            let _ = mine.fetch_update(AcqRel, Acquire, |n| Some(n.saturating_sub(1)));
        }
    }
}
