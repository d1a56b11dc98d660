//! The `#[process_fn]` attribute of [multiproc](https://docs.rs/multiproc). Use it through the
//! `multiproc` crate: `use multiproc::process_fn;`.

#![deny(missing_docs)]

mod attr;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Marks a function that can run in a child process. See the `multiproc` crate docs.
#[proc_macro_attribute]
pub fn process_fn(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::process_fn(args.into(), item.into()).into()
}
