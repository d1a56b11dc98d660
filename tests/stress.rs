//! A randomized, seeded stress test of the pool (issue 6): threads interleave every kind of
//! call, with tasks that panic, exit, overrun, or return values too large or impossible to
//! decode, while a chaos thread SIGKILLs and SIGSTOPs workers (starting ones too) and rounds end
//! by close + join, terminate, drop, or a join racing the calls. It checks that every call
//! returns within a deadline, that every result is right or the typed error its case allows,
//! and that no process is left behind.
//!
//! A few seconds by default; `MULTIPROC_STRESS_SECS=300` for five minutes, and
//! `MULTIPROC_STRESS_SEED=<n>` to replay a seed (each run prints its own).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{children, signal, Rng};
use multiproc::{process_fn, Error, Output, Pool};
use serde::{Deserialize, Serialize, Serializer};

#[process_fn]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// What an item of a stress call does in the worker.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
enum Act {
    Square(u64),
    Panic,
    Exit(i32),
    Sleep(u64),
    /// Returns this many bytes.
    Big(u64),
    /// Returns a value whose decoding panics in the parent.
    Touchy,
}

#[derive(Debug, Serialize)]
struct Reply(u64, Vec<u8>);

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw(u64, Vec<u8>);
        let raw = Raw::deserialize(d)?;
        assert!(raw.0 != u64::MAX, "this reply refuses to be decoded");
        Ok(Reply(raw.0, raw.1))
    }
}

#[process_fn]
fn perform(a: Act) -> Reply {
    match a {
        Act::Square(x) => Reply(x.wrapping_mul(x), Vec::new()),
        Act::Panic => panic!("asked to panic"),
        Act::Exit(code) => std::process::exit(code),
        Act::Sleep(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            Reply(ms, Vec::new())
        }
        Act::Big(n) => Reply(0, vec![7; n as usize]),
        Act::Touchy => Reply(u64::MAX, Vec::new()),
    }
}

/// Encodes only when `ok`.
#[derive(Debug)]
struct Picky {
    ok: bool,
    act: Act,
}

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.ok {
            true => self.act.serialize(s),
            false => Err(serde::ser::Error::custom("picky refuses")),
        }
    }
}

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Picky { ok: true, act: Act::deserialize(d)? })
    }
}

#[process_fn]
fn picky_act(p: Picky) -> Reply {
    perform(p.act)
}

#[process_fn]
fn slow_start(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The frame limit of pools that set one: small, so that oversize values cost nothing.
const SMALL_FRAME: usize = 64 * 1024;

/// How a round's pool is made.
#[derive(Clone, Debug)]
struct Shape {
    workers: usize,
    initializer_ms: Option<u64>,
    max_tasks: Option<u64>,
    timeout: Option<Duration>,
    small_frames: bool,
    chunksize: Option<usize>,
}

impl Shape {
    fn random(rng: &mut Rng) -> Shape {
        Shape {
            workers: 1 + rng.below(3) as usize,
            initializer_ms: rng.chance(40).then(|| rng.below(30)),
            max_tasks: rng.chance(30).then(|| 1 + rng.below(20)),
            timeout: rng.chance(40).then(|| Duration::from_millis(1500 + rng.below(1500))),
            small_frames: rng.chance(50),
            chunksize: rng.chance(40).then(|| 1 + rng.below(16) as usize),
        }
    }

    fn build(&self) -> multiproc::Result<Pool> {
        let mut b = Pool::builder();
        b.workers(self.workers).stderr(Output::Null).stdout(Output::Null);
        if let Some(ms) = self.initializer_ms {
            b.initializer(slow_start, (ms,));
        }
        if let Some(n) = self.max_tasks {
            b.max_tasks_per_child(n);
        }
        if let Some(t) = self.timeout {
            b.task_timeout(t);
        }
        if self.small_frames {
            b.max_frame_len(SMALL_FRAME);
        }
        if let Some(c) = self.chunksize {
            b.chunksize(c);
        }
        b.build()
    }
}

/// An item of a call, and how it is sent.
#[derive(Clone, Copy, Debug)]
struct Item {
    act: Act,
    /// Its Serialize fails.
    unencodable: bool,
}

impl Item {
    fn random(rng: &mut Rng, shape: &Shape) -> Item {
        let act = match rng.below(100) {
            0..=69 => Act::Square(rng.next() >> 1),
            70..=74 => Act::Panic,
            75..=77 => Act::Exit(3 + rng.below(5) as i32),
            78..=85 => Act::Sleep(rng.below(15)),
            86..=89 if shape.small_frames => Act::Big(SMALL_FRAME as u64 + rng.below(1000)),
            86..=89 => Act::Big(rng.below(100)),
            90..=94 => Act::Touchy,
            _ => Act::Square(rng.below(1000)),
        };
        Item { act, unencodable: rng.chance(4) }
    }

    fn arg(&self) -> Picky {
        Picky { ok: !self.unencodable, act: self.act }
    }
}

/// Failures that come from outside the item: the chaos thread, or the round ending.
fn environmental(e: &Error) -> bool {
    match e {
        Error::Signaled { signal, .. } => *signal == libc::SIGKILL,
        Error::TaskTimedOut { .. } | Error::PoolTerminated | Error::PoolClosed => true,
        // only after workers were killed while starting, six times in a row
        Error::InitializerFailed { message } => message.contains("in a row died while starting"),
        _ => false,
    }
}

/// Checks one result against what its item asked for. `exits`: the codes items of the same
/// call exit with; a worker that exits fails the rest of its chunk with its code.
fn check(item: &Item, r: &multiproc::Result<Reply>, exits: &[i32]) -> Result<(), String> {
    let ok = match (item, r) {
        (_, Err(e)) if environmental(e) => true,
        (_, Err(Error::Exited { code, .. })) if exits.contains(code) => true,
        (Item { unencodable: true, .. }, r) => matches!(r, Err(Error::Encode { what: "arguments", .. })),
        (Item { act: Act::Square(x), .. }, Ok(Reply(v, _))) => *v == x.wrapping_mul(*x),
        (Item { act: Act::Panic, .. }, Err(Error::Panicked { message, .. })) => message == "asked to panic",
        (Item { act: Act::Exit(code), .. }, Err(Error::Exited { code: c, .. })) => code == c,
        (Item { act: Act::Sleep(ms), .. }, Ok(Reply(v, _))) => v == ms,
        (Item { act: Act::Big(n), .. }, Ok(Reply(_, bytes))) => bytes.len() as u64 == *n && (*n as usize) < SMALL_FRAME,
        (Item { act: Act::Big(n), .. }, Err(Error::FrameTooLarge { .. })) => *n as usize >= SMALL_FRAME,
        (Item { act: Act::Touchy, .. }, Err(Error::Decode { message, .. })) => {
            message.contains("refuses to be decoded")
        }
        _ => false,
    };
    match ok {
        true => Ok(()),
        false => Err(format!("item {item:?} gave {r:?}")),
    }
}

/// Counts what the run did.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    items: AtomicU64,
    kills: AtomicU64,
    stops: AtomicU64,
}

/// One call of a random kind; returns its items' results checked.
fn one_call(pool: &Pool, rng: &mut Rng, shape: &Shape, tally: &Tally) -> Result<(), String> {
    let kind = rng.below(6);
    let n = 1 + rng.below(40);
    let mut items = |n: u64| -> Vec<Item> { (0..n).map(|_| Item::random(rng, shape)).collect() };
    let (batch, results): (Vec<Item>, Vec<multiproc::Result<Reply>>) = match kind {
        0 => {
            let item = items(1);
            let r = pool.apply(picky_act, (item[0].arg(),));
            (item, vec![r])
        }
        1 => {
            let batch = items(1 + n / 8);
            let handles: Vec<_> = batch.iter().map(|i| pool.apply_async(picky_act, (i.arg(),))).collect();
            let results = handles
                .into_iter()
                .map(|h| match h.wait_timeout(common::DEADLINE) {
                    Err(e) if e.is_timeout() => Err(Error::PoolClosed), // reported below as a hang
                    other => other,
                })
                .collect();
            (batch, results)
        }
        2 => {
            let batch = items(n);
            let r = pool.map_results(picky_act, batch.iter().map(Item::arg));
            (batch, r)
        }
        3 => {
            let batch = items(n);
            let mut results = Vec::new();
            for (i, r) in pool.imap(picky_act, batch.iter().map(Item::arg)).enumerate() {
                results.push(match r {
                    Err(Error::Item { index, error: source }) if index == i => Err(*source),
                    Err(e) => return Err(format!("imap item {i} failed without its index: {e:?}")),
                    Ok(v) => Ok(v),
                });
            }
            (batch, results)
        }
        4 => {
            // `map` stops at the first failure: check that one and the values before it
            let batch = items(n);
            let results = match pool.map(picky_act, batch.iter().map(Item::arg)) {
                Ok(values) => values.into_iter().map(Ok).collect(),
                Err(Error::Item { index, error: source }) => {
                    let mut r: Vec<multiproc::Result<Reply>> = Vec::new();
                    r.resize_with(index, || Err(Error::PoolClosed)); // not checked
                    r.push(Err(*source));
                    return check(&batch[index], &r[index], &exit_codes(&batch)).map(|()| count(tally, 1));
                }
                Err(e) if environmental(&e) => return Ok(()),
                Err(e) => return Err(format!("map failed without an item: {e:?}")),
            };
            (batch, results)
        }
        _ => {
            let xs: Vec<u64> = items(n).iter().map(|i| if let Act::Square(x) = i.act { x } else { 7 }).collect();
            match pool.map(square, xs.clone()) {
                Ok(v) if v.iter().zip(&xs).all(|(v, x)| *v == x.wrapping_mul(*x)) => {}
                Ok(v) => return Err(format!("wrong squares {v:?}")),
                Err(Error::Item { error: source, .. }) if environmental(&source) => {}
                Err(e) if environmental(&e) => {}
                Err(e) => return Err(format!("square map: {e:?}")),
            }
            count(tally, n);
            return Ok(());
        }
    };
    if batch.len() != results.len() {
        return Err(format!("{} items gave {} results", batch.len(), results.len()));
    }
    let exits = exit_codes(&batch);
    for (item, r) in batch.iter().zip(&results) {
        check(item, r, &exits)?;
    }
    count(tally, batch.len() as u64);
    Ok(())
}

fn exit_codes(batch: &[Item]) -> Vec<i32> {
    batch.iter().filter_map(|i| if let Act::Exit(code) = i.act { Some(code) } else { None }).collect()
}

fn count(tally: &Tally, items: u64) {
    tally.calls.fetch_add(1, Ordering::Relaxed);
    tally.items.fetch_add(items, Ordering::Relaxed);
}

/// Kills and stops this process's children at random until told to stop; every stopped one is
/// continued (or killed) before it returns.
fn chaos(mut rng: Rng, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut stopped: Vec<(u32, Instant)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20 + rng.below(30)));
        let now = Instant::now();
        stopped.retain(|(pid, until)| {
            if now >= *until {
                signal(*pid, libc::SIGCONT);
                return false;
            }
            true
        });
        let kids = children();
        if kids.is_empty() || rng.chance(40) {
            continue;
        }
        let victim = kids[rng.below(kids.len() as u64) as usize];
        if rng.chance(25) {
            signal(victim, libc::SIGSTOP);
            stopped.push((victim, now + Duration::from_millis(20 + rng.below(180))));
            tally.stops.fetch_add(1, Ordering::Relaxed);
        } else {
            signal(victim, libc::SIGKILL);
            tally.kills.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (pid, _) in stopped {
        signal(pid, libc::SIGCONT);
    }
}

/// How a round ends.
#[derive(Debug, Clone, Copy)]
enum End {
    CloseJoin,
    Terminate,
    Drop,
    /// `join` from another thread while the calls go on.
    RacingJoin,
}

fn round(rng: &mut Rng, tally: &Arc<Tally>, length: Duration) -> Result<(), String> {
    let shape = Shape::random(rng);
    let end = [End::CloseJoin, End::Terminate, End::Drop, End::RacingJoin][rng.below(4) as usize];
    let pool = match shape.build() {
        Ok(pool) => Arc::new(pool),
        Err(e) if environmental(&e) => return Ok(()),
        Err(e) => return Err(format!("build {shape:?}: {e:?}")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let chaos_thread = {
        let (rng, stop, tally) = (rng.fork(), Arc::clone(&stop), Arc::clone(tally));
        std::thread::spawn(move || chaos(rng, stop, tally))
    };
    // Every call reports when it ends; one that does not within the deadline is a hang.
    let (done_tx, done_rx) = mpsc::channel::<Result<(), String>>();
    let in_flight = Arc::new(Mutex::new(Vec::<(usize, Instant)>::new()));
    let callers: Vec<_> = (0..3)
        .map(|t| {
            let (pool, mut rng, shape, stop, tally, done_tx) =
                (Arc::clone(&pool), rng.fork(), shape.clone(), Arc::clone(&stop), Arc::clone(tally), done_tx.clone());
            let in_flight = Arc::clone(&in_flight);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    in_flight.lock().unwrap().push((t, Instant::now()));
                    let r = one_call(&pool, &mut rng, &shape, &tally);
                    in_flight.lock().unwrap().retain(|(who, _)| *who != t);
                    let failed = r.is_err();
                    let _ = done_tx.send(r);
                    if failed {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(done_tx);
    let started = Instant::now();
    let mut ended = false;
    let mut racing_join = None;
    loop {
        match done_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Err(e)) => return Err(format!("{shape:?}, ending by {end:?}: {e}")),
            Ok(Ok(())) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some((t, since)) = in_flight.lock().unwrap().iter().find(|(_, s)| s.elapsed() > common::DEADLINE) {
            return Err(format!("{shape:?}: a call of thread {t} hung for {:?}", since.elapsed()));
        }
        if !ended && started.elapsed() >= length {
            ended = true;
            match end {
                End::Terminate => pool.terminate(),
                End::RacingJoin => {
                    let pool = Arc::clone(&pool);
                    racing_join = Some(std::thread::spawn(move || pool.join()));
                }
                End::CloseJoin | End::Drop => {}
            }
            stop.store(true, Ordering::Relaxed);
        }
    }
    for c in callers {
        c.join().map_err(|_| "a caller thread panicked".to_string())?;
    }
    chaos_thread.join().unwrap();
    if let Some(j) = racing_join {
        j.join().unwrap();
    }
    let finishing = Instant::now();
    match end {
        End::CloseJoin => {
            pool.close();
            pool.join();
        }
        _ => drop(pool), // the last handle: close + join
    }
    if finishing.elapsed() > Duration::from_secs(10) {
        return Err(format!("{shape:?}: ending by {end:?} took {:?}", finishing.elapsed()));
    }
    // nothing left behind: every worker, stopped or not, is gone and reaped
    let start = Instant::now();
    loop {
        let left = children();
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            let states: Vec<_> = left.iter().map(|p| (p, common::proc_state(*p))).collect();
            return Err(format!("{shape:?}, ended by {end:?}: processes left behind: {states:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The stress run itself, in a process of its own (so that its children are its pools').
#[test]
fn stress_helper() {
    let Some(seed) = std::env::var("MULTIPROC_STRESS_RUN").ok().and_then(|s| s.parse::<u64>().ok()) else { return };
    let secs: u64 = std::env::var("MULTIPROC_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let mut rng = Rng(seed);
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let length = Duration::from_millis(150 + rng.below(600));
        if let Err(e) = round(&mut rng, &tally, length) {
            println!("FAILED seed={seed} round={rounds}: {e}");
            std::process::exit(1);
        }
        rounds += 1;
    }
    println!(
        "stress seed={seed}: {rounds} rounds, {} calls, {} items, {} kills, {} stops in {:.1} s",
        tally.calls.load(Ordering::Relaxed),
        tally.items.load(Ordering::Relaxed),
        tally.kills.load(Ordering::Relaxed),
        tally.stops.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn the_pool_survives_a_randomized_storm() {
    let seed = std::env::var("MULTIPROC_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let secs: u64 = std::env::var("MULTIPROC_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["stress_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env("MULTIPROC_STRESS_RUN", seed.to_string())
        .env("MULTIPROC_STRESS_SECS", secs.to_string());
    let out = common::run_for(&mut cmd, Duration::from_secs(secs + 120));
    println!("{}", out.stdout.lines().filter(|l| l.contains("seed=")).collect::<Vec<_>>().join("\n"));
    assert!(
        out.status.success(),
        "replay with MULTIPROC_STRESS_SEED={seed}\n{}\n{}",
        out.stdout,
        out.stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}
