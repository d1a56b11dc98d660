use multiproc::process_fn;

#[process_fn]
fn name() -> &'static str {
    "x"
}

fn main() {}
