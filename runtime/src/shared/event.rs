//! `Event`: a flag that processes wait for.

use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::shared::region::{self, Kind, Region, Type};
use crate::sys::robust::Relock;
use crate::sys::shm;

/// A flag shared by processes and threads, that they can wait for: Python's
/// `multiprocessing.Event`.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Event};
///
/// #[process_fn]
/// fn start(go: Event) {
///     go.set();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let go = Event::new()?;
/// let child = start.spawn(go.clone())?;
/// go.wait();
/// assert!(go.is_set());
/// child.join()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Event {
    region: Arc<Region>,
}

const EVENT: Type = Type::bare(Kind::Event);
const FLAG: usize = 0;

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event> {
        Ok(Event { region: Region::create(EVENT, 0, Relock::Refuse, |_, _| {})? })
    }

    /// Sets the flag, and wakes everyone waiting for it.
    pub fn set(&self) {
        let flag = self.region.word(FLAG);
        if flag.swap(1, SeqCst) == 0 {
            shm::futex_wake(flag, shm::WAKE_ALL);
        }
    }

    /// Clears the flag: waits after this wait for the next [`set`](Event::set).
    pub fn clear(&self) {
        self.region.word(FLAG).store(0, SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.region.word(FLAG).load(SeqCst) == 1
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it is set (Python's
    /// `wait(timeout)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let flag = self.region.word(FLAG);
        loop {
            if flag.load(SeqCst) == 1 {
                return true;
            }
            let Some(left) = super::left(deadline) else { return false };
            shm::futex_wait(flag, 0, left);
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event").field("set", &self.is_set()).finish()
    }
}

region::region_handle!(Event, EVENT);
