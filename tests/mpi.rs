//! A pool over MPI ranks, run as a user runs it: the example under `mpirun -n 3`. Needs Open
//! MPI (`mpirun` on the PATH); built with `--features mpi` only. Every run has a hard deadline.
#![cfg(feature = "mpi")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn mpirun(args: &[&str]) -> common::Finished {
    let exe = std::env::current_exe().unwrap();
    let example: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples").join("mpi_map");
    assert!(example.exists(), "{} is not built; run `cargo test --features mpi`", example.display());
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", "3"]).arg(&example).args(args);
    common::run_for(&mut cmd, Duration::from_secs(60))
}

#[test]
fn a_map_runs_on_the_other_ranks() {
    let out = mpirun(&[]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "{}", out.stdout);
    assert!(lines[1].ends_with("of the 2 workers"), "{}", out.stdout);
}

#[test]
fn a_rank_that_dies_ends_the_job_with_rank_0_saying_why_and_nothing_hangs() {
    let start = Instant::now();
    let out = mpirun(&["die"]);
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    assert!(out.stderr.contains("multiproc: rank 0 was told to terminate"), "{}", out.stderr);
    assert!(!out.stdout.contains("the job should have ended"), "{}", out.stdout);
}

#[test]
fn handles_do_not_cross_ranks_and_a_brokered_queue_does() {
    let out = mpirun(&["handles"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("refused:") && out.stdout.contains("cannot cross to another MPI rank"),
        "{}",
        out.stdout
    );
    let out = mpirun(&["queue"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "4 items through the brokered queue");
}

#[test]
fn large_values_cross_to_ranks_inline_as_descriptors_cannot() {
    let out = mpirun(&["large"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), "4 large values there and back: all correct", "{}", out.stderr);
}

#[test]
fn imap_apply_async_and_a_panic_on_a_rank_that_fails_only_its_item() {
    let out = mpirun(&["more"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "imap [0, 1, 4, 9, 16], apply_async 144, 7 ok", "{}", out.stdout);
    assert!(lines[1].starts_with("failed: ") && lines[1].contains("five is not allowed"), "{}", out.stdout);
}
