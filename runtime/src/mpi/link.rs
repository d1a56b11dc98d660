//! A session between rank 0 and a worker rank, in MPI messages and nothing else: each frame is
//! one message (header and payload), sent by the thread that has the frame and received by
//! the thread that waits for it. No socket and no thread in between.
//!
//! **Posted sends.** The pool's driver and a serving rank post their frames (`MPI_Isend`) and
//! go on: the driver to its other ranks, a rank to its next call, which is usually here
//! already. A blocking send of a 64 KiB frame waits until the peer takes it, which held each
//! rank's next call behind the driver's next look for replies (W3 over MPI, 1,000,000 items in
//! 64 KiB chunks on 2 cores: 0.46-0.75 of the local pool with blocking sends, 0.84-1.17
//! posted). A posted frame's bytes live in its [`Outgoing`] until MPI reports the send done.
//!
//! **Ending.** Each side ends a session by sending an empty message, and then takes (and
//! drops) the peer's messages up to the peer's own empty one; so a session leaves nothing
//! behind in MPI's queues for the next session with the same rank, whichever side ends first.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpi::point_to_point::MatchedReceiveVec;
use mpi::traits::*;

use super::TAG_DATA;
use crate::error::Error;
use crate::wire::frame::{self, Encoded, Frame, RecvError};

/// After a message, how long a receiver keeps looking (yielding the CPU between looks) before
/// it starts to sleep between them.
const HOT: Duration = Duration::from_micros(200);
/// The longest sleep between looks: an idle session's first message waits at most this long.
const COLDEST: Duration = Duration::from_millis(1);

/// Sends posted and not yet known to be complete, at most: posting one more first waits for
/// the oldest (taking the peer's messages meanwhile), so a peer that reads nothing cannot make
/// this side hold an unbounded number of frames.
const MAX_POSTED: usize = 4;

/// The bytes of a posted send, kept alive (and unmoved) until MPI has sent them.
pub(crate) enum Outgoing {
    Owned(Vec<u8>),
    Shared(Arc<Encoded>),
}

impl Outgoing {
    fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Owned(v) => v,
            Outgoing::Shared(e) => &e.bytes,
        }
    }
}

/// A send MPI may still be reading from: the request and the bytes it reads.
struct Posted {
    request: mpi::ffi::MPI_Request,
    _bytes: Outgoing,
}

// SAFETY: an MPI request is a handle, usable from any thread of a process initialized with
// MPI_THREAD_MULTIPLE (the only level a pool over ranks runs at); it is touched only through
// the `&mut Link` that owns it.
unsafe impl Send for Posted {}

/// One end of a session with `peer`.
pub(crate) struct Link {
    peer: i32,
    max_len: usize,
    /// This side sent its empty message.
    ended: bool,
    /// The peer's empty message came (it may still be in `stash`).
    peer_ended: bool,
    /// Messages taken from the peer while a send waited, not yet read (the empty one too).
    stash: VecDeque<Vec<u8>>,
    /// Sends under way, oldest first (MPI delivers them in this order).
    posted: VecDeque<Posted>,
    /// A pipe nobody writes: a descriptor that never becomes readable, where the pool watches a
    /// child's pidfd or socket (a rank's death ends the job; it is never seen here).
    quiet: (OwnedFd, OwnedFd),
    /// Runs once the session has ended (rank 0: the rank is free again).
    done: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("peer", &self.peer).field("ended", &self.ended).finish_non_exhaustive()
    }
}

impl Link {
    /// A session with `peer`; `done` runs once it has ended.
    pub(crate) fn new(peer: i32, done: Option<Box<dyn FnOnce() + Send>>) -> std::io::Result<Link> {
        Ok(Link {
            peer,
            max_len: frame::MAX_FRAME_LEN,
            ended: false,
            peer_ended: false,
            stash: VecDeque::new(),
            posted: VecDeque::new(),
            quiet: crate::sys::liveness_pipe()?,
            done,
        })
    }

    /// A descriptor to build an unused frame reader on (a pipe nobody writes).
    pub(crate) fn quiet_clone(&self) -> std::io::Result<OwnedFd> {
        self.quiet.0.try_clone()
    }

    /// Waits until a message from the peer is here, or `deadline` passes (`false`); looks as
    /// [`read`](Self::read) does.
    pub(crate) fn wait_message(&self, deadline: Option<Instant>) -> bool {
        let since = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            if self.has_message() || self.peer_ended {
                return true;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            backoff(since, now, deadline, &mut pause);
        }
    }

    pub(crate) fn peer(&self) -> i32 {
        self.peer
    }

    /// Accepts payloads of at most `max` bytes from now on.
    pub(crate) fn set_max_len(&mut self, max: usize) {
        self.max_len = max.min(frame::MAX_FRAME_LEN);
    }

    /// Whether a message from the peer is waiting.
    pub(crate) fn has_message(&self) -> bool {
        if !self.stash.is_empty() {
            return true;
        }
        if self.peer_ended {
            return false;
        }
        let comm = mpi::topology::SimpleCommunicator::world();
        comm.process_at_rank(self.peer).immediate_probe_with_tag(TAG_DATA).is_some()
    }

    /// Sends one whole frame (header and payload). A frame with descriptors never gets here
    /// (handles are refused before a frame for a rank is encoded).
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.check_sendable(bytes.len())?;
        self.complete_posted(0);
        let comm = mpi::topology::SimpleCommunicator::world();
        let process = comm.process_at_rank(self.peer);
        // Not a blocking send: a large frame waits until the peer takes it, and the peer may
        // be sending a large reply itself, waiting for this side to take it (a pool keeps two
        // calls in flight per worker). While the send waits, take what the peer sends.
        let stash = &mut self.stash;
        let peer_ended = &mut self.peer_ended;
        mpi::request::scope(|scope| {
            let mut request = process.immediate_send_with_tag(scope, bytes, TAG_DATA);
            loop {
                match request.test() {
                    Ok(_) => return,
                    Err(pending) => request = pending,
                }
                if !*peer_ended {
                    if let Some(probed) = process.immediate_matched_probe_with_tag(TAG_DATA) {
                        let (message, _) = probed.matched_receive_vec::<u8>();
                        *peer_ended = message.is_empty();
                        stash.push_back(message);
                        continue;
                    }
                }
                std::thread::yield_now();
            }
        });
        Ok(())
    }

    fn check_sendable(&self, len: usize) -> Result<(), Error> {
        if self.ended {
            return Err(Error::io("the session with an MPI rank has ended", std::io::ErrorKind::BrokenPipe.into()));
        }
        if len > i32::MAX as usize {
            return Err(Error::FrameTooLarge { len: len as u64, max: i32::MAX as u64 });
        }
        Ok(())
    }

    /// Starts sending one whole frame and returns without waiting for the peer to take it:
    /// the sender goes on (a driver to its other ranks, a rank to its next call) while MPI
    /// moves the bytes. Sends arrive in the order they were posted, and before anything sent
    /// after them.
    pub(crate) fn post(&mut self, bytes: Outgoing) -> Result<(), Error> {
        self.check_sendable(bytes.bytes().len())?;
        self.reap_posted();
        self.complete_posted(MAX_POSTED - 1);
        let data = bytes.bytes();
        let mut request = std::mem::MaybeUninit::<mpi::ffi::MPI_Request>::uninit();
        // SAFETY: `data` stays alive and unmoved until the request completes: it is owned by
        // the `Posted` kept in `self.posted`, which is only dropped once MPI_Test or MPI_Wait
        // has reported the request complete. The length fits an int (checked above).
        let rc = unsafe {
            mpi::ffi::MPI_Isend(
                data.as_ptr().cast(),
                data.len() as i32,
                mpi::ffi::RSMPI_UINT8_T,
                self.peer,
                TAG_DATA,
                mpi::ffi::RSMPI_COMM_WORLD,
                request.as_mut_ptr(),
            )
        };
        if rc != 0 {
            // MPI_ERRORS_ARE_FATAL: not reached in practice, the job ends first
            return Err(Error::io("MPI_Isend failed", std::io::Error::other(format!("MPI error {rc}"))));
        }
        // SAFETY: MPI_Isend returned success, so it wrote the request.
        let request = unsafe { request.assume_init() };
        self.posted.push_back(Posted { request, _bytes: bytes });
        Ok(())
    }

    /// Drops the posted sends MPI has finished, oldest first, without waiting.
    fn reap_posted(&mut self) {
        while let Some(front) = self.posted.front_mut() {
            if !test(&mut front.request) {
                return;
            }
            self.posted.pop_front();
        }
    }

    /// Waits until at most `left` posted sends are under way, taking the peer's messages
    /// meanwhile (the peer may be waiting for this side to take a large one before it takes
    /// ours).
    fn complete_posted(&mut self, left: usize) {
        while self.posted.len() > left {
            self.reap_posted();
            if self.posted.len() <= left {
                return;
            }
            if !self.peer_ended && self.take_one() {
                continue;
            }
            std::thread::yield_now();
        }
    }

    /// Moves one message from the peer into the stash, if one is waiting.
    fn take_one(&mut self) -> bool {
        let comm = mpi::topology::SimpleCommunicator::world();
        let Some(probed) = comm.process_at_rank(self.peer).immediate_matched_probe_with_tag(TAG_DATA) else {
            return false;
        };
        let (message, _) = probed.matched_receive_vec::<u8>();
        self.peer_ended = message.is_empty();
        self.stash.push_back(message);
        true
    }

    /// The next frame if one has come, without waiting.
    pub(crate) fn try_read(&mut self) -> Result<Option<Frame>, RecvError> {
        if !self.posted.is_empty() {
            self.reap_posted();
        }
        let bytes = match self.stash.pop_front() {
            Some(bytes) => bytes,
            None if self.peer_ended => return Err(RecvError::Closed),
            None => {
                let comm = mpi::topology::SimpleCommunicator::world();
                let Some(probed) = comm.process_at_rank(self.peer).immediate_matched_probe_with_tag(TAG_DATA) else {
                    return Ok(None);
                };
                let (bytes, _) = probed.matched_receive_vec::<u8>();
                self.peer_ended = bytes.is_empty();
                bytes
            }
        };
        if bytes.is_empty() {
            return Err(RecvError::Closed);
        }
        frame::from_message(bytes, self.max_len).map(Some)
    }

    /// The next frame, waiting at most until `deadline`. Not a blocking receive: in a process
    /// where several threads wait in MPI at once, Open MPI's blocking waits cost a millisecond
    /// per message on a busy host (measured, W2 over ranks: 300 to 1,000 us per call). Looking
    /// without waiting, with a growing pause once the session is quiet, keeps a busy one at
    /// microseconds.
    pub(crate) fn read(&mut self, deadline: Option<Instant>) -> Result<Frame, RecvError> {
        let since = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            if let Some(frame) = self.try_read()? {
                return Ok(frame);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(RecvError::TimedOut);
            }
            backoff(since, now, deadline, &mut pause);
        }
    }

    /// Whether the peer's empty message came: it has ended its side.
    pub(crate) fn peer_ended(&self) -> bool {
        self.peer_ended && self.stash.is_empty()
    }

    /// Takes (and drops) what has come, without waiting; whether the peer has ended its side.
    pub(crate) fn drain_now(&mut self) -> bool {
        while !self.peer_ended {
            match self.try_read() {
                Ok(Some(_)) | Err(RecvError::Failed(_)) => {}
                Ok(None) => break,
                Err(_) => {}
            }
        }
        self.peer_ended
    }

    /// Ends the session: sends the empty message (once), then takes the peer's messages up to
    /// its own empty one, until `deadline`: whether the peer ended its side by then. A rank
    /// ends its side once its task (if any) is done.
    pub(crate) fn finish(&mut self, deadline: Option<Instant>) -> bool {
        self.hang_up();
        while !self.peer_ended {
            if let Err(RecvError::TimedOut) = self.read(deadline) {
                return false;
            }
        }
        true
    }

    /// [`finish`](Self::finish), waiting as long as the peer takes.
    pub(crate) fn end(&mut self) {
        self.finish(None);
    }

    /// Sends the empty message without waiting for the peer's: the peer sees the session end.
    pub(crate) fn hang_up(&mut self) {
        if !self.ended {
            self.ended = true;
            let comm = mpi::topology::SimpleCommunicator::world();
            comm.process_at_rank(self.peer).send_with_tag(&[0u8; 0][..], TAG_DATA);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.end();
        // the peer took everything up to this side's empty message, so these complete
        self.complete_posted(0);
        if let Some(done) = self.done.take() {
            done();
        }
    }
}

/// Whether a posted send has completed (MPI then frees the request).
fn test(request: &mut mpi::ffi::MPI_Request) -> bool {
    let mut flag = 0;
    // SAFETY: `request` is a live request from MPI_Isend (a completed one is never tested
    // again: its `Posted` is dropped at once); the status is ignored.
    unsafe { mpi::ffi::MPI_Test(request, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE) };
    flag != 0
}

/// One pause of a waiter that started looking at `since`: a yield while the session is hot,
/// then sleeps that double up to [`COLDEST`], never past `deadline`.
pub(crate) fn backoff(since: Instant, now: Instant, deadline: Option<Instant>, pause: &mut Duration) {
    backoff_within(since, now, deadline, pause, HOT, COLDEST);
}

/// [`backoff`] with its own hot time and longest sleep.
pub(crate) fn backoff_within(
    since: Instant,
    now: Instant,
    deadline: Option<Instant>,
    pause: &mut Duration,
    hot: Duration,
    coldest: Duration,
) {
    if now - since < hot {
        std::thread::yield_now();
    } else {
        let left = deadline.map_or(*pause, |d| d.saturating_duration_since(now));
        std::thread::sleep((*pause).min(left));
        *pause = (*pause * 2).min(coldest);
    }
}
