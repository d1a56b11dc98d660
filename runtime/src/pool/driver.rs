//! The pool's driver thread: gives queued tasks to workers, writes their frames, reads the
//! replies, notices a worker that dies (busy or idle) or overruns its task's limit, and reaps
//! the workers sent away.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::pool::shared::{retire, Inner, State};
use crate::pool::task::{Delivery, Failure};
use crate::pool::worker::Worker;
use crate::wire::frame::RecvError;

/// How long a worker told to exit has before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// What happened to a worker during one turn of the loop.
enum Fate {
    Fine,
    Gone { timed_out: bool },
}

/// A worker on its way out, and when it will be killed if it has not exited.
struct Leaving {
    worker: Worker,
    kill_at: Instant,
}

/// Runs until the pool is terminated, or closed with nothing left to do.
pub(crate) fn run(inner: Arc<Inner>) {
    let mut busy: Vec<Worker> = Vec::new();
    let mut leaving: Vec<Leaving> = Vec::new();
    let mut kills: Vec<u64> = Vec::new();
    loop {
        if !assign(&inner, &mut busy) {
            terminate(&inner, busy, leaving);
            return;
        }
        kills.extend(inner.update(|st| std::mem::take(&mut st.kill_requests)));
        if !kills.is_empty() {
            cancel_by_killing(&inner, &mut busy, &mut kills);
        }
        let (idle, finished) = inner.update(|st| {
            let now = Instant::now();
            leaving.extend(st.exiting.drain(..).map(|worker| Leaving { worker, kill_at: now + EXIT_GRACE }));
            if st.closed && st.queue.is_empty() {
                // Python's pool lets its workers go once closed and done: so does this one
                for w in std::mem::take(&mut st.idle) {
                    retire(st, w);
                }
                leaving.extend(st.exiting.drain(..).map(|worker| Leaving { worker, kill_at: now + EXIT_GRACE }));
            }
            (idle_pidfds(st), finished(st, &busy, &leaving))
        });
        if finished {
            return;
        }
        let fired = wait(&inner, &busy, &idle, &leaving);
        inner.drain_wake();
        for pid in fired {
            died_while_idle(&inner, pid);
        }
        reap(&mut leaving);

        let mut i = 0;
        while i < busy.len() {
            match turn(&mut busy[i]) {
                Fate::Fine if busy[i].inflight.is_empty() => inner.release(busy.swap_remove(i)),
                Fate::Fine => i += 1,
                Fate::Gone { timed_out } => died(&inner, busy.swap_remove(i), timed_out),
            }
        }
    }
}

/// Cancels the tasks in `kills`: one still queued is taken out; one running at a worker's head
/// has its worker killed (the death then fails it as cancelled, and the tasks behind it go back
/// to the queue); one waiting behind another in a worker's pipeline stays in `kills` until it
/// runs or its worker dies. One found nowhere has finished (or was a direct call): dropped.
fn cancel_by_killing(inner: &Arc<Inner>, busy: &mut [Worker], kills: &mut Vec<u64>) {
    kills.retain(|&id| {
        if inner.cancel_queued(&[id]) > 0 {
            return false;
        }
        if let Some(w) = busy.iter_mut().find(|w| w.inflight.front().is_some_and(|t| t.id == id)) {
            if w.killing.is_none() {
                w.killing = Some(id);
                let _ = w.child.signal(crate::sys::Sig::Kill);
            }
            return false;
        }
        busy.iter().any(|w| w.inflight.iter().any(|t| t.id == id))
    });
}

/// Whether the driver's work is over: closed, nothing queued, held, started or leaving.
fn finished(st: &State, busy: &[Worker], leaving: &[Leaving]) -> bool {
    st.closed
        && busy.is_empty()
        && leaving.is_empty()
        && st.queue.is_empty()
        && st.idle.is_empty()
        && st.outstanding() == 0
        && st.starting() == 0
}

/// The pidfds of the idle workers, to notice a death before the worker is given work.
fn idle_pidfds(st: &State) -> Vec<(u32, Arc<OwnedFd>)> {
    st.idle.iter().filter_map(|w| st.members.get(&w.pid()).map(|m| (w.pid(), Arc::clone(&m.pidfd)))).collect()
}

/// Hands queued tasks out: first to idle workers, one each (so they run in parallel). A busy
/// worker gets a second task, so that it never waits for the next, only while the backlog is
/// longer than the pool: at the tail of the work, a task queued behind a long one would wait
/// while another worker sits idle. `false` once the pool is terminated.
fn assign(inner: &Arc<Inner>, busy: &mut Vec<Worker>) -> bool {
    let max_tasks = inner.config.max_tasks_per_child;
    let (workers, per_worker) = (inner.config.workers, inner.config.per_worker);
    inner.update(|st| {
        if st.terminated {
            return false;
        }
        while !st.queue.is_empty() {
            let target = if let Some(w) = st.idle.pop() {
                busy.push(w);
                busy.len() - 1
            } else if st.queue.len() > workers {
                let room = busy
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.has_room(per_worker, max_tasks))
                    .min_by_key(|(_, w)| w.inflight.len());
                match room {
                    Some((i, _)) => i,
                    None => break,
                }
            } else {
                break;
            };
            let task = st.queue.pop_front().expect("checked non-empty");
            busy[target].push(task);
        }
        true
    })
}

/// Blocks until a worker has something to read or room to write, a worker dies (busy, idle or
/// leaving), or a deadline or a wake-up comes. Returns the pids of idle workers that died.
fn wait(inner: &Inner, busy: &[Worker], idle: &[(u32, Arc<OwnedFd>)], leaving: &[Leaving]) -> Vec<u32> {
    let mut fds = Vec::with_capacity(1 + 2 * busy.len() + idle.len() + leaving.len());
    fds.push(PollFd::from_borrowed_fd(inner.wake_fd(), PollFlags::IN));
    let mut deadline: Option<Instant> = None;
    let mut sooner = |d: Instant| deadline = Some(deadline.map_or(d, |e: Instant| e.min(d)));
    for w in busy {
        let events = if w.wants_write() { PollFlags::IN | PollFlags::OUT } else { PollFlags::IN };
        fds.push(PollFd::from_borrowed_fd(w.child.socket(), events));
        fds.push(PollFd::from_borrowed_fd(w.child.pidfd(), PollFlags::IN));
        if let Some(d) = w.deadline() {
            sooner(d);
        }
    }
    let idle_at = fds.len();
    for (_, pidfd) in idle {
        fds.push(PollFd::from_borrowed_fd(pidfd.as_fd(), PollFlags::IN));
    }
    for l in leaving {
        fds.push(PollFd::from_borrowed_fd(l.worker.child.pidfd(), PollFlags::IN));
        sooner(l.kill_at);
    }
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ }
    });
    if inner.config.mpi && !(busy.is_empty() && leaving.is_empty()) {
        look_for_messages(&mut fds, deadline, busy, leaving);
    } else {
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
    }
    fds[idle_at..idle_at + idle.len()]
        .iter()
        .zip(idle)
        .filter(|(fd, _)| !fd.revents().is_empty())
        .map(|(_, (pid, _))| *pid)
        .collect()
}

/// How long the driver looks for a rank's reply, yielding, before it sleeps between looks, and
/// its longest sleep. Shorter than a blocking caller's (200 us and 1 ms): the driver waits for
/// calls that run while it waits, and on a host with fewer cores than ranks its looking takes
/// a core from them. Measured (W3 over MPI against the local pool, `mpirun -n 3` on 2 cores,
/// 2 runs each): 0.45-0.51 with 200 us and 1 ms, 0.64-0.74 with 20 us and 100 us.
#[cfg(feature = "mpi")]
const DRIVER_HOT: Duration = Duration::from_micros(20);
#[cfg(feature = "mpi")]
const DRIVER_COLDEST: Duration = Duration::from_micros(100);

/// [`wait`] over MPI ranks, whose replies come as messages, not on a descriptor: looks for a
/// message from a busy or leaving rank and polls the descriptors (the wake-up among them)
/// without waiting, yielding and then sleeping longer between looks, until one shows or the
/// deadline passes.
fn look_for_messages(fds: &mut [PollFd<'_>], deadline: Option<Instant>, busy: &[Worker], leaving: &[Leaving]) {
    #[cfg(feature = "mpi")]
    {
        let since = Instant::now();
        let mut pause = Duration::from_micros(10);
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        loop {
            let ready = rustix::event::poll(fds, Some(&zero)).unwrap_or(0) > 0;
            let replied = busy.iter().any(|w| w.child.has_message() || w.wants_write())
                || leaving.iter().any(|l| l.worker.child.has_message());
            let now = Instant::now();
            if ready || replied || deadline.is_some_and(|d| now >= d) {
                return;
            }
            crate::mpi::backoff_within(since, now, deadline, &mut pause, DRIVER_HOT, DRIVER_COLDEST);
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (deadline, busy, leaving);
        let _ = rustix::event::poll(fds, None);
    }
}

/// A worker died while idle: it never got the work it would have failed; replace it.
fn died_while_idle(inner: &Arc<Inner>, pid: u32) {
    let found = inner.update(|st| {
        let at = st.idle.iter().position(|w| w.pid() == pid)?;
        Some(st.idle.swap_remove(at))
    });
    // not idle any more: whoever took it notices the death itself
    if let Some(mut w) = found {
        w.retiring = true;
        inner.replace(w);
    }
}

/// Reaps the workers that have exited, and kills the ones whose grace ran out.
fn reap(leaving: &mut Vec<Leaving>) {
    let now = Instant::now();
    leaving.retain_mut(|l| {
        if l.worker.child.try_status().is_some() || now >= l.kill_at {
            l.worker.child.kill_and_reap();
            return false;
        }
        true
    });
}

/// Writes, reads and checks one busy worker.
fn turn(w: &mut Worker) -> Fate {
    if w.flush().is_err() {
        return Fate::Gone { timed_out: false };
    }
    loop {
        match w.next_reply() {
            Ok(Some((task, frame))) => {
                let pid = w.pid();
                task.complete(Delivery::Reply { pid, frame });
            }
            Ok(None) => break,
            Err(RecvError::TimedOut) => break,
            Err(RecvError::Closed | RecvError::Truncated | RecvError::Failed(_)) => {
                return Fate::Gone { timed_out: false }
            }
        }
    }
    if w.deadline().is_some_and(|d| Instant::now() >= d) {
        return Fate::Gone { timed_out: true };
    }
    if !w.inflight.is_empty() && w.child.has_exited() {
        return Fate::Gone { timed_out: false };
    }
    Fate::Fine
}

/// A worker died (or was killed for overrunning): only the task it was running fails; the ones
/// queued behind it never started and go back to the queue. Then it is replaced.
pub(crate) fn died(inner: &Arc<Inner>, mut w: Worker, timed_out: bool) {
    let failure = w.failure(timed_out);
    let mut tasks = std::mem::take(&mut w.inflight);
    if let Some(mut head) = tasks.pop_front() {
        let failure = match () {
            _ if inner.read(|st| st.terminated) => Failure::Terminated,
            _ if w.killing == Some(head.id) => Failure::Cancelled { killed: true },
            _ => failure,
        };
        if matches!(failure, Failure::Died { .. }) && head.retries_left > 0 {
            // runs again first, before the tasks that were behind it
            head.retries_left -= 1;
            crate::trace::event!(info, id = head.id, "retrying a task whose worker died");
            tasks.push_front(head);
        } else {
            head.complete(Delivery::Failed(failure));
        }
    }
    inner.requeue(tasks.into_iter());
    w.retiring = true;
    inner.replace(w);
}

/// The pool was terminated: every task in hand or queued (requeued from a dying worker, say)
/// fails, every worker is killed and reaped.
fn terminate(inner: &Arc<Inner>, busy: Vec<Worker>, leaving: Vec<Leaving>) {
    let mut gone: Vec<Worker> = leaving.into_iter().map(|l| l.worker).collect();
    for mut w in busy {
        w.child.kill_and_reap();
        for task in std::mem::take(&mut w.inflight) {
            task.complete(Delivery::Failed(Failure::Terminated));
        }
        gone.push(w);
    }
    let (queued, idle, exiting) = inner.update(|st| {
        for w in st.idle.iter().chain(&st.exiting).chain(&gone) {
            st.members.remove(&w.pid());
        }
        (std::mem::take(&mut st.queue), std::mem::take(&mut st.idle), std::mem::take(&mut st.exiting))
    });
    for task in queued {
        task.complete(Delivery::Failed(Failure::Terminated));
    }
    for mut w in idle.into_iter().chain(exiting).chain(gone) {
        w.child.kill_and_reap();
    }
}
