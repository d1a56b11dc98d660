//! Length-prefixed frames over a stream socket, with file descriptors alongside.
//!
//! A frame is an 8-byte header, `len: u32 LE | kind: u8 | magic: u8 | nfds: u16 LE`, then
//! `len` payload bytes. `nfds` file descriptors travel with the frame's first bytes as
//! `SCM_RIGHTS`, at most [`FDS_PER_MESSAGE`] with each byte (the kernel's limit per message);
//! the reader queues every descriptor it receives and hands each frame the ones it announced.
//! A length over the connection's limit ([`MAX_FRAME_LEN`] at most) is refused on both sides,
//! and a reader never allocates for a length before the bytes arrive.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::error::Error;
use crate::sys;

/// The largest payload a frame may carry: 1 GiB.
pub const MAX_FRAME_LEN: usize = 1 << 30;
/// The most file descriptors one frame may carry: the handles passed in one call or result.
pub const MAX_FDS_PER_FRAME: usize = 1024;
/// The most descriptors one `sendmsg` carries (the kernel's `SCM_MAX_FD`).
pub(crate) const FDS_PER_MESSAGE: usize = 253;

/// The bytes of a frame before its payload.
pub(crate) const HEADER_LEN: usize = 8;
const MAGIC: u8 = 0x4d; // "M"
const READ_CHUNK: usize = 64 * 1024;
/// Growth step when a large payload arrives: memory follows the bytes actually received.
const GROW_STEP: usize = 16 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Parent to child, first: build id and options.
    Hello = 1,
    /// Parent to child: run a function.
    Call = 2,
    /// Child to parent: the function returned.
    Return = 3,
    /// Child to parent: the function panicked.
    Panic = 4,
    /// Child to parent: the call could not be made (unknown name, bad arguments, ...).
    Fail = 5,
    /// Child to parent: the handshake passed, the child is a worker of the same build.
    Ready = 6,
    /// Parent to child: run a function on many argument tuples (a chunk of a map).
    Batch = 7,
    /// Child to parent: the results of a batch.
    BatchReturn = 8,
    /// Over a pipe: a typed message.
    Message = 9,
    /// Over a pipe: raw bytes (`send_bytes`).
    Bytes = 10,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Call,
            3 => Kind::Return,
            4 => Kind::Panic,
            5 => Kind::Fail,
            6 => Kind::Ready,
            7 => Kind::Batch,
            8 => Kind::BatchReturn,
            9 => Kind::Message,
            10 => Kind::Bytes,
            _ => return None,
        })
    }
}

/// A frame being built: the header is reserved up front so the payload is encoded in place and
/// the whole frame goes out in one write.
#[derive(Debug)]
pub(crate) struct OutFrame {
    buf: Vec<u8>,
    kind: Kind,
    /// The descriptors it carries: those of the handles in its payload, and any other.
    pub(crate) fds: Vec<OwnedFd>,
    /// Bytes of its payload put out of line, in memfds among `fds`: they count toward the limit.
    pub(crate) large: u64,
    /// Keeps those memfds from reuse until the frame is gone.
    pub(crate) keep: Vec<crate::wire::large::InFlight>,
}

/// A frame ready to be written, by a caller that writes it in pieces (the pool's driver).
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    /// Keeps its large values' memfds from reuse while it may be sent (again, to another
    /// worker after a death).
    pub(crate) _keep: Vec<crate::wire::large::InFlight>,
}

impl OutFrame {
    pub(crate) fn new(kind: Kind) -> Self {
        Self::with_capacity(kind, 64)
    }

    pub(crate) fn with_capacity(kind: Kind, payload: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + payload);
        buf.resize(HEADER_LEN, 0);
        OutFrame { buf, kind, fds: Vec::new(), large: 0, keep: Vec::new() }
    }

    /// Attaches what encoding its payload put beside it: descriptors, and large values' memfds.
    pub(crate) fn attach(&mut self, table: crate::wire::fds::Table) {
        self.fds = table.fds;
        self.large = table.large;
        self.keep = table.keep;
    }

    /// The payload buffer, to append to.
    pub(crate) fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The payload's length so far.
    pub(crate) fn payload_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Whether the payload (with what went out of line) fits a connection whose frames may
    /// carry at most `max` bytes.
    pub(crate) fn check_len(&self, max: usize) -> Result<(), Error> {
        check_len(self.payload_len().saturating_add(self.large as usize), max)
    }

    /// Writes the frame and its descriptors, blocking until all of it is sent. `max`: the
    /// connection's frame limit.
    pub(crate) fn send(self, sock: BorrowedFd<'_>, max: usize) -> Result<(), Error> {
        let encoded = self.finish(max)?;
        send_all(sock, &encoded.bytes, &encoded.fds)
            .map_err(|e| Error::io("could not send a frame to the other process", e))
    }

    /// The whole frame, header filled in, for a caller that writes it itself.
    pub(crate) fn finish(mut self, max: usize) -> Result<Encoded, Error> {
        self.check_len(max)?;
        let header = header(self.payload_len(), self.kind, self.fds.len(), max)?;
        self.buf[..HEADER_LEN].copy_from_slice(&header);
        Ok(Encoded { bytes: self.buf, fds: self.fds, _keep: self.keep })
    }
}

/// A payload of `len` bytes on a connection whose limit is `max` (never above
/// [`MAX_FRAME_LEN`]).
#[inline]
pub(crate) fn check_len(len: usize, max: usize) -> Result<(), Error> {
    let max = max.min(MAX_FRAME_LEN);
    match len > max {
        true => Err(Error::FrameTooLarge { len: len as u64, max: max as u64 }),
        false => Ok(()),
    }
}

/// The header of a frame, or why it cannot be sent.
fn header(len: usize, kind: Kind, nfds: usize, max: usize) -> Result<[u8; HEADER_LEN], Error> {
    check_len(len, max)?;
    if nfds > MAX_FDS_PER_FRAME {
        return Err(Error::BadFrame {
            reason: format!("{nfds} file descriptors in one frame (at most {MAX_FDS_PER_FRAME})"),
        });
    }
    let mut h = [0; HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4] = kind as u8;
    h[5] = MAGIC;
    h[6..8].copy_from_slice(&(nfds as u16).to_le_bytes());
    Ok(h)
}

/// Writes a frame of `kind` with no descriptors whose payload is the caller's `payload`, not
/// copied: the header and the payload as two buffers of each `sendmsg`, blocking as needed.
pub(crate) fn send_borrowed(sock: BorrowedFd<'_>, kind: Kind, payload: &[u8], max: usize) -> Result<(), Error> {
    let head = header(payload.len(), kind, 0, max)?;
    let total = HEADER_LEN + payload.len();
    let mut sent = 0;
    while sent < total {
        let parts = if sent < HEADER_LEN {
            [IoSlice::new(&head[sent..]), IoSlice::new(payload)]
        } else {
            [IoSlice::new(&payload[sent - HEADER_LEN..]), IoSlice::new(&[])]
        };
        let mut control = SendAncillaryBuffer::default();
        match rustix::net::sendmsg(sock, &parts, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("could not send a frame to the other process", e.into())),
        }
    }
    Ok(())
}

/// Writes a whole frame, its descriptors with its first bytes, blocking as needed.
pub(crate) fn send_all(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        match send_part(sock, bytes, fds, sent, SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes more of a frame of which `sent` bytes are out: one `sendmsg` of one byte for each
/// group of [`FDS_PER_MESSAGE`] descriptors (byte `i` carries group `i`), then the rest at once.
/// Returns how many bytes went out.
pub(crate) fn send_part(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[OwnedFd],
    sent: usize,
    flags: SendFlags,
) -> io::Result<usize> {
    let groups = fds.len().div_ceil(FDS_PER_MESSAGE);
    let result = if sent < groups {
        let group: Vec<BorrowedFd<'_>> =
            fds.chunks(FDS_PER_MESSAGE).nth(sent).expect("a group per byte").iter().map(|fd| fd.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&group));
        rustix::net::sendmsg(sock, &[IoSlice::new(&bytes[sent..sent + 1])], &mut control, flags)
    } else {
        rustix::net::send(sock, &bytes[sent..], flags)
    };
    result.map_err(io::Error::from)
}

/// A frame that arrived.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: Kind,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum RecvError {
    /// The peer closed the connection cleanly between two frames.
    Closed,
    /// The peer closed the connection in the middle of a frame (it died while writing): the
    /// part that came is dropped.
    Truncated,
    /// The deadline passed; whatever was read so far is kept for the next call.
    TimedOut,
    /// The peer broke the protocol or the connection failed.
    Failed(Error),
}

/// Reads frames from a stream socket, buffering small reads and queueing received descriptors.
#[derive(Debug)]
pub(crate) struct FrameReader {
    sock: OwnedFd,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    /// A large payload being received directly (header already consumed).
    partial: Option<Partial>,
    /// The longest payload accepted.
    max_len: usize,
}

#[derive(Debug)]
struct Partial {
    kind: Kind,
    nfds: usize,
    len: usize,
    payload: Vec<u8>,
}

impl FrameReader {
    pub(crate) fn new(sock: OwnedFd) -> Self {
        FrameReader {
            sock,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            partial: None,
            max_len: MAX_FRAME_LEN,
        }
    }

    /// Accepts payloads of at most `max` bytes from now on (never more than [`MAX_FRAME_LEN`]).
    pub(crate) fn set_max_len(&mut self, max: usize) {
        self.max_len = max.min(MAX_FRAME_LEN);
    }

    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Reads the next frame, waiting at most until `deadline`.
    pub(crate) fn read(&mut self, deadline: Option<Instant>) -> Result<Frame, RecvError> {
        loop {
            if let Some(frame) = self.try_take()? {
                return Ok(frame);
            }
            if !self.fill(deadline, true)? {
                unreachable!("a waiting fill reads something or fails");
            }
        }
    }

    /// Whether a whole frame is already buffered (a `poll` on the socket would not show it).
    pub(crate) fn has_frame(&self) -> bool {
        if self.partial.is_some() || self.end - self.start < HEADER_LEN {
            return false;
        }
        let h = &self.buf[self.start..self.start + HEADER_LEN];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        self.end - self.start - HEADER_LEN >= len
    }

    /// Reads the next frame if one is complete, without waiting.
    pub(crate) fn try_read(&mut self) -> Result<Option<Frame>, RecvError> {
        loop {
            if let Some(frame) = self.try_take()? {
                return Ok(Some(frame));
            }
            if !self.fill(None, false)? {
                return Ok(None);
            }
        }
    }

    /// Takes a complete frame from what is buffered, if there is one.
    fn try_take(&mut self) -> Result<Option<Frame>, RecvError> {
        if let Some(p) = &mut self.partial {
            let want = p.len - p.payload.len();
            let take = want.min(self.end - self.start);
            p.payload.extend_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
            if p.payload.len() < p.len {
                return Ok(None);
            }
            let p = self.partial.take().expect("checked above");
            return self.finish(p.kind, p.nfds, p.payload).map(Some);
        }
        if self.end - self.start < HEADER_LEN {
            return Ok(None);
        }
        let (kind, len, nfds) = parse_header(&self.buf[self.start..self.start + HEADER_LEN], self.max_len)?;
        let body = self.start + HEADER_LEN;
        if self.end - body >= len {
            let payload = self.buf[body..body + len].to_vec();
            self.start = body + len;
            return self.finish(kind, nfds, payload).map(Some);
        }
        // Not all here: keep the header consumed and collect the payload as it arrives.
        self.start = body;
        self.partial = Some(Partial { kind, nfds, len, payload: Vec::with_capacity(len.min(GROW_STEP)) });
        self.try_take()
    }

    fn finish(&mut self, kind: Kind, nfds: usize, payload: Vec<u8>) -> Result<Frame, RecvError> {
        if self.fds.len() < nfds {
            return Err(bad(format!("{nfds} file descriptors announced, {} received", self.fds.len())));
        }
        let fds = self.fds.drain(..nfds).collect();
        Ok(Frame { kind, payload, fds })
    }

    /// Reads more bytes from the socket: into the payload directly when a large one is pending,
    /// else into the buffer. Returns `false` when nothing was there and `wait` is false.
    fn fill(&mut self, deadline: Option<Instant>, wait: bool) -> Result<bool, RecvError> {
        if wait && deadline.is_some() {
            self.wait(deadline)?;
        }
        loop {
            match self.recv_some(!wait) {
                Ok(()) => return Ok(true),
                Err(RecvError::TimedOut) if !wait => return Ok(false),
                // a non-blocking socket with nothing yet: wait for it
                Err(RecvError::TimedOut) => self.wait(deadline)?,
                Err(e) => return Err(e),
            }
        }
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<(), RecvError> {
        match sys::wait_readable(self.sock.as_fd(), deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(RecvError::TimedOut),
            Err(e) => Err(RecvError::Failed(Error::io("could not wait for the other process", e))),
        }
    }

    /// One read (not waiting, with `now`); `TimedOut` stands for "would block".
    fn recv_some(&mut self, now: bool) -> Result<(), RecvError> {
        let flags = if now { RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT } else { RecvFlags::CMSG_CLOEXEC };
        let direct = self.partial.as_ref().is_some_and(|p| p.len - p.payload.len() >= READ_CHUNK);
        let n = if direct {
            let p = self.partial.as_mut().expect("checked above");
            let want = p.len - p.payload.len();
            if p.payload.capacity() == p.payload.len() {
                p.payload.reserve(want.min(GROW_STEP.max(p.payload.len())));
            }
            let spare = p.payload.spare_capacity_mut();
            let limit = spare.len().min(want);
            let n = recv_with_fds(self.sock.as_fd(), &mut spare[..limit], &mut self.fds, flags)?;
            // SAFETY: `recv_with_fds` initialised the first `n` bytes of the spare capacity.
            unsafe { p.payload.set_len(p.payload.len() + n) };
            n
        } else {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let spare = as_uninit(&mut self.buf[self.end..]);
            let n = recv_with_fds(self.sock.as_fd(), spare, &mut self.fds, flags)?;
            self.end += n;
            n
        };
        if n == 0 {
            return Err(if self.partial.is_none() && self.start == self.end {
                RecvError::Closed
            } else {
                RecvError::Truncated
            });
        }
        Ok(())
    }

    /// Makes the socket non-blocking (for an event loop) or blocking.
    pub(crate) fn set_nonblocking(&self, on: bool) -> Result<(), Error> {
        let fail = |e: rustix::io::Errno| Error::io("could not change the socket's blocking mode", e.into());
        let flags = rustix::fs::fcntl_getfl(&self.sock).map_err(fail)?;
        let flags = if on { flags | rustix::fs::OFlags::NONBLOCK } else { flags - rustix::fs::OFlags::NONBLOCK };
        rustix::fs::fcntl_setfl(&self.sock, flags).map_err(fail)
    }
}

/// A frame's header: its kind, payload length and descriptor count, checked against `max_len`.
fn parse_header(h: &[u8], max_len: usize) -> Result<(Kind, usize, usize), RecvError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let (kind, magic, nfds) = (h[4], h[5], u16::from_le_bytes([h[6], h[7]]) as usize);
    if magic != MAGIC {
        return Err(bad(format!("bad magic {magic:#04x}")));
    }
    let kind = Kind::from_u8(kind).ok_or_else(|| bad(format!("unknown frame kind {kind}")))?;
    if len > max_len {
        return Err(RecvError::Failed(Error::FrameTooLarge { len: len as u64, max: max_len as u64 }));
    }
    if nfds > MAX_FDS_PER_FRAME {
        return Err(bad(format!("{nfds} file descriptors announced (at most {MAX_FDS_PER_FRAME})")));
    }
    Ok((kind, len, nfds))
}

/// A frame that came whole in one message (from an MPI rank): header and payload, exactly,
/// and no descriptors (none cross hosts).
#[cfg(feature = "mpi")]
pub(crate) fn from_message(mut bytes: Vec<u8>, max_len: usize) -> Result<Frame, RecvError> {
    if bytes.len() < HEADER_LEN {
        return Err(bad(format!("a message of {} bytes is shorter than a frame's header", bytes.len())));
    }
    let (kind, len, nfds) = parse_header(&bytes[..HEADER_LEN], max_len.min(MAX_FRAME_LEN))?;
    if len != bytes.len() - HEADER_LEN {
        return Err(bad(format!("a frame of {len} bytes came in a message of {} bytes", bytes.len() - HEADER_LEN)));
    }
    if nfds != 0 {
        return Err(bad(format!("a frame from another rank announces {nfds} file descriptors")));
    }
    bytes.drain(..HEADER_LEN);
    Ok(Frame { kind, payload: bytes, fds: Vec::new() })
}

fn bad(reason: String) -> RecvError {
    RecvError::Failed(Error::BadFrame { reason })
}

fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and initialised bytes are valid
    // `MaybeUninit`s; the callee only writes initialised bytes into it.
    unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

/// One `recvmsg`, queueing any descriptors that came with the bytes. Returns 0 at end of stream.
fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
    fds: &mut VecDeque<OwnedFd>,
    flags: RecvFlags,
) -> Result<usize, RecvError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // SAFETY: the kernel only writes into the buffer; the bytes it reports are initialised.
    let iov_buf = unsafe { &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8]) };
    let mut iov = [IoSliceMut::new(iov_buf)];
    loop {
        match rustix::net::recvmsg(sock, &mut iov, &mut control, flags) {
            Ok(msg) => {
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                    return Err(RecvError::Failed(Error::io(
                        "descriptors sent to this process were dropped: it has too many open files \
                         (raise its limit, ulimit -n)",
                        io::Error::from_raw_os_error(libc::EMFILE),
                    )));
                }
                return Ok(msg.bytes);
            }
            Err(rustix::io::Errno::INTR) => {}
            // The peer died with our bytes unread in its buffer: it is gone, like at EOF.
            Err(rustix::io::Errno::CONNRESET) => return Ok(0),
            Err(rustix::io::Errno::AGAIN) => return Err(RecvError::TimedOut),
            Err(e) => return Err(RecvError::Failed(Error::io("could not read from the other process", e.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    fn pair() -> (OwnedFd, OwnedFd) {
        sys::socketpair().unwrap()
    }

    #[test]
    fn small_and_large_frames_round_trip() {
        let (a, b) = pair();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let expected = big.clone();
        let writer = thread::spawn(move || {
            let mut f = OutFrame::new(Kind::Call);
            f.payload().extend_from_slice(b"hello");
            f.send(a.as_fd(), MAX_FRAME_LEN).unwrap();
            let mut f = OutFrame::new(Kind::Return);
            f.payload().extend_from_slice(&big);
            f.send(a.as_fd(), MAX_FRAME_LEN).unwrap();
            a
        });
        let mut r = FrameReader::new(b);
        let f = r.read(None).unwrap();
        assert_eq!((f.kind, &f.payload[..]), (Kind::Call, &b"hello"[..]));
        let f = r.read(None).unwrap();
        assert_eq!(f.kind, Kind::Return);
        assert!(f.payload == expected);
        drop(writer.join().unwrap());
        assert!(matches!(r.read(None), Err(RecvError::Closed)));
    }

    #[test]
    fn a_huge_announced_length_is_refused_without_allocating() {
        let (a, b) = pair();
        let mut lying = header(0, Kind::Return, 0, MAX_FRAME_LEN).unwrap();
        lying[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        send_all(a.as_fd(), &lying, &[]).unwrap();
        let mut r = FrameReader::new(b);
        match r.read(None) {
            Err(RecvError::Failed(Error::FrameTooLarge { len, max })) => {
                assert_eq!((len, max), (u32::MAX as u64, MAX_FRAME_LEN as u64));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_bad_frame() {
        let (a, b) = pair();
        send_all(a.as_fd(), b"GET / HTTP/1.1\r\n", &[]).unwrap();
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read(None), Err(RecvError::Failed(Error::BadFrame { .. }))));
    }

    #[test]
    fn a_truncated_frame_is_told_apart_from_a_clean_close() {
        let (a, b) = pair();
        let mut bytes = header(100, Kind::Return, 0, MAX_FRAME_LEN).unwrap().to_vec();
        bytes.extend_from_slice(&[7; 42]);
        send_all(a.as_fd(), &bytes, &[]).unwrap();
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read(None), Err(RecvError::Truncated)));
    }

    #[test]
    fn an_oversize_frame_is_refused_before_sending() {
        assert!(header(MAX_FRAME_LEN, Kind::Call, 0, MAX_FRAME_LEN).is_ok());
        match header(MAX_FRAME_LEN + 1, Kind::Call, 0, usize::MAX) {
            Err(Error::FrameTooLarge { len, max }) => {
                assert_eq!((len, max), (MAX_FRAME_LEN as u64 + 1, MAX_FRAME_LEN as u64))
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(matches!(header(1, Kind::Call, MAX_FDS_PER_FRAME + 1, MAX_FRAME_LEN), Err(Error::BadFrame { .. })));
        // a connection's own, lower limit
        assert!(matches!(header(101, Kind::Call, 0, 100), Err(Error::FrameTooLarge { len: 101, max: 100 })));
    }

    #[test]
    fn reading_times_out_and_resumes() {
        let (a, b) = pair();
        let mut r = FrameReader::new(b);
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(matches!(r.read(Some(deadline)), Err(RecvError::TimedOut)));
        let mut f = OutFrame::new(Kind::Hello);
        f.payload().push(1);
        f.send(a.as_fd(), MAX_FRAME_LEN).unwrap();
        let f = r.read(Some(Instant::now() + Duration::from_secs(5))).unwrap();
        assert_eq!(f.payload, vec![1]);
    }

    #[test]
    fn file_descriptors_travel_with_their_frame() {
        let (a, b) = pair();
        let (p_read, p_write) = rustix::pipe::pipe().unwrap();
        let mut f = OutFrame::new(Kind::Call);
        f.payload().push(9);
        f.fds.push(p_write);
        f.send(a.as_fd(), MAX_FRAME_LEN).unwrap();
        let mut r = FrameReader::new(b);
        let mut frame = r.read(None).unwrap();
        assert_eq!(frame.fds.len(), 1);
        let w = frame.fds.pop().unwrap();
        rustix::io::write(&w, b"through the socket").unwrap();
        drop(w);
        let mut got = [0u8; 32];
        let n = rustix::io::read(&p_read, &mut got).unwrap();
        assert_eq!(&got[..n], b"through the socket");
    }
}

#[cfg(test)]
mod many_fds {
    use super::*;

    #[test]
    fn a_frame_carries_more_descriptors_than_one_message_can() {
        let (a, b) = sys::socketpair().unwrap();
        let n = 600; // three messages' worth
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..n).map(|_| rustix::pipe::pipe().unwrap()).collect();
        let mut f = OutFrame::new(Kind::Call);
        f.payload().extend_from_slice(b"many");
        f.fds = pipes.iter().map(|(_, w)| w.try_clone().unwrap()).collect();
        let writer = std::thread::spawn(move || {
            f.send(a.as_fd(), MAX_FRAME_LEN).unwrap();
            let mut g = OutFrame::new(Kind::Return);
            g.payload().push(1);
            g.send(a.as_fd(), MAX_FRAME_LEN).unwrap();
            a
        });
        let mut r = FrameReader::new(b);
        let frame = r.read(None).unwrap();
        assert_eq!((&frame.payload[..], frame.fds.len()), (&b"many"[..], n));
        // in order: descriptor i is the write end of pipe i
        for (i, fd) in frame.fds.iter().enumerate() {
            rustix::io::write(fd, &[i as u8]).unwrap();
            let mut got = [0u8; 1];
            rustix::io::read(&pipes[i].0, &mut got).unwrap();
            assert_eq!(got[0], i as u8);
        }
        assert!(r.read(None).unwrap().fds.is_empty(), "the next frame brings none of them");
        drop(writer.join().unwrap());
        assert!(header(1, Kind::Call, MAX_FDS_PER_FRAME + 1, MAX_FRAME_LEN).is_err());
    }
}
