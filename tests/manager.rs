//! Managers across real processes: every proxy's operations, many processes updating one dict,
//! a dead client, a dead server, a served type that panics, and a remote manager with a wrong
//! key, garbage, slow and many clients. Every wait has a hard deadline.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{join, within, DEADLINE};
use multiproc::{
    process_fn, served, DictProxy, Error, Event, EventProxy, ListProxy, LockProxy, Manager, Pool, QueueProxy, Served,
    ValueProxy,
};
use serde::{Deserialize, Serialize};

#[test]
fn a_dict_does_what_pythons_does_and_keeps_insertion_order() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let d: DictProxy<String, i64> = m.dict().unwrap();
        assert!(d.is_empty().unwrap());
        assert_eq!(d.insert("b".into(), 2).unwrap(), None);
        assert_eq!(d.insert("a".into(), 1).unwrap(), None);
        assert_eq!(d.insert("b".into(), 3).unwrap(), Some(2));
        assert_eq!(d.get(&"b".into()).unwrap(), Some(3));
        assert_eq!(d.get(&"zz".into()).unwrap(), None);
        assert!(d.contains_key(&"a".into()).unwrap());
        assert_eq!(d.keys().unwrap(), ["b", "a"]);
        assert_eq!(d.values().unwrap(), [3, 1]);
        assert_eq!(d.set_default("a".into(), 100).unwrap(), 1);
        assert_eq!(d.set_default("c".into(), 100).unwrap(), 100);
        assert!(!d.compare_and_set(&"a".into(), Some(&5), Some(&6)).unwrap());
        assert!(d.compare_and_set(&"a".into(), Some(&1), Some(&6)).unwrap());
        assert!(d.compare_and_set(&"new".into(), None, Some(&7)).unwrap());
        assert!(d.compare_and_set(&"new".into(), Some(&7), None).unwrap());
        assert_eq!(d.update(&"a".into(), |v| v.map(|v| v * 10)).unwrap(), Some(60));
        assert_eq!(d.remove(&"b".into()).unwrap(), Some(3));
        assert_eq!(d.items().unwrap(), [("a".to_string(), 60), ("c".to_string(), 100)]);
        assert_eq!(d.len().unwrap(), 2);
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());
    });
}

#[test]
fn a_list_a_value_a_queue_a_lock_and_an_event() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let l: ListProxy<u8> = m.list_from(vec![1, 2, 3]).unwrap();
        l.push(4).unwrap();
        l.insert(0, 0).unwrap();
        l.extend([5, 6]).unwrap();
        assert_eq!(l.to_vec().unwrap(), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(l.set(1, 10).unwrap(), 1);
        assert_eq!(l.remove(2).unwrap(), 2);
        assert_eq!(l.pop().unwrap(), Some(6));
        assert_eq!(l.update(0, |x| x + 100).unwrap(), 100);
        assert!(matches!(l.get(99), Err(Error::OutOfRange { index: 99, len: 5 })));
        assert!(matches!(l.set(5, 0), Err(Error::OutOfRange { .. })));
        l.reverse().unwrap();
        assert_eq!(l.to_vec().unwrap(), [5, 4, 3, 10, 100]);
        l.clear().unwrap();
        assert_eq!(l.pop().unwrap(), None);

        let v: ValueProxy<(u32, String)> = m.value((1, "one".into())).unwrap();
        v.set((2, "two".into())).unwrap();
        assert_eq!(v.update(|(n, s)| (n + 1, s + "!")).unwrap(), (3, "two!".into()));
        assert_eq!(v.get().unwrap(), (3, "two!".into()));

        let q: QueueProxy<String> = m.queue().unwrap();
        q.put("x".into()).unwrap();
        q.put("y".into()).unwrap();
        assert_eq!(q.len().unwrap(), 2);
        assert_eq!(q.get().unwrap(), "x");
        assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), "y");
        let start = Instant::now();
        assert!(matches!(q.get_timeout(Duration::from_millis(100)), Err(Error::Empty { waited: Some(_) })));
        assert!(start.elapsed() >= Duration::from_millis(100));

        let lock = m.lock().unwrap();
        let g = lock.acquire().unwrap();
        let other = lock.clone();
        let busy = std::thread::spawn(move || other.acquire_timeout(Duration::from_millis(100)).unwrap().is_none());
        assert!(busy.join().unwrap(), "held by another thread");
        drop(g);
        assert!(lock.acquire_timeout(Duration::from_millis(100)).unwrap().is_some());

        let e = m.event().unwrap();
        assert!(!e.is_set().unwrap());
        assert!(!e.wait_timeout(Duration::from_millis(50)).unwrap());
        e.set().unwrap();
        assert!(e.is_set().unwrap() && e.wait_timeout(Duration::ZERO).unwrap());
        e.wait().unwrap();
        e.clear().unwrap();
        assert!(!e.is_set().unwrap());

        // the same name, another type: refused with both
        m.named_dict::<u32, u32>("d").unwrap();
        let err = m.named_dict::<u32, String>("d").unwrap_err();
        assert!(err.to_string().contains("String"), "{err}");
        let same: DictProxy<u32, u32> = m.named_dict("d").unwrap();
        same.insert(1, 1).unwrap();
        assert_eq!(m.named_dict::<u32, u32>("d").unwrap().get(&1).unwrap(), Some(1));
    });
}

#[process_fn]
fn add_many(d: DictProxy<String, u64>, me: u32, n: u32) {
    for i in 0..n {
        d.update(&"total".to_string(), |v| Some(v.unwrap_or(0) + 1)).unwrap();
        d.insert(format!("{me}-{i}"), i as u64).unwrap();
    }
}

#[test]
fn many_processes_updating_one_dict_lose_no_update() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let d = m.dict().unwrap();
        let children: Vec<_> = (0..4).map(|me| add_many.spawn(d.clone(), me, 300).unwrap()).collect();
        children.into_iter().for_each(|c| join(c).unwrap());
        assert_eq!(d.get(&"total".to_string()).unwrap(), Some(1200));
        assert_eq!(d.len().unwrap(), 1201);
    });
}

#[process_fn]
fn pool_task(l: ListProxy<u32>, x: u32) -> u32 {
    l.push(x).unwrap();
    x * 2
}

#[process_fn]
fn greet_worker(l: ListProxy<u32>) {
    l.push(std::process::id()).unwrap();
}

#[test]
fn proxies_go_to_pool_tasks_and_initializers() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let workers: ListProxy<u32> = m.list().unwrap();
        let pool = Pool::builder().workers(2).initializer(greet_worker, (workers.clone(),)).build().unwrap();
        let mut pids = pool.pids();
        pids.sort();
        let start = Instant::now();
        while workers.len().unwrap() < 2 && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut greeted = workers.to_vec().unwrap();
        greeted.sort();
        assert_eq!(greeted, pids, "each worker's initializer used the proxy");
        drop(pool);

        let l = m.list().unwrap();
        let pool = Pool::new(2).unwrap();
        let out = pool.starmap(pool_task, (0..50).map(|x| (l.clone(), x))).unwrap();
        assert_eq!(out, (0..50).map(|x| x * 2).collect::<Vec<_>>());
        let mut got = l.to_vec().unwrap();
        got.sort();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    });
}

#[process_fn]
fn hold_and_hang(lock: LockProxy, ready: Event) {
    let _g = lock.acquire().unwrap();
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
}

#[process_fn]
fn take_one(q: QueueProxy<u32>, started: Event) -> u32 {
    started.set();
    q.get().unwrap()
}

#[test]
fn a_client_killed_holding_a_lock_or_waiting_on_a_queue_costs_the_others_nothing() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let lock = m.lock().unwrap();
        let ready = Event::new().unwrap();
        let mut holder = hold_and_hang.spawn(lock.clone(), ready.clone()).unwrap();
        assert!(ready.wait_timeout(DEADLINE));
        assert!(lock.acquire_timeout(Duration::from_millis(50)).unwrap().is_none());
        holder.kill().unwrap();
        let _ = holder.join_timeout(DEADLINE);
        assert!(lock.acquire_timeout(DEADLINE).unwrap().is_some(), "released when its client died");

        let q = m.queue().unwrap();
        let started = Event::new().unwrap();
        let mut taker = take_one.spawn(q.clone(), started.clone()).unwrap();
        assert!(started.wait_timeout(DEADLINE));
        std::thread::sleep(Duration::from_millis(50)); // waiting at the server
        taker.kill().unwrap();
        let _ = taker.join_timeout(DEADLINE);
        q.put(7).unwrap();
        assert_eq!(q.get_timeout(DEADLINE).unwrap(), 7, "the item did not go to the dead client");
        assert_eq!(m.dict::<u8, u8>().unwrap().len().unwrap(), 0, "the server goes on");
    });
}

#[test]
fn a_holder_asking_for_its_own_lock_with_a_timeout_gets_none_and_without_one_an_error() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let lock = m.lock().unwrap();
        let g = lock.acquire().unwrap();
        assert!(lock.acquire_timeout(Duration::ZERO).unwrap().is_none(), "Ok(None), as documented");
        let t = Instant::now();
        assert!(lock.acquire_timeout(Duration::from_secs(5)).unwrap().is_none());
        assert!(t.elapsed() < Duration::from_secs(4), "no wait can free it, so none is made");
        match lock.acquire() {
            Err(Error::ManagerOperation { message }) => {
                assert!(message.contains("holds the lock already"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        drop(g);
        assert!(lock.acquire_timeout(Duration::ZERO).unwrap().is_some(), "still usable after all that");
    });
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// In a child of its own, so that no other test's descriptors count: descriptors open after
/// a long-lived thread used many managers, local and remote, each dropped after, and after
/// short-lived threads used one that stays.
#[process_fn]
fn descriptors_after_many_managers(local: u32, remote: u32) -> (usize, usize, usize) {
    let before = open_fds();
    for i in 0..local {
        let m = Manager::start().unwrap();
        let d: DictProxy<u32, u32> = m.dict().unwrap();
        d.insert(i, i).unwrap();
    }
    for i in 0..remote {
        let server = Manager::serve("127.0.0.1:0", KEY).unwrap();
        let m = Manager::connect(server.local_addr().unwrap(), KEY).unwrap();
        m.named_dict::<u32, u32>("d").unwrap().insert(i, i).unwrap();
    }
    let after_managers = open_fds();
    let m = Manager::start().unwrap();
    let d: DictProxy<u32, u32> = m.dict().unwrap();
    let with_one = open_fds();
    for i in 0..20 {
        let d = d.clone();
        std::thread::spawn(move || d.insert(i, i).unwrap()).join().unwrap();
    }
    assert_eq!(d.len().unwrap(), 20);
    (before, after_managers, open_fds() - with_one)
}

#[test]
fn a_threads_connections_close_with_their_manager_or_their_thread() {
    within(DEADLINE, || {
        let (before, after, left_by_threads) = join(descriptors_after_many_managers.spawn(100, 20).unwrap()).unwrap();
        assert!(after <= before + 2, "{before} descriptors before 120 managers came and went, {after} after");
        assert!(left_by_threads <= 1, "20 ended threads left {left_by_threads} descriptors open");
    });
}

#[test]
fn a_dead_server_is_manager_gone_at_once_for_waiting_and_new_requests() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let q: QueueProxy<u32> = m.queue().unwrap();
        let d: DictProxy<u32, u32> = m.dict().unwrap();
        let waiting = {
            let q = q.clone();
            std::thread::spawn(move || q.get())
        };
        std::thread::sleep(Duration::from_millis(50));
        let pid = m.pid().unwrap();
        common::signal(pid, libc::SIGKILL);
        assert!(matches!(waiting.join().unwrap(), Err(Error::ManagerGone)));
        assert!(matches!(d.insert(1, 1), Err(Error::ManagerGone)));
        assert!(matches!(m.dict::<u8, u8>(), Err(Error::ManagerGone)));
    });
}

#[test]
fn dropping_the_manager_ends_its_server() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let d: DictProxy<u32, u32> = m.dict().unwrap();
        let pid = m.pid().unwrap();
        drop(m);
        assert!(common::ends_within(pid, DEADLINE));
        assert!(matches!(d.get(&1), Err(Error::ManagerGone)));
    });
}

#[derive(Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Serialize, Deserialize)]
enum Txn {
    Deposit(i64),
    Withdraw(i64),
    Balance,
    Crash,
}

impl Served for Account {
    type Request = Txn;
    type Response = Result<i64, String>;
    fn handle(&mut self, txn: Txn) -> Result<i64, String> {
        match txn {
            Txn::Deposit(n) => self.balance += n,
            Txn::Withdraw(n) if n > self.balance => return Err(format!("only {} left", self.balance)),
            Txn::Withdraw(n) => self.balance -= n,
            Txn::Balance => {}
            Txn::Crash => panic!("the account's code panicked"),
        }
        Ok(self.balance)
    }
}

served!(Account);

#[process_fn]
fn deposit_many(account: multiproc::ObjectProxy<Account>, n: u32) {
    for _ in 0..n {
        account.call(Txn::Deposit(1)).unwrap().unwrap();
    }
}

#[test]
fn a_served_type_is_called_with_typed_requests_and_survives_its_own_panic() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let account = m.serve_object(Account { balance: 10 }).unwrap();
        assert_eq!(account.call(Txn::Withdraw(3)).unwrap(), Ok(7));
        assert_eq!(account.call(Txn::Withdraw(30)).unwrap(), Err("only 7 left".into()));
        let children: Vec<_> = (0..3).map(|_| deposit_many.spawn(account.clone(), 100).unwrap()).collect();
        children.into_iter().for_each(|c| join(c).unwrap());
        assert_eq!(account.call(Txn::Balance).unwrap(), Ok(307));
        let err = account.call(Txn::Crash).unwrap_err();
        assert!(
            matches!(&err, Error::ManagerOperation { message } if message.contains("the account's code panicked")),
            "{err}"
        );
        assert_eq!(account.call(Txn::Balance).unwrap(), Ok(307), "the server goes on");
        let named = m.named_object("acct", Account { balance: 1 }).unwrap();
        assert_eq!(named.call(Txn::Balance).unwrap(), Ok(1));
    });
}

#[derive(Serialize, Deserialize)]
struct Unregistered;

impl Served for Unregistered {
    type Request = ();
    type Response = ();
    fn handle(&mut self, _: ()) {}
}

#[test]
fn a_served_type_without_served_is_refused_with_what_to_write() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let err = m.serve_object(Unregistered).unwrap_err();
        assert!(matches!(&err, Error::ManagerOperation { message } if message.contains("served!")), "{err}");
        assert!(m.dict::<u8, u8>().unwrap().is_empty().unwrap(), "the server goes on");
    });
}

const KEY: &[u8] = b"the key";

#[test]
fn a_wrong_key_is_refused_and_touches_nothing() {
    within(DEADLINE, || {
        let server = Manager::serve("127.0.0.1:0", KEY).unwrap();
        let addr = server.local_addr().unwrap();
        let d: DictProxy<u32, u32> = server.named_dict("d").unwrap();
        assert!(matches!(Manager::connect(addr, b"not the key"), Err(Error::AuthenticationFailed)));
        assert!(matches!(Manager::connect(addr, b""), Err(Error::AuthenticationFailed)));
        assert!(d.is_empty().unwrap());
        let client = Manager::connect(addr, KEY).unwrap();
        client.named_dict::<u32, u32>("d").unwrap().insert(1, 2).unwrap();
        assert_eq!(d.get(&1).unwrap(), Some(2));
    });
}

/// Sends `bytes` to the server raw, and returns what came back before it hung up.
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn garbage_truncated_frames_slow_and_many_clients_leave_the_server_serving() {
    within(DEADLINE, || {
        let server = Manager::serve("127.0.0.1:0", KEY).unwrap();
        let addr = server.local_addr().unwrap();
        let counter: ValueProxy<u64> = server.named_value("n", 0).unwrap();
        // a slow client: connected, silent
        let _slow = TcpStream::connect(addr).unwrap();
        // garbage of every shape
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..30 {
            let len = (round * 37) % 300;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let reply = raw(addr, &bytes);
            assert!(reply.len() <= 8 + 32 + 4, "the server said more than its greeting: {} bytes", reply.len());
        }
        raw(addr, b"MPMGR\x00\x01\x00"); // a greeting, then nothing
        raw(addr, &[0xff; 10_000]);
        // many clients at once, each with its own connection
        let threads: Vec<_> = (0..32)
            .map(|_| {
                std::thread::spawn(move || {
                    let m = Manager::connect(addr, KEY).unwrap();
                    let n: ValueProxy<u64> = m.named_value("n", 0).unwrap();
                    for _ in 0..20 {
                        n.update(|x| x + 1).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.get().unwrap(), 640);
    });
}

/// A client's side of the handshake, written here from the protocol (not the library's code):
/// an authenticated raw connection, for sending what the library never sends.
fn authenticated(addr: std::net::SocketAddr) -> TcpStream {
    use hmac::{Hmac, Mac};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hello = [0u8; 8 + 32];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"MPMGR\x00\x01\x00");
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(KEY).unwrap();
    mac.update(b"client");
    mac.update(&hello[8..]);
    let mut out = hello[..8].to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    out.extend_from_slice(&[1u8; 32]); // our challenge
    s.write_all(&out).unwrap();
    let mut verdict = [0u8; 4 + 32];
    s.read_exact(&mut verdict).unwrap();
    assert_eq!(&verdict[..4], b"OKAY");
    s
}

/// Whether the server hung up on `s` (within the deadline).
fn hung_up(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn after_the_handshake_an_oversize_malformed_or_truncated_frame_closes_only_that_connection() {
    within(DEADLINE, || {
        let server = Manager::serve("127.0.0.1:0", KEY).unwrap();
        let addr = server.local_addr().unwrap();
        let e: EventProxy = server.named_event("e").unwrap();
        let mut s = authenticated(addr);
        s.write_all(&(1u32 << 30).to_le_bytes()).unwrap(); // claims 1 GiB: refused unread
        assert!(hung_up(s));
        let mut s = authenticated(addr);
        s.write_all(&8u32.to_le_bytes()).unwrap();
        s.write_all(&[0xee; 8]).unwrap(); // not a request
        assert!(hung_up(s));
        let mut s = authenticated(addr);
        s.write_all(&100u32.to_le_bytes()).unwrap();
        s.write_all(&[0; 10]).unwrap(); // ... and the other 90 bytes never come
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(hung_up(s));
        let m = Manager::connect(addr, KEY).unwrap();
        m.named_event("e").unwrap().set().unwrap();
        assert!(e.is_set().unwrap(), "the server goes on");
        // and the library's own client refuses a frame over the limit before sending it
        let q: QueueProxy<Vec<u8>> = m.named_queue("big").unwrap();
        assert!(q.put(vec![0u8; 80 << 20]).is_err());
        assert!(q.is_empty().unwrap());
    });
}

/// A client that sends nothing after the greeting, and one that sends a byte of the
/// handshake every 1.5 s (slowloris): both are cut off when the whole handshake's 10 s are up.
#[test]
fn a_client_that_never_finishes_the_handshake_is_cut_off_even_if_it_drips_bytes() {
    within(DEADLINE, || {
        let server = Manager::serve("127.0.0.1:0", KEY).unwrap();
        let addr = server.local_addr().unwrap();
        let client = |drip: bool| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let start = Instant::now();
                let mut greeting = [0u8; 40];
                (&s).read_exact(&mut greeting).unwrap();
                let mut sent = 0;
                while drip && sent < 8 + 64 {
                    std::thread::sleep(Duration::from_millis(1500));
                    s.set_nonblocking(true).unwrap();
                    let closed =
                        !matches!((&s).read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                    s.set_nonblocking(false).unwrap();
                    if closed || (&s).write_all(&greeting[sent % 8..sent % 8 + 1]).is_err() {
                        break; // cut off: the server closed the connection
                    }
                    sent += 1;
                    if start.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
                assert!(hung_up(s), "still connected after {:?}", start.elapsed());
                (start.elapsed(), sent)
            })
        };
        let (silent, dripping) = (client(false), client(true));
        let (waited, _) = silent.join().unwrap();
        assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(13), "silent: {waited:?}");
        let (waited, sent) = dripping.join().unwrap();
        assert!(waited < Duration::from_secs(13), "dripping {sent} bytes: cut off only after {waited:?}");
        assert!(sent >= 5, "it was sending: {sent} bytes in {waited:?}");
    });
}

#[process_fn]
fn remote_put(q: QueueProxy<String>) {
    q.put("from a child".into()).unwrap();
}

#[test]
fn a_remote_proxy_crosses_to_a_child_inside_a_frame_only() {
    within(DEADLINE, || {
        let server = Manager::serve("127.0.0.1:0", KEY).unwrap();
        let m = Manager::connect(server.local_addr().unwrap(), KEY).unwrap();
        let q: QueueProxy<String> = m.named_queue("q").unwrap();
        join(remote_put.spawn(q.clone()).unwrap()).unwrap();
        assert_eq!(q.get_timeout(DEADLINE).unwrap(), "from a child");
        let err = serde_json::to_string(&q).unwrap_err();
        assert!(err.to_string().contains("can only cross"), "{err}");
    });
}

#[process_fn]
fn own_a_manager_and_hang(tell: multiproc::Sender<u32>) {
    let m = Manager::start().unwrap();
    tell.send(m.pid().unwrap()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_manager_whose_owner_is_killed_ends_too() {
    within(DEADLINE, || {
        let (rx, tx) = multiproc::pipe_one_way::<u32>().unwrap();
        let mut owner = own_a_manager_and_hang.spawn(tx).unwrap();
        let server = rx.recv_timeout(DEADLINE).unwrap();
        assert!(!common::ends_within(server, Duration::from_millis(100)), "the server runs");
        owner.kill().unwrap();
        let _ = owner.join_timeout(DEADLINE);
        assert!(common::ends_within(server, DEADLINE), "the server outlived its owner");
    });
}

#[test]
fn a_dict_made_from_items_holds_them_in_order_and_the_last_of_a_repeated_key() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let d = m.dict_from([(3u32, "c".to_string()), (1, "a".into()), (3, "z".into()), (2, "b".into())]).unwrap();
        assert_eq!(d.items().unwrap(), [(3, "z".into()), (1, "a".into()), (2, "b".into())]);
        let many = m.dict_from((0..10_000u64).map(|k| (k, k * k))).unwrap();
        assert_eq!(many.len().unwrap(), 10_000);
        assert_eq!(many.get(&9_999).unwrap(), Some(9_999 * 9_999));
    });
}

/// Serves a manager at `port` in this child until it is killed.
#[process_fn]
fn serve_forever_at(port: u16) {
    match Manager::serve_forever(("127.0.0.1", port), KEY) {
        Ok(never) => match never {},
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn serve_forever_serves_remote_clients_from_a_process_whose_only_job_it_is() {
    // a free port, then the child listens on it (a port taken meanwhile fails the child)
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = serve_forever_at.spawn(port).unwrap();
    let start = Instant::now();
    let m = loop {
        match Manager::connect(("127.0.0.1", port), KEY) {
            Ok(m) => break m,
            Err(e) if start.elapsed() < DEADLINE && server.is_alive() => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no manager at {port}: {e} (server alive: {})", server.is_alive()),
        }
    };
    let jobs = m.named_dict::<String, u32>("jobs").unwrap();
    jobs.insert("a".into(), 1).unwrap();
    let again = Manager::connect(("127.0.0.1", port), KEY).unwrap();
    assert_eq!(again.named_dict::<String, u32>("jobs").unwrap().get(&"a".into()).unwrap(), Some(1));
    assert!(matches!(Manager::connect(("127.0.0.1", port), b"wrong key"), Err(Error::AuthenticationFailed)));
    server.kill().unwrap();
    assert!(matches!(join(server), Err(Error::Killed { .. })));
}

/// Sorts the list while another process keeps pushing to it; returns nothing.
#[process_fn]
fn push_many(l: ListProxy<u64>, from: u64) {
    for x in from..from + 200 {
        l.push(x).unwrap();
    }
}

#[test]
fn list_and_dict_have_pythons_operations_and_modify_is_whole() {
    within(DEADLINE, || {
        let m = Manager::start().unwrap();
        let l = m.list_from(vec![3u64, 1, 4, 1, 5, 9, 2, 6]).unwrap();
        assert!(l.contains(&4).unwrap() && !l.contains(&7).unwrap());
        assert_eq!((l.count(&1).unwrap(), l.count(&8).unwrap()), (2, 0));
        assert_eq!((l.index(&1).unwrap(), l.index(&7).unwrap()), (Some(1), None));
        assert!(l.remove_value(&1).unwrap() && !l.remove_value(&7).unwrap());
        assert_eq!(l.to_vec().unwrap(), [3, 4, 1, 5, 9, 2, 6]);
        l.sort().unwrap();
        assert_eq!(l.to_vec().unwrap(), [1, 2, 3, 4, 5, 6, 9]);
        l.extend([0, 10]).unwrap();
        // a sort racing with another process's pushes loses none of them
        let big = m.list::<u64>().unwrap();
        let pusher = push_many.spawn(big.clone(), 1_000).unwrap();
        for _ in 0..20 {
            big.modify(|v| v.sort_by(|a, b| b.cmp(a))).unwrap();
        }
        join(pusher).unwrap();
        let mut all = big.to_vec().unwrap();
        all.sort();
        assert_eq!(all, (1_000..1_200).collect::<Vec<_>>());

        let d = m.dict_from([(1u32, "a".to_string()), (2, "b".into())]).unwrap();
        d.extend([(3, "c".to_string()), (1, "z".into())]).unwrap();
        assert_eq!(d.items().unwrap(), [(1, "z".into()), (2, "b".into()), (3, "c".into())]);
        assert_eq!(d.pop_item().unwrap(), Some((3, "c".into())));
        assert_eq!(d.len().unwrap(), 2);
        // items() is a snapshot: changing the dict while iterating over it is fine
        for (k, _) in d.items().unwrap() {
            d.remove(&k).unwrap();
        }
        assert_eq!(d.pop_item().unwrap(), None);
    });
}
