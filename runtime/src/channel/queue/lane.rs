//! Putting and taking, lane by lane.
//!
//! **Producers.** Each producing thread has a lane of its own (a ring in shared memory): it
//! writes an item's record past the lane's tail, then publishes it by storing the new tail,
//! one word. No atomic read-modify-write on the way, so a stream of puts is not slowed by the
//! other core's reads. A producer killed at any instant has either published an item whole or
//! not at all; its lane is taken over by the next thread that needs one, when its process is
//! found dead. With more producing threads than lanes, the rest share one lane under a lock.
//!
//! **Consumers.** Any consumer takes from any lane, holding the lane's lock (an owner word)
//! while it reads one item and moves the head. One killed before it moved the head leaves the
//! item in place for the next; one killed after took it with it (the item is lost: it was being
//! taken). A lock whose holder is dead is taken over. Consumers tell the producer about freed
//! space now and then (every eighth of the ring, when the lane runs empty, or when asked).
//!
//! **Waiting.** A blocked `get` or `put` sleeps on a futex, registered as a sleeper; a side that
//! changes something wakes the other only when sleepers are registered, with one load on the
//! way when none is. Registering is a locked instruction and publishing is not, so a waker may
//! miss a registration by the time its store takes to become visible: the first sleep after
//! registering lasts at most a millisecond, after which any such store is visible, and later
//! sleeps are untimed.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::pipe::Wait;
use crate::channel::queue::attach::{self, Shared};
use crate::channel::queue::layout::*;
use crate::error::{Error, Result};
use crate::sys::shm;

/// How long a waker may take to see a registration (see the module docs).
const FIRST_SLEEP: Duration = Duration::from_millis(1);
/// How long a lock may be seen held, with work waiting behind it, before its holder is
/// checked for being alive.
const SUSPECT_AFTER: Duration = Duration::from_millis(2);
/// How long a `get` on an empty queue (or a `put` short of room) looks again before it sleeps:
/// when producer and consumer run neck and neck, the next item comes within microseconds, and
/// sleeping would make every `put` pay for a wake-up. It yields between looks, so that with more
/// processes than cores the ones it waits for get the CPU (measured, 4 producers x 4 consumers on
/// 2 cores: 4-6 M msgs/s spinning, 18-26 M yielding; 1 x 1 the same, 37-38 M). Bounded, so a
/// queue that stays empty costs nothing.
const SPIN: Duration = Duration::from_micros(20);
/// Wake-ups in a row that woke nobody before the registrations of dead processes are swept.
const FUTILE_WAKES: u32 = 64;

impl Shared {
    /// Refuses work on a queue closed here, or shut down.
    fn check_open(&self, putting: bool) -> Result<()> {
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
                items_between(lane.consumer.0.head.load(Acquire), lane.producer.0.tail.load(Acquire)) as usize
            })
            .sum()
    }

    /// The lanes ever given to a producer.
    fn active_lanes(&self) -> impl Iterator<Item = usize> + '_ {
        let h = self.header();
        (0..LANES).filter(move |i| h.active.0[i / 64].load(Acquire) & (1 << (i % 64)) != 0)
    }

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
                drop(guard);
                return r;
            }
            drop(guard);
            if !sleeper.sleep(seq, wait, None) {
                return Err(Error::Full { maxsize: Some(h.maxsize as usize), waited: wait.timeout() });
            }
        }
    }

    /// The lane this thread puts into: its own (`true`), or the shared one.
    fn my_lane(self: &Arc<Self>) -> Result<(usize, bool)> {
        if let Some((lane, owner)) = attach::held_lane(self) {
            if self.header().lanes[lane].producer.0.owner.load(Relaxed) == owner {
                return Ok((lane, true));
            }
            attach::drop_lane(self); // taken back (this process was thought dead?)
        }
        let h = self.header();
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
    fn put_in_shared_lane(self: &Arc<Self>, bytes: &[u8], wait: Wait) -> Result<()> {
        let lock = &self.header().lanes[SHARED_LANE].producer.0.lock;
        let me = self.owner(attach::thread_tag());
        acquire(self, lock, me);
        let r = self.put_in_lane(SHARED_LANE, bytes, wait, false);
        lock.store(0, Release);
        r
    }

    /// Writes one item's record into `lane` (which this thread may write alone now), waiting
    /// for room, and publishes it.
    fn put_in_lane(self: &Arc<Self>, lane: usize, bytes: &[u8], wait: Wait, count_it: bool) -> Result<()> {
        let h = self.header();
        let meta = &h.lanes[lane];
        let blob = bytes.len() > INLINE_MAX;
        let len = if blob { 16 } else { bytes.len() };
        let need = record_len(len);
        let tail = meta.producer.0.tail.load(Relaxed);
        self.wait_for_room(lane, pos(tail), need, wait)?;
        if blob {
            let offset = self.store_blob(bytes)?;
            let mut body = [0u8; 16];
            body[..8].copy_from_slice(&offset.to_le_bytes());
            body[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            self.write_record(lane, pos(tail), BLOB, &body);
        } else {
            self.write_record(lane, pos(tail), INLINE, bytes);
        }
        let new_tail = advance(tail, need);
        if count_it {
            // A JoinableQueue counts the item before it is visible (so a task_done for it never
            // finds it uncounted); `pending` lets the lock's next holder put the count right if
            // this process dies in between.
            let counts = &h.counts.0;
            let put = counts.put.load(Relaxed);
            counts.pending_tail.store(tail, Relaxed);
            counts.pending_put.store(put, Relaxed);
            counts.pending_lane.store(lane as u64 + 1, Release);
            counts.put.store(put + 1, Release);
            meta.producer.0.tail.store(new_tail, Release);
            counts.pending_lane.store(0, Release);
        } else {
            meta.producer.0.tail.store(new_tail, Release);
        }
        self.wake(Sleep::Items, false);
        Ok(())
    }

    /// Writes a record (header, then `body`) at byte position `at` of lane `lane`'s ring. A
    /// small one is assembled here and stored a word at a time; a larger one is copied.
    #[inline]
    fn write_record(&self, lane: usize, at: u64, kind: u32, body: &[u8]) {
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
    fn write_ring(&self, lane: usize, at: u64, bytes: &[u8]) {
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

    /// Copies `len` bytes out of lane `lane`'s ring from byte position `at`.
    fn read_ring(&self, lane: usize, at: u64, out: &mut [u8]) {
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

    /// Stores an item too large for a ring in the blob area; returns its offset there.
    fn store_blob(&self, bytes: &[u8]) -> Result<u64> {
        let len = (bytes.len() as u64).next_multiple_of(4096);
        let offset = self.header().blob_end.0.fetch_add(len, AcqRel);
        shm::write_at(self.fd_ref(), bytes, BLOBS_AT + offset).map_err(|e| {
            Error::io("could not store a large item in the queue's memory (is /dev/shm or memory full?)", e)
        })?;
        Ok(offset)
    }

    fn fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Waits until `need` bytes from `at` are free in `lane`.
    fn wait_for_room(&self, lane: usize, at: u64, need: u64, wait: Wait) -> Result<()> {
        let h = self.header();
        let released = &h.lanes[lane].released.0;
        let seen = &self.released_seen[lane];
        let fits = |r: u64| bytes_between(r, at) + need <= LANE_CAP;
        if fits(seen.load(Relaxed)) {
            return Ok(());
        }
        let mut sleeper = Sleeper::new(self, Sleep::Space);
        let mut spin_until: Option<Instant> = None;
        loop {
            let seq = h.space.0.seq.load(Acquire);
            let r = released.pos.load(Acquire);
            seen.store(r, Relaxed);
            if fits(r) {
                return Ok(());
            }
            if !matches!(wait, Wait::Now) && !sleeper.registered {
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
            if !sleeper.sleep(seq, wait, (held != 0).then_some(SUSPECT_AFTER)) {
                return Err(Error::Full { maxsize: None, waited: wait.timeout() });
            }
            let holder = lock.load(Acquire);
            if holder != 0
                && holder == held
                && !self.alive(holder)
                && lock.compare_exchange(holder, 0, AcqRel, Relaxed).is_ok()
            {
                let head = h.lanes[lane].consumer.0.head.load(Acquire);
                released.pos.store(pos(head), Release);
            }
        }
    }

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
    fn try_take(&self, read: &mut impl FnMut(&[u8]), held_elsewhere: &mut bool) -> Result<bool> {
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
    fn try_lane(&self, i: usize, me: u64, read: &mut impl FnMut(&[u8]), held_elsewhere: &mut bool) -> Result<bool> {
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
    fn take_from(&self, i: usize, read: &mut impl FnMut(&[u8])) -> Result<bool> {
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

    /// Lane `i`'s tail as far as this process needs to know: the last one read, unless that
    /// shows no item past `head`, in which case it is read again.
    #[inline]
    fn tail(&self, i: usize, lane: &Lane) -> u64 {
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
    fn take_back_dead_locks(&self) {
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

    /// Locks the producers' mutex; a holder that died is finished for (see `put_in_lane`).
    fn lock_producers(&self) -> Result<ProducersGuard<'_>> {
        let mutex = &self.header().producers.0;
        match mutex.lock(None) {
            Ok(crate::sys::robust::Locked::OwnerDied) => self.finish_dead_put(),
            Ok(_) => {}
            Err(e) => return Err(Error::io("could not lock a queue", e)),
        }
        Ok(ProducersGuard { mutex })
    }

    /// Puts the count of items put right after a producer died in the middle of a put.
    fn finish_dead_put(&self) {
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
    fn repair_dead_put(&self) {
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

    /// Shuts the queue down for every process (Python 3.13's `shutdown`).
    pub(crate) fn shutdown(self: &Arc<Self>, immediate: bool) {
        let h = self.header();
        let state = if immediate { SHUTDOWN_NOW } else { SHUTDOWN };
        h.shutdown.0.fetch_max(state, AcqRel);
        if immediate {
            // Drain: every item goes, counted done, so that joiners are released.
            let mut held = false;
            let counts = &h.counts.0;
            while let Ok(true) = self.try_take(&mut |_| (), &mut held) {
                if h.flags & JOINABLE != 0 {
                    counts.done.fetch_add(1, AcqRel);
                }
            }
        }
        for kind in [Sleep::Items, Sleep::Space, Sleep::Done] {
            self.wake(kind, true);
        }
        shm::ring(self.doorbell_ref());
    }
}

/// How soon a joiner looks again while a put is under way (it may be a dead producer's).
const PUT_UNDER_WAY: Duration = Duration::from_millis(20);

/// Holds the producers' mutex.
struct ProducersGuard<'a> {
    mutex: &'a crate::sys::robust::RobustMutex,
}

impl Drop for ProducersGuard<'_> {
    fn drop(&mut self) {
        self.mutex.unlock(); // this thread locked it (see lock_producers)
    }
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

fn waiters(h: &Header, kind: Sleep) -> &Waiters {
    match kind {
        Sleep::Items => &h.items.0,
        Sleep::Space => &h.space.0,
        Sleep::Done => &h.done.0,
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

/// A thread's registration as a sleeper of one kind, for one call (see the module docs).
struct Sleeper<'a> {
    shared: &'a Shared,
    kind: Sleep,
    registered: bool,
    slept: u32,
}

impl<'a> Sleeper<'a> {
    fn new(shared: &'a Shared, kind: Sleep) -> Self {
        Sleeper { shared, kind, registered: false, slept: 0 }
    }

    /// Waits for the futex to move on from `seq`: the first call only registers (the caller
    /// then looks again), the next sleeps at most a millisecond, later ones until woken or the
    /// wait's end (at most `cap`). `false` when the wait has run out.
    fn sleep(&mut self, seq: u32, wait: Wait, cap: Option<Duration>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
