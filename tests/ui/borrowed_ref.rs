use multiproc::process_fn;

#[process_fn]
fn total(values: &Vec<u64>) -> u64 {
    values.iter().sum()
}

fn main() {}
