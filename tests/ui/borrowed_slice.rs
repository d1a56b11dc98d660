use multiproc::process_fn;

#[process_fn]
fn total(values: &[u64]) -> u64 {
    values.iter().sum()
}

fn main() {}
