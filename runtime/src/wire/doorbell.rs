//! A pool worker's doorbell: a counter in a page both processes map, which the worker bumps
//! after each reply it sends. A caller waiting for a reply watches it for a few microseconds
//! (a short task's reply comes that soon) without a system call, then reads the reply with one
//! `recvmsg`; without it, each look would be a `recvmsg` that finds nothing.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::*};

use crate::sys::shm::{self, Mapping};

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

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is a page long and page-aligned; its first word is only ever
        // accessed atomically, by the two processes.
        unsafe { &*(self.map.ptr() as *const AtomicU64) }
    }

    /// Replies sent so far (as last rung).
    #[inline]
    pub(crate) fn count(&self) -> u64 {
        self.word().load(Acquire)
    }

    /// Rings: one more reply sent.
    #[inline]
    pub(crate) fn ring(&self) {
        self.word().fetch_add(1, Release);
    }
}
