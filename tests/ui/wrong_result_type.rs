use multiproc::process_fn;

#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> multiproc::Result<()> {
    let text: String = square.spawn(7)?.join()?;
    println!("{text}");
    Ok(())
}
