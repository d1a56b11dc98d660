//! `#[child_init]`: every child runs the hooks before its first call; a hook that panics fails
//! the child's start with an error that names it.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{join, within, DEADLINE};
use multiproc::{child_init, process_fn, Error, Manager, Pool, ProcessBuilder};

/// How many times the hook ran in this process.
static HOOK_RUNS: AtomicU32 = AtomicU32::new(0);

#[child_init]
fn count_the_start() {
    HOOK_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[child_init]
fn fail_when_asked() {
    if std::env::var_os("MULTIPROC_TEST_FAIL_CHILD_INIT").is_some() {
        panic!("asked to fail at start");
    }
}

#[process_fn]
fn hook_runs() -> u32 {
    HOOK_RUNS.load(Ordering::SeqCst)
}

/// The hook's runs in this worker, and its pid.
#[process_fn]
fn hook_runs_in(_item: u64) -> (u32, u32) {
    (HOOK_RUNS.load(Ordering::SeqCst), std::process::id())
}

#[test]
fn a_spawned_child_and_every_pool_worker_ran_the_hook_once_before_their_calls() {
    assert_eq!(HOOK_RUNS.load(Ordering::SeqCst), 0, "the parent never runs a hook by itself");
    assert_eq!(join(hook_runs.spawn().unwrap()).unwrap(), 1);
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        // many calls on each worker: the hook ran once per process, not per call
        let runs = pool.map(hook_runs_in, 0..50).unwrap();
        assert!(runs.iter().all(|&(r, _)| r == 1), "{runs:?}");
    });
    assert_eq!(HOOK_RUNS.load(Ordering::SeqCst), 0);
}

#[test]
fn a_hook_that_panics_fails_the_start_with_its_name_and_message() {
    let started = ProcessBuilder::new().env("MULTIPROC_TEST_FAIL_CHILD_INIT", "1").spawn(hook_runs, ()).and_then(join);
    match started {
        Err(e @ Error::ChildInitFailed { .. }) => {
            let Error::ChildInitFailed { hook, message } = &e else { unreachable!() };
            assert!(hook.ends_with("::fail_when_asked"), "{hook}");
            assert!(message.starts_with("asked to fail at start at "), "{message}");
            assert!(message.contains("child_init.rs"), "where it panicked: {message}");
            assert!(e.to_string().contains("the child could not start"), "{e}");
        }
        other => panic!("expected ChildInitFailed, got {other:?}"),
    }
}

#[test]
fn a_managers_server_runs_the_hook_too() {
    // the server's process is a child like any other: it starts, or says why not
    let m = within(DEADLINE, || Manager::start().map(|_| ()));
    assert!(m.is_ok(), "{m:?}");
}

#[test]
fn a_pool_whose_workers_hook_panics_fails_to_build_with_the_hooks_name() {
    let built =
        within(DEADLINE, || Pool::builder().workers(2).env("MULTIPROC_TEST_FAIL_CHILD_INIT", "1").build().map(|_| ()));
    match built {
        Err(Error::ChildInitFailed { hook, .. }) => assert!(hook.ends_with("::fail_when_asked"), "{hook}"),
        other => panic!("expected ChildInitFailed, got {other:?}"),
    }
}
