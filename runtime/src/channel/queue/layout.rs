//! What a queue's shared memory holds, and where.
//!
//! ```text
//! 0          header: waits, shutdown, counts, the producers' lock, participants, lane meta
//! RINGS_AT   lane 0's ring, lane 1's ring, ... (LANE_CAP bytes each; pages touched on use)
//! BLOBS_AT   items too large for a ring, one after another (written and read with pwrite/pread,
//!            holes punched once taken)
//! SPILL_AT   lane 0's spill, lane 1's spill, ... (SPILL_SPAN bytes each, never mapped: written
//!            and read with pwrite/pread, holes punched once taken)
//! ```
//!
//! **Spills.** When a lane's ring is full, its producer goes on putting into the lane's spill,
//! a ring of 16 GiB of sparse memory, until a consumer has emptied it: then back to the ring.
//! A consumer takes from the ring first (what is there is older than any item in the spill)
//! and from the spill when the ring is empty, so each lane stays in order. The memory a spill
//! holds is what its items take, given back as they are taken: an unbounded queue is bounded
//! by memory, not by the rings.
//!
//! Positions in a lane (`tail`, `head`) are one word each: the item count in the top 24 bits,
//! the byte position in the low 40, both counting up and wrapping; a lane never holds 2^23
//! items or 2^39 bytes, so differences are exact. One word means one store publishes an item or
//! takes one: a process killed between two stores cannot leave them disagreeing.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// Marks a queue's memory, with the layout's version in its last byte.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"MPQUEUE\x04");
/// Lanes a thread can have to itself.
pub(crate) const PRIVATE_LANES: usize = 64;
/// The lane producers share, under a lock, when every private lane is taken.
pub(crate) const SHARED_LANE: usize = PRIVATE_LANES;
pub(crate) const LANES: usize = PRIVATE_LANES + 1;
/// Processes that can use one queue at once.
pub(crate) const PARTICIPANTS: usize = 256;
/// The bytes of one lane's ring.
pub(crate) const LANE_CAP: u64 = 1 << 20;
/// Larger encoded items are stored apart (blobs), so a ring holds many items.
pub(crate) const INLINE_MAX: usize = 64 * 1024;
/// The bytes of one lane's spill (see the module's doc).
pub(crate) const SPILL_SPAN: u64 = 1 << 34;
/// Where the spills begin: far above any blob area (which ends there at the latest).
pub(crate) const SPILL_AT: u64 = 1 << 46;
/// A consumer tells the producer about freed space at least this often.
pub(crate) const RELEASE_EVERY: u64 = LANE_CAP / 8;
/// Bytes before an item's bytes in a ring: its length and kind.
pub(crate) const RECORD_HEADER: u64 = 8;
/// A record's kind: the item's bytes follow.
pub(crate) const INLINE: u32 = 1;
/// A record's kind: where the item is stored apart follows (offset, length).
pub(crate) const BLOB: u32 = 2;
/// A record's kind: a block of small items follows (see `block.rs`).
pub(crate) const BLOCK: u32 = 3;

pub(crate) const HEADER_SIZE: u64 = (std::mem::size_of::<Header>() as u64).next_multiple_of(4096);
pub(crate) const RINGS_AT: u64 = HEADER_SIZE;
pub(crate) const BLOBS_AT: u64 = RINGS_AT + LANES as u64 * LANE_CAP;
/// What every process maps: the header and the rings.
pub(crate) const MAPPED: u64 = BLOBS_AT;

/// The queue's flags.
pub(crate) const JOINABLE: u32 = 1;

/// Keeps what it holds on a cache line of its own.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Line<T>(pub(crate) T);

/// One kind of wait: a futex word bumped on every wake-up, and who is asleep on it.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Waiters {
    pub(crate) seq: AtomicU32,
    /// Threads registered to sleep on `seq`.
    pub(crate) sleepers: AtomicU32,
    /// Threads in `multiproc::wait` on this queue (the doorbell eventfd is rung for them).
    pub(crate) pollers: AtomicU32,
}

/// A `JoinableQueue`'s counts: unfinished = `put` - the participants' `done`, summed.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Counts {
    /// Items put; written only under the producers' lock.
    pub(crate) put: AtomicU64,
    /// Participant slots ever taken: the ones whose counts are summed.
    pub(crate) slots_used: AtomicU32,
    /// A put in progress (under the lock), for the next holder to finish if its process died:
    /// `lane + 1` (0: none), the lane's tail before, and `put` before.
    pub(crate) pending_lane: AtomicU64,
    pub(crate) pending_tail: AtomicU64,
    pub(crate) pending_put: AtomicU64,
}

/// A process using the queue.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Participant {
    /// `generation << 1 | in use`.
    pub(crate) state: AtomicU32,
    pub(crate) pid: AtomicU32,
    /// Its threads registered as sleepers (items, space, done) and pollers: taken back from
    /// the totals if it dies registered.
    pub(crate) sleeping: [AtomicU32; 3],
    pub(crate) polling: AtomicU32,
    /// The pid of the last process in this slot that left tasks undone.
    pub(crate) lost_pid: AtomicU32,
    /// A joinable queue's items taken, and `task_done` calls, by this slot's processes over all
    /// its generations; never reset, so that what a dead one left undone stays counted.
    pub(crate) taken: AtomicU64,
    pub(crate) done: AtomicU64,
    /// `taken - done` when the present generation began: what the earlier ones left undone,
    /// lost with them.
    pub(crate) base: AtomicU64,
}

/// A lane, seen by its producer.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ProducerSide {
    /// Who has the lane: 0, or an owner word.
    pub(crate) owner: AtomicU64,
    /// Where the next item goes; stored once the item is wholly written (publishes it).
    pub(crate) tail: AtomicU64,
    /// The shared lane's lock: 0, or an owner word.
    pub(crate) lock: AtomicU64,
}

/// A lane, seen by its consumers.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ConsumerSide {
    /// Held while one consumer takes an item: 0, or an owner word.
    pub(crate) lock: AtomicU64,
    /// The next item to take; stored once it is taken.
    pub(crate) head: AtomicU64,
    /// A large item's memory to free once the head has moved past it: the head before it
    /// (`punch_head`), its place in the blob area and its length (`punch_len`, 0: none; stored
    /// last). Written under the lock, before the head moves, so that whoever takes over the
    /// lock of a consumer killed in between frees it if (and only if) the item was taken.
    pub(crate) punch_head: AtomicU64,
    pub(crate) punch_at: AtomicU64,
    pub(crate) punch_len: AtomicU64,
    /// A joinable queue's take under way, for whoever takes the lock over to count it: the
    /// taker's owner word (0: none; stored last), the head before, and the taker's slot's
    /// `taken` before. The count goes up only after the head moves, so a head that moved with
    /// the count still at `take_count` is an item taken and not yet counted.
    pub(crate) take_owner: AtomicU64,
    pub(crate) take_head: AtomicU64,
    pub(crate) take_count: AtomicU64,
}

/// A lane's spill (see the module's doc), on a line of its own: written only while the lane
/// spills, so that the ring's producer and consumers read it, on every put and on every look
/// at an empty ring, from their caches.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SpillSide {
    /// Where the next item goes (a spill word); stored once the item is wholly written.
    pub(crate) tail: AtomicU64,
    /// The next item to take (a spill word); stored once it is taken.
    pub(crate) head: AtomicU64,
    /// The byte position below which the spill's memory is given back: the producer writes no
    /// further than a span past it, so nothing below it is ever written again while a
    /// consumer killed in the middle of giving memory back may give it back a second time.
    pub(crate) freed: AtomicU64,
    /// Whether the consumers' noted take (`ConsumerSide::take_head`) is from the spill (then
    /// `take_head` is a spill word). Stored only when it changes.
    pub(crate) take_spill: AtomicU32,
}

/// How far the producer may write: told by the consumers now and then, not at every item, so
/// that the two sides do not fight over one cache line.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Released {
    pub(crate) pos: AtomicU64,
    /// Set by a producer short of space: the next consumer tells it at once.
    pub(crate) wanted: AtomicU32,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) producer: Line<ProducerSide>,
    pub(crate) consumer: Line<ConsumerSide>,
    pub(crate) released: Line<Released>,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Header {
    /// [`MAGIC`], written last when the queue is made.
    pub(crate) magic: AtomicU64,
    pub(crate) flags: u32,
    /// 0: no bound.
    pub(crate) maxsize: u64,
    pub(crate) items: Line<Waiters>,
    pub(crate) space: Line<Waiters>,
    pub(crate) done: Line<Waiters>,
    /// 0 open, [`SHUTDOWN`] or [`SHUTDOWN_NOW`].
    pub(crate) shutdown: Line<AtomicU32>,
    pub(crate) counts: Line<Counts>,
    /// Serializes producers of bounded and joinable queues (a robust, process-shared mutex).
    pub(crate) producers: Line<crate::sys::robust::RobustMutex>,
    /// The next free byte of the blob area.
    pub(crate) blob_end: Line<AtomicU64>,
    /// Lanes ever given to a producer: the ones consumers look at.
    pub(crate) active: Line<[AtomicU64; LANES.div_ceil(64)]>,
    pub(crate) participants: [Participant; PARTICIPANTS],
    pub(crate) lanes: [Lane; LANES],
    /// Each lane's spill, apart from the lanes (which stay three lines each).
    pub(crate) spills: [Line<SpillSide>; LANES],
}

impl Header {
    /// Whether producers put one at a time, under the producers' lock: a bounded queue (so that
    /// the bound is exact) or a joinable one (so that the count follows the items).
    pub(crate) fn takes_turns(&self) -> bool {
        self.maxsize != 0 || self.flags & JOINABLE != 0
    }
}

pub(crate) const SHUTDOWN: u32 = 1;
pub(crate) const SHUTDOWN_NOW: u32 = 2;

/// Which kind of sleep a participant is registered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sleep {
    Items = 0,
    Space = 1,
    Done = 2,
}

// The layout fits and is aligned, checked when compiling.
const _: () = {
    assert!(std::mem::align_of::<Lane>() == 64);
    assert!(RINGS_AT.is_multiple_of(4096));
    assert!(HEADER_SIZE < 1 << 20);
    assert!(LANE_CAP.is_multiple_of(8) && LANE_CAP.is_power_of_two());
    assert!((INLINE_MAX as u64) + RECORD_HEADER < RELEASE_EVERY);
};

const POS_BITS: u32 = 40;
const POS_MASK: u64 = (1 << POS_BITS) - 1;
const ITEMS_MASK: u64 = (1 << (64 - POS_BITS)) - 1;

/// A position word's byte position.
#[inline]
pub(crate) fn pos(word: u64) -> u64 {
    word & POS_MASK
}

/// A position word's item count.
#[inline]
pub(crate) fn count(word: u64) -> u64 {
    word >> POS_BITS
}

/// The word after one more item of `bytes` bytes.
#[inline]
pub(crate) fn advance(word: u64, bytes: u64) -> u64 {
    (((count(word) + 1) & ITEMS_MASK) << POS_BITS) | ((pos(word) + bytes) & POS_MASK)
}

/// A position word moved past `items` records of `bytes` in all.
#[inline]
pub(crate) fn advance_by(word: u64, bytes: u64, items: u64) -> u64 {
    (((count(word) + items) & ITEMS_MASK) << POS_BITS) | ((pos(word) + bytes) & POS_MASK)
}

/// Items between two position words.
#[inline]
pub(crate) fn items_between(head: u64, tail: u64) -> u64 {
    count(tail).wrapping_sub(count(head)) & ITEMS_MASK
}

/// Whether position word `later` has items past `earlier` (rather than being behind it: a
/// lane never holds half the count's range).
#[inline]
pub(crate) fn is_ahead(earlier: u64, later: u64) -> bool {
    let d = items_between(earlier, later);
    d != 0 && d <= ITEMS_MASK / 2
}

/// Bytes between two byte positions.
#[inline]
pub(crate) fn bytes_between(from: u64, to: u64) -> u64 {
    to.wrapping_sub(from) & POS_MASK
}

const SPILL_POS_BITS: u32 = 34;
const SPILL_POS_MASK: u64 = (1 << SPILL_POS_BITS) - 1;
const SPILL_ITEMS_MASK: u64 = (1 << (64 - SPILL_POS_BITS)) - 1;

// A spill word's position is a byte of the spill: it wraps with the span.
const _: () = assert!(1 << SPILL_POS_BITS == SPILL_SPAN);

/// A spill word's byte position: an item count in the top 30 bits, the byte in the low 34 (a
/// spill holds fewer than 2^30 records, as each takes 16 bytes at least).
#[inline]
pub(crate) fn spill_pos(word: u64) -> u64 {
    word & SPILL_POS_MASK
}

/// The spill word after one more record of `bytes` bytes.
#[inline]
pub(crate) fn spill_advance(word: u64, bytes: u64) -> u64 {
    ((((word >> SPILL_POS_BITS) + 1) & SPILL_ITEMS_MASK) << SPILL_POS_BITS)
        | (word.wrapping_add(bytes) & SPILL_POS_MASK)
}

/// Items between two spill words.
#[inline]
pub(crate) fn spill_items(head: u64, tail: u64) -> u64 {
    ((tail >> SPILL_POS_BITS).wrapping_sub(head >> SPILL_POS_BITS)) & SPILL_ITEMS_MASK
}

/// Whether spill word `later` has items past `earlier` (a spill never holds half the count's
/// range).
#[inline]
pub(crate) fn spill_is_ahead(earlier: u64, later: u64) -> bool {
    let d = spill_items(earlier, later);
    d != 0 && d <= SPILL_ITEMS_MASK / 2
}

/// Bytes between two spill byte positions.
#[inline]
pub(crate) fn spill_bytes(from: u64, to: u64) -> u64 {
    to.wrapping_sub(from) & SPILL_POS_MASK
}

/// The bytes a record of an item of `len` bytes takes in a ring.
#[inline]
pub(crate) fn record_len(len: usize) -> u64 {
    (RECORD_HEADER + len as u64).next_multiple_of(8)
}

/// An owner word: participant, its generation, and a tag (the thread, for a lane).
#[inline]
pub(crate) fn owner_word(participant: u32, generation: u32, tag: u64) -> u64 {
    ((participant as u64 + 1) << 48) | ((generation as u64 & 0xff_ffff) << 24) | (tag & 0xff_ffff)
}

/// The participant and generation of an owner word.
#[inline]
pub(crate) fn owner_of(word: u64) -> Option<(u32, u32)> {
    match word >> 48 {
        0 => None,
        p => Some((p as u32 - 1, ((word >> 24) & 0xff_ffff) as u32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_words_count_and_wrap() {
        let w = advance(advance(0, 16), 24);
        assert_eq!((count(w), pos(w)), (2, 40));
        assert_eq!(items_between(0, w), 2);
        // across both wraps
        let near = ((ITEMS_MASK) << POS_BITS) | (POS_MASK - 7);
        let after = advance(near, 16);
        assert_eq!((count(after), pos(after)), (0, 8));
        assert_eq!(items_between(near, after), 1);
        assert_eq!(bytes_between(pos(near), pos(after)), 16);
        assert!(is_ahead(near, after) && !is_ahead(after, near) && !is_ahead(w, w));
        assert_eq!(record_len(1), 16);
        assert_eq!(record_len(8), 16);
        assert_eq!(record_len(9), 24);
    }

    #[test]
    fn spill_words_count_and_wrap_with_the_span() {
        let near = (SPILL_ITEMS_MASK << SPILL_POS_BITS) | (SPILL_SPAN - 8);
        let after = spill_advance(near, 24);
        assert_eq!(spill_pos(after), 16);
        assert_eq!(spill_items(near, after), 1);
        assert_eq!(spill_bytes(spill_pos(near), spill_pos(after)), 24);
        assert_eq!(spill_items(0, spill_advance(spill_advance(0, 16), 16)), 2);
    }

    #[test]
    fn owner_words_name_their_participant() {
        assert_eq!(owner_of(0), None);
        let w = owner_word(255, 0xabcdef, 7);
        assert_eq!(owner_of(w), Some((255, 0xabcdef)));
        assert_ne!(owner_word(0, 1, 1), owner_word(0, 1, 2));
    }
}
