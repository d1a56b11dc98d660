//! W4 (a 64 MiB buffer to a worker and back) and W7 (a shared counter under its lock).

use std::sync::atomic::{AtomicU64, Ordering};

use multiproc::{process_fn, Array, AtomicValue, Pool, SharedMemory, Value};

use crate::channels::{now_ns, python};
use crate::{median, report, REPETITIONS};

const INCREMENTS: u64 = 1_000_000;
const BULK: usize = 64 << 20;

/// How a W7 child counts.
#[derive(serde::Serialize, serde::Deserialize)]
enum Counter {
    /// `Value` with its lock.
    Locked(Value<u64>),
    /// `AtomicValue::fetch_add`.
    Atomic(AtomicValue<u64>),
    /// The floor: a bare process-shared pthread mutex and a u64, in shared memory.
    Bare(SharedMemory),
}

/// Waits for `go`, counts, and returns when it started and ended. Both children spin on `go`,
/// so that they start within a fraction of a microsecond of each other: a child woken later
/// than the other would count alone for a while, and the figure would measure that luck.
#[process_fn]
fn count(counter: Counter, go: AtomicValue<u32>) -> (u64, u64) {
    while go.load() == 0 {
        std::hint::spin_loop();
    }
    let start = now_ns();
    match &counter {
        Counter::Locked(v) => {
            for _ in 0..INCREMENTS {
                *v.lock().unwrap() += 1;
            }
        }
        Counter::Atomic(a) => {
            for _ in 0..INCREMENTS {
                a.fetch_add(1);
            }
        }
        Counter::Bare(m) => {
            let (mutex, n) = bare(m);
            for _ in 0..INCREMENTS {
                // SAFETY: the mutex was initialized process-shared by `w7`, and guards `n`.
                unsafe {
                    libc::pthread_mutex_lock(mutex);
                    *n += 1;
                    libc::pthread_mutex_unlock(mutex);
                }
            }
        }
    }
    (start, now_ns())
}

/// The floor's mutex and counter, at the start of the shared memory.
fn bare(m: &SharedMemory) -> (*mut libc::pthread_mutex_t, *mut u64) {
    let base = m.as_ptr();
    // SAFETY: the memory is a page-aligned 4 KiB, room for a mutex (40 bytes) and, at 64, a u64.
    unsafe { (base.cast(), base.add(64).cast()) }
}

/// Two children count together; ns per increment, from the first start to the last end.
fn two_counters(counter: impl Fn() -> Counter) -> f64 {
    let go = AtomicValue::new(0u32).unwrap();
    let children: Vec<_> = (0..2).map(|_| count.spawn(counter(), go.clone()).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(20)); // both spinning on `go`
    go.store(1);
    let spans: Vec<(u64, u64)> = children.into_iter().map(|c| c.join().unwrap()).collect();
    let start = spans.iter().map(|s| s.0).min().unwrap();
    let end = spans.iter().map(|s| s.1).max().unwrap();
    (end - start) as f64 / (2 * INCREMENTS) as f64
}

/// W7: 2 processes each increment one shared integer 1,000,000 times under its lock.
pub(crate) fn w7() {
    let (mut ours, mut atomic, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    // contended runs vary a lot from one to the next: more of them, interleaved
    for _ in 0..3 * REPETITIONS {
        let v = Value::new(0u64).unwrap();
        ours.push(two_counters(|| Counter::Locked(v.clone())));
        assert_eq!(v.get().unwrap(), 2 * INCREMENTS);

        let a = AtomicValue::new(0u64).unwrap();
        atomic.push(two_counters(|| Counter::Atomic(a.clone())));
        assert_eq!(a.load(), 2 * INCREMENTS);

        let m = SharedMemory::new(4096).unwrap();
        let (mutex, n) = bare(&m);
        // SAFETY: nobody else has the memory yet; the attributes are initialized before use.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutex_init(mutex, &attr);
        }
        floor.push(two_counters(|| Counter::Bare(m.clone())));
        // SAFETY: both children ended; nobody else writes the counter.
        assert_eq!(unsafe { *n }, 2 * INCREMENTS);
    }
    if std::env::var_os("MULTIPROC_BENCH_VERBOSE").is_some() {
        eprintln!("W7 runs: ours {ours:.0?}\nW7 runs: floor {floor:.0?}");
    }
    let (ours, atomic, floor) = (median(ours), median(atomic), median(floor));
    report("W7", "counter", ours, floor, "ns/incr");
    report("W7", "counter(AtomicValue::fetch_add)", atomic, floor, "ns/incr");
    print!(
        "W7 counter ours={:.1} M incr/s atomic={:.1} M incr/s floor={:.1} M incr/s",
        1e3 / ours,
        1e3 / atomic,
        1e3 / floor
    );
    match python_counter() {
        Some(py) => println!(" python={:.2} M incr/s ours/python={:.1}x", py / 1e6, 1e9 / ours / py),
        None => println!(" python=unavailable"),
    }
}

/// Python's `Value('q', lock=True)`: 2 processes x 1,000,000 increments; increments per second.
fn python_counter() -> Option<f64> {
    let script = r#"
import multiprocessing as mp, time
N = 1_000_000
def inc(v, go, out):
    go.wait(); t = time.perf_counter()
    for _ in range(N):
        with v.get_lock(): v.value += 1
    out.put((t, time.perf_counter()))
if __name__ == "__main__":
    v = mp.Value('q', 0); go = mp.Event(); out = mp.Queue()
    ps = [mp.Process(target=inc, args=(v, go, out)) for _ in range(2)]
    for p in ps: p.start()
    time.sleep(0.2); go.set()
    spans = [out.get() for _ in ps]
    for p in ps: p.join()
    assert v.value == 2 * N
    print(2 * N / (max(s[1] for s in spans) - min(s[0] for s in spans)))
"#;
    python(script)
}

/// Returns the buffer it was given.
#[process_fn]
fn echo_array(buf: Array<u8>) -> Array<u8> {
    buf
}

/// Reads every byte of the buffer under its lock, then returns it.
#[process_fn]
fn read_array(buf: Array<u8>) -> (u64, Array<u8>) {
    let sum = checksum(&buf.lock().unwrap());
    (sum, buf)
}

/// A sum of the bytes as little-endian words: reads every byte at memory speed.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0u64, |s, w| s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap())))
}

/// Returns the bytes it was given (through the socket, encoded).
#[process_fn]
fn echo_bytes(buf: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    buf
}

/// W4: a warm worker receives a 64 MiB buffer and returns it; ms per call.
pub(crate) fn w4() {
    let pool = Pool::new(1).unwrap();
    let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
    let expected = checksum(&data);
    let array = Array::from_slice(&data).unwrap();
    let time = |f: &mut dyn FnMut()| {
        f(); // warm
        median((0..REPETITIONS).map(|_| crate::mean_ms(1, |_| f())).collect())
    };
    let ours = time(&mut || {
        let back = pool.apply(echo_array, (array.clone(),)).unwrap();
        assert_eq!(back.len(), BULK);
    });
    let read = time(&mut || {
        let (sum, _back) = pool.apply(read_array, (array.clone(),)).unwrap();
        assert_eq!(sum, expected);
    });
    let bytes = serde_bytes::ByteBuf::from(data.clone());
    let socket = time(&mut || {
        let back = pool.apply(echo_bytes, (bytes.clone(),)).unwrap();
        assert_eq!(back.len(), BULK);
    });
    let (mut a, mut b) = (vec![0u8; BULK], vec![0u8; BULK]);
    let floor = time(&mut || {
        a.copy_from_slice(std::hint::black_box(&data));
        b.copy_from_slice(std::hint::black_box(&a));
        DONE.fetch_add(b[BULK - 1] as u64, Ordering::Relaxed);
    });
    let gbps = |ms: f64| (2 * BULK) as f64 / ms / 1e6;
    report("W4", "bulk", ours, floor, "ms/call");
    report("W4", "bulk(worker reads every byte)", read, floor, "ms/call");
    report("W4", "bulk(Vec<u8> through the socket)", socket, floor, "ms/call");
    print!(
        "W4 bulk ours={:.0} GB/s read-every-byte={:.1} GB/s socket={:.2} GB/s floor={:.1} GB/s",
        gbps(ours),
        gbps(read),
        gbps(socket),
        gbps(floor)
    );
    match python_bulk() {
        Some(py) => println!(" python={:.2} GB/s ours/python={:.0}x", py / 1e9, gbps(ours) * 1e9 / py),
        None => println!(" python=unavailable"),
    }
}

static DONE: AtomicU64 = AtomicU64::new(0);

/// Python's `Pool.apply` echo of 64 MiB; bytes of payload moved per second (there and back).
fn python_bulk() -> Option<f64> {
    let script = r#"
import multiprocessing as mp, time
def echo(b): return b
if __name__ == "__main__":
    b = bytes(64 << 20)
    with mp.Pool(1) as pool:
        pool.apply(echo, (b,))
        ts = []
        for _ in range(3):
            t = time.perf_counter(); r = pool.apply(echo, (b,)); ts.append(time.perf_counter() - t)
            assert len(r) == len(b)
    ts.sort()
    print(2 * len(b) / ts[1])
"#;
    python(script)
}
