//! A `JoinableQueue`'s counts: items put (under the producers' lock, finished for a producer
//! that died in the middle of a put), `task_done`, and `join`.

use std::sync::atomic::Ordering::*;

use std::time::{Duration, Instant};

use crate::channel::pipe::Wait;
use crate::channel::queue::attach::Shared;
use crate::channel::queue::layout::*;
use crate::error::{Error, Result};

use crate::channel::queue::sleep::Sleeper;

impl Shared {
    /// Locks the producers' mutex; a holder that died is finished for (see `put_in_lane`).
    pub(super) fn lock_producers(&self) -> Result<ProducersGuard<'_>> {
        let mutex = &self.header().producers.0;
        match mutex.lock(None) {
            Ok(crate::sys::robust::Locked::OwnerDied) => self.finish_dead_put(),
            Ok(_) => {}
            Err(e) => return Err(Error::io("could not lock a queue", e)),
        }
        Ok(ProducersGuard { mutex })
    }

    /// Puts the count of items put right after a producer died in the middle of a put.
    pub(super) fn finish_dead_put(&self) {
        let h = self.header();
        let counts = &h.counts.0;
        let lane = counts.pending_lane.load(Acquire);
        if lane == 0 {
            return;
        }
        let tail_before = counts.pending_tail.load(Acquire);
        let put_before = counts.pending_put.load(Acquire);
        let published = h.lanes[lane as usize - 1].producer.0.tail.load(Acquire) != tail_before;
        counts.put.store(put_before + published as u64, Release);
        counts.pending_lane.store(0, Release);
        self.wake(Sleep::Done, true);
    }

    /// Counts one task done (`JoinableQueue::task_done`).
    pub(crate) fn task_done(&self) -> Result<()> {
        let counts = &self.header().counts.0;
        loop {
            let done = counts.done.load(Acquire);
            if done >= counts.put.load(Acquire) {
                return Err(Error::TaskDoneTooMany);
            }
            if counts.done.compare_exchange(done, done + 1, AcqRel, Acquire).is_ok() {
                if done + 1 >= counts.put.load(Acquire) {
                    self.wake(Sleep::Done, true);
                }
                return Ok(());
            }
        }
    }

    /// Items put and not yet done.
    pub(crate) fn unfinished(&self) -> u64 {
        let counts = &self.header().counts.0;
        counts.put.load(Acquire).saturating_sub(counts.done.load(Acquire))
    }

    /// Waits until every item put is done (`JoinableQueue::join`).
    pub(crate) fn join(&self, wait: Wait) -> Result<()> {
        let h = self.header();
        let mut sleeper = Sleeper::new(self, Sleep::Done);
        loop {
            let seq = h.done.0.seq.load(Acquire);
            // A put in progress may be a producer's that died after counting its item and
            // before publishing it; nobody else may take the lock again to put that right.
            let putting = h.counts.0.pending_lane.load(Acquire) != 0;
            if putting {
                self.repair_dead_put();
            }
            if self.unfinished() == 0 {
                return Ok(());
            }
            // a live put ends within microseconds: look again soon while one is under way
            let cap = putting.then_some(PUT_UNDER_WAY);
            if !sleeper.sleep(seq, wait, cap) {
                return Err(Error::NotReady { timeout: wait.timeout().unwrap_or_default() });
            }
        }
    }

    /// Puts the count right now if the producer holding the lock died in the middle of a put
    /// (as the lock's next holder would); does nothing while a live producer holds it.
    pub(super) fn repair_dead_put(&self) {
        let mutex = &self.header().producers.0;
        match mutex.lock(Some(Instant::now())) {
            Ok(crate::sys::robust::Locked::OwnerDied) => {
                self.finish_dead_put();
                mutex.unlock();
            }
            Ok(crate::sys::robust::Locked::Yes) => mutex.unlock(),
            _ => {}
        }
    }
}

/// How soon a joiner looks again while a put is under way (it may be a dead producer's).
const PUT_UNDER_WAY: Duration = Duration::from_millis(20);

/// Holds the producers' mutex.
pub(super) struct ProducersGuard<'a> {
    mutex: &'a crate::sys::robust::RobustMutex,
}

impl Drop for ProducersGuard<'_> {
    fn drop(&mut self) {
        self.mutex.unlock(); // this thread locked it (see lock_producers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_joiner_repairs_the_count_of_a_producer_that_died_between_counting_and_publishing() {
        let shared = Shared::create(0, JOINABLE).unwrap();
        // A producer thread takes the lock, counts an item, and ends before publishing it (the
        // kernel marks the lock as its owner's death leaves it).
        let producer = Arc::clone(&shared);
        std::thread::spawn(move || {
            let guard = producer.lock_producers().unwrap();
            let counts = &producer.header().counts.0;
            let put = counts.put.load(Relaxed);
            counts.pending_tail.store(producer.header().lanes[0].producer.0.tail.load(Relaxed), Relaxed);
            counts.pending_put.store(put, Relaxed);
            counts.pending_lane.store(1, Release);
            counts.put.store(put + 1, Release);
            std::mem::forget(guard);
        })
        .join()
        .unwrap();
        assert_eq!(shared.unfinished(), 1);
        // nobody puts again: the joiner itself must put the count right
        shared.join(Wait::at_most(Duration::from_secs(10))).unwrap();
        assert_eq!(shared.unfinished(), 0);
    }
}
