//! The `#[process_fn]` attribute of multiproc. Use it through the `multiproc` crate:
//! `use multiproc::process_fn;`.

#![deny(missing_docs)]

mod attr;
mod child_init;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Marks a function that can run in a child process: `f(x)` still calls it here, `f.spawn(x)`
/// starts it in a child. Arguments: `name = "stable::name"` and `crate = path`.
#[proc_macro_attribute]
pub fn process_fn(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::process_fn(args.into(), item.into()).into()
}

/// Marks a function that every child process runs once, before its first call: a spawned
/// process, a pool worker, a manager's server. Set up what `main` sets up and a child needs,
/// since a child never runs `main`: a logger (`env_logger::init()`), a `tracing` subscriber,
/// a thread pool's size. It takes no arguments and returns nothing; a panic in it fails the
/// child's start with `Error::ChildInitFailed`. Arguments: `crate = path`.
#[proc_macro_attribute]
pub fn child_init(args: TokenStream, item: TokenStream) -> TokenStream {
    child_init::child_init(args.into(), item.into()).into()
}
