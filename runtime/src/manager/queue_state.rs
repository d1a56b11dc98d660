//! A manager's queues at the server: bounded or not, joinable or not.
//!
//! A joinable queue counts, for each client process, the tasks it took minus those it marked
//! done. A process that has gone (no connection open, and on this machine no process with its
//! pid) with tasks still counted has lost them: a `join` says so once to each process that
//! joins, and then waits only for the others. The count taken is changed in the same step as
//! the item leaves the queue, and undone with it when the reply cannot be delivered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, MutexGuard};

use serde_bytes::ByteBuf;

use crate::manager::proto::{Answer, Failure, Op, Reply};
use crate::manager::server::{wait_until, Effect, Peer, Store};

/// A queue's items and counts.
pub(crate) struct QueueState {
    items: VecDeque<Vec<u8>>,
    maxsize: Option<usize>,
    tasks: Option<Tasks>,
}

/// A joinable queue's counts.
#[derive(Default)]
struct Tasks {
    put: u64,
    done: u64,
    /// Tasks lost with the processes that took them: no longer waited for.
    written_off: u64,
    /// Taken minus done, and the pid, of each client process (negative for a process that
    /// marked done more than it took: tasks another took).
    open: HashMap<u64, (i64, u32)>,
    /// Each loss, in order: the pid and how many tasks.
    losses: Vec<(u32, u64)>,
    /// How many of `losses` each joining process has been told.
    told: HashMap<u64, usize>,
}

impl Tasks {
    fn unfinished(&self) -> u64 {
        self.put.saturating_sub(self.done + self.written_off)
    }

    /// Writes off the tasks of processes that have gone.
    fn find_losses(&mut self, store: &Store) {
        let gone: Vec<u64> = self.open.keys().copied().filter(|p| store.gone(*p)).collect();
        for process in gone {
            let (net, pid) = self.open.remove(&process).expect("a key just read");
            // never more than are unfinished: another process may have marked them done
            let lost = (net.max(0) as u64).min(self.unfinished());
            if lost > 0 {
                self.written_off += lost;
                self.losses.push((pid, lost));
            }
        }
    }

    fn count(&mut self, process: u64, pid: u32, by: i64) {
        let e = self.open.entry(process).or_insert((0, pid));
        e.0 += by;
    }
}

impl QueueState {
    /// A queue made from its `init` bytes: its bound, if any (see `ObjectKind::Queue`).
    pub(crate) fn new(init: &[u8], joinable: bool) -> Result<QueueState, Failure> {
        let maxsize = if init.is_empty() {
            None
        } else {
            bincode::deserialize::<Option<u64>>(init).map_err(|e| Failure::Other(format!("bad queue options: {e}")))?
        };
        if maxsize == Some(0) {
            return Err(Failure::Other("a bounded queue needs room for at least one item".into()));
        }
        Ok(QueueState {
            items: VecDeque::new(),
            maxsize: maxsize.map(|m| m.min(usize::MAX as u64) as usize),
            tasks: joinable.then(Tasks::default),
        })
    }

    fn full(&self) -> bool {
        self.maxsize.is_some_and(|m| self.items.len() >= m)
    }

    /// Puts back an item whose taker's reply could not be delivered, as if never taken.
    pub(crate) fn put_back(&mut self, item: Vec<u8>, process: u64) {
        self.items.push_front(item);
        if let Some(t) = &mut self.tasks {
            t.count(process, 0, -1);
        }
    }
}

/// A queue's operations; any other is given back.
pub(crate) fn call(
    store: &Store,
    id: u64,
    (state, cond): (&std::sync::Mutex<QueueState>, &Condvar),
    op: Op,
    peer: &Peer<'_>,
) -> Result<(Reply, Option<Effect>), Op> {
    let lock = || -> MutexGuard<'_, QueueState> { state.lock().unwrap_or_else(|p| p.into_inner()) };
    let process = peer.process.get();
    let reply = match op {
        Op::QueuePut { item, timeout_ms } => match wait_until(lock(), cond, timeout_ms, peer, |q| !q.full()) {
            Ok(mut q) => {
                q.items.push_back(item.into_vec());
                if let Some(t) = &mut q.tasks {
                    t.put += 1;
                }
                cond.notify_all();
                Ok(Answer::Done)
            }
            Err(Failure::TimedOut) => Err(Failure::Full { maxsize: lock().maxsize.unwrap_or(usize::MAX) as u64 }),
            Err(e) => Err(e),
        },
        Op::QueueGet { timeout_ms } => {
            return Ok(match wait_until(lock(), cond, timeout_ms, peer, |q| !q.items.is_empty()) {
                Ok(mut q) => {
                    let item = q.items.pop_front().expect("waited for an item");
                    if let Some(t) = &mut q.tasks {
                        t.count(process, peer.pid.get(), 1);
                    }
                    cond.notify_all(); // room for a waiting put
                    (Ok(Answer::Item(Some(ByteBuf::from(item.clone())))), Some(Effect::PutBack(id, item)))
                }
                Err(e) => (Err(e), None),
            });
        }
        Op::Len => Ok(Answer::Count(lock().items.len() as u64)),
        Op::QueueIsFull => Ok(Answer::Bool(lock().full())),
        Op::QueueTaskDone => {
            let mut q = lock();
            match &mut q.tasks {
                None => Err(Failure::Mismatch("task_done on a queue that is not joinable".into())),
                Some(t) if t.unfinished() == 0 => Err(Failure::TaskDoneTooMany),
                Some(t) => {
                    t.done += 1;
                    t.count(process, peer.pid.get(), -1);
                    if t.unfinished() == 0 {
                        cond.notify_all();
                    }
                    Ok(Answer::Done)
                }
            }
        }
        Op::QueueJoin { timeout_ms } => {
            if lock().tasks.is_none() {
                return Ok((Err(Failure::Mismatch("join on a queue that is not joinable".into())), None));
            }
            let ready = |q: &mut QueueState| {
                let t = q.tasks.as_mut().expect("a joinable queue");
                t.find_losses(store);
                t.unfinished() == 0 || t.told.get(&process).copied().unwrap_or(0) < t.losses.len()
            };
            match wait_until(lock(), cond, timeout_ms, peer, ready) {
                Ok(mut q) => {
                    let t = q.tasks.as_mut().expect("a joinable queue");
                    let told = t.told.entry(process).or_insert(0);
                    match t.losses.get(*told) {
                        Some(&(pid, tasks)) => {
                            *told += 1;
                            Err(Failure::TasksLost { pid, tasks })
                        }
                        None => Ok(Answer::Done),
                    }
                }
                Err(Failure::TimedOut) => {
                    Err(Failure::Unfinished { tasks: lock().tasks.as_ref().map_or(0, Tasks::unfinished) })
                }
                Err(e) => Err(e),
            }
        }
        op => return Err(op),
    };
    Ok((reply, None))
}
