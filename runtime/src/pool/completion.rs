//! Waiting on many results at once: `as_completed` and `wait_results`, as
//! `concurrent.futures` has them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::pool::async_result::{AsyncResult, Completion, Status};

/// The results of `handles` in the order they finish, each with its index in `handles`
/// (`concurrent.futures.as_completed`). A result already in comes first.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use std::time::Duration;
/// use multiproc::{as_completed, process_fn, Pool};
///
/// #[process_fn]
/// fn sleep_then(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(3)?;
/// let handles: Vec<_> = [300, 10, 150].into_iter().map(|ms| pool.apply_async(sleep_then, (ms,))).collect();
/// let order: Vec<usize> = as_completed(handles).map(|(i, r)| r.map(|_| i)).collect::<Result<_, _>>()?;
/// assert_eq!(order, [1, 2, 0]); // the 10 ms one first
/// # Ok(())
/// # }
/// ```
pub fn as_completed<T>(handles: impl IntoIterator<Item = AsyncResult<T>>) -> AsCompleted<T> {
    let handles: Vec<Option<AsyncResult<T>>> = handles.into_iter().map(Some).collect();
    let completion = Arc::new(Completion::default());
    for (i, h) in handles.iter().enumerate() {
        h.as_ref().expect("just put").slot().watch(&completion, i);
    }
    let left = handles.len();
    AsCompleted { handles, completion, left }
}

/// The iterator of [`as_completed`].
#[derive(Debug)]
pub struct AsCompleted<T> {
    handles: Vec<Option<AsyncResult<T>>>,
    completion: Arc<Completion>,
    left: usize,
}

impl<T> AsCompleted<T> {
    /// The next result to finish, waiting at most `timeout`: `Err(NotReady)` if none did
    /// (the rest go on; call again), `Ok(None)` when all have been given.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<(usize, Result<T>)>> {
        self.next_by(Some(Instant::now() + timeout)).ok_or(Error::NotReady { timeout })
    }

    fn next_by(&mut self, deadline: Option<Instant>) -> Option<Option<(usize, Result<T>)>> {
        if self.left == 0 {
            return Some(None);
        }
        let i = self.completion.next(deadline)?;
        let mut handle = self.handles[i].take().expect("each index is told once");
        self.left -= 1;
        let result = handle.try_get().expect("told once it arrived");
        Some(Some((i, result)))
    }
}

impl<T> Iterator for AsCompleted<T> {
    type Item = (usize, Result<T>);

    fn next(&mut self) -> Option<(usize, Result<T>)> {
        self.next_by(None).flatten()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// When [`wait_results`] returns (`concurrent.futures`' `return_when`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any result is in.
    FirstCompleted,
    /// As soon as any result is an error, or all are in.
    FirstError,
    /// When all are in.
    AllCompleted,
}

/// Which of `handles` are done and which are not, once `when` holds or `timeout` passes
/// (`concurrent.futures.wait`): two lists of indices into `handles`. Nothing is taken: read
/// each result from its handle.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use std::time::Duration;
/// use multiproc::{process_fn, wait_results, Pool, ReturnWhen};
///
/// #[process_fn]
/// fn check(x: u64) -> u64 {
///     assert!(x != 3, "3 is bad");
///     std::thread::sleep(Duration::from_millis(20 * x));
///     x
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let handles: Vec<_> = (1..=4).map(|x| pool.apply_async(check, (x,))).collect();
/// let (done, _pending) = wait_results(&handles, ReturnWhen::FirstError, None);
/// assert!(done.iter().any(|&i| handles[i].ready()));
/// let (done, pending) = wait_results(&handles, ReturnWhen::AllCompleted, Some(Duration::from_secs(30)));
/// assert_eq!((done.len(), pending.len()), (4, 0));
/// # Ok(())
/// # }
/// ```
pub fn wait_results<T>(
    handles: &[AsyncResult<T>],
    when: ReturnWhen,
    timeout: Option<Duration>,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = timeout.map(|t| Instant::now() + t);
    let completion = Arc::new(Completion::default());
    for (i, h) in handles.iter().enumerate() {
        h.slot().watch(&completion, i);
    }
    loop {
        let status: Vec<Status> = handles.iter().map(|h| h.slot().status()).collect();
        let done = |s: &Status| *s != Status::Pending;
        let holds = match when {
            ReturnWhen::FirstCompleted => status.iter().any(done) || handles.is_empty(),
            ReturnWhen::FirstError => status.contains(&Status::Failed) || status.iter().all(done),
            ReturnWhen::AllCompleted => status.iter().all(done),
        };
        if holds || completion.next(deadline).is_none() {
            let (d, p): (Vec<usize>, Vec<usize>) =
                (0..handles.len()).partition(|&i| done(&status[i]) || handles[i].ready());
            return (d, p);
        }
    }
}
