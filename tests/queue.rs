//! Queues between processes: the tutorial's example, every method and error, many producers
//! and consumers, and processes killed at any instant. Every wait has a hard deadline.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{join, within, DEADLINE};
use multiproc::{pipe_one_way, process_fn, Error, JoinableQueue, Queue, Sender};
use serde::{Deserialize, Serialize, Serializer};

#[process_fn]
fn hello(q: Queue<String>) {
    q.put("Hello from child".to_string()).unwrap();
}

#[process_fn]
fn receive(q: Queue<String>) -> String {
    q.get().unwrap()
}

#[test]
fn one_process_puts_and_another_gets_as_in_the_tutorial() {
    within(DEADLINE, || {
        let q = Queue::new().unwrap();
        let getter = receive.spawn(q.clone()).unwrap(); // waits in get first
        let putter = hello.spawn(q.clone()).unwrap();
        join(putter).unwrap();
        assert_eq!(join(getter).unwrap(), "Hello from child");
        assert!(q.is_empty());
    });
}

#[process_fn]
fn produce(q: Queue<Option<(u32, u32)>>, producer: u32, n: u32) {
    for i in 0..n {
        q.put(Some((producer, i))).unwrap();
    }
}

#[process_fn]
fn consume(q: Queue<Option<(u32, u32)>>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    while let Some(item) = q.get().unwrap() {
        got.push(item);
    }
    got
}

#[test]
fn many_producers_and_consumers_deliver_every_item_exactly_once_in_order_per_producer() {
    within(DEADLINE, || {
        const N: u32 = 50_000;
        let q = Queue::new().unwrap();
        let consumers: Vec<_> = (0..4).map(|_| consume.spawn(q.clone()).unwrap()).collect();
        let producers: Vec<_> = (0..4).map(|p| produce.spawn(q.clone(), p, N).unwrap()).collect();
        for p in producers {
            join(p).unwrap();
        }
        for _ in 0..4 {
            q.put(None).unwrap(); // one end marker per consumer
        }
        let mut seen = HashSet::new();
        for c in consumers {
            let got = join(c).unwrap();
            // FIFO per producer: what one consumer got of a producer is in the order it was put
            let mut last: BTreeMap<u32, u32> = BTreeMap::new();
            for &(p, i) in &got {
                if let Some(prev) = last.insert(p, i) {
                    assert!(i > prev, "producer {p}: {i} after {prev}");
                }
                assert!(seen.insert((p, i)), "({p}, {i}) delivered twice");
            }
        }
        assert_eq!(seen.len(), 4 * N as usize, "every item delivered");
        assert!(q.is_empty());
    });
}

#[process_fn]
fn get_with_timeout(q: Queue<u64>, ms: u64) -> Option<u64> {
    match q.get_timeout(Duration::from_millis(ms)) {
        Ok(v) => Some(v),
        Err(Error::Empty { waited: Some(_) }) => None,
        Err(e) => panic!("{e}"),
    }
}

#[process_fn]
fn put_blocking(q: Queue<u64>, v: u64) {
    q.put(v).unwrap();
}

#[process_fn]
fn drain_after(q: Queue<u64>, ms: u64, n: usize) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(ms));
    (0..n).map(|_| q.get().unwrap()).collect()
}

#[test]
fn bounded_queues_block_and_refuse_across_processes() {
    within(DEADLINE, || {
        let q = Queue::<u64>::bounded(2).unwrap();
        assert_eq!(q.maxsize(), Some(2));
        q.put(1u64).unwrap();
        q.put(2u64).unwrap();
        assert!(q.is_full() && q.len() == 2);
        assert!(matches!(q.try_put(3u64), Err(Error::Full { maxsize: Some(2), waited: None })));
        let start = Instant::now();
        let err = q.put_timeout(3u64, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, Error::Full { .. }) && err.is_timeout(), "{err:?}");
        assert!(start.elapsed() >= Duration::from_millis(100));
        // a child blocked in put goes on when another process makes room
        let blocked = put_blocking.spawn(q.clone(), 3).unwrap();
        let drainer = drain_after.spawn(q.clone(), 200, 3).unwrap();
        join(blocked).unwrap();
        assert_eq!(join(drainer).unwrap(), [1, 2, 3]);
        assert!(q.is_empty() && !q.is_full());
        // timeouts on get, in a child
        assert_eq!(join(get_with_timeout.spawn(q.clone(), 50).unwrap()).unwrap(), None);
        q.put(9u64).unwrap();
        assert_eq!(join(get_with_timeout.spawn(q.clone(), 5_000).unwrap()).unwrap(), Some(9));
    });
}

/// Serializes only while `ok`.
#[derive(Debug)]
struct Picky(bool);

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            true => s.serialize_bool(true),
            false => Err(serde::ser::Error::custom("picky refuses")),
        }
    }
}

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bool::deserialize(d).map(Picky)
    }
}

#[test]
fn a_value_that_cannot_be_serialized_is_an_error_from_put_and_the_queue_is_as_before() {
    // Python's feeder thread drops such an item in silence (F9) and wedges a bounded queue.
    let q = Queue::<Picky>::bounded(1).unwrap();
    let err = q.put(Picky(false)).unwrap_err();
    assert!(matches!(&err, Error::Encode { message, .. } if message.contains("picky refuses")), "{err:?}");
    assert!(q.is_empty());
    q.try_put(Picky(true)).unwrap(); // the one slot is still free
    assert!(q.try_get().unwrap().0);
}

#[process_fn]
fn put_big_then_exit(q: Queue<Vec<u8>>, len: usize) {
    q.put(vec![7u8; len]).unwrap();
}

#[test]
fn a_child_that_put_a_large_item_can_be_joined_before_the_item_is_taken() {
    // Python: joining such a child before draining the queue deadlocks (F8).
    within(DEADLINE, || {
        let q = Queue::new().unwrap();
        join(put_big_then_exit.spawn(q.clone(), 64 * 1024).unwrap()).unwrap();
        join(put_big_then_exit.spawn(q.clone(), 5 << 20).unwrap()).unwrap(); // larger than a ring
        assert_eq!(q.get().unwrap().len(), 64 * 1024);
        assert!(q.get().unwrap().iter().all(|b| *b == 7));
    });
}

#[process_fn]
fn put_many_then_return(q: Queue<u64>, n: u64) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

#[test]
fn a_child_that_puts_two_million_items_returns_before_anyone_reads_them() {
    // Python's queue holds them in the child's feeder thread, and the child cannot end until
    // they are read; with a bound at the ring, put would wait for ever.
    within(Duration::from_secs(120), || {
        let q = Queue::new().unwrap();
        join(put_many_then_return.spawn(q.clone(), 2_000_000).unwrap()).unwrap();
        assert_eq!(q.len(), 2_000_000);
        for i in 0..2_000_000u64 {
            assert_eq!(q.try_get().unwrap(), i, "in order");
        }
        assert!(q.is_empty());
    });
}

/// Python's pipeline: tasks from a joinable queue, results to another queue, which nobody
/// reads until every task is done.
#[process_fn]
fn double_each(tasks: JoinableQueue<Option<u64>>, results: Queue<u64>) {
    while let Some(x) = tasks.get().unwrap() {
        results.put(2 * x).unwrap();
        tasks.task_done().unwrap();
    }
    tasks.task_done().unwrap();
}

#[test]
fn a_pipeline_joins_its_tasks_before_it_reads_the_results() {
    within(Duration::from_secs(120), || {
        const N: u64 = 450_000;
        let tasks = JoinableQueue::new().unwrap();
        let results = Queue::new().unwrap();
        let workers: Vec<_> = (0..2).map(|_| double_each.spawn(tasks.clone(), results.clone()).unwrap()).collect();
        for x in 0..N {
            tasks.put(Some(x)).unwrap();
        }
        for _ in &workers {
            tasks.put(None).unwrap();
        }
        tasks.join_timeout(Duration::from_secs(100)).unwrap(); // before a single result is read
        workers.into_iter().for_each(|w| join(w).unwrap());
        let mut sum = 0;
        for _ in 0..N {
            sum += results.try_get().unwrap();
        }
        assert_eq!(sum, N * (N - 1));
        assert!(results.is_empty());
    });
}

/// An item whose contents say whether it is whole: a seed, and bytes derived from it.
fn checked_item(seed: u64, len: usize) -> Vec<u8> {
    let mut v = seed.to_le_bytes().to_vec();
    v.extend((0..len).map(|i| (seed as usize).wrapping_mul(31).wrapping_add(i) as u8));
    v
}

fn is_whole(item: &[u8]) -> bool {
    let seed = u64::from_le_bytes(item[..8].try_into().unwrap());
    item[8..].iter().enumerate().all(|(i, b)| *b == (seed as usize).wrapping_mul(31).wrapping_add(i) as u8)
}

#[process_fn]
fn put_forever(q: Queue<serde_bytes::ByteBuf>, seed: u64) {
    for k in 0.. {
        // inline items and large ones (stored apart), so that a kill lands in either
        let len = if k % 4 == 3 { 100_000 } else { 20_000 + (k % 7) * 1000 };
        q.put(serde_bytes::ByteBuf::from(checked_item(seed * 1_000_000 + k as u64, len))).unwrap();
    }
}

#[test]
fn a_producer_killed_in_the_middle_of_a_put_100_times_leaves_no_partial_item() {
    within(Duration::from_secs(120), || {
        let q = Queue::new().unwrap();
        let mut taken = 0;
        for round in 0..100u64 {
            let mut child = put_forever.spawn(q.clone(), round).unwrap();
            // take while it puts, so that it is writing (not waiting for room) when killed
            // (and until this round's producer has put one: a child slow to start on a loaded
            // machine would otherwise be killed before it put anything, round after round)
            let until = Instant::now() + Duration::from_micros(300 + 100 * (round % 30));
            let before = taken;
            while Instant::now() < until || taken == before {
                if let Ok(item) = q.try_get() {
                    assert!(is_whole(&item), "round {round}: a partial item was visible");
                    taken += 1;
                }
            }
            child.kill().unwrap();
            assert!(matches!(child.join_timeout(DEADLINE), Err(Error::Killed { .. })));
            while let Ok(item) = q.try_get() {
                assert!(is_whole(&item), "round {round}: a partial item was visible");
                taken += 1;
            }
        }
        assert!(taken >= 100);
        // and the queue still works, for a new producer and this consumer
        join(put_big_then_exit.spawn(Queue::<Vec<u8>>::new().unwrap(), 10).unwrap()).unwrap();
        q.put(serde_bytes::ByteBuf::from(checked_item(1, 10))).unwrap();
        assert!(is_whole(&q.get().unwrap()));
    });
}

#[process_fn]
fn get_one(q: Queue<u64>) -> u64 {
    q.get().unwrap()
}

#[test]
fn a_consumer_killed_while_blocked_in_get_costs_nothing_and_takes_nothing() {
    within(DEADLINE, || {
        let q = Queue::<u64>::new().unwrap();
        let mut blocked = get_one.spawn(q.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let ticks = common::cpu_ticks(blocked.pid());
        assert!(ticks <= 5, "a consumer blocked in get used {ticks} ticks of CPU");
        blocked.kill().unwrap();
        assert!(matches!(blocked.join_timeout(DEADLINE), Err(Error::Killed { .. })));
        q.put(42u64).unwrap();
        assert_eq!(join(get_one.spawn(q.clone()).unwrap()).unwrap(), 42);
        q.put(43u64).unwrap();
        assert_eq!(q.get().unwrap(), 43);
    });
}

#[process_fn]
fn put_when_room(q: Queue<u64>) {
    q.put(2u64).unwrap();
}

#[test]
fn a_producer_blocked_on_a_full_queue_costs_nothing() {
    within(DEADLINE, || {
        let q = Queue::<u64>::bounded(1).unwrap();
        q.put(1u64).unwrap();
        let blocked = put_when_room.spawn(q.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let ticks = common::cpu_ticks(blocked.pid());
        assert!(ticks <= 5, "a producer blocked in put used {ticks} ticks of CPU");
        assert_eq!(q.get().unwrap(), 1);
        join(blocked).unwrap();
        assert_eq!(q.get().unwrap(), 2);
    });
}

#[process_fn]
fn forward_all(q: Queue<u64>, out: Sender<u64>) {
    loop {
        let v = q.get().unwrap();
        out.send(v).unwrap();
    }
}

#[test]
fn consumers_killed_while_taking_lose_at_most_the_item_in_hand_and_never_duplicate() {
    within(Duration::from_secs(120), || {
        const N: u64 = 200_000;
        let q = Queue::<u64>::new().unwrap();
        let (rx, tx) = pipe_one_way::<u64>().unwrap();
        let feeder = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    q.put(i).unwrap();
                }
            })
        };
        let mut kills = 0;
        let mut seen = HashSet::new();
        let mut consumer = forward_all.spawn(q.clone(), tx.clone()).unwrap();
        let start = Instant::now();
        while seen.len() as u64 + kills < N || !q.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(100), "stalled at {} items", seen.len());
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(v) => assert!(seen.insert(v), "{v} delivered twice"),
                Err(Error::Empty { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            if seen.len() as u64 > (kills + 1) * 8_000 && kills < 20 {
                consumer.kill().unwrap(); // wherever it is: in get, holding a lane, sending
                let _ = consumer.join_timeout(DEADLINE);
                kills += 1;
                consumer = forward_all.spawn(q.clone(), tx.clone()).unwrap();
            }
            if feeder.is_finished() && q.is_empty() && rx.poll(Duration::from_millis(200)).map(|r| !r).unwrap_or(true) {
                break;
            }
        }
        feeder.join().unwrap();
        consumer.kill().unwrap();
        while let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
            assert!(seen.insert(v), "{v} delivered twice");
        }
        let lost = N - seen.len() as u64;
        assert!(lost <= kills, "{lost} items lost to {kills} kills");
        assert!(kills >= 10, "only {kills} kills happened");
    });
}

#[process_fn]
fn worker(q: JoinableQueue<u64>, results: Queue<u64>) {
    loop {
        match q.get() {
            Ok(v) => {
                results.put(v * 2).unwrap();
                q.task_done().unwrap();
            }
            Err(Error::ShutDown) => return,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_joinable_queue_counts_tasks_done_across_processes() {
    within(DEADLINE, || {
        let q = JoinableQueue::<u64>::new().unwrap();
        let results = Queue::new().unwrap();
        let workers: Vec<_> = (0..3).map(|_| worker.spawn(q.clone(), results.clone()).unwrap()).collect();
        for i in 0..1000 {
            q.put(i).unwrap();
        }
        q.join_timeout(DEADLINE).unwrap();
        assert_eq!(q.unfinished(), 0);
        assert_eq!(results.len(), 1000);
        let mut sum = 0;
        while let Ok(v) = results.try_get() {
            sum += v;
        }
        assert_eq!(sum, 999 * 1000);
        assert!(matches!(q.task_done(), Err(Error::TaskDoneTooMany)));
        q.shutdown(false); // the workers' blocked gets wake up with ShutDown
        for w in workers {
            join(w).unwrap();
        }
    });
}

/// Takes `n` tasks without marking them done, says so, then ends as `how` says: killed while it
/// waits, by an abort, or by returning.
#[process_fn]
fn take_and_end(q: JoinableQueue<u64>, n: u32, how: String, ready: multiproc::Event) {
    for _ in 0..n {
        q.get().unwrap();
    }
    ready.set();
    match how.as_str() {
        "abort" => std::process::abort(),
        "return" => {}
        _ => std::thread::sleep(Duration::from_secs(600)),
    }
}

#[process_fn]
fn join_in_a_child(q: JoinableQueue<u64>) -> String {
    match q.join_timeout(DEADLINE) {
        Ok(()) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn join_names_a_consumer_that_ended_holding_tasks_instead_of_waiting_for_ever() {
    within(DEADLINE, || {
        for (how, n) in [("kill", 1), ("abort", 2), ("return", 1)] {
            let q = JoinableQueue::<u64>::new().unwrap();
            for i in 0..5 {
                q.put(i).unwrap();
            }
            let ready = multiproc::Event::new().unwrap();
            let mut p = multiproc::ProcessBuilder::new()
                .stderr(multiproc::Output::Null)
                .spawn(take_and_end, (q.clone(), n, how.to_string(), ready.clone()))
                .unwrap();
            let pid = p.pid();
            assert!(ready.wait_timeout(DEADLINE), "{how}");
            // a joiner already waiting when the consumer ends learns of it
            let joiner = {
                let q = q.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    (q.join_timeout(DEADLINE), t.elapsed())
                })
            };
            std::thread::sleep(Duration::from_millis(100));
            if how == "kill" {
                p.kill().unwrap();
            }
            let _ = p.join_timeout(DEADLINE);
            let (result, waited) = joiner.join().unwrap();
            match result {
                Err(Error::TasksLost { pid: who, tasks }) => assert_eq!((who, tasks), (pid, n as u64), "{how}"),
                other => panic!("{how}: expected TasksLost, got {other:?}"),
            }
            assert!(waited < Duration::from_secs(5), "{how}: it took {waited:?} to notice");
            // the rest are there, done here; the loss was reported once: join now returns
            for _ in n..5 {
                q.get_timeout(DEADLINE).unwrap();
                q.task_done().unwrap();
            }
            q.join_timeout(DEADLINE).unwrap_or_else(|e| panic!("{how}: {e}"));
            assert_eq!(q.unfinished(), n as u64, "the lost ones stay unfinished");
            // and a process that comes later does not wait on the dead either
            assert_eq!(join(join_in_a_child.spawn(q.clone()).unwrap()).unwrap(), "ok", "{how}");
        }
    });
}

#[test]
fn join_timeout_says_how_many_tasks_are_unfinished() {
    let q = JoinableQueue::<u8>::new().unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    let e = q.join_timeout(Duration::from_millis(30)).unwrap_err();
    assert!(matches!(e, Error::TasksUnfinished { tasks: 2, .. }) && e.is_timeout(), "{e:?}");
    assert!(e.to_string().contains("2 task(s)") && !e.to_string().contains("result"), "{e}");
}

#[process_fn]
fn get_until_shut_down(q: Queue<u8>) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        match q.get() {
            Ok(v) => got.push(v),
            Err(Error::ShutDown) => return got,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn shutdown_wakes_blocked_processes_and_immediate_drains() {
    within(DEADLINE, || {
        let q = Queue::<u8>::new().unwrap();
        let blocked = get_until_shut_down.spawn(q.clone()).unwrap();
        q.put(1u8).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        q.shutdown(false);
        assert_eq!(join(blocked).unwrap(), [1]);
        assert!(matches!(q.put(2u8), Err(Error::ShutDown)));

        let j = JoinableQueue::<u8>::new().unwrap();
        for i in 0..5 {
            j.put(i).unwrap();
        }
        j.shutdown(true);
        assert!(matches!(j.get(), Err(Error::ShutDown)), "immediate: nothing more comes");
        assert!(j.is_empty());
        j.join_timeout(DEADLINE).unwrap(); // the drained items count as done
    });
}

#[test]
fn close_stops_this_process_only() {
    within(DEADLINE, || {
        let q = Queue::<String>::new().unwrap();
        let other = q.clone();
        q.close();
        assert!(matches!(q.put("x".to_string()), Err(Error::QueueClosed)));
        assert!(matches!(other.get_timeout(Duration::from_millis(1)), Err(Error::QueueClosed)));
        // other processes still use it: one puts, another gets
        join(hello.spawn(q.clone()).unwrap()).unwrap();
        assert_eq!(join(receive.spawn(q.clone()).unwrap()).unwrap(), "Hello from child");
    });
}

#[test]
fn shutdown_wakes_every_consumer_asleep_in_get() {
    // Waking "all" once woke only the first sleeper (the kernel reads the count as an int).
    within(DEADLINE, || {
        let q = Queue::<u8>::new().unwrap();
        let sleepers: Vec<_> = (0..4).map(|_| get_until_shut_down.spawn(q.clone()).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300)); // all asleep in get by now
        for s in &sleepers {
            assert_eq!(common::proc_state(s.pid()), Some('S'));
        }
        q.shutdown(false);
        for s in sleepers {
            assert!(join(s).unwrap().is_empty());
        }
    });
}

#[process_fn]
fn put_joinable_forever(q: JoinableQueue<u64>, base: u64) {
    for i in 0.. {
        q.put(base + i).unwrap();
    }
}

#[test]
fn producers_killed_while_they_hold_the_lock_of_a_joinable_queue_leave_its_count_right() {
    // A bounded joinable queue: producers take turns under a robust lock, and count each item
    // before it is visible. Killed at any point of that, the next holder puts the count right:
    // join neither hangs on a count too high nor lets task_done run past it.
    within(Duration::from_secs(120), || {
        let q = JoinableQueue::<u64>::bounded(64).unwrap();
        let mut taken = 0u64;
        for round in 0..40u64 {
            let mut a = put_joinable_forever.spawn(q.clone(), round << 32).unwrap();
            let mut b = put_joinable_forever.spawn(q.clone(), (round << 32) | 1 << 31).unwrap();
            let until = Instant::now() + Duration::from_micros(500 + 100 * (round % 20));
            while Instant::now() < until || taken == 0 {
                if q.try_get().is_ok() {
                    q.task_done().unwrap();
                    taken += 1;
                }
            }
            a.kill().unwrap();
            b.kill().unwrap();
            let _ = (a.join_timeout(DEADLINE), b.join_timeout(DEADLINE));
            while q.try_get().is_ok() {
                q.task_done().unwrap();
                taken += 1;
            }
            q.join_timeout(DEADLINE).unwrap_or_else(|e| panic!("round {round}: {e}, {} unfinished", q.unfinished()));
            assert_eq!(q.unfinished(), 0);
            assert!(matches!(q.task_done(), Err(Error::TaskDoneTooMany)));
        }
        assert!(taken > 40);
        q.put(1u64).unwrap(); // the lock works after 80 deaths
        assert_eq!(q.unfinished(), 1);
    });
}

/// Iterates over the queue until it is shut down; returns what it took, in order.
#[process_fn]
fn iterate_until_shut_down(q: Queue<u64>) -> multiproc::Result<Vec<u64>> {
    q.iter().collect()
}

#[test]
fn a_child_iterating_over_a_queue_gets_every_item_and_stops_at_shutdown() {
    let q = Queue::<u64>::new().unwrap();
    let consumer = iterate_until_shut_down.spawn(q.clone()).unwrap();
    q.put_many(0..1000u64).unwrap();
    std::thread::sleep(Duration::from_millis(20)); // the consumer is waiting in `next`, say
    q.put(1000).unwrap();
    q.shutdown(false);
    let got = join(consumer).unwrap().unwrap();
    assert_eq!(got, (0..=1000).collect::<Vec<_>>());
    // for a queue closed here, iteration ends with that error
    q.close();
    let mut it = q.iter();
    assert!(matches!(it.next(), Some(Err(Error::QueueClosed))));
    assert!(it.next().is_none());
}

/// The `i`th item of [`put_mixed_batches`]: strings of sizes that differ, some empty, some
/// over 64 KiB (stored apart, between blocks).
fn mixed_item(i: u64) -> String {
    let len = match i % 97 {
        0 => 70_000 + (i % 5) as usize,
        k if k % 7 == 0 => 0,
        k => (k * 3 % 41) as usize,
    };
    let mut s = format!("{i}:");
    s.extend(std::iter::repeat_n('x', len));
    s
}

/// Puts items `0..n` in `put_many` batches of sizes from 1 to 3,000.
#[process_fn]
fn put_mixed_batches(q: Queue<String>, n: u64) {
    let mut at = 0;
    while at < n {
        let end = (at + 1 + at * 7919 % 3000).min(n);
        q.put_many((at..end).map(mixed_item)).unwrap();
        at = end;
    }
}

/// Takes `n` items in single gets and `get_many`s of sizes from 1 to 5,000, in turn; returns
/// the first item out of order, if one was.
#[process_fn]
fn take_in_runs(q: Queue<String>, n: u64) -> Option<(u64, String)> {
    let mut next = 0u64;
    let mut round = 0u64;
    while next < n {
        round += 1;
        let got = match round % 3 {
            0 => vec![q.get().unwrap()],
            _ => q.get_many(1 + (round * 104_729 % 5000) as usize).unwrap(),
        };
        for item in got {
            if item != mixed_item(next) {
                return Some((next, item.chars().take(20).collect()));
            }
            next += 1;
        }
    }
    None
}

/// `put_many`'s blocks hold items of different sizes and stop at a large one; a consumer
/// process takes them one at a time and in runs that end inside blocks: every item once, in
/// order, across many passes of the rings.
#[test]
fn batches_of_items_of_any_size_arrive_whole_and_in_order_however_they_are_taken() {
    let q = Queue::<String>::new().unwrap();
    let n = 300_000;
    let consumer = take_in_runs.spawn(q.clone(), n).unwrap();
    let producer = put_mixed_batches.spawn(q.clone(), n).unwrap();
    join(producer).unwrap();
    assert_eq!(join(consumer).unwrap(), None);
    assert!(q.try_get().is_err());
}

/// A `u64` whose `Deserialize` panics on 13.
#[derive(Debug, PartialEq, Serialize)]
struct Unlucky(u64);

impl<'de> Deserialize<'de> for Unlucky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        assert!(n != 13, "thirteen is unlucky");
        Ok(Unlucky(n))
    }
}

/// A `Deserialize` that panics in the middle of a `get_many`'s block: the items before it come
/// back, the panic is the next take's error (with its message), the item after it is there.
#[test]
fn a_deserialize_that_panics_inside_get_many_is_an_error_and_loses_nothing_else() {
    let q = Queue::<Unlucky>::new().unwrap();
    q.put_many((10..16).map(Unlucky)).unwrap();
    let got = q.get_many(100).unwrap();
    assert_eq!(got, [Unlucky(10), Unlucky(11), Unlucky(12)]);
    let err = q.get().unwrap_err();
    assert!(err.to_string().contains("thirteen is unlucky"), "{err}");
    assert_eq!(q.get_many(100).unwrap(), [Unlucky(14), Unlucky(15)]);
    // and as the first item of a get_many, at once
    q.put_many([13, 16].map(Unlucky)).unwrap();
    assert!(q.get_many(100).unwrap_err().to_string().contains("thirteen is unlucky"));
    assert_eq!(q.get_many(100).unwrap(), [Unlucky(16)]);
}

/// Puts `0..n` as `u64`s: in `put_many` batches of sizes from 1 to 3,000, with single puts
/// between them.
#[process_fn]
fn put_numbers_in_runs(q: Queue<u64>, n: u64) {
    let mut at = 0;
    while at < n {
        let end = (at + 1 + at * 7919 % 3000).min(n);
        q.put_many(at..end).unwrap();
        at = end;
        if at < n {
            q.put(at).unwrap();
            at += 1;
        }
    }
}

/// Takes `n` `u64`s in single gets and `get_many`s of sizes from 1 to 5,000; returns the first
/// out of order, if one was, as (expected, got).
#[process_fn]
fn take_numbers_in_runs(q: Queue<u64>, n: u64) -> Option<(u64, u64)> {
    let (mut next, mut round) = (0u64, 0u64);
    while next < n {
        round += 1;
        let got = match round % 3 {
            0 => vec![q.get().unwrap()],
            _ => q.get_many(1 + (round * 104_729 % 5000) as usize).unwrap(),
        };
        for item in got {
            if item != next {
                return Some((next, item));
            }
            next += 1;
        }
    }
    None
}

/// Plain numbers (read by copying their bytes, not through `Deserialize`) between two
/// processes, in runs that end inside blocks and across many passes of the ring: every one
/// once, in order.
#[test]
fn plain_numbers_between_processes_arrive_once_and_in_order_however_they_are_taken() {
    let q = Queue::<u64>::new().unwrap();
    let n = 1_000_000;
    let consumer = take_numbers_in_runs.spawn(q.clone(), n).unwrap();
    let producer = put_numbers_in_runs.spawn(q.clone(), n).unwrap();
    join(producer).unwrap();
    assert_eq!(join(consumer).unwrap(), None);
    assert!(q.try_get().is_err());
}
