//! The handle of work submitted to a pool: wait on it, with or without a deadline, poll it, or
//! `.await` it from any async runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::pool::shared::Inner;

/// Told, with its index, when each result it watches arrives (`as_completed`, `wait_results`).
#[derive(Debug, Default)]
pub(crate) struct Completion {
    arrived: Mutex<VecDeque<usize>>,
    changed: Condvar,
}

impl Completion {
    fn tell(&self, index: usize) {
        self.arrived.lock().unwrap_or_else(|p| p.into_inner()).push_back(index);
        self.changed.notify_all();
    }

    /// The next index told, waiting until `deadline` (forever for `None`).
    pub(crate) fn next(&self, deadline: Option<Instant>) -> Option<usize> {
        let mut arrived = self.arrived.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(i) = arrived.pop_front() {
                return Some(i);
            }
            match deadline {
                None => arrived = self.changed.wait(arrived).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    arrived = self.changed.wait_timeout(arrived, left).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
    }
}

/// Called with the result instead of keeping it (`on_done`).
type Callback<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// Where a result lands; shared by the handle and whoever delivers it.
#[derive(Debug)]
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

enum SlotState<T> {
    Pending { waker: Option<Waker>, watchers: Vec<(Arc<Completion>, usize)>, callback: Option<Callback<T>> },
    Done(Result<T>),
    Taken,
}

impl<T> std::fmt::Debug for SlotState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotState::Pending { .. } => "Pending",
            SlotState::Done(Ok(_)) => "Done(Ok)",
            SlotState::Done(Err(_)) => "Done(Err)",
            SlotState::Taken => "Taken",
        })
    }
}

/// Where a result is, without taking it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Pending,
    Ok,
    Failed,
    Taken,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Arc<Slot<T>> {
        Arc::new(Slot {
            state: Mutex::new(SlotState::Pending { waker: None, watchers: Vec::new(), callback: None }),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the result and wakes whoever waits (or gives it to the `on_done` callback, in
    /// this thread).
    pub(crate) fn fill(&self, result: Result<T>) {
        let mut st = self.lock();
        let (waker, watchers, callback) = match std::mem::replace(&mut *st, SlotState::Done(result)) {
            SlotState::Pending { waker, watchers, callback } => (waker, watchers, callback),
            other => {
                *st = other; // filled once only
                return;
            }
        };
        let callback = callback.map(|cb| {
            let SlotState::Done(result) = std::mem::replace(&mut *st, SlotState::Taken) else { unreachable!() };
            (cb, result)
        });
        drop(st);
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        for (completion, index) in watchers {
            completion.tell(index);
        }
        if let Some((cb, result)) = callback {
            // a callback that panics must not take the pool's driver down with it
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || cb(result)));
        }
    }

    /// Where the result is.
    pub(crate) fn status(&self) -> Status {
        match &*self.lock() {
            SlotState::Pending { .. } => Status::Pending,
            SlotState::Done(Ok(_)) => Status::Ok,
            SlotState::Done(Err(_)) => Status::Failed,
            SlotState::Taken => Status::Taken,
        }
    }

    /// Tells `completion` (with `index`) when the result arrives; at once if it is there.
    pub(crate) fn watch(&self, completion: &Arc<Completion>, index: usize) {
        let mut st = self.lock();
        match &mut *st {
            SlotState::Pending { watchers, .. } => watchers.push((Arc::clone(completion), index)),
            _ => {
                drop(st);
                completion.tell(index);
            }
        }
    }
}

/// The pool tasks behind a handle, to cancel them.
#[derive(Debug, Clone)]
pub(crate) struct Tasks {
    pub(crate) pool: Weak<Inner>,
    pub(crate) ids: Vec<u64>,
}

/// The result of work submitted to a [`Pool`](crate::Pool), arriving later: Python's
/// `AsyncResult`, and a `Future` too.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use std::time::Duration;
/// use multiproc::{process_fn, Pool};
///
/// #[process_fn]
/// fn add(a: u64, b: u64) -> u64 {
///     a + b
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let pending = pool.apply_async(add, (5, 6));
/// // ... other work here ...
/// assert_eq!(pending.wait_timeout(Duration::from_secs(30))?, 11);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "an AsyncResult does nothing unless waited on; the work runs either way"]
pub struct AsyncResult<T> {
    slot: Arc<Slot<T>>,
    tasks: Option<Tasks>,
}

impl<T> AsyncResult<T> {
    pub(crate) fn new() -> (AsyncResult<T>, Arc<Slot<T>>) {
        let slot = Slot::new();
        (AsyncResult { slot: Arc::clone(&slot), tasks: None }, slot)
    }

    /// The same handle, able to cancel `tasks`.
    pub(crate) fn with_tasks(mut self, tasks: Tasks) -> AsyncResult<T> {
        self.tasks = Some(tasks);
        self
    }

    pub(crate) fn slot(&self) -> &Arc<Slot<T>> {
        &self.slot
    }

    /// Cancels the work if no worker has started it (Python's `Future.cancel()`): it never
    /// runs, and the result is [`Error::Cancelled`] `{ killed: false }`. Returns whether it
    /// was cancelled; `false` when it runs, has run, or was a result given at once. For a
    /// [`map_async`](crate::Pool::map_async), the chunks not yet started are cancelled (the
    /// result is then the cancelled item's error) and the others run.
    pub fn cancel(&self) -> bool {
        let Some(tasks) = &self.tasks else { return false };
        let Some(pool) = tasks.pool.upgrade() else { return false };
        pool.cancel_queued(&tasks.ids) > 0
    }

    /// Cancels the work wherever it is: not started, as [`cancel`](AsyncResult::cancel) does;
    /// running, by killing its worker (which the pool replaces), the only way to stop native
    /// code in the middle; the result is then [`Error::Cancelled`] `{ killed: true }`. Work
    /// that finishes before the kill lands keeps its result. Returns `false` if the result was
    /// already in. Only for idempotent work, or work whose half-done state you can clean up:
    /// a kill stops it at any instruction.
    pub fn cancel_or_kill(&self) -> bool {
        if self.ready() {
            return false;
        }
        let Some(tasks) = &self.tasks else { return false };
        let Some(pool) = tasks.pool.upgrade() else { return false };
        for &id in &tasks.ids {
            pool.request_kill(id);
        }
        true
    }

    /// Calls `callback` with the result when it arrives, in the thread that delivers it (the
    /// pool's), or now, in this one, if it is there (Python's `callback` and `error_callback`
    /// of `apply_async`, in one). Keep it short: the pool delivers other results after it. A
    /// callback that panics is contained.
    pub fn on_done(self, callback: impl FnOnce(Result<T>) + Send + 'static) {
        let mut st = self.slot.lock();
        match std::mem::replace(&mut *st, SlotState::Taken) {
            SlotState::Pending { waker, watchers, callback: None } => {
                *st = SlotState::Pending { waker, watchers, callback: Some(Box::new(callback)) };
            }
            SlotState::Done(result) => {
                drop(st);
                callback(result);
            }
            SlotState::Taken => {
                drop(st);
                callback(Err(Error::AlreadyJoined));
            }
            SlotState::Pending { .. } => unreachable!("a handle is consumed by on_done"),
        }
    }

    /// A result that is already there (an error found before submitting, say).
    pub(crate) fn done(result: Result<T>) -> AsyncResult<T> {
        let (r, slot) = Self::new();
        slot.fill(result);
        r
    }

    /// Waits for the result.
    pub fn wait(self) -> Result<T> {
        let mut st = self.slot.lock();
        loop {
            match std::mem::replace(&mut *st, SlotState::Taken) {
                SlotState::Done(result) => return result,
                SlotState::Taken => return Err(Error::AlreadyJoined),
                pending => {
                    *st = pending;
                    st = self.slot.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Waits at most `timeout`. On [`Error::NotReady`] the work goes on and the handle stays
    /// usable: wait again.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.slot.lock();
        loop {
            match std::mem::replace(&mut *st, SlotState::Taken) {
                SlotState::Done(result) => return result,
                SlotState::Taken => return Err(Error::AlreadyJoined),
                pending => *st = pending,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NotReady { timeout });
            }
            st = self.slot.ready.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Whether the result has arrived (Python's `ready()`).
    pub fn ready(&self) -> bool {
        !matches!(*self.slot.lock(), SlotState::Pending { .. })
    }

    /// The result, if it has arrived; `None` while the work goes on. Taken once.
    pub fn try_get(&mut self) -> Option<Result<T>> {
        let mut st = self.slot.lock();
        match std::mem::replace(&mut *st, SlotState::Taken) {
            SlotState::Done(result) => Some(result),
            SlotState::Taken => Some(Err(Error::AlreadyJoined)),
            pending => {
                *st = pending;
                None
            }
        }
    }
}

impl<T> Future for AsyncResult<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut st = self.slot.lock();
        match std::mem::replace(&mut *st, SlotState::Taken) {
            SlotState::Done(result) => Poll::Ready(result),
            SlotState::Taken => Poll::Ready(Err(Error::AlreadyJoined)),
            SlotState::Pending { watchers, callback, .. } => {
                *st = SlotState::Pending { waker: Some(cx.waker().clone()), watchers, callback };
                Poll::Pending
            }
        }
    }
}
