//! How a client reaches its manager: a local server through its acceptor socket, a remote one
//! over TCP with the key; and each thread's connection to each manager it uses.
//!
//! Each thread has a connection of its own (made on its first request), so a thread waiting at
//! the server (a queue's `get`, a lock) holds no other thread of its process up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::manager::auth;
use crate::manager::proto::{Answer, Failure, Framed, Reply, Request};
use crate::sys;

/// How long a remote handshake may take, each way.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a manager is.
#[derive(Debug)]
pub(crate) enum Endpoint {
    /// A server started by this program: new connections are handed to it as descriptors
    /// through its acceptor (a sequenced-packet socket).
    Local { acceptor: OwnedFd, name: String },
    /// A server at a TCP address, that wants the key.
    Remote { addr: String, authkey: Vec<u8>, name: String },
}

/// A connection to a manager.
pub(crate) enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Endpoint {
    /// A key for this thread's connection to it.
    fn key(&self) -> &str {
        match self {
            Endpoint::Local { name, .. } | Endpoint::Remote { name, .. } => name,
        }
    }

    /// A new connection.
    pub(crate) fn connect(&self) -> Result<Conn> {
        match self {
            Endpoint::Local { acceptor, .. } => {
                let (mine, theirs) = UnixStream::pair().map_err(|e| Error::io("could not make a socket pair", e))?;
                sys::send_fd(acceptor.as_fd(), theirs.as_fd()).map_err(|_| Error::ManagerGone)?;
                Ok(Conn::Unix(mine))
            }
            Endpoint::Remote { addr, authkey, .. } => {
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
                Ok(Conn::Tcp(s))
            }
        }
    }
}

impl Endpoint {
    pub(crate) fn local(acceptor: OwnedFd, key: (u64, u64)) -> Endpoint {
        Endpoint::Local { acceptor, name: format!("local:{}:{}", key.0, key.1) }
    }

    pub(crate) fn remote(addr: String, authkey: Vec<u8>) -> Endpoint {
        let hex: String = authkey.iter().map(|b| format!("{b:02x}")).collect();
        Endpoint::Remote { name: format!("remote:{addr}:{hex}"), addr, authkey }
    }
}

thread_local! {
    /// This thread's connections, by endpoint.
    static CONNS: RefCell<HashMap<String, Framed<Conn>>> = RefCell::new(HashMap::new());
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
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        let conn = match conns.get_mut(endpoint.key()) {
            Some(conn) => conn,
            None => conns.entry(endpoint.key().to_string()).or_insert(Framed::new(endpoint.connect()?)),
        };
        let reply = conn.send(request).and_then(|()| conn.recv::<Reply>());
        match reply {
            Ok(Some(reply)) => Ok(reply),
            // nothing was sent: the connection is as good as before
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(Error::io("could not send a request", e)),
            Ok(None) | Err(_) => {
                conns.remove(endpoint.key()); // the next request tries a new connection
                Err(Error::ManagerGone)
            }
        }
    })
}

pub(crate) fn failure(f: Failure) -> Error {
    match f {
        Failure::OutOfRange { index, len } => Error::OutOfRange { index: index as usize, len: len as usize },
        Failure::Mismatch(message) | Failure::Other(message) => Error::ManagerOperation { message },
        Failure::TimedOut => Error::ManagerOperation { message: "a wait at the manager ran out".into() },
        Failure::Panicked(message) => {
            Error::ManagerOperation { message: format!("it panicked at the server: {message}") }
        }
    }
}

/// Connects now, keeping the connection for this thread's next request: a wrong key is found
/// at once.
pub(crate) fn check(endpoint: &Arc<Endpoint>) -> Result<()> {
    let conn = endpoint.connect()?;
    CONNS.with(|c| c.borrow_mut().insert(endpoint.key().to_string(), Framed::new(conn)));
    Ok(())
}
