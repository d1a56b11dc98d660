//! A pool over MPI ranks under Slurm: the example under `srun -n 3 --mpi=pmix`, and in a batch
//! job (`sbatch`), as a cluster user runs it. Needs a Slurm that takes jobs on this host
//! (`.ci/slurm up` starts a single-node one) and Open MPI; built with `--features mpi` only.
//! Every run has a hard deadline.
#![cfg(feature = "mpi")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The example, built by `cargo test --features mpi` beside this test.
fn example() -> PathBuf {
    common::example("mpi_map")
}

/// `srun -n 3 --mpi=pmix` of the example (3 tasks on however many CPUs the node has).
fn srun(args: &[&str]) -> common::Finished {
    let mut cmd = Command::new("srun");
    cmd.args(["-n", "3", "--overcommit", "--mpi=pmix", "--time=2"]).arg(example()).args(args);
    common::run_for(&mut cmd, Duration::from_secs(90))
}

#[test]
fn srun_runs_a_map_on_the_other_tasks() {
    let out = srun(&[]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "{}", out.stdout);
    assert!(lines[1].ends_with("of the 2 workers"), "{}", out.stdout);
}

#[test]
fn under_srun_a_task_that_dies_ends_the_step_and_slurm_names_it() {
    let start = Instant::now();
    let out = srun(&["die"]);
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(60), "{:?}", start.elapsed());
    assert!(!out.stdout.contains("the job should have ended"), "{}", out.stdout);
    // Slurm's words: "srun: error: <node>: task 1: Aborted" (or task 2: whichever took item 3)
    assert!(out.stderr.contains(": Aborted") && out.stderr.contains("srun: error:"), "{}", out.stderr);
}

#[test]
fn under_srun_the_rest_of_the_pool_and_a_brokered_queue() {
    let out = srun(&["more"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("imap [0, 1, 4, 9, 16], apply_async 144, 7 ok"), "{}", out.stdout);
    let out = srun(&["queue"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), "4 items through the brokered queue");
    let out = srun(&["large"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "12 large values there and back: all correct\n300 values of mixed sizes in order: all correct"
    );
}

/// The README's batch script, as a user submits it: `sbatch --wait`, the output in a file.
#[test]
fn a_batch_job_runs_the_example_under_sbatch() {
    let dir = std::env::temp_dir().join(format!("multiproc-sbatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("job.sh");
    let output = dir.join("job.out");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n#SBATCH --ntasks=3\n#SBATCH --overcommit\n#SBATCH --time=2\n\
             srun --mpi=pmix {}\n",
            example().display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("sbatch");
    cmd.arg("--wait").arg("--output").arg(&output).arg(&script);
    let out = common::run_for(&mut cmd, Duration::from_secs(90));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let printed = std::fs::read_to_string(&output).unwrap();
    assert!(printed.starts_with("[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\ncomputed by 2 of the 2 workers"), "{printed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch job cancelled (`scancel`) while its tasks run: every task ends at once (Slurm's
/// SIGTERM), rank 0 says what happened to the work in flight, nothing is left running.
#[test]
fn a_batch_job_cancelled_while_it_works_ends_and_rank_0_says_so() {
    let dir = std::env::temp_dir().join(format!("multiproc-scancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("job.sh");
    let output = dir.join("job.out");
    let body =
        format!("#!/bin/sh\n#SBATCH --ntasks=3\n#SBATCH --overcommit\nsrun --mpi=pmix {} slow\n", example().display());
    std::fs::write(&script, body).unwrap();
    let out = Command::new("sbatch").arg("--parsable").arg("--output").arg(&output).arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8(out.stdout).unwrap().trim().split(';').next().unwrap().to_string();
    let printed = || std::fs::read_to_string(&output).unwrap_or_default();
    let start = Instant::now();
    while !printed().contains("started") {
        assert!(start.elapsed() < Duration::from_secs(60), "the job did not start: {}", printed());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500)); // tasks in flight
    assert!(Command::new("scancel").arg(&job).status().unwrap().success());
    let queued = || {
        let out = Command::new("squeue").args(["-h", "-j", &job]).output().unwrap();
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    let cancelled = Instant::now();
    while queued() {
        assert!(cancelled.elapsed() < Duration::from_secs(45), "the cancelled job is still there: {}", printed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let printed = printed();
    assert!(!printed.contains("done:"), "{printed}");
    assert!(printed.contains("multiproc: rank 0 was told to terminate") && printed.contains("scancel"), "{printed}");
    assert!(printed.contains("tasks 0-2: Terminated"), "{printed}");
    let _ = std::fs::remove_dir_all(&dir);
}
