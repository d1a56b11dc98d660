//! The trait every `#[process_fn]` implements.

use crate::error::Error;
use crate::wire::codec::ValueReader;

/// A function that can run in another process.
///
/// `#[process_fn]` implements this for the value that stands for the function (`square` in
/// `square.spawn(7)`); write generic code over it, but do not implement it by hand: the
/// attribute also registers the function, so that a child can find it by [`NAME`](Self::NAME).
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, ProcessFn};
///
/// #[process_fn]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// /// Runs any process function here, in this process, and says which one it was.
/// fn run_here<F: ProcessFn>(_: F, args: F::Args) -> (&'static str, F::Output) {
///     (F::NAME, F::call(args))
/// }
///
/// # fn main() {
/// let (name, out) = run_here(square, (4,));
/// assert!(name.ends_with("::square"));
/// assert_eq!(out, 16);
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `#[process_fn]`, so it cannot run in another process",
    label = "not marked `#[process_fn]`",
    note = "mark the function `#[process_fn]` (a plain `fn` item with owned arguments); closures and function pointers cannot run in a child, which finds the function by its registered name"
)]
pub trait ProcessFn: Copy + Send + Sync + 'static {
    /// The parameters, as a tuple: `(u64,)` for `fn square(x: u64)`.
    type Args;
    /// The return type.
    type Output;
    /// The stable name the child looks the function up by: `module::path::function`.
    const NAME: &'static str;

    /// Runs the function here, in this process.
    fn call(args: Self::Args) -> Self::Output;

    /// The stable name, from the value: `square.name()`.
    fn name(&self) -> &'static str {
        Self::NAME
    }

    // The codec, one value at a time: the macro emits each call spanned at the parameter's
    // type, so that a type that is not serializable is reported there, once.

    /// Not public API: appends the encoded arguments.
    #[doc(hidden)]
    fn encode_args(args: &Self::Args, out: &mut Vec<u8>) -> Result<(), Error>;
    /// Not public API: decodes the arguments.
    #[doc(hidden)]
    fn decode_args(args: &mut ValueReader<'_>) -> Result<Self::Args, Error>;
    /// Not public API: appends the encoded result.
    #[doc(hidden)]
    fn encode_output(output: &Self::Output, out: &mut Vec<u8>) -> Result<(), Error>;
    /// Not public API: decodes a result (the next one, in a batch).
    #[doc(hidden)]
    fn read_output(results: &mut ValueReader<'_>) -> Result<Self::Output, Error>;
}
