//! A lane's spill: where its producer goes on putting once the lane's ring is full, so that an
//! unbounded queue is bounded by memory and not by its rings (see the layout's doc).
//!
//! A spill is a ring of [`SPILL_SPAN`] bytes of the queue's memfd that no process maps: records
//! are written with one `pwrite` and read with one `pread` (two for a large one), and the pages
//! behind the head are given back with a punched hole every 64 KiB, and when it runs empty.
//! The records are the ring's (a header word, then the item's bytes); large items are kept
//! inline, as nothing here is mapped.

use std::sync::atomic::Ordering::*;

use crate::channel::queue::attach::Shared;
use crate::channel::queue::layout::*;
use crate::error::{Error, Result};
use crate::sys::shm;

/// Memory behind a spill's head is given back in pieces of at least this much (and all of it
/// when the spill runs empty).
const FREE_EVERY: u64 = 64 * 1024;
/// A first read takes this much: the whole record, for most items.
const FIRST_READ: usize = 512;

impl Shared {
    /// Lane `i`'s spill.
    #[inline]
    pub(super) fn spill_side(&self, i: usize) -> &SpillSide {
        &self.header().spills[i].0
    }

    /// Whether lane `i`'s spill holds items: then its producer puts there, not in the ring.
    #[inline]
    pub(super) fn spilling(&self, i: usize) -> bool {
        let sp = self.spill_side(i);
        spill_pos(sp.head.load(Acquire)) != spill_pos(sp.tail.load(Acquire))
    }

    /// [`spilling`](Shared::spilling), as lane `i`'s producer asks it before each put: the
    /// spill's head (which consumers write while the spill drains) is read only while its tail
    /// is not the head last seen equal to it, since a head never passes the tail.
    #[inline]
    pub(super) fn producer_spilling(&self, i: usize) -> bool {
        let sp = self.spill_side(i);
        let tail = spill_pos(sp.tail.load(Acquire));
        let seen = &self.spill_drained_seen[i];
        if seen.load(Relaxed) == tail {
            return false;
        }
        let head = spill_pos(sp.head.load(Acquire));
        if head == tail {
            seen.store(tail, Relaxed);
        }
        head != tail
    }

    /// Items in lane `i`'s spill.
    pub(super) fn spilled(&self, i: usize) -> u64 {
        let sp = self.spill_side(i);
        spill_items(sp.head.load(Acquire), sp.tail.load(Acquire))
    }

    /// Where byte position `at` of lane `i`'s spill is in the memfd.
    fn spill_offset(i: usize, at: u64) -> u64 {
        SPILL_AT + i as u64 * SPILL_SPAN + at
    }

    /// Writes `bytes` at byte position `at` of lane `i`'s spill, wrapping at its end.
    fn write_spill(&self, i: usize, at: u64, bytes: &[u8]) -> Result<()> {
        let first = bytes.len().min((SPILL_SPAN - at) as usize);
        let io = |e| Error::io("could not put an item in the queue's memory (is memory full?)", e);
        shm::write_at(self.fd_ref(), &bytes[..first], Self::spill_offset(i, at)).map_err(io)?;
        shm::write_at(self.fd_ref(), &bytes[first..], Self::spill_offset(i, 0)).map_err(io)
    }

    /// Reads `out.len()` bytes from byte position `at` of lane `i`'s spill, wrapping.
    fn read_spill(&self, i: usize, at: u64, out: &mut [u8]) -> Result<()> {
        let first = out.len().min((SPILL_SPAN - at) as usize);
        let io = |e| Error::io("could not read an item from the queue's memory", e);
        let (a, b) = out.split_at_mut(first);
        shm::read_into(self.fd_ref(), a, Self::spill_offset(i, at)).map_err(io)?;
        shm::read_into(self.fd_ref(), b, Self::spill_offset(i, 0)).map_err(io)
    }

    /// Writes one item's record into lane `i`'s spill, which this thread may write alone now;
    /// the caller publishes it with the returned spill word, the new tail.
    pub(super) fn write_spilled(&self, i: usize, bytes: &[u8]) -> Result<u64> {
        let sp = self.spill_side(i);
        let tail = sp.tail.load(Relaxed);
        let need = record_len(bytes.len());
        let freed = sp.freed.load(Acquire);
        if spill_bytes(freed, spill_pos(tail)) + need > SPILL_SPAN {
            return Err(Error::Full { maxsize: None, waited: None });
        }
        let header = (bytes.len() as u64) | ((INLINE as u64) << 32);
        let at = spill_pos(tail);
        if bytes.len() <= 4096 {
            let mut record = Vec::with_capacity(need as usize);
            record.extend_from_slice(&header.to_le_bytes());
            record.extend_from_slice(bytes);
            record.resize(need as usize, 0);
            self.write_spill(i, at, &record)?;
        } else {
            self.write_spill(i, at, &header.to_le_bytes())?;
            self.write_spill(i, (at + RECORD_HEADER) & (SPILL_SPAN - 1), bytes)?;
        }
        Ok(spill_advance(tail, need))
    }

    /// Takes the item at the head of lane `i`'s spill, whose consumer lock this thread holds,
    /// handing its bytes to `read`. The head moves once the item is read; a joinable queue
    /// counts the take as a ring's take is counted.
    #[cold]
    pub(super) fn take_spilled(&self, i: usize, read: &mut impl FnMut(&[u8])) -> Result<bool> {
        let h = self.header();
        let lane = &h.lanes[i];
        let (c, sp) = (&lane.consumer.0, self.spill_side(i));
        let head = sp.head.load(Relaxed);
        if spill_pos(head) == spill_pos(sp.tail.load(Acquire)) {
            return Ok(false);
        }
        let at = spill_pos(head);
        // one read for the header and, most often, the whole item (it may stop at the end of
        // what is written: then what is missing is read after)
        let mut first = [0u8; FIRST_READ];
        let want = FIRST_READ.min((SPILL_SPAN - at) as usize);
        let n = match rustix::io::pread(self.fd_ref(), &mut first[..want], Self::spill_offset(i, at)) {
            Ok(n) if n >= RECORD_HEADER as usize => n,
            _ => {
                self.read_spill(i, at, &mut first[..RECORD_HEADER as usize])?;
                RECORD_HEADER as usize
            }
        };
        let word = u64::from_le_bytes(first[..8].try_into().expect("8 bytes"));
        let (len, kind) = ((word & 0xffff_ffff) as usize, (word >> 32) as u32);
        if kind != INLINE || record_len(len) > SPILL_SPAN / 2 {
            let why = format!("a spilled record of kind {kind} and length {len}");
            return Err(Error::BadFrame { reason: format!("a queue's lane {i} is corrupt: {why}") });
        }
        let body_at = (at + RECORD_HEADER) & (SPILL_SPAN - 1);
        if 8 + len <= n {
            read(&first[8..8 + len]);
        } else {
            let mut body = vec![0u8; len];
            self.read_spill(i, body_at, &mut body)?;
            read(&body);
        }
        let counting = h.flags & JOINABLE != 0;
        let turn = counting.then(|| self.take_turn.lock().unwrap_or_else(|p| p.into_inner()));
        let slot = &h.participants[self.me as usize];
        if counting {
            c.take_head.store(head, Relaxed);
            if sp.take_spill.load(Relaxed) != 1 {
                sp.take_spill.store(1, Relaxed);
            };
            c.take_count.store(slot.taken.load(Relaxed), Relaxed);
            c.take_owner.store(c.lock.load(Relaxed), Release);
        }
        sp.head.store(spill_advance(head, record_len(len)), Release);
        if counting {
            slot.taken.fetch_add(1, AcqRel);
            c.take_owner.store(0, Release);
            drop(turn);
        }
        self.free_spilled(i);
        Ok(true)
    }

    /// Gives back the memory of lane `i`'s spill behind its head, in pieces of [`FREE_EVERY`]
    /// or all of it once the spill is empty. Under the lane's consumer lock; done again by the
    /// next holder if this one dies in the middle (punching a hole twice does no harm, and the
    /// producer writes nothing there until `freed` has moved).
    pub(super) fn free_spilled(&self, i: usize) {
        let sp = self.spill_side(i);
        let head = spill_pos(sp.head.load(Acquire));
        let freed = sp.freed.load(Relaxed);
        let upto = head & !4095;
        let behind = spill_bytes(freed, upto);
        let empty = head == spill_pos(sp.tail.load(Acquire));
        if behind == 0 || (behind < FREE_EVERY && !empty) {
            return;
        }
        let first = behind.min(SPILL_SPAN - freed);
        shm::punch_hole(self.fd_ref(), Self::spill_offset(i, freed), first);
        if behind > first {
            shm::punch_hole(self.fd_ref(), Self::spill_offset(i, 0), behind - first);
        }
        sp.freed.store(upto, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::pipe::Wait;

    fn in_use(shared: &Shared) -> u64 {
        rustix::fs::fstat(shared.fd_ref()).unwrap().st_blocks as u64 * 512
    }

    /// Past its ring's mebibyte, a producer spills; a consumer gets everything in order, and
    /// the spill's memory is given back.
    #[test]
    fn a_full_ring_spills_and_the_lane_stays_in_order() {
        let shared = Shared::create(0, 0).unwrap();
        let n = 200_000u64; // 3 MiB of 16-byte records: two thirds spilled
        for x in 0..n {
            shared.put_bytes(&x.to_le_bytes(), Wait::Now).unwrap();
        }
        assert_eq!(shared.len(), n as usize);
        let lane = shared.active_lanes().next().unwrap();
        assert!(shared.spilled(lane) > n / 2, "only {} spilled", shared.spilled(lane));
        let spilled_memory = in_use(&shared);
        // more while it spills: they go after the spilled ones
        shared.put_bytes(&n.to_le_bytes(), Wait::Now).unwrap();
        // some large ones too, in the middle of a spill
        shared.put_bytes(&vec![7u8; 300_000], Wait::Now).unwrap();
        for x in 0..=n {
            let mut got = 0;
            shared.take(Wait::Now, |b| got = u64::from_le_bytes(b.try_into().unwrap())).unwrap();
            assert_eq!(got, x);
        }
        let mut big = Vec::new();
        shared.take(Wait::Now, |b| big = b.to_vec()).unwrap();
        assert_eq!(big, vec![7u8; 300_000]);
        assert!(shared.take(Wait::Now, |_| ()).is_err());
        assert!(!shared.spilling(lane));
        assert!(in_use(&shared) + (2 << 20) < spilled_memory, "{} of {spilled_memory}", in_use(&shared));
        // and back to the ring
        shared.put_bytes(&1u64.to_le_bytes(), Wait::Now).unwrap();
        assert_eq!(shared.spilled(lane), 0);
    }
}
