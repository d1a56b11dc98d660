//! The handshake of a remote manager: each side proves it knows the key, with HMAC-SHA256 over
//! a fresh random challenge from the other, before any request is read. The key itself never
//! crosses; a replayed answer fails (the challenge is new each time); answers are compared in
//! constant time (`Mac::verify_slice`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Opens every handshake: the protocol and its version.
const GREETING: &[u8; 8] = b"MPMGR\x00\x01\x00";
const CHALLENGE: usize = 32;
const ANSWER: usize = 32;
/// What the server sends after a right answer, and after a wrong one (then it hangs up).
const WELCOME: &[u8; 4] = b"OKAY";
const REFUSED: &[u8; 4] = b"DENY";

/// A stream whose reads and writes all end by one deadline: a per-call timeout alone lets a
/// peer that sends a byte now and then (slowloris) hold a server thread for ever.
pub(crate) struct ByDeadline<'s, S = TcpStream> {
    stream: &'s S,
    until: Instant,
}

/// A socket whose reads and writes can time out.
pub(crate) trait Timeouts {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
}

impl Timeouts for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, t)
    }
}

impl<'s, S> ByDeadline<'s, S> {
    /// `stream`, for reads and writes that must all be done within `limit` from now.
    pub(crate) fn new(stream: &'s S, limit: Duration) -> ByDeadline<'s, S> {
        ByDeadline { stream, until: Instant::now() + limit }
    }

    /// The time left, or a `TimedOut` error once there is none.
    fn left(&self) -> io::Result<Duration> {
        match self.until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake did not finish in time")),
        }
    }
}

impl<S: Timeouts> Read for ByDeadline<'_, S>
where
    for<'a> &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.stream).read(buf)
    }
}

impl<S: Timeouts> Write for ByDeadline<'_, S>
where
    for<'a> &'a S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a handshake failed.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The peer does not know the key (or is not a multiproc manager).
    WrongKey,
    /// The connection failed, or the peer sent something else than the protocol.
    Io(io::Error),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Refused {
        Refused::Io(e)
    }
}

fn answer(key: &[u8], role: &[u8], challenge: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(role);
    mac.update(challenge);
    mac
}

fn challenge() -> io::Result<[u8; CHALLENGE]> {
    let mut c = [0u8; CHALLENGE];
    let mut filled = 0;
    while filled < CHALLENGE {
        filled += rustix::rand::getrandom(&mut c[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(c)
}

/// The server's side: challenges the client, checks its answer, then answers the client's
/// challenge.
pub(crate) fn serve<S: Read + Write>(s: &mut S, key: &[u8]) -> Result<(), Refused> {
    let mine = challenge()?;
    s.write_all(GREETING)?;
    s.write_all(&mine)?;
    let mut hello = [0u8; GREETING.len()];
    s.read_exact(&mut hello)?;
    if &hello != GREETING {
        return Err(Refused::Io(io::Error::new(io::ErrorKind::InvalidData, "not a multiproc manager client")));
    }
    let mut theirs = [0u8; ANSWER + CHALLENGE];
    s.read_exact(&mut theirs)?;
    if answer(key, b"client", &mine).verify_slice(&theirs[..ANSWER]).is_err() {
        let _ = s.write_all(REFUSED);
        return Err(Refused::WrongKey);
    }
    s.write_all(WELCOME)?;
    s.write_all(&answer(key, b"server", &theirs[ANSWER..]).finalize().into_bytes())?;
    Ok(())
}

/// The client's side: answers the server's challenge, then checks the server's answer to its
/// own.
pub(crate) fn connect<S: Read + Write>(s: &mut S, key: &[u8]) -> Result<(), Refused> {
    let mut hello = [0u8; GREETING.len() + CHALLENGE];
    s.read_exact(&mut hello)?;
    if &hello[..GREETING.len()] != GREETING {
        return Err(Refused::Io(io::Error::new(io::ErrorKind::InvalidData, "not a multiproc manager")));
    }
    let mine = challenge()?;
    s.write_all(GREETING)?;
    let mut out = answer(key, b"client", &hello[GREETING.len()..]).finalize().into_bytes().to_vec();
    out.extend_from_slice(&mine);
    s.write_all(&out)?;
    let mut verdict = [0u8; 4];
    s.read_exact(&mut verdict)?;
    if &verdict != WELCOME {
        return Err(Refused::WrongKey);
    }
    let mut proof = [0u8; ANSWER];
    s.read_exact(&mut proof)?;
    answer(key, b"server", &mine).verify_slice(&proof).map_err(|_| Refused::WrongKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn handshake(server_key: &'static [u8], client_key: &'static [u8]) -> (bool, bool) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(&mut a, server_key).is_ok());
        let client = connect(&mut b, client_key).is_ok();
        (server.join().unwrap(), client)
    }

    #[test]
    fn the_same_key_passes_both_ways_and_another_fails_both() {
        assert_eq!(handshake(b"secret", b"secret"), (true, true));
        assert_eq!(handshake(b"secret", b"guess"), (false, false));
        assert_eq!(handshake(b"", b"x"), (false, false));
    }

    #[test]
    fn a_server_without_the_key_is_found_out_by_the_client() {
        // an impostor that accepts any answer, and cannot answer the client's challenge
        let (mut a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            a.write_all(GREETING).unwrap();
            a.write_all(&[0u8; CHALLENGE]).unwrap();
            let mut rest = [0u8; GREETING.len() + ANSWER + CHALLENGE];
            a.read_exact(&mut rest).unwrap();
            a.write_all(WELCOME).unwrap();
            a.write_all(&[7u8; ANSWER]).unwrap();
        });
        assert!(matches!(connect(&mut b, b"secret"), Err(Refused::WrongKey)));
    }
}
