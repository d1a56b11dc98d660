//! Process: start, join, join with a timeout, pid, liveness, signals, options, drop.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use common::{ends_within, join, proc_state, run_test, within, DEADLINE};
use multiproc::{process_fn, Error, Output, ProcessBuilder};
use serde::{Deserialize, Serialize};

#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

/// Adds.
#[process_fn]
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[process_fn]
fn nothing() {}

#[process_fn]
fn own_pid() -> u32 {
    std::process::id()
}

#[process_fn]
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err("division by zero".to_string())
    } else {
        Ok(a / b)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
    note: Option<String>,
}

#[process_fn]
fn summarize(order: Order, mut extra: Vec<String>) -> (u32, usize) {
    extra.extend(order.items);
    (order.id, extra.len())
}

#[process_fn]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[process_fn]
fn env_var(key: String) -> Option<String> {
    std::env::var(key).ok()
}

#[process_fn]
fn shout(line: String) {
    println!("{line}");
    eprintln!("to stderr: {line}");
}

#[process_fn]
fn factorial(n: u64) -> u64 {
    if n <= 1 {
        1
    } else {
        n * factorial(n - 1) // a plain local call, recursive
    }
}

#[test]
fn a_process_fn_is_still_a_local_function() {
    assert_eq!(square(3), 9);
    assert_eq!(add(2, 3), 5);
    assert_eq!(factorial(5), 120);
    assert_eq!(checked_div(1, 0), Err("division by zero".to_string()));
    let f: fn(u64) -> u64 = *square;
    assert_eq!((1..4).map(*square).collect::<Vec<_>>(), [1, 4, 9]);
    assert_eq!(f(4), 16);
}

#[test]
fn spawn_and_join_returns_the_typed_result() {
    assert_eq!(join(square.spawn(7).unwrap()).unwrap(), 49);
    assert_eq!(join(add.spawn(40, 2).unwrap()).unwrap(), 42);
    join(nothing.spawn().unwrap()).unwrap();
    assert_eq!(join(factorial.spawn(10).unwrap()).unwrap(), 3_628_800);
}

#[test]
fn a_result_returning_function_gives_its_own_result_inside_ours() {
    assert_eq!(join(checked_div.spawn(9, 3).unwrap()).unwrap(), Ok(3));
    assert_eq!(join(checked_div.spawn(9, 0).unwrap()).unwrap(), Err("division by zero".to_string()));
}

#[test]
fn structs_and_collections_cross_both_ways() {
    let order = Order { id: 7, items: vec!["a".into(), "b".into()], note: Some("n".into()) };
    let p = summarize.spawn(order, vec!["c".into()]).unwrap();
    assert_eq!(join(p).unwrap(), (7, 3));
}

#[test]
fn the_child_is_another_process_and_pid_is_its_pid() {
    let p = own_pid.spawn().unwrap();
    let pid = p.pid();
    assert_ne!(pid, std::process::id());
    assert_eq!(join(p).unwrap(), pid);
}

#[test]
fn many_processes_run_at_once_and_all_join() {
    let handles: Vec<_> = (0..4).map(|i| sleep_ms.spawn(200 + i).unwrap()).collect();
    let pids: HashSet<u32> = handles.iter().map(|h| h.pid()).collect();
    assert_eq!(pids.len(), 4);
    // all four are alive at the same time
    assert!(handles.iter().all(|h| h.is_alive()));
    let results: Vec<u64> = handles.into_iter().map(|h| join(h).unwrap()).collect();
    assert_eq!(results, [200, 201, 202, 203]);
}

#[test]
fn is_alive_and_exit_status_follow_the_child() {
    let mut p = sleep_ms.spawn(300).unwrap();
    assert!(p.is_alive());
    assert_eq!(p.exit_status(), None);
    assert_eq!(p.join_timeout(common::DEADLINE).unwrap(), 300);
    assert!(!p.is_alive());
    assert!(p.exit_status().unwrap().success());
    assert!(matches!(p.join_timeout(Duration::from_secs(1)), Err(Error::AlreadyJoined)));
}

#[test]
fn join_timeout_leaves_the_child_running_and_the_handle_usable() {
    let mut p = sleep_ms.spawn(1500).unwrap();
    let err = p.join_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(matches!(err, Error::TimedOut { pid, .. } if pid == p.pid()));
    assert!(p.is_alive());
    assert!(err.to_string().contains("still running"), "{err}");
    assert_eq!(join(p).unwrap(), 1500);
}

#[test]
fn kill_from_the_handle_is_told_apart_from_a_crash() {
    let mut p = sleep_ms.spawn(60_000).unwrap();
    p.kill().unwrap();
    match p.join_timeout(common::DEADLINE) {
        Err(Error::Killed { signal, name, pid }) => {
            assert_eq!((signal, name, pid), (libc::SIGKILL, "SIGKILL", p.pid()));
        }
        other => panic!("expected Killed, got {other:?}"),
    }
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(p.exit_status().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn terminate_sends_sigterm() {
    let mut p = sleep_ms.spawn(60_000).unwrap();
    p.terminate().unwrap();
    match join(p) {
        Err(Error::Killed { signal, name, .. }) => assert_eq!((signal, name), (libc::SIGTERM, "SIGTERM")),
        other => panic!("expected Killed by SIGTERM, got {other:?}"),
    }
}

#[test]
fn a_result_already_returned_survives_a_later_kill() {
    let mut p = square.spawn(5).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.kill().unwrap();
    assert_eq!(p.join_timeout(common::DEADLINE).unwrap(), 25);
}

#[test]
fn builder_sets_name_environment_and_output() {
    let p = ProcessBuilder::new()
        .env("MULTIPROC_TEST_VAR", "from the parent")
        .spawn(env_var, ("MULTIPROC_TEST_VAR".to_string(),))
        .unwrap();
    assert_eq!(join(p).unwrap().as_deref(), Some("from the parent"));

    assert!(std::env::var_os("PATH").is_some());
    let p = ProcessBuilder::new().env_remove("PATH").spawn(env_var, ("PATH".into(),));
    assert_eq!(join(p.unwrap()).unwrap(), None);

    let p = ProcessBuilder::new().name("mp-sleeper").spawn(sleep_ms, (800,)).unwrap();
    assert_eq!(p.name(), Some("mp-sleeper"));
    std::thread::sleep(Duration::from_millis(200));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid())).unwrap();
    assert_eq!(comm.trim(), "mp-sleeper");
    join(p).unwrap();
}

#[test]
fn piped_output_is_read_by_the_caller() {
    let mut p = ProcessBuilder::new()
        .stdout(Output::Piped)
        .stderr(Output::Null)
        .spawn(shout, ("through a pipe".to_string(),))
        .unwrap();
    let mut stdout = p.stdout().unwrap();
    assert!(p.stderr().is_none());
    join(p).unwrap();
    let mut s = String::new();
    stdout.read_to_string(&mut s).unwrap();
    assert_eq!(s, "through a pipe\n");
}

#[test]
fn no_zombie_remains_after_join() {
    let p = square.spawn(2).unwrap();
    let pid = p.pid();
    join(p).unwrap();
    assert_eq!(proc_state(pid), None, "child {pid} still in /proc after join");
}

#[test]
fn dropping_an_unjoined_handle_kills_and_reaps_the_child() {
    let p = sleep_ms.spawn(60_000).unwrap();
    let pid = p.pid();
    assert!(matches!(proc_state(pid), Some('R' | 'S')));
    drop(p);
    // reaped, not a zombie, not an orphan
    assert_eq!(proc_state(pid), None, "child {pid} still in /proc after drop");
}

#[test]
fn a_child_can_start_children_of_its_own() {
    #[process_fn]
    fn sum_of_squares(n: u64) -> u64 {
        (1..=n).map(|i| square.spawn(i).unwrap().join().unwrap()).sum()
    }
    assert_eq!(join(sum_of_squares.spawn(4).unwrap()).unwrap(), 1 + 4 + 9 + 16);
}

/// Helper run in its own process by the next test: a child prints, then the test fails or not.
#[test]
fn child_output_helper() {
    let Ok(mode) = std::env::var("MULTIPROC_OUTPUT_HELPER") else { return };
    join(shout.spawn("line from the child".to_string()).unwrap()).unwrap();
    assert_ne!(mode, "fail", "failing on purpose to show the captured output");
}

#[test]
fn child_output_is_captured_by_libtest_like_the_tests_own() {
    // passing test: libtest swallows the captured output, so the child's line must not leak
    let quiet = run_test("child_output_helper", &[("MULTIPROC_OUTPUT_HELPER", "pass")], &[]);
    assert!(quiet.status.success(), "{}", quiet.stderr);
    assert!(!quiet.stdout.contains("line from the child"), "leaked past capture:\n{}", quiet.stdout);
    assert!(!quiet.stderr.contains("line from the child"), "leaked past capture:\n{}", quiet.stderr);

    // failing test: libtest prints what it captured, the child's lines included
    let loud = run_test("child_output_helper", &[("MULTIPROC_OUTPUT_HELPER", "fail")], &[]);
    assert!(!loud.status.success());
    let captured = loud.stdout.split("---- child_output_helper stdout ----").nth(1).unwrap_or_default();
    assert!(captured.contains("line from the child"), "not in the captured output:\n{}", loud.stdout);
    assert!(captured.contains("to stderr: line from the child"), "stderr not captured:\n{}", loud.stdout);

    // --nocapture: the lines reach the real stdout and stderr
    let shown = run_test("child_output_helper", &[("MULTIPROC_OUTPUT_HELPER", "pass")], &["--nocapture"]);
    assert!(shown.stdout.contains("line from the child\n"), "{}", shown.stdout);
    assert!(shown.stderr.contains("to stderr: line from the child\n"), "{}", shown.stderr);
}

#[test]
fn a_killed_child_ends_promptly() {
    let mut p = sleep_ms.spawn(60_000).unwrap();
    let pid = p.pid();
    p.kill().unwrap();
    assert!(ends_within(pid, Duration::from_secs(5)));
    assert!(matches!(join(p), Err(Error::Killed { .. })));
}

#[process_fn]
fn reverse_bytes(mut data: Vec<u8>, tag: std::vec::Vec<u8>) -> Vec<u8> {
    data.reverse();
    data.extend_from_slice(&tag);
    data
}

#[test]
fn byte_buffers_cross_intact() {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut expected = data.clone();
    expected.reverse();
    expected.extend_from_slice(b"!");
    let back = join(reverse_bytes.spawn(data, b"!".to_vec()).unwrap()).unwrap();
    assert!(back == expected, "the buffer came back changed");
    assert_eq!(reverse_bytes(vec![1, 2], vec![]), [2, 1]);
}

#[test]
fn a_process_handle_can_move_to_another_thread() {
    fn assert_send<T: Send>(_: &T) {}
    let p = square.spawn(6).unwrap();
    assert_send(&p);
    assert_eq!(std::thread::spawn(move || join(p).unwrap()).join().unwrap(), 36);
}

/// What descriptor `fd` is in this process, if it is open: `socket:[inode]` and the like.
#[process_fn]
fn what_is_fd(fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.display().to_string())
}

#[test]
fn a_parents_inheritable_descriptor_is_not_open_in_its_children_or_pool_workers() {
    use std::os::fd::AsRawFd;
    common::within(common::DEADLINE, || {
        // a socket without FD_CLOEXEC, high enough that nothing else in a child is there
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: fcntl(F_DUPFD) makes a new descriptor (without FD_CLOEXEC) we own below.
        let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD, 700) };
        assert!(fd >= 700, "{}", std::io::Error::last_os_error());
        let ours = what_is_fd(fd).expect("open here");
        assert!(ours.starts_with("socket:"), "{ours}");
        assert_eq!(join(what_is_fd.spawn(fd).unwrap()).unwrap(), None, "inherited by a child as {ours}");
        let pool = multiproc::Pool::new(1).unwrap();
        assert_eq!(pool.apply(what_is_fd, (fd,)).unwrap(), None, "inherited by a pool worker as {ours}");
        // SAFETY: the descriptor made above, closed once.
        unsafe { libc::close(fd) };
    });
}

/// What this process is, as the child sees it: its role, name, parent, and its own pid.
#[process_fn]
fn who_am_i(_x: u64) -> (String, Option<String>, Option<u32>, u32) {
    let me = multiproc::current_process();
    (format!("{:?}", me.role), me.name, multiproc::parent_process(), me.pid)
}

#[test]
fn current_process_parent_process_and_active_children_say_who_is_who() {
    let me = multiproc::current_process();
    assert_eq!((me.role, me.pid, multiproc::parent_process()), (multiproc::Role::Main, std::process::id(), None));
    let child = ProcessBuilder::new().name("named-child").spawn(who_am_i, (0,)).unwrap();
    let pid = child.pid();
    let (role, name, parent, seen_pid) = join(child).unwrap();
    assert_eq!(
        (role.as_str(), name.as_deref(), parent, seen_pid),
        ("Child", Some("named-child"), Some(std::process::id()), pid)
    );
    within(DEADLINE, || {
        let pool = multiproc::Pool::new(1).unwrap();
        let (role, name, parent, worker) = pool.apply(who_am_i, (0,)).unwrap();
        assert_eq!(
            (role.as_str(), name.as_deref(), parent),
            ("PoolWorker", Some("multiproc-w0"), Some(std::process::id()))
        );
        assert!(multiproc::active_children().contains(&worker), "a pool's worker is a child");
        drop(pool);
        assert!(!multiproc::active_children().contains(&worker), "gone with the pool");
    });
    let sleepers: Vec<_> = (0..2).map(|_| sleep_ms.spawn(10_000).unwrap()).collect();
    let pids: Vec<u32> = sleepers.iter().map(|p| p.pid()).collect();
    let active = multiproc::active_children();
    assert!(pids.iter().all(|p| active.contains(p)), "{active:?} {pids:?}");
    drop(sleepers); // killed and reaped
    let active = multiproc::active_children();
    assert!(pids.iter().all(|p| !active.contains(p)), "{active:?}");
}
