// A plain function (not #[process_fn]) given to a pool: the error says to mark it.
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> multiproc::Result<()> {
    let pool = multiproc::Pool::new(2)?;
    let _ = pool.map(square, vec![1u64, 2, 3]);
    Ok(())
}
