//! The tutorial's `pool.map(square, range(10))`, with the workers on other machines: the MPI
//! ranks of this same program. Build with `--features mpi` and start it with a launcher:
//!
//! ```text
//! mpirun -n 3 target/debug/examples/mpi_map          # rank 0 maps, ranks 1 and 2 work
//! srun -n 3 --mpi=pmix target/debug/examples/mpi_map  # the same, under Slurm
//! ```
//!
//! Python:
//! ```python
//! with Pool(2) as pool:
//!     print(pool.map(square, range(10)))
//! ```
//!
//! Started plainly (no launcher), it says so and uses two local workers instead.
//!
//! `mpi_map die` makes a task end its rank, to show what happens then: the launcher ends the
//! whole job, and rank 0 says why. `mpi_map handles` shows that a local queue cannot go to a
//! rank; `mpi_map queue` passes one brokered by rank 0 (a manager's, reached by address);
//! `mpi_map large` maps over 12 values of 2 MiB (inline to ranks, as descriptors do not cross);
//! `mpi_map kill-on HOST` kills (`kill -9`) whichever rank runs a task on host `HOST`;
//! `mpi_map pools` runs two pools at once, each on ranks of its own; `mpi_map slow` runs 40
//! tasks of 250 ms, for a job cancelled while they run.

use std::collections::BTreeSet;

use multiproc::{process_fn, Error, Manager, Pool, Queue, QueueProxy};

#[process_fn]
fn square(x: u64) -> (u64, u32, String) {
    (x * x, std::process::id(), host())
}

/// This machine's name (under a launcher, the host a rank runs on).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Ends this rank as `kill -9` would, on host `on` only: a rank killed on a far host.
#[process_fn]
fn killed_on(on: String, x: u64) -> u64 {
    if host() == on {
        let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
    x
}

#[process_fn]
fn crash(x: u64) -> u64 {
    if x == 3 {
        std::process::abort(); // a crash on a worker rank
    }
    x
}

#[process_fn]
fn nap(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(250));
    x
}

#[process_fn]
fn check(x: u64) -> u64 {
    assert!(x != 5, "five is not allowed");
    x
}

#[process_fn]
fn put(q: Queue<u64>) {
    q.put(1).unwrap();
}

/// A handle as a result: it holds this rank's descriptors, so it cannot come back.
#[process_fn]
fn new_queue() -> Queue<u64> {
    Queue::new().unwrap()
}

#[process_fn]
fn report(q: QueueProxy<String>, x: u64) {
    q.put(format!("item {x} from process {}", std::process::id())).unwrap();
}

/// A large value there and back: on one host it would cross as a memfd; to a rank it goes
/// inline, through MPI.
#[process_fn]
fn halve(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x / 2.0).collect()
}

fn main() -> multiproc::Result<()> {
    let pool = match Pool::builder().mpi_ranks().chunksize(1).build() {
        Err(Error::PoolConfig { reason }) => {
            println!("not over MPI ({reason}): 2 local workers instead");
            Pool::new(2)?
        }
        other => other?,
    };
    match std::env::args().nth(1).as_deref() {
        Some("die") => {
            let out = pool.map(crash, 0..10)?;
            println!("{out:?} (the job should have ended)");
            return Ok(());
        }
        Some("kill-on") => {
            let on = std::env::args().nth(2).unwrap_or_else(host);
            let out = pool.starmap(killed_on, (0..10).map(|x| (on.clone(), x)))?;
            println!("{out:?} (the job should have ended)");
            return Ok(());
        }
        Some("slow") => {
            // work in flight when the job is cancelled: 40 tasks of 250 ms
            println!("started");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let out = pool.map(nap, 0..40u64)?;
            println!("done: {} results", out.len());
            return Ok(());
        }
        Some("pools") => {
            // several pools in one job: each takes ranks no other pool serves
            drop(pool);
            let first = Pool::builder().mpi_ranks().workers(1).build()?;
            let second = Pool::builder().mpi_ranks().workers(1).build()?;
            let (a, b) = (first.apply(square, (2,))?.1, second.apply(square, (3,))?.1);
            println!("two pools at once, on {}", if a != b { "different ranks" } else { "THE SAME RANK" });
            match Pool::builder().mpi_ranks().build() {
                Err(e) => println!("a third: {e}"),
                Ok(_) => println!("a third pool got a rank that serves another"),
            }
            drop(first);
            let third = Pool::builder().mpi_ranks().build()?;
            println!(
                "once one is dropped, a third has {} worker, result {}",
                third.workers(),
                third.apply(square, (4,))?.0
            );
            return Ok(());
        }
        Some("handles") => {
            match pool.apply(put, (Queue::new()?,)) {
                Err(e) => println!("refused: {e}"),
                Ok(()) => println!("a queue went to a rank"),
            }
            match pool.apply(new_queue, ()) {
                Err(e) => println!("a queue from a rank: {e}"),
                Ok(_) => println!("a queue came from a rank"),
            }
            println!("the pool goes on: {}", pool.apply(square, (7,))?.0);
            return Ok(());
        }
        Some("more") => {
            // the rest of the pool's calls, over ranks
            let lazy: Vec<u64> =
                pool.imap(square, 0..5u64).map(|r| r.map(|(s, ..)| s)).collect::<multiproc::Result<_>>()?;
            let later = pool.apply_async(square, (12,));
            let results = pool.map_results(check, 0..8u64);
            let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
            println!(
                "imap {lazy:?}, apply_async {}, {} ok",
                later.wait()?.0,
                results.iter().filter(|r| r.is_ok()).count()
            );
            println!("failed: {}", failed.join("; "));
            return Ok(());
        }
        Some("large") => {
            // 2 MiB each, 12 of them: a worker has a second one sent while it sends a result
            let inputs: Vec<Vec<f64>> = (0..12).map(|k| vec![k as f64; 1 << 18]).collect();
            let out = pool.map(halve, inputs)?;
            let ok = out.iter().enumerate().all(|(k, v)| v.len() == 1 << 18 && v.iter().all(|x| *x == k as f64 / 2.0));
            println!("12 large values there and back: {}", if ok { "all correct" } else { "WRONG" });
            // sizes from nothing to 96 KiB (MPI sends them eagerly, or by rendezvous), many in
            // flight at once each way: each must come back whole and in its place
            let len = |k: usize| (k * 7919) % (12 * 1024);
            let inputs = (0..300).map(|k| vec![k as f64; len(k)]);
            let mut ok = true;
            for (k, v) in pool.imap(halve, inputs).enumerate() {
                let v = v?;
                ok &= v.len() == len(k) && v.iter().all(|x| *x == k as f64 / 2.0);
            }
            println!("300 values of mixed sizes in order: {}", if ok { "all correct" } else { "WRONG" });
            return Ok(());
        }
        Some("queue") => {
            // A queue held by a manager on rank 0's host, reached over TCP by address and key:
            // its proxies cross to the ranks as values. (Across hosts, serve on an address the
            // other hosts reach, not 127.0.0.1: `mpi_map queue 10.0.0.1`.)
            let at = std::env::args().nth(2).unwrap_or_else(|| "127.0.0.1".to_string());
            let server = Manager::serve((at.as_str(), 0), b"example key")?;
            let manager = Manager::connect(server.local_addr().expect("served"), b"example key")?;
            let q = manager.queue::<String>()?;
            pool.starmap(report, (0..4).map(|x| (q.clone(), x)))?;
            let mut got: Vec<String> = (0..4).map(|_| q.get()).collect::<multiproc::Result<_>>()?;
            got.sort();
            println!("{} items through the brokered queue", got.len());
            return Ok(());
        }
        _ => {}
    }
    let out = pool.map(square, 0..10)?;
    let squares: Vec<u64> = out.iter().map(|(s, ..)| *s).collect();
    let workers: BTreeSet<u32> = out.iter().map(|(_, pid, _)| *pid).collect();
    let hosts: BTreeSet<&str> = out.iter().map(|(.., host)| host.as_str()).collect();
    println!("{squares:?}");
    println!("computed by {} of the {} workers", workers.len(), pool.workers());
    println!("on hosts: {}", hosts.into_iter().collect::<Vec<_>>().join(", "));
    Ok(())
}
