//! The pool's driver thread: gives queued tasks to workers, writes their frames, reads the
//! replies, and notices a worker that dies or overruns its task's limit.

use std::sync::Arc;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::pool::shared::Inner;
use crate::pool::task::{Delivery, Failure};
use crate::pool::worker::Worker;
use crate::wire::frame::RecvError;

/// What happened to a worker during one turn of the loop.
enum Fate {
    Fine,
    Gone { timed_out: bool },
}

/// Runs until the pool is terminated, or closed with nothing left to do.
pub(crate) fn run(inner: Arc<Inner>) {
    let mut busy: Vec<Worker> = Vec::new();
    loop {
        if !assign(&inner, &mut busy) {
            terminate(&inner, busy);
            return;
        }
        {
            let st = inner.lock();
            if busy.is_empty() && st.closed && st.queue.is_empty() && st.outstanding == 0 {
                return;
            }
        }
        wait(&inner, &busy);
        inner.drain_wake();

        let mut i = 0;
        while i < busy.len() {
            match turn(&inner, &mut busy[i]) {
                Fate::Fine if busy[i].inflight.is_empty() => inner.release(busy.swap_remove(i)),
                Fate::Fine => i += 1,
                Fate::Gone { timed_out } => died(&inner, busy.swap_remove(i), timed_out),
            }
        }
    }
}

/// Hands queued tasks out: first to idle workers, one each (so they run in parallel). A busy
/// worker gets a second task, so that it never waits for the next, only while the backlog is
/// longer than the pool: at the tail of the work, a task queued behind a long one would wait
/// while another worker sits idle. `false` once the pool is terminated.
fn assign(inner: &Arc<Inner>, busy: &mut Vec<Worker>) -> bool {
    let mut st = inner.lock();
    if st.terminated {
        return false;
    }
    let max_tasks = inner.config.max_tasks_per_child;
    while !st.queue.is_empty() {
        let target = if let Some(w) = st.idle.pop() {
            busy.push(w);
            busy.len() - 1
        } else if st.queue.len() > inner.config.workers {
            let room = busy
                .iter()
                .enumerate()
                .filter(|(_, w)| w.has_room(inner.config.per_worker, max_tasks))
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
}

/// Blocks until a worker has something to read or room to write, dies, or a deadline or a
/// wake-up comes.
fn wait(inner: &Inner, busy: &[Worker]) {
    let mut fds = Vec::with_capacity(1 + 2 * busy.len());
    fds.push(PollFd::from_borrowed_fd(inner.wake_fd(), PollFlags::IN));
    let mut deadline: Option<Instant> = None;
    for w in busy {
        let events = if w.wants_write() { PollFlags::IN | PollFlags::OUT } else { PollFlags::IN };
        fds.push(PollFd::from_borrowed_fd(w.child.socket(), events));
        fds.push(PollFd::from_borrowed_fd(w.child.pidfd(), PollFlags::IN));
        if let Some(d) = w.deadline() {
            deadline = Some(deadline.map_or(d, |e| e.min(d)));
        }
    }
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ }
    });
    let _ = rustix::event::poll(&mut fds, timeout.as_ref());
}

/// Writes, reads and checks one busy worker.
fn turn(inner: &Inner, w: &mut Worker) -> Fate {
    if w.flush().is_err() {
        return Fate::Gone { timed_out: false };
    }
    loop {
        match w.next_reply() {
            Ok(Some((task, frame))) => {
                let pid = w.pid();
                inner.complete(task, Delivery::Reply { pid, frame });
            }
            Ok(None) => break,
            Err(RecvError::TimedOut) => break,
            Err(RecvError::Closed) | Err(RecvError::Failed(_)) => return Fate::Gone { timed_out: false },
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
    if let Some(head) = tasks.pop_front() {
        let failure = if inner.lock().terminated { Failure::Terminated } else { failure };
        inner.complete(head, Delivery::Failed(failure));
    }
    inner.requeue(tasks.into_iter());
    w.retiring = true;
    inner.replace(w);
    inner.wake_driver();
}

/// The pool was terminated: every task in hand or queued (requeued from a dying worker, say)
/// fails, every worker is killed.
fn terminate(inner: &Arc<Inner>, busy: Vec<Worker>) {
    for mut w in busy {
        w.child.kill_and_reap();
        for task in std::mem::take(&mut w.inflight) {
            inner.complete(task, Delivery::Failed(Failure::Terminated));
        }
        inner.forget(w);
    }
    let queued: Vec<_> = inner.lock().queue.drain(..).collect();
    for task in queued {
        inner.complete(task, Delivery::Failed(Failure::Terminated));
    }
}
