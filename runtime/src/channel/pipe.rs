//! Pipes: two connected ends, typed per direction (Python's `Pipe`).
//!
//! A pipe is a Unix socketpair. Each message is a frame (the same framing as calls to a
//! child), so handles inside a message travel as descriptors with it, and a message over the
//! frame limit is refused before anything is sent. An end that is dropped, or whose process
//! ends, closes its socket: the other end's `recv` returns [`Error::Disconnected`] at once.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys;
use crate::wire::codec;
use crate::wire::doorbell::Doorbell;
use crate::wire::fds;
use crate::wire::frame::{Frame, FrameReader, Kind, OutFrame, RecvError, MAX_FRAME_LEN};
use crate::wire::large;

/// One end's socket: read under one lock, written under another, so that one thread can wait
/// for a message while another sends.
pub(crate) struct End {
    reader: Mutex<FrameReader>,
    /// A duplicate of the socket, for writing.
    writer: Mutex<OwnedFd>,
    /// The reader's socket, to wait on without its lock.
    raw: RawFd,
    /// The pipe's doorbell, if it has one: counter `side` counts this side's frames sent, the
    /// other the frames sent to it.
    bell: Option<(Arc<Doorbell>, usize)>,
    /// Frames received at this end in this process.
    received: std::sync::atomic::AtomicU64,
    /// A connection to another machine (TCP): values go inline, handles cannot go at all.
    remote: bool,
}

/// How long a receiver without a deadline watches the doorbell before it sleeps in `recvmsg`.
/// Measured (W9, 8-byte echoes, this 2-core VM): 33.6 us per round trip sleeping at once,
/// 5.5 us watching first (the floor, a blocking socketpair echo, 31 us).
const SPIN: Duration = Duration::from_micros(20);

impl fmt::Debug for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("End").finish_non_exhaustive()
    }
}

impl End {
    fn new(sock: OwnedFd, bell: Option<(Arc<Doorbell>, usize)>) -> Result<End> {
        let writer = sock.try_clone().map_err(|e| Error::io("could not duplicate a pipe's socket", e))?;
        let raw = sock.as_raw_fd();
        let received = std::sync::atomic::AtomicU64::new(0);
        Ok(End {
            reader: Mutex::new(FrameReader::new(sock)),
            writer: Mutex::new(writer),
            raw,
            bell,
            received,
            remote: false,
        })
    }

    /// Notes a frame received. (Received in this process only: another holder of this end
    /// makes the count here low, so that it never waits for what is already there.)
    fn got_one(&self) {
        self.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn reader(&self) -> MutexGuard<'_, FrameReader> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The socket, to wait on.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `raw` is the reader's socket, which is owned by `self` and closed only when
        // `self` is dropped; the borrow cannot outlive `self`.
        unsafe { BorrowedFd::borrow_raw(self.raw) }
    }

    /// Whether a whole message is already buffered (the socket would not show it).
    pub(crate) fn buffered(&self) -> bool {
        self.reader.try_lock().is_ok_and(|r| r.has_frame())
    }

    fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let encode = || {
            fds::collect(|| {
                let mut frame = OutFrame::new(Kind::Message);
                crate::panic::catch(|| codec::encode_into("message", value, frame.payload()))
                    .unwrap_or_else(|r| {
                        Err(codec::serialize_panicked("message", std::any::type_name::<T>(), r.message))
                    })
                    .map(|()| frame)
            })
        };
        let (frame, fds) = if self.remote { large::inline_only(encode) } else { encode() };
        let mut frame = frame?;
        if self.remote && !fds.fds.is_empty() {
            return Err(Error::Encode {
                what: "message",
                type_name: std::any::type_name::<T>().to_string(),
                message: "it holds handles (queues, locks, pipe ends, shared memory): they are descriptors of this \
                          machine and cannot cross a TCP connection; send plain data, or use a manager's proxies"
                    .into(),
            });
        }
        frame.attach(fds);
        self.send_frame(frame)
    }

    fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        crate::wire::frame::check_len(bytes.len(), MAX_FRAME_LEN)?; // before copying a byte
        if !self.remote && large::is_large(bytes.len()) {
            // out of line: the frame names the memfd (the only descriptor a Bytes frame has)
            let (index, table) = fds::collect(|| fds::put_large(bytes));
            if let Some(index) = index {
                let mut frame = OutFrame::new(Kind::Bytes);
                frame.payload().extend_from_slice(&(bytes.len() as u64 | large::OUT_OF_LINE).to_le_bytes());
                frame.payload().extend_from_slice(&index.to_le_bytes());
                frame.attach(table);
                return self.send_frame(frame);
            }
        }
        // the caller's bytes as they are: header and payload in one sendmsg, no copy
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let sent = crate::wire::frame::send_borrowed(writer.as_fd(), Kind::Bytes, bytes, MAX_FRAME_LEN);
        self.sent(sent)
    }

    /// Rings the doorbell for a frame sent, and says a gone peer as [`Error::Disconnected`].
    fn sent(&self, sent: Result<()>) -> Result<()> {
        if let (Ok(()), Some((bell, side))) = (&sent, &self.bell) {
            bell.ring(*side);
        }
        match sent {
            Err(Error::Io { error: source, .. })
                if matches!(source.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)) =>
            {
                Err(Error::Disconnected)
            }
            other => other,
        }
    }

    fn send_frame(&self, frame: OutFrame) -> Result<()> {
        frame.check_len(MAX_FRAME_LEN)?;
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let sent = frame.send(writer.as_fd(), MAX_FRAME_LEN);
        self.sent(sent)
    }

    /// The next frame, waiting as `wait` says. Without a deadline, the reader blocks in
    /// `recvmsg` itself, holding the lock: one system call for a message, no `poll` first
    /// (others without a deadline queue on the lock). With one, it never waits for the lock:
    /// it reads only while nobody else does, and waits on the socket (or, while another thread
    /// is reading, a little at a time), so each deadline holds.
    fn recv_frame(&self, wait: Wait) -> Result<Frame> {
        let outcome = |r: std::result::Result<Frame, RecvError>| match r {
            Ok(frame) => Some(Ok(frame)),
            Err(RecvError::TimedOut) => None,
            Err(RecvError::Closed | RecvError::Truncated) => Some(Err(Error::Disconnected)),
            Err(RecvError::Failed(e)) => Some(Err(e)),
        };
        let Some(deadline) = wait.deadline() else {
            let mut reader = self.reader();
            if let Some((bell, side)) = &self.bell {
                let seen = self.received.load(std::sync::atomic::Ordering::Relaxed);
                if !reader.has_frame() {
                    bell.wait_past(1 - side, seen, SPIN);
                }
            }
            loop {
                if let Some(done) = outcome(reader.read(None)) {
                    if done.is_ok() {
                        self.got_one();
                    }
                    return done;
                }
            }
        };
        loop {
            let reader = match self.reader.try_lock() {
                Ok(r) => Some(r),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            let busy = reader.is_none();
            if let Some(mut reader) = reader {
                if let Some(done) = reader.try_read().map_or_else(|e| outcome(Err(e)), |f| f.map(Ok)) {
                    if done.is_ok() {
                        self.got_one();
                    }
                    return done;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Empty { waited: wait.timeout() });
            }
            if busy {
                std::thread::sleep((deadline - now).min(Duration::from_micros(200)));
            } else {
                sys::wait_readable(self.fd(), Some(deadline)).map_err(|e| Error::io("could not wait on a pipe", e))?;
            }
        }
    }

    fn recv<T: DeserializeOwned>(&self, wait: Wait) -> Result<T> {
        let frame = self.recv_frame(wait)?;
        match frame.kind {
            Kind::Message => {
                let payload = frame.payload;
                fds::provide(frame.fds, || {
                    crate::panic::catch(|| codec::decode::<T>("message", &payload)).unwrap_or_else(|r| {
                        Err(codec::deserialize_panicked("message", std::any::type_name::<T>(), r.message))
                    })
                })
                .0
            }
            other => Err(Error::MessageKind { expected: "a message (send)", found: kind_name(other) }),
        }
    }

    fn recv_bytes(&self, wait: Wait) -> Result<Vec<u8>> {
        let frame = self.recv_frame(wait)?;
        match frame.kind {
            Kind::Bytes if frame.fds.is_empty() => Ok(frame.payload),
            Kind::Bytes => {
                let bad = |reason: String| Error::BadFrame { reason: format!("bytes out of line: {reason}") };
                let p = &frame.payload;
                let word = (p.len() == 12).then(|| u64::from_le_bytes(p[..8].try_into().expect("8 bytes")));
                let Some(word) = word.filter(|w| w & large::OUT_OF_LINE != 0) else {
                    return Err(bad(format!("{} bytes, and {} descriptors", p.len(), frame.fds.len())));
                };
                let index = u32::from_le_bytes(p[8..].try_into().expect("4 bytes"));
                let len = (word & !large::OUT_OF_LINE) as usize;
                fds::provide(frame.fds, || fds::with_received(index, |fd| large::read::<u8>(fd, len))).0.map_err(bad)
            }
            other => Err(Error::MessageKind { expected: "bytes (send_bytes)", found: kind_name(other) }),
        }
    }

    fn poll(&self, timeout: Duration) -> Result<bool> {
        if self.buffered() {
            return Ok(true);
        }
        sys::wait_readable(self.fd(), Some(Instant::now() + timeout)).map_err(|e| Error::io("could not poll a pipe", e))
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Message => "a message (send)",
        Kind::Bytes => "bytes (send_bytes)",
        _ => "a frame that is not a pipe message",
    }
}

/// How long a receive may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Until something comes.
    Forever,
    /// Not at all.
    Now,
    /// At most this long (from now).
    For(Duration, Instant),
}

impl Wait {
    pub(crate) fn at_most(timeout: Duration) -> Wait {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => Wait::For(timeout, deadline),
            None => Wait::Forever,
        }
    }

    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Forever => None,
            Wait::Now => Some(Instant::now()),
            Wait::For(_, deadline) => Some(deadline),
        }
    }

    /// The time asked for, for the error when it runs out.
    pub(crate) fn timeout(self) -> Option<Duration> {
        match self {
            Wait::For(timeout, _) => Some(timeout),
            _ => None,
        }
    }
}

/// Creates a pipe: two connected ends. The first sends `A` and receives `B`, the second sends
/// `B` and receives `A` (for one type both ways, `A` = `B`). Python's `Pipe()`.
///
/// Either end can be passed to a `#[process_fn]` as an argument, or sent over another pipe.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{pipe, process_fn, Connection};
///
/// /// Answers each number with its square, until the other end hangs up.
/// #[process_fn]
/// fn squarer(conn: Connection<u64>) {
///     while let Ok(x) = conn.recv() {
///         conn.send(x * x).unwrap();
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (here, there) = pipe::<u64, u64>()?;
/// let child = squarer.spawn(there)?;
/// for x in 1..4 {
///     here.send(x)?;
///     assert_eq!(here.recv()?, x * x);
/// }
/// drop(here); // the child's recv ends with Disconnected, and it returns
/// child.join()?;
/// # Ok(())
/// # }
/// ```
pub fn pipe<A, B>() -> Result<(Connection<A, B>, Connection<B, A>)> {
    let (a, b) = sys::socketpair().map_err(|e| Error::io("could not create a pipe", e))?;
    let bell = Doorbell::new().ok().map(Arc::new); // without one, receivers sleep at once
    let (bell_a, bell_b) = (bell.clone().map(|b| (b, 0)), bell.map(|b| (b, 1)));
    Ok((Connection::from_socket(a, bell_a)?, Connection::from_socket(b, bell_b)?))
}

/// Creates a one-way pipe: what the [`Sender`] sends, the [`Receiver`] receives. Python's
/// `Pipe(duplex=False)`, which also returns the receiving end first.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// let (rx, tx) = multiproc::pipe_one_way::<String>()?;
/// tx.send("hello".to_string())?;
/// assert_eq!(rx.recv()?, "hello");
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn pipe_one_way<T>() -> Result<(Receiver<T>, Sender<T>)> {
    let (r, w) = sys::socketpair().map_err(|e| Error::io("could not create a pipe", e))?;
    // the kernel holds each end to its direction
    let _ = rustix::net::shutdown(&r, rustix::net::Shutdown::Write);
    let _ = rustix::net::shutdown(&w, rustix::net::Shutdown::Read);
    let bell = Doorbell::new().ok().map(Arc::new);
    let (bell_r, bell_w) = (bell.clone().map(|b| (b, 0)), bell.map(|b| (b, 1)));
    Ok((
        Receiver { end: Arc::new(End::new(r, bell_r)?), _types: PhantomData },
        Sender { end: Arc::new(End::new(w, bell_w)?), _types: PhantomData },
    ))
}

/// One end of a [`pipe`]: sends `S`, receives `R` (Python's `Connection`).
///
/// Clones share the end; it closes when the last clone (in every process that has one) is
/// dropped. One thread may wait in `recv` while another sends.
pub struct Connection<S, R = S> {
    end: Arc<End>,
    _types: PhantomData<fn(S) -> R>,
}

/// The sending end of a [`pipe_one_way`].
pub struct Sender<T> {
    end: Arc<End>,
    _types: PhantomData<fn(T)>,
}

/// The receiving end of a [`pipe_one_way`].
pub struct Receiver<T> {
    end: Arc<End>,
    _types: PhantomData<fn() -> T>,
}

impl<S, R> Connection<S, R> {
    fn from_socket(sock: OwnedFd, bell: Option<(Arc<Doorbell>, usize)>) -> Result<Self> {
        Ok(Connection { end: Arc::new(End::new(sock, bell)?), _types: PhantomData })
    }

    /// A connection over a socket from a [`Listener`](crate::Listener) or to one; `remote`
    /// for TCP (values inline, no handles).
    pub(crate) fn from_stream(sock: OwnedFd, remote: bool) -> Result<Self> {
        let mut end = End::new(sock, None)?;
        end.remote = remote;
        Ok(Connection { end: Arc::new(end), _types: PhantomData })
    }

    pub(crate) fn end(&self) -> &End {
        &self.end
    }
}

impl<S: Serialize, R: DeserializeOwned> Connection<S, R> {
    /// Sends a message: encoded here (an error if that fails, or if it is over the frame
    /// limit), and written before this returns. [`Error::Disconnected`] if the other end is
    /// gone.
    pub fn send(&self, message: impl Borrow<S>) -> Result<()> {
        self.end.send(message.borrow())
    }

    /// Waits for the next message. [`Error::Disconnected`] once the other end is gone and
    /// every message it sent has been received.
    pub fn recv(&self) -> Result<R> {
        self.end.recv(Wait::Forever)
    }

    /// Waits at most `timeout` for the next message: [`Error::Empty`] if none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R> {
        self.end.recv(Wait::at_most(timeout))
    }

    /// The next message if one is there now: [`Error::Empty`] if not.
    pub fn try_recv(&self) -> Result<R> {
        self.end.recv(Wait::Now)
    }

    /// Whether something can be received within `timeout`: a message, or the other end's
    /// closing (Python's `poll`).
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.end.poll(timeout)
    }

    /// Sends raw bytes, for the other end's [`recv_bytes`](Connection::recv_bytes).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.end.send_bytes(bytes)
    }

    /// Waits for bytes sent with [`send_bytes`](Connection::send_bytes).
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.end.recv_bytes(Wait::Forever)
    }

    /// Receives bytes sent with `send_bytes` into `buf` (Python's `recv_bytes_into`): how many
    /// there were. A message longer than `buf` is [`Error::BufferTooShort`], which holds the
    /// message whole: nothing is lost.
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        bytes_into(self.end.recv_bytes(Wait::Forever)?, buf)
    }

    /// Closes this end (in this process): the same as dropping it.
    pub fn close(self) {}
}

impl<T: Serialize> Sender<T> {
    /// Sends a message; see [`Connection::send`].
    pub fn send(&self, message: impl Borrow<T>) -> Result<()> {
        self.end.send(message.borrow())
    }

    /// Sends raw bytes, for the receiver's [`recv_bytes`](Receiver::recv_bytes).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.end.send_bytes(bytes)
    }

    /// Closes this end (in this process): the same as dropping it.
    pub fn close(self) {}
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Waits for the next message; see [`Connection::recv`].
    pub fn recv(&self) -> Result<T> {
        self.end.recv(Wait::Forever)
    }

    /// Waits at most `timeout` for the next message: [`Error::Empty`] if none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.end.recv(Wait::at_most(timeout))
    }

    /// The next message if one is there now: [`Error::Empty`] if not.
    pub fn try_recv(&self) -> Result<T> {
        self.end.recv(Wait::Now)
    }

    /// Whether something can be received within `timeout`.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.end.poll(timeout)
    }

    /// Waits for bytes sent with [`Sender::send_bytes`].
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.end.recv_bytes(Wait::Forever)
    }

    /// Receives bytes sent with `send_bytes` into `buf` (Python's `recv_bytes_into`): how many
    /// there were. A message longer than `buf` is [`Error::BufferTooShort`], which holds the
    /// message whole: nothing is lost.
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        bytes_into(self.end.recv_bytes(Wait::Forever)?, buf)
    }

    /// Closes this end (in this process): the same as dropping it.
    pub fn close(self) {}
}

impl<T> Receiver<T> {
    pub(crate) fn end(&self) -> &End {
        &self.end
    }
}

/// Copies a received message into `buf`, or gives it back in the error.
fn bytes_into(message: Vec<u8>, buf: &mut [u8]) -> Result<usize> {
    if message.len() > buf.len() {
        return Err(Error::BufferTooShort { capacity: buf.len(), message });
    }
    buf[..message.len()].copy_from_slice(&message);
    Ok(message.len())
}

/// The messages arriving at a [`Connection`] or [`Receiver`], each from `recv`, until the other
/// end is gone and every message it sent has been received ([`Error::Disconnected`] ends it).
/// Another error (a message that does not decode, say) is yielded, and iteration goes on.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// let (rx, tx) = multiproc::pipe_one_way::<String>()?;
/// tx.send("a".to_string())?;
/// tx.send("b".to_string())?;
/// drop(tx); // the other end is gone: iteration ends after what it sent
/// let got: Vec<String> = rx.iter().collect::<multiproc::Result<_>>()?;
/// assert_eq!(got, ["a", "b"]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub struct RecvIter<'a, R> {
    end: &'a End,
    done: bool,
    _types: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Iterator for RecvIter<'_, R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if self.done {
            return None;
        }
        match self.end.recv(Wait::Forever) {
            Err(Error::Disconnected) => {
                self.done = true;
                None
            }
            r => Some(r),
        }
    }
}

impl<S: Serialize, R: DeserializeOwned> Connection<S, R> {
    /// The messages, received one by one until the other end is gone: see [`RecvIter`].
    pub fn iter(&self) -> RecvIter<'_, R> {
        RecvIter { end: &self.end, done: false, _types: PhantomData }
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// The messages, received one by one until the other end is gone: see [`RecvIter`].
    pub fn iter(&self) -> RecvIter<'_, T> {
        RecvIter { end: &self.end, done: false, _types: PhantomData }
    }
}

impl<'a, S: Serialize, R: DeserializeOwned> IntoIterator for &'a Connection<S, R> {
    type Item = Result<R>;
    type IntoIter = RecvIter<'a, R>;

    fn into_iter(self) -> RecvIter<'a, R> {
        self.iter()
    }
}

impl<'a, T: DeserializeOwned> IntoIterator for &'a Receiver<T> {
    type Item = Result<T>;
    type IntoIter = RecvIter<'a, T>;

    fn into_iter(self) -> RecvIter<'a, T> {
        self.iter()
    }
}

macro_rules! handle_impls {
    ($ty:ident < $($p:ident),* >, $what:literal) => {
        impl<$($p),*> Clone for $ty<$($p),*> {
            fn clone(&self) -> Self {
                $ty { end: Arc::clone(&self.end), _types: PhantomData }
            }
        }

        impl<$($p),*> fmt::Debug for $ty<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct($what).field("fd", &self.end.fd()).finish()
            }
        }

        /// Crosses to another process as its socket, with the frame that carries it.
        impl<$($p),*> Serialize for $ty<$($p),*> {
            fn serialize<Z: Serializer>(&self, s: Z) -> std::result::Result<Z::Ok, Z::Error> {
                let bell = self.end.bell.as_ref().map(|(b, side)| (fds::FdRef(b.fd()), *side as u8));
                (fds::FdRef(self.end.fd()), bell).serialize(s)
            }
        }

        impl<'de, $($p),*> Deserialize<'de> for $ty<$($p),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let (fd, bell) = <(fds::Fd, Option<(fds::Fd, u8)>)>::deserialize(d)?;
                let bell = match bell {
                    Some((_, side)) if side > 1 => return Err(serde::de::Error::custom(format!("a pipe end of side {side}"))),
                    Some((bell, side)) => {
                        let bell = Doorbell::attach(bell.0).map_err(serde::de::Error::custom)?;
                        Some((Arc::new(bell), side as usize))
                    }
                    None => None,
                };
                let end = End::new(fd.0, bell).map_err(serde::de::Error::custom)?;
                Ok($ty { end: Arc::new(end), _types: PhantomData })
            }
        }
    };
}

handle_impls!(Connection<S, R>, "Connection");
handle_impls!(Sender<T>, "Sender");
handle_impls!(Receiver<T>, "Receiver");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_go_both_ways_typed() {
        let (a, b) = pipe::<String, u32>().unwrap();
        a.send("four".to_string()).unwrap();
        assert_eq!(b.recv().unwrap(), "four");
        b.send(4).unwrap();
        assert_eq!(a.recv().unwrap(), 4);
        assert!(matches!(a.try_recv(), Err(Error::Empty { waited: None })));
        let start = Instant::now();
        assert!(matches!(a.recv_timeout(Duration::from_millis(30)), Err(Error::Empty { waited: Some(_) })));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(!a.poll(Duration::ZERO).unwrap());
        b.send_bytes(b"raw").unwrap();
        assert!(a.poll(Duration::from_secs(5)).unwrap());
        assert!(matches!(a.recv(), Err(Error::MessageKind { .. })), "bytes are not a message");
        b.send(5).unwrap();
        assert!(matches!(a.recv_bytes(), Err(Error::MessageKind { .. })));
    }

    /// A receiver without a deadline blocks in `recvmsg` holding the reader: one with a
    /// deadline on the same end must still return on time, and a `try_recv` at once; what is
    /// sent goes to one of them, whole.
    #[test]
    fn a_deadline_holds_while_another_thread_blocks_on_the_same_end() {
        let (a, b) = pipe::<u64, u64>().unwrap();
        let a = std::sync::Arc::new(a);
        let blocked = {
            let a = a.clone();
            std::thread::spawn(move || a.recv())
        };
        std::thread::sleep(Duration::from_millis(50)); // it is in recvmsg now
        let start = Instant::now();
        assert!(matches!(a.recv_timeout(Duration::from_millis(100)), Err(Error::Empty { .. })));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
        let start = Instant::now();
        assert!(matches!(a.try_recv(), Err(Error::Empty { waited: None })));
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        b.send(7).unwrap();
        assert_eq!(blocked.join().unwrap().unwrap(), 7);
        // and the other way: two blocked forever, two messages, one each
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || a.recv())
            })
            .collect();
        b.send(1).unwrap();
        b.send(2).unwrap();
        let mut got: Vec<u64> = waiters.into_iter().map(|w| w.join().unwrap().unwrap()).collect();
        got.sort();
        assert_eq!(got, [1, 2]);
    }

    /// A pipe end arrives with its socket and its doorbell: a doorbell that is not a page of
    /// memory, or a side that is neither, is a decode error that says so.
    #[test]
    fn a_pipe_end_with_a_bad_doorbell_is_refused() {
        let (sock, _other) = sys::socketpair().unwrap();
        let page = crate::sys::shm::memfd("test", 4096).unwrap();
        let (not_memory, _w) = rustix::pipe::pipe().unwrap();
        let decode = |bell: BorrowedFd<'_>, side: u8| {
            let (bytes, table) = fds::collect(|| {
                let mut out = Vec::new();
                codec::encode_into("argument", &(fds::FdRef(sock.as_fd()), Some((fds::FdRef(bell), side))), &mut out)
                    .map(|()| out)
            });
            fds::provide(table.fds, || codec::decode::<Connection<u8, u8>>("argument", &bytes.unwrap())).0
        };
        let e = decode(page.as_fd(), 5).unwrap_err().to_string();
        assert!(e.contains("a pipe end of side 5"), "{e}");
        let e = decode(not_memory.as_fd(), 0).unwrap_err().to_string();
        assert!(e.contains("a doorbell of 0 bytes"), "{e}");
        assert!(decode(page.as_fd(), 1).is_ok());
    }

    #[test]
    fn a_dropped_end_is_disconnected_for_the_other_at_once() {
        let (a, b) = pipe::<u8, u8>().unwrap();
        a.send(1).unwrap();
        drop(a);
        assert_eq!(b.recv().unwrap(), 1, "what was sent before arrives");
        assert!(matches!(b.recv(), Err(Error::Disconnected)));
        assert!(matches!(b.send(2), Err(Error::Disconnected)));
    }

    #[test]
    fn a_one_way_pipe_goes_one_way() {
        let (rx, tx) = pipe_one_way::<Vec<u8>>().unwrap();
        tx.send(vec![1, 2, 3]).unwrap();
        assert_eq!(rx.recv().unwrap(), [1, 2, 3]);
        drop(tx);
        assert!(matches!(rx.recv(), Err(Error::Disconnected)));
    }

    #[test]
    fn a_handle_is_an_error_outside_a_frame() {
        let (a, _b) = pipe::<u8, u8>().unwrap();
        let mut out = Vec::new();
        let err = codec::encode_into("value", &a, &mut out).unwrap_err();
        assert!(err.to_string().contains("cannot be serialized anywhere else"), "{err}");
        assert!(out.is_empty(), "nothing written");
    }

    #[test]
    fn a_pipe_end_travels_over_another_pipe() {
        let (a, b) = pipe::<Connection<u8, u8>, u8>().unwrap();
        let (x, y) = pipe::<u8, u8>().unwrap();
        a.send(y).unwrap();
        let y = b.recv().unwrap();
        x.send(9).unwrap();
        assert_eq!(y.recv().unwrap(), 9);
    }
}
