//! Ctrl-C, gracefully: the first stops feeding the pool and lets the tasks already running
//! finish, then the program exits normally; a second exits at once (130), and the workers end
//! with it. Pool workers ignore the terminal's SIGINT, so only the parent decides.
//!
//! ```text
//! cargo run --example graceful_stop    # then press Ctrl-C
//! ```

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use multiproc::{process_fn, Pool};

#[process_fn]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    x * x
}

/// How many times Ctrl-C was pressed.
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn main() -> multiproc::Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, SeqCst) > 0 {
            std::process::exit(130); // the second Ctrl-C: now; the workers end with this process
        }
    })
    .expect("could not install a Ctrl-C handler");

    let pool = Pool::new(2)?;
    println!("workers {:?}", pool.pids());
    let mut results = 0u64;
    // an endless stream of work, a few tasks in flight at a time
    for r in pool.imap_unordered(slow_square, 0..).window(4) {
        r?;
        results += 1;
        if results == 1 {
            println!("working; press Ctrl-C to stop");
        }
        if INTERRUPTS.load(SeqCst) > 0 {
            break; // stop taking results; the imap submits no more
        }
    }
    // Dropping the pool finishes the tasks already submitted (at most the window), then the
    // workers exit: nothing is cut off in the middle.
    drop(pool);
    println!("stopped after {results} results; the tasks in flight finished");
    Ok(())
}
