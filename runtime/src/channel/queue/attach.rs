//! A queue as one process sees it: its memory mapped once, however many handles of it the
//! process holds or receives, and this process's place among the queue's participants.
//!
//! **Who is alive.** Each process that uses a queue takes a participant slot, and holds a lock
//! on the slot's byte of the queue's memfd through an open file description of its own. The
//! kernel drops that lock when the process dies, however it dies, so "is participant `p` alive"
//! is one `fcntl` away, with no pid that could be reused. Lanes and locks name their holder by
//! slot and generation: a holder found dead is replaced, and what it held is taken back.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, Weak};

use crate::channel::queue::layout::*;
use crate::error::{Error, Result};
use crate::sys::shm::{self, ByIdentity, Mapping};

/// A queue's memory, mapped in this process.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) fd: OwnedFd,
    /// Rung for threads in `multiproc::wait` when an item comes.
    pub(crate) doorbell: OwnedFd,
    map: Mapping,
    identity: (u64, u64),
    /// This process's participant slot, its generation, and the description holding its lock.
    pub(crate) me: u32,
    pub(crate) generation: u32,
    private: OwnedFd,
    /// `close()` was called in this process.
    pub(crate) closed: AtomicBool,
    /// Lanes this process's threads hold, to give back when the last handle goes.
    bound: Mutex<Vec<(usize, u64)>>,
    /// Per lane, what a producer here last knew of the space freed.
    pub(crate) released_seen: [AtomicU64; LANES],
    /// Per lane, what a consumer here last read of the tail: more items than that are taken
    /// without reading the producer's cache line again.
    pub(crate) tail_seen: [AtomicU64; LANES],
    /// Per lane, a spill tail a producer here saw the spill's head reach: the spill was empty.
    pub(crate) spill_drained_seen: [AtomicU64; LANES],
    /// Wake-ups in a row from this process that woke nobody.
    pub(crate) futile_wakes: std::sync::atomic::AtomicU32,
    /// A joinable queue's takes in this process, one at a time, so that a process killed in
    /// one leaves at most one take to count (see `ConsumerSide::take_owner`).
    pub(crate) take_turn: Mutex<()>,
    /// Per participant slot, the tasks lost with its processes that a `join` here reported (or
    /// that were lost before this process came).
    pub(crate) reported_lost: Mutex<Vec<u64>>,
    /// The decode error of an item a `get_many` here took after others: the next take here
    /// returns it.
    pub(crate) deferred: Mutex<Option<Error>>,
    pub(crate) has_deferred: AtomicBool,
}

/// Every queue mapped in this process, by the identity of its memfd: a handle received again
/// and again maps nothing new.
fn registry() -> &'static ByIdentity<Shared> {
    static REGISTRY: std::sync::OnceLock<ByIdentity<Shared>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(ByIdentity::new)
}

impl Shared {
    /// Makes a new queue's memory.
    pub(crate) fn create(maxsize: usize, flags: u32) -> Result<Arc<Shared>> {
        let io = |e| Error::io("could not create a queue's shared memory", e);
        let fd = shm::memfd("multiproc-queue", MAPPED).map_err(io)?;
        let map = Mapping::new(fd.as_fd(), MAPPED as usize).map_err(io)?;
        // SAFETY: the mapping is MAPPED bytes of zeros, larger than a Header, page-aligned, and
        // nobody else has it yet; zeros are a valid Header but for the fields set here.
        let header = unsafe { &mut *(map.ptr() as *mut Header) };
        header.flags = flags;
        header.maxsize = maxsize as u64;
        header
            .producers
            .0
            .init(crate::sys::robust::Relock::Refuse)
            .map_err(|e| Error::io("could not make a queue's lock", e))?;
        header.magic.store(MAGIC, Release);
        let doorbell = shm::eventfd().map_err(io)?;
        let (_, identity) = shm::file_identity(fd.as_fd()).map_err(io)?;
        Shared::attach_mapped(fd, doorbell, map, identity)
    }

    /// Uses a queue whose memfd and doorbell arrived with a handle.
    pub(crate) fn open(fd: OwnedFd, doorbell: OwnedFd) -> Result<Arc<Shared>> {
        let (len, identity) = shm::file_identity(fd.as_fd()).map_err(|e| Error::io("could not inspect a queue", e))?;
        if let Some(shared) = registry().get(identity) {
            return Ok(shared); // the descriptors that came close here: this process has its own
        }
        if len < MAPPED {
            return Err(not_a_queue("its memory is too small"));
        }
        let map = Mapping::new(fd.as_fd(), MAPPED as usize).map_err(|e| Error::io("could not map a queue", e))?;
        // SAFETY: the mapping is at least a Header long and page-aligned.
        let header = unsafe { &*(map.ptr() as *const Header) };
        if header.magic.load(Acquire) != MAGIC {
            return Err(not_a_queue("its memory does not hold a queue of this version"));
        }
        Shared::attach_mapped(fd, doorbell, map, identity)
    }

    fn attach_mapped(fd: OwnedFd, doorbell: OwnedFd, map: Mapping, identity: (u64, u64)) -> Result<Arc<Shared>> {
        let private = shm::reopen(fd.as_fd()).map_err(|e| Error::io("could not open a queue's memory again", e))?;
        // SAFETY: checked by the callers: a mapped, initialized Header.
        let header = unsafe { &*(map.ptr() as *const Header) };
        let (me, generation) = join(header, &private)?;
        if header.takes_turns() {
            header.producers.0.watch(); // unwatched in `drop`, before the memory is unmapped
        }
        let shared = Arc::new(Shared {
            fd,
            doorbell,
            map,
            identity,
            me,
            generation,
            private,
            closed: AtomicBool::new(false),
            bound: Mutex::new(Vec::new()),
            released_seen: std::array::from_fn(|_| AtomicU64::new(0)),
            tail_seen: std::array::from_fn(|_| AtomicU64::new(0)),
            spill_drained_seen: std::array::from_fn(|_| AtomicU64::new(0)),
            futile_wakes: std::sync::atomic::AtomicU32::new(0),
            take_turn: Mutex::new(()),
            reported_lost: Mutex::new(Vec::new()),
            deferred: Mutex::new(None),
            has_deferred: AtomicBool::new(false),
        });
        if header.flags & JOINABLE != 0 {
            *shared.reported_lost.lock().unwrap_or_else(|p| p.into_inner()) =
                (0..PARTICIPANTS).map(|p| shared.lost_by(p).0).collect();
        }
        // Two threads may have raced to map the same queue: the first one's stands.
        Ok(registry().insert(identity, shared))
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping starts with an initialized Header (checked when mapped) and lives
        // as long as `self`; every field is shared through atomics (or set before sharing).
        unsafe { &*(self.map.ptr() as *const Header) }
    }

    /// The start of lane `i`'s ring.
    #[inline]
    pub(crate) fn ring(&self, i: usize) -> *mut u8 {
        debug_assert!(i < LANES && self.map.len() as u64 >= MAPPED);
        // SAFETY: RINGS_AT + (i + 1) * LANE_CAP <= MAPPED, the mapping's length.
        unsafe { self.map.ptr().add((RINGS_AT + i as u64 * LANE_CAP) as usize) }
    }

    /// A process-wide key for this queue.
    pub(crate) fn key(&self) -> (u64, u64) {
        self.identity
    }

    /// This process's owner word, with `tag`.
    pub(crate) fn owner(&self, tag: u64) -> u64 {
        owner_word(self.me, self.generation, tag)
    }

    /// Whether the holder named by an owner word is alive.
    pub(crate) fn alive(&self, word: u64) -> bool {
        let Some((p, generation)) = owner_of(word) else { return false };
        if p == self.me && generation == self.generation & 0xff_ffff {
            return true;
        }
        let Some(slot) = self.header().participants.get(p as usize) else { return false };
        let state = slot.state.load(Acquire);
        if state & 1 == 0 || (state >> 1) & 0xff_ffff != generation {
            return false; // gone, or its slot has a new owner
        }
        // an error here must not make a live holder look dead
        shm::byte_locked_elsewhere(self.private.as_fd(), p as u64).unwrap_or(true)
    }

    /// Takes back what dead participants left registered (sleepers, pollers).
    pub(crate) fn sweep_dead(&self) {
        let h = self.header();
        for (p, slot) in h.participants.iter().enumerate() {
            let state = slot.state.load(Acquire);
            if state & 1 == 0 || p as u32 == self.me {
                continue;
            }
            let word = owner_word(p as u32, state >> 1, 0);
            if !self.alive(word) {
                forget_registrations(h, slot);
            }
        }
    }

    /// Records a lane one of this process's threads took.
    pub(crate) fn note_bound(&self, lane: usize, owner: u64) {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).push((lane, owner));
    }

    /// Gives back a lane a thread held (it exits, or the queue is closed here).
    pub(crate) fn unbind(&self, lane: usize, owner: u64) {
        let _ = self.header().lanes[lane].producer.0.owner.compare_exchange(owner, 0, Release, Relaxed);
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).retain(|b| *b != (lane, owner));
    }

    /// Gives back every lane this process's threads hold.
    pub(crate) fn unbind_all(&self) {
        let bound = std::mem::take(&mut *self.bound.lock().unwrap_or_else(|p| p.into_inner()));
        for (lane, owner) in bound {
            let _ = self.header().lanes[lane].producer.0.owner.compare_exchange(owner, 0, Release, Relaxed);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.header().takes_turns() {
            self.header().producers.0.unwatch();
        }
        // this thread's cache must not match another queue later mapped at this address
        let here = self as *const Shared as usize;
        LAST.with(|l| {
            if l.get().0 == here {
                l.set((0, 0, 0));
            }
        });
        self.unbind_all();
        let h = self.header();
        let slot = &h.participants[self.me as usize];
        forget_registrations(h, slot);
        slot.state.store((self.generation << 1) & !1, Release);
        if h.flags & JOINABLE != 0 && self.lost_by(self.me as usize).0 > 0 {
            self.wake(Sleep::Done, true); // tasks left undone: joiners learn of them now
        }
        shm::unlock_byte(self.private.as_fd(), self.me as u64);
        registry().remove(self.identity);
    }
}

/// Takes a participant slot: the first whose byte no live process holds.
fn join(header: &Header, private: &OwnedFd) -> Result<(u32, u32)> {
    for (p, slot) in header.participants.iter().enumerate() {
        // Holding the byte proves no live process has the slot (a live one holds its byte
        // for as long as it takes part): only then is the slot ours to take.
        match shm::lock_byte(private.as_fd(), p as u64) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return Err(Error::io("could not lock a queue participant's byte", e)),
        }
        // A joinable queue's slot whose last process died in the middle of a take is left
        // until the take is counted by whoever takes that lane's lock over.
        if header.flags & JOINABLE != 0 && take_under_way(header, p as u32) {
            shm::unlock_byte(private.as_fd(), p as u64);
            continue;
        }
        let old = slot.state.load(Acquire);
        if old & 1 == 1 {
            forget_registrations(header, slot); // a dead process's
        }
        let generation = ((old >> 1) + 1) & 0xff_ffff;
        // What the earlier processes here left undone is theirs, lost: the base of this one.
        let net = slot.taken.load(Acquire).wrapping_sub(slot.done.load(Acquire));
        if net as i64 > slot.base.load(Acquire) as i64 {
            slot.lost_pid.store(slot.pid.load(Relaxed), Relaxed);
        }
        slot.base.store(net, Release);
        header.counts.0.slots_used.fetch_max(p as u32 + 1, AcqRel);
        slot.pid.store(std::process::id(), Relaxed);
        slot.state.store((generation << 1) | 1, Release);
        return Ok((p as u32, generation));
    }
    Err(Error::io("could not join a queue", std::io::Error::other(format!("{PARTICIPANTS} processes use it already"))))
}

/// Whether a lane holds a note of a take under way by a process of slot `p` (dead, since its
/// byte was free): its count may not be settled yet.
fn take_under_way(header: &Header, p: u32) -> bool {
    header.lanes.iter().any(|l| owner_of(l.consumer.0.take_owner.load(Acquire)).is_some_and(|(q, _)| q == p))
}

/// Takes a participant's sleepers and pollers out of the totals.
fn forget_registrations(header: &Header, slot: &Participant) {
    let waits = [&header.items.0, &header.space.0, &header.done.0];
    for (kind, waiters) in waits.iter().enumerate() {
        let n = slot.sleeping[kind].swap(0, AcqRel);
        if n > 0 {
            let _ = waiters.sleepers.fetch_update(AcqRel, Acquire, |s| Some(s.saturating_sub(n)));
        }
    }
    let n = slot.polling.swap(0, AcqRel);
    if n > 0 {
        let _ = header.items.0.pollers.fetch_update(AcqRel, Acquire, |s| Some(s.saturating_sub(n)));
    }
}

fn not_a_queue(why: &str) -> Error {
    Error::Decode { what: "message", type_name: "Queue".into(), message: format!("not a multiproc queue: {why}") }
}

thread_local! {
    /// The lanes this thread holds, one per queue.
    static LANES_HELD: RefCell<Held> = RefCell::new(Held::default());
    /// This thread's tag in owner words.
    static TAG: Cell<u64> = const { Cell::new(0) };
    /// Where this thread's last item in each queue's shared lane went, while it may not have
    /// been taken yet.
    static SHARED_PUTS: RefCell<Vec<SharedPut>> = const { RefCell::new(Vec::new()) };
}

/// A thread's last item in a queue's shared lane: the lane's ring and spill tails just after it.
struct SharedPut {
    key: (u64, u64),
    ring_tail: u64,
    spill_tail: u64,
}

/// Records that this thread's last item in `shared`'s shared lane ends at these tails.
pub(crate) fn note_shared_put(shared: &Shared, ring_tail: u64, spill_tail: u64) {
    let key = shared.key();
    SHARED_PUTS.with(|p| {
        let mut p = p.borrow_mut();
        match p.iter_mut().find(|s| s.key == key) {
            Some(s) => (s.ring_tail, s.spill_tail) = (ring_tail, spill_tail),
            None => p.push(SharedPut { key, ring_tail, spill_tail }),
        }
    });
}

/// Whether this thread may leave `shared`'s shared lane for a lane of its own: only once the
/// consumers have taken every item it put there, or its next items could be taken before them.
/// `taken` says whether the lane's heads have passed the given tails.
pub(crate) fn may_leave_shared_lane(shared: &Shared, taken: impl Fn(u64, u64) -> bool) -> bool {
    let key = shared.key();
    SHARED_PUTS.with(|p| {
        let mut p = p.borrow_mut();
        let Some(at) = p.iter().position(|s| s.key == key) else { return true };
        if !taken(p[at].ring_tail, p[at].spill_tail) {
            return false;
        }
        p.swap_remove(at);
        true
    })
}

/// Lanes held by one thread; given back when the thread ends.
#[derive(Default)]
struct Held(Vec<HeldLane>);

/// One lane a thread holds: in which queue, and as whom.
struct HeldLane {
    key: (u64, u64),
    shared: Weak<Shared>,
    lane: usize,
    owner: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        for held in self.0.drain(..) {
            if let Some(shared) = held.shared.upgrade() {
                shared.unbind(held.lane, held.owner);
            }
        }
    }
}

/// This thread's tag: a number of its own within the process.
pub(crate) fn thread_tag() -> u64 {
    TAG.with(|t| {
        if t.get() == 0 {
            static NEXT: AtomicU64 = AtomicU64::new(1);
            t.set(NEXT.fetch_add(1, Relaxed));
        }
        t.get()
    })
}

thread_local! {
    /// The last queue this thread put into, by address, and its lane there: the common case in
    /// one comparison.
    static LAST: Cell<(usize, usize, u64)> = const { Cell::new((0, 0, 0)) };
}

/// The lane this thread holds in `shared`, if any.
#[inline]
pub(crate) fn held_lane(shared: &Shared) -> Option<(usize, u64)> {
    let here = shared as *const Shared as usize;
    let (at, lane, owner) = LAST.with(Cell::get);
    if at == here {
        return Some((lane, owner));
    }
    let key = shared.key();
    let found = LANES_HELD.with(|h| h.borrow().0.iter().find(|l| l.key == key).map(|l| (l.lane, l.owner)));
    if let Some((lane, owner)) = found {
        LAST.with(|l| l.set((here, lane, owner)));
    }
    found
}

/// Records that this thread holds `lane` of `shared`.
pub(crate) fn hold_lane(shared: &Arc<Shared>, lane: usize, owner: u64) {
    let key = shared.key();
    LANES_HELD.with(|h| {
        let mut h = h.borrow_mut();
        h.0.retain(|l| l.key != key && l.shared.strong_count() > 0);
        h.0.push(HeldLane { key, shared: Arc::downgrade(shared), lane, owner });
    });
    LAST.with(|l| l.set((Arc::as_ptr(shared) as usize, lane, owner)));
    shared.note_bound(lane, owner);
}

/// Forgets this thread's lane in `shared` (it was taken back).
pub(crate) fn drop_lane(shared: &Shared) {
    let key = shared.key();
    LANES_HELD.with(|h| h.borrow_mut().0.retain(|l| l.key != key));
    LAST.with(|l| l.set((0, 0, 0)));
}
