//! Where a child's stdout and stderr go, and the forwarder that re-prints them in the parent.
//!
//! A forwarder thread re-prints the child's output while it runs, so a chatty child never
//! blocks on a full pipe. When the child has exited, `join` drains what is left itself,
//! under the same lock, instead of waiting for the thread to wake up: the output is complete
//! when `join` returns, and the join costs no extra wake-up.

use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;

/// What happens to a child's stdout or stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// It appears as the parent's own output: the parent re-prints it line by line with
    /// `print!`/`eprint!`, so it goes wherever the parent's output goes, and libtest captures
    /// it in tests like the test's own prints. The default.
    #[default]
    Inherit,
    /// It goes to a pipe the caller reads: [`Process::stdout`](crate::Process::stdout) and
    /// [`Process::stderr`](crate::Process::stderr).
    Piped,
    /// It is discarded.
    Null,
}

impl Output {
    pub(crate) fn stdio(self) -> std::process::Stdio {
        match self {
            Output::Inherit | Output::Piped => std::process::Stdio::piped(),
            Output::Null => std::process::Stdio::null(),
        }
    }
}

/// The two pipes of one child and the partial lines read from them.
#[derive(Debug)]
struct Streams {
    /// `[stdout, stderr]`; `None` once at end of file.
    fds: [Option<Arc<OwnedFd>>; 2],
    pending: [Vec<u8>; 2],
}

/// Re-prints a child's output.
#[derive(Debug)]
pub(crate) struct Forwarder {
    streams: Arc<Mutex<Streams>>,
}

impl Forwarder {
    /// Starts forwarding. The thread is spawned from the caller's thread, so that libtest's
    /// capture of the caller (which threads it spawns inherit) applies to what is re-printed.
    pub(crate) fn start(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Option<Forwarder> {
        if stdout.is_none() && stderr.is_none() {
            return None;
        }
        let open = |fd: Option<OwnedFd>| {
            fd.map(|fd| {
                if let Ok(flags) = rustix::fs::fcntl_getfl(&fd) {
                    let _ = rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK);
                }
                Arc::new(fd)
            })
        };
        let streams = Streams {
            fds: [open(stdout.map(OwnedFd::from)), open(stderr.map(OwnedFd::from))],
            pending: [Vec::new(), Vec::new()],
        };
        let streams = Arc::new(Mutex::new(streams));
        let shared = Arc::clone(&streams);
        let spawned = thread::Builder::new().name("multiproc-output".into()).spawn(move || run(&shared));
        if spawned.is_err() {
            // No thread: `finish` still prints what fits in the pipes.
            eprintln!("multiproc: could not start a thread to forward a child's output");
        }
        Some(Forwarder { streams })
    }

    /// Re-prints everything the (exited) child left in its pipes. A grandchild that still holds
    /// a pipe keeps the thread forwarding.
    pub(crate) fn finish(self) {
        drain(&mut lock(&self.streams));
    }
}

fn lock(streams: &Mutex<Streams>) -> MutexGuard<'_, Streams> {
    streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(streams: &Mutex<Streams>) {
    loop {
        let fds: Vec<Arc<OwnedFd>> = lock(streams).fds.iter().flatten().cloned().collect();
        if fds.is_empty() {
            return;
        }
        let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(&**fd, PollFlags::IN)).collect();
        match rustix::event::poll(&mut polled, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
        drain(&mut lock(streams));
    }
}

/// Reads both pipes until they would block, printing complete lines.
fn drain(streams: &mut Streams) {
    let mut chunk = [0u8; 16 * 1024];
    for i in 0..2 {
        while let Some(fd) = &streams.fds[i] {
            let n = match rustix::io::read(&**fd, &mut chunk[..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => 0,
            };
            let pending = &mut streams.pending[i];
            if n == 0 {
                emit(i, &std::mem::take(pending));
                streams.fds[i] = None;
                break;
            }
            pending.extend_from_slice(&chunk[..n]);
            if let Some(last_newline) = pending.iter().rposition(|b| *b == b'\n') {
                let rest = pending.split_off(last_newline + 1);
                emit(i, &std::mem::replace(pending, rest));
            } else if pending.len() > 64 * 1024 {
                emit(i, &std::mem::take(pending));
            }
        }
    }
}

/// Prints through the macros (the only path libtest captures). A parent whose stdout is gone
/// makes `print!` panic; the child's output is then dropped rather than the forwarder dying
/// with the pipe full.
fn emit(stream: usize, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        if stream == 0 {
            print!("{text}");
        } else {
            eprint!("{text}");
        }
    }));
}
