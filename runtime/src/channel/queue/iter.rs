//! Iterating over a queue: `get` until it is shut down.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::queue::Queue;
use crate::error::{Error, Result};

/// The items of a [`Queue`], each taken with [`get`](Queue::get), until the queue is shut down
/// and empty (Python's `iter(q.get, sentinel)`, with [`shutdown`](Queue::shutdown) for the
/// sentinel). An error other than [`Error::ShutDown`] is yielded, and iteration goes on after
/// it (an item that does not decode is taken all the same); after [`Error::QueueClosed`]
/// (this process closed the queue) it ends.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// let q = multiproc::Queue::<u32>::new()?;
/// q.put_many([1, 2, 3])?;
/// q.shutdown(false); // no more puts; gets go on until it is empty
/// let items: Vec<u32> = q.iter().collect::<multiproc::Result<_>>()?;
/// assert_eq!(items, [1, 2, 3]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub struct QueueIter<'a, T> {
    queue: &'a Queue<T>,
    done: bool,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// The items, taken one by one until the queue is shut down and empty: see [`QueueIter`].
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter { queue: self, done: false }
    }
}

impl<T: Serialize + DeserializeOwned> Iterator for QueueIter<'_, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        match self.queue.get() {
            Err(Error::ShutDown) => {
                self.done = true;
                None
            }
            Err(e @ Error::QueueClosed) => {
                self.done = true;
                Some(Err(e))
            }
            r => Some(r),
        }
    }
}

impl<'a, T: Serialize + DeserializeOwned> IntoIterator for &'a Queue<T> {
    type Item = Result<T>;
    type IntoIter = QueueIter<'a, T>;

    fn into_iter(self) -> QueueIter<'a, T> {
        self.iter()
    }
}
