//! Without the `auto-init` hook: spawning before `init()` fails loudly with the fix, and
//! works after it. Run with `cargo test -p multiproc-runtime --no-default-features`.
#![cfg(not(feature = "auto-init"))]

use std::time::Duration;

use multiproc_runtime::{init, process_fn, Error, Output, ProcessBuilder};

#[process_fn(crate = multiproc_runtime)]
fn one() -> u32 {
    1
}

#[test]
fn without_the_hook_spawning_fails_loudly_and_init_fixes_it() {
    // In a child, libtest's main runs this test again (code before `init()` runs twice, as
    // documented) and `init()` below turns it into the worker.
    let err = one.spawn().unwrap_err();
    assert!(matches!(err, Error::HookMissing), "{err:?}");
    assert!(err.to_string().contains("call `multiproc::init()` as the first line of `main`"), "{err}");

    init();
    let mut child = ProcessBuilder::new().stdout(Output::Null).spawn(one, ()).unwrap();
    assert_eq!(child.join_timeout(Duration::from_secs(60)).unwrap(), 1);
}
