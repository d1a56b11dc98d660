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

pub use crate::wire::codec::ArgReader;

/// Appends one encoded argument (the macro calls this once per parameter, at its type).
pub fn encode_arg<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    crate::wire::codec::encode_into("arguments", value, out)
}

/// Appends a byte buffer as one block (`serde_bytes`): the same bytes as a `Vec<u8>` encodes
/// to, without serde's element-by-element path.
pub fn encode_bytes(value: &[u8], out: &mut Vec<u8>) -> Result<()> {
    crate::wire::codec::encode_into("arguments", serde_bytes::Bytes::new(value), out)
}

/// Decodes a byte buffer written by [`encode_bytes`] (or as a `Vec<u8>`).
pub fn decode_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    crate::wire::codec::decode::<serde_bytes::ByteBuf>("result", bytes).map(serde_bytes::ByteBuf::into_vec)
}

/// Appends the encoded result.
pub fn encode_output<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    crate::wire::codec::encode_into("result", value, out)
}

/// Decodes the result.
pub fn decode_output<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    crate::wire::codec::decode("result", bytes)
}
