//! The tutorial's section 4, synchronization: several processes print under one lock, so their
//! lines never mix; then they meet at a barrier before going on together.
//!
//! Python:
//! ```python
//! def f(l, b, i):
//!     with l:
//!         print('hello world', i)
//!     b.wait()
//! lock = Lock(); barrier = Barrier(4)
//! for num in range(4):
//!     Process(target=f, args=(lock, barrier, num)).start()
//! ```

use multiproc::{process_fn, Barrier, Lock};

const PROCESSES: usize = 4;

#[process_fn]
fn f(l: Lock, b: Barrier, i: usize) {
    {
        let _held = l.lock().unwrap(); // released at the end of this block
        println!("hello world {i}");
    }
    let index = b.wait().unwrap(); // every process waits here until all four arrived
    if index == PROCESSES - 1 {
        let _held = l.lock().unwrap();
        println!("all {PROCESSES} passed the barrier");
    }
}

fn main() -> multiproc::Result<()> {
    let lock = Lock::new()?;
    let barrier = Barrier::new(PROCESSES)?;
    let children =
        (0..PROCESSES).map(|i| f.spawn(lock.clone(), barrier.clone(), i)).collect::<multiproc::Result<Vec<_>>>()?;
    for child in children {
        child.join()?;
    }
    Ok(())
}
