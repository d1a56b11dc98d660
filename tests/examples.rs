//! The examples are plain binaries: run them as a user would, and check what they print.
//! (`cargo test` builds them next to this test binary.)

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn example(name: &str) -> common::Finished {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let path: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    let out = common::run(&mut Command::new(&path));
    assert!(out.status.success(), "{name} failed: {}\n{}", out.stdout, out.stderr);
    out
}

/// Every line of `expected` appears in what the example printed.
fn assert_shows(out: &common::Finished, expected: &[&str]) {
    for line in expected {
        assert!(out.stdout.contains(line), "missing {line:?} in:\n{}", out.stdout);
    }
}

#[test]
fn process_basic_prints_the_child_pid_then_joins() {
    let out = example("process_basic");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    let parent: u32 = lines[0].strip_prefix("parent pid: ").unwrap().parse().unwrap();
    let child: u32 = lines[1].strip_prefix("child pid: ").unwrap().parse().unwrap();
    assert_ne!(parent, child);
    assert_eq!(lines[2], "child joined");
}

#[test]
fn many_processes_joins_four_distinct_processes() {
    let out = example("many_processes");
    let mut pids: Vec<&str> = out.stdout.lines().map(|l| l.split(' ').nth(3).unwrap()).collect();
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "{}", out.stdout);
    assert!(out.stdout.lines().all(|l| l.ends_with("summed to 199999990000000")));
}

#[test]
fn quickstart_shows_each_kind_of_outcome() {
    let out = example("quickstart");
    assert_shows(
        &out,
        &[
            "square(3) here: 9",
            "square(7) in child",
            "three children in parallel: [11, 22, 33]",
            "parse_port(\"8080\"): Ok(8080)",
            "the child panicked: attempt to divide by zero",
            "it is still running",
            "stopped with SIGKILL",
        ],
    );
}

#[test]
fn pool_map_prints_exactly_the_tutorials_output() {
    let out = example("pool_map");
    assert_eq!(out.stdout, "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n");
}

#[test]
fn pool_async_shows_async_starmap_a_timeout_and_failures_as_data() {
    let out = example("pool_async");
    assert_shows(
        &out,
        &[
            "apply_async(add, (5, 6)) -> 11",
            "starmap(add, [(1, 2), (3, 4)]) -> [3, 7]",
            "nap(10) -> 10",
            "nap(5000) -> the task ran longer than its limit of 500ms",
            "nap(20) -> 20",
            "inverse(0) -> failed: no inverse of zero",
            "inverse(8) -> 125",
            "map(inverse, [4, 0, 8]) -> item 1 failed",
        ],
    );
    assert!(!out.stderr.contains("panicked"), "a task's panic leaked to stderr:\n{}", out.stderr);
}

#[test]
fn queue_prints_exactly_the_tutorials_output() {
    let out = example("queue");
    assert_eq!(out.stdout, "Hello from child\n");
}

#[test]
fn pipe_holds_a_conversation_until_the_parent_hangs_up() {
    let out = example("pipe");
    assert_eq!(
        out.stdout,
        "asked Square(12), got Square(144)\n\
         asked Reverse(\"multiproc\"), got Reverse(\"corpitlum\")\n\
         asked Square(7), got Square(49)\n\
         the child answered 3 questions\n"
    );
}

#[test]
fn shared_value_prints_what_the_python_documentation_prints() {
    let out = example("shared_value");
    assert_eq!(out.stdout, "3.1415927\n[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]\n");
}

#[test]
fn locks_prints_whole_lines_then_passes_the_barrier_together() {
    let out = example("locks");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    let mut hellos: Vec<&str> = lines[..4].to_vec();
    hellos.sort();
    assert_eq!(hellos, ["hello world 0", "hello world 1", "hello world 2", "hello world 3"]);
    assert_eq!(lines[4], "all 4 passed the barrier");
}

#[test]
fn manager_prints_what_the_python_documentation_prints() {
    let out = example("manager");
    assert_eq!(out.stdout, "{1: \"1\", 2: \"2\", 3: \"3\"}\n[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]\n");
}

#[test]
fn remote_manager_passes_hello_between_two_programs_that_know_only_the_address_and_key() {
    let out = example("remote_manager");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("serving at 127.0.0.1:"), "{}", out.stdout);
    assert_eq!(lines[1..], ["hello"]);
}

/// Runs `graceful_stop` in a process group of its own, as a shell runs a foreground job, and
/// presses Ctrl-C `presses` times once it is working (SIGINT to the whole group, as a
/// terminal does). Returns how it exited, what it printed, and its workers' pids.
fn graceful_stop(presses: usize) -> (std::process::ExitStatus, String, Vec<u32>) {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join("graceful_stop");
    let mut child = common::spawn_in_own_group(&mut Command::new(&path));
    let err = common::reader(child.stderr.take().unwrap());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let mut workers = Vec::new();
    let pgid = child.id() as i32;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        printed.push_str(&line);
        if let Some(list) = line.trim().strip_prefix("workers [") {
            workers = list.trim_end_matches(']').split(", ").map(|p| p.parse().unwrap()).collect();
        }
        if line.starts_with("working") {
            for _ in 0..presses {
                // SAFETY: a plain kill(2) of the helper's own process group.
                assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
                // well inside the 200 ms of a task, even on a loaded machine (with 20 ms tasks, a
                // loaded run once saw the tasks finish before the second press)
                std::thread::sleep(Duration::from_millis(5));
            }
            break;
        }
        line.clear();
    }
    let rest = common::reader(out);
    let status = common::wait_deadline(&mut child);
    printed.push_str(&rest.join().unwrap());
    let stderr = err.join().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (status, printed, workers)
}

#[test]
fn one_ctrl_c_finishes_the_tasks_in_flight_and_exits_normally() {
    let (status, printed, workers) = graceful_stop(1);
    assert!(status.success(), "{status:?}\n{printed}");
    assert!(printed.contains("the tasks in flight finished"), "{printed}");
    assert_eq!(workers.len(), 2, "{printed}");
    for pid in workers {
        assert!(common::ends_within(pid, Duration::from_secs(5)), "worker {pid} outlived the program");
    }
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_the_workers_end_with_the_program() {
    let (status, printed, workers) = graceful_stop(2);
    assert_eq!(status.code(), Some(130), "{status:?}\n{printed}");
    assert!(!printed.contains("the tasks in flight finished"), "{printed}");
    for pid in workers {
        assert!(common::ends_within(pid, Duration::from_secs(5)), "worker {pid} outlived the program");
    }
}

#[test]
fn word_count_merges_two_hundred_files_with_the_total_known() {
    let out = example("word_count");
    assert_shows(&out, &["200/200 files", "100000 words in 200 files"]);
    // the three most frequent words, most frequent first, as the input made them
    let top: Vec<&str> = out.stdout.lines().rev().take(3).collect();
    assert_eq!(top, ["value: 9182", "the: 18228", "queue: 27363"], "{}", out.stdout);
}

#[test]
fn pipeline_does_every_job_once_across_three_consumers() {
    let out = example("pipeline");
    assert_shows(&out, &["300 jobs done by ", "12150 letters in all"]);
}

#[test]
fn monte_carlo_pi_comes_close_with_no_lost_update() {
    let out = example("monte_carlo_pi");
    let line = out.stdout.lines().find(|l| l.starts_with("pi is about ")).unwrap();
    let pi: f64 = line["pi is about ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "{line}");
}

#[test]
fn crash_isolation_keeps_every_good_result() {
    let out = example("crash_isolation");
    assert_shows(
        &out,
        &[
            "input 13: crashed with SIGSEGV",
            "input 21: still running after 500ms; its worker was replaced",
            "input 30: panicked: input 30 is not supported",
            "input 34: exited with code 3",
            "36 good, 1 crashed, 1 hung, 1 panicked, 1 exited",
        ],
    );
}

#[test]
fn job_board_gives_each_job_to_one_worker_locally_and_over_tcp() {
    let out = example("job_board");
    assert_shows(&out, &["local: 30 of 30 jobs done, 30 results", "remote at 127.0.0.1:"]);
    assert!(out.stdout.contains(": 30 of 30 jobs done, 30 results, by workers doing"), "{}", out.stdout);
}

#[test]
fn a_non_daemon_child_finishes_before_its_program_exits_and_a_daemon_one_is_killed() {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join("non_daemon");
    for daemon in [false, true] {
        let out = std::env::temp_dir().join(format!("multiproc-non-daemon-{}-{daemon}", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let mut cmd = Command::new(&path);
        cmd.arg(&out);
        if daemon {
            cmd.arg("--daemon");
        }
        let run = common::run(&mut cmd);
        assert!(run.status.success(), "{}", run.stderr);
        assert!(run.stdout.contains("main is done"), "{}", run.stdout);
        assert_eq!(out.exists(), !daemon, "daemon {daemon}: the child's file");
        let _ = std::fs::remove_file(&out);
    }
}
