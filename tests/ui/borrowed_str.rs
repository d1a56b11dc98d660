use multiproc::process_fn;

#[process_fn]
fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
