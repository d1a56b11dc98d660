//! More than one machine: the same program started as N MPI ranks (`mpirun`, Slurm `srun`).
//! Rank 0 runs `main`; every other rank serves as a pool worker, before `main`, exactly as a
//! local child does, on frames carried by MPI messages instead of a socketpair.
//!
//! **One pool, two transports.** A pool over ranks is the local pool: the same driver, frames,
//! chunking and supervision. A worker rank's connection is a [`Link`]: each frame one MPI
//! message, sent by the thread that has it (the driver, or a caller with a leased worker) and
//! looked for by the thread that waits for it (`link.rs`); on the rank, the worker loop reads
//! and writes the link itself. No socket and no thread in between, so a call costs an MPI
//! round trip plus what a local call costs.
//!
//! **What cannot cross.** Descriptors: a frame carrying handles (queues, shared memory, locks,
//! a local manager's proxies) is refused before it is sent.
//!
//! **A rank that dies.** MPI's default (`MPI_ERRORS_ARE_FATAL`, and no fault tolerance in Open
//! MPI 4.1) ends the whole job: `mpirun` kills every rank. Rank 0 then says so on stderr before
//! it goes, so the job never hangs and the cause is named.

mod link;
mod rank;

use std::sync::{Mutex, OnceLock};

use mpi::traits::*;

pub(crate) use link::{backoff_within, Link, Outgoing};

/// What a message is, by its MPI tag: control from rank 0, a session's bytes, or a
/// benchmark's echo.
const TAG_CONTROL: i32 = 1;
const TAG_DATA: i32 = TAG_CONTROL + 1;
const TAG_ECHO: i32 = TAG_DATA + 1;

/// Rank 0's control messages: open a session, stop, or echo the next `n` messages (the floor
/// of the benchmarks: bare round trips).
#[repr(u8)]
enum Control {
    Open = 1,
    Stop,
    Echo,
}

/// This process's place in the MPI world, when it was started by an MPI launcher.
#[derive(Debug)]
struct World {
    rank: i32,
    size: i32,
    /// Worker ranks with an open session (rank 0's view).
    busy: Mutex<Vec<bool>>,
}

static WORLD: OnceLock<World> = OnceLock::new();
static UNIVERSE: Mutex<Option<mpi::environment::Universe>> = Mutex::new(None);

/// Whether an MPI launcher started this process (Open MPI, MPICH/Hydra, PMIx, Slurm's PMI).
fn launched() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"].iter().any(|v| std::env::var_os(v).is_some())
}

/// Joins the MPI world when launched by `mpirun`/`srun`: rank 0 returns (to run `main`), every
/// other rank serves as a worker and never returns. Started plainly, does nothing.
pub(crate) fn init() {
    if !launched() {
        return;
    }
    // Several threads may wait in MPI at once (a driver, callers); Open MPI spins in its waits
    // by default, which on a busy host takes the CPU from the thread that would answer
    // (measured: 1 ms per call instead of tens of microseconds). Yielding while idle lets it
    // run. A value set by the user wins.
    if std::env::var_os("OMPI_MCA_mpi_yield_when_idle").is_none() {
        std::env::set_var("OMPI_MCA_mpi_yield_when_idle", "1");
    }
    let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Multiple) else {
        return; // initialized already, by someone else
    };
    if threading < mpi::Threading::Multiple {
        eprintln!(
            "multiproc: this MPI library grants threading level {threading:?}, and a pool over ranks needs Multiple; \
             rank {} will not serve",
            universe.world().rank()
        );
    }
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    *UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()) = Some(universe);
    let _ = WORLD.set(World { rank, size, busy: Mutex::new(vec![false; size.max(1) as usize]) });
    if rank == 0 {
        crate::sys::shm::at_exit(finish);
        crate::sys::on_termination(announce_abort);
    } else {
        rank::serve(rank);
    }
}

/// How many worker ranks there are (ranks other than 0), or `None` when not launched by MPI.
pub(crate) fn worker_ranks() -> Option<usize> {
    WORLD.get().filter(|w| w.rank == 0).map(|w| w.size as usize - 1)
}

/// How many worker ranks serve no pool now, or `None` when not launched by MPI.
pub(crate) fn free_ranks() -> Option<usize> {
    let world = WORLD.get().filter(|w| w.rank == 0)?;
    Some(world.busy.lock().unwrap_or_else(|p| p.into_inner()).iter().skip(1).filter(|b| !**b).count())
}

/// Opens a session with the lowest worker rank that serves no pool (so that several pools of
/// one job share the ranks out): the rank starts serving, and the returned link carries the
/// pool's frames to it.
pub(crate) fn open_free() -> std::io::Result<Link> {
    let world = WORLD.get().ok_or_else(|| std::io::Error::other("not started by an MPI launcher"))?;
    let rank = {
        let mut busy = world.busy.lock().unwrap_or_else(|p| p.into_inner());
        let Some(free) = busy.iter().skip(1).position(|b| !*b) else {
            return Err(std::io::Error::other(format!(
                "every worker rank of this job ({}) serves another pool already",
                world.size - 1
            )));
        };
        busy[free + 1] = true;
        (free + 1) as i32
    };
    let link = Link::new(rank, Some(Box::new(move || release(rank)))).inspect_err(|_| release(rank))?;
    mpi::topology::SimpleCommunicator::world()
        .process_at_rank(rank)
        .send_with_tag(&[Control::Open as u8][..], TAG_CONTROL);
    Ok(link)
}

fn release(rank: i32) {
    if let Some(world) = WORLD.get() {
        if let Some(b) = world.busy.lock().unwrap_or_else(|p| p.into_inner()).get_mut(rank as usize) {
            *b = false;
        }
    }
}

/// Rank 0's end: tells every worker rank to stop, then finalizes MPI (which waits for them).
extern "C" fn finish() {
    let Some(world) = WORLD.get() else { return };
    let comm = mpi::topology::SimpleCommunicator::world();
    for rank in 1..world.size {
        comm.process_at_rank(rank).send_with_tag(&[Control::Stop as u8][..], TAG_CONTROL);
    }
    drop(UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()).take());
}

/// Rank 0 is being terminated: `mpirun` and Slurm do that to every rank when one died, and
/// when the job is cancelled.
extern "C" fn announce_abort() {
    crate::sys::write_stderr(
        b"multiproc: rank 0 was told to terminate: the MPI launcher ends the whole job when a rank dies \
          (MPI_ERRORS_ARE_FATAL) or the job is cancelled (Ctrl-C, scancel); the pool's unfinished tasks are \
          lost; see the launcher's message for which rank, or why\n",
    );
}

/// Bare MPI round trips between rank 0 and rank 1, `n` of `bytes` bytes each: the floor of the
/// pool's figures over MPI. Returns the mean time per round trip; `None` when not rank 0 of a
/// job of at least two ranks.
pub(crate) fn echo_round_trips(n: u64, bytes: usize) -> Option<std::time::Duration> {
    worker_ranks().filter(|r| *r > 0)?;
    let comm = mpi::topology::SimpleCommunicator::world();
    let peer = comm.process_at_rank(1);
    let mut control = vec![Control::Echo as u8];
    control.extend_from_slice(&n.to_le_bytes());
    peer.send_with_tag(&control[..], TAG_CONTROL);
    let message = vec![7u8; bytes];
    let start = std::time::Instant::now();
    for _ in 0..n {
        peer.send_with_tag(&message[..], TAG_ECHO);
        let (back, _) = peer.receive_vec_with_tag::<u8>(TAG_ECHO);
        debug_assert_eq!(back.len(), bytes);
    }
    Some(start.elapsed() / n.max(1) as u32)
}
