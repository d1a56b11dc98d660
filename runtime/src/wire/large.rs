//! Large byte runs out of line: a value's bytes over [`LARGE_MIN`] (a `Vec<u8>`, a `String`, a
//! `Vec<f64>` of a `#[process_fn]`) do not go through the socket. They are written once into a
//! memfd, which crosses with the frame as a descriptor, and the receiver copies them once,
//! straight into the value's own buffer: one copy on each side, none through a socket buffer.
//!
//! **In the stream.** bincode writes a byte run as its length (a `u64`) and then the bytes, in
//! one write; the encoder's writer sees that write, puts the bytes in a memfd, sets the top bit
//! of the length word just written before them ([`OUT_OF_LINE`]: no real length has it) and
//! writes the descriptor's index in the frame (a `u32`) instead of the bytes. The decoder's
//! reader, asked for a run of a length with that bit, reads the index and the memfd.
//!
//! **The memfd.** A page for its flag, then the bytes. It is sealed against growing and
//! shrinking, so that a mapping of it can never fault past its end (a receiver refuses one that
//! is not); it is not sealed against writes, because memory is reused: a fresh memfd costs its
//! pages' allocation (measured, 64 MiB: 27-37 ms to fill a fresh one, 6 ms to refill a warm
//! one; 20 ms to map and read a fresh one, 7 ms a mapped one). So a sender keeps its memfds
//! mapped, and writes the next value into one whose receiver has set its flag (read) and
//! whose frame is gone (no resend to another worker can need it); a receiver keeps the last
//! memfds it mapped, by inode. A receiver copies the bytes out before it decodes them, so a
//! sender that wrote into a memfd while it is read would only spoil its own value.
//!
//! **Where not.** Only inside a frame being encoded (whose descriptors travel with it), never
//! for a frame to an MPI rank (descriptors do not cross hosts; see [`inline_only`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};

use rustix::fs::{MemfdFlags, SealFlags};

use crate::sys::shm::{self, Mapping};

/// The shortest byte run that goes out of line, unless `MULTIPROC_LARGE_MIN` says otherwise.
/// Measured (`cargo bench --bench workloads -- W4`, the lines `W4 threshold(..)`, raw bytes
/// echoed over a pipe, us per round trip inline / out of line, two runs): 64 KiB 100 / 110 and
/// 34 / 39; 128 KiB 121 / 116 and 48 / 102 (a toss-up); 256 KiB 356 / 117 and 337 / 122;
/// 1 MiB 1270 / 174 and 1299 / 736.
pub(crate) const LARGE_MIN: usize = 256 * 1024;
/// The threshold is never lower: every write of the encoder compares with this first.
const LARGE_FLOOR: usize = 4096;
/// The threshold in force; 0 until read from the environment.
static THRESHOLD: AtomicUsize = AtomicUsize::new(0);

/// Whether a byte run of `len` bytes goes out of line (where it can).
#[inline(always)]
pub(crate) fn is_large(len: usize) -> bool {
    len >= LARGE_FLOOR && len >= threshold()
}

#[cold]
fn read_threshold() -> usize {
    let n = std::env::var("MULTIPROC_LARGE_MIN").ok().and_then(|v| v.trim().parse::<usize>().ok());
    let n = n.unwrap_or(LARGE_MIN).max(LARGE_FLOOR);
    THRESHOLD.store(n, Relaxed);
    n
}

fn threshold() -> usize {
    match THRESHOLD.load(Relaxed) {
        0 => read_threshold(),
        n => n,
    }
}

/// Sets the threshold in this process (the benchmark's sweep; children read
/// `MULTIPROC_LARGE_MIN`); 0 goes back to the environment's or the default.
pub(crate) fn set_threshold(bytes: usize) {
    THRESHOLD.store(if bytes == 0 { 0 } else { bytes.max(LARGE_FLOOR) }, Relaxed);
}

/// The bit of a run's length word that says its bytes are out of line.
pub(crate) const OUT_OF_LINE: u64 = 1 << 63;

/// Where the bytes start in a memfd: after the page holding its flag.
const DATA_AT: usize = 4096;
/// The flag's values: the receiver has read the bytes (or not yet).
const READ: u64 = 1;
const UNREAD: u64 = 0;

/// The seals a received memfd must carry: nobody can grow or shrink it.
const REQUIRED: SealFlags = SealFlags::GROW.union(SealFlags::SHRINK);

/// Memfds kept for reuse, on each side: at most this many bytes in all, and none larger than
/// half of it (such a value gets a memfd of its own each time).
const KEEP_BYTES: usize = 256 << 20;
const KEEP_COUNT: usize = 16;

/// A memfd this process wrote, kept for the next value that fits.
struct Slot {
    fd: OwnedFd,
    /// Mapped at its first reuse.
    map: Option<Mapping>,
    /// Bytes of data it holds room for.
    room: usize,
    /// Held by the frame that carries it: while a clone is out, a resend may still read it.
    in_flight: Arc<()>,
}

/// What keeps a memfd from reuse while its frame exists.
pub(crate) type InFlight = Arc<()>;

static SENT: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

/// A memfd mapped to read it, kept while its sender may send it again.
struct Seen {
    identity: (u64, u64),
    map: Mapping,
}

static RECEIVED: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// The flag of the memfd behind `map`.
fn flag(map: &Mapping) -> &AtomicU64 {
    // SAFETY: the mapping is at least a page long and page-aligned; its first word is only ever
    // accessed atomically, by the sender and the receivers.
    unsafe { &*(map.ptr() as *const AtomicU64) }
}

/// A memfd holding `bytes`, from the ones kept or new, and what keeps it from reuse while the
/// frame exists.
pub(crate) fn write(bytes: &[u8]) -> io::Result<(OwnedFd, InFlight)> {
    let mut sent = SENT.lock().unwrap_or_else(|p| p.into_inner());
    let fits = |s: &Slot| s.room >= bytes.len() && s.room / 2 <= bytes.len();
    if let Some(at) = sent.iter().position(|s| fits(s) && Arc::strong_count(&s.in_flight) == 1 && was_read(s)) {
        // out of the list while it is written (no other thread can pick it), the lock let go
        let slot = sent.remove(at);
        drop(sent);
        return refill(slot, bytes);
    }
    drop(sent);
    let room = bytes.len().next_multiple_of(64 * 1024);
    let fd = rustix::fs::memfd_create("multiproc-value", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, (DATA_AT + room) as u64)?;
    rustix::fs::fcntl_add_seals(&fd, REQUIRED)?;
    shm::write_at(fd.as_fd(), bytes, DATA_AT as u64)?;
    let slot = Slot { fd: fd.try_clone()?, map: None, room, in_flight: Arc::new(()) };
    let in_flight = Arc::clone(&slot.in_flight);
    keep(&mut SENT.lock().unwrap_or_else(|p| p.into_inner()), slot);
    Ok((fd, in_flight))
}

/// Whether a receiver has read what the slot holds: its flag (with one `pread` while the slot
/// is not mapped here).
fn was_read(slot: &Slot) -> bool {
    if let Some(map) = &slot.map {
        return flag(map).load(Acquire) == READ;
    }
    let mut word = [0u8; 8];
    matches!(rustix::io::pread(&slot.fd, &mut word, 0), Ok(8)) && u64::from_ne_bytes(word) == READ
}

/// Writes `bytes` into a kept slot (mapping it the first time) and keeps it again.
fn refill(mut slot: Slot, bytes: &[u8]) -> io::Result<(OwnedFd, InFlight)> {
    if slot.map.is_none() {
        slot.map = Some(Mapping::new(slot.fd.as_fd(), DATA_AT + slot.room)?);
    }
    let map = slot.map.as_ref().expect("mapped above");
    flag(map).store(UNREAD, Release);
    // SAFETY: the mapping holds `DATA_AT + room` bytes and `bytes` fits the room; no receiver
    // reads the memfd now (its flag said read, and no frame that carries it is left).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.ptr().add(DATA_AT), bytes.len()) };
    let fd = slot.fd.try_clone()?;
    let in_flight = Arc::clone(&slot.in_flight);
    keep(&mut SENT.lock().unwrap_or_else(|p| p.into_inner()), slot);
    Ok((fd, in_flight))
}

/// Keeps a slot, the latest first, within the bounds: older ones go (a frame in flight keeps
/// its own descriptor).
fn keep(sent: &mut Vec<Slot>, slot: Slot) {
    if slot.room > KEEP_BYTES / 2 {
        return;
    }
    sent.insert(0, slot);
    let mut total = 0;
    let mut n = 0;
    sent.retain(|s| {
        total += s.room;
        n += 1;
        total <= KEEP_BYTES && n <= KEEP_COUNT
    });
}

/// Reads a received run of `len` bytes from `fd` into a new `Vec<T>`, after checking that the
/// memfd is sealed against resizing and holds that much (before allocating for it), and sets
/// its flag. `Err` says what was wrong, for a decode error.
pub(crate) fn read<T: bytemuck::Pod>(fd: BorrowedFd<'_>, len: usize) -> Result<Vec<T>, String> {
    let seals = rustix::fs::fcntl_get_seals(fd)
        .map_err(|e| format!("a large value's descriptor is not a sealable memfd ({e})"))?;
    if !seals.contains(REQUIRED) {
        return Err(format!(
            "a large value's memfd is not sealed against resizing (seals {:#x}): its sender could \
             shrink it under the reader, so it is refused",
            seals.bits()
        ));
    }
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("could not look at a large value's memfd: {e}"))?;
    let size = stat.st_size as u64;
    if size < (DATA_AT + len) as u64 {
        return Err(format!("a large value's memfd holds {size} bytes, too few for the {len} its message says"));
    }
    let each = std::mem::size_of::<T>();
    if !len.is_multiple_of(each) {
        return Err(format!("a large value of {len} bytes is not a whole number of {each}-byte elements"));
    }
    let identity = (stat.st_dev, stat.st_ino);
    let mut received = RECEIVED.lock().unwrap_or_else(|p| p.into_inner());
    let at = received.iter().position(|s| s.identity == identity && s.map.len() as u64 == size);
    let seen = at.map(|at| received.remove(at));
    drop(received); // not held while the bytes are copied
    let seen = match seen {
        Some(seen) => seen,
        None => match Mapping::new(fd, size as usize) {
            Ok(map) => Seen { identity, map },
            // sealed against writes too, say: read it without a mapping (and without the flag)
            Err(_) => return pread_all(fd, len),
        },
    };
    let mut out = Vec::<T>::with_capacity(len / each);
    let spare = out.spare_capacity_mut();
    // SAFETY: the spare room holds `len / each` elements of `T`, `len` bytes, and `MaybeUninit`
    // bytes have no validity requirement.
    let bytes = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(), len) };
    advise_huge_pages(bytes);
    // SAFETY: the mapping holds `size >= DATA_AT + len` bytes and cannot shrink (sealed); the
    // destination is this buffer's spare room, `len` bytes. A sender writing meanwhile changes
    // only the bytes copied, never what memory is touched.
    unsafe { std::ptr::copy_nonoverlapping(seen.map.ptr().add(DATA_AT), bytes.as_mut_ptr().cast::<u8>(), len) };
    flag(&seen.map).store(READ, Release);
    // SAFETY: all `len` bytes were written, and every bit pattern is a valid `T` (`Pod`).
    unsafe { out.set_len(len / each) };
    if seen.map.len() <= KEEP_BYTES / 2 {
        let mut received = RECEIVED.lock().unwrap_or_else(|p| p.into_inner());
        received.insert(0, seen);
        let mut total = 0;
        received.retain(|s| {
            total += s.map.len();
            total <= KEEP_BYTES
        });
        received.truncate(KEEP_COUNT);
    }
    Ok(out)
}

/// Reads `len` bytes from `DATA_AT` of a memfd that cannot be mapped here, into a new `Vec`.
fn pread_all<T: bytemuck::Pod>(fd: BorrowedFd<'_>, len: usize) -> Result<Vec<T>, String> {
    let mut out = vec![T::zeroed(); len / std::mem::size_of::<T>()];
    shm::read_into(fd, bytemuck::cast_slice_mut(&mut out), DATA_AT as u64)
        .map_err(|e| format!("could not read the {len} bytes of a large value's memfd: {e}"))?;
    Ok(out)
}

/// Asks for huge pages behind a fresh buffer about to be filled: 32 page faults for 64 MiB
/// instead of 16,384 (the kernel's `madvise` mode of transparent huge pages, Debian's default).
fn advise_huge_pages(buf: &mut [std::mem::MaybeUninit<u8>]) {
    const HUGE: usize = 2 << 20;
    let start = (buf.as_ptr() as usize).next_multiple_of(HUGE);
    let end = (buf.as_ptr() as usize + buf.len()) & !(HUGE - 1);
    if end > start {
        // SAFETY: the range lies inside `buf`, memory this process owns; the advice changes how
        // its pages are backed, never their contents (none yet: the buffer is about to be
        // filled).
        let _ = unsafe { rustix::mm::madvise(start as *mut _, end - start, rustix::mm::Advice::LinuxHugepage) };
    }
}

thread_local! {
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether every run stays inline in this process (an MPI rank: its frames cross hosts).
static INLINE_EVERYWHERE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `encode` with every byte run inline: for a frame that goes where descriptors cannot.
pub(crate) fn inline_only<R>(encode: impl FnOnce() -> R) -> R {
    let outer = INLINE.with(|i| i.replace(true));
    let r = encode();
    INLINE.with(|i| i.set(outer));
    r
}

/// Keeps every byte run of this process inline from now on.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn inline_everywhere() {
    INLINE_EVERYWHERE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether runs may go out of line here.
pub(crate) fn allowed() -> bool {
    !INLINE.with(|i| i.get()) && !INLINE_EVERYWHERE.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::{self, ValueReader};
    use crate::wire::fds;
    use serde_bytes::ByteBuf;
    use std::os::fd::AsFd;

    /// Encodes `value` as a frame's payload is encoded: its table open.
    fn encode<T: serde::Serialize>(value: &T) -> (Vec<u8>, fds::Table) {
        let (out, table) = fds::collect(|| {
            let mut out = Vec::new();
            codec::encode_into("message", value, &mut out).map(|()| out)
        });
        (out.unwrap(), table)
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> crate::Result<T> {
        fds::provide(fds, || codec::decode::<T>("message", bytes)).0
    }

    #[test]
    fn a_run_just_under_the_threshold_stays_inline_and_one_at_it_goes_out_of_line() {
        for len in [LARGE_MIN - 1, LARGE_MIN, LARGE_MIN + 4097] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let value = (7u32, ByteBuf::from(data.clone()), String::from_utf8(vec![b'x'; len]).unwrap());
            let (bytes, table) = encode(&value);
            let out_of_line = len >= LARGE_MIN;
            assert_eq!(table.fds.len(), if out_of_line { 2 } else { 0 }, "{len} bytes");
            assert_eq!(table.large, if out_of_line { 2 * len as u64 } else { 0 });
            assert_eq!(bytes.len() < 100, out_of_line, "{len} bytes: the frame holds {}", bytes.len());
            let back: (u32, ByteBuf, String) = decode(&bytes, table.fds).unwrap();
            assert_eq!(back, value, "{len} bytes");
        }
    }

    #[test]
    fn numbers_cross_as_one_block_inline_or_out_of_line() {
        for n in [10usize, LARGE_MIN / 8 - 1, LARGE_MIN / 8, 300_000] {
            let v: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
            let (mut bytes, table) = fds::collect(|| {
                let mut out = Vec::new();
                crate::private::encode_numbers("arguments", &v, &mut out).unwrap();
                out
            });
            assert_eq!(table.fds.len(), usize::from(n * 8 >= LARGE_MIN), "{n} numbers");
            bytes.extend_from_slice(&[1, 2]); // what follows is still read in its place
            let (back, _) = fds::provide(table.fds, || {
                let mut r = ValueReader::new(&bytes, "arguments");
                let back: Vec<f64> = r.read_numbers().unwrap();
                assert_eq!(r.read::<[u8; 2]>().unwrap(), [1, 2]);
                back
            });
            assert_eq!(back, v);
        }
        // a length that is not whole elements is refused
        let mut bytes = 12u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 12]);
        let e = ValueReader::new(&bytes, "arguments").read_numbers::<f64>().unwrap_err();
        assert!(e.to_string().contains("not a whole number of 8-byte elements"), "{e}");
    }

    #[test]
    fn outside_a_frame_and_towards_another_host_runs_stay_inline() {
        let data = ByteBuf::from(vec![3u8; LARGE_MIN * 2]);
        let mut out = Vec::new();
        codec::encode_into("message", &data, &mut out).unwrap();
        assert_eq!(out.len(), 8 + data.len(), "no table open: inline");
        let (bytes, table) = inline_only(|| encode(&data));
        assert!(table.fds.is_empty() && bytes.len() == 8 + data.len(), "inline only");
        assert_eq!(decode::<ByteBuf>(&bytes, Vec::new()).unwrap(), data);
    }

    /// A payload naming descriptor 0 for a run of `len` bytes.
    fn naming(len: u64) -> Vec<u8> {
        let mut bytes = (len | OUT_OF_LINE).to_le_bytes().to_vec();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes
    }

    /// A memfd laid out as a sender lays one out (a page, then `bytes`), with `seals`.
    fn memfd_with(bytes: &[u8], seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::io::pwrite(&fd, bytes, DATA_AT as u64).unwrap();
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        fd
    }

    fn refusal<T: serde::de::DeserializeOwned + std::fmt::Debug>(bytes: &[u8], fds: Vec<OwnedFd>) -> String {
        match decode::<T>(bytes, fds) {
            Err(e @ crate::Error::Decode { .. }) => e.to_string(),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn a_memfd_never_sealed_or_sealed_only_against_writes_is_refused() {
        let data = vec![1u8; 4096];
        let e = refusal::<ByteBuf>(&naming(4096), vec![memfd_with(&data, SealFlags::empty())]);
        assert!(e.contains("not sealed against resizing"), "{e}");
        let e = refusal::<String>(&naming(4096), vec![memfd_with(&data, SealFlags::WRITE | SealFlags::GROW)]);
        assert!(e.contains("not sealed against resizing"), "{e}");
        // and through the numbers' path
        let fd = memfd_with(&data, SealFlags::WRITE);
        let (e, _) = fds::provide(vec![fd], || ValueReader::new(&naming(4096), "result").read_numbers::<u64>());
        assert!(e.unwrap_err().to_string().contains("not sealed"));
        // sealed as a sender seals it, the same memfd is read; sealed against writes as well
        // (it cannot be mapped to set its flag), read all the same
        let fd = memfd_with(&data, REQUIRED);
        assert_eq!(decode::<ByteBuf>(&naming(4096), vec![fd]).unwrap().into_vec(), data);
        let fd = memfd_with(&data, REQUIRED | SealFlags::WRITE);
        assert_eq!(decode::<ByteBuf>(&naming(4096), vec![fd]).unwrap().into_vec(), data);
    }

    #[test]
    fn a_memfd_shrunk_before_it_was_sealed_or_too_small_is_refused() {
        // the peer announced 8192 bytes, then shrank the memfd to 100 and sealed it
        let fd = memfd_with(&vec![5u8; 8192], SealFlags::empty());
        rustix::fs::ftruncate(&fd, 100).unwrap();
        rustix::fs::fcntl_add_seals(&fd, REQUIRED).unwrap();
        let e = refusal::<ByteBuf>(&naming(8192), vec![fd]);
        assert!(e.contains("holds 100 bytes, too few for the 8192"), "{e}");
        // a huge announced length with a small memfd allocates nothing
        let fd = memfd_with(&[1; 10], REQUIRED);
        let e = refusal::<ByteBuf>(&naming(1 << 40), vec![fd]);
        assert!(e.contains("too few"), "{e}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_memfd_or_is_missing_is_refused() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let e = refusal::<ByteBuf>(&naming(10), vec![r]);
        assert!(e.contains("not a sealable memfd"), "{e}");
        let e = refusal::<ByteBuf>(&naming(10), Vec::new());
        assert!(e.contains("names descriptor 0, and its message brought 0"), "{e}");
        // outside a frame, no descriptor at all
        let e = codec::decode::<ByteBuf>("message", &naming(10)).unwrap_err().to_string();
        assert!(e.contains("can only cross to another process"), "{e}");
    }

    fn inode(fd: &OwnedFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    /// A memfd is written again only once its receiver read it and its frame is gone (a resend
    /// to another worker may still read it while the frame exists); its sender cannot resize it.
    #[test]
    fn a_memfd_is_reused_only_once_read_and_its_frame_is_gone() {
        let len = (5 << 20) + 17; // a size no other test uses: the memfds kept are the process's
        let (first, in_flight) = write(&vec![1u8; len]).unwrap();
        assert!(rustix::fs::ftruncate(&first, 10).is_err(), "sealed against shrinking");
        assert!(rustix::fs::ftruncate(&first, 1 << 30).is_err(), "and growing");
        assert_eq!(read::<u8>(first.as_fd(), len).unwrap(), vec![1u8; len]);
        // read, but its frame still exists: another memfd
        let (second, second_in_flight) = write(&vec![2u8; len]).unwrap();
        assert_ne!(inode(&first), inode(&second));
        drop(in_flight);
        drop(second_in_flight); // gone, but never read: not reused
        let (third, third_in_flight) = write(&vec![3u8; len]).unwrap();
        assert_eq!(inode(&third), inode(&first), "read and gone: written again");
        assert_eq!(read::<u8>(third.as_fd(), len).unwrap(), vec![3u8; len]);
        assert_eq!(read::<u8>(second.as_fd(), len).unwrap(), vec![2u8; len], "the unread one is intact");
        drop(third_in_flight);
    }
}
