//! The take path: finding a lane with an item, holding it while the item is read, and taking
//! back the locks of consumers that died holding them.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::pipe::Wait;
use crate::channel::queue::attach::{self, Shared};
use crate::channel::queue::layout::*;
use crate::error::{Error, Result};
use crate::sys::shm;

use crate::channel::queue::lane::{SPIN, SUSPECT_AFTER};
use crate::channel::queue::sleep::Sleeper;

impl Shared {
    /// Takes one item, handing its bytes to `read` while the lane is held, waiting as `wait`
    /// allows.
    pub(crate) fn take(self: &Arc<Self>, wait: Wait, mut read: impl FnMut(&[u8])) -> Result<()> {
        let h = self.header();
        let mut sleeper = Sleeper::new(self, Sleep::Items);
        let mut stuck_since: Option<Instant> = None;
        let mut spin_until: Option<Instant> = None;
        loop {
            self.check_open(false)?;
            let seq = h.items.0.seq.load(Acquire);
            let mut held_elsewhere = false;
            match self.try_take(&mut read, &mut held_elsewhere)? {
                true => return Ok(()),
                false if h.shutdown.0.load(Acquire) != 0 && !held_elsewhere => return Err(Error::ShutDown),
                false => {}
            }
            if !matches!(wait, Wait::Now) && !sleeper.registered {
                let until = *spin_until.get_or_insert_with(|| Instant::now() + SPIN);
                if Instant::now() < until {
                    std::thread::yield_now();
                    continue;
                }
            }
            let cap = if held_elsewhere {
                let since = *stuck_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SUSPECT_AFTER {
                    self.take_back_dead_locks();
                    stuck_since = None;
                }
                Some(Duration::from_micros(200))
            } else {
                stuck_since = None;
                None
            };
            if !sleeper.sleep(seq, wait, cap) {
                return Err(Error::Empty { waited: wait.timeout() });
            }
        }
    }

    /// One pass over the lanes: takes the first item found (`true`). `held_elsewhere`: a lane
    /// with items was held by another consumer.
    pub(super) fn try_take(&self, read: &mut impl FnMut(&[u8]), held_elsewhere: &mut bool) -> Result<bool> {
        let here = self as *const Shared as usize;
        let me = ConsumerState::get(here, self);
        // the lane this thread last took from first: with one producer, the only one
        if me.queue == here && self.try_lane(me.last, me.owner, read, held_elsewhere)? {
            return Ok(true);
        }
        let h = self.header();
        // every active lane once, from `start` round to `start - 1`
        for round in 0..2 {
            for (w, word) in h.active.0.iter().enumerate() {
                let mut bits = word.load(Acquire);
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if (round == 0) != (i >= me.start) || (me.queue == here && i == me.last) {
                        continue;
                    }
                    if self.try_lane(i, me.owner, read, held_elsewhere)? {
                        ConsumerState::set_last(here, i);
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Takes an item from lane `i` if it has one and no other consumer holds it.
    #[inline]
    pub(super) fn try_lane(
        &self,
        i: usize,
        me: u64,
        read: &mut impl FnMut(&[u8]),
        held_elsewhere: &mut bool,
    ) -> Result<bool> {
        let h = self.header();
        let lane = &h.lanes[i];
        if items_between(lane.consumer.0.head.load(Acquire), self.tail(i, lane)) == 0 {
            return Ok(false);
        }
        if lane.consumer.0.lock.compare_exchange(0, me, Acquire, Relaxed).is_err() {
            *held_elsewhere = true;
            return Ok(false);
        }
        let taken = self.take_from(i, read);
        lane.consumer.0.lock.store(0, Release);
        if h.maxsize > 0 && matches!(taken, Ok(true)) {
            self.wake(Sleep::Space, true);
        }
        taken
    }

    /// Takes the item at the head of `lane`, whose lock this thread holds.
    pub(super) fn take_from(&self, i: usize, read: &mut impl FnMut(&[u8])) -> Result<bool> {
        let h = self.header();
        let lane = &h.lanes[i];
        let head = lane.consumer.0.head.load(Relaxed);
        let tail = self.tail(i, lane);
        if items_between(head, tail) == 0 {
            return Ok(false);
        }
        let at = pos(head);
        // SAFETY: a record's header is a word at an 8-aligned position of the ring, published
        // (before the tail was stored) and not rewritten while this thread holds the lane.
        let word = u64::from_le(unsafe { (self.ring(i) as *const u64).add((at % LANE_CAP) as usize / 8).read() });
        let (len, kind) = ((word & 0xffff_ffff) as usize, (word >> 32) as u32);
        let corrupt = |why: &str| Error::BadFrame { reason: format!("a queue's lane {i} is corrupt: {why}") };
        match kind {
            INLINE if len <= INLINE_MAX => {
                let start = ((at + RECORD_HEADER) % LANE_CAP) as usize;
                if start + len <= LANE_CAP as usize {
                    // SAFETY: the record is published and held by this thread (see read_ring),
                    // contiguous, and inside the ring; nothing writes it while the slice lives.
                    let bytes = unsafe { std::slice::from_raw_parts(self.ring(i).add(start), len) };
                    read(bytes)
                } else {
                    let mut bytes = vec![0u8; len];
                    self.read_ring(i, at + RECORD_HEADER, &mut bytes);
                    read(&bytes)
                }
            }
            BLOB if len == 16 => {
                let mut body = [0u8; 16];
                self.read_ring(i, at + RECORD_HEADER, &mut body);
                let offset = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                let size = u64::from_le_bytes(body[8..].try_into().expect("8 bytes"));
                let bytes = shm::read_at(self.fd_ref(), size as usize, BLOBS_AT + offset)
                    .map_err(|e| Error::io("could not read a large item from the queue's memory", e))?;
                shm::punch_hole(self.fd_ref(), BLOBS_AT + offset, size.next_multiple_of(4096));
                read(&bytes)
            }
            _ => return Err(corrupt(&format!("a record of kind {kind} and length {len}"))),
        }
        let new_head = advance(head, record_len(len));
        lane.consumer.0.head.store(new_head, Release);
        // The producer learns of freed space every eighth of the ring (also when it waits for
        // room: one wake-up per eighth, not per item), or when the lane runs empty.
        let released = &lane.released.0;
        let empty = items_between(new_head, tail) == 0;
        if empty || bytes_between(released.pos.load(Relaxed), pos(new_head)) >= RELEASE_EVERY {
            released.pos.store(pos(new_head), Release);
            if released.wanted.swap(0, AcqRel) != 0 {
                self.wake(Sleep::Space, true);
            }
        }
        Ok(true)
    }

    /// Copies `len` bytes out of lane `lane`'s ring from byte position `at`.
    pub(super) fn read_ring(&self, lane: usize, at: u64, out: &mut [u8]) {
        let start = (at % LANE_CAP) as usize;
        let first = out.len().min(LANE_CAP as usize - start);
        let ring = self.ring(lane);
        // SAFETY: `[at, at + out.len())` is a published record between head and tail, which no
        // producer writes until it is released, and this thread holds the lane's consumer
        // lock. Both copies stay inside the ring.
        unsafe {
            std::ptr::copy_nonoverlapping(ring.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(ring, out.as_mut_ptr().add(first), out.len() - first);
        }
    }

    /// Lane `i`'s tail as far as this process needs to know: the last one read, unless that
    /// shows no item past `head`, in which case it is read again.
    #[inline]
    pub(super) fn tail(&self, i: usize, lane: &Lane) -> u64 {
        // Acquire/release on the cache too: a thread that takes items another thread saw
        // published must also see their bytes.
        let seen = self.tail_seen[i].load(Acquire);
        let head = lane.consumer.0.head.load(Acquire);
        if is_ahead(head, seen) {
            return seen; // those items are published: the tail only grows
        }
        let tail = lane.producer.0.tail.load(Acquire);
        self.tail_seen[i].store(tail, Release);
        tail
    }

    /// Takes over lane locks whose holders are dead: what they held goes back to work.
    pub(super) fn take_back_dead_locks(&self) {
        let h = self.header();
        for i in self.active_lanes() {
            let lane = &h.lanes[i];
            let holder = lane.consumer.0.lock.load(Acquire);
            if holder != 0
                && !self.alive(holder)
                && lane.consumer.0.lock.compare_exchange(holder, 0, AcqRel, Relaxed).is_ok()
            {
                // the dead holder may have moved the head without telling the producer
                let head = lane.consumer.0.head.load(Acquire);
                lane.released.0.pos.store(pos(head), Release);
                self.wake(Sleep::Space, true);
            }
        }
        self.sweep_dead();
    }
}

/// What a consuming thread keeps between takes.
#[derive(Clone, Copy)]
struct ConsumerState {
    /// The queue (by address) it last took from, and the lane.
    queue: usize,
    last: usize,
    /// Where its next scan of the lanes starts: turn by turn, for fairness.
    start: usize,
    /// Its owner word in that queue.
    owner: u64,
}

thread_local! {
    static CONSUMER: std::cell::Cell<ConsumerState> =
        const { std::cell::Cell::new(ConsumerState { queue: 0, last: 0, start: 0, owner: 0 }) };
}

impl ConsumerState {
    /// This thread's state for the queue at `here`, moving its scan's start on.
    #[inline]
    fn get(here: usize, shared: &Shared) -> ConsumerState {
        CONSUMER.with(|c| {
            let mut s = c.get();
            if s.queue != here {
                s = ConsumerState { queue: 0, last: 0, start: s.start, owner: shared.owner(attach::thread_tag()) };
            }
            s.start = (s.start + 1) % LANES;
            c.set(ConsumerState { queue: here, ..s });
            s
        })
    }

    #[inline]
    fn set_last(here: usize, lane: usize) {
        CONSUMER.with(|c| c.set(ConsumerState { queue: here, last: lane, ..c.get() }));
    }
}
