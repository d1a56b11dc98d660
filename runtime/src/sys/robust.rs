//! Robust, process-shared pthread mutexes in shared memory, and the rescuer that keeps a chain
//! of deaths from stranding their waiters.
//!
//! **Why a rescuer.** When a mutex's holder dies, however it dies, the kernel marks the mutex
//! (`FUTEX_OWNER_DIED`) and wakes *one* waiter, which takes it over with `EOWNERDEAD`. If that
//! waiter is killed too, between its wake-up and its taking the lock, nobody is woken again:
//! the other waiters sleep forever on a lock nobody holds (the kernel's fix for dying waiters,
//! in `handle_futex_death`, covers only a lock word of 0). Sleeping with a timeout would avoid
//! that, but a timed sleep costs a timer each time, which doubled the cost of a contended lock
//! (W7). So waiters sleep untimed, and while any of these mutexes is mapped in this process, a
//! rescuer thread looks at them for one in that stranded state (no owner, owner died, waiters)
//! and wakes a waiter, which then takes the lock with `EOWNERDEAD`: every 50 ms while some
//! mutex has sleepers, every second while none has (a stranded one has sleepers, so it is seen
//! within a second, then every 50 ms). It ends when no mutex is mapped here any more.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A process-shared, robust pthread mutex, placed in shared memory: when its holder dies
/// (thread or process, however it ends), the next locker gets it with [`Locked::OwnerDied`]
/// instead of waiting forever.
#[repr(C)]
pub(crate) struct RobustMutex(std::cell::UnsafeCell<libc::pthread_mutex_t>, std::sync::atomic::AtomicU32);

// SAFETY: a process-shared pthread mutex is made to be used by many threads (and processes)
// at once; every access goes through the pthread functions or atomics.
unsafe impl Sync for RobustMutex {}

impl std::fmt::Debug for RobustMutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RobustMutex")
    }
}

/// How a lock attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Locked {
    /// Taken.
    Yes,
    /// Taken, and its previous holder died holding it (now consistent again).
    OwnerDied,
    /// Held elsewhere until the deadline (or at once, for a try).
    Busy,
    /// This thread holds it already (an error-checking mutex).
    ByThisThread,
}

/// What a mutex does when its holder locks it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Relock {
    /// Refuses ([`Locked::ByThisThread`]): a lock. (A robust "normal" mutex, with the check
    /// made here on the slow path: glibc's error-checking kind costs 40% more under contention,
    /// measured.)
    Refuse,
    /// Counts: a re-entrant lock.
    Count,
}

impl RobustMutex {
    /// Initializes the mutex in place. The memory must be used by nobody else yet.
    pub(crate) fn init(&self, relock: Relock) -> io::Result<()> {
        let kind = match relock {
            Relock::Refuse => libc::PTHREAD_MUTEX_NORMAL,
            Relock::Count => libc::PTHREAD_MUTEX_RECURSIVE,
        };
        // SAFETY: the attribute object is initialized before use and destroyed after; the
        // mutex's memory is writable, and nobody else uses it yet (the callers' promise).
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            libc::pthread_mutexattr_settype(&mut attr, kind);
            let r = libc::pthread_mutex_init(self.0.get(), &attr);
            self.1.store(relock as u32, Relaxed);
            libc::pthread_mutexattr_destroy(&mut attr);
            match r {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        }
    }

    /// Locks, waiting until `deadline` (forever for `None`; not at all when it has passed).
    #[inline]
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> io::Result<Locked> {
        let m = self.0.get();
        let r =
            if self.1.load(Relaxed) == Relock::Refuse as u32 && self.word().load(Relaxed) & TID_MASK == this_thread() {
                libc::EDEADLK // a normal mutex would wait for itself forever
            } else {
                match deadline {
                    // SAFETY: the mutex was initialized (`init`) and lives in memory mapped for as
                    // long as `self` is borrowed.
                    None => unsafe { libc::pthread_mutex_lock(m) },
                    Some(d) => self.lock_until(d),
                }
            };
        match r {
            0 => Ok(Locked::Yes),
            libc::EOWNERDEAD => {
                // SAFETY: EOWNERDEAD hands the mutex over to this thread; marking it consistent
                // is what lets the next lockers use it normally.
                unsafe { libc::pthread_mutex_consistent(m) };
                Ok(Locked::OwnerDied)
            }
            libc::EBUSY | libc::ETIMEDOUT => Ok(Locked::Busy),
            libc::EDEADLK => Ok(Locked::ByThisThread),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Tries, then waits until `deadline` if it has not passed.
    fn lock_until(&self, deadline: Instant) -> libc::c_int {
        let m = self.0.get();
        // SAFETY: as in `lock`.
        let r = unsafe { libc::pthread_mutex_trylock(m) };
        match deadline.checked_duration_since(Instant::now()) {
            Some(left) if r == libc::EBUSY => {
                let at = realtime_in(left);
                // SAFETY: as in `lock`; `at` is a valid timespec.
                unsafe { libc::pthread_mutex_timedlock(m, &at) }
            }
            _ => r,
        }
    }

    /// Unlocks; the calling thread must hold the mutex.
    #[inline]
    pub(crate) fn unlock(&self) {
        // SAFETY: initialized and mapped (see `lock`); the callers hold the mutex (a guard).
        unsafe { libc::pthread_mutex_unlock(self.0.get()) };
    }

    /// Whether some thread holds it now.
    pub(crate) fn is_locked(&self) -> bool {
        self.word().load(Acquire) & TID_MASK != 0
    }

    /// The lock word: glibc keeps it first in the mutex (the owner's thread id, and the
    /// `FUTEX_WAITERS` and `FUTEX_OWNER_DIED` bits), a layout its ABI fixes.
    fn word(&self) -> &AtomicI32 {
        // SAFETY: the mutex's first 4 bytes are its aligned lock word, only ever changed
        // atomically, and live as long as `self`.
        unsafe { AtomicI32::from_ptr(self.0.get().cast()) }
    }

    /// Whether the holder died and the one waiter the kernel woke died too before taking it.
    fn stranded(&self) -> bool {
        let w = self.word().load(Acquire);
        w & TID_MASK == 0 && w & OWNER_DIED != 0 && w & WAITERS != 0
    }
}

/// The bits of a robust mutex's lock word (`linux/futex.h`).
const WAITERS: i32 = 0x8000_0000_u32 as i32;
const OWNER_DIED: i32 = 0x4000_0000;
const TID_MASK: i32 = 0x3fff_ffff;

/// This thread's id, as the kernel writes it in a lock word.
fn this_thread() -> i32 {
    thread_local! {
        static TID: i32 = rustix::thread::gettid().as_raw_nonzero().get();
    }
    TID.with(|t| *t)
}

/// `CLOCK_REALTIME` `after` from now, as pthread's timed functions take it.
fn realtime_in(after: Duration) -> libc::timespec {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let total = Duration::new(now.tv_sec as u64, now.tv_nsec as u32).saturating_add(after);
    libc::timespec { tv_sec: total.as_secs().min(i64::MAX as u64) as _, tv_nsec: total.subsec_nanos() as _ }
}

/// The mutexes mapped in this process (addresses, with repeats): what the rescuer looks at.
static WATCHED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Whether the rescuer thread runs.
static RESCUER: AtomicBool = AtomicBool::new(false);

impl RobustMutex {
    /// Puts the mutex under the rescuer's watch, for as long as its memory stays mapped here:
    /// call [`unwatch`](RobustMutex::unwatch) before unmapping it.
    pub(crate) fn watch(&self) {
        WATCHED.lock().unwrap_or_else(|p| p.into_inner()).push(self as *const RobustMutex as usize);
        if !RESCUER.swap(true, AcqRel) {
            let started = std::thread::Builder::new().name("multiproc-rescuer".into()).spawn(rescue);
            if started.is_err() {
                RESCUER.store(false, Release); // the next mutex mapped tries again
            }
        }
    }

    /// Takes the mutex off the rescuer's watch (its memory is about to be unmapped).
    pub(crate) fn unwatch(&self) {
        let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = watched.iter().position(|a| *a == self as *const RobustMutex as usize) {
            watched.swap_remove(i);
        }
    }

    /// Whether some thread (of any process) sleeps on it.
    fn has_waiters(&self) -> bool {
        self.word().load(Relaxed) & WAITERS != 0
    }
}

/// How often the rescuer looks while someone sleeps on a mutex mapped here...
const RESCUE_EVERY: Duration = Duration::from_millis(50);
/// ... and while nobody does (a stranded mutex always has sleepers: they are seen first).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The rescuer: while mutexes are mapped in this process, wakes a waiter of any that is
/// stranded. It ends when none is mapped (the next one mapped starts another).
fn rescue() {
    loop {
        let mut pause = LOOK_EVERY;
        {
            let watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
            if watched.is_empty() {
                RESCUER.store(false, Release);
                return; // `watch` pushes under this lock before it looks at the flag
            }
            for at in watched.iter() {
                // SAFETY: a watched mutex's memory stays mapped until it is unwatched, which
                // takes this lock.
                let m = unsafe { &*(*at as *const RobustMutex) };
                if m.stranded() {
                    super::shm::futex_wake_i32(m.word(), 1);
                }
                if m.has_waiters() {
                    pause = RESCUE_EVERY;
                }
            }
        }
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use crate::sys::shm::{memfd, Mapping};

    fn mutex() -> (Arc<Mapping>, &'static RobustMutex) {
        let fd = memfd("robust-test", 4096).unwrap();
        let map = Arc::new(Mapping::new(fd.as_fd(), 4096).unwrap());
        // SAFETY: the mapping is 4 KiB of zeros, page-aligned, and stays alive for the test
        // (the Arc is kept by the caller until after every thread using the mutex ended).
        let m = unsafe { &*(map.ptr() as *const RobustMutex) };
        m.init(Relock::Refuse).unwrap();
        m.watch();
        (map, m)
    }

    #[test]
    fn a_waiter_stranded_by_a_chain_of_deaths_is_woken_by_the_rescuer() {
        // The state a holder's death leaves when the one waiter the kernel woke is killed too:
        // no owner, owner died, waiters asleep, and no wake-up coming.
        let (map, m) = mutex();
        m.word().store(0x3fff_fff0, SeqCst); // held by a thread that does not exist
        let waiter = std::thread::spawn(move || {
            let r = m.lock(None).unwrap();
            m.unlock();
            r
        });
        let start = Instant::now();
        while m.word().load(SeqCst) & WAITERS == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "the waiter never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20)); // inside futex_wait by now
        m.word().store(OWNER_DIED | WAITERS, SeqCst); // the chain of deaths, without a wake-up
        let start = Instant::now();
        while !waiter.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(10), "the stranded waiter was never woken");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(waiter.join().unwrap(), Locked::OwnerDied);
        assert_eq!(m.lock(Some(Instant::now())).unwrap(), Locked::Yes, "consistent again");
        m.unlock();
        m.unwatch();
        drop(map);
    }

    #[test]
    fn timeouts_and_relocking() {
        let (_map, m) = mutex();
        assert_eq!(m.lock(None).unwrap(), Locked::Yes);
        assert_eq!(m.lock(Some(Instant::now())).unwrap(), Locked::ByThisThread, "a try by the holder");
        assert_eq!(m.lock(Some(Instant::now() + Duration::from_millis(5))).unwrap(), Locked::ByThisThread);
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                let start = Instant::now();
                (m.lock(Some(Instant::now() + Duration::from_millis(50))).unwrap(), start.elapsed())
            })
            .join()
            .unwrap()
        });
        assert_eq!(other.0, Locked::Busy);
        assert!(other.1 >= Duration::from_millis(50), "{:?}", other.1);
        m.unlock();
        m.unwatch();
    }
}
