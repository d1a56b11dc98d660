//! A byte stream over MPI: two threads pump a local socket's bytes to a peer rank as messages,
//! and the peer's messages into the socket. An empty message marks the end of the stream.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::point_to_point::MatchedReceiveVec;
use mpi::traits::*;

use super::TAG_DATA;

/// The most bytes one message carries.
const CHUNK: usize = 1 << 20;

/// One stream to a peer rank: the local end to use, and the pumps behind it.
pub(crate) struct Session {
    /// The end the pool (or the worker loop) reads and writes.
    pub(crate) local: Option<UnixStream>,
    pumps: Vec<JoinHandle<()>>,
    /// Runs once both pumps ended.
    done: Option<Box<dyn FnOnce() + Send>>,
    /// Readable (hung up) once both pumps ended: the peer's stream is over.
    pub(crate) ended: std::os::fd::OwnedFd,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Starts the pumps between a new socketpair and rank `peer`.
    pub(crate) fn start(peer: i32, done: Box<dyn FnOnce() + Send>) -> std::io::Result<Session> {
        let (local, far) = UnixStream::pair()?;
        let (ended, ended_writer) = crate::sys::liveness_pipe()?;
        let far_in = far.try_clone()?;
        let writer_out = ended_writer.try_clone()?;
        let out = std::thread::Builder::new().name(format!("multiproc-mpi-out-{peer}")).spawn(move || {
            pump_out(far, peer);
            drop(writer_out);
        })?;
        let inp = std::thread::Builder::new().name(format!("multiproc-mpi-in-{peer}")).spawn(move || {
            pump_in(far_in, peer);
            drop(ended_writer);
        })?;
        Ok(Session { local: Some(local), pumps: vec![out, inp], done: Some(done), ended })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // closing our end ends the stream out; the peer answers by ending its own
        drop(self.local.take());
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
        if let Some(done) = self.done.take() {
            done();
        }
    }
}

/// After a message, how long a receiver keeps looking (yielding the CPU between looks) before
/// it starts to sleep between them.
const HOT: Duration = Duration::from_micros(200);
/// The longest sleep between looks: an idle stream's first message waits at most this long.
const COLDEST: Duration = Duration::from_millis(1);

/// The next message from `peer`. Not a blocking receive: in a process where several threads
/// wait in MPI at once, Open MPI's blocking waits cost a millisecond per message on a busy
/// host (measured, W2 over ranks: 300 to 1,000 us per call). Looking without waiting, with a
/// growing pause once the stream is quiet, keeps a busy stream at microseconds.
fn next_message(comm: &mpi::topology::SimpleCommunicator, peer: i32) -> Vec<u8> {
    let process = comm.process_at_rank(peer);
    let since = Instant::now();
    let mut pause = Duration::from_micros(20);
    loop {
        if let Some(probed) = process.immediate_matched_probe_with_tag(TAG_DATA) {
            return probed.matched_receive_vec::<u8>().0;
        }
        if since.elapsed() < HOT {
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause);
            pause = (pause * 2).min(COLDEST);
        }
    }
}

/// Socket to peer, until the socket's end (then an empty message).
fn pump_out(mut sock: UnixStream, peer: i32) {
    let comm = mpi::topology::SimpleCommunicator::world();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => comm.process_at_rank(peer).send_with_tag(&buf[..n], TAG_DATA),
        }
    }
    comm.process_at_rank(peer).send_with_tag(&[0u8; 0][..], TAG_DATA);
}

/// Peer to socket, until the peer's empty message (then the socket's write side closes).
fn pump_in(mut sock: UnixStream, peer: i32) {
    let comm = mpi::topology::SimpleCommunicator::world();
    let mut writable = true;
    loop {
        let bytes = next_message(&comm, peer);
        if bytes.is_empty() {
            break;
        }
        // nobody reads any more: keep taking messages up to the end marker, so none is left
        writable = writable && sock.write_all(&bytes).is_ok();
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
}
