//! What the parent reports through `tracing` (the `tracing` feature; compiled out without it),
//! under the target `multiproc`: a child or worker started (`debug`), a span for each pool
//! task from its submission to its outcome (`debug`, with the function, the task id and the
//! worker's pid), a worker that died running a task or a child killed by a signal (`warn`), a
//! task over its time limit (`warn`), and a worker replaced (`info`).

/// An event under the `multiproc` target: `event!(warn, pid, "...")`, nothing without the
/// feature.
macro_rules! event {
    ($level:ident, $($rest:tt)+) => {
        #[cfg(feature = "tracing")]
        ::tracing::$level!(target: "multiproc", $($rest)+);
    };
}
pub(crate) use event;

/// A pool task's span: open from its submission until its outcome is delivered.
#[cfg(feature = "tracing")]
#[derive(Debug)]
pub(crate) struct TaskSpan(tracing::Span);

/// Without the feature: nothing.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub(crate) struct TaskSpan;

impl TaskSpan {
    /// The span of task `id`, a call (or a chunk of calls) of `function`.
    #[inline]
    pub(crate) fn new(function: &'static str, id: u64) -> TaskSpan {
        #[cfg(feature = "tracing")]
        return TaskSpan(tracing::debug_span!(target: "multiproc", "task", function, id, pid = tracing::field::Empty));
        #[cfg(not(feature = "tracing"))]
        {
            let _ = (function, id);
            TaskSpan
        }
    }

    /// The task went to worker `pid`.
    #[inline]
    pub(crate) fn sent_to(&self, pid: u32) {
        #[cfg(feature = "tracing")]
        self.0.record("pid", pid);
        #[cfg(not(feature = "tracing"))]
        let _ = pid;
    }

    /// The task's outcome: `error` says why it failed, `None` when the worker answered
    /// (called only with the feature).
    #[inline]
    pub(crate) fn done(&self, error: impl FnOnce() -> Option<crate::Error>) {
        #[cfg(feature = "tracing")]
        self.0.in_scope(|| match error() {
            None => tracing::debug!(target: "multiproc", "task answered"),
            Some(e) => tracing::debug!(target: "multiproc", error = %e, "task failed"),
        });
        #[cfg(not(feature = "tracing"))]
        let _ = error;
    }
}
