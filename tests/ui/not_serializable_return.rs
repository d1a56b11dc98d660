use multiproc::process_fn;

struct Opaque(u64);

#[process_fn]
fn wrap(value: u64) -> Opaque {
    Opaque(value)
}

fn main() {}
