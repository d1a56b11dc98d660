//! Proxies to a manager's queues: plain or bounded (`QueueProxy`), and joinable.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::manager::client;
use crate::manager::proto::{Answer, Failure, Op};
use crate::manager::proxy::{count, done, flag, proxy_impls, unexpected, Handle};

/// A wait as the server takes it, in milliseconds (`None`: for ever).
pub(super) fn millis(timeout: Option<Duration>) -> Option<u64> {
    timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64)
}

/// A proxy to a queue held by a [`Manager`](crate::Manager): Python's `manager.Queue()` (and,
/// made with [`Manager::bounded_queue`](crate::Manager::bounded_queue), `Queue(maxsize)`).
///
/// An item taken by a client that dies before the reply reaches it goes back to the front:
/// nothing is lost between the server and a client killed in the middle of a `get`.
pub struct QueueProxy<T> {
    handle: Handle,
    _t: PhantomData<fn(T) -> T>,
}

proxy_impls!(QueueProxy<T>);

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Puts `item` at the back, waiting for room if the queue is bounded and full.
    pub fn put(&self, item: T) -> Result<()> {
        self.give(item, None)
    }

    /// Puts `item` at the back, waiting at most `timeout` for room: [`Error::Full`] then.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<()> {
        self.give(item, Some(timeout))
    }

    /// Puts `item` at the back if there is room now (Python's `put_nowait`), else
    /// [`Error::Full`] (`waited: None`).
    pub fn try_put(&self, item: T) -> Result<()> {
        self.give(item, Some(Duration::ZERO))
    }

    fn give(&self, item: T, timeout: Option<Duration>) -> Result<()> {
        let op = Op::QueuePut { item: self.handle.bytes(&item)?, timeout_ms: millis(timeout) };
        match self.handle.call_raw(op)? {
            Ok(answer) => done(answer),
            Err(Failure::Full { maxsize }) => Err(Error::Full {
                maxsize: Some(maxsize.min(usize::MAX as u64) as usize),
                waited: timeout.filter(|t| !t.is_zero()),
            }),
            Err(f) => Err(client::failure(f)),
        }
    }

    /// Takes the item at the front, waiting for one.
    pub fn get(&self) -> Result<T> {
        self.take(None)
    }

    /// Takes the item at the front, waiting at most `timeout`: [`Error::Empty`] then.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.take(Some(timeout))
    }

    /// Takes the item at the front if there is one now (Python's `get_nowait`), else
    /// [`Error::Empty`] (`waited: None`).
    pub fn try_get(&self) -> Result<T> {
        self.take(Some(Duration::ZERO))
    }

    fn take(&self, timeout: Option<Duration>) -> Result<T> {
        match self.handle.call_raw(Op::QueueGet { timeout_ms: millis(timeout) })? {
            Ok(answer) => self.handle.item(answer)?.ok_or_else(|| unexpected(Answer::Item(None))),
            Err(Failure::TimedOut) => Err(Error::Empty { waited: timeout.filter(|t| !t.is_zero()) }),
            Err(f) => Err(client::failure(f)),
        }
    }

    /// The number of items in it now.
    pub fn len(&self) -> Result<usize> {
        count(self.handle.call(Op::Len)?)
    }

    /// Whether it is empty now.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Whether it is bounded and full now (never, unbounded).
    pub fn is_full(&self) -> Result<bool> {
        flag(self.handle.call(Op::QueueIsFull)?)
    }
}

/// A proxy to a joinable queue held by a [`Manager`](crate::Manager): Python's
/// `manager.JoinableQueue()`. Every item put is a task; [`task_done`](Self::task_done) marks
/// one finished, [`join`](Self::join) waits until all are.
///
/// # A consumer that dies
///
/// The server counts, for each client process, the tasks it took and did not mark done. When
/// such a process has gone (every connection it had closed, and no process with its pid is
/// left on the server's machine), its tasks are lost: [`join`](Self::join) returns
/// [`Error::TasksLost`] naming its pid, once to each process that joins, and joining again
/// waits only for the other tasks. A `get` whose reply never reached its client puts the item
/// back instead. A process that marks done tasks another took may hide that one's loss.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, JoinableQueueProxy, Manager};
///
/// #[process_fn]
/// fn worker(tasks: JoinableQueueProxy<u32>) -> multiproc::Result<()> {
///     for _ in 0..5 {
///         let _task = tasks.get()?;
///         tasks.task_done()?;
///     }
///     Ok(())
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let m = Manager::start()?;
/// let tasks = m.joinable_queue()?;
/// for t in 0..10 {
///     tasks.put(t)?;
/// }
/// let workers = [worker.spawn(tasks.clone())?, worker.spawn(tasks.clone())?];
/// tasks.join()?; // all ten done
/// for w in workers {
///     w.join()??;
/// }
/// # Ok(())
/// # }
/// ```
pub struct JoinableQueueProxy<T> {
    queue: QueueProxy<T>,
}

impl<T> JoinableQueueProxy<T> {
    pub(crate) fn new(handle: Handle) -> Self {
        JoinableQueueProxy { queue: QueueProxy::new(handle) }
    }
}

impl<T> Clone for JoinableQueueProxy<T> {
    fn clone(&self) -> Self {
        JoinableQueueProxy { queue: self.queue.clone() }
    }
}

impl<T> fmt::Debug for JoinableQueueProxy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueueProxy").field("id", &self.queue.handle.id).finish()
    }
}

impl<T> Serialize for JoinableQueueProxy<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueueProxy<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(JoinableQueueProxy { queue: QueueProxy::deserialize(d)? })
    }
}

impl<T> std::ops::Deref for JoinableQueueProxy<T> {
    type Target = QueueProxy<T>;

    /// Its queue's operations: `put`, `get`, `len`, ...
    fn deref(&self) -> &QueueProxy<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueueProxy<T> {
    /// Marks one task taken from the queue as finished.
    ///
    /// # Errors
    ///
    /// [`Error::TaskDoneTooMany`] when every task put is done already.
    pub fn task_done(&self) -> Result<()> {
        done(self.queue.handle.call(Op::QueueTaskDone)?)
    }

    /// Waits until every task put is done, or a loss not told to this process yet
    /// ([`Error::TasksLost`]; see the type's docs).
    pub fn join(&self) -> Result<()> {
        self.wait(None)
    }

    /// As [`join`](Self::join), waiting at most `timeout`: [`Error::TasksUnfinished`] then.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait(Some(timeout))
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        match self.queue.handle.call_raw(Op::QueueJoin { timeout_ms: millis(timeout) })? {
            Ok(answer) => done(answer),
            Err(Failure::Unfinished { tasks }) => {
                Err(Error::TasksUnfinished { waited: timeout.unwrap_or_default(), tasks })
            }
            Err(f) => Err(client::failure(f)),
        }
    }
}
