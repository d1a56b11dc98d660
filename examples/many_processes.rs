//! The tutorial's second section: start four processes with the same target, keep them in a
//! list, then join them all. They run at the same time.
//!
//! Python:
//! ```python
//! processes = [Process(target=work, args=(i,)) for i in range(4)]
//! for p in processes: p.start()
//! for p in processes: p.join()
//! ```

use multiproc::process_fn;

/// Sums 0..n in a deliberately slow way, to keep a core busy for a moment.
#[process_fn]
fn work(id: u32, n: u64) -> (u32, u32, u64) {
    let sum = (0..n).fold(0u64, |acc, x| acc.wrapping_add(std::hint::black_box(x)));
    (id, std::process::id(), sum)
}

fn main() -> multiproc::Result<()> {
    let processes = (0..4).map(|id| work.spawn(id, 20_000_000)).collect::<Result<Vec<_>, _>>()?;
    for p in processes {
        let (id, pid, sum) = p.join()?;
        println!("process {id} (pid {pid}) summed to {sum}");
    }
    Ok(())
}
