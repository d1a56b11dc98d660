//! The tutorial's third section: `with Pool(4) as pool: print(pool.map(square, range(10)))`.

use multiproc::{process_fn, Pool};

#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::new(4)?; // dropping it (end of scope) finishes the work, then stops the workers
    let results = pool.map(square, 0..10)?;
    println!("{results:?}");
    Ok(())
}
