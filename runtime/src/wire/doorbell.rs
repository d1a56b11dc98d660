//! A doorbell: counters in a page both processes map, one bumped after each frame sent (a pool
//! worker's replies; each direction of a pipe). A receiver waiting for a frame watches it for a
//! few microseconds (a short task's reply, an echo, comes that soon) without a system call,
//! then reads the frame with one `recvmsg`; without it, each look would be a `recvmsg` that
//! finds nothing, and without looking at all, each frame would cost the receiver a wake-up.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::*};

use crate::sys::shm::{self, Mapping};

/// How long a waiter on a doorbell spins without yielding: an answer within it costs no system
/// call at all (W9's echo comes back in about 5 us).
const SPIN_ALONE: std::time::Duration = std::time::Duration::from_micros(8);

/// The shared counter.
#[derive(Debug)]
pub(crate) struct Doorbell {
    fd: OwnedFd,
    map: Mapping,
}

impl Doorbell {
    /// A new doorbell (the parent's side).
    pub(crate) fn new() -> std::io::Result<Doorbell> {
        let fd = shm::memfd("multiproc-doorbell", 4096)?;
        Doorbell::attach(fd)
    }

    /// The doorbell behind a received memfd (the worker's side); the memfd must be a page long.
    pub(crate) fn attach(fd: OwnedFd) -> std::io::Result<Doorbell> {
        let (len, _) = shm::file_identity(fd.as_fd())?;
        if len < 4096 {
            return Err(std::io::Error::other(format!("a doorbell of {len} bytes")));
        }
        let map = Mapping::new(fd.as_fd(), 4096)?;
        Ok(Doorbell { fd, map })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < 2);
        // SAFETY: the mapping is a page long and page-aligned, so words 0 and 1 are in it and
        // aligned; they are only ever accessed atomically, by the processes that map it.
        unsafe { &*(self.map.ptr() as *const AtomicU64).add(i) }
    }

    /// Frames sent so far on counter `i` (as last rung).
    #[inline]
    pub(crate) fn count(&self, i: usize) -> u64 {
        self.word(i).load(Acquire)
    }

    /// Rings counter `i`: one more frame sent.
    #[inline]
    pub(crate) fn ring(&self, i: usize) {
        self.word(i).fetch_add(1, Release);
    }

    /// Waits up to `spin` for counter `i` to pass `seen`; whether it did. The first
    /// [`SPIN_ALONE`] without a system call; after it, yielding between looks, so that where
    /// more processes wait than there are cores (a pool of 8 workers on 2), a waiter does not
    /// keep one with work to do off the CPU for long.
    #[inline]
    pub(crate) fn wait_past(&self, i: usize, seen: u64, spin: std::time::Duration) -> bool {
        self.wait(i, seen, SPIN_ALONE, spin)
    }

    /// Waits up to `spin` for counter `i` to pass `seen`, yielding between looks after `alone`.
    #[inline]
    fn wait(&self, i: usize, seen: u64, alone: std::time::Duration, spin: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        let (alone, until) = (start + alone.min(spin), start + spin);
        loop {
            if self.count(i) > seen {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= until {
                return false;
            }
            if now < alone {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}
