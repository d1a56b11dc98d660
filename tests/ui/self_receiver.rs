use multiproc::process_fn;

struct Counter(u64);

impl Counter {
    #[process_fn]
    fn get(&self) -> u64 {
        self.0
    }
}

fn main() {}
