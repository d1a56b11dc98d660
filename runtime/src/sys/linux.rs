//! Linux system calls: socketpairs, pidfds, polling with deadlines, signals, the ELF build id.

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{Pid, PidfdFlags, Signal};

/// A connected pair of stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?)
}

/// A pidfd for a child this process has not reaped yet (so the pid cannot have been reused).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// The signals a handle sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sig {
    Term,
    Kill,
}

impl Sig {
    pub(crate) fn number(self) -> i32 {
        match self {
            Sig::Term => libc::SIGTERM,
            Sig::Kill => libc::SIGKILL,
        }
    }
}

/// Sends a signal through a pidfd; a child that already exited is not an error.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: Sig) -> io::Result<()> {
    let sig = match sig {
        Sig::Term => Signal::TERM,
        Sig::Kill => Signal::KILL,
    };
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until `fd` is readable (or hung up). Returns `false` when the deadline passed first.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ })
            }
        };
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A pipe whose write end the parent keeps and whose read end a child arms with
/// [`die_with_writer`]: both close-on-exec.
pub(crate) fn liveness_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// `fcntl`'s command to choose the signal of an async file (`asm-generic/fcntl.h`; the `libc`
/// crate declares it only for some targets).
const F_SETSIG: libc::c_int = 10;

/// Makes this process end when the last write end of the pipe `read_end` closes, that is when
/// the parent dies, however it dies. No thread: the pipe is in async mode and owned by this
/// process, and `F_SETSIG` makes the kernel signal its hang-up with `SIGKILL` rather than
/// `SIGIO`, so that the end comes even to a stopped process, or to one whose code ignores or
/// handles `SIGIO`. A parent already gone ends the process at once.
pub(crate) fn die_with_writer(read_end: OwnedFd) -> io::Result<()> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let fd = read_end.as_raw_fd();
    // SAFETY: `fd` is open (owned by `read_end`); F_SETSIG takes a signal number and F_SETOWN
    // a pid; neither touches memory.
    unsafe {
        if libc::fcntl(fd, F_SETSIG, libc::SIGKILL) == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    let flags = rustix::fs::fcntl_getfl(&read_end)?;
    rustix::fs::fcntl_setfl(&read_end, flags | rustix::fs::OFlags::ASYNC | rustix::fs::OFlags::NONBLOCK)?;
    let mut fds = [PollFd::new(&read_end, PollFlags::IN)];
    if rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 }))? > 0 {
        exit_now(crate::worker::EXIT_PARENT_GONE);
    }
    // Kept open for the life of the process: closing it would disarm the signal.
    let _ = read_end.into_raw_fd();
    Ok(())
}

/// Makes writes to a closed pipe return `EPIPE` instead of killing the process. std does this
/// before `main`, but a worker never reaches `main`.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Ignores Ctrl-C: a pool worker leaves the decision to its parent (which the signal reaches
/// too, through the process group).
pub(crate) fn ignore_sigint() {
    // SAFETY: installing SIG_IGN for SIGINT has no preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// Takes the control socket a worker was given as its stdin, and puts `/dev/null` in its place.
/// Fails when fd 0 is not a socket: the process was not started by multiproc.
pub(crate) fn take_control_socket() -> io::Result<OwnedFd> {
    // SAFETY: fd 0 is only borrowed for the duration of these calls; it is open (std would have
    // reopened it otherwise, and a worker's parent always passes one).
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let stat = rustix::fs::fstat(stdin)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "stdin is not a socket"));
    }
    let sock = rustix::io::fcntl_dupfd_cloexec(stdin, 3)?;
    let null = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty())?;
    // SAFETY: we own fd 0 from here on: the socket moved to `sock`, and dup2 replaces fd 0
    // atomically. `std::mem::forget` keeps the OwnedFd from closing fd 0 afterwards.
    let mut zero = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(0) };
    let dup = rustix::io::dup2(&null, &mut zero);
    std::mem::forget(zero);
    dup?;
    Ok(sock)
}

/// Sets the calling thread's name, which `ps` shows for a single-threaded child.
pub(crate) fn set_thread_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    if let Ok(c) = CStr::from_bytes_with_nul(&bytes) {
        let _ = rustix::thread::set_name(c);
    }
}

/// Ends the process at once, without running destructors or exit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// The conventional name of a signal number.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "an unnamed signal",
    }
}

/// The GNU build id of the main executable, read from its program headers in memory (no file
/// access). `None` when the linker wrote none.
pub(crate) fn gnu_build_id() -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    struct Found(Option<Vec<u8>>);

    unsafe extern "C" fn callback(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `info` for the duration of the call, and `data`
        // is the `&mut Found` given below. The first object reported is the main program.
        let (info, found) = unsafe { (&*info, &mut *(data as *mut Found)) };
        let base = info.dlpi_addr as usize;
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let start = base + ph.p_vaddr as usize;
            // SAFETY: a PT_NOTE segment of a loaded object is mapped readable for its
            // whole `p_memsz`.
            let notes = unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
            let mut at = 0;
            while at + 12 <= notes.len() {
                let word = |o: usize| u32::from_ne_bytes([notes[o], notes[o + 1], notes[o + 2], notes[o + 3]]);
                let (namesz, descsz, kind) = (word(at) as usize, word(at + 4) as usize, word(at + 8));
                let name_at = at + 12;
                let desc_at = name_at + namesz.next_multiple_of(4);
                let next = desc_at + descsz.next_multiple_of(4);
                if desc_at + descsz > notes.len() {
                    break;
                }
                if kind == NT_GNU_BUILD_ID && &notes[name_at..name_at + namesz] == b"GNU\0" {
                    found.0 = Some(notes[desc_at..desc_at + descsz].to_vec());
                    return 1;
                }
                at = next;
            }
        }
        1 // only the main program matters: stop after the first object
    }

    let mut found = Found(None);
    // SAFETY: the callback only reads the headers it is given and writes to `found`, which
    // outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(callback), &mut found as *mut Found as *mut libc::c_void);
    }
    found.0
}

/// Identity of the running executable file, used as a build id when the ELF has none.
pub(crate) fn exe_identity() -> io::Result<Vec<u8>> {
    let stat = rustix::fs::stat("/proc/self/exe")?;
    let mut id = Vec::with_capacity(32);
    for v in [stat.st_dev, stat.st_ino, stat.st_size as u64, stat.st_mtime as u64, stat.st_mtime_nsec as u64] {
        id.extend_from_slice(&v.to_le_bytes());
    }
    Ok(id)
}

/// A connected pair of sequenced-packet sockets (each message whole, from any number of
/// senders), both close-on-exec.
pub(crate) fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// Sends one or two descriptors (a connection, and its doorbell) as a one-byte message.
pub(crate) fn send_fds(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    assert!(fds.len() <= 2);
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(fds));
    rustix::net::sendmsg(sock, &[io::IoSlice::new(b"c")], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives the descriptors (one or two) sent by [`send_fds`]; `Ok(None)` once every sender
/// is gone.
pub(crate) fn recv_fds(sock: BorrowedFd<'_>) -> io::Result<Option<Vec<OwnedFd>>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    loop {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let msg = match rustix::net::recvmsg(
            sock,
            &mut [io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if msg.bytes == 0 && fds.is_empty() {
            return Ok(None);
        }
        if !fds.is_empty() {
            return Ok(Some(fds));
        }
    }
}

/// A process's state letter and parent pid, from `/proc/<pid>/stat`; `None` if it cannot be
/// read (no such process, or `/proc` hides it).
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the fields after the command's closing parenthesis: state, ppid, ...
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Whether a state letter of [`proc_stat`] is a process that has ended (a zombie, or dead).
pub(crate) fn ended(state: char) -> bool {
    matches!(state, 'Z' | 'X')
}

/// Whether a process with this pid is alive: a zombie (dead, not yet waited for) is not; one
/// in another pid namespace is not seen.
pub(crate) fn process_exists(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else { return false };
    if matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH)) {
        return false;
    }
    proc_stat(pid).is_none_or(|(state, _)| !ended(state))
}

/// Whether the peer of a connected socket hung up (without waiting).
pub(crate) fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::from_borrowed_fd(sock, PollFlags::RDHUP | PollFlags::HUP)];
    matches!(rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// Writes to stderr with one `write(2)`: usable in a signal handler.
#[cfg(feature = "mpi")]
pub(crate) fn write_stderr(bytes: &[u8]) {
    // SAFETY: fd 2 is borrowed for one write; an error is ignored (nothing better to do).
    let _ = rustix::io::write(unsafe { BorrowedFd::borrow_raw(2) }, bytes);
}

/// The function `on_termination` runs.
#[cfg(feature = "mpi")]
static ON_TERMINATION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(feature = "mpi")]
extern "C" fn terminated(sig: libc::c_int) {
    let f = ON_TERMINATION.load(std::sync::atomic::Ordering::Acquire);
    if f != 0 {
        // SAFETY: only `on_termination` stores here, and it stores an `extern "C" fn()`.
        let f: extern "C" fn() = unsafe { std::mem::transmute::<usize, extern "C" fn()>(f) };
        f();
    }
    // SAFETY: restoring the default action and raising the signal again ends the process as
    // SIGTERM would have; both calls are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Runs `f` (which must be async-signal-safe) when this process gets `SIGTERM`, then ends it
/// as `SIGTERM` would have.
#[cfg(feature = "mpi")]
pub(crate) fn on_termination(f: extern "C" fn()) {
    ON_TERMINATION.store(f as usize, std::sync::atomic::Ordering::Release);
    // SAFETY: `terminated` is an async-signal-safe handler (an atomic load, a write, signal
    // and raise).
    unsafe {
        libc::signal(libc::SIGTERM, terminated as *const () as libc::sighandler_t);
    }
}

/// This process's descriptors above stdio without `FD_CLOEXEC`, which a child would inherit.
/// (Rust opens everything close-on-exec; these come from this process's own parent, from C
/// code or from an explicit `fcntl`.)
pub(crate) fn inheritable_above_stdio() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    let fds = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    fds.filter(|fd| *fd > 2)
        .filter(|fd| {
            // SAFETY: fcntl(F_GETFD) on a descriptor number only reads its flags; a closed one
            // (say, the directory's own, gone by now) gives -1.
            let flags = unsafe { libc::fcntl(*fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC == 0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A manager's acceptor gets a connection alone (an older client, a remote one's stand-in)
    /// or with its doorbell: one message, one or two descriptors, each the one sent.
    #[test]
    fn one_or_two_descriptors_cross_in_one_message() {
        let (a, b) = packet_pair().unwrap();
        let (r1, _w1) = rustix::pipe::pipe().unwrap();
        let page = crate::sys::shm::memfd("test", 4096).unwrap();
        send_fds(a.as_fd(), &[r1.as_fd()]).unwrap();
        send_fds(a.as_fd(), &[r1.as_fd(), page.as_fd()]).unwrap();
        let one = recv_fds(b.as_fd()).unwrap().unwrap();
        assert_eq!(one.len(), 1);
        let two = recv_fds(b.as_fd()).unwrap().unwrap();
        assert_eq!(two.len(), 2);
        let ino = |fd: BorrowedFd<'_>| rustix::fs::fstat(fd).unwrap().st_ino;
        assert_eq!(ino(two[1].as_fd()), ino(page.as_fd()));
        assert_eq!(ino(one[0].as_fd()), ino(r1.as_fd()));
        drop(a);
        assert!(recv_fds(b.as_fd()).unwrap().is_none(), "every sender gone");
    }
}
