//! Semantics within one process, between threads: Python's own tests of Lock, RLock,
//! Semaphore, Condition, Event, Barrier, Value and Array are the guide. Across processes, and
//! with holders killed, see `tests/shared.rs` and `tests/sync.rs`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::error::Error;
use crate::wire::{codec, fds};

/// Sends `value` through a frame's encoding and decodes it as a `U`, as a child would.
fn cross<T: serde::Serialize, U: serde::de::DeserializeOwned>(value: &T) -> crate::Result<U> {
    let (bytes, table) = fds::collect(|| {
        let mut out = Vec::new();
        codec::encode_into("argument", value, &mut out).map(|()| out)
    });
    fds::provide(table.fds, || codec::decode::<U>("argument", &bytes?)).0
}

fn waits_about(took: Duration, asked: Duration) {
    assert!(took >= asked, "{took:?} < {asked:?}");
    assert!(took < asked + Duration::from_secs(2), "{took:?} for {asked:?}");
}

#[test]
fn a_handle_of_another_type_or_kind_is_refused_with_both_names() {
    let v = Value::new(7i32).unwrap();
    let err = cross::<_, Value<f64>>(&v).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Value<f64>") && msg.contains("Value<i32>"), "{msg}");
    assert_eq!(cross::<_, Value<i32>>(&v).unwrap().get().unwrap(), 7);
    let err = cross::<_, Event>(&Lock::new().unwrap()).unwrap_err();
    assert!(err.to_string().contains("received a handle to Lock"), "{err}");
    let err = cross::<_, Array<u16>>(&Array::<u8>::zeroed(4).unwrap()).unwrap_err();
    assert!(err.to_string().contains("Array<u8>"), "{err}");
    let err = cross::<_, BoundedSemaphore>(&Semaphore::new(1).unwrap()).unwrap_err();
    assert!(err.to_string().contains("BoundedSemaphore was expected"), "{err}");
    // outside a frame, a handle cannot be serialized at all
    assert!(serde_json_like(&v).contains("can only cross to another process"));
}

fn serde_json_like<T: serde::Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    codec::encode_into("argument", value, &mut out).unwrap_err().to_string()
}

#[test]
fn a_received_handle_maps_its_memory_once_per_process() {
    let a = Array::from_slice(&[1u64, 2, 3]).unwrap();
    let b: Array<u64> = cross(&a).unwrap();
    assert!(Arc::ptr_eq(&a.region, &b.region));
    b.set(0, 10).unwrap();
    assert_eq!(a.get(0).unwrap(), 10);
}

#[test]
fn value_and_array_read_and_write_under_their_lock() {
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    struct Point {
        x: f64,
        y: f64,
        tag: [u8; 8],
    }
    let p = Value::new(Point { x: 1.0, y: 2.0, tag: *b"abcdefgh" }).unwrap();
    p.lock().unwrap().x += 0.5;
    assert_eq!(p.get().unwrap(), Point { x: 1.5, y: 2.0, tag: *b"abcdefgh" });
    let flag = Value::new(false).unwrap();
    flag.set(true).unwrap();
    assert!(flag.get().unwrap());
    let fixed = Value::new([1.5f32; 4]).unwrap();
    fixed.lock().unwrap()[3] = 0.0;
    assert_eq!(fixed.get().unwrap(), [1.5, 1.5, 1.5, 0.0]);

    let a = Array::<i32>::zeroed(5).unwrap();
    assert_eq!((a.len(), a.is_empty()), (5, false));
    assert_eq!(a.to_vec().unwrap(), [0; 5]);
    a.set(4, -4).unwrap();
    assert_eq!(a.get(4).unwrap(), -4);
    assert!(matches!(a.get(5), Err(Error::OutOfRange { index: 5, len: 5 })));
    assert!(matches!(a.set(9, 1), Err(Error::OutOfRange { index: 9, len: 5 })));
    a.lock().unwrap().copy_from_slice(&[5, 4, 3, 2, 1]);
    assert_eq!(a.to_vec().unwrap(), [5, 4, 3, 2, 1]);
    assert!(Array::<i32>::from_slice(&[]).unwrap().is_empty());
    assert!(matches!(Array::<()>::zeroed(3), Err(Error::SharedConfig { .. })));
}

#[test]
fn a_value_counts_every_increment_from_many_threads() {
    let v = Value::new(0u64).unwrap();
    let atomic = AtomicValue::new(0i64).unwrap();
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    *v.lock().unwrap() += 1;
                    atomic.fetch_add(1);
                }
            });
        }
    });
    assert_eq!(v.get().unwrap(), 40_000);
    assert_eq!(atomic.load(), 40_000);
    assert_eq!(atomic.fetch_sub(40_001), 40_000);
    assert_eq!(atomic.swap(5), -1);
    assert_eq!(atomic.compare_exchange(4, 6), Err(5));
    assert_eq!(atomic.compare_exchange(5, 6), Ok(5));
    atomic.store(i64::MAX);
    atomic.fetch_add(1);
    assert_eq!(atomic.load(), i64::MIN, "wraps");
    let small = AtomicValue::new(255u8).unwrap();
    assert_eq!(small.fetch_add(1), 255);
    assert_eq!(small.load(), 0);
}

#[test]
fn lock_try_lock_and_timeouts() {
    let lock = Lock::new().unwrap();
    let held = lock.lock().unwrap();
    // Python: a second acquire from the holder fails (without blocking, or after the timeout)
    assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
    let other = lock.clone();
    let (took, busy) = thread::spawn(move || {
        let start = Instant::now();
        let r = other.lock_timeout(Duration::from_millis(200));
        (start.elapsed(), matches!(r, Err(TryLockError::WouldBlock)))
    })
    .join()
    .unwrap();
    assert!(busy);
    waits_about(took, Duration::from_millis(200));
    drop(held);
    drop(lock.try_lock().unwrap());
    drop(lock.lock_timeout(Duration::from_millis(1)).unwrap());
    let e: Error = TryLockError::<()>::WouldBlock.into();
    assert!(matches!(e, Error::LockBusy));
}

#[test]
#[should_panic(expected = "already holds this Lock")]
fn locking_a_lock_twice_in_one_thread_panics_instead_of_hanging() {
    let lock = Lock::new().unwrap();
    let _a = lock.lock().unwrap();
    let _b = lock.lock();
}

#[test]
fn an_rlock_is_re_entered_by_its_holder_and_released_by_its_last_guard() {
    let r = RLock::new().unwrap();
    let a = r.lock().unwrap();
    let b = r.lock().unwrap();
    let c = r.try_lock().unwrap();
    let other = r.clone();
    let blocked = move || thread::spawn(move || other.try_lock().is_err()).join().unwrap();
    assert!(blocked.clone()());
    drop((a, b));
    assert!(blocked.clone()(), "still held once");
    drop(c);
    assert!(!blocked(), "released by the last guard");
}

#[test]
fn a_thread_that_panics_holding_a_lock_releases_it_by_unwinding() {
    let v = Value::new(1u32).unwrap();
    let v2 = v.clone();
    let _ = thread::spawn(move || {
        let _g = v2.lock().unwrap();
        panic!("in the critical section");
    })
    .join();
    assert_eq!(v.get().unwrap(), 1);
}

#[test]
fn semaphore_counts_timeouts_and_bounds() {
    let s = Semaphore::new(2).unwrap();
    let a = s.acquire();
    let b = s.try_acquire().unwrap();
    assert!(s.try_acquire().is_none());
    let start = Instant::now();
    assert!(s.acquire_timeout(Duration::from_millis(150)).is_none());
    waits_about(start.elapsed(), Duration::from_millis(150));
    assert_eq!(s.value(), 0);
    drop(a);
    assert_eq!(s.value(), 1);
    b.forget();
    assert_eq!(s.value(), 1, "a forgotten count stays taken");
    s.release().unwrap();
    s.release().unwrap();
    assert_eq!(s.value(), 3, "an unbounded semaphore goes past its start");

    let bs = BoundedSemaphore::new(1).unwrap();
    assert!(matches!(bs.release(), Err(Error::OverReleased { bound: 1 })));
    bs.acquire().forget();
    bs.release().unwrap();
    assert_eq!(bs.value(), 1);
    assert!(matches!(BoundedSemaphore::new(0), Err(Error::SharedConfig { .. })));
}

#[test]
fn a_semaphore_lets_at_most_its_count_in_at_once() {
    let s = Semaphore::new(3).unwrap();
    let inside = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..50 {
                    let _g = s.acquire();
                    let now = inside.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    thread::yield_now();
                    inside.fetch_sub(1, SeqCst);
                }
            });
        }
    });
    assert_eq!(most.load(SeqCst), 3);
    assert_eq!(s.value(), 3);
}

#[test]
fn event_set_clear_wait_and_timeouts() {
    let e = Event::new().unwrap();
    assert!(!e.is_set());
    let start = Instant::now();
    assert!(!e.wait_timeout(Duration::from_millis(100)));
    waits_about(start.elapsed(), Duration::from_millis(100));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            thread::spawn(move || e.wait_timeout(Duration::from_secs(30)))
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    e.set();
    assert!(waiters.into_iter().all(|w| w.join().unwrap()));
    assert!(e.is_set() && e.wait_timeout(Duration::ZERO));
    e.wait();
    e.clear();
    assert!(!e.is_set() && !e.wait_timeout(Duration::from_millis(1)));
}

/// Starts `n` threads that wait on `cond` (each counted in `woken` when it wakes), and returns
/// once all of them sleep.
fn sleepers(cond: &Condition, n: usize, woken: &Arc<AtomicUsize>) -> Vec<thread::JoinHandle<()>> {
    let ready = Arc::new(AtomicUsize::new(0));
    let handles = (0..n)
        .map(|_| {
            let (cond, woken, ready) = (cond.clone(), woken.clone(), ready.clone());
            thread::spawn(move || {
                let g = cond.lock().unwrap();
                ready.fetch_add(1, SeqCst);
                let (_g, notified) = g.wait_timeout(Duration::from_secs(30)).unwrap();
                assert!(notified);
                woken.fetch_add(1, SeqCst);
            })
        })
        .collect();
    while ready.load(SeqCst) < n {
        thread::yield_now();
    }
    // each released the lock inside wait: taking it proves they all are in
    drop(cond.lock().unwrap());
    handles
}

fn settle(woken: &AtomicUsize, expected: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    while woken.load(SeqCst) < expected && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(50)); // room for a wrong extra wake-up to show
    assert_eq!(woken.load(SeqCst), expected);
}

#[test]
fn condition_notify_wakes_as_many_as_asked_and_notify_all_the_rest() {
    let cond = Condition::new().unwrap();
    let woken = Arc::new(AtomicUsize::new(0));
    let mut handles = sleepers(&cond, 6, &woken);
    cond.lock().unwrap().notify_one();
    settle(&woken, 1);
    cond.lock().unwrap().notify(3);
    settle(&woken, 4);
    handles.extend(sleepers(&cond, 2, &woken));
    cond.lock().unwrap().notify_all();
    settle(&woken, 8);
    handles.into_iter().for_each(|h| h.join().unwrap());
    cond.lock().unwrap().notify(5); // nobody waits: nothing is stored for later
    let start = Instant::now();
    let (_g, notified) = cond.lock().unwrap().wait_timeout(Duration::from_millis(100)).unwrap();
    assert!(!notified);
    waits_about(start.elapsed(), Duration::from_millis(100));
}

#[test]
fn condition_wait_for_a_predicate() {
    let cond = Condition::new().unwrap();
    let state = Arc::new(Mutex::new(0));
    let (c2, s2) = (cond.clone(), state.clone());
    let setter = thread::spawn(move || {
        for i in 1..=5 {
            thread::sleep(Duration::from_millis(5));
            let g = c2.lock().unwrap();
            *s2.lock().unwrap() = i;
            g.notify_all();
        }
    });
    let g = cond.lock().unwrap();
    let (g, ok) = g.wait_for(|| *state.lock().unwrap() == 5, Duration::from_secs(30)).unwrap();
    assert!(ok);
    let start = Instant::now();
    let (_g, ok) = g.wait_for(|| false, Duration::from_millis(100)).unwrap();
    assert!(!ok);
    waits_about(start.elapsed(), Duration::from_millis(100));
    setter.join().unwrap();
}

#[test]
fn barrier_rounds_indexes_abort_reset_and_timeouts() {
    let b = Barrier::new(3).unwrap();
    assert_eq!(b.parties(), 3);
    for _round in 0..5 {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.wait_timeout(Duration::from_secs(30)).unwrap())
            })
            .collect();
        let mut indexes: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        indexes.sort();
        assert_eq!(indexes, [0, 1, 2]);
    }
    // a timeout breaks the barrier for the other waiter too
    let b2 = b.clone();
    let other = thread::spawn(move || b2.wait());
    while b.n_waiting() == 0 {
        thread::yield_now();
    }
    let start = Instant::now();
    let err = b.wait_timeout(Duration::from_millis(100)).unwrap_err();
    waits_about(start.elapsed(), Duration::from_millis(100));
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(matches!(other.join().unwrap(), Err(Error::BrokenBarrier { .. })));
    assert!(b.is_broken());
    assert!(matches!(b.wait(), Err(Error::BrokenBarrier { .. })), "broken until reset");
    b.reset();
    assert!(!b.is_broken());
    // reset wakes a waiter with an error; abort breaks it
    let b3 = b.clone();
    let waiting = thread::spawn(move || b3.wait());
    while b.n_waiting() == 0 {
        thread::yield_now();
    }
    b.reset();
    let err = waiting.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("reset"), "{err}");
    b.abort();
    let err = b.wait().unwrap_err();
    assert!(err.to_string().contains("abort"), "{err}");
    b.reset();
    assert_eq!(Barrier::new(1).unwrap().wait().unwrap(), 0);
    assert!(matches!(Barrier::new(0), Err(Error::SharedConfig { .. })));
    assert!(matches!(Barrier::new(MAX_PARTIES + 1), Err(Error::SharedConfig { .. })));
}

#[test]
fn shared_memory_reads_writes_and_refuses_past_its_end() {
    let m = SharedMemory::new(10).unwrap();
    assert_eq!((m.len(), m.is_empty()), (10, false));
    m.write_at(2, b"abc").unwrap();
    let mut buf = [0u8; 5];
    m.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"\0\0abc");
    assert!(matches!(m.write_at(8, b"abc"), Err(Error::OutOfRange { index: 11, len: 10 })));
    assert!(matches!(m.read_at(usize::MAX, &mut buf), Err(Error::OutOfRange { .. })));
    assert_eq!(m.to_vec().unwrap(), b"\0\0abc\0\0\0\0\0");
    // SAFETY: no other thread or process has this memory.
    assert_eq!(unsafe { *m.as_ptr().add(3) }, b'b');
    assert_eq!(SharedMemory::from_bytes(b"xyz").unwrap().to_vec().unwrap(), b"xyz");
}

#[test]
fn shared_memory_of_no_bytes_is_refused_with_the_reason() {
    for made in [SharedMemory::new(0), SharedMemory::from_bytes(b"")] {
        match made {
            Err(Error::SharedConfig { reason }) => assert!(reason.contains("0 bytes"), "{reason}"),
            other => panic!("expected SharedConfig, got {other:?}"),
        }
    }
}

#[test]
fn memory_that_is_not_a_shared_object_is_refused() {
    use crate::shared::region::{Kind, Region, Type};
    let small = crate::sys::shm::memfd("not-an-object", 100).unwrap();
    let err = Region::open(small, Type::bare(Kind::Lock)).unwrap_err();
    assert!(err.to_string().contains("too small to be a multiproc object"), "{err}");
    let blank = crate::sys::shm::memfd("not-an-object", 8192).unwrap();
    let err = Region::open(blank, Type::bare(Kind::Lock)).unwrap_err();
    assert!(err.to_string().contains("not a multiproc object of this version"), "{err}");
}
