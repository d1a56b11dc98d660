//! The tutorial's first section: start one process whose target prints its process id, and
//! wait for it.
//!
//! Python:
//! ```python
//! def show_pid():
//!     print(f"child pid: {os.getpid()}")
//! p = Process(target=show_pid); p.start(); p.join()
//! ```

use multiproc::process_fn;

#[process_fn]
fn show_pid() {
    println!("child pid: {}", std::process::id());
}

fn main() -> multiproc::Result<()> {
    println!("parent pid: {}", std::process::id());
    let child = show_pid.spawn()?; // start()
    child.join()?; // join(): without it the parent may finish before the child has printed
    println!("child joined");
    Ok(())
}
