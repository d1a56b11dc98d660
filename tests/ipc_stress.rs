//! A randomized, seeded stress test of section 4 (issue 14): worker processes interleave
//! put/get/task_done on all three queue kinds (small items and 100 KB ones), a lock guarding
//! a pair, a semaphore, a condition, an event, a manager's dict, bounded joinable queue,
//! semaphore and reentrant lock, and three more are the
//! parties of a barrier, while the parent SIGKILLs or SIGSTOPs one of them every 10-50 ms
//! (and replaces the dead), and a worker now and then exits holding a lock.
//!
//! It checks what the documentation promises of a process killed at any instant: no item is
//! ever corrupt or handed out twice; nothing is lost but at most the one item in a killed
//! worker's hand; a dead holder's lock comes back with the news, its semaphore counts come
//! back and never more than that; no call waits past a deadline (a lost wake-up or a lock
//! held for ever shows as one); a joinable queue's count ends equal to the tasks it names lost;
//! the manager's values are whole.
//!
//! A few seconds by default; `MULTIPROC_STRESS_SECS=300` for five minutes, and
//! `MULTIPROC_STRESS_SEED=<n>` to replay a seed (each run prints its own).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{proc_state, signal, Rng};
use multiproc::{
    process_fn, AtomicValue, Barrier, Condition, DictProxy, Error, Event, JoinableQueue, JoinableQueueProxy, Lock,
    Manager, Process, Queue, RLockProxy, Semaphore, SemaphoreProxy, TryLockError, Value,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A call that blocks (on a lock, a count, a wake-up) for longer than this is a hang: nothing
/// here is held for longer than a SIGSTOP (30 ms at most) or a burst of work.
const HANG: Duration = Duration::from_secs(10);
/// The most items one `get_many` takes: what a killed taker can lose of the blocks' queue.
const BATCH: u64 = 16;
/// The semaphore's counts.
const COUNTS: u32 = 2;
/// Worker processes doing a mix of everything, and the barrier's parties.
const MIXED: usize = 5;
const PARTIES: usize = 3;
const BOUNDED: usize = 64;

/// Everything the workers share, passed to each as one argument.
#[derive(Clone, Serialize, Deserialize)]
struct Board {
    unbounded: Queue<ByteBuf>,
    bounded: Queue<ByteBuf>,
    joinable: JoinableQueue<ByteBuf>,
    /// Put to with `put_many` and taken with `get_many` only (a killed taker loses its batch).
    blocks: Queue<ByteBuf>,
    /// Two halves equal between updates, and the number of dead holders repaired after.
    pair: Value<[u64; 3]>,
    /// Taken now and then, and kept by a worker that exits holding it.
    kept: Lock,
    sem: Semaphore,
    /// Per mixed worker, the pid of the process holding a count of `sem` (0: none).
    holders: Value<[u32; MIXED]>,
    cond: Condition,
    ticks: AtomicValue<u64>,
    event: Event,
    barrier: Barrier,
    dict: DictProxy<u64, u64>,
    /// A manager's bounded joinable queue, semaphore and reentrant lock (some exit holding it).
    mqueue: JoinableQueueProxy<ByteBuf>,
    msem: SemaphoreProxy,
    mlock: RLockProxy,
    /// What the workers took, and what went wrong, for the parent.
    reports: Queue<Report>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Report {
    /// An item taken from queue `queue` (0 unbounded, 1 bounded, 2 joinable, 3 blocks, 4 the
    /// manager's): its producer's
    /// incarnation and number.
    Got { queue: u8, by: u32, seq: u64 },
    /// Operations done since the last report, by kind (see [`KINDS`]).
    Ops([u64; KINDS.len()]),
    /// A broken promise.
    Bad(String),
}

/// Item `seq` of incarnation `by`: both, then `len` bytes derived from them (never all zeros).
fn item(by: u32, seq: u64, len: usize) -> ByteBuf {
    let mut v = Vec::with_capacity(12 + len);
    v.extend_from_slice(&by.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    let k = (by as u64).wrapping_mul(0x9e37_79b9).wrapping_add(seq) as usize;
    v.extend((0..len).map(|i| (k.wrapping_add(i.wrapping_mul(7)) % 253 + 1) as u8));
    ByteBuf::from(v)
}

/// The item's incarnation and number if it is whole.
fn check(v: &[u8]) -> Option<(u32, u64)> {
    let by = u32::from_le_bytes(v.get(..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(v.get(4..12)?.try_into().ok()?);
    (item(by, seq, v.len() - 12).as_slice() == v).then_some((by, seq))
}

/// The kinds of operation, as counted.
const KINDS: [&str; 10] =
    ["put", "get", "lock", "semaphore", "condition", "event", "dict", "kept lock", "barrier", "dead-holder news"];
/// Where the news of dead holders is counted.
const NEWS: usize = 9;

/// The kind of mixed operation `op` (0-99).
fn kind_of(op: u64) -> usize {
    match op {
        0..=24 => 0,
        25..=59 => 1,
        60..=69 => 2,
        70..=77 => 3,
        78..=83 => 4,
        84..=89 => 5,
        90..=97 => 6,
        _ => 7,
    }
}

/// The value the dict holds for `key`.
fn dict_value(key: u64) -> u64 {
    key.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ 0x5bd1_e995
}

fn alive(pid: u32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// One mixed worker, slot `slot`, incarnation `me`: random operations for ever (until killed).
#[process_fn]
fn mixed_worker(b: Board, slot: usize, me: u32, seed: u64) {
    let mut rng = Rng(seed);
    let mut seqs = [0u64; 5];
    let pid = std::process::id();
    let bad = |what: String| b.reports.put(Report::Bad(format!("worker {me} (pid {pid}): {what}"))).unwrap();
    let mut ops = [0u64; KINDS.len()];
    loop {
        let started = Instant::now();
        let op = rng.below(100);
        match op {
            // puts
            0..=24 => {
                let q = rng.below(3) as usize;
                let len = if rng.chance(10) { 100_000 } else { rng.below(2_000) as usize };
                if q == 0 && rng.chance(30) {
                    // a block: consecutive items, one put_many
                    let n = 1 + rng.below(20);
                    let block: Vec<ByteBuf> = (0..n).map(|k| item(me, seqs[3] + k, rng.below(300) as usize)).collect();
                    match b.blocks.put_many(&block) {
                        Ok(()) => seqs[3] += n,
                        Err(e) => bad(format!("put_many to queue 3: {e}")),
                    }
                    ops[kind_of(op)] += 1; // (counted with the next report)
                    if started.elapsed() > HANG + Duration::from_secs(2) {
                        bad(format!("operation {op} took {:?}", started.elapsed()));
                    }
                    continue;
                }
                let it = item(me, seqs[q], len);
                let put = match q {
                    0 => b.unbounded.put(it).map(|()| true),
                    1 => match b.bounded.put_timeout(it, Duration::from_millis(50)) {
                        Err(Error::Full { .. }) => Ok(false), // the bound held: nothing was put
                        other => other.map(|()| true),
                    },
                    _ => b.joinable.put(it).map(|()| true),
                };
                match put {
                    Ok(true) => seqs[q] += 1,
                    Ok(false) => {}
                    Err(e) => bad(format!("put to queue {q}: {e}")),
                }
            }
            // gets
            25..=59 => {
                let q = rng.below(3) as u8;
                if q == 0 && rng.chance(30) {
                    match b.blocks.get_many_timeout(1 + rng.below(BATCH) as usize, Duration::from_millis(2)) {
                        Ok(items) => {
                            for v in items {
                                match check(&v) {
                                    Some((by, seq)) => b.reports.put(Report::Got { queue: 3, by, seq }).unwrap(),
                                    None => bad(format!("a corrupt item of {} bytes from get_many", v.len())),
                                }
                            }
                        }
                        Err(Error::Empty { .. }) => {}
                        Err(e) => bad(format!("get_many from queue 3: {e}")),
                    }
                    ops[kind_of(op)] += 1; // (counted with the next report)
                    if started.elapsed() > HANG + Duration::from_secs(2) {
                        bad(format!("operation {op} took {:?}", started.elapsed()));
                    }
                    continue;
                }
                let got = match q {
                    0 => b.unbounded.get_timeout(Duration::from_millis(2)),
                    1 => b.bounded.get_timeout(Duration::from_millis(2)),
                    _ => b.joinable.get_timeout(Duration::from_millis(2)),
                };
                match got {
                    Ok(v) => {
                        match check(&v) {
                            Some((by, seq)) => b.reports.put(Report::Got { queue: q, by, seq }).unwrap(),
                            None => bad(format!("a corrupt item of {} bytes from queue {q}", v.len())),
                        }
                        if q == 2 {
                            if let Err(e) = b.joinable.task_done() {
                                bad(format!("task_done: {e}"));
                            }
                        }
                    }
                    Err(Error::Empty { .. }) => {}
                    Err(e) => bad(format!("get from queue {q}: {e}")),
                }
            }
            // the pair under its lock
            60..=69 => match b.pair.lock_timeout(HANG) {
                Ok(mut g) => {
                    if g[0] != g[1] {
                        bad(format!("a torn pair {:?} and no news of a dead holder", &g[..2]));
                    }
                    g[0] += 1;
                    for _ in 0..rng.below(200_000) {
                        std::hint::black_box(&mut *g);
                    }
                    g[1] += 1;
                }
                Err(TryLockError::HolderDied(d)) => {
                    ops[NEWS] += 1;
                    let mut g = d.into_inner();
                    g[1] = g[0];
                    g[2] += 1;
                }
                Err(TryLockError::WouldBlock) => bad(format!("the pair's lock was held for {HANG:?}")),
            },
            // a count of the semaphore: never more than COUNTS live holders
            70..=77 => match b.sem.acquire_timeout(HANG) {
                None => bad(format!("no count of the semaphore in {HANG:?}")),
                Some(count) => {
                    let others = {
                        let mut h = b.holders.lock().unwrap_or_else(|d| d.into_inner());
                        h[slot] = pid;
                        h.iter()
                            .enumerate()
                            .filter(|(i, p)| *i != slot && **p != 0)
                            .map(|(_, p)| *p)
                            .collect::<Vec<_>>()
                    };
                    let live: Vec<u32> = others.iter().copied().filter(|p| alive(*p)).collect();
                    if live.len() >= COUNTS as usize {
                        // a holder killed a moment ago may not look dead yet: look again later
                        std::thread::sleep(Duration::from_millis(200));
                        let h = *b.holders.lock().unwrap_or_else(|d| d.into_inner());
                        let still: Vec<u32> = live.iter().copied().filter(|p| alive(*p) && h.contains(p)).collect();
                        if still.len() >= COUNTS as usize {
                            bad(format!("a count of {COUNTS} held by {still:?} and me"));
                        }
                    }
                    std::thread::sleep(Duration::from_micros(rng.below(500)));
                    b.holders.lock().unwrap_or_else(|d| d.into_inner())[slot] = 0;
                    drop(count);
                }
            },
            // a condition: the parent ticks and notifies every 3 ms
            78..=83 => {
                let g = match b.cond.lock_timeout(HANG) {
                    Ok(g) => g,
                    Err(TryLockError::HolderDied(d)) => {
                        ops[NEWS] += 1;
                        d.into_inner()
                    }
                    Err(TryLockError::WouldBlock) => {
                        bad(format!("the condition's lock was held for {HANG:?}"));
                        continue;
                    }
                };
                let seen = b.ticks.load();
                match g.wait_for(|| b.ticks.load() > seen, HANG) {
                    Ok((_, true)) => {}
                    Ok((_, false)) => bad(format!("no notify in {HANG:?} though the parent ticks")),
                    Err(_) => ops[NEWS] += 1, // a holder died while this one waited: the lock is back
                }
            }
            // the event: set 2 ms of every 5 by the parent
            84..=89 => {
                if !b.event.wait_timeout(HANG) {
                    bad(format!("the event stayed clear for {HANG:?}"));
                }
            }
            // the manager's queue, semaphore and lock
            90..=93 => match rng.below(4) {
                0 => {
                    match b.mqueue.put_timeout(item(me, seqs[4], rng.below(300) as usize), Duration::from_millis(20)) {
                        Ok(()) => seqs[4] += 1,
                        Err(Error::Full { .. }) => {}
                        Err(e) => bad(format!("manager queue put: {e}")),
                    }
                }
                1 => match b.mqueue.get_timeout(Duration::from_millis(2)) {
                    Ok(v) => {
                        match check(&v) {
                            Some((by, seq)) => b.reports.put(Report::Got { queue: 4, by, seq }).unwrap(),
                            None => bad(format!("a corrupt item of {} bytes from the manager's queue", v.len())),
                        }
                        if let Err(e) = b.mqueue.task_done() {
                            bad(format!("manager task_done: {e}"));
                        }
                    }
                    Err(Error::Empty { .. }) => {}
                    Err(e) => bad(format!("manager queue get: {e}")),
                },
                2 => match b.msem.acquire_timeout(HANG) {
                    Ok(Some(g)) => {
                        std::thread::sleep(Duration::from_micros(rng.below(500)));
                        drop(g);
                    }
                    Ok(None) => bad(format!("no manager semaphore count for {HANG:?}")),
                    Err(e) => bad(format!("manager semaphore: {e}")),
                },
                _ => match b.mlock.acquire_timeout(HANG) {
                    Ok(Some(g)) => {
                        let again = b.mlock.acquire().unwrap();
                        if rng.chance(3) {
                            ops[7] += 1;
                            b.reports.put(Report::Ops(ops)).unwrap();
                            std::mem::forget((g, again));
                            std::process::exit(0);
                        }
                    }
                    Ok(None) => bad(format!("the manager's rlock was held for {HANG:?}")),
                    Err(e) => bad(format!("manager rlock: {e}")),
                },
            },
            // the manager's dict
            94..=97 => {
                let key = (me as u64) << 32 | rng.below(64);
                if let Err(e) = b.dict.insert(key, dict_value(key)) {
                    bad(format!("dict insert: {e}"));
                }
                match b.dict.get(&key) {
                    Ok(Some(v)) if v == dict_value(key) => {}
                    other => bad(format!("dict get of a key just set: {other:?}")),
                }
            }
            // a lock some exit holding
            _ => match b.kept.lock_timeout(HANG) {
                Ok(g) => {
                    if rng.chance(3) {
                        ops[7] += 1;
                        b.reports.put(Report::Ops(ops)).unwrap();
                        std::mem::forget(g);
                        std::process::exit(0);
                    }
                }
                Err(TryLockError::HolderDied(d)) => {
                    ops[NEWS] += 1;
                    drop(d.into_inner());
                }
                Err(TryLockError::WouldBlock) => bad(format!("a lock was held for {HANG:?}")),
            },
        }
        let took = started.elapsed();
        if took > HANG + Duration::from_secs(2) {
            bad(format!("operation {op} took {took:?}"));
        }
        ops[kind_of(op)] += 1;
        if ops[..NEWS].iter().sum::<u64>() >= 16 {
            b.reports.put(Report::Ops(ops)).unwrap();
            ops = [0; KINDS.len()];
        }
    }
}

/// A party of the barrier, for ever: waits, and resets it when it finds it broken.
#[process_fn]
fn barrier_party(b: Board, me: u32, seed: u64) {
    let mut rng = Rng(seed);
    let pid = std::process::id();
    let mut ops = 0u64;
    loop {
        let started = Instant::now();
        match b.barrier.wait_timeout(HANG) {
            Ok(_) => {}
            Err(Error::BrokenBarrier { .. }) if started.elapsed() < HANG => b.barrier.reset(),
            Err(e) => {
                let why = format!("party {me} (pid {pid}): a wait ended after {:?}: {e}", started.elapsed());
                b.reports.put(Report::Bad(why)).unwrap();
                b.barrier.reset();
            }
        }
        // at a pace that leaves the CPUs to the others, and makes the parties arrive apart
        std::thread::sleep(Duration::from_micros(rng.below(2_000)));
        ops += 1;
        if ops.is_multiple_of(64) {
            let mut by_kind = [0; KINDS.len()];
            by_kind[8] = ops;
            b.reports.put(Report::Ops(by_kind)).unwrap();
            ops = 0;
        }
    }
}

/// What the parent learned from the reports.
#[derive(Default)]
struct Tally {
    got: HashMap<(u8, u32), HashSet<u64>>,
    ops: [u64; KINDS.len()],
    bad: Vec<String>,
}

impl Tally {
    fn add(&mut self, r: Report) {
        match r {
            Report::Got { queue, by, seq } => {
                if !self.got.entry((queue, by)).or_default().insert(seq) {
                    self.bad.push(format!("item {seq} of worker {by} from queue {queue} was handed out twice"));
                }
            }
            Report::Ops(n) => self.ops.iter_mut().zip(n).for_each(|(o, n)| *o += n),
            Report::Bad(why) => self.bad.push(why),
        }
    }

    /// Items missing below the highest number taken of each producer: lost in a hand. In the
    /// queues taken from one by one (`false`), or in the blocks' (`true`).
    fn holes(&self, blocks: bool) -> u64 {
        self.got
            .iter()
            .filter(|((queue, _), _)| (*queue == 3) == blocks)
            .map(|(_, seqs)| seqs.iter().max().map_or(0, |m| m + 1) - seqs.len() as u64)
            .sum()
    }
}

/// A worker process the parent runs: which one it is, and its handle.
struct Running {
    party: bool,
    slot: usize,
    process: Process<()>,
}

#[test]
fn ipc_objects_under_a_storm_of_kills_and_stops_keep_every_promise() {
    let seed = std::env::var("MULTIPROC_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let secs: u64 = std::env::var("MULTIPROC_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    println!("seed={seed} secs={secs} (replay with MULTIPROC_STRESS_SEED={seed})");
    common::within(Duration::from_secs(secs + 120), move || storm(seed, secs));
}

fn storm(seed: u64, secs: u64) {
    let mut rng = Rng(seed);
    let manager = Manager::start().unwrap();
    let b = Board {
        unbounded: Queue::new().unwrap(),
        blocks: Queue::new().unwrap(),
        bounded: Queue::bounded(BOUNDED).unwrap(),
        joinable: JoinableQueue::new().unwrap(),
        pair: Value::new([0; 3]).unwrap(),
        kept: Lock::new().unwrap(),
        sem: Semaphore::new(COUNTS).unwrap(),
        holders: Value::new([0; MIXED]).unwrap(),
        cond: Condition::new().unwrap(),
        ticks: AtomicValue::new(0).unwrap(),
        event: Event::new().unwrap(),
        barrier: Barrier::new(PARTIES).unwrap(),
        dict: manager.dict().unwrap(),
        mqueue: manager.bounded_joinable_queue(32).unwrap(),
        msem: manager.semaphore(COUNTS as usize).unwrap(),
        mlock: manager.rlock().unwrap(),
        reports: Queue::new().unwrap(),
    };
    // the parent's part: it ticks the condition and blinks the event, and is never killed
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                {
                    let g = b.cond.lock_timeout(HANG).unwrap_or_else(|e| match e {
                        TryLockError::HolderDied(d) => d.into_inner(),
                        TryLockError::WouldBlock => panic!("the condition's lock was held for {HANG:?}"),
                    });
                    b.ticks.fetch_add(1);
                    g.notify_all();
                }
                b.event.set();
                std::thread::sleep(Duration::from_millis(2));
                b.event.clear();
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    // and it joins the joinable queue now and then, as a Python parent would: a join that
    // returns at a quiet moment, or names the tasks a dead consumer took with it
    let joiner = {
        let (q, stop) = (b.joinable.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut joined, mut lost) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                let started = Instant::now();
                match q.join_timeout(Duration::from_millis(5)) {
                    Ok(()) => joined += 1,
                    Err(Error::TasksUnfinished { .. }) => {}
                    Err(Error::TasksLost { tasks, .. }) => lost += tasks,
                    Err(e) => panic!("join_timeout: {e}"),
                }
                assert!(started.elapsed() < HANG, "join_timeout(5 ms) took {:?}", started.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            (joined, lost)
        })
    };
    let mut incarnation = 0u32;
    let mut start_one = |party: bool, slot: usize, rng: &mut Rng| {
        incarnation += 1;
        let process = match party {
            true => barrier_party.spawn(b.clone(), incarnation, rng.next()).unwrap(),
            false => mixed_worker.spawn(b.clone(), slot, incarnation, rng.next()).unwrap(),
        };
        Running { party, slot, process }
    };
    let mut running: Vec<Running> = (0..MIXED).map(|slot| start_one(false, slot, &mut rng)).collect();
    running.extend((0..PARTIES).map(|slot| start_one(true, slot, &mut rng)));

    let mut tally = Tally::default();
    let (mut kills, mut stops, mut exits) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(10 + rng.below(40)));
        while let Ok(r) = b.reports.try_get() {
            tally.add(r);
        }
        // the bound holds (len is a sum over lanes, read while they change: a bound broken
        // for a moment only may be the reading's; one broken for 50 ms is not)
        if b.bounded.len() > BOUNDED {
            std::thread::sleep(Duration::from_millis(50));
            let len = b.bounded.len();
            if len > BOUNDED {
                tally.bad.push(format!("the bounded queue holds {len} items, over its {BOUNDED}"));
            }
        }
        // a worker that exited holding the lock is replaced
        for r in running.iter_mut().filter(|r| !r.process.is_alive()) {
            match r.process.join_timeout(common::DEADLINE) {
                Err(Error::Exited { code: 0, .. }) => exits += 1,
                other => tally.bad.push(format!("worker {} ended on its own: {other:?}", r.process.pid())),
            }
            *r = start_one(r.party, r.slot, &mut rng);
        }
        let victim = rng.below(running.len() as u64) as usize;
        let pid = running[victim].process.pid();
        if rng.chance(65) {
            running[victim].process.kill().unwrap();
            let _ = running[victim].process.join_timeout(common::DEADLINE);
            kills += 1;
            let (party, slot) = (running[victim].party, running[victim].slot);
            running[victim] = start_one(party, slot, &mut rng);
        } else {
            signal(pid, libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(1 + rng.below(30)));
            signal(pid, libc::SIGCONT);
            stops += 1;
        }
    }
    for r in &mut running {
        r.process.kill().unwrap();
        let _ = r.process.join_timeout(common::DEADLINE);
    }
    // the last ones count as killed: they were, at whatever they were doing
    kills += running.len() as u64;
    stop.store(true, Relaxed);
    ticker.join().unwrap();
    let (joined, mut tasks_lost) = joiner.join().unwrap();
    while let Ok(r) = b.reports.try_get() {
        tally.add(r);
    }

    // What is left in the queues is whole and new, and the joinable queue's count adds up.
    let mut left = 0u64;
    for (q, queue) in [(0u8, &b.unbounded), (1, &b.bounded), (3, &b.blocks)] {
        while let Ok(v) = queue.try_get() {
            let (by, seq) = check(&v).unwrap_or_else(|| panic!("a corrupt item was left in queue {q}"));
            tally.add(Report::Got { queue: q, by, seq });
            left += 1;
        }
    }
    assert!(b.bounded.len() <= BOUNDED);
    while let Ok(v) = b.joinable.try_get() {
        let (by, seq) = check(&v).expect("a corrupt item was left in the joinable queue");
        tally.add(Report::Got { queue: 2, by, seq });
        b.joinable.task_done().unwrap();
        left += 1;
    }
    let until = Instant::now() + common::DEADLINE;
    loop {
        assert!(Instant::now() < until, "join kept failing");
        match b.joinable.join_timeout(common::DEADLINE) {
            Ok(()) => break,
            Err(Error::TasksLost { tasks, .. }) => tasks_lost += tasks,
            Err(e) => panic!("join after {tasks_lost} tasks named lost: {e}"),
        }
    }
    assert_eq!(b.joinable.unfinished(), tasks_lost, "the unfinished tasks are exactly the ones named lost");

    // The locks come back, the pair is whole once repaired, the counts are all back.
    let pair = match b.pair.lock_timeout(common::DEADLINE) {
        Ok(g) => *g,
        Err(TryLockError::HolderDied(d)) => {
            let mut g = d.into_inner();
            g[1] = g[0];
            g[2] += 1;
            *g
        }
        Err(TryLockError::WouldBlock) => panic!("the pair's lock stays held with every worker dead"),
    };
    assert!(!matches!(b.kept.lock_timeout(common::DEADLINE), Err(TryLockError::WouldBlock)));
    let until = Instant::now() + common::DEADLINE;
    while b.sem.value() < COUNTS {
        b.sem.recover();
        assert!(Instant::now() < until, "semaphore counts lost: {} of {COUNTS}", b.sem.value());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b.sem.value(), COUNTS, "more counts than the semaphore was made with");
    // The manager's counts and lock came back; its queue's items are whole; its tasks add up.
    assert_eq!(b.msem.value().unwrap(), COUNTS as usize, "the manager's semaphore counts are all back");
    assert!(b.mlock.acquire_timeout(common::DEADLINE).unwrap().is_some(), "the manager's rlock is free");
    while let Ok(v) = b.mqueue.try_get() {
        let (by, seq) = check(&v).expect("a corrupt item was left in the manager's queue");
        tally.add(Report::Got { queue: 4, by, seq });
        b.mqueue.task_done().unwrap();
        left += 1;
    }
    let mut mtasks_lost = 0;
    loop {
        assert!(Instant::now() < until, "the manager's join kept failing");
        match b.mqueue.join_timeout(common::DEADLINE) {
            Ok(()) => break,
            Err(Error::TasksLost { tasks, .. }) => mtasks_lost += tasks,
            Err(e) => panic!("manager join after {mtasks_lost} tasks named lost: {e}"),
        }
    }
    assert!(mtasks_lost <= kills, "{mtasks_lost} manager tasks lost to {kills} kills");
    println!("the manager's joinable queue named {mtasks_lost} tasks lost");
    let items = b.dict.items().unwrap();
    for (k, v) in &items {
        assert_eq!(*v, dict_value(*k), "the dict's value of {k} is not what was stored");
    }

    let (holes, block_holes) = (tally.holes(false), tally.holes(true));
    let taken: usize = tally.got.values().map(HashSet::len).sum();
    println!(
        "seed={seed}: {secs} s, operations: {}, {taken} items taken ({left} left at the end), {kills} kills, \
         {stops} stops, {exits} exits holding a lock, {holes} items lost in a killed hand ({block_holes} of get_many's), {tasks_lost} tasks \
         named lost, {joined} joins that returned, {} dead lock holders repaired, {} dict keys",
        KINDS.iter().zip(tally.ops).map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", "),
        pair[2],
        items.len()
    );
    assert!(tally.bad.is_empty(), "{} broken promises:\n{}", tally.bad.len(), tally.bad.join("\n"));
    assert!(holes <= kills, "{holes} items lost to {kills} kills");
    // a killed `get_many` loses its batch, and one killed before it reported what it took
    assert!(block_holes <= kills * BATCH, "{block_holes} items of blocks lost to {kills} kills");
    assert!(tasks_lost <= kills, "{tasks_lost} tasks lost to {kills} kills");
    assert!(taken > 100 && tally.ops[..NEWS].iter().sum::<u64>() > 1_000, "too little happened to test anything");
}
