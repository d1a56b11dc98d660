//! No child outlives its parent: a parent killed with SIGKILL takes its children (and theirs)
//! with it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ends_within, join, wait_deadline, DEADLINE};
use multiproc::process_fn;

#[process_fn]
fn sleep_forever() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A child that starts a grandchild, reports both pids, then waits on the grandchild.
#[process_fn]
fn parent_of_a_sleeper() {
    let grandchild = sleep_forever.spawn().unwrap();
    println!("pid {}", std::process::id());
    println!("pid {}", grandchild.pid());
    grandchild.join().unwrap();
}

/// Run in its own process by the test below: starts children, prints their pids, and waits.
#[test]
fn orphan_helper() {
    if std::env::var_os("MULTIPROC_ORPHAN_HELPER").is_none() {
        return;
    }
    let children: Vec<_> = (0..3).map(|_| sleep_forever.spawn().unwrap()).collect();
    for c in &children {
        println!("pid {}", c.pid());
    }
    let nested = parent_of_a_sleeper.spawn().unwrap();
    println!("ready");
    join(nested).unwrap();
}

#[test]
fn killing_the_parent_with_sigkill_ends_every_child_within_a_second() {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["orphan_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env("MULTIPROC_ORPHAN_HELPER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let started = Instant::now();
    // 3 children, then "ready", then the nested child and its grandchild
    while pids.len() < 5 {
        assert!(started.elapsed() < DEADLINE, "the helper did not report its children");
        let line = lines.next().expect("helper ended early").unwrap();
        if let Some((_, pid)) = line.split_once("pid ") {
            pids.push(pid.parse::<u32>().unwrap());
        }
    }
    for pid in &pids {
        assert!(!ends_within(*pid, Duration::ZERO), "child {pid} is not running before the kill");
    }

    helper.kill().unwrap(); // SIGKILL: no destructor, no handler runs in the parent
    wait_deadline(&mut helper);
    let killed = Instant::now();
    for pid in &pids {
        assert!(ends_within(*pid, Duration::from_secs(1)), "child {pid} outlived its parent");
    }
    println!("all {} descendants ended {:?} after the parent died", pids.len(), killed.elapsed());
}
