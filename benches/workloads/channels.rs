//! W6 (queue throughput) and W9 (pipe round trip), each beside its floor, and Python's
//! `multiprocessing` measured in the same run when `python3` is there.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use multiproc::{pipe, process_fn, Connection, Queue};

use crate::{median, report, Echo, REPETITIONS};

/// Set in the environment of the W6 floor's consumer: it reads the ring on its stdin.
const RING_ENV: &str = "MULTIPROC_BENCH_RING";
const N: u64 = 1_000_000;

/// Now, on the clock every process shares, in nanoseconds.
pub(crate) fn now_ns() -> u64 {
    // SAFETY: clock_gettime writes the timespec it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[process_fn]
fn produce(q: Queue<u64>, from: u64, n: u64) {
    for i in from..from + n {
        q.put(i).unwrap();
    }
}

/// Takes `n` items; returns their sum and when the first and the last arrived.
#[process_fn]
fn consume(q: Queue<u64>, n: u64) -> (u64, u64, u64) {
    let mut sum = q.get().unwrap();
    let first = now_ns();
    for _ in 1..n {
        sum = sum.wrapping_add(q.get().unwrap());
    }
    (sum, first, now_ns())
}

/// Puts `from..from + n` in `put_many` blocks of `batch`.
#[process_fn]
fn produce_batched(q: Queue<u64>, from: u64, n: u64, batch: u64) {
    let mut at = from;
    while at < from + n {
        let end = (at + batch).min(from + n);
        q.put_many(at..end).unwrap();
        at = end;
    }
}

/// Takes `n` items with `get_many(batch)`; returns their sum and when the first and the last
/// arrived.
#[process_fn]
fn consume_batched(q: Queue<u64>, n: u64, batch: u64) -> (u64, u64, u64) {
    let mut got = q.get_many(batch as usize).unwrap();
    let first = now_ns();
    let mut count = got.len() as u64;
    let mut sum = got.iter().fold(0u64, |s, x| s.wrapping_add(*x));
    while count < n {
        got = q.get_many(batch as usize).unwrap();
        count += got.len() as u64;
        sum = got.iter().fold(sum, |s, x| s.wrapping_add(*x));
    }
    (sum, first, now_ns())
}

/// Takes items until a `u64::MAX`; returns the count, the sum, and the first and last times.
#[process_fn]
fn consume_until_end(q: Queue<u64>) -> (u64, u64, u64, u64) {
    let (mut count, mut sum, mut first) = (0, 0u64, 0);
    loop {
        let v = q.get().unwrap();
        if count == 0 {
            first = now_ns();
        }
        if v == u64::MAX {
            return (count, sum, first, now_ns());
        }
        count += 1;
        sum = sum.wrapping_add(v);
    }
}

/// One producer process puts `0..N` in `put_many` blocks of 1,024, one consumer process takes
/// them with `get_many(1,024)`; ns per item, the sum checked.
fn batched_once() -> f64 {
    let q = Queue::<u64>::new().unwrap();
    let consumer = consume_batched.spawn(q.clone(), N, 1024).unwrap();
    let producer = produce_batched.spawn(q, 0, N, 1024).unwrap();
    producer.join().unwrap();
    let (sum, first, last) = consumer.join().unwrap();
    assert_eq!(sum, N * (N - 1) / 2);
    (last - first) as f64 / (N - 1) as f64
}

/// The CPU cost per item of `put_many` and of `get_many` (blocks of 1,024), each side alone in
/// this process: what bounds the batched line when neither side waits.
fn batched_cpu() -> (f64, f64) {
    let q = Queue::<u64>::new().unwrap();
    let (mut put, mut get) = (Duration::ZERO, Duration::ZERO);
    let mut sum = 0u64;
    for round in 0..(N / 16_384) {
        let from = round * 16_384;
        let t = Instant::now();
        for b in 0..16 {
            q.put_many(from + b * 1024..from + (b + 1) * 1024).unwrap();
        }
        put += t.elapsed();
        let t = Instant::now();
        for _ in 0..16 {
            sum = q.get_many(1024).unwrap().iter().fold(sum, |s, x| s.wrapping_add(*x));
        }
        get += t.elapsed();
    }
    let n = (N / 16_384 * 16_384) as f64;
    assert_eq!(sum, (n as u64) * (n as u64 - 1) / 2);
    (put.as_nanos() as f64 / n, get.as_nanos() as f64 / n)
}

/// Only W6's batched lines (`-- W6-batched`), for work on that path.
pub(crate) fn w6_batched() {
    batched_once(); // warm up
    let b: Vec<f64> = (0..REPETITIONS).map(|_| batched_once()).collect();
    let f: Vec<f64> = (0..REPETITIONS).map(|_| ring_floor()).collect();
    let (batched, floor) = (median(b), median(f));
    report("W6", "queue(put_many/get_many of 1,024)", batched, floor, "ns/msg");
    println!("W6 queue(put_many/get_many of 1,024) ours={:.1} M msgs/s", 1e3 / batched);
    batched_cpu_line();
}

/// Prints the median of five [`batched_cpu`] runs.
fn batched_cpu_line() {
    let runs: Vec<(f64, f64)> = (0..REPETITIONS).map(|_| batched_cpu()).collect();
    let put = median(runs.iter().map(|r| r.0).collect());
    let get = median(runs.iter().map(|r| r.1).collect());
    println!("W6 queue(put_many/get_many of 1,024, both sides in one process, one after the other) put={put:.2} get={get:.2} unit=ns/item");
}

/// W6: 1,000,000 `u64` from one producer process to one consumer process through a `Queue`,
/// the sum checked; and the same with 4 producers and 4 consumers. Floor: a bare shared-memory
/// ring between two processes (no lock, no encoding). Also: how soon a `get` asleep on an
/// empty queue wakes when another process puts.
pub(crate) fn w6() {
    let expected = N * (N - 1) / 2;
    let ours = || {
        let q = Queue::<u64>::new().unwrap();
        let consumer = consume.spawn(q.clone(), N).unwrap();
        let producer = produce.spawn(q, 0, N).unwrap();
        producer.join().unwrap();
        let (sum, first, last) = consumer.join().unwrap();
        assert_eq!(sum, expected);
        (last - first) as f64 / (N - 1) as f64
    };
    let four_by_four = || {
        let q = Queue::<u64>::new().unwrap();
        let consumers: Vec<_> = (0..4).map(|_| consume_until_end.spawn(q.clone()).unwrap()).collect();
        let producers: Vec<_> = (0..4).map(|p| produce.spawn(q.clone(), p * N / 4, N / 4).unwrap()).collect();
        for p in producers {
            p.join().unwrap();
        }
        for _ in 0..4 {
            q.put(u64::MAX).unwrap();
        }
        let results: Vec<(u64, u64, u64, u64)> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
        // Items of different producers come in no promised order (see `Queue`), and the end
        // marks are a fifth producer's: a consumer may take its mark while another lane still
        // holds items. Those are here still, every one (a loss fails the counts below).
        let (mut left, mut left_sum) = (0, 0u64);
        while let Ok(v) = q.try_get() {
            left += 1;
            left_sum = left_sum.wrapping_add(v);
        }
        if left > 0 {
            println!("W6 queue(4 producers x 4 consumers): {left} items were behind the end marks");
        }
        assert_eq!(results.iter().map(|r| r.0).sum::<u64>() + left, N);
        assert_eq!(results.iter().fold(left_sum, |s, r| s.wrapping_add(r.1)), expected);
        let first = results.iter().map(|r| r.2).min().unwrap();
        let last = results.iter().map(|r| r.3).max().unwrap();
        (last - first) as f64 / N as f64
    };
    let batched = batched_once;
    ours(); // warm up
    let (mut o, mut f, mut m, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        f.push(ring_floor());
        o.push(ours());
        m.push(four_by_four());
        b.push(batched());
    }
    let (ours, floor, many, batched) = (median(o), median(f), median(m), median(b));
    report("W6", "queue(put_many/get_many of 1,024)", batched, floor, "ns/msg");
    println!("W6 queue(put_many/get_many of 1,024) ours={:.1} M msgs/s", 1e3 / batched);
    batched_cpu_line();
    report("W6", "queue", ours, floor, "ns/msg");
    println!("W6 queue ours={:.1} M msgs/s", 1e3 / ours);
    report("W6", "queue(4 producers x 4 consumers)", many, floor, "ns/msg");
    println!("W6 queue(4 producers x 4 consumers) ours={:.1} M msgs/s", 1e3 / many);
    match python_queue() {
        Some(py) => println!(
            "W6 queue python(multiprocessing.Queue, same run)={:.0} k msgs/s; ours is {:.0}x",
            py / 1e3,
            1e9 / ours / py
        ),
        None => println!("W6 queue python: python3 not found, not measured"),
    }
    let (wake, wake_floor) = wake_latency();
    println!("W6 wake-latency(get asleep on an empty queue) ours={wake:.1} us (floor: a bare futex wake across processes {wake_floor:.1} us)");
}

/// Sends one timestamp every 300 us; returns each one's delay until the consumer had it.
#[process_fn]
fn timestamps(q: Queue<u64>, n: u64) {
    for _ in 0..n {
        std::thread::sleep(Duration::from_micros(300));
        q.put(now_ns()).unwrap();
    }
}

#[process_fn]
fn get_delays(q: Queue<u64>, n: u64) -> Vec<u64> {
    (0..n).map(|_| q.get().map(|sent| now_ns() - sent).unwrap()).collect()
}

/// The median delay between a put and the return of a `get` that was asleep on the empty
/// queue; and the same for a bare futex wake between two processes.
fn wake_latency() -> (f64, f64) {
    let q = Queue::<u64>::new().unwrap();
    let consumer = get_delays.spawn(q.clone(), 1000).unwrap();
    timestamps.spawn(q, 1000).unwrap().join().unwrap();
    let mut d = consumer.join().unwrap();
    d.sort();
    let ours = d[d.len() / 2] as f64 / 1e3;
    let mut ring = Ring::new();
    let floor = ring.futex_latency(1000);
    (ours, floor)
}

/// The floor of W6: a bare single-producer, single-consumer ring of `u64` in shared memory,
/// the producer here and the consumer a child process; returns ns per message, timed in the
/// consumer as ours is.
fn ring_floor() -> f64 {
    let mut ring = Ring::new();
    let child = ring.spawn("consume");
    let shared = ring.shared();
    while shared.ready.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let (mut tail, mut head_seen) = (0u64, 0u64);
    for i in 0..N {
        while tail - head_seen >= RING_SLOTS {
            head_seen = shared.head.load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        shared.slots[(tail % RING_SLOTS) as usize].store(i, Ordering::Relaxed);
        tail += 1;
        shared.tail.store(tail, Ordering::Release);
    }
    ring.wait(child);
    assert_eq!(shared.sum.load(Ordering::Acquire), N * (N - 1) / 2);
    (shared.last.load(Ordering::Acquire) - shared.first.load(Ordering::Acquire)) as f64 / (N - 1) as f64
}

const RING_SLOTS: u64 = 1 << 16;
/// Wake-ups the futex floor sends.
const FUTEX_WAKES: u64 = 1000;

#[repr(C)]
struct RingShared {
    ready: AtomicU64,
    _pad0: [u64; 7],
    tail: AtomicU64,
    _pad1: [u64; 7],
    head: AtomicU64,
    _pad2: [u64; 7],
    sum: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    futex: std::sync::atomic::AtomicU32,
    _pad3: [u64; 4],
    slots: [AtomicU64; RING_SLOTS as usize],
}

/// A `RingShared` in a memfd, for a child of this executable to map.
struct Ring {
    fd: OwnedFd,
    ptr: *mut RingShared,
}

impl Ring {
    fn new() -> Ring {
        let len = std::mem::size_of::<RingShared>();
        // SAFETY: plain system calls; the mapping is checked, and is zeros (a valid RingShared:
        // atomics and integers) of the struct's size.
        unsafe {
            let fd = libc::memfd_create(c"bench-ring".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let ptr =
                libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            assert_ne!(ptr, libc::MAP_FAILED);
            Ring { fd: OwnedFd::from_raw_fd(fd), ptr: ptr as *mut RingShared }
        }
    }

    fn shared(&self) -> &RingShared {
        // SAFETY: `ptr` is a live shared mapping of a RingShared for as long as `self`.
        unsafe { &*self.ptr }
    }

    /// Starts a child of this executable that maps the ring (given as its stdin) and does `what`.
    fn spawn(&mut self, what: &str) -> std::process::Child {
        Command::new(std::env::current_exe().unwrap())
            .env(RING_ENV, what)
            .stdin(Stdio::from(self.fd.try_clone().unwrap()))
            .spawn()
            .unwrap()
    }

    fn wait(&self, mut child: std::process::Child) {
        assert!(child.wait().unwrap().success());
    }

    /// The median delay of a futex wake between processes: the child sleeps on the ring's
    /// futex; this process stores a timestamp and wakes it.
    fn futex_latency(&mut self, n: u64) -> f64 {
        let child = self.spawn("futex");
        let shared = self.shared();
        while shared.ready.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        for i in 1..=n {
            std::thread::sleep(Duration::from_micros(300));
            shared.first.store(now_ns(), Ordering::Release);
            shared.futex.store(i as u32, Ordering::Release);
            // SAFETY: a futex wake on a word of the shared mapping; no memory is touched.
            unsafe { libc::syscall(libc::SYS_futex, &shared.futex as *const _, libc::FUTEX_WAKE, 1) };
        }
        self.wait(child);
        shared.last.load(Ordering::Acquire) as f64 / 1e3
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from mmap with this length, and nothing borrows it any more.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, std::mem::size_of::<RingShared>()) };
    }
}

/// In a child started by `Ring::spawn`: does what it was started for, and returns `true`.
pub(crate) fn floor_child() -> bool {
    let Ok(what) = std::env::var(RING_ENV) else { return false };
    let len = std::mem::size_of::<RingShared>();
    // SAFETY: stdin is the ring's memfd, at least `len` bytes long.
    let shared = unsafe {
        let ptr = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, 0, 0);
        assert_ne!(ptr, libc::MAP_FAILED);
        &*(ptr as *const RingShared)
    };
    shared.ready.store(1, Ordering::Release);
    match what.as_str() {
        "consume" => {
            let (mut head, mut tail_seen, mut sum, mut first) = (0u64, 0u64, 0u64, 0);
            while head < N {
                while head == tail_seen {
                    tail_seen = shared.tail.load(Ordering::Acquire);
                    std::hint::spin_loop();
                }
                if head == 0 {
                    first = now_ns();
                }
                sum = sum.wrapping_add(shared.slots[(head % RING_SLOTS) as usize].load(Ordering::Relaxed));
                head += 1;
                shared.head.store(head, Ordering::Release);
            }
            shared.last.store(now_ns(), Ordering::Release);
            shared.first.store(first, Ordering::Release);
            shared.sum.store(sum, Ordering::Release);
        }
        "futex" => {
            let mut delays = Vec::new();
            let mut seen = 0u32;
            // until the last value sent (two sent while this one was busy count as one wake)
            while seen < FUTEX_WAKES as u32 {
                // SAFETY: a futex wait on a word of the shared mapping.
                unsafe { libc::syscall(libc::SYS_futex, &shared.futex as *const _, libc::FUTEX_WAIT, seen, 0) };
                let now = shared.futex.load(Ordering::Acquire);
                if now != seen {
                    seen = now;
                    delays.push(now_ns() - shared.first.load(Ordering::Acquire));
                }
            }
            delays.sort();
            shared.last.store(delays[delays.len() / 2], Ordering::Release);
        }
        other => panic!("unknown ring child {other}"),
    }
    true
}

/// Python's `multiprocessing.Queue`, one producer and one consumer process, 1M ints; msgs/s.
fn python_queue() -> Option<f64> {
    let script = r#"
import multiprocessing as mp, time
N = 1_000_000
def produce(q):
    for i in range(N): q.put(i)
if __name__ == "__main__":
    q = mp.Queue()
    p = mp.Process(target=produce, args=(q,)); p.start()
    s = q.get(); t = time.perf_counter()
    for _ in range(N - 1): s += q.get()
    dt = time.perf_counter() - t
    p.join(); assert s == N * (N - 1) // 2
    print((N - 1) / dt)
"#;
    python(script)
}

/// Python's `Pipe`: 20,000 round trips with a child; microseconds each.
fn python_pipe() -> Option<f64> {
    let script = r#"
import multiprocessing as mp, time
def echo(c, other):
    other.close()  # under fork the child holds both ends: without this, no EOF ever comes
    while True:
        try: c.send(c.recv())
        except EOFError: return
if __name__ == "__main__":
    a, b = mp.Pipe(); p = mp.Process(target=echo, args=(b, a)); p.start(); b.close()
    for i in range(1000): a.send(i); a.recv()
    t = time.perf_counter()
    for i in range(20_000): a.send(i); a.recv()
    dt = time.perf_counter() - t
    a.close(); p.join()
    print(dt / 20_000 * 1e6)
"#;
    python(script)
}

/// Runs a Python script and reads the number it prints; `None` without python3, or if it
/// fails or takes more than two minutes.
pub(crate) fn python(script: &str) -> Option<f64> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().ok()?.is_none() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the process group this call started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    out.trim().parse().ok()
}

/// Echoes numbers until the other end hangs up.
#[process_fn]
fn echo(conn: Connection<u64>) {
    while let Ok(x) = conn.recv() {
        conn.send(x).unwrap();
    }
}

/// W9: 20,000 round trips of 8 bytes with a child over a duplex pipe. Floor: the same 8 bytes
/// echoed over a socketpair by a child (W2's floor).
pub(crate) fn w9(start_echo: fn() -> Echo) {
    const TRIPS: u64 = 20_000;
    let (conn, end) = pipe::<u64, u64>().unwrap();
    let child = echo.spawn(end).unwrap();
    let ours = || {
        let start = Instant::now();
        for x in 0..TRIPS {
            conn.send(x).unwrap();
            assert_eq!(conn.recv().unwrap(), x);
        }
        start.elapsed().as_secs_f64() * 1e6 / TRIPS as f64
    };
    let mut floor_echo = start_echo();
    let mut floor = || {
        let start = Instant::now();
        for x in 0..TRIPS {
            let mut block = x.to_le_bytes();
            floor_echo.round_trip(&mut block);
        }
        start.elapsed().as_secs_f64() * 1e6 / TRIPS as f64
    };
    ours();
    let (mut o, mut f) = (Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        f.push(floor());
        o.push(ours());
    }
    let ours = median(o);
    report("W9", "pipe", ours, median(f), "us/trip");
    let peer = crate::bulk::ipc_channel_round_trips(TRIPS);
    println!(
        "W9 pipe ours={ours:.3} peer(ipc-channel IpcSender<u64>)={peer:.3} unit=us/trip peer/ours={:.2}",
        peer / ours
    );
    drop(conn);
    child.join().unwrap();
    match python_pipe() {
        Some(py) => println!("W9 pipe python(multiprocessing.Pipe, same run)={py:.1} us/trip"),
        None => println!("W9 pipe python: python3 not found, not measured"),
    }
}
