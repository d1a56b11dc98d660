//! W2 and W3 over MPI ranks, beside bare MPI round trips. `cargo bench --features mpi` runs
//! them under `mpirun -n 3` (this same binary, started again), after the local W2 and W3.

use std::process::Command;
use std::time::Instant;

use multiproc::Pool;

use crate::{median, report, square, REPETITIONS};

/// Set for the run under mpirun: which workloads rank 0 runs.
const MPI_ENV: &str = "MULTIPROC_BENCH_MPI";
/// Set for the run under mpirun: the local pool's W3 in this run (ns/item), to compare with.
const W3_LOCAL_ENV: &str = "MULTIPROC_BENCH_W3_LOCAL_NS";

/// Under mpirun, on rank 0: runs what was asked and returns `true` (the other ranks never get
/// here: they serve the pool).
pub(crate) fn run_if_launched() -> bool {
    let Ok(which) = std::env::var(MPI_ENV) else { return false };
    if which.contains("W2") {
        w2();
    }
    if which.contains("W3") {
        w3();
    }
    true
}

/// Runs `which` under `mpirun -n 3`, printing what rank 0 prints.
pub(crate) fn launch(which: &str) {
    let exe = std::env::current_exe().expect("the path of this benchmark");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", "3"]).arg(exe).env(MPI_ENV, which);
    if let Some(ns) = crate::W3_LOCAL_NS.get() {
        cmd.env(W3_LOCAL_ENV, ns.to_string());
    }
    let out = cmd.output();
    match out {
        Ok(out) if out.status.success() => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Ok(out) => println!("{which} over MPI failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => println!("{which} over MPI: could not run mpirun: {e}"),
    }
}

fn floor_us(n: u64, bytes: usize) -> f64 {
    let t = multiproc::__private::mpi_echo_round_trips(n, bytes).expect("rank 0 of an MPI job");
    t.as_secs_f64() * 1e6
}

/// W2 over ranks: 20,000 sequential `apply(square)`; floor: bare 8-byte MPI round trips.
fn w2() {
    const N: u64 = 20_000;
    let (mut o, mut f) = (Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        f.push(floor_us(N, 8)); // before the pool: a rank in a session echoes nothing else
        let pool = Pool::builder().mpi_ranks().build().unwrap();
        for x in 0..500 {
            pool.apply(square, (x,)).unwrap();
        }
        let start = Instant::now();
        for x in 0..N {
            assert_eq!(pool.apply(square, (x,)).unwrap(), x * x);
        }
        o.push(start.elapsed().as_secs_f64() * 1e6 / N as f64);
    }
    report("W2", "round-trip(mpi)", median(o), median(f), "us/call");
}

/// W3 over ranks: `map(square, 0..1_000_000)`, automatic chunks; floor: the same bytes in the
/// same chunks, there and back, as bare MPI messages.
fn w3() {
    const N: u64 = 1_000_000;
    let chunk = (N as usize).div_ceil(4 * 2).min(64 * 1024 / 8);
    let trips = (N as usize).div_ceil(chunk) as u64;
    let (mut o, mut f) = (Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        f.push(floor_us(trips, chunk * 8) * 1e3 * trips as f64 / N as f64);
        let pool = Pool::builder().mpi_ranks().build().unwrap();
        pool.map(square, 0..1000u64).unwrap();
        let start = Instant::now();
        let out = pool.map(square, 0..N).unwrap();
        assert_eq!(out[999_999], 999_999 * 999_999);
        o.push(start.elapsed().as_secs_f64() * 1e9 / N as f64);
    }
    let ours = median(o);
    report("W3", "map-throughput(mpi, auto chunks)", ours, median(f), "ns/item");
    println!("W3 map-throughput(mpi, auto chunks) ours={:.1} M items/s", 1e3 / ours);
    if let Some(local) = std::env::var(W3_LOCAL_ENV).ok().and_then(|v| v.parse::<f64>().ok()) {
        println!(
            "W3 map-throughput(mpi vs the local pool, same run) mpi={:.1} local={:.1} M items/s ratio={:.2}",
            1e3 / ours,
            1e3 / local,
            local / ours
        );
    }
}
