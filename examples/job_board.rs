//! A job board in a manager, local and remote: jobs in a shared dict, workers that claim one
//! at a time with compare-and-set (two never take the same job), results in a shared list.
//! First with a manager on this machine, then with one served over TCP with a key, as another
//! host would reach it.
//!
//! ```text
//! cargo run --example job_board
//! ```

use multiproc::{process_fn, DictProxy, ListProxy, Manager};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Status {
    Open,
    Taken(u32),
    Done(u32),
}

/// Claims open jobs until none is left; returns how many it did.
#[process_fn]
fn work(board: DictProxy<u32, Status>, results: ListProxy<String>) -> multiproc::Result<u32> {
    let me = std::process::id();
    let mut did = 0;
    loop {
        let open = board.items()?.into_iter().find(|(_, s)| *s == Status::Open);
        let Some((job, _)) = open else { return Ok(did) };
        // only one claimant wins: the others see it taken and look again
        if board.compare_and_set(&job, Some(&Status::Open), Some(&Status::Taken(me)))? {
            results.push(format!("job {job} -> {}", job * job))?;
            board.insert(job, Status::Done(me))?;
            did += 1;
        }
    }
}

/// The same worker, for a manager it reaches by address and key (another host, say).
#[process_fn]
fn work_remote(addr: String, key: Vec<u8>) -> multiproc::Result<u32> {
    let m = Manager::connect(addr.as_str(), &key)?;
    work(m.named_dict("board")?, m.named_list("results")?)
}

fn report(
    what: &str,
    board: &DictProxy<u32, Status>,
    results: &ListProxy<String>,
    did: &[u32],
) -> multiproc::Result<()> {
    let done = board.values()?.iter().filter(|s| matches!(s, Status::Done(_))).count();
    println!("{what}: {done} of {} jobs done, {} results, by workers doing {did:?}", board.len()?, results.len()?);
    assert_eq!(did.iter().sum::<u32>() as usize, done, "each job claimed once");
    Ok(())
}

fn main() -> multiproc::Result<()> {
    // local: the manager's server is a child of this process
    let m = Manager::start()?;
    let board = m.dict_from((0..30u32).map(|j| (j, Status::Open)))?;
    let results = m.list()?;
    let workers: Vec<_> = (0..3).map(|_| work.spawn(board.clone(), results.clone())).collect::<Result<_, _>>()?;
    let did = workers.into_iter().map(|w| w.join()?).collect::<multiproc::Result<Vec<u32>>>()?;
    report("local", &board, &results, &did)?;

    // remote: served at an address with a key; workers connect as other hosts would
    let key = b"job board key".to_vec();
    let server = Manager::serve("127.0.0.1:0", &key)?;
    let addr = server.local_addr().expect("a served manager has an address").to_string();
    let board = server.named_dict::<u32, Status>("board")?;
    for j in 0..30u32 {
        board.insert(j, Status::Open)?;
    }
    let results = server.named_list::<String>("results")?;
    let workers: Vec<_> = (0..3).map(|_| work_remote.spawn(addr.clone(), key.clone())).collect::<Result<_, _>>()?;
    let did = workers.into_iter().map(|w| w.join()?).collect::<multiproc::Result<Vec<u32>>>()?;
    report(&format!("remote at {addr}"), &board, &results, &did)?;
    Ok(())
}
