//! The file descriptors that travel with a frame, and how handles (queues, pipe ends, ...)
//! serialize as indices into them.
//!
//! While a frame is encoded, a table for its descriptors exists on this thread
//! ([`collect`]): a handle's `Serialize` puts a duplicate of its descriptor there and writes
//! the index. While a frame is decoded, the descriptors it brought are on offer ([`provide`]):
//! a handle's `Deserialize` reads the index and takes a duplicate. Outside a frame neither table
//! exists, so serializing a handle anywhere else (to a file, as JSON, into a `Queue`) is an
//! error that says why, never bytes that mean nothing elsewhere.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::wire::frame::MAX_FDS_PER_FRAME;
use crate::wire::large;

/// Why a handle cannot be serialized or deserialized here.
pub(crate) const OUTSIDE_A_FRAME: &str = "a multiproc handle (Queue, Connection, ...) holds file descriptors, and \
     can only cross to another process as an argument or result of a #[process_fn], or over a \
     Connection; it cannot be serialized anywhere else (a file, JSON, a Queue's items)";

thread_local! {
    static OUTGOING: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    /// The open table's `large`, where a batch's encoder looks after each item: one load.
    static LARGE: Cell<u64> = const { Cell::new(0) };
}

#[derive(Default)]
struct Outgoing {
    fds: Vec<OwnedFd>,
    /// The descriptor each entry was duplicated from (a handle serialized twice is sent once);
    /// -1 for a large value's memfd.
    sources: Vec<RawFd>,
    /// Bytes put out of line so far (see `large.rs`).
    large: u64,
    /// What keeps those memfds from reuse while the frame exists.
    keep: Vec<large::InFlight>,
}

/// What encoding a frame put beside its bytes: the descriptors, and how many of the frame's
/// bytes went out of line in memfds among them (they count toward its size limit).
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) large: u64,
    /// Held as long as the frame may be sent (again): its memfds are not reused meanwhile.
    pub(crate) keep: Vec<large::InFlight>,
}

/// Runs `encode` with a descriptor table open on this thread; returns its result and the
/// descriptors the handles (and large values) it serialized put there.
pub(crate) fn collect<R>(encode: impl FnOnce() -> R) -> (R, Table) {
    let outer = OUTGOING.with(|o| o.replace(Some(Outgoing::default())));
    let outer_large = LARGE.replace(0);
    let result = encode();
    LARGE.set(outer_large);
    let table = OUTGOING.with(|o| o.replace(outer)).unwrap_or_default();
    (result, Table { fds: table.fds, large: table.large, keep: table.keep })
}

/// Bytes put out of line so far in the frame being encoded (0 outside one).
#[inline]
pub(crate) fn large_so_far() -> u64 {
    LARGE.get()
}

/// Stops counting the bytes put out of line since `mark` (a value that failed, or went over a
/// limit, and is not in the frame): their memfds go along unused, and are closed by the
/// receiver.
pub(crate) fn uncount_large_since(mark: u64) {
    OUTGOING.with(|o| {
        if let Some(t) = o.borrow_mut().as_mut() {
            t.large = t.large.min(mark);
            LARGE.set(t.large);
        }
    });
}

/// Puts `bytes` out of line, in a sealed memfd of the frame being encoded, and returns its
/// index; `None` (the bytes stay inline) outside a frame, where descriptors cannot go, when the
/// table is full, or when no memfd could be made.
#[cold]
pub(crate) fn put_large(bytes: &[u8]) -> Option<u32> {
    if !large::allowed() {
        return None;
    }
    OUTGOING.with(|o| {
        let mut o = o.borrow_mut();
        let table = o.as_mut()?;
        if table.fds.len() >= MAX_FDS_PER_FRAME {
            return None;
        }
        let (fd, in_flight) = large::write(bytes).ok()?;
        table.fds.push(fd);
        table.keep.push(in_flight);
        table.sources.push(-1);
        table.large += bytes.len() as u64;
        LARGE.set(table.large);
        Some(table.fds.len() as u32 - 1)
    })
}

/// Runs `read` on descriptor `index` of the frame being decoded, borrowed (for a large value's
/// memfd, read once).
pub(crate) fn with_received<R>(
    index: u32,
    read: impl FnOnce(BorrowedFd<'_>) -> Result<R, String>,
) -> Result<R, String> {
    received(index, "a large value", read)
}

/// Runs `with` on descriptor `index` of the frame being decoded; `who` names what asked in the
/// error for an index past the frame's descriptors.
fn received<R>(index: u32, who: &str, with: impl FnOnce(BorrowedFd<'_>) -> Result<R, String>) -> Result<R, String> {
    INCOMING.with(|i| {
        let i = i.borrow();
        let fds = i.as_ref().ok_or_else(|| OUTSIDE_A_FRAME.to_string())?;
        let fd = fds
            .get(index as usize)
            .ok_or_else(|| format!("{who} names descriptor {index}, and its message brought {}", fds.len()))?;
        with(fd.as_fd())
    })
}

/// Runs `decode` with `fds` on offer to the handles it deserializes; gives them back after
/// (a handle takes a duplicate, so a value can be decoded again).
pub(crate) fn provide<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let outer = INCOMING.with(|i| i.replace(Some(fds)));
    let result = decode();
    let fds = INCOMING.with(|i| i.replace(outer)).unwrap_or_default();
    (result, fds)
}

/// Whether a frame is being encoded on this thread (a handle's `Serialize` may write what only
/// the process receiving that frame should see).
pub(crate) fn in_frame() -> bool {
    OUTGOING.with(|o| o.borrow().is_some())
}

/// Puts (a duplicate of) `fd` in the table of the frame being encoded, and returns its index.
pub(crate) fn share(fd: BorrowedFd<'_>) -> Result<u32, String> {
    OUTGOING.with(|o| {
        let mut o = o.borrow_mut();
        let table = o.as_mut().ok_or_else(|| OUTSIDE_A_FRAME.to_string())?;
        if let Some(at) = table.sources.iter().position(|s| *s == fd.as_raw_fd() && *s >= 0) {
            return Ok(at as u32);
        }
        if table.fds.len() >= MAX_FDS_PER_FRAME {
            return Err(format!(
                "one message can carry at most {MAX_FDS_PER_FRAME} handles' descriptors; pass the rest in another"
            ));
        }
        let dup = fd.try_clone_to_owned().map_err(|e| format!("could not duplicate a handle's descriptor: {e}"))?;
        table.sources.push(fd.as_raw_fd());
        table.fds.push(dup);
        Ok(table.fds.len() as u32 - 1)
    })
}

/// Takes (a duplicate of) descriptor `index` of the frame being decoded.
pub(crate) fn take(index: u32) -> Result<OwnedFd, String> {
    received(index, "a handle", |fd| {
        fd.try_clone_to_owned().map_err(|e| format!("could not duplicate a received descriptor: {e}"))
    })
}

/// Serializes a descriptor as its index in the frame's table (for a handle's `Serialize`).
pub(crate) fn serialize<S: serde::Serializer>(fd: BorrowedFd<'_>, s: S) -> Result<S::Ok, S::Error> {
    let index = share(fd).map_err(serde::ser::Error::custom)?;
    s.serialize_u32(index)
}

/// Deserializes a descriptor from its index (for a handle's `Deserialize`).
pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    // Refuse before reading anything: outside a frame the bytes are not ours to interpret.
    if INCOMING.with(|i| i.borrow().is_none()) {
        return Err(serde::de::Error::custom(OUTSIDE_A_FRAME));
    }
    let index = <u32 as serde::Deserialize>::deserialize(d)?;
    take(index).map_err(serde::de::Error::custom)
}

/// A descriptor that crosses in a frame: serialized as its index in the frame's table (a
/// duplicate goes there), deserialized as a duplicate of the one received.
#[derive(Debug)]
pub(crate) struct Fd(pub(crate) OwnedFd);

impl serde::Serialize for Fd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(self.0.as_fd(), s)
    }
}

impl<'de> serde::Deserialize<'de> for Fd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Fd)
    }
}

/// A borrowed descriptor, serialized as [`Fd`] is.
pub(crate) struct FdRef<'a>(pub(crate) BorrowedFd<'a>);

impl serde::Serialize for FdRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_goes_out_once_and_comes_back_as_often_as_named() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let ((a, b, c), table) = collect(|| (share(r.as_fd()), share(w.as_fd()), share(r.as_fd())));
        assert_eq!((a, b, c), (Ok(0), Ok(1), Ok(0)));
        let fds = table.fds;
        assert_eq!(fds.len(), 2);
        let ((x, y), fds) = provide(fds, || (take(1).unwrap(), take(1).unwrap()));
        assert_eq!(fds.len(), 2, "the table keeps its own");
        rustix::io::write(&x, b"via x").unwrap();
        drop((x, y, w, fds));
        let mut buf = [0u8; 16];
        assert_eq!(rustix::io::read(&r, &mut buf).unwrap(), 5);
    }

    #[test]
    fn outside_a_frame_a_handle_is_an_error_not_bytes() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(share(r.as_fd()).unwrap_err().contains("cannot be serialized anywhere else"));
        assert!(take(0).is_err());
        let (outside, _) = provide(Vec::new(), || take(0));
        assert!(outside.unwrap_err().contains("brought 0"));
    }
}
