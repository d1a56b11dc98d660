//! Queues between any number of producer and consumer processes (Python's `Queue`,
//! `JoinableQueue`), in shared memory.
//!
//! Where items live: in the queue's own memfd, mapped by every process that holds a handle
//! (the handle carries the memfd's descriptor). Each producing thread writes into a lane of its
//! own; consumers take from any lane. See `lane.rs` for the protocol, and why a process killed
//! at any instant neither corrupts the queue nor leaves it locked.

mod attach;
mod block;
mod iter;
pub use iter::QueueIter;
mod joinable;
mod lane;
mod layout;
mod put;
mod sleep;
mod spill;
mod take;

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub(crate) use attach::Shared;

use crate::channel::pipe::Wait;
use crate::error::{Error, Result};
use crate::wire::{codec, fds};

/// A queue of `T`s shared by processes: any number put, any number get. Python's
/// `multiprocessing.Queue`.
///
/// Pass it to a `#[process_fn]` as an argument (clone it first to keep one); every handle, in
/// every process, is the same queue. Items are encoded when they are put: a `put` that returned
/// has its item in the queue, even if its process exits on the next line.
///
/// # Order
///
/// Items put by one thread come out in the order they were put. Items put by different threads
/// (or processes) interleave in no promised order. (Python promises order per process; here two
/// threads of one process are two producers.)
///
/// # Bounds
///
/// [`Queue::bounded`] holds at most `maxsize` items: a `put` then waits for room, a `try_put`
/// gives [`Error::Full`]. [`Queue::new`] has no bound: as in Python, a `put` never waits for
/// consumers. Each producing thread's items go to a 1 MiB ring while it has room; past it (if
/// no consumer frees room within 20 ms, or at once for a `try_put`) they spill to memory that
/// grows as they come and is given back as they are taken, in order all the same. The bound is
/// memory (the queue's pages are `/dev/shm`'s, counted as shared memory), or 16 GiB of items
/// waiting from one thread, past which `put` gives [`Error::Full`] with `maxsize: None`.
///
/// # What a process killed at any instant can lose
///
/// Nothing that was put (a producer killed in the middle of a `put` leaves no partial item:
/// the item is visible whole or not at all), and the queue stays usable by the others. The one
/// item a consumer was taking at that instant is lost if the kill came after it was taken and
/// before `get` returned; killed earlier, the item stays for the next consumer. A large item
/// (stored apart) whose producer dies before publishing it keeps its memory until the queue is
/// freed.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Queue};
///
/// #[process_fn]
/// fn producer(q: Queue<String>) {
///     q.put("Hello from child".to_string()).unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let q = Queue::new()?;
/// producer.spawn(q.clone())?.join()?;
/// assert_eq!(q.get()?, "Hello from child");
/// # Ok(())
/// # }
/// ```
pub struct Queue<T> {
    shared: Arc<Shared>,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { shared: Arc::clone(&self.shared), _items: PhantomData }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("len", &self.shared.len()).field("maxsize", &self.maxsize()).finish()
    }
}

/// Where an item is encoded before it is copied in: on the stack while it is small.
struct ItemBytes {
    small: [u8; 64],
    len: usize,
    large: Vec<u8>,
}

impl ItemBytes {
    fn bytes(&self) -> &[u8] {
        match self.large.is_empty() {
            true => &self.small[..self.len],
            false => &self.large,
        }
    }
}

impl std::io::Write for ItemBytes {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.large.is_empty() && self.len + buf.len() <= self.small.len() {
            self.small[self.len..self.len + buf.len()].copy_from_slice(buf);
            self.len += buf.len();
            return Ok(());
        }
        if self.large.is_empty() {
            self.large.extend_from_slice(&self.small[..self.len]);
        }
        self.large.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A new, unbounded queue.
    pub fn new() -> Result<Queue<T>> {
        Self::make(0, 0)
    }

    /// A new queue that holds at most `maxsize` items (Python's `Queue(maxsize)`).
    ///
    /// # Errors
    ///
    /// [`Error::QueueConfig`] for a `maxsize` of zero.
    pub fn bounded(maxsize: usize) -> Result<Queue<T>> {
        if maxsize == 0 {
            return Err(Error::QueueConfig { reason: "a bounded queue needs room for at least one item".into() });
        }
        Self::make(maxsize, 0)
    }

    fn make(maxsize: usize, flags: u32) -> Result<Queue<T>> {
        Ok(Queue { shared: Shared::create(maxsize, flags)?, _items: PhantomData })
    }

    /// Puts an item, waiting for room if the queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if the item cannot be serialized (the queue is as before; an item that
    /// holds a handle such as another queue cannot go through a queue: pass handles as
    /// arguments), [`Error::FrameTooLarge`] over 1 GiB, [`Error::ShutDown`],
    /// [`Error::QueueClosed`].
    pub fn put(&self, item: impl Borrow<T>) -> Result<()> {
        self.put_with(item.borrow(), Wait::Forever)
    }

    /// Puts an item, waiting at most `timeout` for room: [`Error::Full`] if none came.
    pub fn put_timeout(&self, item: impl Borrow<T>, timeout: Duration) -> Result<()> {
        self.put_with(item.borrow(), Wait::at_most(timeout))
    }

    /// Puts an item if there is room now: [`Error::Full`] if not (Python's `put_nowait`).
    pub fn try_put(&self, item: impl Borrow<T>) -> Result<()> {
        self.put_with(item.borrow(), Wait::Now)
    }

    fn put_with(&self, item: &T, wait: Wait) -> Result<()> {
        let mut buf = ItemBytes { small: [0; 64], len: 0, large: Vec::new() };
        crate::panic::catch(|| codec::encode_to("item", item, &mut buf))
            .unwrap_or_else(|r| Err(codec::serialize_panicked("item", std::any::type_name::<T>(), r.message)))?;
        let bytes = buf.bytes();
        crate::wire::frame::check_len(bytes.len(), crate::wire::frame::MAX_FRAME_LEN)?;
        self.shared.put_bytes(bytes, wait)
    }

    /// Puts every item of `items`, in order, as blocks where it can: in this thread's lane
    /// with room, small items are written one after another as block records (one header for
    /// up to 64 KiB of items) and appear together, so that a stream of small items costs a
    /// fraction of one `put` each (`W6 batched`). Each is an item of its
    /// own (a consumer may `get` them one by one). Waits for room as [`put`](Queue::put) does.
    ///
    /// Every item is encoded before any is put: an item that cannot be is [`Error::Encode`],
    /// and nothing is put. A producer killed while it puts a block has put a part of it: the
    /// items before some point, never one in part.
    ///
    /// ```
    /// # extern crate multiproc_runtime as multiproc;
    /// let q = multiproc::Queue::<u64>::new()?;
    /// q.put_many(0..1000)?;
    /// let first = q.get_many(600)?;
    /// assert_eq!(first, (0..600).collect::<Vec<_>>());
    /// assert_eq!(q.get_many(1000)?.len(), 400);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn put_many<I>(&self, items: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        let items = items.into_iter();
        // the items encoded one after another, to go into the ring as blocks (see `put_batch`)
        if codec::is_plain_number::<T>() {
            // SAFETY: `T` is a fixed-size number type (`is_plain_number`), `Copy` in fact:
            // reading one out of a borrow duplicates nothing that owns resources.
            let values: Vec<T> = items.map(|item| unsafe { std::ptr::read(item.borrow()) }).collect();
            // SAFETY: the numbers' bytes are initialized, `size_of_val` of them, and on this
            // little-endian target they are their encodings, one after another.
            let bytes = unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(&values[..])) };
            let batch = block::Batch::plain(bytes, std::mem::size_of::<T>());
            return self.shared.put_batch(&batch, Wait::Forever);
        }
        let mut batch = block::Batch::with_capacity(items.size_hint().0);
        // one catch for the block: a `Serialize` that panics puts nothing of it
        crate::panic::catch(|| {
            for item in items {
                batch.push(item.borrow())?;
            }
            Ok(())
        })
        .unwrap_or_else(|r| Err(codec::serialize_panicked("item", std::any::type_name::<T>(), r.message)))?;
        self.shared.put_batch(&batch, Wait::Forever)
    }

    /// Takes up to `max` items: waits for the first as [`get`](Queue::get) does, then takes
    /// the ones there now, up to `max`, holding each lane once for all it gives (`W6
    /// batched`). Never waits for more than the first. Plain numbers (`u8`-`u128`,
    /// `i8`-`i128`, `f32`, `f64`) are copied out as bytes, not decoded one by one.
    ///
    /// # Errors
    ///
    /// As [`get`](Queue::get). An item that does not decode ends the batch: the items before it
    /// are returned, and its [`Error::Decode`] comes from the next take in this process (or at
    /// once, if it was the first). A consumer killed while it takes a batch loses the items it
    /// had taken.
    pub fn get_many(&self, max: usize) -> Result<Vec<T>> {
        self.get_many_with(max, Wait::Forever)
    }

    /// As [`get_many`](Queue::get_many), waiting at most `timeout` for the first item:
    /// [`Error::Empty`] if none came.
    pub fn get_many_timeout(&self, max: usize, timeout: Duration) -> Result<Vec<T>> {
        self.get_many_with(max, Wait::at_most(timeout))
    }

    fn get_many_with(&self, max: usize, wait: Wait) -> Result<Vec<T>> {
        if let Some(e) = self.deferred() {
            return Err(e);
        }
        let mut out = Vec::with_capacity(max.min(4096));
        if max == 0 {
            return Ok(out);
        }
        let failed = std::cell::RefCell::new(None);
        // (the failures out of line, so that this is inlined into the loop over a block's items)
        #[cold]
        #[inline(never)]
        fn fail<T>(
            failed: &std::cell::RefCell<Option<Error>>,
            e: std::result::Result<bincode::Error, crate::wire::message::PanicReport>,
        ) -> bool {
            let e = match e {
                Ok(e) => codec::decode_failed::<T>("item", e),
                Err(r) => codec::deserialize_panicked("item", std::any::type_name::<T>(), r.message),
            };
            *failed.borrow_mut() = Some(e);
            false
        }
        // Panics are captured (reported as the take's error, not printed) while items are
        // decoded, not while this thread waits for the first.
        let mut read = |bytes: &[u8]| match crate::panic::catch_captured(|| codec::decode_plain::<T>(bytes)) {
            Ok(Ok(item)) => {
                out.push(item);
                true
            }
            Ok(Err(e)) => fail::<T>(&failed, Ok(e)),
            Err(r) => fail::<T>(&failed, Err(r)),
        };
        if codec::is_plain_number::<T>() {
            return self.get_many_plain(max, wait, out);
        }
        self.shared.take(wait, |bytes| {
            let _capturing = crate::panic::capturing();
            read(bytes);
        })?;
        if max > 1 && failed.borrow().is_none() {
            let _capturing = crate::panic::capturing();
            self.shared.take_many_now(max - 1, &mut read)?;
        }
        match failed.into_inner() {
            Some(e) if out.is_empty() => Err(e),
            Some(e) => {
                *self.shared.deferred.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                self.shared.has_deferred.store(true, std::sync::atomic::Ordering::Release);
                Ok(out)
            }
            None => Ok(out),
        }
    }

    /// [`get_many`](Queue::get_many) of a plain number (see [`codec::is_plain_number`]): each
    /// item's bytes are the number, copied out; an item of another size is a decode error, as
    /// its `Deserialize` would give.
    fn get_many_plain(&self, max: usize, wait: Wait, out: Vec<T>) -> Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        let bad = std::cell::Cell::new(None);
        let out = std::cell::RefCell::new(out);
        let mut read = |bytes: &[u8]| {
            if bytes.len() != size {
                bad.set(Some(bytes.len()));
                return false;
            }
            // SAFETY: `T` is one of the fixed-size number types (`is_plain_number`), for which
            // every bit pattern of `size` bytes is a value; `bytes` holds `size` bytes, read
            // unaligned.
            out.borrow_mut().push(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) });
            true
        };
        // a block of them: copied out at once
        let mut run = |bytes: &[u8]| {
            let mut out = out.borrow_mut();
            let n = bytes.len() / size;
            out.reserve(n);
            // SAFETY: as in `read`, for each of the `n` numbers of `bytes` (the queue gives a run
            // of whole items of `size` bytes); `reserve` made room for them after `len`, and
            // they are initialized before `set_len` counts them.
            unsafe {
                let len = out.len();
                let end = out.as_mut_ptr().add(len).cast::<u8>();
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), end, n * size);
                out.set_len(len + n);
            }
        };
        self.shared.take(wait, |bytes| {
            read(bytes);
        })?;
        if max > 1 && bad.get().is_none() {
            let mut bulk = take::Bulk { size, take: &mut run };
            self.shared.take_many_now_bulk(max - 1, &mut read, Some(&mut bulk))?;
        }
        let out = out.into_inner();
        match bad.get() {
            None => Ok(out),
            Some(len) => {
                let e = Error::Decode {
                    what: "item",
                    type_name: std::any::type_name::<T>().to_string(),
                    message: format!("an item of {len} bytes, where a {} has {size}", std::any::type_name::<T>()),
                };
                if out.is_empty() {
                    return Err(e);
                }
                *self.shared.deferred.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                self.shared.has_deferred.store(true, std::sync::atomic::Ordering::Release);
                Ok(out)
            }
        }
    }

    /// A decode error a `get_many` here left for the next take.
    #[inline]
    fn deferred(&self) -> Option<Error> {
        if !self.shared.has_deferred.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.shared.has_deferred.store(false, std::sync::atomic::Ordering::Release);
        self.shared.deferred.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Takes the next item, waiting for one.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] if the item cannot be deserialized as a `T` (it is taken all the
    /// same), [`Error::ShutDown`] once the queue is shut down and empty, [`Error::QueueClosed`].
    pub fn get(&self) -> Result<T> {
        self.get_with(Wait::Forever)
    }

    /// Takes the next item, waiting at most `timeout`: [`Error::Empty`] if none came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_with(Wait::at_most(timeout))
    }

    /// Takes the next item if there is one now: [`Error::Empty`] if not (Python's
    /// `get_nowait`).
    pub fn try_get(&self) -> Result<T> {
        self.get_with(Wait::Now)
    }

    fn get_with(&self, wait: Wait) -> Result<T> {
        if let Some(e) = self.deferred() {
            return Err(e);
        }
        let mut item = None;
        self.shared.take(wait, |bytes| {
            item =
                Some(crate::panic::catch(|| codec::decode::<T>("item", bytes)).unwrap_or_else(|r| {
                    Err(codec::deserialize_panicked("item", std::any::type_name::<T>(), r.message))
                }))
        })?;
        item.expect("take hands over an item when it returns Ok")
    }
}

impl<T> Queue<T> {
    /// How many items are in the queue now (others may put and take meanwhile: Python's
    /// `qsize`).
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a bounded queue is full now.
    pub fn is_full(&self) -> bool {
        self.maxsize().is_some_and(|max| self.len() >= max)
    }

    /// The bound of a [`bounded`](Queue::bounded) queue.
    pub fn maxsize(&self) -> Option<usize> {
        match self.shared.header().maxsize {
            0 => None,
            n => Some(n as usize),
        }
    }

    /// Stops this process from using the queue: later `put`s and `get`s here give
    /// [`Error::QueueClosed`]. Other processes go on; items already put stay. Python's
    /// `close()`.
    pub fn close(&self) {
        self.shared.closed.store(true, Release);
        self.shared.unbind_all();
    }

    /// Shuts the queue down, for every process (Python 3.13's `Queue.shutdown`): `put` gives
    /// [`Error::ShutDown`] from now on, and `get` once the queue is empty; blocked callers wake
    /// up. With `immediate`, the items left are dropped (and counted done, for a
    /// [`JoinableQueue`]) and `get` gives `ShutDown` at once.
    pub fn shutdown(&self, immediate: bool) {
        self.shared.shutdown(immediate);
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// A [`Queue`] that counts unfinished work: every item put is one task, [`task_done`] marks one
/// done, and [`join`] waits until all are. Python's `JoinableQueue`.
///
/// **A consumer that dies.** Where Python's `join` waits for ever on a task whose consumer died
/// between `get` and `task_done`, this one returns [`Error::TasksLost`] with the process and
/// how many tasks it took with it: killed, crashed, or returned without `task_done`. The item
/// is gone with it (a queue hands each item out once); put it again if it matters, and join
/// again to wait for the rest. So call `task_done` in the process that took the item: the
/// count of what a process holds is kept per process.
///
/// It derefs to its `Queue` for `put`, `get` and the rest.
///
/// # Examples
///
/// Two worker processes take jobs and mark each done; the parent waits for all of them:
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, JoinableQueue, Queue};
///
/// #[process_fn]
/// fn worker(jobs: JoinableQueue<u64>, results: Queue<u64>) -> multiproc::Result<()> {
///     for job in jobs.iter() {
///         results.put(job? * 10)?;
///         jobs.task_done()?; // after the work, so join() means "done", not "taken"
///     }
///     Ok(()) // iteration ends at shutdown
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (jobs, results) = (JoinableQueue::new()?, Queue::new()?);
/// let workers: Vec<_> =
///     (0..2).map(|_| worker.spawn(jobs.clone(), results.clone())).collect::<Result<_, _>>()?;
/// jobs.put_many(1..=20)?;
/// jobs.join()?; // every job done (or Err(TasksLost) naming a worker that died holding one)
/// jobs.shutdown(false);
/// for w in workers {
///     w.join()??;
/// }
/// let mut got = results.get_many(100)?;
/// got.sort();
/// assert_eq!(got, (1..=20).map(|j| j * 10).collect::<Vec<_>>());
/// # Ok(())
/// # }
/// ```
///
/// [`task_done`]: JoinableQueue::task_done
/// [`join`]: JoinableQueue::join
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A new, unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>> {
        Ok(JoinableQueue { queue: Queue::make(0, layout::JOINABLE)? })
    }

    /// A new joinable queue that holds at most `maxsize` items.
    pub fn bounded(maxsize: usize) -> Result<JoinableQueue<T>> {
        if maxsize == 0 {
            return Err(Error::QueueConfig { reason: "a bounded queue needs room for at least one item".into() });
        }
        Ok(JoinableQueue { queue: Queue::make(maxsize, layout::JOINABLE)? })
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one item taken from the queue as processed.
    ///
    /// # Errors
    ///
    /// [`Error::TaskDoneTooMany`] when every item put is done already.
    pub fn task_done(&self) -> Result<()> {
        self.queue.shared.task_done()
    }

    /// Waits until every item put has been marked done.
    ///
    /// # Errors
    ///
    /// [`Error::TasksLost`] as soon as a process is found to have ended holding tasks it took
    /// and did not mark done (looked for every 50 ms while waiting); each loss is reported once
    /// in this process, so joining again waits for the other tasks.
    pub fn join(&self) -> Result<()> {
        self.queue.shared.join(Wait::Forever)
    }

    /// Waits at most `timeout` until every item put has been marked done:
    /// [`Error::TasksUnfinished`] if some are not, [`Error::TasksLost`] as for
    /// [`join`](JoinableQueue::join).
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.queue.shared.join(Wait::at_most(timeout))
    }

    /// Items put and not yet marked done.
    pub fn unfinished(&self) -> u64 {
        self.queue.shared.unfinished()
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue { queue: self.queue.clone() }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue").field("len", &self.len()).field("unfinished", &self.unfinished()).finish()
    }
}

/// Crosses to another process as its memfd and doorbell, with the frame that carries it.
impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&fds::FdRef(self.shared.fd.as_fd()))?;
        t.serialize_element(&fds::FdRef(self.shared.doorbell.as_fd()))?;
        t.end()
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (memfd, doorbell) = <(fds::Fd, fds::Fd)>::deserialize(d)?;
        let shared = Shared::open(memfd.0, doorbell.0).map_err(serde::de::Error::custom)?;
        Ok(Queue { shared, _items: PhantomData })
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let queue = Queue::deserialize(d)?;
        if queue.shared.header().flags & layout::JOINABLE == 0 {
            return Err(serde::de::Error::custom("a plain Queue arrived where a JoinableQueue was expected"));
        }
        Ok(JoinableQueue { queue })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn items_come_out_in_order_and_the_errors_say_why() {
        let q = Queue::<String>::new().unwrap();
        assert!(matches!(q.try_get(), Err(Error::Empty { waited: None })));
        for i in 0..1000 {
            q.put(format!("item {i}")).unwrap();
        }
        assert_eq!(q.len(), 1000);
        for i in 0..1000 {
            assert_eq!(q.get().unwrap(), format!("item {i}"));
        }
        assert!(q.is_empty());
        let start = Instant::now();
        assert!(matches!(q.get_timeout(Duration::from_millis(50)), Err(Error::Empty { waited: Some(_) })));
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_bounded_queue_refuses_what_does_not_fit() {
        let q = Queue::<u64>::bounded(2).unwrap();
        q.put(1u64).unwrap();
        q.try_put(2u64).unwrap();
        assert!(q.is_full());
        assert!(matches!(q.try_put(3u64), Err(Error::Full { maxsize: Some(2), waited: None })));
        assert!(matches!(q.put_timeout(3u64, Duration::from_millis(20)), Err(Error::Full { .. })));
        assert_eq!(q.get().unwrap(), 1);
        q.try_put(3u64).unwrap();
        assert_eq!((q.get().unwrap(), q.get().unwrap()), (2, 3));
        assert!(matches!(Queue::<u8>::bounded(0), Err(Error::QueueConfig { .. })));
    }

    #[test]
    fn an_unbounded_queue_takes_far_more_than_a_ring_from_one_producer_without_waiting() {
        let q = Queue::<serde_bytes::ByteBuf>::new().unwrap();
        // 20 MiB from one thread, with nobody taking: twenty rings' worth, and no wait
        let t = std::time::Instant::now();
        for n in 0..500u32 {
            let mut item = vec![0u8; 40_000];
            item[..4].copy_from_slice(&n.to_le_bytes());
            q.try_put(serde_bytes::ByteBuf::from(item)).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "it waited: {:?}", t.elapsed());
        assert_eq!(q.len(), 500);
        assert!(!q.is_full());
        for n in 0..500u32 {
            let item = q.try_get().unwrap();
            assert_eq!((item.len(), &item[..4]), (40_000, &n.to_le_bytes()[..]), "in order");
        }
        assert!(q.is_empty());
        q.try_put(serde_bytes::ByteBuf::from(vec![1])).unwrap(); // back in the ring
        assert_eq!(q.try_get().unwrap().len(), 1);
    }

    #[test]
    fn memory_that_is_not_a_queue_is_refused() {
        let doorbell = || crate::sys::shm::eventfd().unwrap();
        let small = crate::sys::shm::memfd("not-a-queue", 4096).unwrap();
        let err = Shared::open(small, doorbell()).unwrap_err();
        assert!(err.to_string().contains("not a multiproc queue: its memory is too small"), "{err}");
        let blank = crate::sys::shm::memfd("not-a-queue", layout::MAPPED).unwrap();
        let err = Shared::open(blank, doorbell()).unwrap_err();
        assert!(err.to_string().contains("does not hold a queue of this version"), "{err}");
    }

    #[test]
    fn large_items_and_items_larger_than_a_lane() {
        let q = Queue::<Vec<u8>>::new().unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        q.put(&big).unwrap();
        q.put(vec![1u8; 70_000]).unwrap();
        q.put(vec![2u8; 10]).unwrap();
        assert!(q.get().unwrap() == big);
        assert_eq!(q.get().unwrap(), vec![1u8; 70_000]);
        assert_eq!(q.get().unwrap(), vec![2u8; 10]);
    }

    #[test]
    fn threads_put_and_get_concurrently_and_nothing_is_lost() {
        let q = Queue::<(u32, u32)>::new().unwrap();
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        q.put((p, i)).unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(item) = q.get_timeout(Duration::from_millis(500)) {
                        got.push(item);
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<(u32, u32)> = consumers.into_iter().flat_map(|c| c.join().unwrap()).collect();
        assert_eq!(all.len(), 80_000);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 80_000, "each item exactly once");
    }

    #[test]
    fn more_producing_threads_than_lanes_share_one_and_lose_nothing() {
        let q = Queue::<(u32, u32)>::new().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(80));
        let producers: Vec<_> = (0..80)
            .map(|t| {
                let (q, barrier) = (q.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait(); // all 80 hold a lane, or share the last one, at once
                    for i in 0..500 {
                        q.put((t, i)).unwrap();
                    }
                })
            })
            .collect();
        let mut last = vec![None; 80];
        for _ in 0..80 * 500 {
            let (t, i) = q.get_timeout(Duration::from_secs(30)).unwrap();
            assert!(last[t as usize].is_none_or(|prev| prev < i), "thread {t}: {i} out of order");
            last[t as usize] = Some(i);
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(last.iter().all(|l| *l == Some(499)));
        assert!(q.is_empty());
    }

    /// A thread put into the shared lane (every lane was held); then a lane is given back. The
    /// thread's next items may not go to that lane while its first still waits in the shared
    /// one, or a consumer would take them first (seen in CI: "thread 2: 0 out of order").
    #[test]
    fn a_thread_leaves_the_shared_lane_only_once_its_items_there_are_taken() {
        for bounded in [false, true] {
            let q = match bounded {
                false => Queue::<u32>::new().unwrap(),
                true => Queue::<u32>::bounded(1000).unwrap(),
            };
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let holders: Vec<_> = (0..layout::PRIVATE_LANES)
                .map(|_| {
                    let (q, rx, held_tx) = (q.clone(), release_rx.clone(), held_tx.clone());
                    std::thread::spawn(move || {
                        q.put(1_000_000).unwrap(); // takes a lane of its own
                        held_tx.send(()).unwrap();
                        let _ = rx.lock().unwrap().recv();
                    })
                })
                .collect();
            for _ in 0..layout::PRIVATE_LANES {
                held_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            }
            let (step_tx, step_rx) = std::sync::mpsc::channel::<()>();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let sharer = {
                let q = q.clone();
                std::thread::spawn(move || {
                    q.put(0).unwrap(); // every lane is held: the shared one
                    done_tx.send(()).unwrap();
                    step_rx.recv().unwrap();
                    for i in 1..100 {
                        q.put(i).unwrap();
                    }
                })
            };
            done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            release_tx.send(()).unwrap(); // one holder ends, and its lane is free
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !holders.iter().any(|h| h.is_finished()) {
                assert!(std::time::Instant::now() < deadline, "no lane holder ended");
                std::thread::sleep(Duration::from_millis(1));
            }
            step_tx.send(()).unwrap();
            sharer.join().unwrap();
            let mut next = 0;
            for _ in 0..layout::PRIVATE_LANES + 100 {
                let x = q.get_timeout(Duration::from_secs(30)).unwrap();
                if x < 1_000_000 {
                    assert_eq!(x, next, "the sharing thread's items out of order (bounded: {bounded})");
                    next += 1;
                }
            }
            assert_eq!(next, 100);
            drop(release_tx);
            for h in holders {
                h.join().unwrap();
            }
        }
    }

    #[test]
    fn put_many_and_get_many_keep_the_order_and_every_item() {
        let q = Queue::<u64>::new().unwrap();
        q.put_many(0..10u64).unwrap();
        assert_eq!(q.len(), 10);
        assert_eq!(q.get().unwrap(), 0, "each item of a block is an item");
        assert_eq!(q.get_many(4).unwrap(), [1, 2, 3, 4]);
        assert_eq!(q.get_many(100).unwrap(), [5, 6, 7, 8, 9], "never waits for more than the first");
        let start = Instant::now();
        assert!(matches!(q.get_many_timeout(5, Duration::from_millis(30)), Err(Error::Empty { .. })));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(q.get_many(0).unwrap().is_empty());
        // more than a ring holds (3 MiB of records): the rest goes one by one, to the spill
        q.put_many(0..200_000u64).unwrap();
        let mut next = 0u64;
        while next < 200_000 {
            for x in q.get_many(1024).unwrap() {
                assert_eq!(x, next);
                next += 1;
            }
        }
        assert!(q.is_empty());
        // large items inside a block
        let v = Queue::<Vec<u8>>::new().unwrap();
        let items: Vec<Vec<u8>> = (0..6).map(|k| vec![k as u8; if k % 2 == 0 { 10 } else { 200_000 }]).collect();
        v.put_many(&items).unwrap();
        assert_eq!(v.get_many(10).unwrap(), items);
    }

    #[test]
    fn put_many_on_a_bounded_queue_waits_for_room_and_never_passes_the_bound() {
        let q = Queue::<u32>::bounded(10).unwrap();
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || q.put_many(0..1000u32))
        };
        let mut got = Vec::new();
        while got.len() < 1000 {
            assert!(q.len() <= 10, "{} items in a queue of 10", q.len());
            got.extend(q.get_many_timeout(7, Duration::from_secs(30)).unwrap());
        }
        producer.join().unwrap().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    /// Plain numbers are read by copying their bytes: every type of them comes back bit for
    /// bit (negative zero, a NaN's payload, the extremes), put one by one or in blocks.
    #[test]
    fn plain_numbers_of_every_width_come_back_bit_for_bit() {
        fn round_trip<T: Serialize + DeserializeOwned + Copy + fmt::Debug>(
            values: &[T],
            same: impl Fn(&T, &T) -> bool,
        ) {
            let q = Queue::<T>::new().unwrap();
            q.put(values[0]).unwrap();
            q.put_many(values.iter()).unwrap();
            q.put_many(values[1..].iter().copied()).unwrap();
            let mut got = q.get_many(1).unwrap();
            while got.len() < 2 * values.len() {
                got.extend(q.get_many(3).unwrap());
            }
            let want: Vec<T> = [&values[..1], values, &values[1..]].concat();
            assert_eq!(got.len(), want.len());
            assert!(got.iter().zip(&want).all(|(a, b)| same(a, b)), "{got:?} against {want:?}");
            assert!(q.try_get().is_err());
        }
        round_trip(&[0u8, 1, 255], |a, b| a == b);
        round_trip(&[i16::MIN, -1, 0, i16::MAX], |a, b| a == b);
        round_trip(&[u32::MAX, 7, 0], |a, b| a == b);
        round_trip(&[i64::MIN, -2, i64::MAX], |a, b| a == b);
        round_trip(&[u128::MAX, 1 << 100, 3], |a, b| a == b);
        round_trip(&[i128::MIN, -5], |a, b| a == b);
        round_trip(&[-0.0f32, f32::NAN, f32::INFINITY, 1.5], |a, b| a.to_bits() == b.to_bits());
        let nan_with_payload = f64::from_bits(0x7ff8_0000_dead_beef);
        round_trip(&[-0.0f64, nan_with_payload, f64::MIN_POSITIVE, 2.5], |a, b| a.to_bits() == b.to_bits());
    }

    /// An item of another size than the number a `get_many` reads (put through a handle of
    /// another type) is that take's decode error, as its `Deserialize` would give: the items
    /// before it come back, and the ones after it stay.
    #[test]
    fn a_plain_number_of_the_wrong_size_ends_the_batch_with_a_decode_error() {
        let q = Queue::<u64>::new().unwrap();
        let narrow = Queue::<u32> { shared: Arc::clone(&q.shared), _items: PhantomData };
        q.put_many([1u64, 2]).unwrap();
        narrow.put(3u32).unwrap();
        q.put(4u64).unwrap();
        assert_eq!(q.get_many(10).unwrap(), [1, 2]);
        match q.get_many(10) {
            Err(Error::Decode { message, .. }) => assert!(message.contains("an item of 4 bytes"), "{message}"),
            other => panic!("expected the deferred decode error, got {other:?}"),
        }
        assert_eq!(q.get_many(10).unwrap(), [4]);
        narrow.put(5u32).unwrap();
        assert!(matches!(q.get_many(10), Err(Error::Decode { .. })), "first in the batch: at once");
        // a block of numbers of another size, behind a block of the right one: not copied out
        // as a run of these
        q.put_many([8u64, 9]).unwrap();
        narrow.put_many([6u32, 7]).unwrap();
        assert_eq!(q.get_many(10).unwrap(), [8, 9]);
        assert!(matches!(q.get_many(10), Err(Error::Decode { .. })));
        assert!(matches!(q.get_many(10), Err(Error::Decode { .. })), "each of the block's items is one");
        assert!(q.try_get().is_err());
    }

    /// An item that does not decode ends a batch: the ones before it come back, its error
    /// from the next take, and the items after it stay in the queue.
    #[test]
    fn an_item_that_does_not_decode_ends_the_batch_and_its_error_comes_next() {
        #[derive(Debug, PartialEq)]
        struct Picky(u64);
        impl Serialize for Picky {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_u64(self.0)
            }
        }
        impl<'de> Deserialize<'de> for Picky {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                match u64::deserialize(d)? {
                    13 => Err(serde::de::Error::custom("thirteen is refused")),
                    x => Ok(Picky(x)),
                }
            }
        }
        let q = Queue::<Picky>::new().unwrap();
        q.put_many([1, 2, 13, 4, 5].map(Picky)).unwrap();
        assert_eq!(q.get_many(10).unwrap(), [Picky(1), Picky(2)]);
        match q.get() {
            Err(Error::Decode { message, .. }) => assert!(message.contains("thirteen"), "{message}"),
            other => panic!("expected the deferred decode error, got {other:?}"),
        }
        assert_eq!(q.get_many(10).unwrap(), [Picky(4), Picky(5)]);
        q.put(Picky(13)).unwrap();
        assert!(matches!(q.get_many(10), Err(Error::Decode { .. })), "first in the batch: at once");
        // an item that cannot be encoded: nothing of the block is put
        struct Unencodable;
        impl Serialize for Unencodable {
            fn serialize<S: Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("never"))
            }
        }
        impl<'de> Deserialize<'de> for Unencodable {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                <()>::deserialize(d).map(|()| Unencodable)
            }
        }
        let u = Queue::<Unencodable>::new().unwrap();
        assert!(matches!(u.put_many([Unencodable]), Err(Error::Encode { .. })));
        assert!(u.is_empty());
    }

    #[test]
    fn joinable_counts_and_shutdown() {
        let q = JoinableQueue::<u8>::new().unwrap();
        q.put(1u8).unwrap();
        q.put(2u8).unwrap();
        assert_eq!(q.unfinished(), 2);
        assert!(q.join_timeout(Duration::from_millis(10)).is_err());
        q.get().unwrap();
        q.task_done().unwrap();
        q.get().unwrap();
        q.task_done().unwrap();
        assert!(matches!(q.task_done(), Err(Error::TaskDoneTooMany)));
        q.join().unwrap();

        q.put(3u8).unwrap();
        q.shutdown(false);
        assert!(matches!(q.put(4u8), Err(Error::ShutDown)));
        assert_eq!(q.get().unwrap(), 3, "a graceful shutdown still gives what is there");
        assert!(matches!(q.get(), Err(Error::ShutDown)));
        q.task_done().unwrap();
        q.join().unwrap();
    }

    #[crate::process_fn(crate = crate)]
    fn wait_for_one(q: Queue<u64>) -> u64 {
        q.get().unwrap()
    }

    #[test]
    fn a_consumer_killed_in_its_sleep_stops_costing_each_put_a_wake_up() {
        let q = Queue::<u64>::new().unwrap();
        let mut sleeper = wait_for_one.spawn(q.clone()).unwrap();
        let registered = || q.shared.header().items.0.sleepers.load(Relaxed);
        let start = Instant::now();
        while registered() == 0 {
            assert!(start.elapsed() < Duration::from_secs(30), "the child never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        sleeper.kill().unwrap();
        let _ = sleeper.join_timeout(Duration::from_secs(30));
        assert_eq!(registered(), 1, "the dead child is still registered");
        for i in 0..100u64 {
            q.put(i).unwrap();
        }
        assert_eq!(registered(), 0, "its registration was taken back");
        assert_eq!(q.len(), 100);
    }

    #[test]
    fn an_item_that_holds_a_handle_cannot_go_through_a_queue() {
        let q = Queue::<Queue<u8>>::new().unwrap();
        let inner = Queue::<u8>::new().unwrap();
        let err = q.put(&inner).unwrap_err();
        assert!(
            matches!(err, Error::Encode { .. }) && err.to_string().contains("cannot be serialized anywhere else"),
            "{err}"
        );
        assert!(q.is_empty());
    }
}
