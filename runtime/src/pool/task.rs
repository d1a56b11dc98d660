//! A unit of work on its way through the pool, and how its outcome is delivered.

use std::time::Duration;

use crate::error::Error;
use crate::wire::frame::Frame;

/// Receives a task's outcome, once.
pub(crate) type Sink = Box<dyn FnOnce(Delivery) + Send>;

/// One frame for a worker: a single call, or a batch of calls (a chunk of a map).
pub(crate) struct Task {
    pub(crate) id: u64,
    /// The whole frame, shared with the out-queue of the worker it went to, so that a task
    /// whose worker died before running it can go to another.
    pub(crate) frame: std::sync::Arc<Vec<u8>>,
    /// The most it may run before its worker is killed: the pool's per-call limit times the
    /// calls in the frame.
    pub(crate) timeout: Option<Duration>,
    pub(crate) sink: Sink,
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
    /// The pool was closed before the task was submitted.
    Closed,
    /// No worker could be started (the initializer failed).
    Broken(String),
    /// The task could not be encoded or sent.
    Other(String),
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
            Failure::Closed => Error::PoolClosed,
            Failure::Broken(message) => Error::InitializerFailed { message: message.clone() },
            Failure::Other(message) => Error::BadFrame { reason: message.clone() },
        }
    }
}
