//! What a manager and its clients say to each other: requests, replies, and their frames.
//!
//! A frame is a 4-byte little-endian length and that many bytes of bincode. Every frame read
//! is bounded ([`MAX_FRAME`]) before its bytes are read, so a peer cannot make a reader
//! allocate what it likes.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The largest frame either side reads.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// What kind of object a client asks the server for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    Dict,
    List,
    Value,
    Queue,
    Lock,
    Event,
    /// A user's type, by its registered name.
    Served(String),
}

/// One request. Values travel encoded (bincode): the server stores and compares bytes, and
/// only a served object's code decodes them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Makes an object (or, with a name, finds the one of that name, made if missing); `ty`
    /// is the client's type, checked against the object's.
    Create {
        kind: ObjectKind,
        ty: String,
        name: Option<String>,
        init: ByteBuf,
    },
    Call {
        id: u64,
        op: Op,
    },
}

/// An operation on one object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    DictGet(ByteBuf),
    DictInsert(ByteBuf, ByteBuf),
    DictRemove(ByteBuf),
    DictContains(ByteBuf),
    DictSetDefault(ByteBuf, ByteBuf),
    /// Replaces the entry if it is `expected` (`None`: absent) with `new` (`None`: removes).
    DictCompareAndSet {
        key: ByteBuf,
        expected: Option<ByteBuf>,
        new: Option<ByteBuf>,
    },
    DictItems,
    DictClear,
    Len,
    ListPush(ByteBuf),
    ListGet(u64),
    ListSet(u64, ByteBuf),
    ListInsert(u64, ByteBuf),
    ListRemove(u64),
    ListPop,
    ListItems,
    ListExtend(Vec<ByteBuf>),
    ListReverse,
    ListClear,
    ListCompareAndSet {
        index: u64,
        expected: ByteBuf,
        new: ByteBuf,
    },
    ValueGet,
    ValueSet(ByteBuf),
    ValueCompareAndSet {
        expected: ByteBuf,
        new: ByteBuf,
    },
    QueuePut(ByteBuf),
    QueueGet {
        timeout_ms: Option<u64>,
    },
    LockAcquire {
        thread: u64,
        timeout_ms: Option<u64>,
    },
    LockRelease {
        thread: u64,
    },
    EventSet,
    EventClear,
    EventIsSet,
    EventWait {
        timeout_ms: Option<u64>,
    },
    Served(ByteBuf),
}

/// A successful answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Done,
    Created(u64),
    Bool(bool),
    Count(u64),
    Item(Option<ByteBuf>),
    Items(Vec<ByteBuf>),
    Pairs(Vec<(ByteBuf, ByteBuf)>),
}

/// Why a request failed at the server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// An index past the end of a list.
    OutOfRange { index: u64, len: u64 },
    /// The object is of another kind or type than the request's.
    Mismatch(String),
    /// A wait ran out.
    TimedOut,
    /// A served object's operation panicked; the server goes on.
    Panicked(String),
    /// Anything else, said in words.
    Other(String),
}

/// The reply to one request.
pub(crate) type Reply = Result<Answer, Failure>;

/// Writes one frame.
pub(crate) fn write_frame<W: Write, T: Serialize>(w: &mut W, value: &T) -> io::Result<()> {
    let mut buf = vec![0u8; 4];
    bincode::serialize_into(&mut buf, value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a frame of {len} bytes is over {MAX_FRAME}")));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    w.write_all(&buf)
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub(crate) fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1])? {
        0 => return Ok(None),
        _ => r.read_exact(&mut len[1..])?,
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes is over {MAX_FRAME}")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    bincode::deserialize(&buf).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
