//! Section 4 as users use it, and under faults: each test here is a case that once went wrong
//! (a lock held for ever by a process that exited, a lost wake-up, a queue that hung, a handle
//! that leaked). Every wait has a hard deadline.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{join, within, DEADLINE};
use multiproc::{process_fn, Condition, Lock, Queue, RLock, TryLockError};

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

/// The pattern of large items whose number is `n` modulo 16: no zero byte, so an item whose
/// memory was freed (all zeros) or mixed with another's shows.
fn large_templates() -> Vec<Vec<u8>> {
    (0..16u64).map(|k| (0..100_000u64).map(|j| ((k * 7 + j) % 255 + 1) as u8).collect()).collect()
}

/// Large item `n`: its number, then its pattern.
fn large_item(templates: &[Vec<u8>], n: u64) -> Vec<u8> {
    let mut v = templates[(n % 16) as usize].clone();
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}

/// The item's number if it is whole and unmixed.
fn check_large_item(templates: &[Vec<u8>], v: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    (v.len() == 100_000 && v[8..] == templates[(n % 16) as usize][8..]).then_some(n)
}

/// Says it is ready, then takes large items until it is killed, reporting any that is corrupt
/// (or does not decode).
#[process_fn]
fn take_large_items(q: Queue<Vec<u8>>, bad: Queue<String>, ready: Queue<u32>) {
    let templates = large_templates();
    ready.put(std::process::id()).unwrap();
    loop {
        match q.get() {
            Ok(item) if check_large_item(&templates, &item).is_some() => {}
            Ok(item) => bad
                .put(format!("a corrupt item of {} bytes: {:?}...", item.len(), &item[..item.len().min(16)]))
                .unwrap(),
            Err(e) => bad.put(format!("get failed: {e}")).unwrap(),
        }
    }
}

/// Taken for writing by a test that measures [`queue_memory_in_use`], for reading by every
/// other test here with a queue: the measure counts every queue open in this process, so the
/// queues of tests running beside it would be counted as its own (4.6 MB "still held" once).
static QUEUE_MEMORY: RwLock<()> = RwLock::new(());

/// No other test of this file has a queue while the guard lives.
fn measuring_queue_memory() -> RwLockWriteGuard<'static, ()> {
    QUEUE_MEMORY.write().unwrap_or_else(|p| p.into_inner())
}

/// No test measuring queue memory runs while the guard lives.
fn with_a_queue() -> RwLockReadGuard<'static, ()> {
    QUEUE_MEMORY.read().unwrap_or_else(|p| p.into_inner())
}

/// The bytes of memory the queues open in this process hold (blocks in use, not their sizes).
fn queue_memory_in_use() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("multiproc-queue")))
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| (m.ino(), m.blocks() * 512))
        .collect::<std::collections::HashMap<_, _>>() // a queue may be open twice
        .values()
        .sum()
}

#[test]
fn consumers_killed_while_taking_large_items_never_hand_on_a_corrupt_one() {
    let _memory = measuring_queue_memory();
    within(DEADLINE * 2, || {
        let q: Queue<Vec<u8>> = Queue::new().unwrap();
        let bad: Queue<String> = Queue::new().unwrap();
        let ready: Queue<u32> = Queue::new().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (q, stop) = (q.clone(), stop.clone());
            std::thread::spawn(move || {
                let templates = large_templates();
                let mut n = 0;
                // keeps the consumers busy: never short of items, never far ahead of them
                while !stop.load(Relaxed) {
                    if q.len() < 32 {
                        q.put(large_item(&templates, n)).unwrap();
                        n += 1;
                    } else {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                n
            })
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let mut child = take_large_items.spawn(q.clone(), bad.clone(), ready.clone()).unwrap();
            ready.get_timeout(DEADLINE).unwrap();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_micros(500 + seed % 3000));
            child.kill().unwrap();
            let _ = child.join_timeout(DEADLINE);
        }
        stop.store(true, Relaxed);
        let put = producer.join().unwrap();
        let templates = large_templates();
        let mut left = 0;
        while let Ok(item) = q.try_get() {
            assert!(check_large_item(&templates, &item).is_some(), "a corrupt item was left in the queue");
            left += 1;
        }
        let corrupt: Vec<String> = std::iter::from_fn(|| bad.try_get().ok()).collect();
        assert!(corrupt.is_empty(), "consumers were handed {} corrupt items of {put}: {corrupt:?}", corrupt.len());
        assert!(left <= 40);
        // every item was taken: its memory is freed, also when its taker died just after
        let held = queue_memory_in_use();
        assert!(held < 4 << 20, "{held} bytes of queue memory still in use after {put} items of 100 KB were taken");
    });
}

/// Gets, works on the item a little (so that kills land between get and task_done too), and
/// marks it done, for ever.
#[process_fn]
fn get_and_mark_done(q: multiproc::JoinableQueue<u64>) {
    loop {
        let x = q.get().unwrap();
        let until = Instant::now() + Duration::from_micros(x % 50);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        q.task_done().unwrap();
    }
}

#[test]
fn joinable_consumers_killed_at_random_lose_at_most_their_task_in_hand_and_join_says_so() {
    let _memory = with_a_queue();
    within(Duration::from_secs(120), || {
        let q = multiproc::JoinableQueue::<u64>::new().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut consumers: Vec<_> = (0..3).map(|_| get_and_mark_done.spawn(q.clone()).unwrap()).collect();
        let (mut kills, mut put) = (0u64, 0u64);
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            for _ in 0..1 + next() % 200 {
                q.put(put).unwrap();
                put += 1;
            }
            std::thread::sleep(Duration::from_micros(next() % 2000));
            let victim = (next() % 3) as usize;
            consumers[victim].kill().unwrap();
            let _ = consumers[victim].join_timeout(DEADLINE);
            kills += 1;
            consumers[victim] = get_and_mark_done.spawn(q.clone()).unwrap();
        }
        for c in &mut consumers {
            c.kill().unwrap();
            let _ = c.join_timeout(DEADLINE);
        }
        kills += consumers.len() as u64;
        while q.try_get().is_ok() {
            q.task_done().unwrap();
        }
        // every loss is named once, at most one task for each process killed; then join returns
        let mut lost = 0;
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "join kept failing");
            match q.join_timeout(DEADLINE) {
                Ok(()) => break,
                // (several processes that died in one participant slot are counted together)
                Err(multiproc::Error::TasksLost { tasks, .. }) => lost += tasks,
                Err(e) => panic!("after {lost} losses: {e}"),
            }
        }
        assert!(lost <= kills, "{lost} tasks lost in {kills} kills");
        assert_eq!(q.unfinished(), lost, "{put} put: the unfinished ones are exactly the lost ones");
        eprintln!("{put} items, {kills} consumer kills, {lost} tasks lost");
    });
}

/// An item whose bytes say whether it is whole: its number, then bytes derived from it.
fn numbered_item(n: u64, len: usize) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.extend((0..len).map(|i| (n as usize).wrapping_mul(131).wrapping_add(i % 251) as u8 | 1));
    v
}

/// The item's number if it is whole.
fn numbered_item_number(v: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    (v == numbered_item(n, v.len() - 8).as_slice()).then_some(n)
}

/// Takes items and sends on each one's number, or `u64::MAX` for a corrupt one, until killed.
#[process_fn]
fn forward_numbers(q: Queue<serde_bytes::ByteBuf>, out: multiproc::Sender<u64>) {
    loop {
        let item = q.get().unwrap();
        out.send(numbered_item_number(&item).unwrap_or(u64::MAX)).unwrap();
    }
}

#[test]
fn consumers_killed_while_taking_from_a_spill_never_hand_on_a_corrupt_or_duplicate_item() {
    let _memory = measuring_queue_memory();
    within(Duration::from_secs(120), || {
        // 4,000 items of 8 B to 100 KB put before anyone takes: 1 MiB in the ring, the other
        // 60-odd MiB spilled, so the consumers take (and are killed taking) from the spill
        const N: u64 = 4_000;
        let q = Queue::<serde_bytes::ByteBuf>::new().unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for n in 0..N {
            let len = if n % 8 == 7 { 100_000 } else { (next() % 20_000) as usize };
            q.try_put(serde_bytes::ByteBuf::from(numbered_item(n, len))).unwrap();
        }
        let full = queue_memory_in_use();
        assert!(full > 40 << 20, "only {full} bytes held: did the items spill?");
        let (rx, tx) = multiproc::pipe_one_way::<u64>().unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut kills = 0u64;
        let start = Instant::now();
        while !q.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(100), "stalled at {} items", seen.len());
            let mut consumer = forward_numbers.spawn(q.clone(), tx.clone()).unwrap();
            std::thread::sleep(Duration::from_micros(1_000 + next() % 4_000));
            consumer.kill().unwrap();
            let _ = consumer.join_timeout(DEADLINE);
            kills += 1;
            while let Ok(n) = rx.recv_timeout(Duration::from_millis(1)) {
                assert_ne!(n, u64::MAX, "a corrupt item was handed on");
                assert!(seen.insert(n), "item {n} was handed on twice");
            }
        }
        while let Ok(n) = rx.recv_timeout(Duration::from_millis(100)) {
            assert_ne!(n, u64::MAX, "a corrupt item was handed on");
            assert!(seen.insert(n), "item {n} was handed on twice");
        }
        let lost = N - seen.len() as u64;
        assert!(lost <= kills, "{lost} items lost in {kills} kills");
        assert!(kills >= 10, "only {kills} kills: the consumers were too fast to be hit");
        let held = queue_memory_in_use();
        assert!(held < 4 << 20, "{held} bytes of the spill's {full} are still held once it is empty");
        eprintln!("{N} items, {kills} consumer kills, {lost} lost");
    });
}
