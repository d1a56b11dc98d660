//! A worker rank: waits for rank 0 to open a session, serves it as a pool worker, and again,
//! until rank 0 says stop.

use mpi::traits::*;

use super::{Control, Link, TAG_CONTROL, TAG_ECHO};

const OPEN: u8 = Control::Open as u8;
const STOP: u8 = Control::Stop as u8;
const ECHO: u8 = Control::Echo as u8;

/// Serves rank 0's sessions until it says stop; then finalizes MPI and exits. Never returns.
pub(super) fn serve(rank: i32) -> ! {
    crate::wire::large::inline_everywhere(); // its frames go to rank 0 over MPI
    crate::sys::ignore_sigpipe();
    crate::panic::install_hook();
    let comm = mpi::topology::SimpleCommunicator::world();
    loop {
        let (message, _) = comm.process_at_rank(0).receive_vec_with_tag::<u8>(TAG_CONTROL);
        match message.first() {
            Some(&OPEN) => match Link::new(0, None) {
                Ok(mut link) => {
                    crate::worker::serve_link(&mut link);
                    link.end();
                }
                Err(e) => {
                    eprintln!("multiproc: MPI rank {rank} could not open a session: {e}");
                    break;
                }
            },
            Some(&ECHO) if message.len() == 9 => {
                let n = u64::from_le_bytes(message[1..9].try_into().expect("8 bytes"));
                let peer = comm.process_at_rank(0);
                for _ in 0..n {
                    let (bytes, _) = peer.receive_vec_with_tag::<u8>(TAG_ECHO);
                    peer.send_with_tag(&bytes[..], TAG_ECHO);
                }
            }
            Some(&STOP) | None => break,
            Some(other) => {
                eprintln!("multiproc: MPI rank {rank} got an unknown control message {other}");
                break;
            }
        }
    }
    drop(super::UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()).take()); // MPI_Finalize
    std::process::exit(0)
}
