//! A manager's richer objects across real processes: proxies stored inside managed containers,
//! bounded and joinable queues, reentrant locks, conditions, semaphores and barriers; and for
//! each, a client killed (or exiting) at each step of what it holds. Every wait has a deadline.

mod common;

use std::time::{Duration, Instant};

use common::{join, within, DEADLINE};
use multiproc::{
    process_fn, BarrierProxy, ConditionProxy, DictProxy, Error, Event, JoinableQueueProxy, ListProxy, Manager,
    QueueProxy, RLockProxy, SemaphoreProxy, ValueProxy,
};

const SHORT: Duration = Duration::from_millis(100);

// ---- proxies inside managed containers ----

#[process_fn]
fn fill_rows(rows: ListProxy<DictProxy<String, u32>>) -> multiproc::Result<u32> {
    for i in 0..rows.len()? {
        let row = rows.get(i)?; // a proxy, read back from the list, that works here too
        row.insert("seen".into(), i as u32)?;
    }
    Ok(rows.len()? as u32)
}

#[test]
fn a_list_of_dicts_and_a_dict_of_queues_hold_proxies_that_work_in_every_process() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let rows = m.list::<DictProxy<String, u32>>().unwrap();
        for _ in 0..3 {
            rows.push(m.dict().unwrap()).unwrap();
        }
        assert_eq!(join(fill_rows.spawn(rows.clone()).unwrap()).unwrap().unwrap(), 3);
        for (i, row) in rows.to_vec().unwrap().iter().enumerate() {
            assert_eq!(row.get(&"seen".into()).unwrap(), Some(i as u32));
        }

        let inboxes = m.dict::<String, QueueProxy<u32>>().unwrap();
        inboxes.insert("a".into(), m.queue().unwrap()).unwrap();
        inboxes.get(&"a".into()).unwrap().unwrap().put(5).unwrap();
        assert_eq!(inboxes.get(&"a".into()).unwrap().unwrap().get_timeout(DEADLINE).unwrap(), 5);

        // and made with them at once, and in a value
        let same = m.list_from(vec![rows.get(0).unwrap()]).unwrap();
        assert_eq!(same.get(0).unwrap().get(&"seen".into()).unwrap(), Some(0));
        let holder = m.value(vec![rows.get(1).unwrap()]).unwrap();
        assert_eq!(holder.get().unwrap()[0].get(&"seen".into()).unwrap(), Some(1));
    });
}

#[test]
fn a_proxy_of_another_manager_is_refused_with_what_to_do() {
    within(DEADLINE, || {
        let (m, other) = (Manager::start().unwrap(), Manager::start().unwrap());
        let l = m.list::<DictProxy<u8, u8>>().unwrap();
        match l.push(other.dict().unwrap()) {
            Err(Error::Encode { message, .. }) => {
                assert!(message.contains("same manager") || message.contains("manager that holds"), "{message}")
            }
            r => panic!("expected a refusal, got {r:?}"),
        }
        assert_eq!(l.len().unwrap(), 0, "nothing was stored");
    });
}

#[test]
fn proxies_inside_a_remote_managers_containers_work_over_tcp() {
    within(DEADLINE, || {
        let server = Manager::serve("127.0.0.1:0", b"nested").unwrap();
        let client = Manager::connect(server.local_addr().unwrap(), b"nested").unwrap();
        let l = client.list::<ValueProxy<u32>>().unwrap();
        l.push(client.value(7).unwrap()).unwrap();
        l.get(0).unwrap().update(|v| v + 1).unwrap();
        assert_eq!(l.get(0).unwrap().get().unwrap(), 8);
    });
}

// ---- bounded queues ----

#[process_fn]
fn put_blocked(q: QueueProxy<u32>, waiting: Event) {
    waiting.set();
    q.put(99).unwrap(); // waits for room, for ever
}

#[test]
fn a_bounded_queue_refuses_when_full_and_a_producer_killed_waiting_for_room_puts_nothing() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let q = m.bounded_queue::<u32>(2).unwrap();
        assert!(matches!(m.bounded_queue::<u32>(0), Err(Error::ManagerOperation { .. })));
        assert!(matches!(q.try_get(), Err(Error::Empty { waited: None })));
        q.put(1).unwrap();
        q.try_put(2).unwrap();
        assert!(q.is_full().unwrap());
        assert!(matches!(q.try_put(3), Err(Error::Full { maxsize: Some(2), waited: None })));
        let t = Instant::now();
        assert!(matches!(q.put_timeout(3, SHORT), Err(Error::Full { maxsize: Some(2), waited: Some(_) })));
        assert!(t.elapsed() >= SHORT);

        let waiting = Event::new().unwrap();
        let mut p = put_blocked.spawn(q.clone(), waiting.clone()).unwrap();
        assert!(waiting.wait_timeout(DEADLINE));
        std::thread::sleep(SHORT); // waiting at the server for room
        p.kill().unwrap();
        let _ = p.join_timeout(DEADLINE);
        assert_eq!(q.get().unwrap(), 1);
        std::thread::sleep(SHORT * 3); // the server has seen it go
        assert_eq!(q.len().unwrap(), 1, "the killed producer's item never went in");
        assert_eq!(q.get().unwrap(), 2);
        assert!(!q.is_full().unwrap());
    });
}

#[process_fn]
fn put_when_room(q: QueueProxy<u32>, n: u32) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

#[test]
fn a_producer_waits_for_room_and_every_item_arrives_in_order() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let q = m.bounded_queue::<u32>(3).unwrap();
        let p = put_when_room.spawn(q.clone(), 200).unwrap();
        let got: Vec<u32> = (0..200).map(|_| q.get_timeout(DEADLINE).unwrap()).collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        join(p).unwrap();
    });
}

// ---- joinable queues ----

#[process_fn]
fn consume(tasks: JoinableQueueProxy<u32>, n: u32, got: Event, mark_done: bool, hang: bool) {
    for _ in 0..n {
        let _ = tasks.get().unwrap();
        if mark_done {
            tasks.task_done().unwrap();
        }
    }
    got.set();
    if hang {
        std::thread::sleep(Duration::from_secs(600));
    }
}

#[test]
fn join_waits_for_every_task_and_times_out_with_the_count() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let tasks = m.joinable_queue::<u32>().unwrap();
        tasks.join_timeout(Duration::ZERO).unwrap(); // nothing put: done
        for t in 0..4 {
            tasks.put(t).unwrap();
        }
        match tasks.join_timeout(SHORT) {
            Err(Error::TasksUnfinished { tasks: 4, .. }) => {}
            r => panic!("expected 4 unfinished, got {r:?}"),
        }
        let got = Event::new().unwrap();
        let c = consume.spawn(tasks.clone(), 4, got, true, false).unwrap();
        tasks.join().unwrap();
        join(c).unwrap();
        assert!(matches!(tasks.task_done(), Err(Error::TaskDoneTooMany)));
        assert!(matches!(m.queue::<u32>().unwrap().len(), Ok(0)));
    });
}

/// One consumer's end at one step: killed waiting for an item, killed holding one taken and
/// not done, exiting so, or killed after marking it done.
fn joinable_step(mark_done: bool, kill: bool, before_item: bool) -> (Result<(), Error>, u32) {
    let m = Manager::start().unwrap();
    let tasks = m.joinable_queue::<u32>().unwrap();
    let got = Event::new().unwrap();
    if !before_item {
        tasks.put(1).unwrap();
    }
    let mut c = consume.spawn(tasks.clone(), 1, got.clone(), mark_done, kill).unwrap();
    let pid = c.pid();
    if before_item {
        std::thread::sleep(SHORT * 2); // waiting at the server
    } else {
        assert!(got.wait_timeout(DEADLINE));
    }
    if kill {
        c.kill().unwrap();
    }
    let _ = c.join_timeout(DEADLINE);
    if before_item {
        tasks.put(1).unwrap();
        let helper = consume.spawn(tasks.clone(), 1, Event::new().unwrap(), true, false).unwrap();
        join(helper).unwrap();
    }
    (tasks.join_timeout(DEADLINE), pid)
}

#[test]
fn a_consumer_that_ends_holding_a_task_is_a_loss_told_once_at_each_step() {
    within(DEADLINE * 3, || {
        // killed waiting for an item: nothing was taken, the item went to another
        assert!(matches!(joinable_step(true, true, true).0, Ok(())));
        // killed after taking, before task_done
        match joinable_step(false, true, false) {
            (Err(Error::TasksLost { pid, tasks: 1 }), p) => assert_eq!(pid, p),
            r => panic!("expected one task lost, got {r:?}"),
        }
        // returned without task_done: lost too (Python's join would hang here)
        match joinable_step(false, false, false) {
            (Err(Error::TasksLost { pid, tasks: 1 }), p) => assert_eq!(pid, p),
            r => panic!("expected one task lost, got {r:?}"),
        }
        // killed after task_done: nothing lost
        assert!(matches!(joinable_step(true, true, false).0, Ok(())));
    });
}

#[test]
fn after_a_loss_is_told_join_waits_for_the_other_tasks_only() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let tasks = m.joinable_queue::<u32>().unwrap();
        for t in 0..3 {
            tasks.put(t).unwrap();
        }
        let got = Event::new().unwrap();
        let mut dead = consume.spawn(tasks.clone(), 1, got.clone(), false, true).unwrap();
        assert!(got.wait_timeout(DEADLINE));
        dead.kill().unwrap();
        let _ = dead.join_timeout(DEADLINE);
        assert!(matches!(tasks.join_timeout(DEADLINE), Err(Error::TasksLost { tasks: 1, .. })));
        match tasks.join_timeout(SHORT) {
            Err(Error::TasksUnfinished { tasks: 2, .. }) => {}
            r => panic!("told once; two tasks left: {r:?}"),
        }
        join(consume.spawn(tasks.clone(), 2, Event::new().unwrap(), true, false).unwrap()).unwrap();
        tasks.join_timeout(DEADLINE).unwrap();
    });
}

// ---- reentrant locks ----

#[process_fn]
fn hold_twice(lock: RLockProxy, held: Event) {
    let _a = lock.acquire().unwrap();
    let _b = lock.acquire().unwrap(); // reentrant
    held.set();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn an_rlock_is_reentrant_and_free_when_a_holder_that_took_it_twice_is_killed() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let lock = m.rlock().unwrap();
        {
            let _a = lock.acquire().unwrap();
            let b = lock.acquire().unwrap();
            drop(b);
            let other =
                std::thread::scope(|s| s.spawn(|| lock.acquire_timeout(SHORT).unwrap().is_some()).join().unwrap());
            assert!(!other, "still held once");
        }
        let held = Event::new().unwrap();
        let mut p = hold_twice.spawn(lock.clone(), held.clone()).unwrap();
        assert!(held.wait_timeout(DEADLINE));
        assert!(lock.acquire_timeout(SHORT).unwrap().is_none());
        p.kill().unwrap();
        let _ = p.join_timeout(DEADLINE);
        assert!(lock.acquire_timeout(DEADLINE).unwrap().is_some(), "released however often taken");
    });
}

// ---- conditions ----

#[process_fn]
fn wait_notified(cond: ConditionProxy, waiting: Event, limit_ms: u64) -> bool {
    let held = cond.acquire().unwrap();
    waiting.set();
    held.wait_timeout(Duration::from_millis(limit_ms)).unwrap()
}

#[process_fn]
fn die_holding(cond: ConditionProxy, held: Event) {
    let _g = cond.acquire().unwrap();
    held.set();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_condition_notifies_across_processes_and_times_out() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let cond = m.condition().unwrap();
        {
            let g = cond.acquire().unwrap();
            let again = cond.acquire().unwrap(); // its lock is reentrant
            drop(again);
            assert!(!g.wait_timeout(SHORT).unwrap(), "nobody notified");
            assert_eq!(g.notify(1).unwrap(), 0, "nobody waits");
            assert!(g.wait_for(Some(SHORT), || true).unwrap());
            assert!(!g.wait_for(Some(SHORT), || false).unwrap());
        }
        let waiting = Event::new().unwrap();
        let w = wait_notified.spawn(cond.clone(), waiting.clone(), 30_000).unwrap();
        assert!(waiting.wait_timeout(DEADLINE));
        let g = cond.acquire().unwrap(); // the waiter has let the lock go
        assert_eq!(g.notify_all().unwrap(), 1);
        drop(g);
        assert!(join(w).unwrap(), "woken by the notify, not the timeout");
    });
}

#[test]
fn a_notified_waiter_killed_passes_its_notification_on_and_a_dead_holder_frees_the_lock() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let cond = m.condition().unwrap();
        let (ea, eb) = (Event::new().unwrap(), Event::new().unwrap());
        let mut a = wait_notified.spawn(cond.clone(), ea.clone(), 600_000).unwrap();
        assert!(ea.wait_timeout(DEADLINE));
        let b = wait_notified.spawn(cond.clone(), eb.clone(), 30_000).unwrap();
        assert!(eb.wait_timeout(DEADLINE));
        let g = cond.acquire().unwrap(); // both wait now: a first
        a.kill().unwrap();
        let _ = a.join_timeout(DEADLINE);
        assert_eq!(g.notify(1).unwrap(), 1); // most likely a's place, its server thread not yet aware
        drop(g);
        assert!(join(b).unwrap(), "b got the notification a could not take");

        let held = Event::new().unwrap();
        let mut h = die_holding.spawn(cond.clone(), held.clone()).unwrap();
        assert!(held.wait_timeout(DEADLINE));
        assert!(cond.acquire_timeout(SHORT).unwrap().is_none());
        h.kill().unwrap();
        let _ = h.join_timeout(DEADLINE);
        assert!(cond.acquire_timeout(DEADLINE).unwrap().is_some());
    });
}

// ---- semaphores ----

#[process_fn]
fn take_counts(sem: SemaphoreProxy, n: u32, forget: u32, held: Event) {
    let guards: Vec<_> = (0..n).map(|_| sem.acquire().unwrap()).collect();
    let mut guards = guards.into_iter();
    for g in guards.by_ref().take(forget as usize) {
        g.forget().unwrap();
    }
    held.set();
    std::thread::sleep(Duration::from_secs(600));
    drop(guards);
}

#[test]
fn a_semaphore_gets_back_the_counts_of_a_killed_holder_but_not_forgotten_ones() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let sem = m.semaphore(3).unwrap();
        let held = Event::new().unwrap();
        let mut p = take_counts.spawn(sem.clone(), 3, 1, held.clone()).unwrap();
        assert!(held.wait_timeout(DEADLINE));
        assert_eq!(sem.value().unwrap(), 0);
        assert!(sem.acquire_timeout(SHORT).unwrap().is_none());
        p.kill().unwrap();
        let _ = p.join_timeout(DEADLINE);
        let deadline = Instant::now() + DEADLINE;
        while sem.value().unwrap() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sem.value().unwrap(), 2, "two guarded counts back, the forgotten one not");
        sem.release().unwrap(); // a plain release, as Python's
        assert_eq!(sem.value().unwrap(), 3);
        {
            let _g = sem.acquire().unwrap();
            assert_eq!(sem.value().unwrap(), 2);
        }
        assert_eq!(sem.value().unwrap(), 3);

        let bounded = m.bounded_semaphore(1).unwrap();
        assert!(matches!(bounded.release(), Err(Error::OverReleased { bound: 1 })));
        let g = bounded.acquire().unwrap();
        drop(g);
        assert_eq!(bounded.value().unwrap(), 1);
    });
}

// ---- barriers ----

#[process_fn]
fn party(b: BarrierProxy, rounds: u32, limit_ms: u64) -> multiproc::Result<Vec<usize>> {
    (0..rounds).map(|_| b.wait_timeout(Duration::from_millis(limit_ms))).collect()
}

#[process_fn]
fn arrive_and_hang(b: BarrierProxy, arrived: Event) {
    arrived.set();
    let _ = b.wait();
    std::thread::sleep(Duration::from_secs(600));
}

/// Waits (at most the deadline) until `n` parties wait at `b`.
fn until_waiting(b: &BarrierProxy, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    while b.n_waiting().unwrap() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn broken(r: multiproc::Result<usize>) -> String {
    match r {
        Err(Error::BrokenBarrier { reason }) => reason,
        other => panic!("expected a broken barrier, got {other:?}"),
    }
}

#[test]
fn a_barrier_meets_for_rounds_across_processes_with_each_index_once() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let b = m.barrier(3).unwrap();
        let parties: Vec<_> = (0..2).map(|_| party.spawn(b.clone(), 5, 30_000).unwrap()).collect();
        let mine: Vec<usize> = (0..5).map(|_| b.wait_timeout(DEADLINE).unwrap()).collect();
        let theirs: Vec<Vec<usize>> = parties.into_iter().map(|p| join(p).unwrap().unwrap()).collect();
        for round in 0..5 {
            let mut at = vec![mine[round], theirs[0][round], theirs[1][round]];
            at.sort();
            assert_eq!(at, [0, 1, 2], "round {round}");
        }
        assert!(!b.is_broken().unwrap());
        assert_eq!(b.n_waiting().unwrap(), 0);
    });
}

#[test]
fn a_party_killed_while_waiting_breaks_the_barrier_for_the_others() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let b = m.barrier(3).unwrap();
        let arrived = Event::new().unwrap();
        let mut dead = arrive_and_hang.spawn(b.clone(), arrived.clone()).unwrap();
        assert!(arrived.wait_timeout(DEADLINE));
        until_waiting(&b, 1);
        let other = party.spawn(b.clone(), 1, 60_000).unwrap();
        until_waiting(&b, 2);
        dead.kill().unwrap();
        let _ = dead.join_timeout(DEADLINE);
        let t = Instant::now();
        let reason = match join(other).unwrap() {
            Err(Error::BrokenBarrier { reason }) => reason,
            r => panic!("expected a broken barrier, got {r:?}"),
        };
        assert!(reason.contains("went away"), "{reason}");
        assert!(t.elapsed() < Duration::from_secs(10), "told soon, not at the other's timeout");
        assert!(broken(b.wait_timeout(DEADLINE)).contains("went away"), "broken for later callers too");
        b.reset().unwrap();
        assert!(!b.is_broken().unwrap());
    });
}

#[test]
fn a_party_that_left_after_a_round_breaks_the_next_rather_than_hang_it() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let b = m.barrier(2).unwrap();
        let leaver = party.spawn(b.clone(), 1, 30_000).unwrap();
        b.wait_timeout(DEADLINE).unwrap();
        join(leaver).unwrap().unwrap(); // gone, after one round
        let reason = broken(b.wait_timeout(DEADLINE));
        assert!(reason.contains("has gone"), "{reason}");
    });
}

#[test]
fn a_timeout_an_abort_and_a_reset_break_a_barrier_as_pythons_do() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let b = m.barrier(2).unwrap();
        assert!(broken(b.wait_timeout(SHORT)).contains("timed out"));
        b.reset().unwrap();
        b.abort().unwrap();
        assert!(broken(b.wait_timeout(SHORT)).contains("aborted"));
        b.reset().unwrap();
        let waiter = party.spawn(b.clone(), 1, 30_000).unwrap();
        until_waiting(&b, 1);
        b.reset().unwrap();
        match join(waiter).unwrap() {
            Err(Error::BrokenBarrier { reason }) => assert!(reason.contains("reset"), "{reason}"),
            r => panic!("a reset lets a waiter go broken: {r:?}"),
        }
        assert!(!b.is_broken().unwrap(), "and the barrier is ready again");
    });
}

// ---- a holder that exits (not killed) holding what it holds ----

#[process_fn]
fn exit_holding(lock: RLockProxy, sem: SemaphoreProxy) {
    std::mem::forget(lock.acquire().unwrap()); // never released by this process
    std::mem::forget(sem.acquire().unwrap());
    std::process::exit(0);
}

#[test]
fn a_holder_that_exits_holding_a_lock_and_a_count_gives_both_back() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let (lock, sem) = (m.rlock().unwrap(), m.semaphore(1).unwrap());
        let _ = join(exit_holding.spawn(lock.clone(), sem.clone()).unwrap());
        assert!(lock.acquire_timeout(DEADLINE).unwrap().is_some(), "its connection closed with it");
        assert!(sem.acquire_timeout(DEADLINE).unwrap().is_some());
    });
}

// ---- an initializer for Manager::start_with ----

#[derive(serde::Serialize, serde::Deserialize)]
struct EnvProbe;

impl multiproc::Served for EnvProbe {
    type Request = String;
    type Response = Option<String>;
    fn handle(&mut self, name: String) -> Option<String> {
        std::env::var(name).ok()
    }
}

multiproc::served!(EnvProbe);

#[process_fn]
fn init_server(how: String) -> Result<(), String> {
    match how.as_str() {
        "err" => Err("no configuration".into()),
        "panic" => panic!("bad configuration"),
        "exit" => std::process::exit(3),
        _ => {
            std::env::set_var("MANAGER_INIT", &how);
            Ok(())
        }
    }
}

#[process_fn]
fn init_with_queue(_q: multiproc::Queue<u32>) {}

#[test]
fn a_managers_initializer_runs_in_its_server_before_it_serves_and_its_failures_are_named() {
    within(DEADLINE, || {
        let m = Manager::start_with(init_server, ("ready".to_string(),)).unwrap();
        let probe = m.serve_object(EnvProbe).unwrap();
        assert_eq!(probe.call("MANAGER_INIT".into()).unwrap().as_deref(), Some("ready"), "ran in the server");
        assert_eq!(std::env::var("MANAGER_INIT").ok(), None, "not here");

        for (how, says) in [("err", "no configuration"), ("panic", "bad configuration"), ("exit", "ended while it ran")]
        {
            match Manager::start_with(init_server, (how.to_string(),)) {
                Err(Error::InitializerFailed { message }) => assert!(message.contains(says), "{how}: {message}"),
                r => panic!("{how}: expected InitializerFailed, got {r:?}"),
            }
        }
        match Manager::start_with(init_with_queue, (multiproc::Queue::new().unwrap(),)) {
            Err(Error::Encode { message, .. }) => assert!(message.contains("plain data"), "{message}"),
            r => panic!("expected a refusal of the handle, got {r:?}"),
        }
    });
}
