//! Waiting on several pipe ends, queues, processes and raw descriptors at once (Python's
//! `multiprocessing.connection.wait`), so one thread can serve many children.

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::channel::pipe::{Connection, End, Receiver};
use crate::channel::queue::{JoinableQueue, Queue, Shared};
use crate::error::{Error, Result};
use crate::process::Process;
use crate::sys::shm;

mod sealed {
    pub trait Sealed {}
}

/// Something [`wait`] can wait on: a pipe end that can receive ([`Connection`],
/// [`Receiver`]), a queue ([`Queue`], [`JoinableQueue`]), or a child [`Process`].
pub trait Waitable: sealed::Sealed {
    /// Not public API: what to wait on.
    #[doc(hidden)]
    fn source(&self) -> Source<'_>;
}

/// Not public API: what a [`Waitable`] is, to [`wait`].
#[doc(hidden)]
#[derive(Debug)]
pub struct Source<'a>(Kind<'a>);

#[derive(Debug)]
enum Kind<'a> {
    /// A pipe end: ready when a message is buffered, or its socket is readable (a message, or
    /// the other end's closing).
    Pipe(&'a End),
    /// A queue: ready when it has an item, or is shut down.
    Queue(&'a Shared),
    /// A process: ready when it has ended.
    /// A process's pidfd, or any descriptor: ready when readable.
    Readable(BorrowedFd<'a>),
}

impl<S, R> sealed::Sealed for Connection<S, R> {}
impl<S, R> Waitable for Connection<S, R> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Pipe(self.end()))
    }
}

impl<T> sealed::Sealed for Receiver<T> {}
impl<T> Waitable for Receiver<T> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Pipe(self.end()))
    }
}

impl<T> sealed::Sealed for Queue<T> {}
impl<T> Waitable for Queue<T> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Queue(self.shared()))
    }
}

impl<T> sealed::Sealed for JoinableQueue<T> {}
impl<T> Waitable for JoinableQueue<T> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Queue(self.shared()))
    }
}

impl sealed::Sealed for BorrowedFd<'_> {}
/// Any descriptor: ready when it is readable (a socket with data, a pipe, an eventfd).
impl Waitable for BorrowedFd<'_> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Readable(*self))
    }
}

impl sealed::Sealed for crate::channel::Descriptor {}
/// A descriptor received from another process: ready when it is readable.
impl Waitable for crate::channel::Descriptor {
    fn source(&self) -> Source<'_> {
        Source(Kind::Readable(std::os::fd::AsFd::as_fd(self)))
    }
}

impl<T> sealed::Sealed for Process<T> {}
impl<T> Waitable for Process<T> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Readable(self.pidfd()))
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no limit), and
/// returns the indices of the ready ones (empty after a timeout). Python's
/// `multiprocessing.connection.wait`.
///
/// A pipe end is ready when a message (or the other end's closing) can be received, a queue
/// when it has an item (or is shut down), a process when it has ended. The wait costs no CPU:
/// it sleeps in `poll`.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use std::time::Duration;
/// use multiproc::{pipe, process_fn, wait, Connection, Waitable};
///
/// #[process_fn]
/// fn answer(conn: Connection<u32>, after_ms: u64) {
///     std::thread::sleep(Duration::from_millis(after_ms));
///     conn.send(after_ms as u32).unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (slow, slow_end) = pipe::<u32, u32>()?;
/// let (fast, fast_end) = pipe::<u32, u32>()?;
/// let _a = answer.spawn(slow_end, 500)?;
/// let _b = answer.spawn(fast_end, 10)?;
/// let ready = wait(&[&slow as &dyn Waitable, &fast], Some(Duration::from_secs(30)))?;
/// assert_eq!(ready, [1]);
/// assert_eq!(fast.recv()?, 10);
/// # Ok(())
/// # }
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let sources: Vec<Source<'_>> = objects.iter().map(|o| o.source()).collect();
    let _polling = Polling::register(&sources);
    let mut first = true;
    loop {
        for s in &sources {
            if let Kind::Queue(q) = s.0 {
                shm::unring(q.doorbell_ref()); // rung from here on counts
            }
        }
        let ready: Vec<usize> = sources.iter().enumerate().filter(|(_, s)| ready_now(s)).map(|(i, _)| i).collect();
        if !ready.is_empty() {
            return Ok(ready);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(Vec::new());
        }
        // A producer may miss the registration for the time a store takes to be seen: the
        // first sleep is short (as a queue's own sleepers' is).
        let cap = first.then_some(Duration::from_millis(1));
        first = false;
        let sleep = [left, cap].into_iter().flatten().min();
        let mut fds: Vec<PollFd<'_>> = sources
            .iter()
            .map(|s| match &s.0 {
                Kind::Pipe(end) => PollFd::from_borrowed_fd(end.fd(), PollFlags::IN),
                Kind::Queue(q) => PollFd::from_borrowed_fd(q.doorbell_ref(), PollFlags::IN),
                Kind::Readable(pidfd) => PollFd::from_borrowed_fd(*pidfd, PollFlags::IN),
            })
            .collect();
        let ts = sleep.map(|t| Timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("could not wait", e.into())),
        }
    }
}

fn ready_now(source: &Source<'_>) -> bool {
    match &source.0 {
        Kind::Pipe(end) => end.buffered() || crate::sys::wait_readable(end.fd(), Some(Instant::now())).unwrap_or(true),
        Kind::Queue(q) => q.len() > 0 || q.header().shutdown.0.load(Acquire) != 0,
        Kind::Readable(pidfd) => crate::sys::wait_readable(*pidfd, Some(Instant::now())).unwrap_or(true),
    }
}

/// The queues' registrations as pollers (their producers ring the doorbell for them), undone
/// when the wait ends.
struct Polling<'a>(Vec<&'a Shared>);

impl<'a> Polling<'a> {
    fn register(sources: &[Source<'a>]) -> Polling<'a> {
        let queues: Vec<&Shared> =
            sources.iter().filter_map(|s| if let Kind::Queue(q) = s.0 { Some(q) } else { None }).collect();
        for q in &queues {
            q.poll_register(true);
        }
        Polling(queues)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        for q in &self.0 {
            q.poll_register(false);
        }
    }
}
