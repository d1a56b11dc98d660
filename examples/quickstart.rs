//! A tour of multiproc: a function marked `#[process_fn]` runs here or in a child process,
//! typed and checked by the compiler, and whatever goes wrong in the child comes back as data.
//!
//! Run it with `cargo run --example quickstart`.

use std::time::Duration;

use multiproc::{process_fn, Error};

/// An ordinary function: it still runs in-process when called as usual.
#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

#[process_fn]
fn slow_add(a: u64, b: u64, millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    a + b
}

#[process_fn]
fn parse_port(text: String) -> Result<u16, String> {
    text.parse().map_err(|e| format!("{text:?} is not a port: {e}"))
}

#[process_fn]
fn fragile(divisor: u32) -> u32 {
    100 / divisor // panics on zero: in the child, not here
}

fn main() -> multiproc::Result<()> {
    // 1. A local call, and the same function in a child process.
    println!("square(3) here: {}", square(3));
    let child = square.spawn(7)?;
    println!("square(7) in child {}: {}", child.pid(), child.join()?);

    // 2. Several children at once.
    let children = (1..=3).map(|i| slow_add.spawn(i, 10 * i, 100)).collect::<Result<Vec<_>, _>>()?;
    let sums = children.into_iter().map(|c| c.join()).collect::<Result<Vec<_>, _>>()?;
    println!("three children in parallel: {sums:?}");

    // 3. The function's own Result comes back inside ours.
    println!("parse_port(\"8080\"): {:?}", parse_port.spawn("8080".into())?.join()?);
    println!("parse_port(\"http\"): {:?}", parse_port.spawn("http".into())?.join()?);

    // 4. A panic in the child is an error value here, with its message and location.
    match fragile.spawn(0)?.join() {
        Err(Error::Panicked { message, location, .. }) => {
            println!("the child panicked: {message} (at {})", location.unwrap_or_default());
        }
        other => println!("unexpected: {other:?}"),
    }

    // 5. A deadline: the child keeps running after a timeout, until we decide.
    let mut slow = slow_add.spawn(1, 1, 10_000)?;
    if let Err(e) = slow.join_timeout(Duration::from_millis(200)) {
        println!("{e}");
        slow.kill()?;
        println!("after kill(): {}", slow.join_timeout(Duration::from_secs(5)).unwrap_err());
    }
    Ok(())
}
