//! The tutorial's section 4, synchronization: several processes print under one lock, so their
//! lines never mix; then they meet at a barrier, each getting its own place in the arrival
//! order. (Each child's lines reach the terminal through the parent, which re-prints them: the
//! order between children is the order they came in, not always the order they were written.)
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
fn f(l: Lock, b: Barrier, i: usize) -> usize {
    {
        let _held = l.lock().unwrap(); // released at the end of this block
        println!("hello world {i}");
    }
    b.wait().unwrap() // every process waits here until all four arrived; returns its place
}

fn main() -> multiproc::Result<()> {
    let lock = Lock::new()?;
    let barrier = Barrier::new(PROCESSES)?;
    let children =
        (0..PROCESSES).map(|i| f.spawn(lock.clone(), barrier.clone(), i)).collect::<multiproc::Result<Vec<_>>>()?;
    let mut places = children.into_iter().map(|c| c.join()).collect::<multiproc::Result<Vec<usize>>>()?;
    places.sort();
    assert_eq!(places, (0..PROCESSES).collect::<Vec<_>>(), "one place each");
    println!("all {PROCESSES} passed the barrier");
    Ok(())
}
