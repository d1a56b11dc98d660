//! Exactly what `#[process_fn]` names. Not public API: it changes without notice.

pub use linkme;

pub use crate::error::Error;
pub use crate::function::ProcessFn;
pub use crate::process::Process;
pub use crate::registry::{Registration, REGISTRY};

use crate::error::Result;
use crate::process::ProcessBuilder;

/// Starts `f(args)` in a new child with default options (the body of `f.spawn(..)`).
pub fn spawn<F: ProcessFn>(f: F, args: F::Args) -> Result<Process<F::Output>> {
    ProcessBuilder::new().spawn(f, args)
}

/// Compiles only for a type that can be a `#[process_fn]` parameter or result; the macro
/// calls it with the user's type span, so the error points at the type.
pub const fn assert_serializable<T: serde::Serialize + serde::de::DeserializeOwned>() {}
