//! multiproc (docs to come)
pub use multiproc_macros::process_fn;
pub use multiproc_runtime::{init, Error, Output, Process, ProcessBuilder, ProcessFn, Result, MAX_FDS_PER_FRAME, MAX_FRAME_LEN};
#[doc(hidden)]
pub use multiproc_runtime::__private;
