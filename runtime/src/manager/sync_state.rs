//! A manager's locks, conditions, semaphores and barriers at the server, and what each gives
//! back when a client goes.
//!
//! A lock (plain, reentrant, or a condition's) is held by one thread of one connection; a
//! semaphore's counts by the connections whose guards took them. When a connection closes, or
//! a reply that hands one over cannot be delivered, what it holds is given back (the serve loop
//! releases every object it holds anything of). A barrier breaks, rather than
//! hangs, when a party's connection goes while it waits, or a process that waited at it before
//! has gone while others wait for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::manager::proto::{Answer, Failure, ObjectKind, Op, Reply};
use crate::manager::server::{wait_until, Effect, Peer, Store};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A lock's state; a condition's too.
pub(crate) struct LockState {
    /// The holder: (connection, thread).
    owner: Option<(u64, u64)>,
    /// How many times the holder took it (1 for a plain lock).
    depth: u32,
    reentrant: bool,
    /// A condition's waiters, by ticket, in the order they began to wait.
    waiters: VecDeque<u64>,
    /// Tickets notified and not yet awake.
    notified: HashSet<u64>,
    next_ticket: u64,
}

impl LockState {
    pub(crate) fn new(kind: &ObjectKind) -> LockState {
        LockState {
            owner: None,
            depth: 0,
            reentrant: !matches!(kind, ObjectKind::Lock),
            waiters: VecDeque::new(),
            notified: HashSet::new(),
            next_ticket: 1,
        }
    }

    /// Wakes the first waiter not yet notified, for a notified one that cannot take it.
    fn pass_on(&mut self) {
        if let Some(next) = self.waiters.pop_front() {
            self.notified.insert(next);
        }
    }
}

/// A semaphore's count, and who holds what of it.
pub(crate) struct SemState {
    value: u64,
    bound: Option<u64>,
    /// Counts held by each connection's guards.
    held: HashMap<u64, u64>,
}

impl SemState {
    pub(crate) fn new(init: &[u8]) -> Result<SemState, Failure> {
        let (value, bound) = bincode::deserialize::<(u64, Option<u64>)>(init)
            .map_err(|e| Failure::Other(format!("bad semaphore options: {e}")))?;
        Ok(SemState { value, bound, held: HashMap::new() })
    }
}

/// A barrier's round.
pub(crate) struct BarrierState {
    parties: u64,
    /// Arrived in this round.
    count: u64,
    /// Rounds completed: a waiter is let go when it changes.
    generation: u64,
    /// Resets: a waiter is let go, broken, when it changes.
    resets: u64,
    broken: Option<String>,
    /// The client processes that waited at it, with a pid each.
    members: HashMap<u64, u32>,
}

impl BarrierState {
    pub(crate) fn new(init: &[u8]) -> Result<BarrierState, Failure> {
        let parties =
            bincode::deserialize::<u64>(init).map_err(|e| Failure::Other(format!("bad barrier options: {e}")))?;
        if parties == 0 {
            return Err(Failure::Other("a barrier needs at least one party".into()));
        }
        Ok(BarrierState { parties, count: 0, generation: 0, resets: 0, broken: None, members: HashMap::new() })
    }

    fn break_with(&mut self, reason: String, cond: &Condvar) {
        self.broken.get_or_insert(reason);
        self.count = 0;
        cond.notify_all();
    }
}

/// A lock's or a condition's operations; any other is given back.
pub(crate) fn lock_call(
    id: u64,
    (state, cond): (&Mutex<LockState>, &Condvar),
    op: Op,
    peer: &Peer<'_>,
) -> Result<(Reply, Option<Effect>), Op> {
    Ok(match op {
        Op::LockAcquire { thread, timeout_ms } => {
            let me = (peer.id, thread);
            let mut s = lock(state);
            if s.owner == Some(me) {
                if s.reentrant {
                    s.depth += 1;
                    return Ok((Ok(Answer::Done), Some(Effect::Holds(id))));
                }
                // Only this thread can release it, and it is asking: with a timeout the lock
                // stays held for all of it, so say so now; without one it would wait for ever.
                let failure = match timeout_ms {
                    Some(_) => Failure::TimedOut,
                    None => Failure::Other("this thread holds the lock already".into()),
                };
                return Ok((Err(failure), None));
            }
            match wait_until(s, cond, timeout_ms, peer, |s| s.owner.is_none()) {
                Ok(mut s) => {
                    (s.owner, s.depth) = (Some(me), 1);
                    (Ok(Answer::Done), Some(Effect::Holds(id)))
                }
                Err(e) => (Err(e), None),
            }
        }
        Op::LockRelease { thread } => {
            let mut s = lock(state);
            if s.owner != Some((peer.id, thread)) {
                (Err(Failure::Other("released a lock this thread does not hold".into())), None)
            } else {
                s.depth -= 1;
                if s.depth == 0 {
                    s.owner = None;
                    cond.notify_all();
                }
                (Ok(Answer::Done), None)
            }
        }
        Op::ConditionWait { thread, timeout_ms } => {
            let me = (peer.id, thread);
            let mut s = lock(state);
            if s.owner != Some(me) {
                return Ok((
                    Err(Failure::Other("wait on a condition whose lock this thread does not hold".into())),
                    None,
                ));
            }
            let (ticket, depth) = (s.next_ticket, s.depth);
            s.next_ticket += 1;
            s.waiters.push_back(ticket);
            (s.owner, s.depth) = (None, 0);
            cond.notify_all();
            let (mut s, woken) = match wait_until(s, cond, timeout_ms, peer, |s| s.notified.contains(&ticket)) {
                Ok(s) => (s, true),
                Err(Failure::TimedOut) => (lock(state), false),
                Err(e) => {
                    // gone: its place goes, and a notification it got goes to the next waiter
                    let mut s = lock(state);
                    s.waiters.retain(|t| *t != ticket);
                    if s.notified.remove(&ticket) {
                        s.pass_on();
                        cond.notify_all();
                    }
                    return Ok((Err(e), None));
                }
            };
            s.waiters.retain(|t| *t != ticket);
            let woken = s.notified.remove(&ticket) || woken;
            if (peer.gone)() {
                // notified as its client died: the notification is for somebody alive
                if woken {
                    s.pass_on();
                    cond.notify_all();
                }
                return Ok((Err(Failure::Other("the client hung up".into())), None));
            }
            // takes the lock again, however long that takes (Python's rule)
            match wait_until(s, cond, None, peer, |s| s.owner.is_none()) {
                Ok(mut s) => {
                    (s.owner, s.depth) = (Some(me), depth);
                    (Ok(Answer::Bool(woken)), Some(Effect::Holds(id)))
                }
                Err(e) => {
                    if woken {
                        lock(state).pass_on();
                        cond.notify_all();
                    }
                    (Err(e), None)
                }
            }
        }
        Op::ConditionNotify { thread, n } => {
            let mut s = lock(state);
            if s.owner != Some((peer.id, thread)) {
                return Ok((
                    Err(Failure::Other("notify on a condition whose lock this thread does not hold".into())),
                    None,
                ));
            }
            let mut woken = 0;
            while woken < n {
                let Some(t) = s.waiters.pop_front() else { break };
                s.notified.insert(t);
                woken += 1;
            }
            cond.notify_all();
            (Ok(Answer::Count(woken)), None)
        }
        op => return Err(op),
    })
}

/// A semaphore's operations; any other is given back.
pub(crate) fn semaphore_call(
    id: u64,
    (state, cond): (&Mutex<SemState>, &Condvar),
    op: Op,
    peer: &Peer<'_>,
) -> Result<(Reply, Option<Effect>), Op> {
    Ok(match op {
        Op::SemaphoreAcquire { timeout_ms } => match wait_until(lock(state), cond, timeout_ms, peer, |s| s.value > 0) {
            Ok(mut s) => {
                s.value -= 1;
                *s.held.entry(peer.id).or_insert(0) += 1;
                (Ok(Answer::Done), Some(Effect::Holds(id)))
            }
            Err(e) => (Err(e), None),
        },
        Op::SemaphoreRelease { guarded } => {
            let mut s = lock(state);
            if guarded {
                if let Some(n) = s.held.get_mut(&peer.id).filter(|n| **n > 0) {
                    *n -= 1;
                }
            } else if s.bound.is_some_and(|b| s.value >= b) {
                return Ok((Err(Failure::OverReleased { bound: s.bound.unwrap_or(0) }), None));
            }
            s.value += 1;
            cond.notify_all();
            (Ok(Answer::Done), None)
        }
        Op::SemaphoreForget => {
            if let Some(n) = lock(state).held.get_mut(&peer.id).filter(|n| **n > 0) {
                *n -= 1;
            }
            (Ok(Answer::Done), None)
        }
        Op::SemaphoreValue => (Ok(Answer::Count(lock(state).value)), None),
        op => return Err(op),
    })
}

/// A barrier's operations; any other is given back.
pub(crate) fn barrier_call(
    store: &Store,
    (state, cond): (&Mutex<BarrierState>, &Condvar),
    op: Op,
    peer: &Peer<'_>,
) -> Result<(Reply, Option<Effect>), Op> {
    let reply = match op {
        Op::BarrierWait { timeout_ms } => {
            let mut s = lock(state);
            let process = peer.process.get();
            if process != 0 {
                s.members.insert(process, peer.pid.get());
            }
            if let Some(reason) = &s.broken {
                return Ok((Err(Failure::Broken(reason.clone())), None));
            }
            let index = s.count;
            s.count += 1;
            if s.count == s.parties {
                s.count = 0;
                s.generation += 1;
                cond.notify_all();
                return Ok((Ok(Answer::Count(index)), None));
            }
            let (generation, resets) = (s.generation, s.resets);
            let ready = |s: &mut BarrierState| {
                if s.generation != generation || s.resets != resets || s.broken.is_some() {
                    return true;
                }
                // a party that waited here before and has gone cannot arrive
                let gone = s.members.iter().find(|(p, _)| **p != process && store.gone(**p)).map(|(p, pid)| (*p, *pid));
                if let Some((p, pid)) = gone {
                    s.members.remove(&p);
                    s.break_with(format!("process {pid}, a party that waited at it before, has gone"), cond);
                    return true;
                }
                false
            };
            let outcome = |s: &BarrierState| {
                if s.resets != resets {
                    Err(Failure::Broken("the barrier was reset while this party waited".into()))
                } else if s.generation != generation {
                    Ok(Answer::Count(index))
                } else {
                    Err(Failure::Broken(s.broken.clone().unwrap_or_default()))
                }
            };
            match wait_until(s, cond, timeout_ms, peer, ready) {
                Ok(s) => outcome(&s),
                Err(Failure::TimedOut) => {
                    let mut s = lock(state);
                    if s.generation == generation && s.resets == resets && s.broken.is_none() {
                        s.break_with("a party's wait timed out".into(), cond);
                    }
                    outcome(&s)
                }
                Err(e) => {
                    let mut s = lock(state);
                    if s.generation == generation && s.resets == resets {
                        s.break_with(format!("process {}, a party, went away while it waited", peer.pid.get()), cond);
                    }
                    Err(e)
                }
            }
        }
        Op::BarrierReset => {
            let mut s = lock(state);
            // Python's rule: whoever waits now is let go with a broken barrier
            (s.count, s.broken) = (0, None);
            s.resets += 1;
            cond.notify_all();
            Ok(Answer::Done)
        }
        Op::BarrierAbort => {
            lock(state).break_with("aborted".into(), cond);
            Ok(Answer::Done)
        }
        Op::BarrierWaiting => Ok(Answer::Count(lock(state).count)),
        Op::BarrierIsBroken => Ok(Answer::Bool(lock(state).broken.is_some())),
        op => return Err(op),
    };
    Ok((reply, None))
}

/// Releases a lock if connection `conn` holds it, however many times it took it.
pub(crate) fn release_lock((state, cond): (&Mutex<LockState>, &Condvar), conn: u64) {
    let mut s = lock(state);
    if s.owner.is_some_and(|(c, _)| c == conn) {
        (s.owner, s.depth) = (None, 0);
        cond.notify_all();
    }
}

/// Gives back the counts connection `conn`'s guards hold of a semaphore.
pub(crate) fn release_semaphore((state, cond): (&Mutex<SemState>, &Condvar), conn: u64) {
    let mut s = lock(state);
    if let Some(n) = s.held.remove(&conn) {
        s.value += n;
        cond.notify_all();
    }
}
