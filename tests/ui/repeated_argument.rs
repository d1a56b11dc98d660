use multiproc::process_fn;

#[process_fn(name = "a", name = "b")]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {}
