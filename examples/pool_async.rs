//! The rest of the tutorial's pool section: `apply_async` (one call, its result later),
//! `starmap` (several-parameter functions), a per-task time limit, and failures as data.
//!
//! Python:
//! ```python
//! with Pool(4) as pool:
//!     r = pool.apply_async(add, (5, 6)); print(r.get(timeout=1))
//!     print(pool.starmap(add, [(1, 2), (3, 4)]))
//! ```

use std::time::Duration;

use multiproc::{process_fn, Error, Pool};

#[process_fn]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[process_fn]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[process_fn]
fn inverse(x: i64) -> i64 {
    assert!(x != 0, "no inverse of zero");
    1_000 / x
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::builder().workers(4).task_timeout(Duration::from_millis(500)).build()?;

    let pending = pool.apply_async(add, (5, 6)); // returns at once
    println!("apply_async(add, (5, 6)) -> {}", pending.wait_timeout(Duration::from_secs(5))?);

    println!("starmap(add, [(1, 2), (3, 4)]) -> {:?}", pool.starmap(add, [(1, 2), (3, 4)])?);

    // a task over its limit: its worker is killed and replaced, the others are unaffected
    for (ms, result) in [10, 5_000, 20].into_iter().zip(pool.map_results(nap, [10, 5_000, 20])) {
        match result {
            Ok(v) => println!("nap({ms}) -> {v}"),
            Err(e @ Error::TaskTimedOut { .. }) => println!("nap({ms}) -> {e}"),
            Err(e) => return Err(e),
        }
    }

    // a failing task is data: the others' results are kept
    for (x, result) in [4, 0, 8].into_iter().zip(pool.map_results(inverse, [4, 0, 8])) {
        match result {
            Ok(v) => println!("inverse({x}) -> {v}"),
            Err(Error::Panicked { message, .. }) => println!("inverse({x}) -> failed: {message}"),
            Err(e) => return Err(e),
        }
    }
    // or, with map, the first failure and its index
    println!("map(inverse, [4, 0, 8]) -> {}", pool.map(inverse, [4, 0, 8]).unwrap_err());
    Ok(())
}
