//! Helpers shared by the integration tests: hard deadlines on every wait, and `/proc` checks.
#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::Process;
use serde::de::DeserializeOwned;

/// No test waits longer than this for a child: a hang fails the test instead of CI.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Joins with a hard deadline; a child still running then fails the test (and is killed).
pub fn join<T: DeserializeOwned>(mut p: Process<T>) -> multiproc::Result<T> {
    match p.join_timeout(DEADLINE) {
        Err(e) if e.is_timeout() => panic!("child {} did not finish within {DEADLINE:?}", p.pid()),
        other => other,
    }
}

/// The state letter of a process in `/proc` (`R`, `S`, `Z`, ...), `None` once it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// Whether `pid` is no longer running (gone, or a zombie nobody reaped yet) within `limit`.
pub fn ends_within(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        match proc_state(pid) {
            None | Some('Z') | Some('X') => return true,
            Some(_) if start.elapsed() >= limit => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// What a finished helper process printed.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion with a hard deadline (it is killed, and the test fails, if it
/// overruns).
pub fn run(cmd: &mut Command) -> Finished {
    run_for(cmd, DEADLINE)
}

/// Runs a command to completion, killing it (and failing the test) after `limit`.
pub fn run_for(cmd: &mut Command, limit: Duration) -> Finished {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn helper");
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let status = wait_until(&mut child, limit);
    Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Starts `cmd` in a process group of its own (as a shell starts a foreground job, so a
/// SIGINT to the group is a Ctrl-C), stdin closed, stdout and stderr piped.
pub fn spawn_in_own_group(cmd: &mut Command) -> Child {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn helper")
}

pub fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

pub fn wait_deadline(child: &mut Child) -> std::process::ExitStatus {
    wait_until(child, DEADLINE)
}

fn wait_until(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("helper process {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs one test of this same test binary in a fresh process, with `env` set (the rayon
/// pattern: a helper test that does nothing unless its variable is set).
pub fn run_test(name: &str, env: &[(&str, &str)], extra: &[&str]) -> Finished {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--test-threads=1"]).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Runs `f` on another thread and fails the test if it takes longer than `limit`.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("the operation hung")
}

/// The pool's workers once it is whole again (replacements start in the background).
pub fn settled_pids(pool: &multiproc::Pool) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = pool.pids();
        if pids.len() == pool.workers() || start.elapsed() > DEADLINE {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` to `pid` (a process this test started, directly or through a pool).
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory preconditions; the pid is one of this test's processes.
    unsafe { libc::kill(pid as i32, signal) };
}

/// The pids of this process's children, now.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, after)) = stat.rsplit_once(')') else { continue };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// CPU time (user + system, clock ticks) a process has used so far.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Reads the `pid N` lines a helper prints, up to its `ready` line.
pub fn pids_until_ready(out: impl Read) -> Vec<u32> {
    use std::io::BufRead;
    let mut pids = Vec::new();
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap();
        if let Some((_, pid)) = line.split_once("pid ") {
            pids.push(pid.parse::<u32>().unwrap());
        }
        if line.contains("ready") {
            break;
        }
    }
    pids
}

/// A small, seedable generator (splitmix64): the same seed replays the same choices.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

/// The path of example `name`, built beside this test (`cargo test` builds the examples; a
/// single `--test` does not, so say so).
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --examples` (with its features)", path.display());
    path
}
