use multiproc::process_fn;

struct Opaque(u64);

#[process_fn]
fn unwrap(value: Opaque) -> u64 {
    value.0
}

fn main() {}
