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

/// Connects to `addr` with `key`, sends `n` and a megabyte, returns what came back.
#[process_fn]
fn tcp_client(addr: String, key: Vec<u8>, n: u64) -> multiproc::Result<(u64, usize)> {
    let c: Connection<(u64, Vec<u8>)> = Connection::connect_tcp(addr.as_str(), Some(&key))?;
    c.send((n, vec![7u8; 1 << 20]))?;
    let (back, bytes) = c.recv()?;
    Ok((back, bytes.len()))
}

#[test]
fn a_listener_over_tcp_proves_the_key_and_carries_typed_messages_to_another_process() {
    within(DEADLINE, || {
        let listener = multiproc::Listener::tcp("127.0.0.1:0", Some(b"the key")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client = tcp_client.spawn(addr.clone(), b"the key".to_vec(), 41).unwrap();
        let c: Connection<(u64, Vec<u8>)> = listener.accept().unwrap();
        let (n, bytes) = c.recv().unwrap();
        assert_eq!((n, bytes.len()), (41, 1 << 20), "a large value goes inline over TCP");
        c.send((n + 1, bytes)).unwrap();
        assert_eq!(join(client).unwrap().unwrap(), (42, 1 << 20));
        // a handle cannot cross TCP: a clear error, and the connection goes on
        let q = Queue::<u8>::new().unwrap();
        let c2: Connection<Queue<u8>, u8> = {
            let addr = addr.clone();
            let t =
                std::thread::spawn(move || Connection::<u8, Queue<u8>>::connect_tcp(addr.as_str(), Some(b"the key")));
            let accepted = listener.accept().unwrap();
            let _client = t.join().unwrap().unwrap();
            accepted
        };
        match c2.send(q) {
            Err(Error::Encode { message, .. }) => {
                assert!(message.contains("cannot cross a TCP connection"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // a wrong key: refused on both sides, and the listener goes on
        let wrong =
            std::thread::spawn(move || Connection::<u8>::connect_tcp(addr.as_str(), Some(b"not it")).map(|_| ()));
        assert!(matches!(listener.accept::<u8, u8>(), Err(Error::AuthenticationFailed)));
        assert!(matches!(wrong.join().unwrap(), Err(Error::AuthenticationFailed)));
    });
}

/// Connects to the Unix socket at `path`, receives a queue, puts `n` into it.
#[process_fn]
fn unix_client(path: std::path::PathBuf, n: u8) -> multiproc::Result<()> {
    let c: Connection<(), Queue<u8>> = Connection::connect_unix(&path, Some(b"k"))?;
    c.recv()?.put(n)?;
    Ok(())
}

#[test]
fn a_listener_over_a_unix_socket_carries_handles() {
    within(DEADLINE, || {
        let path = std::env::temp_dir().join(format!("multiproc-listener-{}.sock", std::process::id()));
        let listener = multiproc::Listener::unix(&path, Some(b"k")).unwrap();
        let client = unix_client.spawn(path.clone(), 9).unwrap();
        let c: Connection<Queue<u8>, ()> = listener.accept().unwrap();
        let q = Queue::<u8>::new().unwrap();
        c.send(q.clone()).unwrap(); // a handle, as over any pipe
        join(client).unwrap().unwrap();
        assert_eq!(q.get_timeout(DEADLINE).unwrap(), 9);
        drop(listener);
        assert!(!path.exists(), "the socket's path goes with the listener");
    });
}

#[test]
fn any_descriptor_crosses_a_pipe_as_itself() {
    use std::io::{Read, Write};
    let (a, b) = pipe::<multiproc::Descriptor, multiproc::Descriptor>().unwrap();
    let (mut mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    a.send(multiproc::Descriptor::new(theirs.into())).unwrap();
    let got = b.recv_timeout(DEADLINE).unwrap();
    let mut far = std::os::unix::net::UnixStream::from(got.into_inner());
    far.write_all(b"through a received descriptor").unwrap();
    drop(far);
    let mut text = String::new();
    mine.read_to_string(&mut text).unwrap();
    assert_eq!(text, "through a received descriptor");
}

#[test]
fn recv_bytes_into_fills_a_buffer_or_gives_the_whole_message_back() {
    let (a, b) = pipe::<u8, u8>().unwrap();
    a.send_bytes(b"hello").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    a.send_bytes(b"longer than eight").unwrap();
    match b.recv_bytes_into(&mut buf) {
        Err(Error::BufferTooShort { capacity: 8, message }) => assert_eq!(message, b"longer than eight"),
        other => panic!("{other:?}"),
    }
    a.send_bytes(b"next").unwrap(); // nothing was left behind in the pipe
    assert_eq!(b.recv_bytes().unwrap(), b"next");
}

#[test]
fn wait_takes_raw_descriptors_beside_pipes() {
    use std::io::Write;
    use std::os::fd::AsFd;
    let (a, b) = pipe::<u8, u8>().unwrap();
    let (mut w, r) = std::os::unix::net::UnixStream::pair().unwrap();
    let raw = r.as_fd();
    assert!(wait(&[&b, &raw], Some(Duration::from_millis(10))).unwrap().is_empty());
    w.write_all(b"x").unwrap();
    assert_eq!(wait(&[&b, &raw], Some(DEADLINE)).unwrap(), [1]);
    a.send(1).unwrap();
    assert_eq!(wait(&[&b, &raw], Some(DEADLINE)).unwrap(), [0, 1]);
}
