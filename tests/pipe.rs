//! Pipes between processes: typed ends, timeouts, raw bytes, a peer that goes away, and
//! `wait` over many ends, queues and processes. Every wait has a hard deadline.

mod common;

use std::time::{Duration, Instant};

use common::{join, within, DEADLINE};
use multiproc::{pipe, pipe_one_way, process_fn, wait, Connection, Error, Queue, Sender, Waitable};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Add(i64, i64),
    Echo(String),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Response {
    Sum(i64),
    Echoed(String),
}

/// Serves requests until the other end hangs up; returns how many it served.
#[process_fn]
fn server(conn: Connection<Response, Request>) -> u32 {
    let mut served = 0;
    while let Ok(request) = conn.recv() {
        let response = match request {
            Request::Add(a, b) => Response::Sum(a + b),
            Request::Echo(s) => Response::Echoed(s),
        };
        conn.send(response).unwrap();
        served += 1;
    }
    served
}

#[test]
fn a_typed_conversation_ends_when_the_parent_hangs_up() {
    within(DEADLINE, || {
        let (client, end) = pipe::<Request, Response>().unwrap();
        let child = server.spawn(end).unwrap();
        for i in 0..100 {
            client.send(Request::Add(i, 1)).unwrap();
            assert_eq!(client.recv().unwrap(), Response::Sum(i + 1));
        }
        client.send(Request::Echo("bye".into())).unwrap();
        assert_eq!(client.recv().unwrap(), Response::Echoed("bye".into()));
        drop(client);
        assert_eq!(join(child).unwrap(), 101);
    });
}

#[process_fn]
fn stream(tx: Sender<u64>, n: u64) {
    for i in 0..n {
        tx.send(i).unwrap();
    }
}

#[test]
fn a_one_way_pipe_streams_until_its_sender_is_gone() {
    within(DEADLINE, || {
        let (rx, tx) = pipe_one_way::<u64>().unwrap();
        let child = stream.spawn(tx, 10_000).unwrap(); // our copy of `tx` went with the call
        let mut expected = 0;
        loop {
            match rx.recv() {
                Ok(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                Err(Error::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(expected, 10_000);
        join(child).unwrap();
    });
}

#[process_fn]
fn hold_forever(conn: Connection<u8>) {
    conn.send(1u8).unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

#[test]
fn a_peer_process_that_dies_is_disconnected_at_once() {
    within(DEADLINE, || {
        let (here, there) = pipe::<u8, u8>().unwrap();
        let mut child = hold_forever.spawn(there).unwrap();
        assert_eq!(here.recv_timeout(DEADLINE).unwrap(), 1);
        assert!(matches!(here.try_recv(), Err(Error::Empty { .. })));
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            (here.recv(), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100)); // blocked in recv by now
        let pid = child.pid();
        child.kill().unwrap();
        let (r, _) = waiter.join().unwrap();
        assert!(matches!(r, Err(Error::Disconnected)), "{r:?}");
        assert!(matches!(child.join_timeout(DEADLINE), Err(Error::Killed { .. })));
        assert_eq!(common::proc_state(pid), None);
    });
}

#[process_fn]
fn slow_reply(conn: Connection<String>, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    conn.send("late".to_string()).unwrap();
    let _ = conn.recv(); // until the parent hangs up
}

#[test]
fn poll_recv_timeout_and_try_recv_wait_as_long_as_asked() {
    within(DEADLINE, || {
        let (here, there) = pipe::<String, String>().unwrap();
        let child = slow_reply.spawn(there, 300).unwrap();
        assert!(!here.poll(Duration::ZERO).unwrap());
        assert!(matches!(here.recv_timeout(Duration::from_millis(50)), Err(Error::Empty { waited: Some(_) })));
        assert!(here.poll(DEADLINE).unwrap());
        assert_eq!(here.try_recv().unwrap(), "late");
        drop(here);
        join(child).unwrap();
    });
}

#[process_fn]
fn reverse_bytes(conn: Connection<u8>) {
    let mut bytes = conn.recv_bytes().unwrap();
    bytes.reverse();
    conn.send_bytes(&bytes).unwrap();
}

#[test]
fn raw_bytes_cross_both_ways_and_are_not_mistaken_for_messages() {
    within(DEADLINE, || {
        let (here, there) = pipe::<u8, u8>().unwrap();
        let child = reverse_bytes.spawn(there).unwrap();
        let data: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        here.send_bytes(&data).unwrap();
        let back = here.recv_bytes().unwrap();
        assert!(back.iter().rev().eq(data.iter()));
        join(child).unwrap();
        let (a, b) = pipe::<u8, u8>().unwrap();
        a.send_bytes(b"raw").unwrap();
        assert!(matches!(b.recv(), Err(Error::MessageKind { .. })));
    });
}

#[test]
fn a_message_over_the_frame_limit_fails_on_the_senders_side() {
    within(DEADLINE, || {
        // byte buffers as serde_bytes: one block, not element by element
        let (a, b) = pipe::<serde_bytes::ByteBuf, serde_bytes::ByteBuf>().unwrap();
        let too_big = vec![0u8; multiproc::MAX_FRAME_LEN + 1]; // zeroed lazily
        assert!(matches!(a.send_bytes(&too_big), Err(Error::FrameTooLarge { .. })));
        let too_big = serde_bytes::ByteBuf::from(too_big);
        assert!(matches!(a.send(&too_big), Err(Error::FrameTooLarge { .. })));
        // nothing was sent, and the pipe still works
        a.send(serde_bytes::ByteBuf::from(vec![1, 2])).unwrap();
        assert_eq!(b.recv_timeout(DEADLINE).unwrap().into_vec(), [1, 2]);
    });
}

#[process_fn]
fn after(ms: u64, conn: Option<Connection<u64>>, q: Option<Queue<u64>>) {
    std::thread::sleep(Duration::from_millis(ms));
    if let Some(c) = conn {
        c.send(ms).unwrap();
    }
    if let Some(q) = q {
        q.put(ms).unwrap();
    }
}

#[test]
fn wait_serves_many_connections_queues_and_processes_from_one_thread() {
    within(DEADLINE, || {
        let (c1, e1) = pipe::<u64, u64>().unwrap();
        let (c2, e2) = pipe::<u64, u64>().unwrap();
        let q = Queue::<u64>::new().unwrap();
        let p1 = after.spawn(400, Some(e1), None).unwrap();
        let p2 = after.spawn(100, Some(e2), None).unwrap();
        let p3 = after.spawn(250, None, Some(q.clone())).unwrap();
        let exits = after.spawn(50, None, None).unwrap();
        let objects: [&dyn Waitable; 4] = [&c1, &c2, &q, &exits];
        // nothing is ready at once
        assert!(wait(&objects, Some(Duration::from_millis(20))).unwrap().is_empty());
        let mut order = Vec::new();
        let mut done = [false; 4];
        while order.len() < 4 {
            let ready = wait(&objects, Some(DEADLINE)).unwrap();
            assert!(!ready.is_empty());
            for i in ready {
                if done[i] {
                    continue;
                }
                done[i] = true;
                order.push(i);
                match i {
                    0 => assert_eq!(c1.recv().unwrap(), 400),
                    1 => assert_eq!(c2.recv().unwrap(), 100),
                    2 => assert_eq!(q.get().unwrap(), 250),
                    _ => {}
                }
            }
            let pending: Vec<&dyn Waitable> = (0..4).filter(|i| !done[*i]).map(|i| objects[i]).collect();
            if pending.is_empty() {
                break;
            }
        }
        assert_eq!(order, [3, 1, 2, 0], "in the order they became ready");
        for p in [p1, p2, p3, exits] {
            join(p).unwrap();
        }
    });
}

#[test]
fn a_pipe_end_serves_a_child_that_was_started_long_before() {
    // a child that waits in recv costs nothing while it waits
    within(DEADLINE, || {
        let (client, end) = pipe::<Request, Response>().unwrap();
        let child = server.spawn(end).unwrap();
        let pid = child.pid();
        std::thread::sleep(Duration::from_millis(400));
        let ticks = common::cpu_ticks(pid);
        assert!(ticks <= 5, "a child blocked in recv used {ticks} ticks of CPU");
        client.send(Request::Add(2, 2)).unwrap();
        assert_eq!(client.recv().unwrap(), Response::Sum(4));
        drop(client);
        assert_eq!(join(child).unwrap(), 1);
    });
}

/// Sends `n` numbers and returns (its end of the pipe closes as the process ends).
#[process_fn]
fn send_numbers(tx: Sender<u64>, n: u64) {
    for i in 0..n {
        tx.send(i).unwrap();
    }
}

#[test]
fn iterating_over_a_receiver_ends_once_the_sender_is_gone_with_every_message() {
    let (rx, tx) = pipe_one_way::<u64>().unwrap();
    let child = send_numbers.spawn(tx, 500).unwrap();
    // `tx` moved into the child's arguments and is dropped here: the child's is the last end
    let got = within(DEADLINE, move || rx.iter().collect::<multiproc::Result<Vec<u64>>>()).unwrap();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    join(child).unwrap();
    let (a, b) = pipe::<u64, u64>().unwrap();
    b.send(7).unwrap();
    drop(b);
    assert_eq!((&a).into_iter().map(Result::unwrap).collect::<Vec<_>>(), [7]);
}
