//! How a client reaches its manager: a local server through its acceptor socket, a remote one
//! over TCP with the key; and each thread's connection to each manager it uses.
//!
//! Each thread has a connection of its own (made on its first request), so a thread waiting at
//! the server (a queue's `get`, a lock) holds no other thread of its process up. The endpoint
//! holds them, so they last as long as both it and their thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::manager::auth;
use crate::manager::proto::{Answer, Failure, Framed, Reply, Request};
use crate::sys;
use crate::wire::shm_stream::ShmStream;

/// How long a remote handshake may take, each way.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A manager as this process knows it, with each thread's connection to it. The connections
/// belong to it: they close when its last handle in this process is dropped, or when their
/// thread ends, so a long-lived thread that used many managers holds no socket to the gone.
pub(crate) struct Endpoint {
    pub(crate) place: Place,
    /// Each thread's connection, by thread number.
    conns: Mutex<HashMap<u64, Shared>>,
}

/// One thread's connection; shared only so that a request under way keeps it open.
type Shared = Arc<Mutex<Framed<Conn>>>;

/// Where a manager is.
#[derive(Debug)]
pub(crate) enum Place {
    /// A server started by this program: new connections are handed to it as descriptors
    /// through its acceptor (a sequenced-packet socket).
    Local { acceptor: OwnedFd },
    /// A server at a TCP address, that wants the key.
    Remote { addr: String, authkey: Vec<u8> },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.place {
            Place::Local { acceptor } => write!(f, "Endpoint::Local({acceptor:?})"),
            Place::Remote { addr, .. } => write!(f, "Endpoint::Remote({addr})"),
        }
    }
}

/// A connection to a manager.
pub(crate) enum Conn {
    /// A local manager's: bytes through shared memory (see `wire/shm_stream.rs`).
    Shm(ShmStream),
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Shm(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Shm(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Endpoint {
    fn new(place: Place) -> Endpoint {
        Endpoint { place, conns: Mutex::new(HashMap::new()) }
    }

    /// Whether `other` reaches the same manager (a local one is known once per process).
    pub(crate) fn same(self: &Arc<Self>, other: &Arc<Endpoint>) -> bool {
        Arc::ptr_eq(self, other)
            || matches!((&self.place, &other.place),
                (Place::Remote { addr: a, authkey: k }, Place::Remote { addr: b, authkey: l }) if a == b && k == l)
    }

    pub(crate) fn local(acceptor: OwnedFd) -> Endpoint {
        Endpoint::new(Place::Local { acceptor })
    }

    /// The endpoint of the remote manager at `addr` with `authkey`: the one this process knows
    /// already, if any, so that its proxies share each thread's connection.
    pub(crate) fn remote(addr: String, authkey: Vec<u8>) -> Arc<Endpoint> {
        type Known = HashMap<(String, Vec<u8>), Weak<Endpoint>>;
        static REMOTE: OnceLock<Mutex<Known>> = OnceLock::new();
        let mut known = REMOTE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|_, w| w.strong_count() > 0);
        let key = (addr, authkey);
        if let Some(e) = known.get(&key).and_then(Weak::upgrade) {
            return e;
        }
        let e = Arc::new(Endpoint::new(Place::Remote { addr: key.0.clone(), authkey: key.1.clone() }));
        known.insert(key, Arc::downgrade(&e));
        e
    }

    /// A new connection, framed, that has said which process it is from.
    fn connect(&self) -> Result<Framed<Conn>> {
        let mut conn = self.open()?;
        let hello = Request::Hello { process: process_token(), pid: std::process::id() };
        conn.send(&hello).map_err(|_| Error::ManagerGone)?; // not answered: no round trip
        Ok(conn)
    }

    fn open(&self) -> Result<Framed<Conn>> {
        match &self.place {
            Place::Local { acceptor } => {
                // bytes through shared memory, the socket for wake-ups and the end; a plain
                // socket if the memory cannot be had
                if let Ok((mine, theirs, memfd)) = ShmStream::pair() {
                    sys::send_fds(acceptor.as_fd(), &[theirs.as_fd(), memfd.as_fd()])
                        .map_err(|_| Error::ManagerGone)?;
                    return Ok(Framed::new(Conn::Shm(mine)));
                }
                let (mine, theirs) = UnixStream::pair().map_err(|e| Error::io("could not make a socket pair", e))?;
                sys::send_fds(acceptor.as_fd(), &[theirs.as_fd()]).map_err(|_| Error::ManagerGone)?;
                Ok(Framed::new(Conn::Unix(mine)))
            }
            Place::Remote { addr, authkey } => {
                let s =
                    TcpStream::connect(addr.as_str()).map_err(|e| Error::io("could not connect to the manager", e))?;
                s.set_nodelay(true).ok();
                match auth::connect(&mut auth::ByDeadline::new(&s, HANDSHAKE_TIMEOUT), authkey) {
                    Ok(()) => {}
                    Err(auth::Refused::WrongKey) => return Err(Error::AuthenticationFailed),
                    Err(auth::Refused::Io(e)) => return Err(Error::io("the manager's handshake failed", e)),
                }
                s.set_read_timeout(None).ok();
                s.set_write_timeout(None).ok();
                Ok(Framed::new(Conn::Tcp(s)))
            }
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Shared>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Thread `thread`'s connection, made now if it has none. A thread whose end is already
    /// under way gets a connection for this request only.
    fn conn(self: &Arc<Self>, thread: Option<u64>) -> Result<Shared> {
        let Some(thread) = thread else { return Ok(Arc::new(Mutex::new(self.connect()?))) };
        if let Some(c) = self.conns().get(&thread) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Mutex::new(self.connect()?));
        self.keep(thread, Arc::clone(&c));
        Ok(c)
    }

    /// Keeps `conn` as `thread`'s, to be closed when the thread ends if this endpoint is
    /// still here then.
    fn keep(self: &Arc<Self>, thread: u64, conn: Shared) {
        self.conns().insert(thread, conn);
        let _ = THREAD.try_with(|t| {
            let mut used = t.used.borrow_mut();
            used.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(self)));
            used.push(Arc::downgrade(self));
        });
    }

    /// Closes `thread`'s connection (unless a request on it is under way: then when it ends).
    fn forget(&self, thread: u64) {
        let gone = self.conns().remove(&thread);
        drop(gone); // outside the table's lock
    }
}

/// This process's number for managers: random, drawn once (a pid can be reused, and means
/// nothing on another machine).
fn process_token() -> u64 {
    static TOKEN: OnceLock<u64> = OnceLock::new();
    *TOKEN.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
        u64::from_le_bytes(b) ^ ((std::process::id() as u64) << 32) | 1
    })
}

/// The calling thread: its number, and the endpoints it has connections to.
struct ThisThread {
    id: u64,
    used: RefCell<Vec<Weak<Endpoint>>>,
}

impl Drop for ThisThread {
    fn drop(&mut self) {
        for endpoint in self.used.get_mut().drain(..).filter_map(|w| w.upgrade()) {
            endpoint.forget(self.id);
        }
    }
}

thread_local! {
    static THREAD: ThisThread = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ThisThread { id: NEXT.fetch_add(1, Relaxed), used: RefCell::new(Vec::new()) }
    };
}

/// This thread's number, or `None` while its thread-locals are being torn down.
fn this_thread() -> Option<u64> {
    THREAD.try_with(|t| t.id).ok()
}

/// Sends a request on this thread's connection to `endpoint` and returns the reply.
///
/// A server that is gone (the connection fails or closes) is [`Error::ManagerGone`]; the next
/// request tries a new connection.
pub(crate) fn call(endpoint: &Arc<Endpoint>, request: &Request) -> Result<Answer> {
    call_raw(endpoint, request)?.map_err(failure)
}

/// As [`call`], with the server's failure as it came.
pub(crate) fn call_raw(endpoint: &Arc<Endpoint>, request: &Request) -> Result<Reply> {
    let thread = this_thread();
    let conn = endpoint.conn(thread)?;
    let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    let reply = conn.send(request).and_then(|()| conn.recv::<Reply>());
    match reply {
        Ok(Some(reply)) => Ok(reply),
        // nothing was sent: the connection is as good as before
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(Error::io("could not send a request", e)),
        Ok(None) | Err(_) => {
            drop(conn);
            if let Some(thread) = thread {
                endpoint.forget(thread); // the next request tries a new connection
            }
            Err(Error::ManagerGone)
        }
    }
}

pub(crate) fn failure(f: Failure) -> Error {
    match f {
        Failure::OutOfRange { index, len } => Error::OutOfRange { index: index as usize, len: len as usize },
        Failure::Mismatch(message) | Failure::Other(message) => Error::ManagerOperation { message },
        Failure::TimedOut => Error::ManagerOperation { message: "a wait at the manager ran out".into() },
        Failure::Panicked(message) => {
            Error::ManagerOperation { message: format!("it panicked at the server: {message}") }
        }
        Failure::Full { maxsize } => Error::Full { maxsize: Some(maxsize as usize), waited: None },
        Failure::TaskDoneTooMany => Error::TaskDoneTooMany,
        Failure::TasksLost { pid, tasks } => Error::TasksLost { pid, tasks },
        Failure::Unfinished { tasks } => Error::TasksUnfinished { waited: Duration::ZERO, tasks },
        Failure::Broken(reason) => Error::BrokenBarrier { reason },
        Failure::OverReleased { bound } => Error::OverReleased { bound: bound.min(u32::MAX as u64) as u32 },
    }
}

/// Connects now, keeping the connection for this thread's next request: a wrong key is found
/// at once.
pub(crate) fn check(endpoint: &Arc<Endpoint>) -> Result<()> {
    let conn = Arc::new(Mutex::new(endpoint.connect()?));
    if let Some(thread) = this_thread() {
        endpoint.keep(thread, conn);
    }
    Ok(())
}
