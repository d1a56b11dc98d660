//! Exactly what `#[process_fn]` names. Not public API: it changes without notice.

pub use linkme;

pub use crate::child_init::{ChildInit, CHILD_INITS};
pub use crate::error::Error;
pub use crate::function::ProcessFn;
pub use crate::manager::{ServedEntry, SERVED};
pub use crate::process::Process;
pub use crate::registry::{Registration, REGISTRY};

use crate::error::Result;
use crate::process::ProcessBuilder;

/// Starts `f(args)` in a new child with default options (the body of `f.spawn(..)`).
pub fn spawn<F: ProcessFn>(f: F, args: F::Args) -> Result<Process<F::Output>> {
    ProcessBuilder::new().spawn(f, args)
}

pub use crate::wire::codec::ValueReader;

/// Appends one encoded argument (the macro calls this once per parameter, at its type).
pub fn encode_arg<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    crate::wire::codec::encode_into("arguments", value, out)
}

/// Appends a byte buffer as one block (`serde_bytes`): the same bytes as a `Vec<u8>` encodes
/// to, without serde's element-by-element path. `what`: `arguments` or `result`.
pub fn encode_bytes(what: &'static str, value: &[u8], out: &mut Vec<u8>) -> Result<()> {
    crate::wire::codec::encode_into(what, serde_bytes::Bytes::new(value), out)
}

/// Appends a `Vec` of plain numbers as one block of their little-endian bytes, its length in
/// bytes first (read back by `ValueReader::read_numbers`): one copy instead of serde's element
/// by element, and out of line when large. `what`: `arguments` or `result`.
#[cfg(target_endian = "little")]
pub fn encode_numbers<T: bytemuck::Pod>(what: &'static str, value: &[T], out: &mut Vec<u8>) -> Result<()> {
    crate::wire::codec::encode_into(what, serde_bytes::Bytes::new(bytemuck::cast_slice(value)), out)
}

/// As above, on a big-endian machine: the general path, element by element.
#[cfg(target_endian = "big")]
pub fn encode_numbers<T: bytemuck::Pod + serde::Serialize>(
    what: &'static str,
    value: &[T],
    out: &mut Vec<u8>,
) -> Result<()> {
    crate::wire::codec::encode_into(what, value, out)
}

/// Sets the size from which byte runs go out of line, in this process (the benchmarks'
/// sweep); 0 goes back to `MULTIPROC_LARGE_MIN` or the default.
pub fn set_large_min(bytes: usize) {
    crate::wire::large::set_threshold(bytes)
}

/// Appends the encoded result.
pub fn encode_output<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    crate::wire::codec::encode_into("result", value, out)
}

/// Bare MPI round trips to rank 1 (the MPI benchmarks' floor); `None` when not rank 0 of an
/// MPI job.
#[cfg(feature = "mpi")]
pub fn mpi_echo_round_trips(n: u64, bytes: usize) -> Option<std::time::Duration> {
    crate::mpi::echo_round_trips(n, bytes)
}
