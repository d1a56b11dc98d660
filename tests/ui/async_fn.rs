use multiproc::process_fn;

#[process_fn]
async fn fetch(x: u64) -> u64 {
    x
}

fn main() {}
