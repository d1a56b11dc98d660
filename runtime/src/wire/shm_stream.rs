//! A byte stream through shared memory, for a local manager's connections: two rings in one
//! memfd (one each way) carry the bytes, so a request and its reply cost no system call while
//! the other side is awake; a socket pair beside them carries only wake-ups and the end.
//!
//! **Rings.** Each direction has a writer's `tail` and a reader's `head` (byte counts since
//! the start, never wrapping in practice) on cache lines of their own, and `RING` bytes. The
//! writer copies bytes in past `tail` and then moves it; the reader copies out and moves `head`.
//! Values read from the other side are checked (a `tail` behind `head`, or more than `RING`
//! ahead, is an error, not an index).
//!
//! **Sleep and wake.** A side with nothing to read (or no room to write) watches for 20 us,
//! yielding, then sets its `sleeping` word, looks once more, and sleeps in `poll` on its socket.
//! The other side, after it moves `tail` (or `head`), reads that word, and if it is set writes
//! one byte to its socket. Both the store and the look are sequentially consistent, so either
//! the sleeper sees the bytes or the writer sees the sleeper.
//!
//! **The end.** A side that goes (closes, exits, is killed) closes its socket: the other's
//! `poll` returns, and a read gives the bytes still in the ring, then the end of the stream.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::sys::shm::Mapping;

/// Bytes of each ring.
const RING: u64 = 64 * 1024;
/// Where each direction's ring starts: after a page of counters.
const DATA_AT: u64 = 4096;
/// The memfd's length: the counters and both rings.
const LEN: u64 = DATA_AT + 2 * RING;
/// How long a side looks (yielding) before it sleeps.
const WATCH: Duration = Duration::from_micros(20);
/// The seals a received memfd must have: its size cannot change under the mapping.
const SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// One direction's counters, each on its own cache line.
#[repr(C)]
struct Direction {
    tail: AtomicU64,
    _pad0: [u64; 7],
    head: AtomicU64,
    _pad1: [u64; 7],
    /// The reader sleeps (or is about to) for bytes.
    reader_sleeping: AtomicU32,
    /// The writer sleeps (or is about to) for room.
    writer_sleeping: AtomicU32,
    _pad2: [u64; 7],
}

/// One end: it writes direction `side` and reads the other.
#[derive(Debug)]
pub(crate) struct ShmStream {
    map: Mapping,
    /// Wake-ups and the end.
    sock: UnixStream,
    side: usize,
}

impl ShmStream {
    /// A new stream: the client's end (side 0), and what the server's end is made from (its
    /// socket and the memfd, to be sent to it).
    pub(crate) fn pair() -> io::Result<(ShmStream, UnixStream, OwnedFd)> {
        let fd = rustix::fs::memfd_create("multiproc-manager-stream", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, LEN)?;
        rustix::fs::fcntl_add_seals(&fd, SEALS | SealFlags::SEAL)?;
        let (mine, theirs) = UnixStream::pair()?;
        let theirs_fd = rustix::io::fcntl_dupfd_cloexec(&fd, 0)?;
        Ok((ShmStream::attach(fd, mine, 0)?, theirs, theirs_fd))
    }

    /// The end on `side` of the stream in memfd `fd`, waking through `sock`: the server's
    /// (side 1) from what it received. Refuses a memfd that is too short or could be resized.
    pub(crate) fn attach(fd: OwnedFd, sock: UnixStream, side: usize) -> io::Result<ShmStream> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        let len = rustix::fs::fstat(&fd)?.st_size as u64;
        if !seals.contains(SEALS) || len < LEN {
            return Err(io::Error::other(format!("a stream's memfd of {len} bytes, seals {:#x}", seals.bits())));
        }
        let map = Mapping::new(fd.as_fd(), LEN as usize)?;
        sock.set_nonblocking(true)?;
        Ok(ShmStream { map, sock, side })
    }

    fn direction(&self, d: usize) -> &Direction {
        // SAFETY: the mapping is LEN bytes, page-aligned; the two `Direction`s (3 cache lines
        // each) lie in its first page, aligned, and are only accessed atomically.
        unsafe { &*(self.map.ptr() as *const Direction).add(d) }
    }

    fn ring(&self, d: usize) -> *mut u8 {
        // SAFETY: ring `d` is the `RING` bytes at `DATA_AT + d * RING`, inside the mapping.
        unsafe { self.map.ptr().add((DATA_AT + d as u64 * RING) as usize) }
    }

    fn broken(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("a manager stream's counters are broken ({what})"))
    }

    /// Writes one wake-up byte to the other side (its socket buffer full: it has wake-ups).
    fn wake(&self) {
        let _ = rustix::io::write(&self.sock, &[1]);
    }

    /// Sleeps until the other side writes a wake-up or goes; `false` if it went.
    fn sleep(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        // drain the wake-ups; zero bytes read is the other side's end
        let mut buf = [0u8; 64];
        loop {
            match rustix::io::read(&self.sock, &mut buf) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(true),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::CONNRESET) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Watches `ready` for up to [`WATCH`], yielding; whether it became true.
    fn watch(ready: impl Fn() -> io::Result<bool>) -> io::Result<bool> {
        // Yielding from the first look, not spinning: a manager's clients and its threads are
        // more than the cores (W8: two of each on two), and a spinner would keep the side it
        // waits for off the CPU (measured: 1 us of spinning first, 307-327 k ops/s; 8 us,
        // 118-160 k; none, 363-417 k).
        let until = Instant::now() + WATCH;
        loop {
            if ready()? {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    /// Waits until `ready` (bytes to read, room to write): watches, then marks itself asleep
    /// in `flag` (for the other side to see after it changes the counters), looks once more,
    /// and sleeps. `false` if the other side went meanwhile.
    fn wait_for(&self, flag: &AtomicU32, ready: impl Fn() -> io::Result<bool>) -> io::Result<bool> {
        if Self::watch(&ready)? {
            return Ok(true);
        }
        flag.store(1, SeqCst);
        if ready()? {
            flag.store(0, Relaxed);
            return Ok(true);
        }
        let alive = self.sleep();
        flag.store(0, Relaxed);
        alive
    }

    /// Bytes waiting to be read.
    fn readable(&self) -> io::Result<u64> {
        let d = self.direction(1 - self.side);
        let (head, tail) = (d.head.load(Relaxed), d.tail.load(Acquire));
        match tail.checked_sub(head) {
            Some(n) if n <= RING => Ok(n),
            _ => Err(Self::broken("tail out of range")),
        }
    }

    /// Room to write.
    fn writable(&self) -> io::Result<u64> {
        let d = self.direction(self.side);
        let (head, tail) = (d.head.load(Acquire), d.tail.load(Relaxed));
        match tail.checked_sub(head) {
            Some(n) if n <= RING => Ok(RING - n),
            _ => Err(Self::broken("head out of range")),
        }
    }

    /// Whether the other side has gone (its socket closed).
    fn peer_gone(&self) -> bool {
        crate::sys::hung_up(self.sock.as_fd())
    }
}

impl Read for ShmStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.readable()?.min(buf.len() as u64);
            if n > 0 {
                let from = 1 - self.side;
                let d = self.direction(from);
                let head = d.head.load(Relaxed);
                let at = (head % RING) as usize;
                let first = (n as usize).min(RING as usize - at);
                // SAFETY: the `n` bytes from `head` are written and published (`tail` was
                // loaded with Acquire after the writer's Release) and the writer does not touch
                // them until `head` moves past; both copies stay inside ring `from`.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.ring(from).add(at), buf.as_mut_ptr(), first);
                    std::ptr::copy_nonoverlapping(self.ring(from), buf.as_mut_ptr().add(first), n as usize - first);
                }
                d.head.store(head + n, SeqCst);
                if d.writer_sleeping.load(SeqCst) != 0 {
                    self.wake();
                }
                return Ok(n as usize);
            }
            let flag = &self.direction(1 - self.side).reader_sleeping;
            if !self.wait_for(flag, || Ok(self.readable()? > 0))? && self.readable()? == 0 {
                return Ok(0); // the other side went, and everything it sent was read
            }
        }
    }
}

impl Write for ShmStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.writable()?.min(buf.len() as u64);
            if n > 0 {
                let to = self.side;
                let d = self.direction(to);
                let tail = d.tail.load(Relaxed);
                let at = (tail % RING) as usize;
                let first = (n as usize).min(RING as usize - at);
                // SAFETY: the `n` bytes from `tail` are free (the reader has moved `head` past
                // them) and only this side writes them; both copies stay inside ring `to`.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ring(to).add(at), first);
                    std::ptr::copy_nonoverlapping(buf.as_ptr().add(first), self.ring(to), n as usize - first);
                }
                d.tail.store(tail + n, SeqCst);
                if d.reader_sleeping.load(SeqCst) != 0 {
                    self.wake();
                }
                return Ok(n as usize);
            }
            if self.peer_gone() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let flag = &self.direction(self.side).writer_sleeping;
            if !self.wait_for(flag, || Ok(self.writable()? > 0))? {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (ShmStream, ShmStream) {
        let (client, sock, fd) = ShmStream::pair().unwrap();
        (client, ShmStream::attach(fd, sock, 1).unwrap())
    }

    #[test]
    fn bytes_cross_both_ways_in_order_through_many_ring_lengths() {
        let (mut a, mut b) = pair();
        let sent: Vec<u8> = (0..(5 * RING as usize + 123)).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                a.write_all(&sent).unwrap();
                let mut back = vec![0u8; 3];
                a.read_exact(&mut back).unwrap();
                back
            })
        };
        let mut got = vec![0u8; sent.len()];
        b.read_exact(&mut got).unwrap();
        assert!(got == sent);
        b.write_all(b"end").unwrap();
        assert_eq!(writer.join().unwrap(), b"end");
    }

    #[test]
    fn a_reader_gets_what_was_sent_then_the_end_when_the_writer_goes() {
        let (mut a, mut b) = pair();
        a.write_all(b"last words").unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
        // and a writer whose reader went is told so, once the ring is full
        let (a, mut b) = pair();
        drop(a);
        let big = vec![0u8; 2 * RING as usize];
        assert_eq!(b.write_all(&big).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    /// A writer that dies at each step of a frame (before it, after its length, in its body,
    /// after it): the reader's framing sees the end, an error, an error, and the whole frame.
    #[test]
    fn a_writer_gone_at_each_step_of_a_frame_leaves_the_end_an_error_or_the_frame() {
        use crate::manager::proto::Framed;
        let frame = {
            let mut v = 5u32.to_le_bytes().to_vec();
            v.extend_from_slice(&[1, 0, 0, 0, 7]); // bincode of (1u32, 7u8)
            v
        };
        for cut in [0, 4, 7, frame.len()] {
            let (mut a, b) = pair();
            a.write_all(&frame[..cut]).unwrap();
            drop(a);
            let mut reader = Framed::new(b);
            match (cut, reader.recv::<(u32, u8)>()) {
                (0, Ok(None)) => {}
                (4 | 7, Err(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}"),
                (9, Ok(Some(v))) => assert_eq!(v, (1, 7)),
                (cut, other) => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_sleeping_reader_wakes_for_bytes_written_later() {
        let (mut a, mut b) = pair();
        let reader = std::thread::spawn(move || {
            let mut got = [0u8; 5];
            b.read_exact(&mut got).unwrap();
            got
        });
        std::thread::sleep(Duration::from_millis(50)); // well past the watch: asleep in poll
        a.write_all(b"hello").unwrap();
        assert_eq!(&reader.join().unwrap(), b"hello");
    }

    #[test]
    fn a_memfd_that_could_be_resized_or_counters_out_of_range_are_refused() {
        let fd = crate::sys::shm::memfd("unsealed", LEN).unwrap();
        let (_, sock) = UnixStream::pair().unwrap();
        assert!(ShmStream::attach(fd, sock, 1).is_err());
        let (mut a, sock, fd) = ShmStream::pair().unwrap();
        let map = Mapping::new(fd.as_fd(), LEN as usize).unwrap();
        let _b = ShmStream::attach(fd, sock, 1).unwrap();
        // a peer that writes nonsense into the counters: an error, not a read out of bounds
        // SAFETY: the first page of the stream's memfd: direction 1's tail is its 24th word.
        unsafe { (map.ptr() as *mut u64).add(24).write_volatile(u64::MAX / 2) };
        assert_eq!(a.read(&mut [0u8; 8]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
