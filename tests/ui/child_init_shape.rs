// A #[child_init] hook takes nothing and returns nothing.
use multiproc::child_init;

#[child_init]
fn with_arguments(level: u32) {
    let _ = level;
}

#[child_init]
fn with_a_result() -> Result<(), String> {
    Ok(())
}

fn main() {}
