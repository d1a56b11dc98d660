//! W4 by value: a 64 MiB `Vec<u8>` (and `Vec<f64>`) as an ordinary argument and result, and
//! raw bytes echoed over a pipe, each beside the two-`memcpy` floor and beside Servo's
//! `ipc-channel` (the peer a user would pick for bytes between processes) in the same run.

use std::time::Instant;

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender};
use multiproc::{process_fn, Connection, Pool};

use crate::{median, REPETITIONS};

const BULK: usize = 64 << 20;
/// Set in the environment of ipc-channel's echo child: the one-shot server's name.
const IPC_ENV: &str = "MULTIPROC_BENCH_IPC_CHANNEL";

#[process_fn]
fn echo_vec(v: Vec<u8>) -> Vec<u8> {
    v
}

#[process_fn]
fn echo_f64(v: Vec<f64>) -> Vec<f64> {
    v
}

/// Echoes raw byte messages until the other end goes.
#[process_fn]
fn echo_pipe(c: Connection<u8, u8>) {
    while let Ok(b) = c.recv_bytes() {
        if c.send_bytes(&b).is_err() {
            break;
        }
    }
}

/// The peer's echo child: connects to the parent's one-shot server, hands it a sender and a
/// receiver (of raw bytes, or of typed `u64`s for W9), and echoes.
pub(crate) fn ipc_child() -> bool {
    let Some(env) = std::env::var_os(IPC_ENV) else { return false };
    let env = env.into_string().unwrap();
    let (kind, name) = env.split_once(' ').unwrap();
    if kind == "typed" {
        let to_parent = IpcSender::<(IpcSender<u64>, IpcReceiver<u64>)>::connect(name.to_string()).unwrap();
        let (in_tx, in_rx) = ipc::channel().unwrap();
        let (out_tx, out_rx) = ipc::channel().unwrap();
        to_parent.send((in_tx, out_rx)).unwrap();
        while let Ok(x) = in_rx.recv() {
            if out_tx.send(x).is_err() {
                break;
            }
        }
        return true;
    }
    let to_parent = IpcSender::<(IpcBytesSender, IpcBytesReceiver)>::connect(name.to_string()).unwrap();
    let (in_tx, in_rx) = ipc::bytes_channel().unwrap();
    let (out_tx, out_rx) = ipc::bytes_channel().unwrap();
    to_parent.send((in_tx, out_rx)).unwrap();
    while let Ok(b) = in_rx.recv() {
        if out_tx.send(&b).is_err() {
            break;
        }
    }
    true
}

/// Starts this executable as ipc-channel's echo child of `kind`, to connect to server `name`.
fn ipc_echo_child(kind: &str, name: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap()).env(IPC_ENV, format!("{kind} {name}")).spawn().unwrap()
}

/// W9's peer: ipc-channel's typed round trip of a `u64` with a child, `trips` times; us per
/// round trip, the median of the repetitions.
pub(crate) fn ipc_channel_round_trips(trips: u64) -> f64 {
    let (server, name) = IpcOneShotServer::<(IpcSender<u64>, IpcReceiver<u64>)>::new().unwrap();
    let mut child = ipc_echo_child("typed", &name);
    let (_, (tx, rx)) = server.accept().unwrap();
    let us = time(|| {
        for x in 0..trips {
            tx.send(x).unwrap();
            assert_eq!(rx.recv().unwrap(), x);
        }
    }) * 1e3
        / trips as f64;
    drop(tx);
    child.wait().unwrap();
    us
}

/// Median ms of `f` over the repetitions, after one warm-up.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..REPETITIONS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn line(what: &str, ours: f64, floor: f64, peer: f64) {
    println!(
        "W4 {what} ours={ours:.3} floor={floor:.3} peer(ipc-channel bytes_channel)={peer:.3} unit=ms/call \
         ratio={:.2} peer/ours={:.2}",
        ours / floor,
        peer / ours
    );
}

/// W4 by value, for `Vec<u8>`, `Vec<f64>` and a pipe's raw bytes; ms per round trip.
pub(crate) fn w4_by_value() {
    let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
    // the floor: two memcpys of the same bytes, between buffers already touched
    let (mut a, mut b) = (vec![0u8; BULK], vec![0u8; BULK]);
    let floor = time(|| {
        a.copy_from_slice(std::hint::black_box(&data));
        b.copy_from_slice(std::hint::black_box(&a));
        std::hint::black_box(&b);
    });
    let peer = ipc_channel_echo(&data);

    let pool = Pool::new(1).unwrap();
    // each result is the next argument: no clone in the timed region
    let mut v = Some(data.clone());
    let bytes = time(|| {
        let back = pool.apply(echo_vec, (v.take().unwrap(),)).unwrap();
        assert_eq!(back.len(), BULK);
        v = Some(back);
    });
    assert!(v.as_deref() == Some(&data[..]), "the bytes came back changed");
    line("bulk(Vec<u8> by value)", bytes, floor, peer);

    let numbers: Vec<f64> = (0..BULK / 8).map(|i| i as f64).collect();
    let mut v = Some(numbers.clone());
    let floats = time(|| {
        let back = pool.apply(echo_f64, (v.take().unwrap(),)).unwrap();
        assert_eq!(back.len(), BULK / 8);
        v = Some(back);
    });
    assert!(v.as_deref() == Some(&numbers[..]), "the numbers came back changed");
    line("bulk(Vec<f64> by value)", floats, floor, peer);
    drop(pool);

    let (ours_end, theirs) = multiproc::pipe::<u8, u8>().unwrap();
    let child = echo_pipe.spawn(theirs).unwrap();
    let pipe = time(|| {
        ours_end.send_bytes(&data).unwrap();
        let back = ours_end.recv_bytes().unwrap();
        assert_eq!(back.len(), BULK);
    });
    drop(ours_end);
    child.join().unwrap();
    line("bulk(pipe send_bytes echo)", pipe, floor, peer);
}

/// Where large values should start to go out of line: raw bytes echoed over a pipe at sizes
/// around the threshold, inline (through the socket) and out of line (a memfd), in us.
pub(crate) fn threshold_sweep() {
    for size in [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20] {
        let inline = pipe_echo_us(size, usize::MAX);
        let out_of_line = pipe_echo_us(size, 4096);
        println!(
            "W4 threshold({} KiB) inline={inline:.1} out-of-line={out_of_line:.1} unit=us/round-trip ratio={:.2}",
            size >> 10,
            out_of_line / inline
        );
    }
    multiproc::__private::set_large_min(0);
}

/// Round trips of `size` bytes over a pipe, every byte run from `threshold` on out of line on
/// both sides; us per round trip.
fn pipe_echo_us(size: usize, threshold: usize) -> f64 {
    multiproc::__private::set_large_min(threshold);
    let (ours, theirs) = multiproc::pipe::<u8, u8>().unwrap();
    let child = multiproc::ProcessBuilder::new()
        .env("MULTIPROC_LARGE_MIN", threshold.to_string())
        .spawn(echo_pipe, (theirs,))
        .unwrap();
    let data = vec![7u8; size];
    let trips = 200;
    let us = time(|| {
        for _ in 0..trips {
            ours.send_bytes(&data).unwrap();
            assert_eq!(ours.recv_bytes().unwrap().len(), size);
        }
    }) * 1e3
        / trips as f64;
    drop(ours);
    child.join().unwrap();
    us
}

/// ipc-channel's raw bytes channel: 64 MiB to a child and back; ms per round trip.
fn ipc_channel_echo(data: &[u8]) -> f64 {
    let (server, name) = IpcOneShotServer::<(IpcBytesSender, IpcBytesReceiver)>::new().unwrap();
    let mut child = ipc_echo_child("bytes", &name);
    let (_, (tx, rx)) = server.accept().unwrap();
    let ms = time(|| {
        tx.send(data).unwrap();
        let back = rx.recv().unwrap();
        assert_eq!(back.len(), data.len());
    });
    drop(tx);
    child.wait().unwrap();
    ms
}
