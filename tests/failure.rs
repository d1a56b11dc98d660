//! Failure is data: each way a child can fail comes back as its own `Error` variant.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{join, run};
use multiproc::{process_fn, Error, Output, ProcessBuilder};
use serde::{Deserialize, Serialize, Serializer};

#[process_fn]
fn panics(message: String) -> u32 {
    panic!("{message}")
}

#[process_fn]
fn exits(code: i32) -> u32 {
    std::process::exit(code)
}

#[process_fn]
fn aborts() -> u32 {
    std::process::abort()
}

#[process_fn]
fn segfaults() -> u32 {
    let address = 8 as *mut u8; // non-null and aligned: a real invalid write, not a debug check
                                // SAFETY: none; this writes to an unmapped page on purpose, to crash with SIGSEGV.
    unsafe { address.write_volatile(1) };
    0
}

#[process_fn]
fn sleeps(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

/// Serializes in the parent only if `ok`.
#[derive(Debug, Deserialize)]
struct Picky {
    ok: bool,
}

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.ok {
            s.serialize_bool(true)
        } else {
            Err(serde::ser::Error::custom("picky refuses to be serialized"))
        }
    }
}

#[process_fn]
fn takes_picky(p: Picky) -> bool {
    p.ok
}

#[process_fn]
fn returns_picky() -> Picky {
    Picky { ok: false }
}

#[test]
fn a_panic_comes_back_with_its_message_and_location() {
    let err = join(panics.spawn("the answer is not 41".into()).unwrap()).unwrap_err();
    match &err {
        Error::Panicked { message, location, .. } => {
            assert_eq!(message, "the answer is not 41");
            let location = location.as_deref().unwrap();
            assert!(location.starts_with("tests/failure.rs:"), "{location}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(err.is_panic());
    assert!(err.to_string().contains("panicked at tests/failure.rs:"), "{err}");
}

#[test]
fn a_panic_carries_a_backtrace_when_rust_backtrace_is_set() {
    let with = ProcessBuilder::new().env("RUST_BACKTRACE", "1").spawn(panics, ("with a trace".into(),)).unwrap();
    match join(with) {
        Err(Error::Panicked { backtrace: Some(bt), .. }) => assert!(bt.contains("panics"), "{bt}"),
        other => panic!("expected a panic with a backtrace, got {other:?}"),
    }
    let without = ProcessBuilder::new().env("RUST_BACKTRACE", "0").spawn(panics, ("no trace".into(),)).unwrap();
    assert!(matches!(join(without), Err(Error::Panicked { backtrace: None, .. })));
}

#[test]
fn exit_gives_the_exit_code() {
    let p = exits.spawn(3).unwrap();
    let pid = p.pid();
    match join(p) {
        Err(Error::Exited { code, pid: p }) => assert_eq!((code, p), (3, pid)),
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[test]
fn abort_gives_sigabrt() {
    let p = ProcessBuilder::new().stderr(Output::Null).spawn(aborts, ()).unwrap();
    match join(p) {
        Err(Error::Signaled { signal, name, .. }) => assert_eq!((signal, name), (libc::SIGABRT, "SIGABRT")),
        other => panic!("expected SIGABRT, got {other:?}"),
    }
}

#[test]
fn a_segfault_gives_sigsegv() {
    match join(segfaults.spawn().unwrap()) {
        Err(Error::Signaled { signal, name, .. }) => assert_eq!((signal, name), (libc::SIGSEGV, "SIGSEGV")),
        other => panic!("expected SIGSEGV, got {other:?}"),
    }
}

#[test]
fn a_kill_from_outside_is_a_signal_not_a_handle_kill() {
    let p = sleeps.spawn(60_000).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on the pid of our own unreaped child, which cannot have been reused.
    assert_eq!(unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) }, 0);
    let err = join(p).unwrap_err();
    assert!(matches!(err, Error::Signaled { signal: libc::SIGKILL, .. }), "{err:?}");
    assert!(err.to_string().contains("SIGKILL"), "{err}");
}

#[test]
fn an_argument_that_fails_to_serialize_fails_before_any_process_starts() {
    let err = takes_picky.spawn(Picky { ok: false }).unwrap_err();
    match &err {
        Error::Encode { what, type_name, message } => {
            assert_eq!(*what, "arguments");
            assert!(type_name.contains("Picky"), "{type_name}");
            assert!(message.contains("picky refuses"), "{message}");
        }
        other => panic!("expected an encode error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("could not serialize the arguments"), "{err}");
    assert!(join(takes_picky.spawn(Picky { ok: true }).unwrap()).unwrap());
}

#[test]
fn a_result_that_fails_to_serialize_is_an_error_not_a_hang() {
    match join(returns_picky.spawn().unwrap()) {
        Err(Error::Encode { what: "result", message, .. }) => assert!(message.contains("picky refuses")),
        other => panic!("expected an encode error for the result, got {other:?}"),
    }
}

#[test]
fn an_executable_that_cannot_be_started_gives_the_io_error() {
    let err = ProcessBuilder::new().executable("/nonexistent/multiproc-child").spawn(square, (1,)).unwrap_err();
    match &err {
        Error::Spawn { program, error: source } => {
            assert_eq!(program, &PathBuf::from("/nonexistent/multiproc-child"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert!(err.to_string().contains("/nonexistent/multiproc-child"), "{err}");
}

#[test]
fn an_executable_that_is_not_a_multiproc_binary_is_reported_as_such() {
    let p = ProcessBuilder::new().executable("/bin/true").spawn(square, (1,)).unwrap();
    let err = join(p).unwrap_err();
    assert!(matches!(err, Error::NoHandshake { .. }), "{err:?}");
    assert!(err.to_string().contains("multiproc"), "{err}");
}

#[test]
fn a_child_killed_before_its_handshake_is_reported_as_killed_not_as_a_foreign_binary() {
    use std::os::unix::fs::PermissionsExt;
    // A child that is SIGKILLed the moment it starts, as the OOM killer or an operator would.
    let dir = std::env::temp_dir().join(format!("multiproc-prekill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("killed-at-start");
    std::fs::write(&script, "#!/bin/sh\nkill -9 $$\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = ProcessBuilder::new().executable(&script).spawn(square, (1,)).unwrap();
    let pid = p.pid();
    let err = join(p).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    match &err {
        Error::Signaled { pid: p, signal: libc::SIGKILL, name: "SIGKILL" } => assert_eq!(*p, pid),
        other => panic!("expected Signaled SIGKILL, got {other:?}"),
    }
    assert!(err.to_string().contains("SIGKILL") && !err.to_string().contains("built with multiproc"), "{err}");
}

/// A copy of this test binary with one byte of its GNU build id changed: the same code, a
/// different build.
fn other_build() -> PathBuf {
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let mut copy = me.clone();
    // The note: namesz = 4, descsz, type = 3 (NT_GNU_BUILD_ID), "GNU\0", then the id.
    let at = me
        .windows(16)
        .position(|w| w[0..4] == 4u32.to_ne_bytes() && w[8..12] == 3u32.to_ne_bytes() && &w[12..16] == b"GNU\0")
        .expect("this binary has a GNU build id note");
    copy[at + 16] ^= 0xff;
    let path = std::env::temp_dir().join(format!("multiproc-other-build-{}", std::process::id()));
    std::fs::write(&path, copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_child_of_a_different_build_is_refused() {
    let exe = other_build();
    let p = ProcessBuilder::new().executable(&exe).spawn(square, (3,)).unwrap();
    let err = join(p).unwrap_err();
    let _ = std::fs::remove_file(&exe);
    match &err {
        Error::BuildMismatch { executable, expected, found } => {
            assert_eq!(executable, &exe);
            assert_ne!(expected, found);
            assert_eq!(expected.len(), found.len());
        }
        other => panic!("expected a build mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("different build"), "{err}");
}

#[test]
fn a_process_marked_as_worker_without_a_socket_never_runs_main() {
    // started by hand with the marker but no control socket: it must refuse, not run the tests
    let out = run(std::process::Command::new(std::env::current_exe().unwrap()).env("__MULTIPROC_WORKER", "1"));
    assert_eq!(out.status.code(), Some(86), "{}", out.stderr);
    assert!(out.stderr.contains("not started by multiproc"), "{}", out.stderr);
    assert!(!out.stdout.contains("running"), "libtest's main ran:\n{}", out.stdout);
}

#[process_fn]
fn recurse(depth: u32) -> Result<u32, String> {
    match recurse.spawn(depth + 1) {
        Ok(child) => child.join().map_err(|e| e.to_string())?,
        Err(Error::NestingTooDeep { depth: d, max }) => {
            assert_eq!(d, depth + 1);
            Ok(max)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn a_function_that_spawns_itself_forever_stops_at_the_depth_limit() {
    // 8 levels deep, then the 9th spawn is refused: no fork bomb
    assert_eq!(join(recurse.spawn(1).unwrap()).unwrap(), Ok(8));
    let limited = ProcessBuilder::new().env("MULTIPROC_MAX_DEPTH", "3").spawn(recurse, (1,)).unwrap();
    assert_eq!(join(limited).unwrap(), Ok(3));
}

#[test]
fn messages_say_what_happened_and_what_to_do() {
    let timeout = Error::TimedOut { pid: 7, timeout: Duration::from_millis(5) };
    assert!(timeout.to_string().contains("join it again, or kill it"));
    let dup = Error::DuplicateFunction { name: "x".into() };
    assert!(dup.to_string().contains("#[process_fn(name = \"...\")]"));
    assert!(Error::HookMissing.to_string().contains("multiproc::init()"));
    let too_big = Error::FrameTooLarge { len: 10, max: 5 };
    assert!(too_big.to_string().contains("exceeds the maximum of 5 bytes"));
    for e in [timeout, dup, Error::HookMissing, too_big] {
        let s = e.to_string();
        assert!(s.chars().next().unwrap().is_lowercase() && !s.ends_with('.'), "{s}");
    }
}

/// Waits 10 ms for an item of an empty queue, with `?`: the child's error is its result.
#[process_fn]
fn gets_with_question_mark(q: multiproc::Queue<u64>) -> multiproc::Result<u64> {
    let first = q.get_timeout(Duration::from_millis(10))?;
    Ok(first)
}

/// Takes a lock whose last holder exited holding it, with `?` (through `or_error`).
#[process_fn]
fn locks_with_question_mark(v: multiproc::Value<u64>) -> multiproc::Result<u64> {
    use multiproc::LockResultExt;
    let mut g = v.lock().or_error()?;
    *g += 1;
    Ok(*g)
}

/// Exits holding the lock.
#[process_fn]
fn exits_holding(v: multiproc::Value<u64>) {
    let g = v.lock().unwrap();
    std::mem::forget(g);
    std::process::exit(0)
}

#[test]
fn a_child_uses_question_mark_on_multiproc_calls_and_its_error_comes_back_whole() {
    let q = multiproc::Queue::<u64>::new().unwrap();
    match join(gets_with_question_mark.spawn(q.clone()).unwrap()).unwrap() {
        Err(e @ Error::Empty { waited: Some(w) }) => {
            assert_eq!(w, Duration::from_millis(10));
            assert!(e.is_timeout(), "{e}");
            assert!(e.to_string().contains("empty for 10ms"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    q.put(5).unwrap();
    assert_eq!(join(gets_with_question_mark.spawn(q).unwrap()).unwrap().unwrap(), 5);

    let v = multiproc::Value::new(1u64).unwrap();
    assert!(matches!(join(exits_holding.spawn(v.clone()).unwrap()), Err(Error::Exited { code: 0, .. })));
    match join(locks_with_question_mark.spawn(v.clone()).unwrap()).unwrap() {
        Err(Error::HolderDied { pid }) => assert_ne!(pid, 0),
        other => panic!("{other:?}"),
    }
    // the lock works again, and the next one takes it without news
    assert_eq!(join(locks_with_question_mark.spawn(v).unwrap()).unwrap().unwrap(), 2);
}

#[test]
fn an_io_error_prints_its_os_error_once_in_a_chain() {
    let e = multiproc::ProcessBuilder::new().executable("/nonexistent/multiproc-test").spawn(sleeps, (1,)).unwrap_err();
    assert!(std::error::Error::source(&e).is_none(), "the OS error is in the message: {e}");
    assert_eq!(e.to_string().matches("No such file").count(), 1, "{e}");
}

/// The parent's side in an anyhow program: `?` on a lock through `or_error`, on a join, on
/// the child's own `multiproc::Result`.
fn anyhow_program(v: &multiproc::Value<u64>) -> anyhow::Result<u64> {
    use multiproc::LockResultExt;
    *v.lock().or_error()? += 1;
    let n = join(locks_with_question_mark.spawn(v.clone())?)??;
    Ok(n)
}

#[test]
fn an_anyhow_program_uses_question_mark_on_locks_joins_and_child_results() {
    let v = multiproc::Value::new(0u64).unwrap();
    assert_eq!(anyhow_program(&v).unwrap(), 2);
    // a holder that exited: the error converts, with its message
    assert!(matches!(join(exits_holding.spawn(v.clone()).unwrap()), Err(Error::Exited { .. })));
    let e = anyhow_program(&v).unwrap_err();
    assert!(e.to_string().contains("died holding it"), "{e:#}");
    assert!(matches!(e.downcast_ref::<Error>(), Some(Error::HolderDied { .. })), "{e:?}");
}
