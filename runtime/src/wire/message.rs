//! The payloads of each frame kind, and their encodings.
//!
//! `Call` and the replies carry a task id first, so several calls can be in flight on one
//! connection. A `Call` then names the function (u32 length + UTF-8) and appends the encoded
//! arguments; a `Return` appends the encoded output. `Hello`, `Panic` and `Fail` are bincode
//! structures.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::function::ProcessFn;
use crate::wire::codec;
use crate::wire::fds;
use crate::wire::frame::{self, Kind, OutFrame, HEADER_LEN};
use crate::wire::items::{ItemsWriter, TAG_LEN};

/// The protocol version; a child refuses a parent that speaks another one.
pub(crate) const PROTOCOL: u32 = 2;

/// The first frame on every connection, parent to child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) protocol: u32,
    pub(crate) build_id: Vec<u8>,
    /// A name for the child's process (shown by `ps`).
    pub(crate) name: Option<String>,
    /// Whether the child exits after its first call (a `Process`) or serves many (a pool).
    pub(crate) one_shot: bool,
    /// The longest frame either side may send on this connection.
    pub(crate) max_frame_len: u64,
    /// Whether a doorbell comes with it (a local pool worker's; the descriptor before the
    /// liveness pipe's): the worker rings it after each reply.
    pub(crate) doorbell: bool,
}

/// Why a panic happened, as the child saw it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PanicReport {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    pub(crate) backtrace: Option<String>,
}

/// Why the child could not make a call.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FailReport {
    /// The child is another build; here is its build id.
    BuildMismatch {
        found: Vec<u8>,
    },
    /// The protocol versions differ.
    Protocol {
        message: String,
    },
    UnknownFunction {
        name: String,
        known: Vec<String>,
    },
    DuplicateFunction {
        name: String,
    },
    Decode {
        what: String,
        type_name: String,
        message: String,
    },
    Encode {
        what: String,
        type_name: String,
        message: String,
    },
    /// A `#[child_init]` hook panicked.
    ChildInit {
        hook: String,
        message: String,
    },
    /// The reply would exceed the connection's frame limit.
    FrameTooLarge {
        len: u64,
        max: u64,
    },
}

impl FailReport {
    pub(crate) fn from_error(e: Error) -> FailReport {
        match e {
            Error::UnknownFunction { name, known } => FailReport::UnknownFunction { name, known },
            Error::DuplicateFunction { name } => FailReport::DuplicateFunction { name },
            Error::Decode { what, type_name, message } => FailReport::Decode { what: what.into(), type_name, message },
            Error::Encode { what, type_name, message } => FailReport::Encode { what: what.into(), type_name, message },
            Error::FrameTooLarge { len, max } => FailReport::FrameTooLarge { len, max },
            other => FailReport::Protocol { message: other.to_string() },
        }
    }
}

/// The `Hello` frame.
pub(crate) fn hello_frame(hello: &Hello) -> Result<OutFrame, Error> {
    let mut f = OutFrame::new(Kind::Hello);
    codec::encode_into("message", hello, f.payload())?;
    Ok(f)
}

/// A `Call` frame of `F`: task id, function name, then the encoded arguments.
pub(crate) fn call_frame<F: ProcessFn>(id: u64, args: &F::Args) -> Result<OutFrame, Error> {
    let (frame, fds) = fds::collect(|| {
        call_frame_with(id, F::NAME, |out| {
            crate::panic::catch(|| F::encode_args(args, out)).unwrap_or_else(|report| {
                Err(codec::serialize_panicked("arguments", std::any::type_name::<F::Args>(), report.message))
            })
        })
    });
    let mut frame = frame?;
    frame.attach(fds);
    Ok(frame)
}

/// A `Call` frame for `name`, its arguments appended by `encode`.
pub(crate) fn call_frame_with(
    id: u64,
    name: &str,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<OutFrame, Error> {
    let mut f = OutFrame::new(Kind::Call);
    let p = f.payload();
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&(name.len() as u32).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    encode(p)?;
    Ok(f)
}

/// Splits a `Call` payload into id, function name and argument bytes.
pub(crate) fn parse_call(payload: &[u8]) -> Result<(u64, &str, &[u8]), Error> {
    let bad = |reason: &str| Error::BadFrame { reason: format!("call frame: {reason}") };
    let (id, rest) = split_id(payload).ok_or_else(|| bad("too short for a task id"))?;
    if rest.len() < 4 {
        return Err(bad("too short for a name length"));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    if rest.len() < len {
        return Err(bad("name longer than the frame"));
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| bad("name is not UTF-8"))?;
    Ok((id, name, &rest[len..]))
}

/// Splits the task id off a reply payload.
pub(crate) fn split_id(payload: &[u8]) -> Option<(u64, &[u8])> {
    let id = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some((id, &payload[8..]))
}

/// A reply frame of `kind` for task `id`, its body encoded from `body`.
pub(crate) fn reply_frame<T: Serialize + ?Sized>(
    kind: Kind,
    id: u64,
    what: &'static str,
    body: &T,
) -> Result<OutFrame, Error> {
    let mut f = OutFrame::new(kind);
    f.payload().extend_from_slice(&id.to_le_bytes());
    codec::encode_into(what, body, f.payload())?;
    Ok(f)
}

/// The start of a chunk, encoded.
#[derive(Debug)]
pub(crate) enum BatchFrame {
    /// A `Batch` frame holding this many items.
    Frame(OutFrame, usize),
    /// The first item could not be encoded (or its `Serialize` panicked): it fails alone.
    BadItem(Error),
}

/// A `Batch` frame of `F` holding the first items of `items`: at most `max_items`, and no more
/// once `max_bytes` of arguments are written (but always at least one), within the frame
/// limit `max_frame`. It stops before an item that fails to encode or does not fit, which the
/// next call reports alone as [`BatchFrame::BadItem`].
pub(crate) fn batch_frame<F: ProcessFn>(
    id: u64,
    items: &[F::Args],
    max_items: usize,
    max_bytes: usize,
    max_frame: usize,
) -> BatchFrame {
    let mut f = OutFrame::with_capacity(Kind::Batch, max_bytes.min(items.len().min(max_items) * 16) + 64);
    let p = f.payload();
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&(F::NAME.len() as u32).to_le_bytes());
    p.extend_from_slice(F::NAME.as_bytes());
    let count_at = p.len();
    p.extend_from_slice(&[0; 4]);
    let mut list = ItemsWriter::new(p);
    let first = p.len();
    // the longest buffer allowed, with room for a tag per item in case the layout turns tagged
    let limit = max_frame.min(crate::wire::frame::MAX_FRAME_LEN).saturating_add(HEADER_LEN);
    // One panic catch for the whole chunk: a `Serialize` that panics ends the chunk before
    // its item, as an error does. Handles put their descriptors in the frame's table.
    let mut failure = None;
    // bytes out of line before the item being encoded: a failed item's do not count
    let mut large_before = 0;
    let (caught, mut fds) = fds::collect(|| {
        crate::panic::catch(|| {
            for args in items.iter().take(max_items) {
                large_before = fds::large_so_far();
                if list.count() > 0 && p.len() - first + large_before as usize >= max_bytes {
                    break;
                }
                list.begin(p);
                if let Err(e) = F::encode_args(args, p) {
                    failure = Some(e);
                    return;
                }
                let needed = p.len() + TAG_LEN * (list.count() + 1) + fds::large_so_far() as usize;
                if needed > limit {
                    failure = Some(too_large(needed - HEADER_LEN, max_frame));
                    return;
                }
                list.end(p);
            }
        })
    });
    let failure = match caught {
        Ok(()) => failure,
        Err(report) => Some(codec::serialize_panicked("arguments", std::any::type_name::<F::Args>(), report.message)),
    };
    if let Some(e) = failure {
        list.cancel(p);
        fds.large = fds.large.min(large_before); // its memfds go along unused
        if list.count() == 0 {
            return BatchFrame::BadItem(e);
        }
    }
    let taken = list.count();
    p[count_at..count_at + 4].copy_from_slice(&(taken as u32).to_le_bytes());
    // A failed item may have left descriptors in the table: they go along unused, and are
    // closed by the receiver.
    f.attach(fds);
    BatchFrame::Frame(f, taken)
}

#[cold]
fn too_large(len: usize, max: usize) -> Error {
    frame::check_len(len, max).expect_err("called over the limit")
}

/// Splits a `Batch` payload into id, function name, item count and the items.
pub(crate) fn parse_batch(payload: &[u8]) -> Result<(u64, &str, u32, &[u8]), Error> {
    let (id, name, rest) = parse_call(payload)?;
    let count = rest.get(..4).ok_or_else(|| Error::BadFrame { reason: "batch frame: no item count".into() })?;
    Ok((id, name, u32::from_le_bytes(count.try_into().expect("4 bytes")), &rest[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_frame_parses_back() {
        let f = call_frame_with(42, "crate::square", |out| codec::encode_into("arguments", &(7u64,), out)).unwrap();
        let payload = &f_payload(f)[..];
        let (id, name, args) = parse_call(payload).unwrap();
        assert_eq!((id, name), (42, "crate::square"));
        assert_eq!(codec::decode::<(u64,)>("arguments", args).unwrap(), (7,));
    }

    #[test]
    fn short_call_frames_are_errors() {
        assert!(parse_call(&[1, 2, 3]).is_err());
        let mut p = 5u64.to_le_bytes().to_vec();
        p.extend_from_slice(&100u32.to_le_bytes());
        p.extend_from_slice(b"abc");
        assert!(parse_call(&p).is_err());
    }

    fn f_payload(mut f: OutFrame) -> Vec<u8> {
        f.payload()[8..].to_vec()
    }
}
