//! The `tracing` feature: the parent reports spawns, task spans, crashes, timeouts and
//! respawns, each with the child's pid. Run with `cargo test --features tracing --test tracing`.
#![cfg(feature = "tracing")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{join, within, DEADLINE};
use multiproc::{process_fn, Error, Pool};

#[process_fn]
fn double(x: u64) -> u64 {
    2 * x
}

#[process_fn]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[process_fn]
fn abort_now(_x: u64) -> u64 {
    std::process::abort()
}

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// The lines that contain every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text().lines().filter(|l| parts.iter().all(|p| l.contains(p))).map(String::from).collect()
    }
}

#[test]
fn spawns_tasks_crashes_timeouts_and_respawns_are_reported_with_pids() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false);
    subscriber.init();

    let p = double.spawn(21).unwrap();
    let pid = p.pid();
    assert_eq!(join(p).unwrap(), 42);
    assert_eq!(
        log.lines_with(&["started a child process", &format!("pid={pid}"), "double"]).len(),
        1,
        "{}",
        log.text()
    );

    within(DEADLINE, move || {
        let pool = Pool::builder().workers(1).task_timeout(Duration::from_millis(300)).build().unwrap();
        let first = pool.pids()[0];
        assert_eq!(pool.apply(double, (5,)).unwrap(), 10);
        assert!(matches!(pool.apply(sleep_ms, (5_000,)), Err(Error::TaskTimedOut { pid, .. }) if pid == first));
        let second = common::settled_pids(&pool)[0];
        assert!(matches!(pool.apply(abort_now, (1,)), Err(Error::Signaled { pid, signal: 6, .. }) if pid == second));
        assert_eq!(pool.map(double, 0..4u64).unwrap(), [0, 2, 4, 6]); // chunks: spans too
        drop(pool);
    });
    let text = log.text();
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{text}");
    }
    assert!(!log.lines_with(&["started a pool worker", "worker=0"]).is_empty(), "{text}");
    // the task's span names the function, and closes when its outcome is in
    assert!(!log.lines_with(&["task{", "double", "close"]).is_empty(), "{text}");
    assert!(!log.lines_with(&["task{", "double", "task answered"]).is_empty(), "{text}");
    assert!(!log.lines_with(&["task{", "abort_now", "task failed", "signal 6"]).is_empty(), "{text}");
    assert!(!log.lines_with(&["WARN", "ran past its time limit", "timeout=300ms"]).is_empty(), "{text}");
    assert!(!log.lines_with(&["WARN", "a pool worker died running a task", "signal=6"]).is_empty(), "{text}");
    assert!(log.lines_with(&["INFO", "replacing a pool worker"]).len() >= 2, "{text}");
    assert!(log.lines_with(&["task{", "double", "task answered"]).len() >= 2, "the map's chunks: {text}");
}
