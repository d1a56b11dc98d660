//! Shared memory without names: memfds, their mappings, futexes in them, and the byte-range
//! locks that tell whether a process sharing them is still alive.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::fs::{FallocateFlags, MemfdFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A new anonymous shared-memory file of `len` bytes (zeros), close-on-exec. It has no name
/// anywhere in a filesystem; it is freed with its last descriptor and mapping.
pub(crate) fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len)?;
    Ok(fd)
}

/// The length of the file behind `fd`, and its identity (device, inode).
pub(crate) fn file_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, (u64, u64))> {
    let stat = rustix::fs::fstat(fd)?;
    Ok((stat.st_size as u64, (stat.st_dev, stat.st_ino)))
}

/// A shared, read-write mapping of the start of a file; unmapped when dropped.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Left mapped when dropped (see [`Mapping::keep`]).
    kept: bool,
}

// SAFETY: the mapping is plain shared memory; all access to it goes through atomics or through
// ranges that the queue's protocol gives to one thread at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd`, shared.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel overlaps nothing of ours; the file is at
        // least `len` bytes long (the callers check), so every page is backed.
        let ptr = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, fd, 0)?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Mapping { ptr, len, kept: false })
    }

    /// Leaves the memory mapped for the rest of the process's life, dropped or not: for a
    /// robust mutex this process still holds, which the kernel can mark as its holder's death
    /// leaves it only while it is mapped.
    pub(crate) fn keep(&mut self) {
        self.kept = true;
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing borrows the mapping
        // once its owner is dropped.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A second, private open file description of the same file (through `/proc/self/fd`): its
/// byte-range locks belong to this process alone, and go when it dies.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

fn ofd_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, byte: u64, kind: libc::c_short) -> io::Result<libc::flock> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte as libc::off_t;
    lock.l_len = 1;
    loop {
        // SAFETY: `fd` is open, and `lock` is a valid `flock` that the call reads and (for
        // GETLK) writes; `l_pid` must be 0 for OFD locks, which zeroing ensured.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut lock as *mut libc::flock) };
        if r == 0 {
            return Ok(lock);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes an exclusive lock on one byte of the file through this open file description.
/// `false` when another description holds it (a live process).
pub(crate) fn lock_byte(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    match ofd_lock(fd, libc::F_OFD_SETLK, byte, libc::F_WRLCK as libc::c_short) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives up the lock on one byte.
pub(crate) fn unlock_byte(fd: BorrowedFd<'_>, byte: u64) {
    let _ = ofd_lock(fd, libc::F_OFD_SETLK, byte, libc::F_UNLCK as libc::c_short);
}

/// Whether another open file description (of a live process) holds a lock on `byte`.
pub(crate) fn byte_locked_elsewhere(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    let found = ofd_lock(fd, libc::F_OFD_GETLK, byte, libc::F_WRLCK as libc::c_short)?;
    Ok(found.l_type != libc::F_UNLCK as libc::c_short)
}

/// Gives the pages of `[offset, offset + len)` back to the system; the file keeps its length.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    let _ = rustix::fs::fallocate(fd, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len);
}

/// Writes all of `bytes` at `offset` (the file grows as needed).
pub(crate) fn write_at(fd: BorrowedFd<'_>, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::pwrite(fd, bytes, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes at `offset`.
pub(crate) fn read_at(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    read_into(fd, &mut out, offset)?;
    Ok(out)
}

/// Fills `out` with the bytes at `offset`.
pub(crate) fn read_into(fd: BorrowedFd<'_>, out: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        match rustix::io::pread(fd, &mut out[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sleeps while `word` holds `expected`, at most `timeout`, on a futex that other processes
/// can wake (no `FUTEX_PRIVATE_FLAG`). Returns on a wake-up, a changed value, a signal or the
/// timeout alike: the caller checks what it waits for.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| rustix::thread::futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as _,
    });
    let _ = rustix::thread::futex::wait(word, rustix::thread::futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes every sleeper: the kernel reads the count as an `int`, and stops after the first
/// waiter for a negative one (as `u32::MAX` would be).
pub(crate) const WAKE_ALL: u32 = i32::MAX as u32;

/// Wakes up to `n` processes or threads sleeping on `word`; returns how many woke.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), n).unwrap_or(0)
}

/// An eventfd, for a queue's readiness to show in `poll`.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)?)
}

/// Makes an eventfd readable.
pub(crate) fn ring(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Makes an eventfd unreadable again.
pub(crate) fn unring(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

/// Objects in shared memory mapped in this process, by the identity (device, inode) of their
/// memfd: a handle received again and again maps nothing new.
#[derive(Debug)]
pub(crate) struct ByIdentity<T>(std::sync::Mutex<std::collections::HashMap<(u64, u64), std::sync::Weak<T>>>);

impl<T> ByIdentity<T> {
    pub(crate) fn new() -> ByIdentity<T> {
        ByIdentity(std::sync::Mutex::new(std::collections::HashMap::new()))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(u64, u64), std::sync::Weak<T>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object already mapped here, if any.
    pub(crate) fn get(&self, identity: (u64, u64)) -> Option<std::sync::Arc<T>> {
        self.map().get(&identity).and_then(std::sync::Weak::upgrade)
    }

    /// Records a newly mapped object; if another thread mapped the same one first, returns
    /// that one instead (and `new` is dropped).
    pub(crate) fn insert(&self, identity: (u64, u64), new: std::sync::Arc<T>) -> std::sync::Arc<T> {
        let mut map = self.map();
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(first) = map.get(&identity).and_then(std::sync::Weak::upgrade) {
            return first;
        }
        map.insert(identity, std::sync::Arc::downgrade(&new));
        new
    }

    /// Runs `f` on every object still mapped, unless another thread holds the table (at exit,
    /// a thread stopped anywhere may).
    pub(crate) fn for_each(&self, f: impl Fn(&T)) {
        let Ok(map) = self.0.try_lock() else { return };
        let objects: Vec<_> = map.values().filter_map(std::sync::Weak::upgrade).collect();
        drop(map); // an object dropped below takes the table's lock
        for object in &objects {
            f(object);
        }
    }

    /// Forgets an object being dropped (unless a new one has its identity already).
    pub(crate) fn remove(&self, identity: (u64, u64)) {
        let mut map = self.map();
        if map.get(&identity).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&identity);
        }
    }
}

/// Runs `f` when the process exits normally (`exit`, a return from `main`), not when it is
/// killed or aborts.
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain function, valid for the life of the process.
    unsafe { libc::atexit(f) };
}

/// Wakes up to `n` sleepers on a signed futex word (a pthread mutex's).
pub(crate) fn futex_wake_i32(word: &std::sync::atomic::AtomicI32, n: u32) -> usize {
    // SAFETY: AtomicI32 and AtomicU32 have the same size and alignment; the kernel only reads
    // the address.
    let word = unsafe { &*(word as *const std::sync::atomic::AtomicI32).cast::<AtomicU32>() };
    futex_wake(word, n)
}
