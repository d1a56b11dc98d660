//! Start-up: a child carries a marker in its environment; the hook sees it before `main` and
//! turns the process into a worker. Also the guards that make a fork bomb impossible.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::error::Error;

/// Marks a process started as a worker. Removed by the hook before anything else runs.
pub(crate) const WORKER_ENV: &str = "__MULTIPROC_WORKER";
/// The descriptors a worker inherited that it should not have: its hook closes them.
pub(crate) const CLOSE_ENV: &str = "__MULTIPROC_CLOSE_FDS";
/// How deeply this process is nested under the first multiproc parent.
pub(crate) const DEPTH_ENV: &str = "__MULTIPROC_DEPTH";
/// Overrides [`DEFAULT_MAX_DEPTH`].
pub(crate) const MAX_DEPTH_ENV: &str = "MULTIPROC_MAX_DEPTH";
/// How deeply children may nest by default.
pub(crate) const DEFAULT_MAX_DEPTH: u32 = 8;

static HOOK_RAN: AtomicBool = AtomicBool::new(false);
static DEPTH: AtomicU32 = AtomicU32::new(0);

#[cfg(feature = "auto-init")]
#[ctor::ctor(unsafe, anonymous)]
fn auto_init() {
    init();
}

/// Turns this process into a worker if it was started as one; otherwise returns at once.
///
/// With the default `auto-init` feature this runs by itself before `main`, in binaries,
/// examples, tests and doctests, and calling it again does nothing. Without the feature, call
/// it as the first line of `main`: in a child, the code before it runs again.
pub fn init() {
    if HOOK_RAN.swap(true, Ordering::SeqCst) {
        return;
    }
    let depth = std::env::var(DEPTH_ENV).ok().and_then(|d| d.parse().ok()).unwrap_or(0);
    DEPTH.store(depth, Ordering::SeqCst);
    if std::env::var_os(WORKER_ENV).is_some() {
        // Before `main` nothing else runs yet; with `init()` in `main`, nothing has started
        // threads that read the environment (the documented rule for calling it first).
        std::env::remove_var(WORKER_ENV);
        close_inherited();
        crate::worker::run_child();
    }
    // Started by mpirun or srun: every rank but 0 serves as a pool worker from here on.
    #[cfg(feature = "mpi")]
    crate::mpi::init();
}

/// Closes the descriptors the parent named as inherited by accident (open in it without
/// `FD_CLOEXEC`), as CPython's spawn does: a worker holds only what it was given. They hold
/// those numbers since exec, so nothing run before this hook can have reused them.
fn close_inherited() {
    let Some(list) = std::env::var_os(CLOSE_ENV) else { return };
    std::env::remove_var(CLOSE_ENV);
    for fd in list.to_string_lossy().split(',').filter_map(|n| n.parse::<i32>().ok()).filter(|fd| *fd > 2) {
        // SAFETY: a descriptor this process inherited and nothing in it owns: no Rust object
        // holds it, so closing it cannot close another's.
        unsafe { libc::close(fd) };
    }
}

/// The nesting depth a new child of this process gets, if starting one is allowed.
pub(crate) fn child_depth() -> Result<u32, Error> {
    if !HOOK_RAN.load(Ordering::SeqCst) {
        return Err(Error::HookMissing);
    }
    let max = std::env::var(MAX_DEPTH_ENV).ok().and_then(|m| m.parse().ok()).unwrap_or(DEFAULT_MAX_DEPTH);
    let depth = DEPTH.load(Ordering::SeqCst) + 1;
    if depth > max {
        return Err(Error::NestingTooDeep { depth, max });
    }
    Ok(depth)
}
