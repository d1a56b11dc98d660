//! Monte Carlo π with shared memory, the tutorial's `Value`/`Array` section: four processes
//! throw darts; each adds its hits to one `Value` under its lock and writes its own count in
//! its slot of an `Array`.
//!
//! ```text
//! cargo run --example monte_carlo_pi
//! ```

use multiproc::{process_fn, Array, Value};

/// Throws `darts` darts with its own random sequence; adds the hits to `hits` and writes them
/// in slot `slot` of `per_process`.
#[process_fn]
fn throw(hits: Value<u64>, per_process: Array<u64>, slot: usize, darts: u64) -> multiproc::Result<()> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (slot as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut next = || {
        // xorshift64*: good enough for darts
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut inside = 0;
    for _ in 0..darts {
        let (x, y) = (next(), next());
        inside += (x * x + y * y <= 1.0) as u64;
    }
    *hits.lock()? += inside; // the lock makes the read-modify-write whole
    per_process.set(slot, inside)?;
    Ok(())
}

fn main() -> multiproc::Result<()> {
    const PROCESSES: usize = 4;
    const DARTS: u64 = 2_000_000;
    let hits = Value::new(0u64)?;
    let per_process = Array::<u64>::zeroed(PROCESSES)?;
    let children: Vec<_> = (0..PROCESSES)
        .map(|slot| throw.spawn(hits.clone(), per_process.clone(), slot, DARTS))
        .collect::<Result<_, _>>()?;
    for child in children {
        child.join()??;
    }
    let counts = per_process.to_vec()?;
    let total = hits.get()?;
    assert_eq!(total, counts.iter().sum::<u64>(), "no lost update");
    let pi = 4.0 * total as f64 / (PROCESSES as u64 * DARTS) as f64;
    println!("hits per process: {counts:?}");
    println!("pi is about {pi:.4} (error {:.4})", (pi - std::f64::consts::PI).abs());
    Ok(())
}
