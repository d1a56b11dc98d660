//! What a pool is built with.

use std::fmt::Display;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::process::{read_whole, ProcessBuilder};
use std::os::fd::OwnedFd;

use crate::wire::fds;
use crate::wire::frame::OutFrame;
use crate::wire::message;

/// Everything the pool's workers are started and driven with.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) process: ProcessBuilder,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) max_tasks_per_child: Option<u64>,
    /// Replace a worker whose resident memory is over this many bytes after a task.
    pub(crate) max_memory_per_child: Option<u64>,
    /// Runs again of a task whose worker died.
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<Duration>,
    /// Tasks (frames) in flight per worker, so it never waits for the next.
    pub(crate) per_worker: usize,
    /// Items in flight for `imap`, by default.
    pub(crate) window: usize,
    /// Items per task for `map`; `None`: automatic.
    pub(crate) chunksize: Option<usize>,
    /// The workers are MPI ranks.
    pub(crate) mpi: bool,
}

/// A `#[process_fn]` run once in every worker before its first task, with its arguments
/// already encoded.
pub(crate) struct Initializer {
    name: &'static str,
    args: Vec<u8>,
    /// The descriptors of the handles among the arguments, sent to every worker.
    fds: Vec<OwnedFd>,
    /// Bytes of the arguments out of line, in memfds among `fds`.
    large: u64,
    /// Keeps those memfds as they are while the pool may start workers.
    _keep: Vec<crate::wire::large::InFlight>,
    check: fn(&[u8]) -> Result<()>,
}

impl std::fmt::Debug for Initializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initializer").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Initializer {
    pub(crate) fn new<F: ProcessFn>(args: F::Args) -> Result<Initializer>
    where
        F::Output: InitOutcome,
    {
        let mut bytes = Vec::new();
        let (encoded, fds) = fds::collect(|| F::encode_args(&args, &mut bytes));
        encoded?;
        Ok(Initializer {
            name: F::NAME,
            args: bytes,
            fds: fds.fds,
            large: fds.large,
            _keep: fds.keep,
            check: check::<F>,
        })
    }

    /// Checks the initializer's reply body: its `Err`, or a result that does not decode, is
    /// [`Error::InitializerFailed`].
    pub(crate) fn check(&self, body: &[u8]) -> Result<()> {
        (self.check)(body)
    }

    /// The call frame that runs it, with its own copies of the handles' descriptors.
    pub(crate) fn frame(&self) -> Result<OutFrame> {
        let mut frame = message::call_frame_with(0, self.name, |out| {
            out.extend_from_slice(&self.args);
            Ok(())
        })?;
        frame.large = self.large;
        for fd in &self.fds {
            frame.fds.push(fd.try_clone().map_err(|e| Error::io("could not duplicate an initializer's handle", e))?);
        }
        Ok(frame)
    }
}

fn check<F: ProcessFn>(bytes: &[u8]) -> Result<()>
where
    F::Output: InitOutcome,
{
    let output = read_whole::<F>(bytes).map_err(|e| Error::InitializerFailed { message: e.to_string() })?;
    output.outcome().map_err(|message| Error::InitializerFailed { message })
}

/// What an initializer may return: `()`, or a `Result` whose error is a failure.
pub trait InitOutcome {
    /// `Err` with the message of a failed initializer.
    fn outcome(self) -> std::result::Result<(), String>;
}

impl InitOutcome for () {
    fn outcome(self) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl<T, E: Display> InitOutcome for std::result::Result<T, E> {
    fn outcome(self) -> std::result::Result<(), String> {
        self.map(drop).map_err(|e| e.to_string())
    }
}
