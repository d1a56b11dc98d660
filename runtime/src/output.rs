//! Where a child's stdout and stderr go, and the forwarder that re-prints them in the parent.

use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};
use std::process::{ChildStderr, ChildStdout};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

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

/// A thread that re-prints a child's output; it ends when the child's pipes close.
#[derive(Debug)]
pub(crate) struct Forwarder {
    done: mpsc::Receiver<()>,
}

impl Forwarder {
    /// Starts forwarding. Spawned from the caller's thread, so that libtest's capture of the
    /// caller (inherited by threads it spawns) applies to what is re-printed.
    pub(crate) fn start(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Option<Forwarder> {
        if stdout.is_none() && stderr.is_none() {
            return None;
        }
        let (tx, done) = mpsc::channel();
        let streams = [stdout.map(OwnedFd::from), stderr.map(OwnedFd::from)];
        thread::Builder::new()
            .name("multiproc-output".into())
            .spawn(move || {
                forward(streams);
                drop(tx);
            })
            .ok()?;
        Some(Forwarder { done })
    }

    /// Waits until everything the child wrote has been re-printed, at most `limit` (a
    /// grandchild may hold the pipe open).
    pub(crate) fn finish(self, limit: Duration) {
        let _ = self.done.recv_timeout(limit);
    }
}

fn forward(mut streams: [Option<OwnedFd>; 2]) {
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut chunk = vec![0u8; 16 * 1024];
    while streams.iter().any(Option::is_some) {
        let open: Vec<usize> = (0..2).filter(|i| streams[*i].is_some()).collect();
        let ready: Vec<usize> = {
            let mut polled: Vec<PollFd<'_>> = open
                .iter()
                .map(|i| PollFd::new(streams[*i].as_ref().expect("open"), PollFlags::IN))
                .collect();
            match rustix::event::poll(&mut polled, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            open.iter().zip(&polled).filter(|(_, p)| !p.revents().is_empty()).map(|(i, _)| *i).collect()
        };
        for i in ready {
            let fd = streams[i].as_ref().expect("polled streams are open");
            let n = match rustix::io::read(fd, &mut chunk[..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => 0,
            };
            if n == 0 {
                emit(i, &std::mem::take(&mut pending[i]));
                streams[i] = None;
                continue;
            }
            pending[i].extend_from_slice(&chunk[..n]);
            if let Some(last_newline) = pending[i].iter().rposition(|b| *b == b'\n') {
                let rest = pending[i].split_off(last_newline + 1);
                emit(i, &std::mem::replace(&mut pending[i], rest));
            } else if pending[i].len() > 64 * 1024 {
                emit(i, &std::mem::take(&mut pending[i]));
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
