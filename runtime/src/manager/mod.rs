//! Managers: a server process holding shared objects (dicts, lists, values, queues, locks,
//! conditions, semaphores, barriers, events, and a user's own types, and proxies inside them), reached through typed proxies, from this machine or, with
//! a key, from others over TCP. Python's `multiprocessing.Manager` and `BaseManager`.

pub(crate) mod auth;
mod client;
pub(crate) mod proto;
mod proxy;
mod queue_proxy;
mod queue_state;
mod served;
mod server;
mod sync_proxy;
mod sync_state;

use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::pool::InitOutcome;
use crate::process::Process;
use crate::process_fn;
use crate::sys::shm::ByIdentity;
use crate::wire::fds::Fd;

pub use proxy::{DictProxy, ListProxy, ObjectProxy, ValueProxy};
pub use queue_proxy::{JoinableQueueProxy, QueueProxy};
pub use served::Served;
#[doc(hidden)]
pub use served::{ServedEntry, SERVED};
pub use sync_proxy::{
    BarrierProxy, ConditionProxy, ConditionProxyGuard, EventProxy, LockProxy, LockProxyGuard, RLockProxy,
    SemaphoreProxy, SemaphoreProxyGuard,
};

use client::Endpoint;
use proto::{Answer, ObjectKind, Request};

/// A manager: a server process that holds shared objects, and hands out proxies to them.
/// Python's `multiprocessing.Manager()`.
///
/// [`Manager::start`] starts the server (this program, started again, like every child); the
/// handle it returns owns it: the server ends when the handle is dropped or its process dies,
/// however it dies. Proxies ([`DictProxy`], [`ListProxy`], ...) are `Clone + Send + Sync`, and
/// pass to `#[process_fn]`s, pool tasks and initializers as ordinary arguments; every call on
/// one is one request, atomic at the server.
///
/// Over TCP: [`Manager::serve`] starts a server that also listens at an address and wants a
/// key; [`Manager::connect`] reaches it from another program or machine.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, DictProxy, ListProxy, Manager};
///
/// #[process_fn]
/// fn f(d: DictProxy<u32, String>, l: ListProxy<u32>) {
///     for i in 1..=3 {
///         d.insert(i, i.to_string()).unwrap();
///     }
///     l.reverse().unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let manager = Manager::start()?;
/// let d = manager.dict()?;
/// let l = manager.list_from((0..10).collect())?;
/// f.spawn(d.clone(), l.clone())?.join()?;
/// assert_eq!(d.items()?, [(1, "1".into()), (2, "2".into()), (3, "3".into())]);
/// assert_eq!(l.to_vec()?, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
/// # Ok(())
/// # }
/// ```
pub struct Manager {
    endpoint: Arc<Endpoint>,
    server: Option<Mutex<Process<()>>>,
    addr: Option<SocketAddr>,
}

/// What a server's initializer did: its encoded result, or why it has none.
type InitReport = std::result::Result<ByteBuf, String>;

/// A server's initializer: the function's name, its encoded arguments, and where to say how
/// it went.
type InitCall = (String, ByteBuf, crate::channel::Sender<InitReport>);

/// The server process: runs the initializer, if any, then serves what comes through its
/// acceptor (and its TCP listener).
#[process_fn(crate = crate, name = "multiproc::manager::server")]
fn manager_server(acceptor: Fd, tcp: Option<(Fd, ByteBuf)>, init: Option<InitCall>) {
    if let Some((name, args, report)) = init {
        let outcome = run_initializer(&name, &args);
        let failed = outcome.is_err();
        let _ = report.send(&outcome);
        if failed {
            return; // the owner gives up on this server
        }
    }
    server::run(acceptor.0, tcp.map(|(l, key)| (TcpListener::from(l.0), key.into_vec())));
}

/// Runs the `#[process_fn]` named `name` here, with its encoded arguments.
fn run_initializer(name: &str, args: &[u8]) -> InitReport {
    use crate::worker::CallFailure;
    let registration = crate::registry::lookup(name).map_err(|e| e.to_string())?;
    let mut reader = crate::wire::codec::ValueReader::new(args, "arguments");
    let mut out = Vec::new();
    match (registration.invoke)(&mut reader, &mut out).and_then(|()| reader.finish().map_err(CallFailure::Fail)) {
        Ok(()) => Ok(ByteBuf::from(out)),
        Err(CallFailure::Fail(e)) => Err(e.to_string()),
        Err(CallFailure::Panic(r)) => Err(match r.location {
            Some(at) => format!("it panicked: {} (at {at})", r.message),
            None => format!("it panicked: {}", r.message),
        }),
    }
}

impl Manager {
    /// Starts a manager's server process, on this machine only.
    pub fn start() -> Result<Manager> {
        Manager::launch(None, None)
    }

    /// Starts a manager's server process that runs `initializer(args)` once before it serves
    /// (Python's `manager.start(initializer, initargs)`): to set up logging, or state a
    /// [`Served`] type reads. Returns when it has run.
    ///
    /// # Errors
    ///
    /// [`Error::InitializerFailed`] when it returns `Err`, panics, or its process dies (the
    /// server is gone then); [`Error::Encode`] when `args` hold a handle (a queue, a proxy):
    /// a manager's initializer takes plain data.
    ///
    /// ```
    /// # extern crate multiproc_runtime as multiproc;
    /// use multiproc::{process_fn, Manager};
    ///
    /// #[process_fn]
    /// fn setup(level: String) -> Result<(), String> {
    ///     if level.is_empty() {
    ///         return Err("no log level".into());
    ///     }
    ///     std::env::set_var("LOG_LEVEL", level);
    ///     Ok(())
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let m = Manager::start_with(setup, ("info".to_string(),))?;
    /// assert!(Manager::start_with(setup, (String::new(),)).is_err());
    /// # drop(m);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_with<F: ProcessFn>(initializer: F, args: F::Args) -> Result<Manager>
    where
        F::Output: InitOutcome,
    {
        let _ = initializer;
        crate::registry::lookup(F::NAME)?;
        let mut bytes = Vec::new();
        let (encoded, table) = crate::wire::fds::collect(|| F::encode_args(&args, &mut bytes));
        encoded?;
        if !table.fds.is_empty() {
            return Err(Error::Encode {
                what: "a manager's initializer arguments",
                type_name: std::any::type_name::<F::Args>().into(),
                message: "they hold a handle (a queue, a pipe, a proxy); a manager's initializer takes plain data"
                    .into(),
            });
        }
        let (report, tell) = crate::channel::pipe_one_way::<InitReport>()?;
        let manager = Manager::launch(None, Some((F::NAME.to_string(), ByteBuf::from(bytes), tell)))?;
        let outcome = match report.recv() {
            Ok(Ok(output)) => {
                crate::process::read_whole::<F>(&output).map_err(|e| e.to_string()).and_then(|o| o.outcome())
            }
            Ok(Err(message)) => Err(message),
            Err(e) => Err(format!("the manager's server ended while it ran ({e})")),
        };
        outcome.map(|()| manager).map_err(|message| Error::InitializerFailed { message })
    }

    /// Starts a manager's server process that also listens at `addr` (port 0: any free one;
    /// see [`local_addr`](Manager::local_addr)), for clients that know `authkey`
    /// ([`Manager::connect`]). Python's `BaseManager(address, authkey).start()`.
    ///
    /// Every connection must prove it knows the key (HMAC-SHA256 over a fresh challenge, both
    /// ways) within 10 seconds, before any request is read; every frame is bounded; a client
    /// that sends garbage is disconnected, and the others go on.
    pub fn serve(addr: impl ToSocketAddrs, authkey: &[u8]) -> Result<Manager> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::io("could not listen for the manager", e))?;
        let local = listener.local_addr().map_err(|e| Error::io("could not read the manager's address", e))?;
        let mut m = Manager::launch(Some((OwnedFd::from(listener), authkey.to_vec())), None)?;
        m.addr = Some(local);
        Ok(m)
    }

    /// Serves a manager in this process, on this thread, at `addr`, for clients that know
    /// `authkey` ([`Manager::connect`]), until the process ends: Python's
    /// `manager.get_server().serve_forever()`, for a program whose only job is to be the
    /// manager. Returns only if it cannot listen there.
    ///
    /// ```no_run
    /// # extern crate multiproc_runtime as multiproc;
    /// fn main() -> multiproc::Result<()> {
    ///     let key = std::env::var("JOBS_KEY").unwrap_or_default();
    ///     match multiproc::Manager::serve_forever("0.0.0.0:50000", key.as_bytes())? {}
    /// }
    /// ```
    pub fn serve_forever(addr: impl ToSocketAddrs, authkey: &[u8]) -> Result<std::convert::Infallible> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::io("could not listen for the manager", e))?;
        let (server_end, client_end) =
            crate::sys::packet_pair().map_err(|e| Error::io("could not make the manager's socket", e))?;
        drop(client_end); // no local handles: clients come over TCP
        server::run(server_end, Some((listener, authkey.to_vec())));
        unreachable!("a manager's server runs until its process ends")
    }

    fn launch(tcp: Option<(OwnedFd, Vec<u8>)>, init: Option<InitCall>) -> Result<Manager> {
        let (server_end, client_end) =
            crate::sys::packet_pair().map_err(|e| Error::io("could not make the manager's socket", e))?;
        let tcp = tcp.map(|(fd, key)| (Fd(fd), ByteBuf::from(key)));
        let process = manager_server.spawn(Fd(server_end), tcp, init)?;
        let endpoint = local_endpoint(client_end)?;
        Ok(Manager { endpoint, server: Some(Mutex::new(process)), addr: None })
    }

    /// Connects to a manager served at `addr` with [`Manager::serve`], by another process or
    /// another machine. Python's `BaseManager(address, authkey).connect()`.
    ///
    /// # Errors
    ///
    /// [`Error::AuthenticationFailed`] when the keys differ (nothing is read or changed at the
    /// server); [`Error::Io`] when nothing answers there.
    pub fn connect(addr: impl ToSocketAddrs, authkey: &[u8]) -> Result<Manager> {
        let addr = addr
            .to_socket_addrs()
            .map_err(|e| Error::io("could not resolve the manager's address", e))?
            .next()
            .ok_or_else(|| Error::io("could not resolve the manager's address", std::io::ErrorKind::NotFound.into()))?;
        let endpoint = Endpoint::remote(addr.to_string(), authkey.to_vec());
        client::check(&endpoint)?; // the key is checked now, not at the first request
        Ok(Manager { endpoint, server: None, addr: Some(addr) })
    }

    /// The TCP address the manager listens at ([`serve`](Manager::serve)) or was reached at
    /// ([`connect`](Manager::connect)).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The server's process id, when this handle started it.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).pid())
    }

    /// Stops the server now (as dropping the handle does): every proxy then returns
    /// [`Error::ManagerGone`].
    pub fn shutdown(self) {
        drop(self);
    }

    fn create<T>(&self, kind: ObjectKind, name: Option<&str>, init: Vec<u8>) -> Result<proxy::Handle> {
        let request = Request::Create {
            kind,
            ty: std::any::type_name::<T>().to_string(),
            name: name.map(str::to_string),
            init: ByteBuf::from(init),
        };
        match client::call(&self.endpoint, &request)? {
            Answer::Created(id) => Ok(proxy::Handle { endpoint: Arc::clone(&self.endpoint), id }),
            other => Err(proxy::unexpected(other)),
        }
    }

    /// A new, empty shared dict.
    pub fn dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(&self) -> Result<DictProxy<K, V>> {
        Ok(DictProxy::new(self.create::<(K, V)>(ObjectKind::Dict, None, Vec::new())?))
    }

    /// A new shared dict holding `items` (Python's `manager.dict(mapping)`); a key given twice
    /// keeps its last value. Made in one request, however many items.
    pub fn dict_from<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Result<DictProxy<K, V>> {
        let init = proxy::stored_at(&self.endpoint, || proxy::encode_pairs(items))?;
        Ok(DictProxy::new(self.create::<(K, V)>(ObjectKind::Dict, None, init)?))
    }

    /// The shared dict named `name`, made empty if there is none (for clients of a remote
    /// manager to find the same one).
    pub fn named_dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<DictProxy<K, V>> {
        Ok(DictProxy::new(self.create::<(K, V)>(ObjectKind::Dict, Some(name), Vec::new())?))
    }

    /// A new, empty shared list.
    pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<ListProxy<T>> {
        self.list_from(Vec::new())
    }

    /// A new shared list holding `items`.
    pub fn list_from<T: Serialize + DeserializeOwned>(&self, items: Vec<T>) -> Result<ListProxy<T>> {
        let init = proxy::stored_at(&self.endpoint, || proxy::encode_items(&items))?;
        Ok(ListProxy::new(self.create::<T>(ObjectKind::List, None, init)?))
    }

    /// The shared list named `name`, made empty if there is none.
    pub fn named_list<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<ListProxy<T>> {
        Ok(ListProxy::new(self.create::<T>(ObjectKind::List, Some(name), Vec::new())?))
    }

    /// A new shared value holding `value` (Python's `manager.Value` and `Namespace`).
    pub fn value<T: Serialize + DeserializeOwned>(&self, value: T) -> Result<ValueProxy<T>> {
        Ok(ValueProxy::new(self.create::<T>(
            ObjectKind::Value,
            None,
            proxy::stored_at(&self.endpoint, || proxy::encode(&value))?,
        )?))
    }

    /// The shared value named `name`, made with `value` if there is none.
    pub fn named_value<T: Serialize + DeserializeOwned>(&self, name: &str, value: T) -> Result<ValueProxy<T>> {
        Ok(ValueProxy::new(self.create::<T>(
            ObjectKind::Value,
            Some(name),
            proxy::stored_at(&self.endpoint, || proxy::encode(&value))?,
        )?))
    }

    /// A new queue held by the server (Python's `manager.Queue()`): reachable from other
    /// machines too. On one machine, [`Queue`](crate::Queue) is much faster.
    pub fn queue<T: Serialize + DeserializeOwned>(&self) -> Result<QueueProxy<T>> {
        Ok(QueueProxy::new(self.create::<T>(ObjectKind::Queue, None, Vec::new())?))
    }

    /// The queue named `name`, made if there is none.
    pub fn named_queue<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<QueueProxy<T>> {
        Ok(QueueProxy::new(self.create::<T>(ObjectKind::Queue, Some(name), Vec::new())?))
    }

    /// A new queue that holds at most `maxsize` items (Python's `manager.Queue(maxsize)`):
    /// `put` waits for room, [`try_put`](QueueProxy::try_put) does not.
    pub fn bounded_queue<T: Serialize + DeserializeOwned>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        let init = proxy::encode(&Some(maxsize as u64))?;
        Ok(QueueProxy::new(self.create::<T>(ObjectKind::Queue, None, init)?))
    }

    /// A new joinable queue (Python's `manager.JoinableQueue()`): see [`JoinableQueueProxy`].
    pub fn joinable_queue<T: Serialize + DeserializeOwned>(&self) -> Result<JoinableQueueProxy<T>> {
        Ok(JoinableQueueProxy::new(self.create::<T>(ObjectKind::JoinableQueue, None, Vec::new())?))
    }

    /// A new joinable queue that holds at most `maxsize` items.
    pub fn bounded_joinable_queue<T: Serialize + DeserializeOwned>(
        &self,
        maxsize: usize,
    ) -> Result<JoinableQueueProxy<T>> {
        let init = proxy::encode(&Some(maxsize as u64))?;
        Ok(JoinableQueueProxy::new(self.create::<T>(ObjectKind::JoinableQueue, None, init)?))
    }

    /// The joinable queue named `name`, made if there is none.
    pub fn named_joinable_queue<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<JoinableQueueProxy<T>> {
        Ok(JoinableQueueProxy::new(self.create::<T>(ObjectKind::JoinableQueue, Some(name), Vec::new())?))
    }

    /// A new lock held by the server (Python's `manager.Lock()`). A client that dies holding
    /// it releases it (the server sees its connection close).
    pub fn lock(&self) -> Result<LockProxy> {
        Ok(LockProxy::new(self.create::<()>(ObjectKind::Lock, None, Vec::new())?))
    }

    /// The lock named `name`, made if there is none.
    pub fn named_lock(&self, name: &str) -> Result<LockProxy> {
        Ok(LockProxy::new(self.create::<()>(ObjectKind::Lock, Some(name), Vec::new())?))
    }

    /// A new reentrant lock held by the server (Python's `manager.RLock()`).
    pub fn rlock(&self) -> Result<RLockProxy> {
        Ok(RLockProxy::new(self.create::<()>(ObjectKind::RLock, None, Vec::new())?))
    }

    /// A new condition variable with its own reentrant lock, held by the server (Python's
    /// `manager.Condition()`).
    pub fn condition(&self) -> Result<ConditionProxy> {
        Ok(ConditionProxy::new(self.create::<()>(ObjectKind::Condition, None, Vec::new())?))
    }

    /// A new semaphore with `value` counts, held by the server (Python's
    /// `manager.Semaphore(value)`).
    pub fn semaphore(&self, value: usize) -> Result<SemaphoreProxy> {
        let init = proxy::encode(&(value as u64, None::<u64>))?;
        Ok(SemaphoreProxy::new(self.create::<()>(ObjectKind::Semaphore, None, init)?))
    }

    /// A new semaphore with `value` counts that cannot be released past `value` (Python's
    /// `manager.BoundedSemaphore(value)`).
    pub fn bounded_semaphore(&self, value: usize) -> Result<SemaphoreProxy> {
        let init = proxy::encode(&(value as u64, Some(value as u64)))?;
        Ok(SemaphoreProxy::new(self.create::<()>(ObjectKind::Semaphore, None, init)?))
    }

    /// A new barrier for `parties` parties, held by the server (Python's
    /// `manager.Barrier(parties)`).
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy> {
        let init = proxy::encode(&(parties as u64))?;
        Ok(BarrierProxy::new(self.create::<()>(ObjectKind::Barrier, None, init)?))
    }

    /// The barrier named `name`, made for `parties` if there is none.
    pub fn named_barrier(&self, name: &str, parties: usize) -> Result<BarrierProxy> {
        let init = proxy::encode(&(parties as u64))?;
        Ok(BarrierProxy::new(self.create::<()>(ObjectKind::Barrier, Some(name), init)?))
    }

    /// A new event held by the server (Python's `manager.Event()`).
    pub fn event(&self) -> Result<EventProxy> {
        Ok(EventProxy::new(self.create::<()>(ObjectKind::Event, None, Vec::new())?))
    }

    /// The event named `name`, made if there is none.
    pub fn named_event(&self, name: &str) -> Result<EventProxy> {
        Ok(EventProxy::new(self.create::<()>(ObjectKind::Event, Some(name), Vec::new())?))
    }

    /// Moves `value` into the server, which serves it ([`Served`]; register the type with
    /// [`served!`](crate::served)). Python's `BaseManager.register`.
    pub fn serve_object<T: Served>(&self, value: T) -> Result<ObjectProxy<T>> {
        let kind = ObjectKind::Served(std::any::type_name::<T>().to_string());
        Ok(ObjectProxy::new(self.create::<T>(kind, None, proxy::encode(&value)?)?))
    }

    /// The served object named `name`, made from `value` if there is none.
    pub fn named_object<T: Served>(&self, name: &str, value: T) -> Result<ObjectProxy<T>> {
        let kind = ObjectKind::Served(std::any::type_name::<T>().to_string());
        Ok(ObjectProxy::new(self.create::<T>(kind, Some(name), proxy::encode(&value)?)?))
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager").field("pid", &self.pid()).field("addr", &self.addr).finish()
    }
}

/// Every local endpoint known in this process, by the identity of its acceptor socket: a
/// proxy received again and again reuses the same connections.
fn endpoints() -> &'static ByIdentity<Endpoint> {
    static ENDPOINTS: OnceLock<ByIdentity<Endpoint>> = OnceLock::new();
    ENDPOINTS.get_or_init(ByIdentity::new)
}

fn local_endpoint(acceptor: OwnedFd) -> Result<Arc<Endpoint>> {
    let (_, key) = crate::sys::shm::file_identity(acceptor.as_fd())
        .map_err(|e| Error::io("could not inspect the manager's socket", e))?;
    if let Some(known) = endpoints().get(key) {
        return Ok(known);
    }
    Ok(endpoints().insert(key, Arc::new(Endpoint::local(acceptor))))
}
