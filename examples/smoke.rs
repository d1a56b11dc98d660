use multiproc::process_fn;

/// Squares.
#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

#[process_fn]
fn boom(msg: String) -> u32 {
    panic!("{msg}")
}

fn main() -> multiproc::Result<()> {
    assert_eq!(square(3), 9);
    let t = std::time::Instant::now();
    let p = square.spawn(7)?;
    println!("pid {}", p.pid());
    println!("{}", p.join()?);
    println!("{:?}", t.elapsed());
    println!("{}", boom.spawn("oops".into())?.join().unwrap_err());
    Ok(())
}
