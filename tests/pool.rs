//! Pool: the calls, and the supervision Python's Pool lacks. Every wait has a hard deadline.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{settled_pids, within, DEADLINE};
use multiproc::{process_fn, Error, Output, Pool};

#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

#[process_fn]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[process_fn]
fn own_pid() -> u32 {
    std::process::id()
}

#[process_fn]
fn sleep_then(ms: u64, value: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    value
}

#[process_fn]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[process_fn]
fn panics_on(x: u64, bad: u64) -> u64 {
    assert_ne!(x, bad, "item {x} is the bad one");
    x
}

#[process_fn]
fn dies_on(x: u64, bad: u64, how: String) -> u64 {
    if x == bad {
        match how.as_str() {
            "exit" => std::process::exit(7),
            _ => std::process::abort(),
        }
    }
    x
}

fn quiet_pool(workers: usize) -> Pool {
    Pool::builder().workers(workers).stderr(Output::Null).build().unwrap()
}

#[test]
fn map_starmap_and_apply_return_typed_results_in_order() {
    within(DEADLINE, || {
        let pool = Pool::new(4).unwrap();
        assert_eq!(pool.map(square, 0..10).unwrap(), [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
        assert_eq!(pool.starmap(add, [(1, 2), (3, 4), (5, 6)]).unwrap(), [3, 7, 11]);
        assert_eq!(pool.apply(add, (5, 6)).unwrap(), 11);
        assert_eq!(pool.map(square, Vec::<u64>::new()).unwrap(), Vec::<u64>::new());
        let big: Vec<u64> = (0..100_000).collect();
        let squares = pool.map(square, big.iter().copied()).unwrap();
        assert!(squares.iter().zip(&big).all(|(s, x)| *s == x * x));
    });
}

#[test]
fn apply_async_can_be_waited_polled_and_awaited() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let slow = pool.apply_async(sleep_then, (400, 1));
        assert!(!slow.ready());
        let err = slow.wait_timeout(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, Error::NotReady { .. }) && err.is_timeout(), "{err:?}");
        assert_eq!(slow.wait_timeout(DEADLINE).unwrap(), 1);

        let mut polled = pool.apply_async(square, (9,));
        let start = Instant::now();
        let value = loop {
            if let Some(r) = polled.try_get() {
                break r.unwrap();
            }
            assert!(start.elapsed() < DEADLINE);
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(value, 81);
        assert!(matches!(polled.try_get(), Some(Err(Error::AlreadyJoined))));

        // a Future, driven by a minimal executor: no async runtime needed
        let futures = vec![pool.apply_async(square, (3,)), pool.apply_async(square, (4,))];
        let values: Vec<u64> = futures.into_iter().map(|f| block_on(f).unwrap()).collect();
        assert_eq!(values, [9, 16]);

        let all = pool.map_async(square, 0..5);
        assert_eq!(all.wait().unwrap(), [0, 1, 4, 9, 16]);
        assert_eq!(pool.starmap_async(add, [(2, 2)]).wait().unwrap(), [4]);
    });
}

/// Polls a future to completion on this thread, parking between wake-ups.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn map_returns_the_first_failure_with_its_index_and_map_results_keeps_the_rest() {
    within(DEADLINE, || {
        let pool = quiet_pool(2);
        let err = pool.starmap(panics_on, (0..20).map(|x| (x, 13))).unwrap_err();
        match &err {
            Error::Item { index, error: source } => {
                assert_eq!(*index, 13);
                assert!(
                    matches!(**source, Error::Panicked { ref message, .. } if message.contains("item 13 is the bad one"))
                );
            }
            other => panic!("expected an item error, got {other:?}"),
        }
        assert!(err.to_string().starts_with("item 13 failed: the child process"), "{err}");

        let each = pool.starmap_results(panics_on, (0..20).map(|x| (x, 13)));
        assert_eq!(each.len(), 20);
        for (i, r) in each.iter().enumerate() {
            assert_eq!(r.is_err(), i == 13, "item {i}: {r:?}");
        }
    });
}

#[test]
fn a_panicking_task_fails_only_itself_and_costs_no_respawn() {
    within(DEADLINE, || {
        let pool = quiet_pool(2);
        let before: HashSet<u32> = pool.pids().into_iter().collect();
        let err = pool.apply(panics_on, (5, 5)).unwrap_err();
        assert!(err.is_panic(), "{err:?}");
        assert_eq!(pool.apply(panics_on, (6, 5)).unwrap(), 6);
        let results = pool.starmap_results(panics_on, (0..10).map(|x| (x, 3)));
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        let after: HashSet<u32> = pool.pids().into_iter().collect();
        assert_eq!(before, after, "a panic must not replace the worker");
    });
}

#[test]
fn a_worker_killed_from_outside_mid_map_fails_only_its_task_and_is_replaced() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).chunksize(1).build().unwrap();
        let victim = pool.pids()[0];
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(250));
            // SAFETY: kill(2) on a pid of our pool's worker, alive until the map ends.
            unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        });
        let results = pool.starmap_results(sleep_then, (0..24).map(|i| (60, i)));
        killer.join().unwrap();
        let failed: Vec<_> = results.iter().enumerate().filter(|(_, r)| r.is_err()).collect();
        assert_eq!(failed.len(), 1, "exactly the task on the killed worker fails: {failed:?}");
        match failed[0].1 {
            Err(Error::Signaled { pid, signal, name }) => {
                assert_eq!((*pid, *signal, *name), (victim, libc::SIGKILL, "SIGKILL"));
            }
            other => panic!("expected Signaled, got {other:?}"),
        }
        for (i, r) in results.iter().enumerate() {
            if let Ok(v) = r {
                assert_eq!(*v, i as u64);
            }
        }
        // replaced, and the pool goes on
        let pids = settled_pids(&pool);
        assert_eq!(pids.len(), 2);
        assert!(!pids.contains(&victim));
        assert_eq!(pool.map(square, 0..4).unwrap(), [0, 1, 4, 9]);
    });
}

#[test]
fn exit_or_abort_in_a_task_is_a_worker_death() {
    within(DEADLINE, || {
        let pool = quiet_pool(2);
        let results = pool.starmap_results(dies_on, (0..8).map(|x| (x, 3, "exit".to_string())));
        for (i, r) in results.iter().enumerate() {
            match (i, r) {
                (3, Err(Error::Exited { code: 7, .. })) => {}
                (3, other) => panic!("expected exit code 7, got {other:?}"),
                (_, r) => assert_eq!(*r.as_ref().unwrap(), i as u64),
            }
        }
        let err = pool.apply(dies_on, (1, 1, "abort".into())).unwrap_err();
        assert!(matches!(err, Error::Signaled { signal: libc::SIGABRT, .. }), "{err:?}");
        assert_eq!(pool.apply(square, (7,)).unwrap(), 49);
        assert_eq!(settled_pids(&pool).len(), 2);
    });
}

#[test]
fn a_task_over_its_time_limit_is_killed_and_the_others_finish() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).task_timeout(Duration::from_millis(500)).build().unwrap();
        let stuck_pid_candidates: HashSet<u32> = pool.pids().into_iter().collect();
        let start = Instant::now();
        let results = pool.map_results(sleep_ms, [10, 10, 30_000, 10, 10, 10]);
        assert!(start.elapsed() < Duration::from_secs(10), "the stuck task was not cut short");
        for (i, r) in results.iter().enumerate() {
            if i == 2 {
                match r {
                    Err(Error::TaskTimedOut { pid, timeout }) => {
                        assert!(stuck_pid_candidates.contains(pid));
                        assert_eq!(*timeout, Duration::from_millis(500));
                    }
                    other => panic!("expected a task timeout, got {other:?}"),
                }
            } else {
                assert_eq!(*r.as_ref().unwrap(), 10);
            }
        }
        // a blocking apply is cut short too
        assert!(matches!(pool.apply(sleep_ms, (30_000,)), Err(Error::TaskTimedOut { .. })));
        assert_eq!(pool.apply(sleep_ms, (1,)).unwrap(), 1);
        assert_eq!(settled_pids(&pool).len(), 2);
    });
}

#[process_fn]
fn init_fails(reason: String) -> Result<(), String> {
    Err(reason)
}

#[process_fn]
fn init_panics() {
    panic!("the model file is missing")
}

static SETTING: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[process_fn]
fn init_setting(value: String) {
    SETTING.set(value).unwrap();
}

#[process_fn]
fn read_setting() -> Option<String> {
    SETTING.get().cloned()
}

#[test]
fn the_initializer_runs_once_in_every_worker() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).initializer(init_setting, ("configured".into(),)).build().unwrap();
        let values = pool.starmap(read_setting, (0..8).map(|_| ())).unwrap();
        assert!(values.iter().all(|v| v.as_deref() == Some("configured")), "{values:?}");
    });
}

#[test]
fn a_failing_initializer_is_an_error_at_creation_not_a_respawn_loop() {
    within(DEADLINE, || {
        let start = Instant::now();
        let err = Pool::builder().workers(2).initializer(init_fails, ("no database".into(),)).build().unwrap_err();
        match &err {
            Error::InitializerFailed { message } => assert!(message.contains("no database"), "{message}"),
            other => panic!("expected an initializer failure, got {other:?}"),
        }
        let err = Pool::builder().workers(2).stderr(Output::Null).initializer(init_panics, ()).build().unwrap_err();
        assert!(err.to_string().contains("the model file is missing"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    });
}

#[test]
fn max_tasks_per_child_recycles_workers_and_the_backlog_drains() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(1).max_tasks_per_child(2).build().unwrap();
        let pids: Vec<u32> = (0..6).map(|_| pool.apply(own_pid, ()).unwrap()).collect();
        assert_eq!(pids[0], pids[1]);
        assert_ne!(pids[1], pids[2]);
        assert_eq!(pids[2], pids[3]);
        assert_ne!(pids[3], pids[4]);
        // a backlog through the driver: every task done, by several workers in turn
        let pending: Vec<_> = (0..10).map(|_| pool.apply_async(own_pid, ())).collect();
        let seen: Vec<u32> = pending.into_iter().map(|p| p.wait_timeout(DEADLINE).unwrap()).collect();
        let distinct: HashSet<u32> = seen.iter().copied().collect();
        assert!(distinct.len() >= 5, "10 tasks at 2 per child need 5 workers: {seen:?}");
    });
}

#[test]
fn close_and_join_finish_submitted_work_then_refuse_more() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let pending: Vec<_> = (0..6).map(|i| pool.apply_async(sleep_then, (50, i))).collect();
        pool.close();
        assert!(matches!(pool.apply(square, (1,)), Err(Error::PoolClosed)));
        assert!(matches!(pool.apply_async(square, (1,)).wait(), Err(Error::PoolClosed)));
        let pids = pool.pids();
        pool.join();
        let values: Vec<u64> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
        assert_eq!(values, [0, 1, 2, 3, 4, 5]);
        for pid in pids {
            assert_eq!(common::proc_state(pid), None, "worker {pid} still there after join");
        }
    });
}

#[test]
fn dropping_the_pool_finishes_submitted_work() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let pending: Vec<_> = (0..4).map(|i| pool.apply_async(sleep_then, (100, i))).collect();
        drop(pool); // Python's `with Pool` would terminate here and lose these
        let values: Vec<u64> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
        assert_eq!(values, [0, 1, 2, 3]);
    });
}

#[test]
fn terminate_fails_unfinished_work_at_once_and_never_hangs() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.pids();
        let pending: Vec<_> = (0..6).map(|_| pool.apply_async(sleep_ms, (60_000,))).collect();
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        pool.terminate();
        for p in pending {
            assert!(matches!(p.wait_timeout(Duration::from_secs(10)), Err(Error::PoolTerminated)));
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        for pid in pids {
            assert_eq!(common::proc_state(pid), None, "worker {pid} survived terminate");
        }
        assert!(matches!(pool.apply(square, (1,)), Err(Error::PoolTerminated)));
    });
}

#[test]
fn imap_reads_its_input_lazily_and_keeps_order() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).imap_window(8).build().unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&read);
        let endless = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let mut results = pool.imap(square, endless);
        for i in 0..100u64 {
            assert_eq!(results.next().unwrap().unwrap(), i * i);
            let ahead = read.load(Ordering::SeqCst) as u64 - (i + 1);
            assert!(ahead <= 8, "imap read {ahead} items ahead of the consumer");
        }
        assert_eq!(results.progress().done, 100);

        let chunked: Vec<u64> = pool.imap(square, 0..1000u64).chunksize(64).window(256).map(Result::unwrap).collect();
        assert_eq!(chunked, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    });
}

#[process_fn]
fn crashes_on_seven_or_eleven(x: u64) -> u64 {
    match x {
        7 => std::process::abort(),
        11 => panic!("eleven"),
        _ => x,
    }
}

#[test]
fn imap_errors_say_which_input_failed_even_unordered() {
    within(DEADLINE, || {
        let pool = quiet_pool(2);
        for ordered in [true, false] {
            let mut failed = Vec::new();
            let mut fine = Vec::new();
            let stream = match ordered {
                true => pool.imap(crashes_on_seven_or_eleven, 0..20u64).collect::<Vec<_>>(),
                false => pool.imap_unordered(crashes_on_seven_or_eleven, 0..20u64).collect(),
            };
            for r in stream {
                match r {
                    Ok(x) => fine.push(x),
                    Err(Error::Item { index, error: source }) => failed.push((index, *source)),
                    Err(other) => panic!("an error without its item's index: {other:?}"),
                }
            }
            failed.sort_by_key(|(i, _)| *i);
            assert_eq!(fine.len(), 18, "ordered {ordered}: {fine:?}");
            assert!(matches!(failed[0], (7, Error::Signaled { signal: libc::SIGABRT, .. })), "{failed:?}");
            assert!(matches!(&failed[1], (11, Error::Panicked { message, .. }) if message == "eleven"), "{failed:?}");
            assert!(failed[0].1.to_string().contains("SIGABRT"));
        }
        let err = pool.istarmap(panics_on, [(1, 2), (2, 2)]).nth(1).unwrap().unwrap_err();
        assert!(err.to_string().starts_with("item 1 failed:"), "{err}");
    });
}

#[test]
fn imap_unordered_yields_everything_fast_ones_first() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let results: Vec<u64> = pool.imap_unordered(sleep_ms, [600, 10, 10, 10]).map(Result::unwrap).collect();
        let mut sorted = results.clone();
        sorted.sort();
        assert_eq!(sorted, [10, 10, 10, 600]);
        assert_eq!(*results.last().unwrap(), 600, "the slow one comes last: {results:?}");
        let pairs: Vec<u64> = pool.istarmap(add, [(1, 1), (2, 2)]).map(Result::unwrap).collect();
        assert_eq!(pairs, [2, 4]);
    });
}

#[test]
fn progress_is_reported_as_chunks_come_back() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).chunksize(5).build().unwrap();
        let mut seen = Vec::new();
        let out = pool.starmap_progress(panics_on, (0..20).map(|x| (x, 99)), |p| seen.push(p)).unwrap();
        assert_eq!(out.len(), 20);
        let last = seen.last().unwrap();
        assert_eq!((last.done, last.failed, last.total), (20, 0, Some(20)));
        assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    });
}

#[test]
fn the_pool_is_send_and_sync_and_serves_many_threads_at_once() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    within(DEADLINE, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        assert_send_sync(&*pool);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        assert_eq!(pool.apply(add, (t, i)).unwrap(), t + i);
                    }
                    pool.map(square, 0..100).unwrap().len()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 100);
        }
    });
}

#[test]
fn the_default_worker_count_is_the_cpus_this_process_may_use() {
    let pool = Pool::builder().build().unwrap();
    assert_eq!(pool.workers(), std::thread::available_parallelism().unwrap().get());
    assert_eq!(pool.pids().len(), pool.workers());
    assert!(matches!(Pool::new(0), Err(Error::PoolConfig { .. })));
}

/// Run in its own process group by the next test: a pool busy with a long map.
#[test]
fn ctrl_c_helper() {
    if std::env::var_os("MULTIPROC_CTRL_C_HELPER").is_none() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    for pid in pool.pids() {
        println!("pid {pid}");
    }
    println!("ready");
    let _ = pool.map(sleep_ms, [60_000u64; 4]);
}

#[test]
fn ctrl_c_ends_the_program_without_noise_from_the_workers() {
    use std::process::Command;
    let mut helper = common::spawn_in_own_group(
        Command::new(std::env::current_exe().unwrap())
            .args(["ctrl_c_helper", "--exact", "--nocapture", "--test-threads=1"])
            .env("MULTIPROC_CTRL_C_HELPER", "1"),
    );
    let stderr = common::reader(helper.stderr.take().unwrap());
    let pids = common::pids_until_ready(helper.stdout.take().unwrap());
    assert_eq!(pids.len(), 2);
    std::thread::sleep(Duration::from_millis(300)); // let the map start
                                                    // SAFETY: kill(2) on the helper's process group, as a terminal's Ctrl-C does.
    assert_eq!(unsafe { libc::kill(-(helper.id() as i32), libc::SIGINT) }, 0);
    let status = common::wait_deadline(&mut helper);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "the parent decides: by default SIGINT ends it");
    for pid in &pids {
        assert!(common::ends_within(*pid, Duration::from_secs(1)), "worker {pid} outlived Ctrl-C");
    }
    let noise = stderr.join().unwrap();
    assert!(noise.trim().is_empty(), "the workers printed on Ctrl-C:\n{noise}");
}

/// Decodes only in a worker; decoding it in the parent panics (a user's `Deserialize` impl).
#[derive(Debug, serde::Serialize)]
struct Touchy(u8);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        assert!(v != 99, "Touchy refuses 99");
        Ok(Touchy(v))
    }
}

#[process_fn]
fn make_touchy(v: u8) -> Touchy {
    Touchy(v)
}

#[test]
fn a_result_whose_decoding_panics_fails_its_task_and_the_pool_goes_on() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let err = pool.apply_async(make_touchy, (99,)).wait().unwrap_err();
        assert!(err.to_string().contains("Touchy refuses 99"), "{err}");
        let err = pool.map_async(make_touchy, [1, 99, 3]).wait().unwrap_err();
        assert!(err.to_string().contains("Touchy refuses 99"), "{err}");
        let each: Vec<_> = pool.imap(make_touchy, [1u8, 99, 3]).collect();
        assert!(each[0].is_ok() && each[1].is_err() && each[2].is_ok(), "{each:?}");
        // the driver survived all of that
        assert_eq!(pool.apply_async(square, (3,)).wait().unwrap(), 9);
        assert_eq!(pool.map(square, 0..3).unwrap(), [0, 1, 4]);
    });
}

/// Run by the next test with its CPU affinity cut to one CPU.
#[test]
fn affinity_helper() {
    if std::env::var_os("MULTIPROC_AFFINITY_HELPER").is_none() {
        return;
    }
    println!("workers {}", Pool::builder().build().unwrap().workers());
}

#[test]
fn the_default_worker_count_follows_the_cpu_affinity_not_the_host() {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["affinity_helper", "--exact", "--nocapture", "--test-threads=1"]).env("MULTIPROC_AFFINITY_HELPER", "1");
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sched_setaffinity, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = common::run(&mut cmd);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("workers 1"), "one CPU allowed, so one worker:\n{}", out.stdout);
}

#[process_fn]
fn init_hangs() {
    std::thread::sleep(Duration::from_secs(3600));
}

#[test]
fn an_initializer_that_hangs_is_cut_short_by_the_task_limit() {
    within(DEADLINE, || {
        let start = Instant::now();
        let err = Pool::builder()
            .workers(2)
            .task_timeout(Duration::from_millis(300))
            .initializer(init_hangs, ())
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::InitializerFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("ran longer than the task limit of 300ms"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(30));
    });
}

#[test]
fn imap_progress_knows_the_total_from_an_exact_size_input_or_from_total() {
    let pool = Pool::new(2).unwrap();
    within(DEADLINE, move || {
        // a Vec says its length: every report has the total
        let mut seen = Vec::new();
        let got: Vec<u64> = pool
            .imap_unordered(square, (0..40u64).collect::<Vec<_>>())
            .on_progress(|p| seen.push((p.done, p.total)))
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 40);
        assert_eq!(seen.len(), 40);
        assert!(seen.iter().enumerate().all(|(i, &(done, total))| done == i + 1 && total == Some(40)), "{seen:?}");
        // a filter does not: unknown until the input ends, unless told
        let mut first = None;
        let mut last = None;
        for r in pool.imap(square, (0..40u64).filter(|x| x % 2 == 0)).window(4).on_progress(|p| {
            first.get_or_insert(p.total);
            last = Some(p.total);
        }) {
            r.unwrap();
        }
        assert_eq!((first, last), (Some(None), Some(Some(20))));
        let mut totals = Vec::new();
        let n = pool
            .imap(square, (0..40u64).filter(|x| x % 2 == 0))
            .total(20)
            .on_progress(|p| totals.push(p.total))
            .count();
        assert_eq!(n, 20);
        assert!(totals.iter().all(|t| *t == Some(20)), "{totals:?}");
    });
}
