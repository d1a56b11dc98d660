//! The `#[process_fn]` attribute of multiproc. Use it through the `multiproc` crate:
//! `use multiproc::process_fn;`.

#![deny(missing_docs)]

mod attr;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Marks a function that can run in a child process: `f(x)` still calls it here, `f.spawn(x)`
/// starts it in a child. Arguments: `name = "stable::name"` and `crate = path`.
#[proc_macro_attribute]
pub fn process_fn(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::process_fn(args.into(), item.into()).into()
}
