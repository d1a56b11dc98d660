//! The tutorial's section 4: processes do not share memory, so they talk through a queue. One
//! process puts a message on the queue, a second process gets it and prints it; both are
//! joined.
//!
//! Python:
//! ```python
//! def producer(q):
//!     q.put("Hello from child")
//! def consumer(q):
//!     print(q.get())
//! q = Queue()
//! p1 = Process(target=producer, args=(q,)); p2 = Process(target=consumer, args=(q,))
//! p1.start(); p2.start(); p1.join(); p2.join()
//! ```

use multiproc::{process_fn, Queue};

#[process_fn]
fn producer(q: Queue<String>) {
    q.put("Hello from child".to_string()).unwrap();
}

#[process_fn]
fn consumer(q: Queue<String>) {
    println!("{}", q.get().unwrap());
}

fn main() -> multiproc::Result<()> {
    let q = Queue::new()?;
    let p1 = producer.spawn(q.clone())?; // the queue is an ordinary argument
    let p2 = consumer.spawn(q)?;
    p1.join()?;
    p2.join()?;
    Ok(())
}
