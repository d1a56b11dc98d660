//! Section 4 as users use it, and under faults: each test here is a case that once went wrong
//! (a lock held for ever by a process that exited, a lost wake-up, a queue that hung, a handle
//! that leaked). Every wait has a hard deadline.

mod common;

use std::time::{Duration, Instant};

use common::{join, within, DEADLINE};
use multiproc::{process_fn, Condition, Lock, RLock, TryLockError};

/// Takes the lock and exits holding it (CPython's `test_lock_locked_2processes`).
#[process_fn]
fn exit_holding_lock(l: Lock) -> u32 {
    std::mem::forget(l.lock().unwrap());
    std::process::id()
}

#[process_fn]
fn exit_holding_rlock(l: RLock) -> u32 {
    std::mem::forget(l.lock().unwrap());
    std::mem::forget(l.lock().unwrap()); // twice: the count goes with the holder
    std::process::id()
}

#[test]
fn a_lock_whose_holder_exits_holding_it_goes_to_the_next_locker_with_the_news() {
    within(DEADLINE, || {
        let lock = Lock::new().unwrap();
        let pid = join(exit_holding_lock.spawn(lock.clone()).unwrap()).unwrap();
        match lock.lock_timeout(Duration::from_secs(3)) {
            Err(TryLockError::HolderDied(died)) => assert_eq!(died.pid(), pid),
            Err(TryLockError::WouldBlock) => panic!("the lock is still held by a process that exited"),
            Ok(_) => panic!("the next locker was not told its holder died"),
        }
        drop(lock.try_lock().unwrap());

        let r = RLock::new().unwrap();
        let pid = join(exit_holding_rlock.spawn(r.clone()).unwrap()).unwrap();
        match r.lock_timeout(Duration::from_secs(3)) {
            Err(TryLockError::HolderDied(died)) => assert_eq!(died.pid(), pid),
            other => panic!("an RLock held by a process that exited: {:?}", other.map(|_| ())),
        }
        let other = r.clone();
        assert!(std::thread::spawn(move || other.try_lock().is_ok()).join().unwrap(), "no count left over");
    });
}

#[test]
fn a_notify_goes_to_a_thread_already_waiting_not_to_the_notifier_waiting_next() {
    within(DEADLINE, || {
        for _ in 0..10 {
            let cond = Condition::new().unwrap();
            let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let waiter = {
                let (cond, started) = (cond.clone(), started.clone());
                std::thread::spawn(move || {
                    let g = cond.lock().unwrap();
                    started.store(true, std::sync::atomic::Ordering::Release);
                    let start = Instant::now();
                    let (_g, notified) = g.wait_timeout(Duration::from_secs(3)).unwrap();
                    (notified, start.elapsed())
                })
            };
            while !started.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::yield_now();
            }
            let g = cond.lock().unwrap(); // the waiter is registered: it released the lock in `wait`
            g.notify(1);
            let (_g, took_it) = g.wait_timeout(Duration::from_millis(500)).unwrap();
            assert!(!took_it, "the notifier took its own notification");
            drop(_g);
            let (notified, waited) = waiter.join().unwrap();
            assert!(notified, "the waiter slept its full timeout ({waited:?})");
        }
    });
}
