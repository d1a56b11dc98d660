use multiproc::process_fn;

// every mistake is reported at once, each on its own token
#[process_fn]
async fn mixed<T>(_name: &str, (_a, _b): (u8, u8), _extra: impl Clone) -> u64 {
    0
}

fn main() {}
