//! A child that finishes on its own: Python's non-daemonic `Process`. The handle is dropped at
//! once, and the program waits for the child when it exits. With `--daemon` it is the default
//! kind instead, killed with its handle.
//!
//! ```text
//! cargo run --example non_daemon -- /tmp/out.txt            # the file appears, then the program ends
//! cargo run --example non_daemon -- /tmp/out.txt --daemon   # no file: the child was killed
//! ```

use std::time::Duration;

use multiproc::{process_fn, ProcessBuilder};

/// Works a little, then leaves its mark.
#[process_fn]
fn write_later(path: String) {
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&path, "finished").expect("the file written");
}

fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().cloned().unwrap_or_else(|| "/tmp/multiproc-non-daemon.txt".into());
    let daemon = args.iter().any(|a| a == "--daemon");
    let child = ProcessBuilder::new().daemon(daemon).spawn(write_later, (path,))?;
    drop(child); // not joined
    println!("main is done (daemon: {daemon})");
    Ok(())
}
