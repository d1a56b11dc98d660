//! The fast path of a blocking call: when a worker is idle and nothing is queued, the caller
//! borrows it and talks to it directly, with no hand-off to the driver thread: one wake-up
//! each way, as between two processes and a socketpair.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::error::Result;
use crate::function::ProcessFn;
use crate::pool::decode;
use crate::pool::shared::Inner;
use crate::pool::task::{Delivery, Failure, Sink, Task};
use crate::pool::worker::Worker;
use crate::wire::frame::{Encoded, Frame, RecvError};

/// How long a blocking call looks for its reply before it sleeps. Measured (W2, 20,000 blocking
/// `square` calls on 2 workers, this 2-core VM): 41 us per call without, 21 us with 20 us, 19
/// us with 60 us; the cost is at most this much CPU per call that runs longer.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(25);

/// Runs the call on an idle worker if there is one; `None` means "submit it instead".
pub(crate) fn call<F: ProcessFn>(
    inner: &Arc<Inner>,
    id: u64,
    frame: Arc<Encoded>,
    retries: &mut u32,
) -> Option<Result<F::Output>> {
    if inner.config.mpi && !frame.fds.is_empty() {
        return None; // `submit` refuses it, and says why
    }
    loop {
        let (mut w, counted) = match inner.lease() {
            Err(refusal) => return Some(Err(refusal.to_error())),
            Ok(None) => return None,
            Ok(Some(leased)) => leased,
        };
        if w.child.has_exited() {
            // died while idle: the call never reached it; replace it and look again
            drop(counted);
            w.retiring = true;
            inner.replace(w);
            continue;
        }
        let task = Task {
            id,
            frame: Arc::clone(&frame),
            timeout: inner.config.task_timeout,
            sink: Sink::none(),
            _counted: counted,
            span: crate::trace::TaskSpan::new(F::NAME, id),
            retries_left: 0, // counted here, in `retries`
        };
        w.push(task);
        let pid = w.pid();
        let executable = w.child.executable.clone();
        return Some(match drive(&mut w) {
            Ok(frame) => {
                inner.release(w);
                decode::single::<F>(Delivery::Reply { pid, frame }, &executable)
            }
            Err(timed_out) => {
                let failure = w.failure(timed_out);
                if let Some(task) = w.inflight.front() {
                    task.span.done(|| Some(failure.to_error()));
                }
                w.inflight.clear(); // the task is counted done here
                w.retiring = true;
                inner.replace(w);
                let failure = if inner.read(|st| st.terminated) { Failure::Terminated } else { failure };
                if matches!(failure, Failure::Died { .. }) && *retries > 0 {
                    *retries -= 1;
                    crate::trace::event!(info, id, "retrying a task whose worker died");
                    continue;
                }
                Err(failure.to_error())
            }
        });
    }
}

/// Sends the worker's one task and waits for its reply. `Err(timed_out)` when the worker died
/// or overran the task's limit.
fn drive(w: &mut Worker) -> std::result::Result<Frame, bool> {
    let rung = w.child.doorbell.as_ref().map(|b| b.count(0));
    if w.flush_all().is_err() {
        return Err(false);
    }
    // A short task answers within microseconds: look for the reply without sleeping first,
    // which saves this thread's wake-up. Bounded, and only while a call is in flight, so an
    // idle pool burns nothing. A local worker rings its doorbell once the reply is sent, so
    // the looking is in memory, and the reply is read with one `recvmsg`.
    let spin_until = Instant::now() + SPIN_BEFORE_SLEEP;
    while Instant::now() < spin_until {
        if let (Some(bell), Some(rung)) = (&w.child.doorbell, rung) {
            if bell.count(0) == rung {
                std::hint::spin_loop();
                continue;
            }
        }
        match w.next_reply() {
            Ok(Some((task, frame))) => return Ok(answered(task, frame)),
            Ok(None) | Err(RecvError::TimedOut) => std::hint::spin_loop(),
            Err(_) => return Err(false),
        }
    }
    loop {
        match w.next_reply() {
            Ok(Some((task, frame))) => return Ok(answered(task, frame)),
            Ok(None) | Err(RecvError::TimedOut) => {}
            Err(_) => return Err(false),
        }
        let deadline = w.deadline();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(true);
        }
        if w.child.is_rank() {
            // a rank's reply is a message: look for it (no deadline: no task limit over ranks)
            #[cfg(feature = "mpi")]
            if let Some(link) = w.child.link() {
                link.wait_message(deadline);
            }
            continue;
        }
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ }
        });
        let mut fds = [
            PollFd::from_borrowed_fd(w.child.socket(), PollFlags::IN),
            PollFd::from_borrowed_fd(w.child.pidfd(), PollFlags::IN),
        ];
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        if !fds[1].revents().is_empty() {
            // exited: take a reply it sent before dying, else it died on the task
            return match w.next_reply() {
                Ok(Some((task, frame))) => Ok(answered(task, frame)),
                _ => Err(false),
            };
        }
    }
}

/// The reply of a task this thread waited for itself (it has no sink): its span says so.
fn answered(task: Task, frame: Frame) -> Frame {
    task.span.done(|| None);
    frame
}
