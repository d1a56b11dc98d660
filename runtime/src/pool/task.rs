//! A unit of work on its way through the pool, and how its outcome is delivered.
//!
//! Two guards make the pool's bookkeeping hold on every path: a task carries the
//! [`Outstanding`] token that counts it (made under the pool's lock, given back when the task
//! is dropped, however that happens), and its [`Sink`] delivers exactly once (a sink dropped
//! unused delivers [`Failure::Terminated`], so no waiter is left waiting).

use std::time::Duration;

use crate::error::Error;
use crate::pool::shared::Outstanding;
use crate::wire::frame::{Encoded, Frame};

/// Receives a task's outcome, exactly once.
pub(crate) struct Sink(Option<Box<dyn FnOnce(Delivery) + Send>>);

impl Sink {
    pub(crate) fn new(f: impl FnOnce(Delivery) + Send + 'static) -> Sink {
        Sink(Some(Box::new(f)))
    }

    /// A sink that throws the outcome away (the caller reads the reply itself).
    pub(crate) fn none() -> Sink {
        Sink(None)
    }

    /// Delivers the outcome. A sink that panics anyway is contained: the thread that delivers
    /// (the pool's driver, say) must live on.
    pub(crate) fn deliver(mut self, delivery: Delivery) {
        if let Some(f) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(delivery)));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                f(Delivery::Failed(Failure::Terminated))
            }));
        }
    }
}

/// One frame for a worker: a single call, or a batch of calls (a chunk of a map).
pub(crate) struct Task {
    pub(crate) id: u64,
    /// The whole frame and its descriptors, shared with the out-queue of the worker it went
    /// to, so that a task whose worker died before running it can go to another.
    pub(crate) frame: std::sync::Arc<Encoded>,
    /// The most it may run before its worker is killed: the pool's per-call limit times the
    /// calls in the frame.
    pub(crate) timeout: Option<Duration>,
    pub(crate) sink: Sink,
    /// Counts this task as outstanding for as long as it exists.
    pub(crate) _counted: Outstanding,
    /// Its span, with the `tracing` feature.
    pub(crate) span: crate::trace::TaskSpan,
    /// Runs left if its worker dies running it.
    pub(crate) retries_left: u32,
}

impl Task {
    /// Delivers the outcome; the task is counted done when this returns.
    pub(crate) fn complete(self, delivery: Delivery) {
        let Task { sink, _counted, span, .. } = self;
        span.done(|| match &delivery {
            Delivery::Failed(f) => Some(f.to_error()),
            Delivery::Reply { .. } => None,
        });
        sink.deliver(delivery);
        drop(_counted);
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("id", &self.id).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// What a task's sink receives.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The worker answered: `Return`, `Panic`, `Fail` or `BatchReturn`.
    Reply { pid: u32, frame: Frame },
    /// No answer will come.
    Failed(Failure),
}

/// Why a task got no answer. Cloneable, so that every item of a batch gets its own error.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// The worker died while running it (killed, crashed, exited).
    Died { pid: u32, signal: Option<i32>, code: Option<i32> },
    /// It ran past its limit; the worker was killed and replaced.
    TimedOut { pid: u32, timeout: Duration },
    /// The pool was terminated first.
    Terminated,
    /// Cancelled by its handle; `killed`: while it ran.
    Cancelled { killed: bool },
    /// The pool was closed before the task was submitted.
    Closed,
    /// No worker can be started (the initializer failed).
    Broken(String),
    /// The frame is over the connection's limit.
    TooLarge { len: u64, max: u64 },
    /// The arguments could not be encoded.
    Encode { type_name: String, message: String },
}

impl Failure {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Died { pid, signal: Some(signal), .. } => {
                Error::Signaled { pid: *pid, signal: *signal, name: crate::sys::signal_name(*signal) }
            }
            Failure::Died { pid, code, .. } => Error::Exited { pid: *pid, code: code.unwrap_or(-1) },
            Failure::TimedOut { pid, timeout } => Error::TaskTimedOut { pid: *pid, timeout: *timeout },
            Failure::Terminated => Error::PoolTerminated,
            Failure::Cancelled { killed } => Error::Cancelled { killed: *killed },
            Failure::Closed => Error::PoolClosed,
            Failure::Broken(message) => Error::InitializerFailed { message: message.clone() },
            Failure::TooLarge { len, max } => Error::FrameTooLarge { len: *len, max: *max },
            Failure::Encode { type_name, message } => {
                Error::Encode { what: "arguments", type_name: type_name.clone(), message: message.clone() }
            }
        }
    }

    /// The failure of a task whose frame could not be made.
    pub(crate) fn unsent(e: Error) -> Failure {
        match e {
            Error::FrameTooLarge { len, max } => Failure::TooLarge { len, max },
            Error::Encode { type_name, message, .. } => Failure::Encode { type_name, message },
            other => Failure::Encode { type_name: "the arguments".into(), message: other.to_string() },
        }
    }
}
