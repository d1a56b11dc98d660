//! Locks, semaphores, barriers, events and conditions across real processes, and what happens
//! when a process holding one is SIGKILLed: the next user is told and goes on, never hangs.
//! Every wait has a hard deadline.

mod common;

use std::time::{Duration, Instant};

use common::{join, within, DEADLINE};
use multiproc::{
    process_fn, Array, Barrier, Condition, Error, Event, Lock, Process, RLock, Semaphore, TryLockError, Value,
};
use serde::{Deserialize, Serialize};

/// One of each kind of lock.
#[derive(Serialize, Deserialize)]
enum Held {
    Lock(Lock),
    RLock(RLock),
    Value(Value<[u64; 2]>),
    Array(Array<u64>),
    Condition(Condition),
}

/// Takes the lock, half-updates what it guards, says so, and waits to be killed.
#[process_fn]
fn hold_until_killed(held: Held, ready: Event) {
    let hang = || {
        ready.set();
        std::thread::sleep(Duration::from_secs(600));
    };
    match &held {
        Held::Lock(l) => {
            let _g = l.lock().unwrap();
            hang();
        }
        Held::RLock(r) => {
            let _g = (r.lock().unwrap(), r.lock().unwrap()); // held twice
            hang();
        }
        Held::Value(v) => {
            let mut g = v.lock().unwrap();
            g[0] = 1; // ... and g[1] never comes
            hang();
        }
        Held::Array(a) => {
            let mut g = a.lock().unwrap();
            g[..2].copy_from_slice(&[7, 7]);
            hang();
        }
        Held::Condition(c) => {
            let _g = c.lock().unwrap();
            hang();
        }
    }
}

/// Starts a child that holds `held`'s lock, and returns once it does.
fn holder(held: Held) -> Process<()> {
    let ready = Event::new().unwrap();
    let p = hold_until_killed.spawn(held, ready.clone()).unwrap();
    assert!(ready.wait_timeout(DEADLINE), "the holder never took the lock");
    p
}

fn kill(mut p: Process<()>) -> u32 {
    let pid = p.pid();
    p.kill().unwrap();
    assert!(matches!(p.join_timeout(DEADLINE), Err(Error::Killed { .. })));
    pid
}

#[test]
fn a_lock_whose_holder_is_killed_goes_to_the_next_locker_with_the_news_then_works() {
    within(DEADLINE, || {
        let lock = Lock::new().unwrap();
        let p = holder(Held::Lock(lock.clone()));
        assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
        // a locker already waiting when the holder dies is woken with the lock
        let waiting = {
            let lock = lock.clone();
            std::thread::spawn(move || match lock.lock() {
                Err(died) => {
                    let pid = died.pid();
                    drop(died.into_inner());
                    pid
                }
                Ok(_) => 0,
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let pid = kill(p);
        assert_eq!(waiting.join().unwrap(), pid, "the waiter learned who died");
        // told once: the lock is normal again
        drop(lock.lock().unwrap());
        drop(lock.try_lock().unwrap());
    });
}

#[test]
fn an_rlock_held_twice_by_a_killed_process_is_taken_whole_by_the_next() {
    within(DEADLINE, || {
        let r = RLock::new().unwrap();
        let pid = kill(holder(Held::RLock(r.clone())));
        let err = r.lock_timeout(DEADLINE).unwrap_err();
        let TryLockError::HolderDied(died) = err else { panic!("{err}") };
        assert_eq!(died.pid(), pid);
        drop(died.into_inner());
        let other = r.clone();
        assert!(std::thread::spawn(move || other.try_lock().is_ok()).join().unwrap(), "no count left over");
    });
}

#[test]
fn a_value_left_half_updated_by_a_killed_holder_is_reported_then_repaired() {
    within(DEADLINE, || {
        let v = Value::new([0u64; 2]).unwrap();
        let pid = kill(holder(Held::Value(v.clone())));
        // `get` reports the death and reads nothing
        assert!(matches!(v.get(), Err(Error::HolderDied { pid: p }) if p == pid));
        assert_eq!(v.get().unwrap(), [1, 0], "the half update is there to see");
        // through `lock`, the guard comes inside the error: repair under the lock
        let pid = kill(holder(Held::Value(v.clone())));
        let mut died = v.lock().unwrap_err();
        assert_eq!(died.pid(), pid);
        let g = died.get_mut();
        g[1] = g[0];
        drop(died);
        assert_eq!(v.get().unwrap(), [1, 1]);
        // `?` turns it into the crate's error
        let pid = kill(holder(Held::Value(v.clone())));
        let through_question_mark = || -> multiproc::Result<u64> { Ok(v.lock()?[0]) };
        assert!(matches!(through_question_mark(), Err(Error::HolderDied { pid: p }) if p == pid));
        assert!(through_question_mark().is_ok());
    });
}

#[test]
fn an_array_and_a_condition_whose_holders_are_killed_are_reported_then_work() {
    within(DEADLINE, || {
        let a = Array::<u64>::zeroed(4).unwrap();
        let pid = kill(holder(Held::Array(a.clone())));
        assert!(matches!(a.to_vec(), Err(Error::HolderDied { pid: p }) if p == pid));
        assert_eq!(a.to_vec().unwrap(), [7, 7, 0, 0]);

        let c = Condition::new().unwrap();
        let pid = kill(holder(Held::Condition(c.clone())));
        let died = c.lock().unwrap_err();
        assert_eq!(died.pid(), pid);
        let g = died.into_inner();
        let (_g, notified) = g.wait_timeout(Duration::from_millis(10)).unwrap();
        assert!(!notified, "the condition works after its holder died");
    });
}

#[process_fn]
fn take_counts_and_hang(s: Semaphore, n: u32, forget: u32, ready: Event) {
    let guards: Vec<_> = (0..n).map(|_| s.acquire()).collect();
    for _ in 0..forget {
        s.acquire().forget();
    }
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
    drop(guards);
}

#[test]
fn counts_held_by_a_killed_process_come_back_to_a_waiter_on_their_own() {
    within(DEADLINE, || {
        let s = Semaphore::new(3).unwrap();
        let ready = Event::new().unwrap();
        let p = take_counts_and_hang.spawn(s.clone(), 2, 1, ready.clone()).unwrap();
        assert!(ready.wait_timeout(DEADLINE));
        assert_eq!(s.value(), 0);
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let got = s.acquire_timeout(DEADLINE).map(|g| g.forget()).is_some();
                (got, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        kill(p);
        let (got, _) = waiter.join().unwrap();
        assert!(got, "a waiter got a dead holder's count");
        // the other guarded count came back too; the forgotten one did not
        let start = Instant::now();
        while s.value() < 1 && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(s.value(), 1);
    });
}

#[test]
fn recover_gives_back_a_dead_holders_counts_at_once() {
    within(DEADLINE, || {
        let s = Semaphore::new(2).unwrap();
        let ready = Event::new().unwrap();
        let p = take_counts_and_hang.spawn(s.clone(), 2, 0, ready.clone()).unwrap();
        assert!(ready.wait_timeout(DEADLINE));
        assert_eq!(s.recover(), None, "a live holder keeps its counts");
        let pid = kill(p);
        assert_eq!(s.recover(), Some(pid));
        assert_eq!(s.value(), 2);
        assert_eq!(s.recover(), None, "given back once");
    });
}

#[process_fn]
fn party(b: Barrier, rounds: u32) -> Vec<usize> {
    (0..rounds).map(|_| b.wait_timeout(DEADLINE).unwrap()).collect()
}

#[process_fn]
fn hold_barrier_and_hang(_b: Barrier, ready: Event) {
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_barrier_runs_rounds_across_processes() {
    within(DEADLINE, || {
        let b = Barrier::new(3).unwrap();
        let children: Vec<_> = (0..2).map(|_| party.spawn(b.clone(), 20).unwrap()).collect();
        let mine: Vec<usize> = (0..20).map(|_| b.wait_timeout(DEADLINE).unwrap()).collect();
        let theirs: Vec<Vec<usize>> = children.into_iter().map(|c| join(c).unwrap()).collect();
        for round in 0..20 {
            let mut indexes = vec![mine[round], theirs[0][round], theirs[1][round]];
            indexes.sort();
            assert_eq!(indexes, [0, 1, 2], "round {round}");
        }
    });
}

#[test]
fn a_party_killed_before_it_arrives_breaks_the_barrier_for_the_waiters_then_reset_mends_it() {
    within(DEADLINE, || {
        let b = Barrier::new(2).unwrap();
        let ready = Event::new().unwrap();
        let p = hold_barrier_and_hang.spawn(b.clone(), ready.clone()).unwrap();
        assert!(ready.wait_timeout(DEADLINE));
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait())
        };
        std::thread::sleep(Duration::from_millis(20));
        let pid = kill(p);
        let err = waiter.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::BrokenBarrier { .. }), "{err}");
        assert!(err.to_string().contains(&format!("process {pid} died")), "{err}");
        assert!(b.is_broken());
        b.reset();
        let c = party.spawn(b.clone(), 1).unwrap();
        b.wait_timeout(DEADLINE).unwrap();
        join(c).unwrap();
    });
}

#[process_fn]
fn wait_for_event(e: Event, timeout_ms: u64) -> bool {
    e.wait_timeout(Duration::from_millis(timeout_ms))
}

#[process_fn]
fn wait_for_notify(c: Condition, started: Event) -> bool {
    let g = c.lock().unwrap();
    started.set();
    g.wait_timeout(DEADLINE).unwrap().1
}

#[test]
fn events_and_conditions_wake_other_processes() {
    within(DEADLINE, || {
        let e = Event::new().unwrap();
        let children: Vec<_> = (0..3).map(|_| wait_for_event.spawn(e.clone(), 50_000).unwrap()).collect();
        let late = wait_for_event.spawn(Event::new().unwrap(), 100).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        e.set();
        assert!(children.into_iter().all(|c| join(c).unwrap()));
        assert!(!join(late).unwrap(), "an unset event times out");

        let c = Condition::new().unwrap();
        let started = Event::new().unwrap();
        let waiter = wait_for_notify.spawn(c.clone(), started.clone()).unwrap();
        assert!(started.wait_timeout(DEADLINE));
        c.lock().unwrap().notify_one(); // the waiter released the lock inside wait
        assert!(join(waiter).unwrap());
    });
}

#[process_fn]
fn keep_in_a_static_and_exit(b: Barrier) {
    static KEPT: std::sync::OnceLock<Barrier> = std::sync::OnceLock::new();
    let _ = KEPT.set(b);
    std::process::exit(3); // no destructor runs: only the exit hook says it left
}

#[test]
fn a_process_that_exits_with_a_barrier_still_held_leaves_it_whole() {
    within(DEADLINE, || {
        let b = Barrier::new(2).unwrap();
        let p = keep_in_a_static_and_exit.spawn(b.clone()).unwrap();
        assert!(matches!(join(p), Err(Error::Exited { code: 3, .. })));
        assert!(!b.is_broken(), "exiting is leaving, not dying");
        let c = party.spawn(b.clone(), 1).unwrap();
        b.wait_timeout(DEADLINE).unwrap();
        join(c).unwrap();
    });
}

#[process_fn]
fn update_pairs_forever(v: Value<[u64; 3]>, s: Semaphore) {
    loop {
        let _slot = s.acquire();
        match v.lock() {
            Ok(mut g) => {
                g[0] += 1;
                for _ in 0..2_000 {
                    std::hint::black_box(&mut *g); // a long critical section: kills land inside
                }
                g[1] += 1;
            }
            Err(died) => {
                let mut g = died.into_inner();
                g[1] = g[0];
                g[2] += 1; // deaths told, to anyone
            }
        }
    }
}

#[test]
fn holders_killed_at_random_instants_never_hang_the_others_and_every_death_is_reported() {
    // Three processes update a pair under its lock (both halves equal between updates) and
    // take a semaphore count around it; two are killed at every round, at any instant.
    within(Duration::from_secs(120), || {
        let v = Value::new([0u64; 3]).unwrap();
        let s = Semaphore::new(2).unwrap();
        let (mut torn, mut told) = (0, 0);
        for round in 0..100u64 {
            let mut kids: Vec<_> = (0..3).map(|_| update_pairs_forever.spawn(v.clone(), s.clone()).unwrap()).collect();
            std::thread::sleep(Duration::from_micros(300 + 97 * (round % 13)));
            for mut k in kids.drain(..2) {
                k.kill().unwrap();
                let _ = k.join_timeout(DEADLINE);
            }
            // the survivor goes on: the pair keeps moving
            let seen = v.lock_timeout(DEADLINE).map(|g| g[0]).unwrap_or_else(|e| match e {
                TryLockError::HolderDied(d) => {
                    told += 1;
                    let mut g = d.into_inner();
                    torn += (g[0] != g[1]) as u32;
                    g[1] = g[0];
                    g[2] += 1;
                    g[0]
                }
                TryLockError::WouldBlock => panic!("round {round}: the lock stayed held"),
            });
            let until = Instant::now() + DEADLINE;
            while v.lock().map(|g| g[0]).unwrap_or_else(|d| d.into_inner()[0]) == seen {
                assert!(Instant::now() < until, "round {round}: the survivor is stuck");
                std::thread::sleep(Duration::from_millis(1));
            }
            for mut k in kids {
                k.kill().unwrap();
                let _ = k.join_timeout(DEADLINE);
            }
            // every count a dead process held comes back
            let start = Instant::now();
            while s.value() < 2 {
                s.recover();
                assert!(start.elapsed() < DEADLINE, "round {round}: counts lost: {}", s.value());
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(s.value(), 2, "round {round}: never more than the start");
            let g = match v.lock() {
                Ok(g) => g,
                Err(d) => {
                    told += 1;
                    let mut g = d.into_inner();
                    g[1] = g[0];
                    g[2] += 1;
                    g
                }
            };
            assert_eq!(g[0], g[1], "round {round}: a torn pair nobody was told about");
        }
        let everyone = v.lock().map(|g| g[2]).unwrap_or_else(|d| d.into_inner()[2]);
        eprintln!("{everyone} deaths told, {told} to the parent, {torn} of them with the pair torn");
        assert!(everyone > 0, "no kill landed in a critical section: the test tests nothing");
    });
}
