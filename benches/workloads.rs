//! The reference workloads of `shared/WORKLOADS.md`, each printed beside its floor:
//!
//! ```text
//! cargo bench --bench workloads            # all
//! cargo bench --bench workloads -- W1      # the ones named
//! ```
//!
//! Each line reads `W<n> <what> ours=<x> floor=<y> unit=<u> ratio=<x/y>`, the median of
//! several repetitions.

use std::process::Command;
use std::time::{Duration, Instant};

use multiproc::{process_fn, Output, ProcessBuilder};

/// Set in the environment of the floor's child: exit at once.
const FLOOR_ENV: &str = "MULTIPROC_BENCH_EXIT_AT_ONCE";
const REPETITIONS: usize = 5;

#[process_fn]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn main() {
    if std::env::var_os(FLOOR_ENV).is_some() {
        return;
    }
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(name));
    if run("W1") {
        w1();
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn report(id: &str, what: &str, ours: f64, floor: f64, unit: &str) {
    println!("{id} {what} ours={ours:.3} floor={floor:.3} unit={unit} ratio={:.2}", ours / floor);
}

/// Mean time of `n` sequential runs of `op`, in milliseconds.
fn mean_ms(n: u32, mut op: impl FnMut(u32)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    start.elapsed().as_secs_f64() * 1e3 / n as f64
}

/// W1: start one child that runs `add`, wait for it, read the result; 200 times in a row.
/// Floor: the same executable started with `Command::status`, exiting at once.
fn w1() {
    const N: u32 = 200;
    let exe = std::env::current_exe().expect("current_exe");
    let mut quiet = ProcessBuilder::new();
    quiet.stdout(Output::Null).stderr(Output::Null);
    let ours_with = |builder: &ProcessBuilder| {
        mean_ms(N, |i| {
            let sum = builder.spawn(add, (i as u64, 2)).unwrap().join().unwrap();
            assert_eq!(sum, i as u64 + 2);
        })
    };
    let floor = || {
        mean_ms(N, |_| {
            let status = Command::new(&exe).env(FLOOR_ENV, "1").status().unwrap();
            assert!(status.success());
        })
    };
    // warm up the page cache and the allocator
    let _ = ours_with(&ProcessBuilder::new());
    std::thread::sleep(Duration::from_millis(50));
    let (mut ours, mut ours_null, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        floors.push(floor());
        ours.push(ours_with(&ProcessBuilder::new()));
        ours_null.push(ours_with(&quiet));
    }
    let floor = median(floors);
    report("W1", "spawn+join", median(ours), floor, "ms/op");
    report("W1", "spawn+join(output=null)", median(ours_null), floor, "ms/op");
}
