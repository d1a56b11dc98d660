use multiproc::process_fn;

#[process_fn]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let _ = square.spawn("seven");
}
