//! A producer/consumer pipeline across processes: one producer puts jobs on a
//! `JoinableQueue`, three consumers take them, do the work and put results on a `Queue`, the
//! parent waits for every job to be done, shuts the queue down and collects. Each stage uses
//! `?` on the queues inside its process function.
//!
//! ```text
//! cargo run --example pipeline
//! ```

use multiproc::{process_fn, JoinableQueue, Queue};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
    text: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Done {
    id: u64,
    letters: usize,
    by: u32,
}

#[process_fn]
fn produce(jobs: JoinableQueue<Job>, n: u64) -> multiproc::Result<()> {
    for id in 0..n {
        jobs.put(Job { id, text: "multiproc ".repeat(id as usize % 10) })?;
    }
    Ok(())
}

#[process_fn]
fn consume(jobs: JoinableQueue<Job>, done: Queue<Done>) -> multiproc::Result<u64> {
    let mut handled = 0;
    for job in jobs.iter() {
        let job = job?;
        let letters = job.text.chars().filter(|c| c.is_alphabetic()).count();
        done.put(Done { id: job.id, letters, by: std::process::id() })?;
        jobs.task_done()?;
        handled += 1;
    }
    Ok(handled) // the queue was shut down and is empty
}

fn main() -> multiproc::Result<()> {
    let jobs = JoinableQueue::<Job>::new()?;
    let done = Queue::<Done>::new()?;
    let consumers: Vec<_> = (0..3).map(|_| consume.spawn(jobs.clone(), done.clone())).collect::<Result<_, _>>()?;
    produce.spawn(jobs.clone(), 300)?.join()??;
    jobs.join()?; // every job taken and marked done
    jobs.shutdown(false);
    // join() is the child's outcome (did it run?), and inside it the function's own Result
    let handled = consumers.into_iter().map(|c| c.join()?).collect::<multiproc::Result<Vec<u64>>>()?;
    let mut results = Vec::new();
    while let Ok(d) = done.try_get() {
        results.push(d);
    }
    results.sort_by_key(|d| d.id);
    let letters: usize = results.iter().map(|d| d.letters).sum();
    let mut by: Vec<u32> = results.iter().map(|d| d.by).collect();
    by.sort();
    by.dedup();
    println!("{} jobs done by {} consumers ({:?} each)", results.len(), by.len(), handled);
    println!("{letters} letters in all");
    assert!(results.iter().enumerate().all(|(i, d)| d.id == i as u64), "every job once");
    Ok(())
}
