//! Two "hosts" on this machine for the MPI tests: network namespaces joined by a veth pair,
//! each with its own address and its own host name, and a launch agent that Open MPI uses
//! instead of ssh to start its daemon in the other one. Made once per test binary, removed at
//! its exit (and any left by a test binary that was killed, at the next one's start).
//!
//! Needs root (namespaces), `ip` (iproute2) and `unshare` (util-linux).
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The prefix of every namespace these tests make: `mph<pid>a`, `mph<pid>b`.
const PREFIX: &str = "mph";
/// The subnet between the two (each pair lives in namespaces of its own, so pairs of several
/// test binaries do not collide).
const NET: &str = "10.89.0";

/// One host: its namespace (also its host name) and its address.
pub struct Host {
    pub name: String,
    pub address: String,
}

impl Host {
    /// Processes running in this host's namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip").args(["netns", "pids", &self.name]).output().expect("run ip");
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

/// The two hosts and the files a launch needs.
pub struct Hosts {
    pub a: Host,
    pub b: Host,
    /// The launch agent (`plm_rsh_agent`): `agent HOST COMMAND...` runs COMMAND on HOST.
    agent: PathBuf,
    /// Open MPI's host file: both addresses, 2 slots each.
    hostfile: PathBuf,
    jobs: Mutex<()>,
}

impl Hosts {
    /// `mpirun -n ranks`, started on host A, ranks placed round the hosts (rank 0 on A, rank 1
    /// on B, ...), Open MPI's daemon on B started by the agent, TCP between the two.
    pub fn mpirun(&self, ranks: usize) -> Command {
        let mut cmd = self.on(&self.a);
        cmd.args(["mpirun", "--allow-run-as-root", "--oversubscribe", "--map-by", "node", "-n", &ranks.to_string()])
            .arg("--hostfile")
            .arg(&self.hostfile)
            .args(["--mca", "plm_rsh_agent"])
            .arg(&self.agent)
            .args(["--mca", "oob_tcp_if_include", &format!("{NET}.0/24")])
            .args(["--mca", "btl_tcp_if_include", &format!("{NET}.0/24")])
            .args(["--mca", "btl", "self,vader,tcp"]);
        cmd
    }

    /// A command to run on `host`: in its namespace, under its own host name.
    pub fn on(&self, host: &Host) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.name, "unshare", "--uts", "sh", "-c"])
            .arg(format!("hostname {} && exec \"$@\"", host.name))
            .arg("sh");
        cmd
    }

    /// The two hosts to oneself: one job at a time, so that what a job leaves behind is its own.
    pub fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether both hosts are empty of processes (a job's daemons and ranks gone) within
    /// `limit`.
    pub fn idle_within(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.a.pids().is_empty() && self.b.pids().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

static HOSTS: OnceLock<Hosts> = OnceLock::new();

/// The two hosts of this test binary, made at the first call.
pub fn two() -> &'static Hosts {
    HOSTS.get_or_init(make)
}

fn make() -> Hosts {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the two-host MPI tests make network namespaces: run them as root");
    remove_stale();
    let me = std::process::id();
    let (a, b) = (format!("{PREFIX}{me}a"), format!("{PREFIX}{me}b"));
    let (a_if, b_if) = (format!("{a}0"), format!("{b}0"));
    let (a_ip, b_ip) = (format!("{NET}.1"), format!("{NET}.2"));
    for args in [
        vec!["netns", "add", &a],
        vec!["netns", "add", &b],
        vec!["link", "add", &a_if, "type", "veth", "peer", "name", &b_if],
        vec!["link", "set", &a_if, "netns", &a],
        vec!["link", "set", &b_if, "netns", &b],
        vec!["-n", &a, "addr", "add", &format!("{a_ip}/24"), "dev", &a_if],
        vec!["-n", &b, "addr", "add", &format!("{b_ip}/24"), "dev", &b_if],
        vec!["-n", &a, "link", "set", &a_if, "up"],
        vec!["-n", &b, "link", "set", &b_if, "up"],
        vec!["-n", &a, "link", "set", "lo", "up"],
        vec!["-n", &b, "link", "set", "lo", "up"],
    ] {
        ip(&args);
    }
    // SAFETY: `remove` is an `extern "C" fn()` that touches only this binary's namespaces.
    unsafe { libc::atexit(remove) };

    let dir = std::env::temp_dir().join(format!("multiproc-hosts-{me}"));
    std::fs::create_dir_all(&dir).unwrap();
    let agent = dir.join("agent");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\n\
             # Open MPI's launch agent in place of ssh: agent HOST COMMAND...\n\
             host=$1; shift\n\
             case $host in\n  {a_ip}|{a}) ns={a};;\n  {b_ip}|{b}) ns={b};;\n  \
             *) echo \"agent: no host $host\" >&2; exit 1;;\nesac\n\
             exec ip netns exec $ns unshare --uts sh -c \"hostname $ns && $*\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hostfile = dir.join("hostfile");
    std::fs::write(&hostfile, format!("{a_ip} slots=2\n{b_ip} slots=2\n")).unwrap();
    Hosts {
        a: Host { name: a, address: a_ip },
        b: Host { name: b, address: b_ip },
        agent,
        hostfile,
        jobs: Mutex::new(()),
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Removes a namespace, ending what still runs in it.
fn remove_namespace(name: &str) {
    let host = Host { name: name.to_string(), address: String::new() };
    for pid in host.pids() {
        // SAFETY: kill(2) has no memory preconditions; the process is in a namespace of ours.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Namespaces of test binaries that are gone (killed before their exit could remove them).
fn remove_stale() {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("run ip (iproute2)");
    for name in String::from_utf8_lossy(&out.stdout).split_whitespace().filter(|n| n.starts_with(PREFIX)) {
        let pid = name[PREFIX.len()..].trim_end_matches(['a', 'b']);
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

extern "C" fn remove() {
    if let Some(hosts) = HOSTS.get() {
        remove_namespace(&hosts.a.name);
        remove_namespace(&hosts.b.name);
        if let Some(dir) = hosts.agent.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
