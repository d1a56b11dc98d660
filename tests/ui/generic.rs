use multiproc::process_fn;

#[process_fn]
fn identity<T>(x: T) -> T {
    x
}

fn main() {}
