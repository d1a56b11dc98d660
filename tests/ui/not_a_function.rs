use multiproc::process_fn;

#[process_fn]
struct Square(u64);

fn main() {}
