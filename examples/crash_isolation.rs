//! Crash isolation: native code that may crash or hang runs in pool workers with a time
//! limit. A crash (SIGSEGV), a hang, a panic and an exit each cost one item and, for the first
//! two, one worker (replaced); every other result is kept.
//!
//! ```text
//! cargo run --example crash_isolation
//! ```

use std::time::Duration;

use multiproc::{process_fn, Error, Pool};

/// Stands for a call into a fragile native library.
#[process_fn]
fn fragile(input: u32) -> u32 {
    match input {
        13 => {
            // SAFETY: none; this writes to an unmapped page on purpose, to crash with SIGSEGV.
            unsafe { (8 as *mut u8).write_volatile(1) };
            0
        }
        21 => loop {
            std::thread::sleep(Duration::from_secs(1)); // hangs
        },
        30 => panic!("input 30 is not supported"),
        34 => std::process::exit(3),
        n => n * 2,
    }
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::builder().workers(2).task_timeout(Duration::from_millis(500)).build()?;
    let results = pool.map_results(fragile, 0..40u32);
    let (mut good, mut crashed, mut hung, mut panicked, mut exited) = (0, 0, 0, 0, 0);
    for (input, r) in results.iter().enumerate() {
        match r {
            Ok(v) => {
                assert_eq!(*v, input as u32 * 2);
                good += 1;
            }
            Err(Error::Signaled { name, .. }) => {
                println!("input {input}: crashed with {name}");
                crashed += 1;
            }
            Err(Error::TaskTimedOut { timeout, .. }) => {
                println!("input {input}: still running after {timeout:?}; its worker was replaced");
                hung += 1;
            }
            Err(Error::Panicked { message, .. }) => {
                println!("input {input}: panicked: {message}");
                panicked += 1;
            }
            Err(Error::Exited { code, .. }) => {
                println!("input {input}: exited with code {code}");
                exited += 1;
            }
            Err(e) => println!("input {input}: {e}"),
        }
    }
    println!("{good} good, {crashed} crashed, {hung} hung, {panicked} panicked, {exited} exited");
    Ok(())
}
