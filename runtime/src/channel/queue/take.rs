//! The take path: finding a lane with an item, holding it while the item is read, and taking
//! back the locks of consumers that died holding them.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::pipe::Wait;
use crate::channel::queue::attach::{self, Shared};
use crate::channel::queue::block::{self, BlockInfo, BLOCK_HEADER, BLOCK_MAX};
use crate::channel::queue::layout::*;
use crate::error::{Error, Result};
use crate::sys::shm;

use crate::channel::queue::lane::{SPIN, SUSPECT_AFTER};
use crate::channel::queue::sleep::Sleeper;

/// Where the items of a block that are all `size` bytes go, as one run (a plain number's
/// `get_many` copies them out at once), instead of one call each.
pub(crate) struct Bulk<'a> {
    pub(crate) size: usize,
    pub(crate) take: &'a mut dyn FnMut(&[u8]),
}

impl Shared {
    /// Takes one item, handing its bytes to `read` while the lane is held, waiting as `wait`
    /// allows.
    pub(crate) fn take(self: &Arc<Self>, wait: Wait, mut read: impl FnMut(&[u8])) -> Result<()> {
        let h = self.header();
        let mut sleeper = Sleeper::new(self, Sleep::Items);
        let mut stuck_since: Option<Instant> = None;
        let mut spin_until: Option<Instant> = None;
        let mut looked_for_dead = false;
        loop {
            self.check_open(false)?;
            let seq = h.items.0.seq.load(Acquire);
            let mut held_elsewhere = false;
            match self.try_take(&mut read, &mut held_elsewhere)? {
                true => return Ok(()),
                false if h.shutdown.0.load(Acquire) != 0 && !held_elsewhere => return Err(Error::ShutDown),
                false => {}
            }
            // A `try_get` that finds items behind a lock does not wait to suspect its holder:
            // it asks at once whether the holder is alive, so that a consumer killed holding a
            // lane does not make the items behind it look gone to every `try_get` after it.
            if held_elsewhere && matches!(wait, Wait::Now) && !looked_for_dead {
                looked_for_dead = true;
                if self.take_back_dead_locks(false) {
                    continue;
                }
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
                    self.take_back_dead_locks(true);
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

    /// Takes up to `max` items that are there now, without waiting: from each lane found with
    /// items, as many as it has under one hold of its lock. Returns how many.
    pub(crate) fn take_many_now(&self, max: usize, read: &mut impl FnMut(&[u8]) -> bool) -> Result<usize> {
        self.take_many_now_bulk(max, read, None)
    }

    /// [`take_many_now`](Self::take_many_now), giving the items of a block whose items are all
    /// `bulk.size` bytes to `bulk` as one run (each `size` bytes, one after another), and the
    /// others to `read` one by one.
    pub(crate) fn take_many_now_bulk(
        &self,
        max: usize,
        read: &mut impl FnMut(&[u8]) -> bool,
        mut bulk: Option<&mut Bulk<'_>>,
    ) -> Result<usize> {
        let here = self as *const Shared as usize;
        let me = ConsumerState::get(here, self);
        let h = self.header();
        let mut taken = 0;
        let mut first = me.queue == here;
        let stopped = std::cell::Cell::new(false);
        let mut read = |bytes: &[u8]| {
            if !read(bytes) {
                stopped.set(true);
            }
        };
        while taken < max {
            let mut found = 0;
            // the lane last taken from first, then every active one
            let lanes = first.then_some(me.last).into_iter().chain(self.active_lanes());
            for i in lanes {
                let mut held_elsewhere = false;
                found = self.try_lane_many(
                    i,
                    me.owner,
                    max - taken,
                    &mut read,
                    &stopped,
                    &mut held_elsewhere,
                    bulk.as_deref_mut(),
                )?;
                if found > 0 {
                    ConsumerState::set_last(here, i);
                    break;
                }
            }
            first = false;
            if found == 0 {
                break;
            }
            taken += found;
            if stopped.get() {
                break;
            }
        }
        if taken > 0 && h.maxsize > 0 {
            self.wake(Sleep::Space, true);
        }
        Ok(taken)
    }

    /// Takes up to `max` items from lane `i` under one hold of its lock (each taken as one
    /// alone is: a consumer killed meanwhile has taken those before, whole), until `stopped`.
    #[allow(clippy::too_many_arguments)]
    fn try_lane_many(
        &self,
        i: usize,
        me: u64,
        max: usize,
        read: &mut impl FnMut(&[u8]),
        stopped: &std::cell::Cell<bool>,
        held_elsewhere: &mut bool,
        mut bulk: Option<&mut Bulk<'_>>,
    ) -> Result<usize> {
        let lane = &self.header().lanes[i];
        if items_between(lane.consumer.0.head.load(Acquire), self.tail(i, lane)) == 0 && !self.spilling(i) {
            return Ok(0);
        }
        if lane.consumer.0.lock.compare_exchange(0, me, Acquire, Relaxed).is_err() {
            *held_elsewhere = true;
            return Ok(0);
        }
        let mut n = 0;
        let mut result = Ok(());
        let counting = self.header().flags & JOINABLE != 0;
        while n < max && !stopped.get() {
            if !counting {
                n += self.take_run(i, max - n, read, stopped, bulk.as_deref_mut());
                if n == max || stopped.get() {
                    break;
                }
            }
            // a large item, the spill, or a joinable queue's counted take: one at a time
            match self.take_next(i, read) {
                Ok(true) => n += 1,
                Ok(false) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        lane.consumer.0.lock.store(0, Release);
        result.map(|()| n)
    }

    /// Takes up to `max` small items in a row from the head of lane `i`'s ring, whose lock this
    /// thread holds, and moves the head past them once: a consumer killed before that has
    /// taken none of them (they stay for the next), after it all. Stops at a large item, which
    /// is taken as one alone is. Not for a joinable queue, whose takes are counted one by one.
    fn take_run(
        &self,
        i: usize,
        max: usize,
        read: &mut impl FnMut(&[u8]),
        stopped: &std::cell::Cell<bool>,
        mut bulk: Option<&mut Bulk<'_>>,
    ) -> usize {
        let lane = &self.header().lanes[i];
        let c = &lane.consumer.0;
        let start_head = c.head.load(Relaxed);
        let tail = self.tail(i, lane);
        let mut head = start_head;
        let mut n = 0;
        let mut scratch = Vec::new();
        while n < max && !stopped.get() && items_between(head, tail) != 0 {
            let at = pos(head);
            // SAFETY: as in `take_from`: a published record's header word, held by this thread.
            let word = u64::from_le(unsafe { (self.ring(i) as *const u64).add((at % LANE_CAP) as usize / 8).read() });
            let (len, kind) = ((word & 0xffff_ffff) as usize, (word >> 32) as u32);
            if kind == BLOCK {
                let left = (max - n) as u64;
                match self.take_run_of_block(i, head, len, left, read, stopped, &mut scratch, bulk.as_deref_mut()) {
                    Some((next, given)) => (head, n) = (next, n + given as usize),
                    None => break, // a corrupt block: `take_from` says so
                }
                if pos(head) == at {
                    break; // the block is not all taken: `max` reached, `read` stopped, or corrupt
                }
                continue;
            }
            if kind != INLINE || len > INLINE_MAX {
                break; // a large item (or a corrupt record: `take_from` says so)
            }
            let start = ((at + RECORD_HEADER) % LANE_CAP) as usize;
            if start + len <= LANE_CAP as usize {
                // SAFETY: as in `take_from`: published, held, contiguous and inside the ring.
                read(unsafe { std::slice::from_raw_parts(self.ring(i).add(start), len) });
            } else {
                scratch.resize(len, 0);
                self.read_ring(i, at + RECORD_HEADER, &mut scratch);
                read(&scratch);
            }
            head = advance(head, record_len(len));
            n += 1;
        }
        if n == 0 {
            return 0;
        }
        c.head.store(head, Release);
        self.tell_released(lane, head, tail);
        n
    }

    /// Reads up to `max` items of the block record at `head` (of body length `len`), from the
    /// first not taken, until `stopped`; returns the head after them and how many. `None`: the
    /// block does not read, and nothing was given.
    #[allow(clippy::too_many_arguments)]
    fn take_run_of_block(
        &self,
        i: usize,
        head: u64,
        len: usize,
        max: u64,
        read: &mut impl FnMut(&[u8]),
        stopped: &std::cell::Cell<bool>,
        scratch: &mut Vec<u8>,
        bulk: Option<&mut Bulk<'_>>,
    ) -> Option<(u64, u64)> {
        if !(BLOCK_HEADER..=BLOCK_MAX).contains(&len) {
            return None;
        }
        let start = ((pos(head) + RECORD_HEADER) % LANE_CAP) as usize;
        let body: &[u8] = if start + len <= LANE_CAP as usize {
            // SAFETY: as in `take_from`: published, held, contiguous and inside the ring.
            unsafe { std::slice::from_raw_parts(self.ring(i).add(start), len) }
        } else {
            scratch.resize(len, 0);
            self.read_ring(i, pos(head) + RECORD_HEADER, scratch);
            scratch
        };
        let info = BlockInfo::parse(body[..BLOCK_HEADER].try_into().expect("a block's header"), len).ok()?;
        let from = info.taken(count(head)).ok()?;
        let given = match bulk {
            Some(bulk) if bulk.size > 0 && info.fixed_size() == bulk.size && !stopped.get() => {
                let last = from.saturating_add(max).min(info.n);
                let at = |k: u64| (k as usize).checked_mul(bulk.size).and_then(|b| b.checked_add(BLOCK_HEADER));
                // out of the body: a corrupt block, which `take_from` names
                let run = body.get(at(from)?..at(last)?)?;
                (bulk.take)(run);
                last - from
            }
            _ => {
                block::read_items(&info, body, from, max, |item| {
                    read(item);
                    !stopped.get()
                })
                .0
            }
        };
        if given == 0 {
            return None;
        }
        let next = match from + given == info.n {
            true => advance_by(head, record_len(len), given),
            false => advance_by(head, 0, given),
        };
        Some((next, given))
    }

    /// The producer learns of freed space every eighth of the ring (also when it waits for
    /// room: one wake-up per eighth, not per item), or when the lane runs empty.
    #[inline(always)]
    fn tell_released(&self, lane: &Lane, head: u64, tail: u64) {
        let released = &lane.released.0;
        let empty = items_between(head, tail) == 0;
        if empty || bytes_between(released.pos.load(Relaxed), pos(head)) >= RELEASE_EVERY {
            released.pos.store(pos(head), Release);
            if released.wanted.swap(0, AcqRel) != 0 {
                self.wake(Sleep::Space, true);
            }
        }
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
        if items_between(lane.consumer.0.head.load(Acquire), self.tail(i, lane)) == 0 && !self.spilling(i) {
            return Ok(false);
        }
        if lane.consumer.0.lock.compare_exchange(0, me, Acquire, Relaxed).is_err() {
            *held_elsewhere = true;
            return Ok(false);
        }
        let taken = self.take_next(i, read);
        lane.consumer.0.lock.store(0, Release);
        // (each arm builds its own result: moving the whole `Result` out costs a stalled copy
        // on every take)
        match taken {
            Ok(true) => {
                if h.maxsize > 0 {
                    self.wake(Sleep::Space, true);
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes lane `i`'s next item, whose lock this thread holds: from the ring while it has
    /// any (they are older than every spilled one), else from the spill.
    #[inline]
    fn take_next(&self, i: usize, read: &mut impl FnMut(&[u8])) -> Result<bool> {
        // (one call of the ring's take, so that it is inlined on the hot path)
        let mut spill_seen = false;
        loop {
            if self.take_from(i, read)? {
                return Ok(true);
            }
            if spill_seen {
                return self.take_spilled(i, read);
            }
            if !self.spilling(i) {
                return Ok(false);
            }
            // A ring item put before the spilled item just seen is visible now (the ring's
            // tail is read again, after the spill's): it is older, so it goes first.
            spill_seen = true;
        }
    }

    /// Takes the item at the head of lane `i`'s ring, whose lock this thread holds.
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
        let corrupt = |why: &str| block::corrupt(i, why.to_string());
        let mut new_head = advance(head, record_len(len));
        // a large item's place and length, freed once the head has moved past it
        let blob = match kind {
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
                None
            }
            BLOCK => {
                new_head = self.take_from_block(i, head, len, read).map_err(|why| block::corrupt(i, why))?;
                None
            }
            BLOB if len == 16 => {
                let mut body = [0u8; 16];
                self.read_ring(i, at + RECORD_HEADER, &mut body);
                let offset = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                let size = u64::from_le_bytes(body[8..].try_into().expect("8 bytes"));
                let bytes = shm::read_at(self.fd_ref(), size as usize, BLOBS_AT + offset)
                    .map_err(|e| Error::io("could not read a large item from the queue's memory", e))?;
                read(&bytes);
                Some((offset, size.next_multiple_of(4096)))
            }
            _ => return Err(corrupt(&format!("a record of kind {kind} and length {len}"))),
        };
        let c = &lane.consumer.0;
        // A joinable queue counts the take for this process's slot, after the head moves; the
        // note lets whoever takes this lock over count it if this process dies in between.
        let counting = h.flags & JOINABLE != 0;
        let turn = counting.then(|| self.take_turn.lock().unwrap_or_else(|p| p.into_inner()));
        let slot = &h.participants[self.me as usize];
        if counting {
            c.take_head.store(head, Relaxed);
            let sp = self.spill_side(i);
            if sp.take_spill.load(Relaxed) != 0 {
                sp.take_spill.store(0, Relaxed);
            }
            c.take_count.store(slot.taken.load(Relaxed), Relaxed);
            c.take_owner.store(c.lock.load(Relaxed), Release);
        }
        if let Some((offset, freed)) = blob {
            // Freed only once the head has moved past it: a consumer killed before that leaves
            // the item whole for the next one (freed first, the next one would read zeros). The
            // note lets whoever takes this lock over free it.
            c.punch_head.store(head, Relaxed);
            c.punch_at.store(offset, Relaxed);
            c.punch_len.store(freed, Release);
        }
        c.head.store(new_head, Release);
        if counting {
            slot.taken.fetch_add(1, AcqRel);
            c.take_owner.store(0, Release);
            drop(turn);
        }
        if blob.is_some() {
            self.finish_punch(i);
        }
        self.tell_released(lane, new_head, tail);
        Ok(true)
    }

    /// Reads the first item not taken of the block record at `head` (of body length `len`) in
    /// lane `i`, whose lock this thread holds; returns the head after it.
    fn take_from_block(&self, i: usize, head: u64, len: usize, read: &mut impl FnMut(&[u8])) -> Result<u64, String> {
        if !(BLOCK_HEADER..=BLOCK_MAX).contains(&len) {
            return Err(format!("a block record of {len} bytes"));
        }
        let body_at = pos(head) + RECORD_HEADER;
        let mut header = [0u8; BLOCK_HEADER];
        self.read_ring(i, body_at, &mut header);
        let info = BlockInfo::parse(&header, len)?;
        let k = info.taken(count(head))?;
        let (at, item_len) = info.item(k, |at| {
            let mut word = [0u8; 4];
            self.read_ring(i, body_at + at as u64, &mut word);
            u32::from_le_bytes(word)
        })?;
        let start = ((body_at + at as u64) % LANE_CAP) as usize;
        if start + item_len <= LANE_CAP as usize {
            // SAFETY: as for an inline record: inside the published record (`item` checked it
            // against the record's length), held by this thread, contiguous, inside the ring.
            read(unsafe { std::slice::from_raw_parts(self.ring(i).add(start), item_len) });
        } else {
            let mut bytes = vec![0u8; item_len];
            self.read_ring(i, body_at + at as u64, &mut bytes);
            read(&bytes);
        }
        Ok(match k + 1 == info.n {
            true => advance(head, record_len(len)),
            false => advance_by(head, 0, 1),
        })
    }

    /// Frees the large item noted in lane `i`'s consumer side, if the head moved past it, and
    /// clears the note. Called under the lane's lock: by the consumer that took the item, or by
    /// the one that took the lock over from it.
    fn finish_punch(&self, i: usize) {
        let c = &self.header().lanes[i].consumer.0;
        let len = c.punch_len.load(Acquire);
        if len == 0 {
            return;
        }
        if c.head.load(Acquire) != c.punch_head.load(Relaxed) {
            shm::punch_hole(self.fd_ref(), BLOBS_AT + c.punch_at.load(Relaxed), len);
        }
        c.punch_len.store(0, Release);
    }

    /// Counts the take noted in lane `i`'s consumer side for its taker's slot, if the head
    /// moved and the count did not, and clears the note. Called under the lane's lock, by the
    /// one that took it over from a dead taker (or from one that died doing this). Counted at
    /// most once: the count is compared with what it was before the take, and a slot with a
    /// note naming it is not given to a new process.
    fn finish_take_count(&self, i: usize) {
        let c = &self.header().lanes[i].consumer.0;
        let Some((p, _)) = owner_of(c.take_owner.load(Acquire)) else { return };
        let sp = self.spill_side(i);
        let head = if sp.take_spill.load(Relaxed) != 0 { &sp.head } else { &c.head };
        if head.load(Acquire) != c.take_head.load(Relaxed) {
            let before = c.take_count.load(Relaxed);
            let taken = &self.header().participants[p as usize].taken;
            let _ = taken.compare_exchange(before, before.wrapping_add(1), AcqRel, Relaxed);
        }
        c.take_owner.store(0, Release);
    }

    /// Takes lane `i`'s consumer lock over from `holder`, found dead, and puts right what it
    /// left half done: frees the large item it had taken, if it had, and tells the producer
    /// where the head is. `false`: someone else took it over first.
    pub(super) fn take_over_consumer_lock(&self, i: usize, holder: u64) -> bool {
        let lane = &self.header().lanes[i];
        let me = self.owner(attach::thread_tag());
        if lane.consumer.0.lock.compare_exchange(holder, me, AcqRel, Relaxed).is_err() {
            return false;
        }
        self.finish_punch(i);
        self.finish_take_count(i);
        self.free_spilled(i);
        // the dead holder may have moved the head without telling the producer
        let head = lane.consumer.0.head.load(Acquire);
        lane.released.0.pos.store(pos(head), Release);
        lane.consumer.0.lock.store(0, Release);
        self.wake(Sleep::Space, true);
        true
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

    /// Takes over lane locks whose holders are dead: what they held goes back to work. With
    /// `sweep`, also takes back what dead participants left registered. `true`: a lock was
    /// taken back.
    pub(super) fn take_back_dead_locks(&self, sweep: bool) -> bool {
        let h = self.header();
        let mut any = false;
        for i in self.active_lanes() {
            let lane = &h.lanes[i];
            let holder = lane.consumer.0.lock.load(Acquire);
            if holder != 0 && !self.alive(holder) {
                any |= self.take_over_consumer_lock(i, holder);
            }
        }
        if sweep {
            self.sweep_dead();
        }
        any
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the queue's memory in use (blocks, not its size).
    fn in_use(shared: &Shared) -> u64 {
        rustix::fs::fstat(shared.fd_ref()).unwrap().st_blocks as u64 * 512
    }

    /// A consumer dies at each step of taking a run of small items (`get_many`): holding the
    /// lane having read some (the head not moved), or after it moved the head past them. The
    /// next consumer gets every item in the first case and the ones after the run in the
    /// second; none twice, none corrupt.
    #[test]
    fn a_consumer_killed_at_any_step_of_taking_a_run_leaves_it_whole_or_taken() {
        for step in 0..2 {
            let shared = Shared::create(0, 0).unwrap();
            for x in 0..10u64 {
                shared.put_bytes(&x.to_le_bytes(), Wait::Now).unwrap();
            }
            let h = shared.header();
            let i = shared.active_lanes().next().unwrap();
            let c = &h.lanes[i].consumer.0;
            // the dead consumer read four records (its copies died with it) ...
            c.lock.store(owner_word(200, 1, 1), Release);
            if step == 1 {
                // ... and moved the head past them, once, as a run does
                let mut head = c.head.load(Relaxed);
                for _ in 0..4 {
                    head = advance(head, record_len(8));
                }
                c.head.store(head, Release);
            }
            // the next consumer finds the lock of the dead, takes it back, and goes on
            let mut got = Vec::new();
            let mut read = |b: &[u8]| {
                got.push(u64::from_le_bytes(b.try_into().unwrap()));
                true
            };
            shared
                .take(Wait::For(Duration::from_secs(5), Instant::now() + Duration::from_secs(5)), |b| {
                    read(b);
                })
                .unwrap();
            while shared.take_many_now(100, &mut read).unwrap() > 0 {}
            let from = if step == 1 { 4 } else { 0 };
            assert_eq!(got, (from..10).collect::<Vec<_>>(), "step {step}");
            assert_eq!(shared.len(), 0);
        }
    }

    fn batch_of(items: impl IntoIterator<Item = u64>) -> block::Batch {
        let mut batch = block::Batch::with_capacity(16);
        for x in items {
            batch.push(&x).unwrap();
        }
        batch
    }

    fn take_all(shared: &Arc<Shared>) -> Vec<u64> {
        let mut got = Vec::new();
        let mut read = |b: &[u8]| {
            got.push(u64::from_le_bytes(b.try_into().unwrap()));
            true
        };
        let wait = Wait::For(Duration::from_secs(5), Instant::now() + Duration::from_secs(5));
        shared.take(wait, |b| _ = read(b)).unwrap();
        while shared.take_many_now(100, &mut read).unwrap() > 0 {}
        got
    }

    /// A consumer dies at each step of taking part of a block (`put_many`'s records): holding
    /// the lane with the head not moved, with the head's count moved past some of the block's
    /// items (its position still at the block), or past the whole block. The next consumer
    /// gets exactly the items not taken, in order.
    #[test]
    fn a_consumer_killed_at_any_step_of_taking_part_of_a_block_leaves_the_rest_whole() {
        for (step, taken) in [(0, 0), (1, 3), (2, 9), (3, 10)] {
            let shared = Shared::create(0, 0).unwrap();
            shared.put_batch(&batch_of(0..10), Wait::Now).unwrap();
            shared.put_batch(&batch_of(10..15), Wait::Now).unwrap();
            let h = shared.header();
            let i = shared.active_lanes().next().unwrap();
            let c = &h.lanes[i].consumer.0;
            let head = c.head.load(Relaxed);
            let word =
                u64::from_le(unsafe { (shared.ring(i) as *const u64).add((pos(head) % LANE_CAP) as usize / 8).read() });
            assert_eq!((word >> 32) as u32, BLOCK, "put_batch writes a block");
            let len = (word & 0xffff_ffff) as usize;
            c.lock.store(owner_word(200, 1, 1), Release);
            let moved = match taken {
                10 => advance_by(head, record_len(len), 10),
                k => advance_by(head, 0, k),
            };
            c.head.store(moved, Release);
            assert_eq!(shared.len(), 15 - taken as usize, "step {step}");
            assert_eq!(take_all(&shared), (taken..15).collect::<Vec<_>>(), "step {step}");
            assert_eq!(shared.len(), 0);
        }
    }

    /// Single takes, runs shorter than a block, and runs across blocks, over many passes of the
    /// ring (so that blocks lie across its end): every item once, in order, and the producer
    /// gets the space back.
    #[test]
    fn blocks_taken_one_by_one_and_in_runs_of_any_length_give_every_item_once_in_order() {
        let shared = Shared::create(0, 0).unwrap();
        let (mut next_put, mut next_get) = (0u64, 0u64);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let stopped = std::cell::Cell::new(false);
        while next_get < 1_000_000 {
            if shared.len() < 50_000 {
                let n = 1 + rand(3000);
                shared.put_batch(&batch_of(next_put..next_put + n), Wait::Now).unwrap();
                next_put += n;
            }
            let mut check = |b: &[u8]| {
                assert_eq!(u64::from_le_bytes(b.try_into().unwrap()), next_get);
                next_get += 1;
            };
            match rand(3) {
                0 => {
                    for _ in 0..rand(20).min(shared.len() as u64) {
                        shared.take(Wait::Now, &mut check).unwrap();
                    }
                }
                _ => {
                    let i = shared.active_lanes().next().unwrap();
                    let c = &shared.header().lanes[i].consumer.0;
                    c.lock.store(shared.owner(attach::thread_tag()), Release);
                    shared.take_run(i, 1 + rand(5000) as usize, &mut check, &stopped, None);
                    c.lock.store(0, Release);
                }
            }
        }
        assert_eq!(shared.len() as u64, next_put - next_get);
    }

    /// A block record that lies (more items than its bytes, a head past its items) is a
    /// corrupt lane: `BadFrame`, nothing read out of bounds, and it stays for every take.
    #[test]
    fn a_block_record_that_lies_is_a_corrupt_lane_not_a_crash() {
        for lie in 0..3 {
            let shared = Shared::create(0, 0).unwrap();
            shared.put_batch(&batch_of(0..4), Wait::Now).unwrap();
            let i = shared.active_lanes().next().unwrap();
            let c = &shared.header().lanes[i].consumer.0;
            let at = pos(c.head.load(Relaxed)) + RECORD_HEADER;
            let ring = shared.ring(i);
            // SAFETY (test): the block's header, inside the ring; nothing reads it meanwhile.
            let header = unsafe { std::slice::from_raw_parts_mut(ring.add(at as usize), 16) };
            match lie {
                0 => header[..4].copy_from_slice(&1000u32.to_le_bytes()),
                1 => header[4..8].copy_from_slice(&3u32.to_le_bytes()), // a size the bytes do not match
                _ => header[8..12].copy_from_slice(&77u32.to_le_bytes()), // the head is not in it
            }
            for _ in 0..2 {
                let e = shared.take(Wait::Now, |_| panic!("nothing is read")).unwrap_err();
                assert!(matches!(&e, Error::BadFrame { reason } if reason.contains("corrupt")), "lie {lie}: {e}");
            }
            let mut read = |_: &[u8]| -> bool { panic!("nothing is read") };
            assert!(shared.take_many_now(10, &mut read).is_err(), "lie {lie}");
        }
    }

    /// A producer dies at each step of putting a block: records written past the tail and not
    /// published are never seen, and the lane's next put writes over them; published, all are.
    #[test]
    fn a_producer_killed_while_it_writes_a_block_shows_none_of_it_or_all() {
        for step in 0..2 {
            let shared = Shared::create(0, 0).unwrap();
            shared.put_bytes(&0u64.to_le_bytes(), Wait::Now).unwrap();
            let h = shared.header();
            let i = shared.active_lanes().next().unwrap();
            let meta = &h.lanes[i].producer.0;
            let before = meta.tail.load(Relaxed);
            // the block's records, as `put_block` writes them
            let mut tail = before;
            for x in 100..105u64 {
                shared.write_record(i, pos(tail), INLINE, &x.to_le_bytes());
                tail = advance(tail, record_len(8));
            }
            if step == 1 {
                meta.tail.store(tail, Release); // it published the block, then died
            }
            assert_eq!(shared.len(), if step == 1 { 6 } else { 1 }, "step {step}");
            shared.put_bytes(&7u64.to_le_bytes(), Wait::Now).unwrap();
            let mut got = Vec::new();
            while shared.take(Wait::Now, |b| got.push(u64::from_le_bytes(b.try_into().unwrap()))).is_ok() {}
            let want: Vec<u64> = match step {
                0 => vec![0, 7],
                _ => vec![0, 100, 101, 102, 103, 104, 7],
            };
            assert_eq!(got, want, "step {step}");
        }
    }

    /// A producer dies at each step of putting blocks: a block written past the tail and not
    /// published is never seen, and the lane's next put writes over it; published, all of it is.
    #[test]
    fn a_producer_killed_while_it_writes_a_block_record_shows_none_of_it_or_all() {
        for step in 0..2 {
            let shared = Shared::create(0, 0).unwrap();
            shared.put_bytes(&0u64.to_le_bytes(), Wait::Now).unwrap();
            let i = shared.active_lanes().next().unwrap();
            let tail = &shared.header().lanes[i].producer.0.tail;
            let before = tail.load(Relaxed);
            // the block record, as `put_blocks` writes it
            let batch = batch_of(100..105);
            let (n, body) = batch.fit(0, 1 << 16);
            shared.write_ring(i, pos(before), &((body as u64) | ((BLOCK as u64) << 32)).to_le_bytes());
            let mut at = pos(before) + RECORD_HEADER;
            batch.write_block(0, n, count(before), |piece| {
                shared.write_ring(i, at, piece);
                at += piece.len() as u64;
            });
            if step == 1 {
                tail.store(advance_by(before, record_len(body), n as u64), Release);
                // published, then died
            }
            assert_eq!(shared.len(), if step == 1 { 6 } else { 1 }, "step {step}");
            shared.put_bytes(&7u64.to_le_bytes(), Wait::Now).unwrap();
            let want: Vec<u64> = match step {
                0 => vec![0, 7],
                _ => vec![0, 100, 101, 102, 103, 104, 7],
            };
            assert_eq!(take_all(&shared), want, "step {step}");
        }
    }

    /// A consumer dies at each step of taking a large item: the next one gets the item whole if
    /// the head had not moved, the item after it if it had, and the memory is freed either way.
    #[test]
    fn a_consumer_killed_at_any_step_of_taking_a_large_item_leaves_it_whole_or_taken_and_freed() {
        let first = vec![1u8; 200_000];
        let second = vec![2u8; 200_000];
        // 0: holds the lock; 1: noted the item to free; 2: moved the head; 3: freed it too
        for step in 0..4 {
            let shared = Shared::create(0, 0).unwrap();
            let empty = in_use(&shared);
            shared.put_bytes(&first, Wait::Now).unwrap();
            shared.put_bytes(&second, Wait::Now).unwrap();
            let h = shared.header();
            let i = shared
                .active_lanes()
                .find(|&i| {
                    items_between(h.lanes[i].consumer.0.head.load(Relaxed), h.lanes[i].producer.0.tail.load(Relaxed))
                        > 0
                })
                .unwrap();
            let c = &h.lanes[i].consumer.0;
            // a dead participant's owner word: slot 200 is not in use
            c.lock.store(owner_word(200, 1, 1), Release);
            let head = c.head.load(Relaxed);
            let mut body = [0u8; 16];
            shared.read_ring(i, pos(head) + RECORD_HEADER, &mut body);
            let offset = u64::from_le_bytes(body[..8].try_into().unwrap());
            if step >= 1 {
                c.punch_head.store(head, Relaxed);
                c.punch_at.store(offset, Relaxed);
                c.punch_len.store(200_704, Release);
            }
            if step >= 2 {
                c.head.store(advance(head, record_len(16)), Release);
            }
            if step >= 3 {
                shm::punch_hole(shared.fd_ref(), BLOBS_AT + offset, 200_704);
            }
            let mut got = Vec::new();
            shared.take(Wait::Now, |b| got = b.to_vec()).unwrap();
            let want = if step >= 2 { &second } else { &first };
            assert_eq!(got[..], want[..], "step {step}: the wrong item, or a corrupt one");
            if step < 2 {
                shared.take(Wait::Now, |b| got = b.to_vec()).unwrap();
                assert_eq!(got[..], second[..]);
            }
            assert!(in_use(&shared) < empty + 64 * 1024, "step {step}: {} bytes left in use", in_use(&shared) - empty);
            assert_eq!(c.lock.load(Relaxed), 0);
        }
    }
}
