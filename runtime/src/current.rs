//! What this process is to multiproc, and the children it has: Python's `current_process()`,
//! `parent_process()` and `active_children()`.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// What a process is to multiproc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Not started by multiproc: the program's own process.
    Main,
    /// Started by `spawn` to run one function.
    Child,
    /// A worker of a [`Pool`](crate::Pool).
    PoolWorker,
    /// A [`Manager`](crate::Manager)'s server.
    ManagerServer,
    /// An MPI rank serving a pool over MPI.
    MpiRank,
}

/// This process as multiproc knows it (Python's `multiprocessing.current_process()`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CurrentProcess {
    /// Its process id.
    pub pid: u32,
    /// The name it was started with ([`ProcessBuilder::name`](crate::ProcessBuilder::name);
    /// `multiproc-w<n>` for a pool's worker), if any.
    pub name: Option<String>,
    /// What it is.
    pub role: Role,
}

static ROLE: Mutex<Option<(Role, Option<String>)>> = Mutex::new(None);

/// Records what this process is (when its worker loop starts; a manager's server, a child
/// too, says so when it starts serving).
pub(crate) fn set(role: Role, name: Option<String>) {
    *ROLE.lock().unwrap_or_else(|p| p.into_inner()) = Some((role, name));
}

/// This process: its pid, its name, and whether it is a multiproc child, pool worker, manager
/// server or MPI rank.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{current_process, process_fn, ProcessBuilder, Role};
///
/// #[process_fn]
/// fn who() -> (Option<String>, bool) {
///     let me = current_process();
///     (me.name, me.role == Role::Child && multiproc::parent_process() == Some(std::os::unix::process::parent_id()))
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// assert_eq!(current_process().role, Role::Main);
/// let p = ProcessBuilder::new().name("reporter").spawn(who, ())?;
/// assert_eq!(p.join()?, (Some("reporter".to_string()), true));
/// # Ok(())
/// # }
/// ```
pub fn current_process() -> CurrentProcess {
    let (role, name) = ROLE.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or((Role::Main, None));
    CurrentProcess { pid: std::process::id(), name, role }
}

/// The process that started this one, if multiproc did (Python's `parent_process()`): its
/// pid. `None` in the program's own process (and for an MPI rank: its launcher started it).
pub fn parent_process() -> Option<u32> {
    match current_process().role {
        Role::Main | Role::MpiRank => None,
        _ => Some(std::os::unix::process::parent_id()),
    }
}

/// The children this process started that are still running (Python's
/// `active_children()`): spawned processes, pool workers, a manager's server. Their pids, in
/// order.
pub fn active_children() -> Vec<u32> {
    let me = std::process::id();
    let known: Vec<u32> = children().iter().copied().collect();
    known.into_iter().filter(|&pid| running_child_of(pid, me)).collect()
}

fn children() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Notes a child started.
pub(crate) fn started(pid: u32) {
    children().insert(pid);
}

/// Notes a child's handle gone (it was reaped).
pub(crate) fn gone(pid: u32) {
    children().remove(&pid);
}

/// Whether `pid` is a child of `parent` that has not ended (a zombie has).
fn running_child_of(pid: u32, parent: u32) -> bool {
    crate::sys::proc_stat(pid).is_some_and(|(state, ppid)| ppid == parent && !crate::sys::ended(state))
}
