//! The put path: a producing thread's lane, writing an item's record, waiting for room.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::Instant;

use crate::channel::pipe::Wait;
use crate::channel::queue::attach::{self, Shared};
use crate::channel::queue::block::Batch;
use crate::channel::queue::layout::*;
use crate::error::{Error, Result};
use crate::sys::shm;

use crate::channel::queue::lane::{SPIN, SUSPECT_AFTER};
use crate::channel::queue::sleep::Sleeper;

impl Shared {
    /// Puts one encoded item, waiting as `wait` allows for room.
    pub(crate) fn put_bytes(self: &Arc<Self>, bytes: &[u8], wait: Wait) -> Result<()> {
        self.check_open(true)?;
        let h = self.header();
        if !h.takes_turns() {
            let (lane, exclusive) = self.my_lane()?;
            return match exclusive {
                true => self.put_in_lane(lane, bytes, wait, false),
                false => self.put_in_shared_lane(bytes, wait),
            };
        }
        // Bounded or joinable: producers take turns, so that the bound is exact and the count
        // of items put follows the items.
        let mut sleeper = Sleeper::new(self, Sleep::Space);
        loop {
            let seq = h.space.0.seq.load(Acquire);
            let guard = self.lock_producers()?;
            self.check_open(true)?;
            if h.maxsize == 0 || (self.len() as u64) < h.maxsize {
                let (lane, _) = self.my_lane()?; // the lock serializes the shared lane too
                let r = self.put_in_lane(lane, bytes, wait, h.flags & JOINABLE != 0);
                if r.is_ok() && lane == SHARED_LANE {
                    self.note_shared_put();
                }
                drop(guard);
                return r;
            }
            drop(guard);
            if !sleeper.sleep(seq, wait, None) {
                return Err(Error::Full { maxsize: Some(h.maxsize as usize), waited: wait.timeout() });
            }
        }
    }

    /// Puts the items of `batch`, in order. In a lane of its own, with room in its ring, as
    /// many as fit go there at once, as block records (see `block.rs`) published with one
    /// store of the tail (a producer killed before it published none, after it all); an item
    /// for the blob area, one waiting for room, and every item of a bounded or joinable queue,
    /// go one at a time, and the blocks resume after it.
    pub(crate) fn put_batch(self: &Arc<Self>, batch: &Batch, wait: Wait) -> Result<()> {
        self.check_open(true)?;
        let blocks = !self.header().takes_turns();
        let mut k = 0;
        while k < batch.len() {
            if blocks {
                let (lane, exclusive) = self.my_lane()?;
                if exclusive && !self.producer_spilling(lane) {
                    k += self.put_blocks(lane, batch, k);
                    if k == batch.len() {
                        break;
                    }
                }
            }
            self.put_bytes(batch.item(k), wait)?;
            k += 1;
        }
        Ok(())
    }

    /// Writes the items of `batch` from `from` that the ring of `lane` has room for now, as
    /// blocks (up to a large item), and publishes them at once. Returns how many.
    fn put_blocks(&self, lane: usize, batch: &Batch, from: usize) -> usize {
        let meta = &self.header().lanes[lane];
        let before = meta.producer.0.tail.load(Relaxed);
        let mut room = LANE_CAP - bytes_between(self.released_seen[lane].load(Relaxed), pos(before));
        let (mut k, mut written) = (from, 0u64);
        while k < batch.len() && room > RECORD_HEADER {
            let (n, body) = batch.fit(k, (room - RECORD_HEADER) as usize);
            if n == 0 {
                break;
            }
            let at = pos(before) + written;
            let len = record_len(body);
            let header = (body as u64) | ((BLOCK as u64) << 32);
            self.write_ring(lane, at, &header.to_le_bytes());
            let mut piece_at = at + RECORD_HEADER;
            batch.write_block(k, n, count(before) + (k - from) as u64, |piece| {
                self.write_ring(lane, piece_at, piece);
                piece_at += piece.len() as u64;
            });
            (k, written, room) = (k + n, written + len, room - len);
        }
        if k > from {
            self.publish(lane, &meta.producer.0.tail, before, advance_by(before, written, (k - from) as u64), false);
        }
        k - from
    }

    /// The lane this thread puts into: its own (`true`), or the shared one.
    pub(super) fn my_lane(self: &Arc<Self>) -> Result<(usize, bool)> {
        if let Some((lane, owner)) = attach::held_lane(self) {
            if self.header().lanes[lane].producer.0.owner.load(Relaxed) == owner {
                return Ok((lane, true));
            }
            attach::drop_lane(self); // taken back (this process was thought dead?)
        }
        let h = self.header();
        // A thread whose items wait in the shared lane stays there until they are taken: in a
        // lane of its own, its next items could be taken first.
        let shared = &h.lanes[SHARED_LANE];
        let spill = self.spill_side(SHARED_LANE);
        let taken = |ring_tail: u64, spill_tail: u64| {
            !is_ahead(shared.consumer.0.head.load(Acquire), ring_tail)
                && !spill_is_ahead(spill.head.load(Acquire), spill_tail)
        };
        if !attach::may_leave_shared_lane(self, taken) {
            return Ok((SHARED_LANE, false));
        }
        let owner = self.owner(attach::thread_tag());
        let take = |i: usize, expected: u64| {
            let ok = h.lanes[i].producer.0.owner.compare_exchange(expected, owner, AcqRel, Relaxed).is_ok();
            if ok {
                h.active.0[i / 64].fetch_or(1 << (i % 64), AcqRel);
                attach::hold_lane(self, i, owner);
            }
            ok
        };
        for i in 0..PRIVATE_LANES {
            if h.lanes[i].producer.0.owner.load(Relaxed) == 0 && take(i, 0) {
                return Ok((i, true));
            }
        }
        // every lane is held: take one whose holder died, else share
        for i in 0..PRIVATE_LANES {
            let holder = h.lanes[i].producer.0.owner.load(Acquire);
            if holder != 0 && !self.alive(holder) && take(i, holder) {
                return Ok((i, true));
            }
        }
        h.active.0[SHARED_LANE / 64].fetch_or(1 << (SHARED_LANE % 64), AcqRel);
        Ok((SHARED_LANE, false))
    }

    /// Puts into the shared lane, under its lock.
    pub(super) fn put_in_shared_lane(self: &Arc<Self>, bytes: &[u8], wait: Wait) -> Result<()> {
        let lock = &self.header().lanes[SHARED_LANE].producer.0.lock;
        let me = self.owner(attach::thread_tag());
        acquire(self, lock, me);
        let r = self.put_in_lane(SHARED_LANE, bytes, wait, false);
        if r.is_ok() {
            self.note_shared_put();
        }
        lock.store(0, Release);
        r
    }

    /// Notes where this thread's item just put in the shared lane ends (see `my_lane`).
    fn note_shared_put(&self) {
        let ring_tail = self.header().lanes[SHARED_LANE].producer.0.tail.load(Relaxed);
        attach::note_shared_put(self, ring_tail, self.spill_side(SHARED_LANE).tail.load(Relaxed));
    }

    /// Writes one item's record into `lane` (which this thread may write alone now), and
    /// publishes it: in the lane's ring, waiting a little for room there, else in its spill.
    pub(super) fn put_in_lane(self: &Arc<Self>, lane: usize, bytes: &[u8], wait: Wait, count_it: bool) -> Result<()> {
        let h = self.header();
        let meta = &h.lanes[lane];
        // while the spill holds items, the lane's items go after them, to keep it in order
        if self.producer_spilling(lane) {
            return self.put_spilled(lane, bytes, count_it);
        }
        let blob = bytes.len() > INLINE_MAX;
        let len = if blob { 16 } else { bytes.len() };
        let need = record_len(len);
        let tail = meta.producer.0.tail.load(Relaxed);
        // room as last told (the common case, checked here), else wait for room or spill
        let room = bytes_between(self.released_seen[lane].load(Relaxed), pos(tail)) + need <= LANE_CAP;
        if !room && !self.wait_for_room(lane, pos(tail), need, wait)? {
            return self.put_spilled(lane, bytes, count_it);
        }
        self.write_item(lane, pos(tail), bytes, blob)?;
        self.publish(lane, &meta.producer.0.tail, tail, advance(tail, need), count_it);
        Ok(())
    }

    /// Writes an item's record at byte position `at` of `lane`'s ring: the bytes themselves, or
    /// for a large item (`blob`), where they are stored apart.
    #[inline(always)]
    fn write_item(&self, lane: usize, at: u64, bytes: &[u8], blob: bool) -> Result<()> {
        if !blob {
            self.write_record(lane, at, INLINE, bytes);
            return Ok(());
        }
        let offset = self.store_blob(bytes)?;
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&offset.to_le_bytes());
        body[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.write_record(lane, at, BLOB, &body);
        Ok(())
    }

    /// Puts one item into `lane`'s spill and publishes it.
    #[cold]
    fn put_spilled(&self, lane: usize, bytes: &[u8], count_it: bool) -> Result<()> {
        let spill_tail = &self.spill_side(lane).tail;
        let before = spill_tail.load(Relaxed);
        let after = self.write_spilled(lane, bytes)?;
        self.publish(lane, spill_tail, before, after, count_it);
        Ok(())
    }

    /// Publishes an item written past `before`: stores `after` in `tail` (the ring's or the
    /// spill's), and wakes a consumer.
    #[inline]
    fn publish(&self, lane: usize, tail: &AtomicU64, before: u64, after: u64, count_it: bool) {
        if count_it {
            // A JoinableQueue counts the item before it is visible (so a task_done for it never
            // finds it uncounted); `pending` lets the lock's next holder put the count right if
            // this process dies in between.
            let counts = &self.header().counts.0;
            let spill = std::ptr::eq(tail, &self.spill_side(lane).tail);
            let put = counts.put.load(Relaxed);
            counts.pending_tail.store(before, Relaxed);
            counts.pending_put.store(put, Relaxed);
            counts.pending_lane.store(pending_lane(lane, spill), Release);
            counts.put.store(put + 1, Release);
            tail.store(after, Release);
            counts.pending_lane.store(0, Release);
        } else {
            tail.store(after, Release);
        }
        self.wake(Sleep::Items, false);
    }

    /// Writes a record (header, then `body`) at byte position `at` of lane `lane`'s ring. A
    /// small one is assembled here and stored a word at a time; a larger one is copied.
    #[inline]
    pub(super) fn write_record(&self, lane: usize, at: u64, kind: u32, body: &[u8]) {
        const SMALL: usize = 56;
        let header = (body.len() as u64) | ((kind as u64) << 32);
        if body.len() <= SMALL {
            let mut words = [0u64; (SMALL + 8) / 8];
            words[0] = header.to_le();
            // SAFETY: `words` has room for 8 + SMALL bytes; `body` is at most SMALL long.
            unsafe {
                std::ptr::copy_nonoverlapping(body.as_ptr(), (words.as_mut_ptr() as *mut u8).add(8), body.len());
            }
            let n = (8 + body.len()).div_ceil(8);
            let ring = self.ring(lane) as *mut u64;
            for (k, word) in words.iter().take(n).enumerate() {
                let at = ((at + 8 * k as u64) % LANE_CAP) as usize / 8;
                // SAFETY: as in `write_ring`: the record's `record_len` bytes past the tail are
                // this producer's alone; positions are multiples of 8, so each word is aligned
                // and inside the ring.
                unsafe { ring.add(at).write(*word) };
            }
            return;
        }
        self.write_ring(lane, at, &header.to_le_bytes());
        self.write_ring(lane, at + RECORD_HEADER, body);
    }

    /// Copies `bytes` into lane `lane`'s ring at byte position `at`, wrapping at its end.
    pub(super) fn write_ring(&self, lane: usize, at: u64, bytes: &[u8]) {
        let start = (at % LANE_CAP) as usize;
        let first = bytes.len().min(LANE_CAP as usize - start);
        let ring = self.ring(lane);
        // SAFETY: `[at, at + bytes.len())` lies past the lane's tail and before the space the
        // consumers have not released (checked by `wait_for_room`): no consumer reads it, and
        // only this thread writes it. Both copies stay inside the ring's LANE_CAP bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.add(start), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), ring, bytes.len() - first);
        }
    }

    /// Stores an item too large for a ring in the blob area; returns its offset there.
    pub(super) fn store_blob(&self, bytes: &[u8]) -> Result<u64> {
        let len = (bytes.len() as u64).next_multiple_of(4096);
        let offset = self.header().blob_end.0.fetch_add(len, AcqRel);
        if BLOBS_AT + offset + len > SPILL_AT {
            // 64 TiB of large items put over the queue's life: the area's addresses are spent
            let e = std::io::Error::other("a queue's area for large items is used up: make a new queue");
            return Err(Error::io("could not store a large item", e));
        }
        shm::write_at(self.fd_ref(), bytes, BLOBS_AT + offset).map_err(|e| {
            Error::io("could not store a large item in the queue's memory (is /dev/shm or memory full?)", e)
        })?;
        Ok(offset)
    }

    /// Waits until `need` bytes from `at` are free in `lane`'s ring (`true`), or says to spill
    /// (`false`): at once for a `put_nowait`, else after [`SPILL_AFTER`] or the end of the
    /// wait, whichever comes first. A live consumer frees room within microseconds, so a
    /// producer only a little ahead of its consumers keeps to the ring.
    #[inline(never)]
    pub(super) fn wait_for_room(&self, lane: usize, at: u64, need: u64, wait: Wait) -> Result<bool> {
        let h = self.header();
        let released = &h.lanes[lane].released.0;
        let seen = &self.released_seen[lane];
        let fits = |r: u64| bytes_between(r, at) + need <= LANE_CAP;
        if fits(seen.load(Relaxed)) {
            return Ok(true);
        }
        let patience = match wait {
            Wait::Now => Wait::Now,
            Wait::For(t, deadline) if t < SPILL_AFTER => Wait::For(t, deadline),
            _ => Wait::at_most(SPILL_AFTER),
        };
        let mut sleeper = Sleeper::new(self, Sleep::Space);
        let mut spin_until: Option<Instant> = None;
        loop {
            let seq = h.space.0.seq.load(Acquire);
            let r = released.pos.load(Acquire);
            seen.store(r, Relaxed);
            if fits(r) {
                return Ok(true);
            }
            if !matches!(patience, Wait::Now) && !sleeper.registered {
                let until = *spin_until.get_or_insert_with(|| Instant::now() + SPIN);
                if Instant::now() < until {
                    std::thread::yield_now();
                    continue;
                }
            }
            released.wanted.store(1, Release);
            if self.header().shutdown.0.load(Acquire) != 0 {
                return Err(Error::ShutDown);
            }
            // While a consumer holds the lane, it is taking an item (a matter of microseconds)
            // or it died doing so: look again soon, to take its lock back if it is dead.
            let lock = &h.lanes[lane].consumer.0.lock;
            let held = lock.load(Acquire);
            if !sleeper.sleep(seq, patience, (held != 0).then_some(SUSPECT_AFTER)) {
                return Ok(false);
            }
            let holder = lock.load(Acquire);
            if holder != 0 && holder == held && !self.alive(holder) {
                self.take_over_consumer_lock(lane, holder);
            }
        }
    }
}

/// How long a producer whose ring is full waits for room before it spills.
const SPILL_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// A put under way's lane, as `Counts::pending_lane` holds it: `lane + 1`, and whether the item
/// goes to the spill in bit 32.
pub(super) fn pending_lane(lane: usize, spill: bool) -> u64 {
    (lane as u64 + 1) | (spill as u64) << 32
}

/// Takes a lock word (the shared lane's), taking it over from a dead holder.
fn acquire(shared: &Shared, lock: &std::sync::atomic::AtomicU64, me: u64) {
    let mut since: Option<Instant> = None;
    loop {
        match lock.compare_exchange(0, me, Acquire, Relaxed) {
            Ok(_) => return,
            Err(holder) => {
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SUSPECT_AFTER && !shared.alive(holder) {
                    let _ = lock.compare_exchange(holder, 0, AcqRel, Relaxed);
                }
                std::thread::yield_now();
            }
        }
    }
}
