//! `#[child_init]` hooks: what every child runs once before its first call.
//!
//! A child never runs `main`, so whatever `main` sets up (a logger, a `tracing` subscriber) is
//! not there in a spawned process or a pool worker. Hooks are link-time data, like the
//! registry of process functions; a child runs them all, in the order of their names, after
//! its handshake with the parent checked out and before it says it is ready. A hook that
//! panics fails the child's start: the parent gets [`Error::ChildInitFailed`], the hook's name
//! and its panic message.

use std::sync::OnceLock;

use crate::error::Error;

/// One registered hook. Built by `#[child_init]`; not public API.
#[derive(Debug)]
pub struct ChildInit {
    /// `module::path::function`.
    pub name: &'static str,
    /// The function.
    pub run: fn(),
}

/// The distributed slice every `#[child_init]` adds itself to.
#[linkme::distributed_slice]
pub static CHILD_INITS: [ChildInit];

/// Runs every hook once in this process (later calls give the first outcome): `Err` names the
/// hook that panicked and says how.
pub(crate) fn run_all() -> Result<(), (String, String)> {
    static OUTCOME: OnceLock<Result<(), (String, String)>> = OnceLock::new();
    OUTCOME.get_or_init(|| run(&CHILD_INITS)).clone()
}

fn run(hooks: &[ChildInit]) -> Result<(), (String, String)> {
    let mut hooks: Vec<&ChildInit> = hooks.iter().collect();
    hooks.sort_by_key(|h| h.name);
    for hook in hooks {
        crate::panic::catch(hook.run).map_err(|r| {
            let at = r.location.map(|l| format!(" at {l}")).unwrap_or_default();
            (hook.name.to_string(), format!("{}{at}", r.message))
        })?;
    }
    Ok(())
}

/// The error for a hook that failed in a child.
pub(crate) fn failed(hook: String, message: String) -> Error {
    Error::ChildInitFailed { hook, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    static ORDER: AtomicUsize = AtomicUsize::new(0);
    static A_RAN: AtomicUsize = AtomicUsize::new(usize::MAX);
    static B_RAN: AtomicUsize = AtomicUsize::new(usize::MAX);

    fn a() {
        A_RAN.store(ORDER.fetch_add(1, SeqCst), SeqCst);
    }
    fn b() {
        B_RAN.store(ORDER.fetch_add(1, SeqCst), SeqCst);
    }
    fn fails() {
        panic!("no log file");
    }

    #[test]
    fn hooks_run_in_the_order_of_their_names_and_a_panic_names_its_hook() {
        let hooks = [ChildInit { name: "m::b", run: b }, ChildInit { name: "m::a", run: a }];
        run(&hooks).unwrap();
        assert!(A_RAN.load(SeqCst) < B_RAN.load(SeqCst));
        let hooks = [ChildInit { name: "m::a", run: a }, ChildInit { name: "m::fails", run: fails }];
        let (name, message) = run(&hooks).unwrap_err();
        assert_eq!(name, "m::fails");
        assert!(message.starts_with("no log file at "), "{message}");
    }
}
