//! The manager's server: the objects, and a thread per connection that serves its requests.
//!
//! Every request is read whole before anything is done, so a client that dies in the middle of
//! sending one changes nothing. Each object has a lock of its own: a request is atomic, and a
//! request that waits (a queue's `get`, a lock, an event) holds no other object up. A reply
//! that cannot be delivered (its client died while it waited) is undone: a queue's item goes
//! back to the front, a lock taken is released. Locks a connection holds are released when it
//! closes.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde_bytes::ByteBuf;

use crate::manager::proto::{self, Answer, Failure, ObjectKind, Op, Reply, Request};
use crate::manager::queue_state::{self, QueueState};
use crate::manager::served::{self, CallFailed, Erased};
use crate::manager::sync_state::{self, BarrierState, LockState, SemState};

/// The objects a server holds.
#[derive(Default)]
pub(crate) struct Store {
    objects: Mutex<HashMap<u64, Arc<Object>>>,
    names: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
    /// The client processes that said hello, by their number.
    clients: Mutex<HashMap<u64, Client>>,
}

/// A client process, as the server knows it.
struct Client {
    pid: u32,
    /// Its connections open now.
    conns: usize,
    /// Over TCP: its pid means nothing here.
    remote: bool,
}

struct Object {
    kind: ObjectKind,
    /// The client's type name(s) when it was made; a request naming another is refused.
    ty: String,
    state: State,
}

enum State {
    Dict(Mutex<IndexMap<Vec<u8>, Vec<u8>>>),
    List(Mutex<Vec<Vec<u8>>>),
    Value(Mutex<Vec<u8>>),
    Queue(Mutex<QueueState>, Condvar),
    Lock(Mutex<LockState>, Condvar),
    Semaphore(Mutex<SemState>, Condvar),
    Barrier(Mutex<BarrierState>, Condvar),
    Event(Mutex<bool>, Condvar),
    Served(Mutex<Box<dyn Erased>>),
}

/// How long a waiting request sleeps before it looks whether its client is still there.
const LOOK_EVERY: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection being served, as a request's handler sees it.
pub(crate) struct Peer<'a> {
    pub(crate) id: u64,
    /// Whether the client hung up (checked while a request waits).
    pub(crate) gone: &'a dyn Fn() -> bool,
    /// Over TCP.
    pub(crate) remote: bool,
    /// The client process's number and pid, from its hello (0 until then).
    pub(crate) process: Cell<u64>,
    pub(crate) pid: Cell<u32>,
}

impl<'a> Peer<'a> {
    pub(crate) fn new(id: u64, gone: &'a dyn Fn() -> bool, remote: bool) -> Peer<'a> {
        Peer { id, gone, remote, process: Cell::new(0), pid: Cell::new(0) }
    }
}

/// What a reply leaves to do: something it hands over (given back if it cannot be delivered).
pub(crate) enum Effect {
    /// The connection holds some of object `id` (a lock, a semaphore's count): given back
    /// when it goes.
    Holds(u64),
    /// The item taken from queue `id`: put back if the reply cannot be delivered.
    PutBack(u64, Vec<u8>),
}

impl Store {
    pub(crate) fn new() -> Arc<Store> {
        Arc::new(Store { next: AtomicU64::new(1), ..Default::default() })
    }

    fn hello(&self, peer: &Peer<'_>, process: u64, pid: u32) {
        if peer.process.get() != 0 || process == 0 {
            return; // said once per connection
        }
        peer.process.set(process);
        peer.pid.set(pid);
        let mut clients = lock(&self.clients);
        let c = clients.entry(process).or_insert(Client { pid, conns: 0, remote: peer.remote });
        c.conns += 1;
    }

    fn bye(&self, peer: &Peer<'_>) {
        if let Some(c) = lock(&self.clients).get_mut(&peer.process.get()) {
            c.conns -= 1;
        }
    }

    /// Whether client process `process` has gone: none of its connections is open, and (on
    /// this machine) no process has its pid. One not known is not gone.
    pub(crate) fn gone(&self, process: u64) -> bool {
        let clients = lock(&self.clients);
        clients.get(&process).is_some_and(|c| c.conns == 0 && (c.remote || !crate::sys::process_exists(c.pid)))
    }

    /// Serves one connection until it closes or sends garbage; then releases what it held.
    pub(crate) fn serve<S: Read + Write>(&self, stream: proto::Framed<S>, peer: &Peer<'_>) {
        let mut stream = stream;
        // the objects this connection holds some of (each once, however often): released if
        // it goes
        let mut held = std::collections::HashSet::new();
        while let Ok(Some(request)) = stream.recv::<Request>() {
            if let Request::Hello { process, pid } = request {
                self.hello(peer, process, pid);
                continue;
            }
            let (reply, effect) = self.handle(request, peer);
            if let Some(Effect::Holds(id)) = &effect {
                held.insert(*id);
            }
            // A reply that hands something over (an item, a lock) goes only to a client still
            // there: a write into shared memory does not fail when the reader is gone, as one
            // into a socket does, so look first (only for these replies: one poll each).
            let gone = effect.is_some() && (peer.gone)();
            if gone || stream.send(&reply).is_err() {
                if let Some(Effect::PutBack(id, item)) = effect {
                    self.put_back(id, item, peer.process.get());
                }
                break;
            }
        }
        for id in held {
            self.release(id, peer.id); // only what this connection still holds
        }
        self.bye(peer);
    }

    fn get(&self, id: u64) -> Option<Arc<Object>> {
        lock(&self.objects).get(&id).cloned()
    }

    fn handle(&self, request: Request, peer: &Peer<'_>) -> (Reply, Option<Effect>) {
        match request {
            Request::Create { kind, ty, name, init } => (self.create(kind, ty, name, init.into_vec()), None),
            Request::Hello { .. } => (Err(Failure::Other("a second hello".into())), None),
            Request::Call { id, op } => match self.get(id) {
                None => (Err(Failure::Other(format!("the manager holds no object {id}"))), None),
                Some(o) => self.call(id, &o, op, peer),
            },
        }
    }

    fn create(&self, kind: ObjectKind, ty: String, name: Option<String>, init: Vec<u8>) -> Reply {
        let mut names = lock(&self.names);
        if let Some(id) = name.as_ref().and_then(|n| names.get(n)) {
            let o = self.get(*id).expect("a named object is in the store");
            if o.kind != kind || o.ty != ty {
                return Err(Failure::Mismatch(format!(
                    "the object named {:?} is a {:?} of {}, not a {kind:?} of {ty}",
                    name.unwrap_or_default(),
                    o.kind,
                    o.ty
                )));
            }
            return Ok(Answer::Created(*id));
        }
        let state = match &kind {
            ObjectKind::Dict => State::Dict(Mutex::new(decode_pairs(&init)?)),
            ObjectKind::List => State::List(Mutex::new(decode_items(&init)?)),
            ObjectKind::Value => State::Value(Mutex::new(init)),
            ObjectKind::Queue | ObjectKind::JoinableQueue => {
                State::Queue(Mutex::new(QueueState::new(&init, kind == ObjectKind::JoinableQueue)?), Condvar::new())
            }
            ObjectKind::Lock | ObjectKind::RLock | ObjectKind::Condition => {
                State::Lock(Mutex::new(LockState::new(&kind)), Condvar::new())
            }
            ObjectKind::Semaphore => State::Semaphore(Mutex::new(SemState::new(&init)?), Condvar::new()),
            ObjectKind::Barrier => State::Barrier(Mutex::new(BarrierState::new(&init)?), Condvar::new()),
            ObjectKind::Event => State::Event(Mutex::default(), Condvar::new()),
            ObjectKind::Served(type_name) => {
                let entry = served::find(type_name).ok_or_else(|| {
                    Failure::Other(format!(
                        "the manager's program has no `served!({type_name})`; register the type with `multiproc::served!`, in the program that runs the manager"
                    ))
                })?;
                State::Served(Mutex::new((entry.make)(&init).map_err(Failure::Other)?))
            }
        };
        let id = self.next.fetch_add(1, Relaxed);
        lock(&self.objects).insert(id, Arc::new(Object { kind, ty, state }));
        if let Some(name) = name {
            names.insert(name, id);
        }
        Ok(Answer::Created(id))
    }

    /// Puts back an item whose reply could not be delivered.
    fn put_back(&self, id: u64, item: Vec<u8>, process: u64) {
        if let Some(o) = self.get(id) {
            if let State::Queue(q, cond) = &o.state {
                lock(q).put_back(item, process);
                cond.notify_all();
            }
        }
    }

    /// Gives back what connection `conn` holds of object `id`.
    fn release(&self, id: u64, conn: u64) {
        if let Some(o) = self.get(id) {
            match &o.state {
                State::Lock(s, cond) => sync_state::release_lock((s, cond), conn),
                State::Semaphore(s, cond) => sync_state::release_semaphore((s, cond), conn),
                _ => {}
            }
        }
    }
}

fn decode_items(init: &[u8]) -> Result<Vec<Vec<u8>>, Failure> {
    if init.is_empty() {
        return Ok(Vec::new());
    }
    bincode::deserialize::<Vec<ByteBuf>>(init)
        .map(|v| v.into_iter().map(ByteBuf::into_vec).collect())
        .map_err(|e| Failure::Other(format!("bad initial items: {e}")))
}

/// A dict's initial contents, in order (a key given twice keeps its last value).
fn decode_pairs(init: &[u8]) -> Result<IndexMap<Vec<u8>, Vec<u8>>, Failure> {
    if init.is_empty() {
        return Ok(IndexMap::new());
    }
    bincode::deserialize::<Vec<(ByteBuf, ByteBuf)>>(init)
        .map(|v| v.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect())
        .map_err(|e| Failure::Other(format!("bad initial items: {e}")))
}

fn buf(v: Vec<u8>) -> ByteBuf {
    ByteBuf::from(v)
}

fn out_of_range(index: u64, len: usize) -> Failure {
    Failure::OutOfRange { index, len: len as u64 }
}

fn mismatch(o: &Object, op: &Op) -> Failure {
    Failure::Mismatch(format!("{op:?} does not apply to a {:?}", o.kind))
}

/// Waits on `cond` until `ready` says so, the deadline passes or the client is gone. After
/// each sleep the client is looked for first: a request whose client died while it waited
/// (a put waiting for room, say) does nothing.
pub(crate) fn wait_until<'a, T>(
    mut guard: MutexGuard<'a, T>,
    cond: &Condvar,
    timeout_ms: Option<u64>,
    peer: &Peer<'_>,
    mut ready: impl FnMut(&mut T) -> bool,
) -> Result<MutexGuard<'a, T>, Failure> {
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut slept = false;
    loop {
        if slept && (peer.gone)() {
            return Err(Failure::Other("the client hung up".into()));
        }
        if ready(&mut guard) {
            return Ok(guard);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Failure::TimedOut);
        }
        let pause = deadline.map_or(LOOK_EVERY, |d| (d - now).min(LOOK_EVERY));
        guard = cond.wait_timeout(guard, pause).unwrap_or_else(|p| p.into_inner()).0;
        slept = true;
    }
}

impl Store {
    fn call(&self, id: u64, o: &Object, op: Op, peer: &Peer<'_>) -> (Reply, Option<Effect>) {
        let reply = match (&o.state, op) {
            (State::Dict(d), op) => dict(&mut lock(d), op).map_err(|op| mismatch(o, &op)),
            (State::List(l), op) => list(&mut lock(l), op).unwrap_or_else(|op| Err(mismatch(o, &op))),
            (State::Value(v), Op::ValueGet) => Ok(Answer::Item(Some(buf(lock(v).clone())))),
            (State::Value(v), Op::ValueSet(new)) => {
                *lock(v) = new.into_vec();
                Ok(Answer::Done)
            }
            (State::Value(v), Op::ValueCompareAndSet { expected, new }) => {
                let mut v = lock(v);
                let same = *v == *expected;
                if same {
                    *v = new.into_vec();
                }
                Ok(Answer::Bool(same))
            }
            (State::Queue(q, cond), op) => {
                return queue_state::call(self, id, (q, cond), op, peer)
                    .unwrap_or_else(|op| (Err(mismatch(o, &op)), None))
            }
            (State::Lock(l, cond), op) => {
                return sync_state::lock_call(id, (l, cond), op, peer)
                    .unwrap_or_else(|op| (Err(mismatch(o, &op)), None))
            }
            (State::Semaphore(v, cond), op) => {
                return sync_state::semaphore_call(id, (v, cond), op, peer)
                    .unwrap_or_else(|op| (Err(mismatch(o, &op)), None))
            }
            (State::Barrier(b, cond), op) => {
                return sync_state::barrier_call(self, (b, cond), op, peer)
                    .unwrap_or_else(|op| (Err(mismatch(o, &op)), None))
            }
            (State::Event(flag, cond), Op::EventSet) => {
                *lock(flag) = true;
                cond.notify_all();
                Ok(Answer::Done)
            }
            (State::Event(flag, _), Op::EventClear) => {
                *lock(flag) = false;
                Ok(Answer::Done)
            }
            (State::Event(flag, _), Op::EventIsSet) => Ok(Answer::Bool(*lock(flag))),
            (State::Event(flag, cond), Op::EventWait { timeout_ms }) => {
                match wait_until(lock(flag), cond, timeout_ms, peer, |f| *f) {
                    Ok(_) => Ok(Answer::Bool(true)),
                    Err(Failure::TimedOut) => Ok(Answer::Bool(false)),
                    Err(e) => Err(e),
                }
            }
            (State::Served(object), Op::Served(request)) => match lock(object).call(&request) {
                Ok(response) => Ok(Answer::Item(Some(buf(response)))),
                Err(CallFailed::Panicked(message)) => Err(Failure::Panicked(message)),
                Err(CallFailed::Codec(message)) => Err(Failure::Other(message)),
            },
            (_, op) => Err(mismatch(o, &op)),
        };
        (reply, None)
    }
}

/// A dict's operations; any other is given back.
fn dict(d: &mut IndexMap<Vec<u8>, Vec<u8>>, op: Op) -> Result<Answer, Op> {
    Ok(match op {
        Op::DictGet(k) => Answer::Item(d.get(&*k).cloned().map(buf)),
        Op::DictInsert(k, v) => Answer::Item(d.insert(k.into_vec(), v.into_vec()).map(buf)),
        Op::DictRemove(k) => Answer::Item(d.shift_remove(&*k).map(buf)),
        Op::DictContains(k) => Answer::Bool(d.contains_key(&*k)),
        Op::DictSetDefault(k, v) => Answer::Item(Some(buf(d.entry(k.into_vec()).or_insert(v.into_vec()).clone()))),
        Op::DictCompareAndSet { key, expected, new } => {
            let same = d.get(&*key).map(Vec::as_slice) == expected.as_deref().map(|e| &e[..]);
            if same {
                match new {
                    Some(v) => {
                        d.insert(key.into_vec(), v.into_vec());
                    }
                    None => {
                        d.shift_remove(&*key);
                    }
                }
            }
            Answer::Bool(same)
        }
        Op::DictItems => Answer::Pairs(d.iter().map(|(k, v)| (buf(k.clone()), buf(v.clone()))).collect()),
        Op::DictClear => {
            d.clear();
            Answer::Done
        }
        Op::DictPopItem => Answer::Pairs(d.pop().map(|(k, v)| (buf(k), buf(v))).into_iter().collect()),
        Op::DictExtend(pairs) => {
            d.extend(pairs.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())));
            Answer::Done
        }
        Op::Len => Answer::Count(d.len() as u64),
        op => return Err(op),
    })
}

/// A list's operations; any other is given back.
fn list(l: &mut Vec<Vec<u8>>, op: Op) -> Result<Reply, Op> {
    let len = l.len();
    let at = |i: u64| if i < len as u64 { Ok(i as usize) } else { Err(out_of_range(i, len)) };
    Ok(Ok(match op {
        Op::ListPush(v) => {
            l.push(v.into_vec());
            Answer::Done
        }
        Op::ListGet(i) => match at(i) {
            Ok(i) => Answer::Item(Some(buf(l[i].clone()))),
            Err(e) => return Ok(Err(e)),
        },
        Op::ListSet(i, v) => match at(i) {
            Ok(i) => Answer::Item(Some(buf(std::mem::replace(&mut l[i], v.into_vec())))),
            Err(e) => return Ok(Err(e)),
        },
        Op::ListInsert(i, v) => {
            l.insert((i as usize).min(len), v.into_vec());
            Answer::Done
        }
        Op::ListRemove(i) => match at(i) {
            Ok(i) => Answer::Item(Some(buf(l.remove(i)))),
            Err(e) => return Ok(Err(e)),
        },
        Op::ListPop => Answer::Item(l.pop().map(buf)),
        Op::ListItems => Answer::Items(l.iter().cloned().map(buf).collect()),
        Op::ListExtend(items) => {
            l.extend(items.into_iter().map(ByteBuf::into_vec));
            Answer::Done
        }
        Op::ListReverse => {
            l.reverse();
            Answer::Done
        }
        Op::ListClear => {
            l.clear();
            Answer::Done
        }
        Op::ListCount(v) => Answer::Count(l.iter().filter(|e| e[..] == v[..]).count() as u64),
        Op::ListIndex(v, start) => {
            let start = (start as usize).min(len);
            Answer::Index(l[start..].iter().position(|e| e[..] == v[..]).map(|i| (start + i) as u64))
        }
        Op::ListRemoveValue(v) => match l.iter().position(|e| e[..] == v[..]) {
            Some(i) => {
                l.remove(i);
                Answer::Bool(true)
            }
            None => Answer::Bool(false),
        },
        Op::ListReplaceIf { expected, new } => {
            let same = l.len() == expected.len() && l.iter().zip(&expected).all(|(a, b)| a[..] == b[..]);
            if same {
                *l = new.into_iter().map(ByteBuf::into_vec).collect();
            }
            Answer::Bool(same)
        }
        Op::ListCompareAndSet { index, expected, new } => match at(index) {
            Ok(i) if l[i] == *expected => {
                l[i] = new.into_vec();
                Answer::Bool(true)
            }
            Ok(_) => Answer::Bool(false),
            Err(e) => return Ok(Err(e)),
        },
        Op::Len => Answer::Count(len as u64),
        op => return Err(op),
    }))
}

/// The server process's main loop: takes connections from the acceptor (and the TCP
/// listener, after each client's handshake), each served on a thread of its own.
pub(crate) fn run(acceptor: std::os::fd::OwnedFd, tcp: Option<(std::net::TcpListener, Vec<u8>)>) {
    use std::os::fd::AsFd;
    crate::sys::ignore_sigpipe();
    crate::current::set(crate::current::Role::ManagerServer, None);
    let store = Store::new();
    let ids = Arc::new(AtomicU64::new(1));
    if let Some((listener, key)) = tcp {
        let (store, ids) = (Arc::clone(&store), Arc::clone(&ids));
        let key = Arc::new(key);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    std::thread::sleep(Duration::from_millis(10)); // out of descriptors, say
                    continue;
                };
                let (store, key, id) = (Arc::clone(&store), Arc::clone(&key), ids.fetch_add(1, Relaxed));
                std::thread::spawn(move || serve_tcp(&store, stream, &key, id));
            }
        });
    }
    loop {
        match crate::sys::recv_fds(acceptor.as_fd()) {
            Ok(Some(mut fds)) => {
                let (store, id) = (Arc::clone(&store), ids.fetch_add(1, Relaxed));
                let memfd = (fds.len() > 1).then(|| fds.pop()).flatten();
                let fd = fds.swap_remove(0);
                std::thread::spawn(move || {
                    let stream = std::os::unix::net::UnixStream::from(fd);
                    let Ok(watch) = stream.try_clone() else { return };
                    let gone = move || crate::sys::hung_up(watch.as_fd());
                    let peer = Peer::new(id, &gone, false);
                    match memfd {
                        Some(m) => {
                            // not a stream's memfd: the client's connection closes
                            if let Ok(shm) = crate::wire::shm_stream::ShmStream::attach(m, stream, 1) {
                                store.serve(proto::Framed::new(shm), &peer);
                            }
                        }
                        None => store.serve(proto::Framed::new(stream), &peer),
                    }
                });
            }
            // every handle is gone: nobody can connect any more; the owner ends this process
            Ok(None) => std::thread::park(),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One TCP client: the whole handshake within one time limit, then its requests.
fn serve_tcp(store: &Store, stream: std::net::TcpStream, key: &[u8], id: u64) {
    use crate::manager::auth::{self, ByDeadline};
    use std::os::fd::AsFd;
    let mut timed = ByDeadline::new(&stream, crate::manager::client::HANDSHAKE_TIMEOUT);
    if auth::serve(&mut timed, key).is_err() {
        return; // a wrong key, garbage, or too slow: nothing was read past the handshake
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    let Ok(watch) = stream.try_clone() else { return };
    let gone = move || crate::sys::hung_up(watch.as_fd());
    store.serve(proto::Framed::new(stream), &Peer::new(id, &gone, true));
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::manager::proto::Framed;

    /// A client of `store` on a socket pair, served on a thread, whose `gone` says what `gone`
    /// holds.
    fn client(store: &Arc<Store>, id: u64, gone: Arc<AtomicBool>) -> (Framed<UnixStream>, std::thread::JoinHandle<()>) {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let store = Arc::clone(store);
        let server = std::thread::spawn(move || {
            let is_gone = move || gone.load(SeqCst);
            store.serve(Framed::new(theirs), &Peer::new(id, &is_gone, false));
        });
        (Framed::new(mine), server)
    }

    fn ask(c: &mut Framed<UnixStream>, r: &Request) -> Reply {
        c.send(r).unwrap();
        c.recv::<Reply>().unwrap().expect("a reply")
    }

    fn call(id: u64, op: Op) -> Request {
        Request::Call { id, op }
    }

    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn a_joinable_item_whose_reply_cannot_be_delivered_goes_back_uncounted() {
        let store = Store::new();
        let gone = Arc::new(AtomicBool::new(false));
        let (mut a, served_a) = client(&store, 1, Arc::clone(&gone));
        // a process whose pid is alive (this one): only the take's undo can clear its count
        a.send(&Request::Hello { process: 7, pid: std::process::id() }).unwrap();
        let init = ByteBuf::new();
        let create = Request::Create { kind: ObjectKind::JoinableQueue, ty: "u8".into(), name: None, init };
        let Ok(Answer::Created(q)) = ask(&mut a, &create) else { panic!("made") };
        let put = call(q, Op::QueuePut { item: ByteBuf::from(vec![42]), timeout_ms: None });
        assert!(matches!(ask(&mut a, &put), Ok(Answer::Done)));
        // the client dies between the take and its reply
        gone.store(true, SeqCst);
        a.send(&call(q, Op::QueueGet { timeout_ms: None })).unwrap();
        served_a.join().unwrap();
        drop(a);

        let (mut b, served_b) = client(&store, 2, Arc::new(AtomicBool::new(false)));
        b.send(&Request::Hello { process: 8, pid: std::process::id() }).unwrap();
        assert!(matches!(ask(&mut b, &call(q, Op::Len)), Ok(Answer::Count(1))), "the item is back");
        let join = call(q, Op::QueueJoin { timeout_ms: Some(0) });
        assert!(matches!(ask(&mut b, &join), Err(Failure::Unfinished { tasks: 1 })), "unfinished, not lost");
        match ask(&mut b, &call(q, Op::QueueGet { timeout_ms: Some(0) })) {
            Ok(Answer::Item(Some(item))) => assert_eq!(item.into_vec(), [42]),
            other => panic!("the same item: {other:?}"),
        }
        assert!(matches!(ask(&mut b, &call(q, Op::QueueTaskDone)), Ok(Answer::Done)));
        assert!(matches!(ask(&mut b, &join), Ok(Answer::Done)));
        drop(b);
        served_b.join().unwrap();
    }

    #[test]
    fn a_lock_or_count_whose_reply_cannot_be_delivered_is_given_back() {
        let store = Store::new();
        let gone = Arc::new(AtomicBool::new(false));
        let (mut a, served_a) = client(&store, 1, Arc::clone(&gone));
        let make =
            |kind, init: Vec<u8>| Request::Create { kind, ty: "()".into(), name: None, init: ByteBuf::from(init) };
        let Ok(Answer::Created(l)) = ask(&mut a, &make(ObjectKind::RLock, vec![])) else { panic!("made") };
        let init = bincode::serialize(&(1u64, None::<u64>)).unwrap();
        let Ok(Answer::Created(s)) = ask(&mut a, &make(ObjectKind::Semaphore, init)) else { panic!("made") };
        // held twice, then a third take whose reply cannot be delivered
        let take = call(l, Op::LockAcquire { thread: 1, timeout_ms: None });
        assert!(matches!(ask(&mut a, &take), Ok(Answer::Done)));
        gone.store(true, SeqCst);
        a.send(&take).unwrap();
        served_a.join().unwrap();
        let (mut b, served_b) = client(&store, 2, Arc::new(AtomicBool::new(false)));
        let take_b = call(l, Op::LockAcquire { thread: 1, timeout_ms: Some(0) });
        assert!(matches!(ask(&mut b, &take_b), Ok(Answer::Done)), "free");

        let gone = Arc::new(AtomicBool::new(false));
        let (mut c, served_c) = client(&store, 3, Arc::clone(&gone));
        gone.store(true, SeqCst);
        c.send(&call(s, Op::SemaphoreAcquire { timeout_ms: None })).unwrap();
        served_c.join().unwrap();
        assert!(matches!(ask(&mut b, &call(s, Op::SemaphoreValue)), Ok(Answer::Count(1))), "the count is back");
        drop((a, b, c));
        served_b.join().unwrap();
    }
}
