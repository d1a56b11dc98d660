//! Supervision holes found by testing as a user would (issue 6): each test here failed, or
//! hung, before the fix it names. Every wait has a hard deadline.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{settled_pids, signal, within, DEADLINE};
use multiproc::{process_fn, Error, Output, Pool, ProcessBuilder};
use serde::{Deserialize, Serialize, Serializer};

#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

#[process_fn]
fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}

#[process_fn]
fn own_pid() -> u32 {
    std::process::id()
}

fn quiet() -> multiproc::PoolBuilder {
    let mut b = Pool::builder();
    b.stderr(Output::Null);
    b
}

/// 1. `terminate` right after a worker died, while its replacement starts, returned never.
#[test]
fn terminate_while_a_replacement_starts_returns() {
    within(DEADLINE, || {
        for _ in 0..20 {
            let pool = quiet().workers(1).build().unwrap();
            assert!(matches!(pool.apply(exit_with, (1,)), Err(Error::Exited { code: 1, .. })));
            pool.terminate();
            assert!(matches!(pool.apply(square, (2,)), Err(Error::PoolTerminated)));
        }
    });
}

/// Decodes only in a worker; decoding it in the parent panics (a user's `Deserialize` impl).
#[derive(Debug, Serialize)]
struct Touchy(u8);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        assert!(v != 99, "Touchy refuses 99");
        if v == 98 {
            return Err(serde::de::Error::custom("Touchy declines 98"));
        }
        Ok(Touchy(v))
    }
}

#[process_fn]
fn make_touchy(v: u8) -> Touchy {
    Touchy(v)
}

fn is_decode_of_touchy(e: &Error, what: &str) -> bool {
    matches!(e, Error::Decode { .. }) && e.to_string().contains(what)
}

/// 2. A blocking call whose result's `Deserialize` panicked let the panic out, and the pool
///    then never joined; a map let it out too.
#[test]
fn a_result_whose_decoding_panics_is_a_decode_error_on_every_path() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let err = pool.apply(make_touchy, (99,)).unwrap_err();
        assert!(is_decode_of_touchy(&err, "Touchy refuses 99"), "{err:?}");
        match pool.map(make_touchy, [1, 2, 99, 4]).unwrap_err() {
            Error::Item { index: 2, error: source } => {
                assert!(is_decode_of_touchy(&source, "refuses 99"), "{source:?}")
            }
            other => panic!("expected item 2 to fail, got {other:?}"),
        }
        let each = pool.map_results(make_touchy, [1, 99, 3]);
        assert!(each[0].is_ok() && each[2].is_ok(), "{each:?}");
        assert!(is_decode_of_touchy(each[1].as_ref().unwrap_err(), "refuses 99"));
        pool.close();
        pool.join();
    });
}

/// 9 (results). A result that fails to decode fails only its own item, not the rest of the
/// chunk, whether its `Deserialize` panics or returns an error.
#[test]
fn a_result_that_fails_to_decode_fails_only_its_item() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(1).chunksize(100).build().unwrap();
        let items: Vec<u8> = (0..50)
            .map(|i| {
                if i == 10 {
                    98
                } else if i == 30 {
                    99
                } else {
                    i
                }
            })
            .collect();
        let each = pool.map_results(make_touchy, items.clone());
        for (i, r) in each.iter().enumerate() {
            match (i, r) {
                (10, Err(e)) => assert!(is_decode_of_touchy(e, "declines 98"), "{e:?}"),
                (30, Err(e)) => assert!(is_decode_of_touchy(e, "refuses 99"), "{e:?}"),
                (_, Ok(t)) => assert_eq!(t.0, items[i]),
                (_, other) => panic!("item {i}: {other:?}"),
            }
        }
    });
}

/// Serializes (as its value) only if `ok`.
#[derive(Debug)]
struct Picky {
    ok: bool,
    value: u64,
}

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Picky { ok: true, value: u64::deserialize(d)? })
    }
}

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.ok {
            return Err(serde::ser::Error::custom("picky refuses to be serialized"));
        }
        s.serialize_u64(self.value)
    }
}

#[process_fn]
fn picky_value(p: Picky) -> u64 {
    p.value
}

/// 9 (arguments). An item whose `Serialize` fails fails alone, with `Encode` and its own
/// index; the rest of its chunk runs.
#[test]
fn an_argument_that_fails_to_encode_fails_only_its_item() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).chunksize(8).build().unwrap();
        let items = || (0..20u64).map(|i| Picky { ok: i != 5 && i != 13, value: i });
        let each = pool.map_results(picky_value, items());
        for (i, r) in each.iter().enumerate() {
            match (i, r) {
                (5 | 13, Err(Error::Encode { what: "arguments", message, .. })) => {
                    assert!(message.contains("picky refuses"), "{message}")
                }
                (_, Ok(v)) => assert_eq!(*v, i as u64),
                (_, other) => panic!("item {i}: {other:?}"),
            }
        }
        match pool.map(picky_value, items()).unwrap_err() {
            Error::Item { index: 5, error: source } => assert!(matches!(*source, Error::Encode { .. }), "{source:?}"),
            other => panic!("expected item 5 to fail, got {other:?}"),
        }
        let each: Vec<_> = pool.imap(picky_value, items()).chunksize(4).collect();
        assert_eq!(each.iter().filter(|r| r.is_err()).count(), 2, "{each:?}");
        match &each[13] {
            Err(Error::Item { index: 13, error: source }) => {
                assert!(matches!(**source, Error::Encode { .. }), "{source:?}")
            }
            other => panic!("expected item 13 to fail with its index, got {other:?}"),
        }
    });
}

/// 3. An argument over the frame limit: `spawn` returned `Ok` and `join` waited forever.
#[test]
fn spawn_with_an_argument_over_the_frame_limit_is_an_error_at_once() {
    #[process_fn]
    fn byte_count(data: Vec<u8>) -> usize {
        data.len()
    }
    within(DEADLINE, || {
        let too_big = vec![0u8; multiproc::MAX_FRAME_LEN + 1]; // zeroed lazily: no 1 GiB written
        match byte_count.spawn(too_big) {
            Err(Error::FrameTooLarge { len, max }) => {
                assert!(len > max && max == multiproc::MAX_FRAME_LEN as u64, "{len} {max}");
            }
            Ok(p) => panic!("spawn accepted an oversize argument (child {})", p.pid()),
            Err(other) => panic!("expected FrameTooLarge, got {other:?}"),
        }
    });
}

/// 8. A result over the frame limit came back as `Exited { code: 89 }`; it is `FrameTooLarge`
///    for that task, and the worker is kept.
#[test]
fn a_result_over_the_frame_limit_is_frame_too_large_and_the_worker_stays() {
    #[process_fn]
    fn zeros(n: u64) -> Vec<u8> {
        vec![0; n as usize]
    }
    within(DEADLINE, || {
        let pool = Pool::new(1).unwrap();
        let before = pool.pids();
        let over = multiproc::MAX_FRAME_LEN as u64;
        match pool.apply(zeros, (over,)) {
            Err(Error::FrameTooLarge { len, max }) => assert!(len > max, "{len} {max}"),
            other => panic!("expected FrameTooLarge, got {:?}", other.map(|v| v.len())),
        }
        assert_eq!(pool.apply(zeros, (3,)).unwrap(), [0, 0, 0]);
        assert_eq!(pool.pids(), before, "the worker must be kept");
        // one-shot processes too
        match zeros.spawn(over).unwrap().join() {
            Err(Error::FrameTooLarge { .. }) => {}
            other => panic!("expected FrameTooLarge, got {:?}", other.map(|v| v.len())),
        }
    });
}

/// 6. A worker killed while idle stayed in `pids()`, and the next task given to it failed
///    although it never ran.
#[test]
fn an_idle_worker_killed_from_outside_is_replaced_before_it_gets_work() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).chunksize(1).build().unwrap();
        let victim = pool.pids()[0];
        signal(victim, libc::SIGKILL);
        let start = Instant::now();
        while pool.pids().contains(&victim) {
            assert!(start.elapsed() < DEADLINE, "the dead worker is still listed");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(pool.map(square, 0..40).unwrap(), (0..40).map(|x| x * x).collect::<Vec<_>>());
        for x in 0..10 {
            assert_eq!(pool.apply(square, (x,)).unwrap(), x * x);
        }
        let pids = settled_pids(&pool);
        assert_eq!(pids.len(), 2);
        assert!(!pids.contains(&victim));
    });
}

/// 10. After `close`, idle workers ran until `join`; they exit once the work is done.
#[test]
fn closing_the_pool_lets_idle_workers_exit_when_the_work_is_done() {
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.pids();
        let pending = pool.apply_async(sleep_ms, (200,));
        pool.close();
        assert_eq!(pending.wait().unwrap(), 200);
        for pid in &pids {
            assert!(common::ends_within(*pid, Duration::from_secs(10)), "worker {pid} still runs after close");
        }
        pool.join();
    });
}

#[process_fn]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// 11. Zero task limits and chunk sizes were made 1 in silence; they are configuration errors.
#[test]
fn zero_options_are_configuration_errors() {
    let config_error = |b: &mut multiproc::PoolBuilder| match b.build() {
        Err(Error::PoolConfig { reason }) => reason,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    assert!(config_error(Pool::builder().workers(1).max_tasks_per_child(0)).contains("max_tasks_per_child"));
    assert!(config_error(Pool::builder().workers(1).chunksize(0)).contains("chunksize"));
    assert!(config_error(Pool::builder().workers(1).imap_window(0)).contains("imap_window"));
    assert!(config_error(Pool::builder().workers(1).task_timeout(Duration::ZERO)).contains("task_timeout"));
}

/// Writes this worker's pid to `path`, then takes `ms` to finish.
#[process_fn]
fn slow_init(path: PathBuf, ms: u64) {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
}

fn read_pid(path: &std::path::Path, not: &HashSet<u32>) -> u32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path).ok().and_then(|s| s.parse::<u32>().ok()) {
            if !not.contains(&pid) {
                return pid;
            }
        }
        assert!(start.elapsed() < DEADLINE, "no new worker wrote its pid");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("multiproc-{name}-{}", std::process::id()))
}

/// 5. A replacement worker killed from outside during its initializer was taken for a failing
///    initializer, and the pool refused all work from then on.
#[test]
fn a_worker_killed_during_its_initializer_is_replaced_not_fatal() {
    within(DEADLINE, || {
        let path = temp_path("slow-init");
        let pool = quiet().workers(1).initializer(slow_init, (path.clone(), 400)).build().unwrap();
        let first = pool.pids()[0];
        assert!(pool.apply(exit_with, (3,)).is_err());
        let replacement = read_pid(&path, &HashSet::from([first]));
        signal(replacement, libc::SIGKILL);
        assert_eq!(pool.apply(square, (12,)).unwrap(), 144);
        let pids = settled_pids(&pool);
        assert_eq!(pids.len(), 1);
        assert!(!pids.contains(&first) && !pids.contains(&replacement), "{pids:?}");
        let _ = std::fs::remove_file(&path);
    });
}

/// Fails when `path` exists: the first workers start, their replacements do not.
#[process_fn]
fn init_fails_if(path: PathBuf) -> Result<(), String> {
    match path.exists() {
        true => Err("the marker is there".into()),
        false => Ok(()),
    }
}

/// 5, the other half: an initializer that returns an error in a replacement still stops the
/// pool from starting workers, at once.
#[test]
fn a_replacement_whose_initializer_fails_breaks_the_pool_at_once() {
    within(DEADLINE, || {
        let path = temp_path("init-fails-if");
        let _ = std::fs::remove_file(&path);
        let pool = quiet().workers(1).initializer(init_fails_if, (path.clone(),)).build().unwrap();
        std::fs::write(&path, "").unwrap();
        assert!(pool.apply(exit_with, (3,)).is_err());
        let start = Instant::now();
        let err = match pool.apply(square, (2,)) {
            Err(e @ Error::InitializerFailed { .. }) => e,
            Ok(_) => panic!("the failed initializer's worker served a call"),
            Err(other) => panic!("expected InitializerFailed, got {other:?}"),
        };
        assert!(err.to_string().contains("the marker is there"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let _ = std::fs::remove_file(&path);
    });
}

/// 7. A stopped worker survived its parent's SIGKILL (SIGIO is not delivered to a stopped
///    process), and a function that ignored SIGIO disabled the protection. Run by the test
///    below in its own process; it dies as `MULTIPROC_STOPPED_HELPER` says, once the file named
///    by `MULTIPROC_STOPPED_GO` exists.
#[test]
fn stopped_worker_helper() {
    let Some(how) = std::env::var_os("MULTIPROC_STOPPED_HELPER") else { return };
    let pool = Pool::new(2).unwrap();
    for pid in pool.pids() {
        println!("pid {pid}");
    }
    let mut child = ignores_sigio.spawn().unwrap();
    println!("pid {}", child.pid());
    let _ = child.join_timeout(Duration::from_millis(300)); // let it reach its sleep
    println!("ready");
    let go = PathBuf::from(std::env::var_os("MULTIPROC_STOPPED_GO").unwrap());
    let start = Instant::now();
    while !go.exists() && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(5));
    }
    match how.to_str() {
        // no destructor runs: nothing closes the pool or kills the child on the way out
        Some("exit") => std::process::exit(0),
        Some("abort") => std::process::abort(),
        _ => std::thread::sleep(DEADLINE), // killed from outside
    }
}

#[process_fn]
fn ignores_sigio() {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    std::thread::sleep(Duration::from_secs(3600));
}

/// Runs the helper, stops one of its workers, ends the helper `how`, and checks that every
/// child of it ends.
fn children_die_with_a_parent_that(how: &str) {
    let go = temp_path(&format!("stopped-go-{how}"));
    let _ = std::fs::remove_file(&go);
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["stopped_worker_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env("MULTIPROC_STOPPED_HELPER", how)
        .env("MULTIPROC_STOPPED_GO", &go)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pids = common::pids_until_ready(helper.stdout.take().unwrap());
    assert_eq!(pids.len(), 3);
    signal(pids[0], libc::SIGSTOP);
    let start = Instant::now();
    while common::proc_state(pids[0]) != Some('T') && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(&go, "").unwrap();
    if how == "kill" {
        helper.kill().unwrap();
    }
    common::wait_deadline(&mut helper);
    let _ = std::fs::remove_file(&go);
    let survivors: Vec<(u32, Option<char>)> = pids
        .iter()
        .filter(|pid| !common::ends_within(**pid, Duration::from_secs(2)))
        .map(|pid| (*pid, common::proc_state(*pid)))
        .collect();
    for (pid, _) in &survivors {
        signal(*pid, libc::SIGKILL); // leave nothing behind, then fail
    }
    assert!(survivors.is_empty(), "processes outlived their parent ({how}): {survivors:?}");
}

#[test]
fn a_stopped_worker_and_one_that_ignores_sigio_die_with_their_parent() {
    children_die_with_a_parent_that("kill");
}

#[test]
fn they_die_with_a_parent_that_exits_without_cleaning_up() {
    children_die_with_a_parent_that("exit");
}

#[test]
fn they_die_with_a_parent_that_aborts() {
    children_die_with_a_parent_that("abort");
}

/// 4. An executable that is not a multiproc binary and keeps running: `join` waited forever.
///    (The default time is 30 s; this one is shorter, and the mechanism the same.)
#[test]
fn a_child_that_never_answers_the_handshake_is_an_error_after_the_deadline() {
    within(DEADLINE, || {
        let start = Instant::now();
        let p = ProcessBuilder::new()
            .executable("cat")
            .stdout(Output::Null)
            .handshake_timeout(Duration::from_millis(500))
            .spawn(square, (3,))
            .unwrap();
        let pid = p.pid();
        match p.join() {
            Err(e @ Error::HandshakeTimedOut { .. }) => {
                assert!(e.to_string().contains("within 500ms"), "{e}");
            }
            other => panic!("expected HandshakeTimedOut, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(common::proc_state(pid), None, "the child is killed and reaped");
    });
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Run by the next test in its own process, where nothing else runs.
#[test]
fn idle_driver_helper() {
    if std::env::var_os("MULTIPROC_IDLE_DRIVER_HELPER").is_none() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    let before = cpu_time();
    std::thread::sleep(Duration::from_millis(600)); // idle
    let pending = pool.apply_async(sleep_ms, (600,));
    pool.close(); // closed, waiting for its last task
    assert_eq!(pending.wait().unwrap(), 600);
    println!("\ncpu while waiting: {} ms", (cpu_time() - before).as_millis());
    pool.join();
}

/// The pool sleeps while it waits, idle or closed: a loop that polled would show as about
/// 1,200 ms of CPU here.
#[test]
fn a_waiting_pool_burns_no_cpu() {
    let out = common::run_test("idle_driver_helper", &[("MULTIPROC_IDLE_DRIVER_HELPER", "1")], &["--nocapture"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let line = out.stdout.lines().find(|l| l.starts_with("cpu while waiting")).expect(&out.stdout);
    let ms: u64 = line.split(' ').nth(3).unwrap().parse().unwrap();
    assert!(ms <= 100, "the pool used {ms} ms of CPU while it waited 1,200 ms");
}

/// Aborts (its worker dies) until `deaths` have been counted, then answers 42.
#[process_fn]
fn dies_until(count: multiproc::AtomicValue<u64>, deaths: u64) -> u64 {
    if count.fetch_add(1) < deaths {
        std::process::abort();
    }
    42
}

#[process_fn]
fn panics_counted(count: multiproc::AtomicValue<u64>) -> u64 {
    count.fetch_add(1);
    panic!("deterministic")
}

#[test]
fn retries_run_a_task_again_when_its_worker_died_and_never_after_a_panic() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).retries(2).build().unwrap();
        // apply (run from this thread), apply_async (through the driver) and map
        for run in 0..3 {
            let count = multiproc::AtomicValue::new(0u64).unwrap();
            let r = match run {
                0 => pool.apply(dies_until, (count.clone(), 2)),
                1 => pool.apply_async(dies_until, (count.clone(), 2)).wait(),
                _ => pool.starmap(dies_until, [(count.clone(), 2)]).map(|v| v[0]),
            };
            assert_eq!(r.unwrap(), 42, "run {run}");
            assert_eq!(count.load(), 3, "run {run}: two deaths, then the answer");
        }
        // more deaths than retries: the last death is the error
        let count = multiproc::AtomicValue::new(0u64).unwrap();
        assert!(matches!(pool.apply(dies_until, (count.clone(), 5)), Err(Error::Signaled { signal: 6, .. })));
        assert_eq!(count.load(), 3);
        // a panic is not retried
        let count = multiproc::AtomicValue::new(0u64).unwrap();
        assert!(matches!(pool.apply_async(panics_counted, (count.clone(),)).wait(), Err(Error::Panicked { .. })));
        assert_eq!(count.load(), 1);
        // and without retries, nothing runs twice
        let plain = Pool::new(1).unwrap();
        let count = multiproc::AtomicValue::new(0u64).unwrap();
        assert!(plain.apply(dies_until, (count.clone(), 1)).is_err());
        assert_eq!(count.load(), 1);
    });
}

/// Keeps `mib` MiB allocated and touched in this worker (a leak), and says which worker.
#[process_fn]
fn leak(mib: u64) -> u32 {
    let v = vec![1u8; (mib as usize) << 20];
    std::mem::forget(v);
    std::process::id()
}

#[test]
fn a_worker_over_its_memory_limit_after_a_task_is_replaced() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(1).max_memory_per_child(200 << 20).build().unwrap();
        let first = pool.apply(leak, (1,)).unwrap();
        assert_eq!(pool.apply(leak, (1,)).unwrap(), first, "under the limit: kept");
        let leaker = pool.apply(leak, (300,)).unwrap();
        assert_eq!(leaker, first);
        let next = pool.apply(leak, (1,)).unwrap();
        assert_ne!(next, leaker, "over the limit after its task: replaced before the next");
        assert!(matches!(Pool::builder().max_memory_per_child(0).build(), Err(Error::PoolConfig { .. })));
    });
}
