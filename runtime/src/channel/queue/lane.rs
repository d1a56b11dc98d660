//! Putting and taking, lane by lane.
//!
//! Putting is in `put.rs`, taking in `take.rs`, sleeping and waking in `sleep.rs`, and a
//! `JoinableQueue`'s counts in `joinable.rs`; this file holds what both sides use.
//!
//! **Producers.** Each producing thread has a lane of its own (a ring in shared memory): it
//! writes an item's record past the lane's tail, then publishes it by storing the new tail,
//! one word. No atomic read-modify-write on the way, so a stream of puts is not slowed by the
//! other core's reads. A producer killed at any instant has either published an item whole or
//! not at all; its lane is taken over by the next thread that needs one, when its process is
//! found dead. With more producing threads than lanes, the rest share one lane under a lock;
//! a thread that put there moves to a lane of its own only once its items there are taken, so
//! each thread's items keep their order.
//!
//! **Consumers.** Any consumer takes from any lane, holding the lane's lock (an owner word)
//! while it reads one item and moves the head. One killed before it moved the head leaves the
//! item in place for the next; one killed after took it with it (the item is lost: it was being
//! taken). A large item's memory is freed only after the head has moved past it, with a note
//! left first, so that whoever takes over the lock of a consumer killed in between frees it
//! (never before: the next consumer would read zeros). A lock whose holder is dead is taken
//! over: by the next consumer that waits behind it, at once by a `try_get`. Consumers tell the
//! producer about freed space now and then (every eighth of the ring, when the lane runs empty,
//! or when asked).

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::queue::attach::Shared;
use crate::channel::queue::layout::*;
use crate::error::{Error, Result};
use crate::sys::shm;

/// How long a lock may be seen held, with work waiting behind it, before its holder is
/// checked for being alive.
pub(super) const SUSPECT_AFTER: Duration = Duration::from_millis(2);
/// How long a `get` on an empty queue (or a `put` short of room) looks again before it sleeps:
/// when producer and consumer run neck and neck, the next item comes within microseconds, and
/// sleeping would make every `put` pay for a wake-up. It yields between looks, so that with more
/// processes than cores the ones it waits for get the CPU (measured, 4 producers x 4 consumers on
/// 2 cores: 4-6 M msgs/s spinning, 18-26 M yielding; 1 x 1 the same, 37-38 M). Bounded, so a
/// queue that stays empty costs nothing.
pub(super) const SPIN: Duration = Duration::from_micros(20);

impl Shared {
    /// Refuses work on a queue closed here, or shut down.
    pub(super) fn check_open(&self, putting: bool) -> Result<()> {
        if self.closed.load(Relaxed) {
            return Err(Error::QueueClosed);
        }
        let state = self.header().shutdown.0.load(Acquire);
        if state == SHUTDOWN_NOW || (putting && state != 0) {
            return Err(Error::ShutDown);
        }
        Ok(())
    }

    /// Items in the queue now (a snapshot: others may put and take meanwhile).
    pub(crate) fn len(&self) -> usize {
        let h = self.header();
        self.active_lanes()
            .map(|i| {
                let lane = &h.lanes[i];
                let ring = items_between(lane.consumer.0.head.load(Acquire), lane.producer.0.tail.load(Acquire));
                (ring + self.spilled(i)) as usize
            })
            .sum()
    }

    /// The lanes ever given to a producer.
    pub(super) fn active_lanes(&self) -> impl Iterator<Item = usize> + '_ {
        let h = self.header();
        (0..LANES).filter(move |i| h.active.0[i / 64].load(Acquire) & (1 << (i % 64)) != 0)
    }

    pub(super) fn fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Shuts the queue down for every process (Python 3.13's `shutdown`).
    pub(crate) fn shutdown(self: &Arc<Self>, immediate: bool) {
        let h = self.header();
        let state = if immediate { SHUTDOWN_NOW } else { SHUTDOWN };
        h.shutdown.0.fetch_max(state, AcqRel);
        if immediate {
            // Drain: every item goes, counted done, so that joiners are released.
            let mut held = false;
            let done = &h.participants[self.me as usize].done;
            while let Ok(true) = self.try_take(&mut |_| (), &mut held) {
                if h.flags & JOINABLE != 0 {
                    done.fetch_add(1, AcqRel); // taken here, and done: nobody will process it
                }
            }
        }
        for kind in [Sleep::Items, Sleep::Space, Sleep::Done] {
            self.wake(kind, true);
        }
        shm::ring(self.doorbell_ref());
    }
}
