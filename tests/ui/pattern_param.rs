use multiproc::process_fn;

#[process_fn]
fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn main() {}
