//! Handles (queues, pipe ends) cross to other processes as ordinary arguments and results, in
//! every position a value can take, as file descriptors with the frame. Every wait has a hard
//! deadline.

mod common;

use std::time::Duration;

use common::{join, within, DEADLINE};
use multiproc::{pipe, process_fn, Connection, Error, Pool, Queue, Sender};
use serde::{Deserialize, Serialize};

#[process_fn]
fn put_one(q: Queue<String>, text: String) {
    q.put(text).unwrap();
}

/// A user's struct holding handles among plain data.
#[derive(Serialize, Deserialize)]
struct Job {
    name: String,
    results: Queue<u64>,
    log: Option<Sender<String>>,
    extra: Vec<Queue<u64>>,
    pair: (u32, Connection<u32>),
}

#[process_fn]
fn run_job(job: Job, xs: Vec<u64>) -> usize {
    for x in &xs {
        job.results.put(x * x).unwrap();
    }
    for (i, q) in job.extra.iter().enumerate() {
        q.put(i as u64).unwrap();
    }
    if let Some(log) = &job.log {
        log.send(format!("{} done", job.name)).unwrap();
    }
    job.pair.1.send(job.pair.0).unwrap();
    xs.len()
}

#[test]
fn a_handle_crosses_alone_and_nested_in_structs_vecs_options_and_tuples() {
    within(DEADLINE, || {
        let q = Queue::new().unwrap();
        join(put_one.spawn(q.clone(), "alone".into()).unwrap()).unwrap();
        assert_eq!(q.get_timeout(DEADLINE).unwrap(), "alone");

        let results = Queue::new().unwrap();
        let extra: Vec<Queue<u64>> = (0..3).map(|_| Queue::new().unwrap()).collect();
        let (log_rx, log_tx) = multiproc::pipe_one_way::<String>().unwrap();
        let (here, there) = pipe::<u32, u32>().unwrap();
        let job = Job {
            name: "squares".into(),
            results: results.clone(),
            log: Some(log_tx),
            extra: extra.clone(),
            pair: (7, there),
        };
        assert_eq!(join(run_job.spawn(job, vec![1, 2, 3]).unwrap()).unwrap(), 3);
        let got: Vec<u64> = (0..3).map(|_| results.get_timeout(DEADLINE).unwrap()).collect();
        assert_eq!(got, [1, 4, 9]);
        for (i, q) in extra.iter().enumerate() {
            assert_eq!(q.get_timeout(DEADLINE).unwrap(), i as u64);
        }
        assert_eq!(log_rx.recv_timeout(DEADLINE).unwrap(), "squares done");
        assert_eq!(here.recv_timeout(DEADLINE).unwrap(), 7);
    });
}

#[process_fn]
fn make_queue(items: u64) -> Queue<u64> {
    let q = Queue::new().unwrap();
    for i in 0..items {
        q.put(i).unwrap();
    }
    q
}

#[process_fn]
fn make_pipe() -> Connection<String> {
    let (mine, yours) = pipe::<String, String>().unwrap();
    // a pool worker lives on after the call: its thread answers until the parent hangs up
    std::thread::spawn(move || {
        while let Ok(text) = mine.recv() {
            mine.send(text.to_uppercase()).unwrap();
        }
    });
    yours
}

#[test]
fn a_child_can_create_a_handle_and_return_it() {
    within(DEADLINE, || {
        let q = join(make_queue.spawn(5).unwrap()).unwrap();
        // the child has exited: its items live on in the queue, which the parent now holds
        let got: Vec<u64> = (0..5).map(|_| q.try_get().unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(matches!(q.try_get(), Err(Error::Empty { .. })));

        let pool = Pool::new(2).unwrap();
        let q = pool.apply(make_queue, (3,)).unwrap();
        assert_eq!(q.len(), 3);
        let conn = pool.apply(make_pipe, ()).unwrap();
        conn.send("made in a worker".to_string()).unwrap();
        assert_eq!(conn.recv_timeout(DEADLINE).unwrap(), "MADE IN A WORKER");
    });
}

#[process_fn]
fn square_into(q: Queue<u64>, x: u64) -> u64 {
    q.put(x * x).unwrap();
    x
}

#[process_fn]
fn pair_into(item: (Queue<u64>, u64)) -> u64 {
    item.0.put(item.1 + 1000).unwrap();
    item.1
}

static INIT_QUEUE: std::sync::OnceLock<Queue<String>> = std::sync::OnceLock::new();

#[process_fn]
fn init_with_queue(q: Queue<String>) {
    q.put(format!("worker {} ready", std::process::id())).unwrap();
    let _ = INIT_QUEUE.set(q);
}

#[process_fn]
fn report_through_init_queue(x: u64) -> bool {
    INIT_QUEUE.get().unwrap().put(format!("item {x}")).unwrap();
    true
}

#[test]
fn handles_go_to_pool_tasks_map_items_imap_items_and_initializers() {
    within(DEADLINE, || {
        let pool = Pool::builder().workers(2).chunksize(3).build().unwrap();
        let q = Queue::new().unwrap();
        assert_eq!(pool.apply(square_into, (q.clone(), 3)).unwrap(), 3);
        assert_eq!(pool.apply_async(square_into, (q.clone(), 4)).wait().unwrap(), 4);
        assert_eq!(q.get_timeout(DEADLINE).unwrap() + q.get_timeout(DEADLINE).unwrap(), 25);

        let out = pool.map(pair_into, (0..20).map(|i| (q.clone(), i))).unwrap();
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        let mut got: Vec<u64> = (0..20).map(|_| q.get_timeout(DEADLINE).unwrap()).collect();
        got.sort();
        assert_eq!(got, (1000..1020).collect::<Vec<_>>());

        let out: Vec<u64> = pool.imap(pair_into, (0..10).map(|i| (q.clone(), i))).map(Result::unwrap).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        let mut got: Vec<u64> = (0..10).map(|_| q.get_timeout(DEADLINE).unwrap()).collect();
        got.sort();
        assert_eq!(got, (1000..1010).collect::<Vec<_>>());

        let log = Queue::new().unwrap();
        let pool = Pool::builder().workers(2).initializer(init_with_queue, (log.clone(),)).build().unwrap();
        assert_eq!(pool.map(report_through_init_queue, 0..6).unwrap(), [true; 6]);
        let lines: Vec<String> = (0..8).map(|_| log.get_timeout(DEADLINE).unwrap()).collect();
        assert_eq!(lines.iter().filter(|l| l.ends_with("ready")).count(), 2, "{lines:?}");
        assert_eq!(lines.iter().filter(|l| l.starts_with("item")).count(), 6, "{lines:?}");
    });
}

#[test]
fn a_handle_serialized_anywhere_else_is_a_clear_error() {
    let q = Queue::<u8>::new().unwrap();
    let (a, _b) = pipe::<u8, u8>().unwrap();
    for err in [serde_json::to_string(&q).unwrap_err(), serde_json::to_string(&a).unwrap_err()] {
        assert!(err.to_string().contains("cannot be serialized anywhere else"), "{err}");
    }
    let err = serde_json::from_str::<Queue<u8>>("[0, 1]").unwrap_err();
    assert!(err.to_string().contains("holds file descriptors"), "{err}");
    // into a queue's item: an error from put, and the queue as before
    let outer = Queue::<Connection<u8>>::new().unwrap();
    assert!(matches!(outer.put(&a), Err(Error::Encode { .. })));
    assert!(outer.is_empty());
}

#[process_fn]
fn count_handles(conns: Vec<Connection<u32>>) -> u32 {
    for (i, c) in conns.iter().enumerate() {
        c.send(i as u32).unwrap();
    }
    conns.len() as u32
}

#[test]
fn a_frame_carries_more_handles_than_one_message_and_too_many_is_an_error() {
    within(DEADLINE, || {
        let pairs: Vec<(Connection<u32>, Connection<u32>)> = (0..300).map(|_| pipe().unwrap()).collect();
        let (ours, theirs): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        assert_eq!(join(count_handles.spawn(theirs).unwrap()).unwrap(), 300);
        for (i, c) in ours.iter().enumerate() {
            assert_eq!(c.recv_timeout(DEADLINE).unwrap(), i as u32);
        }
        // one over the limit: refused before any process starts
        let too_many: Vec<Connection<u32>> =
            (0..=multiproc::MAX_FDS_PER_FRAME).map(|_| pipe::<u32, u32>().unwrap().1).collect();
        match count_handles.spawn(too_many) {
            Err(Error::Encode { message, .. }) => assert!(message.contains("at most 1024"), "{message}"),
            other => panic!("expected an encode error, got {:?}", other.map(|p| p.pid())),
        }
    });
}

/// Counts this process's open descriptors and mappings.
fn fds_and_maps() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap().lines().count();
    (fds, maps)
}

#[process_fn]
fn touch(q: Queue<u64>, c: Connection<u64>, x: u64) -> (usize, usize) {
    if x.is_multiple_of(1000) {
        q.put(x).unwrap();
        c.send(x).unwrap();
    }
    fds_and_maps()
}

#[test]
fn receiving_the_same_handles_again_and_again_keeps_descriptors_and_mappings_flat() {
    within(Duration::from_secs(120), || {
        let pool = Pool::builder().workers(1).chunksize(500).build().unwrap();
        let q = Queue::new().unwrap();
        let (here, there) = pipe::<u64, u64>().unwrap();
        let counts = pool.starmap(touch, (0..100_000u64).map(|x| (q.clone(), there.clone(), x))).unwrap();
        let (first, last) = (counts[1_000], counts[99_999]);
        assert!(last.0 <= first.0 + 2, "descriptors grew from {} to {}", first.0, last.0);
        assert!(last.1 <= first.1 + 2, "mappings grew from {} to {}", first.1, last.1);
        assert_eq!(q.len(), 100);
        assert_eq!(here.recv_timeout(DEADLINE).unwrap(), 0);
    });
}
