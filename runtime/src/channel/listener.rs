//! `multiprocessing.connection`'s `Listener` and `Client`: typed [`Connection`]s between
//! processes that did not start each other, over a Unix socket or TCP, proven with the same
//! HMAC challenge as a remote manager's.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::channel::pipe::Connection;
use crate::error::{Error, Result};
use crate::manager::auth;

/// How long a handshake may take, each way.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Accepts [`Connection`]s at an address (Python's `multiprocessing.connection.Listener`):
/// a Unix socket's path, or a TCP address. With a key, every connection must prove it knows
/// it (HMAC-SHA256 over a fresh challenge, both ways, within 10 s) before `accept` returns it.
///
/// Over a Unix socket a connection is a pipe end like any other: handles (queues, locks,
/// shared memory) cross in messages, and large values by memfd. Over TCP, to another machine,
/// values go inline and a message holding a handle is refused with [`Error::Encode`].
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{Connection, Listener};
///
/// # fn main() -> multiproc::Result<()> {
/// let listener = Listener::tcp("127.0.0.1:0", Some(b"secret"))?;
/// let addr = listener.local_addr().expect("a TCP listener has an address");
/// let client = std::thread::spawn(move || -> multiproc::Result<String> {
///     let c: Connection<String> = Connection::connect_tcp(addr, Some(b"secret"))?;
///     c.send("ping".to_string())?;
///     c.recv()
/// });
/// let server: Connection<String> = listener.accept()?;
/// let got = server.recv()?;
/// server.send(format!("{got} pong"))?;
/// assert_eq!(client.join().unwrap()?, "ping pong");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    authkey: Option<Vec<u8>>,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    /// The path is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Listens at a TCP address (port 0: any free one, see
    /// [`local_addr`](Listener::local_addr)), for connections that know `authkey` (`None`:
    /// any connection; only on a network you trust).
    pub fn tcp(addr: impl ToSocketAddrs, authkey: Option<&[u8]>) -> Result<Listener> {
        let l = TcpListener::bind(addr).map_err(|e| Error::io("could not listen for connections", e))?;
        Ok(Listener { socket: Socket::Tcp(l), authkey: authkey.map(<[u8]>::to_vec) })
    }

    /// Listens at the Unix socket `path` (which must not exist; it is removed when the
    /// listener is dropped).
    pub fn unix(path: impl AsRef<Path>, authkey: Option<&[u8]>) -> Result<Listener> {
        let path = path.as_ref().to_path_buf();
        let l = UnixListener::bind(&path).map_err(|e| Error::io("could not listen at the socket's path", e))?;
        Ok(Listener { socket: Socket::Unix(l, path), authkey: authkey.map(<[u8]>::to_vec) })
    }

    /// The TCP address it listens at; `None` for a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Unix(..) => None,
        }
    }

    /// Waits for the next connection, and proves it (with a key).
    ///
    /// # Errors
    ///
    /// [`Error::AuthenticationFailed`] for a peer that does not know the key (the listener
    /// goes on: accept again); [`Error::Io`] when the peer went, or took longer than 10 s to
    /// answer the challenge.
    pub fn accept<S, R>(&self) -> Result<Connection<S, R>> {
        match &self.socket {
            Socket::Tcp(l) => {
                let (s, _) = l.accept().map_err(|e| Error::io("could not accept a connection", e))?;
                s.set_nodelay(true).ok();
                if let Some(key) = &self.authkey {
                    proven(auth::serve(&mut auth::ByDeadline::new(&s, HANDSHAKE), key))?;
                    clear_timeouts(&s);
                }
                Connection::from_stream(OwnedFd::from(s), true)
            }
            Socket::Unix(l, _) => {
                let (s, _) = l.accept().map_err(|e| Error::io("could not accept a connection", e))?;
                if let Some(key) = &self.authkey {
                    proven(auth::serve(&mut auth::ByDeadline::new(&s, HANDSHAKE), key))?;
                    s.set_read_timeout(None).ok();
                    s.set_write_timeout(None).ok();
                }
                Connection::from_stream(OwnedFd::from(s), false)
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl<S, R> Connection<S, R> {
    /// Connects to a [`Listener`] at a TCP address (Python's `Client(address, authkey=..)`):
    /// with a key, it answers the listener's challenge and checks the listener's answer to its
    /// own. [`Error::AuthenticationFailed`] when the keys differ.
    pub fn connect_tcp(addr: impl ToSocketAddrs, authkey: Option<&[u8]>) -> Result<Self> {
        let s = TcpStream::connect(addr).map_err(|e| Error::io("could not connect to the listener", e))?;
        s.set_nodelay(true).ok();
        if let Some(key) = authkey {
            proven(auth::connect(&mut auth::ByDeadline::new(&s, HANDSHAKE), key))?;
            clear_timeouts(&s);
        }
        Connection::from_stream(OwnedFd::from(s), true)
    }

    /// Connects to a [`Listener`] at a Unix socket's path (see [`connect_tcp`](Self::connect_tcp)).
    pub fn connect_unix(path: impl AsRef<Path>, authkey: Option<&[u8]>) -> Result<Self> {
        let s = UnixStream::connect(path).map_err(|e| Error::io("could not connect to the listener", e))?;
        if let Some(key) = authkey {
            proven(auth::connect(&mut auth::ByDeadline::new(&s, HANDSHAKE), key))?;
            s.set_read_timeout(None).ok();
            s.set_write_timeout(None).ok();
        }
        Connection::from_stream(OwnedFd::from(s), false)
    }
}

fn proven(r: std::result::Result<(), auth::Refused>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(auth::Refused::WrongKey) => Err(Error::AuthenticationFailed),
        Err(auth::Refused::Io(e)) => Err(Error::io("the connection's handshake failed", e)),
    }
}

fn clear_timeouts(s: &TcpStream) {
    s.set_read_timeout(None).ok();
    s.set_write_timeout(None).ok();
}
