//! The reference workloads of `shared/WORKLOADS.md`, each printed beside its floor:
//!
//! ```text
//! cargo bench --bench workloads            # all
//! cargo bench --bench workloads -- W1      # the ones named
//! cargo bench --bench workloads -- W6-batched  # only W6's put_many/get_many line
//! ```
//!
//! Each line reads `W<n> <what> ours=<x> floor=<y> unit=<u> ratio=<x/y>`, the median of
//! several repetitions.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::{process_fn, Output, Pool, ProcessBuilder};

mod bulk;
mod channels;
mod manager;
#[cfg(feature = "mpi")]
mod mpi;
mod shared;

/// Set in the environment of the floor's child: exit at once.
const FLOOR_ENV: &str = "MULTIPROC_BENCH_EXIT_AT_ONCE";
/// Set in the environment of the echo floor's child: echo length-prefixed blocks on stdin.
const ECHO_ENV: &str = "MULTIPROC_BENCH_ECHO";
pub(crate) const REPETITIONS: usize = 5;

#[process_fn]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[process_fn]
pub(crate) fn square(x: u64) -> u64 {
    x * x
}

/// A pure CPU loop: `n` steps of a linear congruential generator.
#[process_fn]
fn spin(n: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..n {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    x
}

fn main() {
    if std::env::var_os(FLOOR_ENV).is_some() {
        return;
    }
    if std::env::var_os(ECHO_ENV).is_some() {
        echo_stdin();
        return;
    }
    if channels::floor_child() || bulk::ipc_child() {
        return;
    }
    #[cfg(feature = "mpi")]
    if mpi::run_if_launched() {
        return;
    }
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(name));
    if run("W1") {
        w1();
    }
    if run("W2") {
        w2();
    }
    if run("W3") {
        w3();
    }
    #[cfg(feature = "mpi")]
    {
        let which: Vec<&str> = ["W2", "W3"].into_iter().filter(|w| run(w)).collect();
        if !which.is_empty() {
            mpi::launch(&which.join(" "));
        }
    }
    if run("W4") {
        shared::w4();
        bulk::w4_by_value();
        bulk::threshold_sweep();
    }
    if run("W5") {
        w5();
    }
    if run("W6") {
        channels::w6();
    }
    if wanted.iter().any(|w| w.eq_ignore_ascii_case("W6-batched")) {
        channels::w6_batched();
    }
    if run("W7") {
        shared::w7();
    }
    if run("W8") {
        manager::w8();
    }
    if run("W9") {
        channels::w9(Echo::start);
    }
}

/// The echo floor's child: reads a u32 length and that many bytes from stdin (a socket), writes
/// them back; until EOF.
fn echo_stdin() {
    // SAFETY: fd 0 is the socket the parent passed as stdin; this process owns it from here.
    let mut sock = unsafe { UnixStream::from_raw_fd(0) };
    let mut buf = Vec::new();
    let mut len = [0u8; 4];
    while sock.read_exact(&mut len).is_ok() {
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        sock.read_exact(&mut buf).unwrap();
        sock.write_all(&buf).unwrap();
    }
}

/// A child of this executable echoing blocks over a socketpair: the floor of W2, W3 and W9.
pub(crate) struct Echo {
    sock: UnixStream,
    child: Child,
}

impl Echo {
    pub(crate) fn start() -> Echo {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ECHO_ENV, "1")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .unwrap();
        Echo { sock: ours, child }
    }

    /// Sends `block` and reads it back.
    pub(crate) fn round_trip(&mut self, block: &mut [u8]) {
        self.sock.write_all(&(block.len() as u32).to_le_bytes()).unwrap();
        self.sock.write_all(block).unwrap();
        self.sock.read_exact(block).unwrap();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// W2: 20,000 sequential blocking calls `square(x)` on a warm pool of 2 workers.
/// Floor: an 8-byte echo over a socketpair between two processes.
fn w2() {
    const N: u64 = 20_000;
    let pool = Pool::new(2).unwrap();
    let ours = || {
        let start = Instant::now();
        for x in 0..N {
            assert_eq!(pool.apply(square, (x,)).unwrap(), x * x);
        }
        start.elapsed().as_secs_f64() * 1e6 / N as f64
    };
    let mut echo = Echo::start();
    let mut floor = || {
        let start = Instant::now();
        for x in 0..N {
            let mut block = x.to_le_bytes();
            echo.round_trip(&mut block);
        }
        start.elapsed().as_secs_f64() * 1e6 / N as f64
    };
    for x in 0..500 {
        pool.apply(square, (x,)).unwrap();
    }
    let (mut o, mut f) = (Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        f.push(floor());
        o.push(ours());
    }
    report("W2", "round-trip(apply)", median(o), median(f), "us/call");
}

/// W3: `map(square, 0..1_000_000)` on a pool of 2 workers, automatic chunks, and the best
/// of a few chunk sizes. Floor: the same bytes through a socketpair to a child and back, in
/// the same chunks.
/// W3's local figure (auto chunks, ns/item), for the line over MPI that compares with it.
pub(crate) static W3_LOCAL_NS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

fn w3() {
    const N: u64 = 1_000_000;
    let items: Vec<u64> = (0..N).collect();
    let ours = |pool: &Pool| {
        let start = Instant::now();
        let out = pool.map(square, items.iter().copied()).unwrap();
        let t = start.elapsed();
        assert_eq!(out.len(), N as usize);
        assert_eq!(out[999_999], 999_999 * 999_999);
        t.as_secs_f64() * 1e9 / N as f64
    };
    let floor = |chunk: usize| {
        let mut echo = Echo::start();
        let mut block = vec![0u8; chunk * 8];
        let start = Instant::now();
        for c in items.chunks(chunk) {
            let bytes = &mut block[..c.len() * 8];
            for (dst, x) in bytes.chunks_exact_mut(8).zip(c) {
                dst.copy_from_slice(&x.to_le_bytes());
            }
            echo.round_trip(bytes);
        }
        start.elapsed().as_secs_f64() * 1e9 / N as f64
    };
    let auto = Pool::new(2).unwrap();
    // automatic chunks: Python's N / (4 x workers), capped at 64 KiB of arguments (8-byte items)
    let auto_chunk = (N as usize).div_ceil(4 * 2).min(64 * 1024 / 8);
    ours(&auto); // warm up
    let (mut o, mut f) = (Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        f.push(floor(auto_chunk));
        o.push(ours(&auto));
    }
    let (ours_auto, floor_auto) = (median(o), median(f));
    let _ = W3_LOCAL_NS.set(ours_auto);
    report("W3", "map-throughput(auto chunks)", ours_auto, floor_auto, "ns/item");
    println!("W3 map-throughput(auto chunks) ours={:.1} M items/s", 1e3 / ours_auto);
    let mut best = (f64::MAX, 0, 0.0);
    for chunk in [4_096, 16_384, 62_500, 125_000] {
        let pool = Pool::builder().workers(2).chunksize(chunk).build().unwrap();
        ours(&pool);
        let (mut o, mut f) = (Vec::new(), Vec::new());
        for _ in 0..REPETITIONS {
            f.push(floor(chunk));
            o.push(ours(&pool));
        }
        let (m, fl) = (median(o), median(f));
        if m < best.0 {
            best = (m, chunk, fl);
        }
    }
    report("W3", &format!("map-throughput(best fixed chunksize {})", best.1), best.0, best.2, "ns/item");
    println!("W3 map-throughput(best fixed chunksize {}) ours={:.1} M items/s", best.1, 1e3 / best.0);
}

/// W5: `spin` taking ~10 ms, mapped over 64 items with 1 and with 2 workers.
/// Floor: the in-process sequential time divided by the workers (perfect scaling).
fn w5() {
    // calibrate to ~10 ms in-process
    let mut n = 1_000_000u64;
    loop {
        let start = Instant::now();
        spin(n);
        let t = start.elapsed();
        if t >= Duration::from_millis(5) {
            n = (n as f64 * 10.0 / (t.as_secs_f64() * 1e3)) as u64;
            break;
        }
        n *= 2;
    }
    let items = vec![n; 64];
    let sequential = || {
        let start = Instant::now();
        for &i in &items {
            spin(i);
        }
        start.elapsed().as_secs_f64() * 1e3
    };
    let pools = [Pool::new(1).unwrap(), Pool::new(2).unwrap()];
    let ours = |pool: &Pool| {
        let start = Instant::now();
        pool.map(spin, items.iter().copied()).unwrap();
        start.elapsed().as_secs_f64() * 1e3
    };
    for pool in &pools {
        ours(pool);
    }
    let (mut seq, mut one, mut two) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        seq.push(sequential());
        one.push(ours(&pools[0]));
        two.push(ours(&pools[1]));
    }
    let (seq, one, two) = (median(seq), median(one), median(two));
    report("W5", "cpu-scaling(1 worker)", one, seq, "ms");
    report("W5", "cpu-scaling(2 workers)", two, seq / 2.0, "ms");
    println!("W5 speedup 2 workers vs in-process sequential: {:.2}x", seq / two);
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub(crate) fn report(id: &str, what: &str, ours: f64, floor: f64, unit: &str) {
    println!("{id} {what} ours={ours:.3} floor={floor:.3} unit={unit} ratio={:.2}", ours / floor);
}

/// Mean time of `n` sequential runs of `op`, in milliseconds.
pub(crate) fn mean_ms(n: u32, mut op: impl FnMut(u32)) -> f64 {
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
