//! Catching a panic in a child, with its message, location and (when enabled) backtrace.
//!
//! A hook records the panic of a running task instead of printing it: it comes back to the
//! parent as data. Panics outside a task (threads the task started, say) print as usual, through
//! the hook that was there before. The hook is installed the first time anything is caught,
//! in a parent as in a child.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

use crate::wire::message::PanicReport;

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST: RefCell<Option<PanicReport>> = const { RefCell::new(None) };
}

/// Installs the recording hook once, keeping the previous hook for panics outside tasks.
#[inline]
pub(crate) fn install_hook() {
    static ONCE: Once = Once::new();
    if ONCE.is_completed() {
        return;
    }
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let report = report(info);
                LAST.with(|l| *l.borrow_mut() = Some(report));
            } else {
                previous(info);
            }
        }));
    });
}

fn report(info: &PanicHookInfo<'_>) -> PanicReport {
    let backtrace = Backtrace::capture();
    PanicReport {
        message: payload_text(info.payload()),
        location: info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
        backtrace: (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string()),
    }
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Runs `f`, turning a panic into its report (and printing nothing: in a parent, a user's
/// `Serialize` or `Deserialize` that panics is reported as the error of its call).
#[inline]
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    capturing().catch(f)
}

/// Panics on this thread are recorded, not printed, while this lives: for many
/// [`Capturing::catch`]es in a row (a `get_many` decoding each item), without setting and
/// restoring the thread's state around each.
#[derive(Debug)]
pub(crate) struct Capturing {
    outer: bool,
}

/// Starts recording this thread's panics (see [`Capturing`]).
#[inline]
pub(crate) fn capturing() -> Capturing {
    install_hook();
    Capturing { outer: CAPTURING.with(|c| c.replace(true)) }
}

impl Capturing {
    /// Runs `f`, turning a panic into its report.
    #[inline(always)]
    pub(crate) fn catch<R>(&self, f: impl FnOnce() -> R) -> Result<R, PanicReport> {
        catch_captured(f)
    }
}

/// Runs `f`, turning a panic into its report; for a thread where a [`Capturing`] lives (else
/// the panic is printed too, and its report has no location).
#[inline(always)]
pub(crate) fn catch_captured<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(report_of)
}

impl Drop for Capturing {
    fn drop(&mut self) {
        let outer = self.outer;
        CAPTURING.with(|c| c.set(outer));
    }
}

/// The report the hook recorded for the panic whose payload this is.
#[cold]
fn report_of(payload: Box<dyn Any + Send>) -> PanicReport {
    let report = LAST.with(|l| l.borrow_mut().take()).unwrap_or_else(|| PanicReport {
        message: payload_text(&*payload),
        location: None,
        backtrace: None,
    });
    // A payload whose destructor panics would abort here; drop it under catch_unwind.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_report_with_its_location() {
        install_hook();
        let err = catch(|| -> u32 { panic!("boom {}", 7) }).unwrap_err();
        assert_eq!(err.message, "boom 7");
        assert!(err.location.unwrap().contains("panic.rs"));
        assert_eq!(catch(|| 5).unwrap(), 5);
    }
}
