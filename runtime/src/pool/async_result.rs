//! The handle of work submitted to a pool: wait on it, with or without a deadline, poll it, or
//! `.await` it from any async runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where a result lands; shared by the handle and whoever delivers it.
#[derive(Debug)]
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

#[derive(Debug)]
enum SlotState<T> {
    Pending(Option<Waker>),
    Done(Result<T>),
    Taken,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Arc<Slot<T>> {
        Arc::new(Slot { state: Mutex::new(SlotState::Pending(None)), ready: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the result and wakes whoever waits.
    pub(crate) fn fill(&self, result: Result<T>) {
        let mut st = self.lock();
        let waker = match std::mem::replace(&mut *st, SlotState::Done(result)) {
            SlotState::Pending(waker) => waker,
            other => {
                *st = other; // filled once only
                return;
            }
        };
        drop(st);
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
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
}

impl<T> AsyncResult<T> {
    pub(crate) fn new() -> (AsyncResult<T>, Arc<Slot<T>>) {
        let slot = Slot::new();
        (AsyncResult { slot: Arc::clone(&slot) }, slot)
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
        !matches!(*self.slot.lock(), SlotState::Pending(_))
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
            SlotState::Pending(_) => {
                *st = SlotState::Pending(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}
