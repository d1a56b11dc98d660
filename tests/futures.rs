//! The rest of `concurrent.futures` on a pool: cancel (before it starts, or by killing its
//! worker), `as_completed`, `wait_results`, done callbacks, and an `Imap` dropped early.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{settled_pids, within, DEADLINE};
use multiproc::{as_completed, process_fn, wait_results, AtomicValue, Error, Pool, ReturnWhen};

/// Counts its start in `runs`, sleeps `ms`, returns `ms`.
#[process_fn]
fn counted_sleep(runs: AtomicValue<u64>, ms: u64) -> u64 {
    runs.fetch_add(1);
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[process_fn]
fn fails_if_odd(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10 * x));
    assert!(x.is_multiple_of(2), "odd: {x}");
    x
}

fn one_worker() -> Pool {
    Pool::builder().workers(1).build().unwrap()
}

#[test]
fn cancel_stops_a_task_that_has_not_started_and_leaves_a_running_one() {
    within(DEADLINE, || {
        let pool = one_worker();
        let runs = AtomicValue::new(0u64).unwrap();
        let running = pool.apply_async(counted_sleep, (runs.clone(), 300));
        while runs.load() == 0 {
            std::thread::sleep(Duration::from_millis(1)); // the first is running
        }
        let queued: Vec<_> = (0..3).map(|_| pool.apply_async(counted_sleep, (runs.clone(), 1))).collect();
        assert!(queued[1].cancel(), "not started: cancelled");
        assert!(!queued[1].cancel(), "once");
        assert!(!running.cancel(), "running: cancel leaves it");
        assert_eq!(running.wait().unwrap(), 300);
        let mut results: Vec<_> = queued.into_iter().map(|h| h.wait()).collect();
        assert!(matches!(results.remove(1), Err(Error::Cancelled { killed: false })));
        assert!(results.iter().all(|r| matches!(r, Ok(1))), "{results:?}");
        assert_eq!(runs.load(), 3, "the cancelled one never ran");
    });
}

#[test]
fn cancel_or_kill_stops_a_running_task_by_replacing_its_worker() {
    within(DEADLINE, || {
        let pool = one_worker();
        let runs = AtomicValue::new(0u64).unwrap();
        let before = settled_pids(&pool);
        let long = pool.apply_async(counted_sleep, (runs.clone(), 60_000));
        let behind = pool.apply_async(counted_sleep, (runs.clone(), 1));
        while runs.load() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let start = Instant::now();
        assert!(long.cancel_or_kill());
        assert!(matches!(long.wait(), Err(Error::Cancelled { killed: true })));
        assert!(start.elapsed() < Duration::from_secs(10), "a kill, not the minute");
        assert_eq!(behind.wait().unwrap(), 1, "the task behind it ran on the replacement");
        assert_ne!(settled_pids(&pool), before, "replaced");
        // a queued one is cancelled without a kill, and a finished one is left alone
        let blocker = pool.apply_async(counted_sleep, (runs.clone(), 200));
        let queued = pool.apply_async(counted_sleep, (runs.clone(), 1));
        assert!(queued.cancel_or_kill());
        assert!(matches!(queued.wait(), Err(Error::Cancelled { killed: false })));
        assert_eq!(blocker.wait().unwrap(), 200);
        let done = pool.apply_async(counted_sleep, (runs.clone(), 1));
        while !done.ready() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!done.cancel_or_kill());
        assert_eq!(done.wait().unwrap(), 1);
    });
}

#[test]
fn a_cancelled_map_async_runs_none_of_its_chunks_not_yet_started() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(1).chunksize(1).build().unwrap();
        let runs = AtomicValue::new(0u64).unwrap();
        let all = pool.starmap_async(counted_sleep, (0..20).map(|_| (runs.clone(), 20)));
        while runs.load() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(all.cancel());
        match all.wait() {
            Err(Error::Item { error, .. }) => assert!(matches!(*error, Error::Cancelled { killed: false })),
            other => panic!("{other:?}"),
        }
        pool.join();
        assert!(runs.load() <= 3, "{} of 20 ran", runs.load());
    });
}

#[test]
fn dropping_an_imap_early_cancels_its_read_ahead() {
    within(DEADLINE, || {
        let pool = one_worker();
        let runs = AtomicValue::new(0u64).unwrap();
        let mut it = pool.istarmap(counted_sleep, (0..100).map(|_| (runs.clone(), 20))).window(10);
        assert_eq!(it.next().unwrap().unwrap(), 20);
        drop(it);
        pool.join();
        assert!(runs.load() <= 3, "{} of the 10 read ahead ran", runs.load());
    });
}

#[test]
fn as_completed_gives_results_in_the_order_they_finish() {
    within(DEADLINE, || {
        let pool = Pool::new(3).unwrap();
        let handles: Vec<_> = [6u64, 0, 3].into_iter().map(|x| pool.apply_async(fails_if_odd, (x * 10,))).collect();
        let order: Vec<(usize, u64)> = as_completed(handles).map(|(i, r)| (i, r.unwrap())).collect();
        assert_eq!(order, [(1, 0), (2, 30), (0, 60)]);
        // with a timeout: NotReady while it runs, then the result, then the end
        let mut it = as_completed(vec![pool.apply_async(fails_if_odd, (30,))]);
        assert!(matches!(it.next_timeout(Duration::from_millis(10)), Err(Error::NotReady { .. })));
        assert!(matches!(it.next_timeout(DEADLINE), Ok(Some((0, Ok(30))))));
        assert!(matches!(it.next_timeout(DEADLINE), Ok(None)));
    });
}

#[test]
fn wait_results_returns_at_the_first_result_the_first_error_or_all() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let handles: Vec<_> = [2u64, 40, 1, 4].into_iter().map(|x| pool.apply_async(fails_if_odd, (x,))).collect();
        let (done, pending) = wait_results(&handles, ReturnWhen::FirstCompleted, None);
        assert!(!done.is_empty() && done.len() + pending.len() == 4, "{done:?} {pending:?}");
        let (done, _) = wait_results(&handles, ReturnWhen::FirstError, None);
        assert!(done.contains(&2), "the odd one failed: {done:?}");
        assert!(matches!(handles[2].wait_timeout(Duration::ZERO), Err(Error::Panicked { .. })));
        let (done, pending) = wait_results(&handles, ReturnWhen::AllCompleted, Some(Duration::from_millis(1)));
        assert!(!pending.is_empty(), "40 x 10 ms is still running: {done:?}");
        let (done, pending) = wait_results(&handles, ReturnWhen::AllCompleted, Some(DEADLINE));
        assert_eq!((done, pending), (vec![0, 1, 2, 3], vec![]));
    });
}

#[test]
fn on_done_calls_back_with_the_result_once_it_arrives_or_at_once() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let (tx, rx) = mpsc::channel();
        for x in [4u64, 3] {
            let tx = tx.clone();
            pool.apply_async(fails_if_odd, (x,)).on_done(move |r| tx.send((x, r.map_err(|e| e.to_string()))).unwrap());
        }
        let mut got: Vec<_> = (0..2).map(|_| rx.recv_timeout(DEADLINE).unwrap()).collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(got[1], (4, Ok(4)));
        assert!(matches!(&got[0], (3, Err(e)) if e.contains("odd: 3")), "{got:?}");
        // already done: called now, in this thread
        let h = pool.apply_async(fails_if_odd, (0,));
        while !h.ready() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let here = std::thread::current().id();
        let tx2 = tx.clone();
        h.on_done(move |r| {
            tx2.send((u64::from(std::thread::current().id() == here), r.map_err(|e| e.to_string()))).unwrap()
        });
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), (1, Ok(0)));
        // a callback that panics costs the pool nothing
        pool.apply_async(fails_if_odd, (2,)).on_done(|_| panic!("a bad callback"));
        assert_eq!(pool.apply(fails_if_odd, (6,)).unwrap(), 6);
        assert_eq!(pool.map(fails_if_odd, [0u64, 2]).unwrap(), [0, 2]);
    });
}
