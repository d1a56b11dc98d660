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
    /// `init`: its bound (`Option<u64>`, bincode), or nothing for none.
    Queue,
    /// A queue that counts tasks done; `init` as for `Queue`.
    JoinableQueue,
    Lock,
    RLock,
    /// A condition variable with its own reentrant lock.
    Condition,
    /// `init`: the initial count and the bound, if bounded (`(u64, Option<u64>)`).
    Semaphore,
    /// `init`: the number of parties (`u64`).
    Barrier,
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
    /// The first frame of every connection, not answered: which client process it is (a
    /// random number drawn once per process) and its pid, so the server can tell when a
    /// process has gone, and what its tasks and barrier places were.
    Hello {
        process: u64,
        pid: u32,
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
    /// Removes and returns the last entry inserted (Python's `popitem`).
    DictPopItem,
    /// Inserts every pair, in order (Python's `update`).
    DictExtend(Vec<(ByteBuf, ByteBuf)>),
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
    /// How many elements have this encoding.
    ListCount(ByteBuf),
    /// The first element with this encoding (from `start`).
    ListIndex(ByteBuf, u64),
    /// Removes the first element with this encoding.
    ListRemoveValue(ByteBuf),
    /// Replaces the whole list with `new` if it holds exactly `expected`.
    ListReplaceIf {
        expected: Vec<ByteBuf>,
        new: Vec<ByteBuf>,
    },
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
    /// Waits for room in a bounded queue (`Some(0)`: not at all).
    QueuePut {
        item: ByteBuf,
        timeout_ms: Option<u64>,
    },
    QueueGet {
        timeout_ms: Option<u64>,
    },
    QueueIsFull,
    QueueTaskDone,
    /// Waits until every task put is done, or a loss not told to this process yet.
    QueueJoin {
        timeout_ms: Option<u64>,
    },
    LockAcquire {
        thread: u64,
        timeout_ms: Option<u64>,
    },
    LockRelease {
        thread: u64,
    },
    /// Releases the condition's lock, waits to be notified, takes the lock again.
    ConditionWait {
        thread: u64,
        timeout_ms: Option<u64>,
    },
    /// Wakes up to `n` of the threads waiting now.
    ConditionNotify {
        thread: u64,
        n: u64,
    },
    SemaphoreAcquire {
        timeout_ms: Option<u64>,
    },
    /// Gives one count back: one this connection's guard holds (`guarded`), or a plain
    /// `release()`.
    SemaphoreRelease {
        guarded: bool,
    },
    /// A guard's count stays taken, no longer given back if this connection goes.
    SemaphoreForget,
    SemaphoreValue,
    BarrierWait {
        timeout_ms: Option<u64>,
    },
    BarrierReset,
    BarrierAbort,
    BarrierWaiting,
    BarrierIsBroken,
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
    Index(Option<u64>),
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
    /// A bounded queue stayed full.
    Full { maxsize: u64 },
    /// `task_done` once more than tasks were put.
    TaskDoneTooMany,
    /// A joinable queue's tasks went with a process that took them.
    TasksLost { pid: u32, tasks: u64 },
    /// A join ran out with these tasks not done.
    Unfinished { tasks: u64 },
    /// A barrier is broken, for this reason.
    Broken(String),
    /// A bounded semaphore released past its bound.
    OverReleased { bound: u64 },
    /// Anything else, said in words.
    Other(String),
}

/// The reply to one request.
pub(crate) type Reply = Result<Answer, Failure>;

/// A stream with buffers for frames: a frame is written with one `write`, and frames are read
/// from as few `read`s as the bytes came in.
pub(crate) struct Framed<S> {
    pub(crate) stream: S,
    out: Vec<u8>,
    input: Vec<u8>,
    /// The unread bytes of `input`: `input[start..end]`.
    start: usize,
    end: usize,
}

impl<S: Read + Write> Framed<S> {
    pub(crate) fn new(stream: S) -> Framed<S> {
        Framed { stream, out: Vec::new(), input: vec![0; 64 * 1024], start: 0, end: 0 }
    }

    /// Writes one frame.
    pub(crate) fn send<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        bincode::serialize_into(&mut self.out, value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let len = self.out.len() - 4;
        if len > MAX_FRAME {
            self.out = Vec::new(); // do not keep a huge buffer
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {len} bytes is over {MAX_FRAME}"),
            ));
        }
        self.out[..4].copy_from_slice(&(len as u32).to_le_bytes());
        let result = self.stream.write_all(&self.out);
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::new();
        }
        result
    }

    /// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
    pub(crate) fn recv<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<T>> {
        if !self.fill(4)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.input[self.start..self.start + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes is over {MAX_FRAME}"),
            ));
        }
        if !self.fill(4 + len)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let body = &self.input[self.start + 4..self.start + 4 + len];
        let value = bincode::deserialize(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        self.start += 4 + len;
        if self.input.len() > 1 << 20 && self.start == self.end {
            self.input = vec![0; 64 * 1024]; // a large frame passed: give its memory back
            (self.start, self.end) = (0, 0);
        }
        value.map(Some)
    }

    /// Has at least `n` unread bytes in the buffer, reading as needed; `false` at the end of
    /// the stream before any of them came (an end in the middle is an error).
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.end - self.start >= n {
            return Ok(true);
        }
        if self.start + n > self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if n > self.input.len() {
                self.input.resize(n, 0);
            }
        }
        while self.end - self.start < n {
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) if self.end == self.start => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
