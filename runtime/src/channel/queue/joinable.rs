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
        let pending = counts.pending_lane.load(Acquire);
        if pending == 0 {
            return;
        }
        let (lane, spill) = ((pending & 0xffff_ffff) as usize - 1, pending >> 32 != 0);
        let tail_before = counts.pending_tail.load(Acquire);
        let put_before = counts.pending_put.load(Acquire);
        let tail = if spill { &self.spill_side(lane).tail } else { &h.lanes[lane].producer.0.tail };
        let published = tail.load(Acquire) != tail_before;
        counts.put.store(put_before + published as u64, Release);
        counts.pending_lane.store(0, Release);
        self.wake(Sleep::Done, true);
    }

    /// Counts one task done (`JoinableQueue::task_done`), for this process's slot.
    pub(crate) fn task_done(&self) -> Result<()> {
        let h = self.header();
        // The done first: every task counted in it was put before it was done, so the count of
        // items put read after covers them all, and this task too. (Read the other way round,
        // tasks put and done in between could make this one look done already.)
        let done = self.done_total();
        let put = h.counts.0.put.load(Acquire);
        if done >= put {
            return Err(Error::TaskDoneTooMany);
        }
        h.participants[self.me as usize].done.fetch_add(1, AcqRel);
        if done + 1 >= put {
            self.wake(Sleep::Done, true);
        }
        Ok(())
    }

    /// `task_done` calls, of every process that ever used the queue.
    fn done_total(&self) -> u64 {
        let h = self.header();
        let used = (h.counts.0.slots_used.load(Acquire) as usize).min(PARTICIPANTS);
        h.participants[..used].iter().map(|s| s.done.load(Acquire)).fold(0, u64::wrapping_add)
    }

    /// Items put and not yet done (the done read first, as in `task_done`: never too few).
    pub(crate) fn unfinished(&self) -> u64 {
        let done = self.done_total();
        self.header().counts.0.put.load(Acquire).saturating_sub(done)
    }

    /// The tasks lost with the processes of participant slot `p`, and the pid to blame: all
    /// the undone tasks of a slot no live process has; what earlier processes left, for a
    /// slot in use. (A process that marks done tasks another took lowers its own count: the
    /// loss is counted where the take was.)
    pub(crate) fn lost_by(&self, p: usize) -> (u64, u32) {
        let slot = &self.header().participants[p];
        let state = slot.state.load(Acquire);
        let live = state & 1 == 1 && self.alive(owner_word(p as u32, state >> 1, 0));
        let base = slot.base.load(Acquire) as i64;
        if live {
            return (base.max(0) as u64, slot.lost_pid.load(Relaxed));
        }
        let net = slot.taken.load(Acquire).wrapping_sub(slot.done.load(Acquire)) as i64;
        let pid = if net > base { slot.pid.load(Relaxed) } else { slot.lost_pid.load(Relaxed) };
        (net.max(0) as u64, pid)
    }

    /// All the tasks lost with their processes, and the first loss not yet reported here.
    fn losses(&self) -> (u64, Option<(u32, u64)>) {
        let used = (self.header().counts.0.slots_used.load(Acquire) as usize).min(PARTICIPANTS);
        let mut reported = self.reported_lost.lock().unwrap_or_else(|p| p.into_inner());
        let (mut total, mut news) = (0, None);
        for p in 0..used {
            let (lost, pid) = self.lost_by(p);
            total += lost;
            if news.is_none() && lost > reported[p] {
                news = Some((pid, lost - reported[p]));
                reported[p] = lost;
            }
        }
        (total, news)
    }

    /// Waits until every item put is done (`JoinableQueue::join`), or one is lost: taken by a
    /// process that ended without marking it done.
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
            let unfinished = self.unfinished();
            if unfinished == 0 {
                return Ok(());
            }
            // A consumer that died in a take leaves it to count to whoever takes its lock.
            self.take_back_dead_locks(false);
            let (lost, news) = self.losses();
            if let Some((pid, tasks)) = news {
                return Err(Error::TasksLost { pid, tasks });
            }
            if unfinished <= lost {
                return Ok(()); // done, but for the losses reported already
            }
            // a live put ends within microseconds: look again soon while one is under way;
            // and look for dead consumers now and then
            let cap = if putting { PUT_UNDER_WAY } else { LOOK_FOR_THE_DEAD };
            if !sleeper.sleep(seq, wait, Some(cap)) {
                return Err(Error::TasksUnfinished {
                    waited: wait.timeout().unwrap_or_default(),
                    tasks: unfinished - lost,
                });
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
/// How often a joiner looks for consumers that died holding tasks.
const LOOK_FOR_THE_DEAD: Duration = Duration::from_millis(50);

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

    /// Consumers that keep up with the producer mark each task done the moment they take it:
    /// a `task_done` must never find its own task uncounted (the count of tasks done it reads
    /// may include tasks put after it read the count of items put, so it reads the done first).
    #[test]
    fn task_done_never_finds_its_task_uncounted_while_others_race_it() {
        const N: u64 = 400_000;
        for _round in 0..8 {
            race_task_done(N);
        }
    }

    fn race_task_done(n: u64) {
        let shared = Shared::create(0, JOINABLE).unwrap();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&shared);
                std::thread::spawn(move || loop {
                    let mut last = false;
                    s.take(Wait::at_most(Duration::from_secs(30)), |b| last = b == [0xff; 8]).unwrap();
                    s.task_done().unwrap();
                    if last {
                        return;
                    }
                })
            })
            .collect();
        for i in 0..n {
            shared.put_bytes(&i.to_le_bytes(), Wait::Forever).unwrap();
        }
        for _ in &consumers {
            shared.put_bytes(&[0xff; 8], Wait::Forever).unwrap();
        }
        for c in consumers {
            c.join().expect("a task_done found its own task uncounted");
        }
        shared.join(Wait::Now).unwrap();
    }

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

    /// A consumer of a joinable queue dies at each step of a take: 0 holds the lock, 1 noted
    /// the take, 2 moved the head, 3 counted it. Whoever takes its lock over counts the take
    /// exactly when the head had moved, and `join` then names the loss, or finds none.
    #[test]
    fn a_consumer_killed_at_any_step_of_a_take_leaves_the_count_exact() {
        for step in 0..4 {
            let shared = Shared::create(0, JOINABLE).unwrap();
            shared.put_bytes(&[1; 8], Wait::Now).unwrap();
            shared.put_bytes(&[2; 8], Wait::Now).unwrap();
            let h = shared.header();
            let i = shared.active_lanes().next().unwrap();
            let c = &h.lanes[i].consumer.0;
            // slot 200: a process that used the queue and is gone (its state is not in use)
            let dead = &h.participants[200];
            dead.pid.store(4242, Relaxed);
            h.counts.0.slots_used.fetch_max(201, AcqRel);
            let owner = owner_word(200, 1, 1);
            c.lock.store(owner, Release);
            let head = c.head.load(Relaxed);
            if step >= 1 {
                c.take_head.store(head, Relaxed);
                c.take_count.store(dead.taken.load(Relaxed), Relaxed);
                c.take_owner.store(owner, Release);
            }
            if step >= 2 {
                c.head.store(advance(head, record_len(8)), Release);
            }
            if step >= 3 {
                dead.taken.fetch_add(1, AcqRel);
            }
            let mut got = Vec::new();
            shared.take(Wait::Now, |b| got = b.to_vec()).unwrap();
            let moved = step >= 2;
            assert_eq!(got, if moved { [2; 8] } else { [1; 8] }, "step {step}");
            assert_eq!(dead.taken.load(Relaxed), moved as u64, "step {step}: the dead one's take counted wrong");
            assert_eq!(c.take_owner.load(Relaxed), 0, "step {step}: the note stays");
            shared.task_done().unwrap();
            if !moved {
                shared.take(Wait::Now, |_| ()).unwrap();
                shared.task_done().unwrap();
                shared.join(Wait::Now).unwrap();
                continue;
            }
            match shared.join(Wait::at_most(Duration::from_secs(10))) {
                Err(Error::TasksLost { pid: 4242, tasks: 1 }) => {}
                other => panic!("step {step}: expected the dead one's loss, got {other:?}"),
            }
            shared.join(Wait::Now).unwrap(); // reported once; nothing else is unfinished
        }
    }
}
