//! A session between rank 0 and a worker rank, in MPI messages and nothing else: each frame is
//! one message (header and payload), sent by the thread that has the frame and received by
//! the thread that waits for it. No socket and no thread in between.
//!
//! **Ending.** Each side ends a session by sending an empty message, and then takes (and
//! drops) the peer's messages up to the peer's own empty one; so a session leaves nothing
//! behind in MPI's queues for the next session with the same rank, whichever side ends first.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mpi::point_to_point::MatchedReceiveVec;
use mpi::traits::*;

use super::TAG_DATA;
use crate::error::Error;
use crate::wire::frame::{self, Frame, RecvError};

/// After a message, how long a receiver keeps looking (yielding the CPU between looks) before
/// it starts to sleep between them.
const HOT: Duration = Duration::from_micros(200);
/// The longest sleep between looks: an idle session's first message waits at most this long.
const COLDEST: Duration = Duration::from_millis(1);

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
        if self.ended {
            return Err(Error::io("the session with an MPI rank has ended", std::io::ErrorKind::BrokenPipe.into()));
        }
        if bytes.len() > i32::MAX as usize {
            return Err(Error::FrameTooLarge { len: bytes.len() as u64, max: i32::MAX as u64 });
        }
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

    /// The next frame if one has come, without waiting.
    pub(crate) fn try_read(&mut self) -> Result<Option<Frame>, RecvError> {
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
        if let Some(done) = self.done.take() {
            done();
        }
    }
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
