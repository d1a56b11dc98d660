use multiproc::process_fn;

#[process_fn]
unsafe fn read(address: usize) -> u8 {
    *(address as *const u8)
}

fn main() {}
