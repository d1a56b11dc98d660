//! Large values between real processes: byte runs from 256 KiB on cross as memfds (issue 15).
//! Just under and just over the threshold, every kind of value that has a byte run (`Vec<u8>`,
//! `Vec` of numbers, `String`, `serde_bytes` inside a struct), every path (spawn, a pool's
//! apply and map, pipes), the frame limit, and descriptors that do not pile up. Every wait has a
//! hard deadline.

mod common;

use common::{within, DEADLINE};
use multiproc::{process_fn, Error, Pool, ProcessBuilder};
use serde::{Deserialize, Serialize};

/// The threshold (`MULTIPROC_LARGE_MIN` is not set in tests).
const LARGE: usize = 256 * 1024;

#[process_fn]
fn reverse_bytes(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

#[process_fn]
fn scale(v: Vec<f64>, by: f64) -> Vec<f64> {
    v.into_iter().map(|x| x * by).collect()
}

#[process_fn]
fn shout(s: String) -> (usize, String) {
    (s.len(), s.to_uppercase())
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Image {
    name: String,
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
    width: u32,
}

#[process_fn]
fn invert(img: Image) -> Image {
    Image { pixels: img.pixels.iter().map(|p| 255 - p).collect(), ..img }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Held by each test here: one counts this process's descriptors, and the others' pools and
/// memfds would come and go meanwhile.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn values_just_under_at_and_over_the_threshold_cross_whole_to_a_child() {
    let _serial = serial();
    within(DEADLINE, || {
        for len in [LARGE - 1, LARGE, LARGE + 1, 3 << 20] {
            let v = bytes(len, 1);
            let mut expected = v.clone();
            expected.reverse();
            assert_eq!(reverse_bytes.spawn(v).unwrap().join().unwrap(), expected, "{len} bytes");

            let n = len / 8 + 1;
            let f: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let back = scale.spawn(f, 0.5).unwrap().join().unwrap();
            assert_eq!(back.len(), n);
            assert!(back.iter().enumerate().all(|(i, x)| *x == i as f64 * 0.5), "{n} numbers");

            let s: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let (count, upper) = shout.spawn(s.clone()).unwrap().join().unwrap();
            assert_eq!((count, upper), (len, s.to_uppercase()), "a string of {len} bytes");

            let img = Image { name: format!("img-{len}"), pixels: bytes(len, 9), width: 640 };
            let back = invert.spawn(img.clone()).unwrap().join().unwrap();
            assert_eq!(back.name, img.name);
            assert!(back.pixels.iter().zip(&img.pixels).all(|(a, b)| *a == 255 - b), "{len} pixels");
        }
    });
}

/// How many memfds of large values this process has mapped (a receiver keeps its mappings).
#[process_fn]
fn memfds_mapped(v: Vec<u8>) -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    (v.len(), maps.lines().filter(|l| l.contains("memfd:multiproc-value")).count())
}

#[test]
fn a_value_over_the_threshold_reaches_the_child_as_a_memfd_and_one_under_through_the_socket() {
    let _serial = serial();
    within(DEADLINE, || {
        assert_eq!(memfds_mapped.spawn(vec![1; LARGE - 1]).unwrap().join().unwrap(), (LARGE - 1, 0));
        assert_eq!(memfds_mapped.spawn(vec![1; LARGE]).unwrap().join().unwrap(), (LARGE, 1));
        // a result too: this process maps the child's memfd to read it (other tests here map
        // theirs meanwhile, so look for a new one, by inode)
        let mapped = || -> std::collections::HashSet<String> {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines()
                .filter(|l| l.contains("memfd:multiproc-value"))
                .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
                .collect()
        };
        let before = mapped();
        let big = reverse_bytes.spawn(vec![2; 1 << 20]).unwrap().join().unwrap();
        assert_eq!(big.len(), 1 << 20);
        assert!(mapped().difference(&before).count() > 0, "the result came by memfd");
    });
}

#[test]
fn a_pool_applies_and_maps_large_values_and_chunks_them_by_size() {
    let _serial = serial();
    within(DEADLINE, || {
        let pool = Pool::new(2).unwrap();
        let v = bytes(2 << 20, 3);
        let mut expected = v.clone();
        expected.reverse();
        for _ in 0..5 {
            // the same memfds again and again: each result whole
            assert_eq!(pool.apply(reverse_bytes, (v.clone(),)).unwrap(), expected);
        }
        let inputs: Vec<Vec<u8>> = (0..40).map(|k| bytes(LARGE + k * 1000, k as u8)).collect();
        let out = pool.map(reverse_bytes, inputs.clone()).unwrap();
        for (k, (got, sent)) in out.iter().zip(&inputs).enumerate() {
            let mut want = sent.clone();
            want.reverse();
            assert!(*got == want, "item {k}");
        }
        let images: Vec<Image> =
            (0..12).map(|k| Image { name: k.to_string(), pixels: bytes(300_000, k), width: k as u32 }).collect();
        let out = pool.map(invert, images.clone()).unwrap();
        assert!(out.iter().zip(&images).all(|(a, b)| a.name == b.name && a.pixels[7] == 255 - b.pixels[7]));
    });
}

#[test]
fn large_values_count_toward_the_frame_limit_both_ways() {
    let _serial = serial();
    within(DEADLINE, || {
        let mut b = ProcessBuilder::new();
        b.max_frame_len(1 << 20);
        match b.spawn(reverse_bytes, (vec![0u8; 2 << 20],)) {
            Err(Error::FrameTooLarge { len, max }) => assert!(len > max && max == 1 << 20, "{len} {max}"),
            Err(other) => panic!("expected FrameTooLarge, got {other:?}"),
            Ok(p) => panic!("an argument of 2 MiB went to a child whose limit is 1 MiB (pid {})", p.pid()),
        }
        // a result over the limit: that task's error, and the worker goes on
        #[process_fn]
        fn zeros(n: u64) -> Vec<u8> {
            vec![0; n as usize]
        }
        let pool = Pool::builder().workers(1).max_frame_len(1 << 20).build().unwrap();
        let pids = pool.pids();
        match pool.apply(zeros, (2 << 20,)) {
            Err(Error::FrameTooLarge { len, max }) => assert!(len > max, "{len} {max}"),
            other => panic!("expected FrameTooLarge, got {:?}", other.map(|v| v.len())),
        }
        let items = pool.map_results(zeros, [10, 2 << 20, 600_000]);
        assert_eq!(items[0].as_ref().unwrap().len(), 10);
        assert!(matches!(items[1], Err(Error::FrameTooLarge { .. })), "{:?}", items[1].as_ref().map(|v| v.len()));
        assert_eq!(items[2].as_ref().unwrap().len(), 600_000);
        assert_eq!(pool.pids(), pids, "the worker stays");
    });
}

#[test]
fn pipes_carry_large_messages_and_raw_bytes() {
    let _serial = serial();
    #[process_fn]
    fn echo(c: multiproc::Connection<String, String>) {
        while let Ok(s) = c.recv() {
            c.send(s.clone() + "!").unwrap();
            let raw = c.recv_bytes().unwrap();
            c.send_bytes(&raw).unwrap();
        }
    }
    within(DEADLINE, || {
        let (ours, theirs) = multiproc::pipe::<String, String>().unwrap();
        let child = echo.spawn(theirs).unwrap();
        for len in [10, LARGE - 1, LARGE, 5 << 20] {
            let s = "x".repeat(len);
            ours.send(&s).unwrap();
            assert_eq!(ours.recv().unwrap().len(), len + 1);
            let raw = bytes(len, 5);
            ours.send_bytes(&raw).unwrap();
            assert!(ours.recv_bytes().unwrap() == raw, "{len} raw bytes");
        }
        drop(ours);
        child.join().unwrap();
    });
}

/// The memfds are kept for reuse within a bound, and each frame's own copies close: a long
/// stream of large values leaves the descriptors flat.
#[test]
fn a_stream_of_large_values_leaves_descriptors_flat() {
    let _serial = serial();
    within(DEADLINE, || {
        let pool = Pool::new(1).unwrap();
        let v = bytes(LARGE * 3, 2);
        pool.apply(reverse_bytes, (v.clone(),)).unwrap();
        let before = open_fds();
        for k in 0..300 {
            let len = LARGE + (k % 7) * 50_000; // several sizes: several memfds kept
            assert_eq!(pool.apply(reverse_bytes, (bytes(len, 1),)).unwrap().len(), len);
        }
        let after = open_fds();
        // at most 16 memfds kept each way (the kept ones are the sender's; the receiver keeps
        // mappings, not descriptors)
        assert!(after <= before + 16, "{before} descriptors before, {after} after");
    });
}

/// Returns the value with a checksum the caller can check against its own.
#[process_fn]
fn summed(v: Vec<u8>) -> (u64, Vec<u8>) {
    (v.iter().map(|b| *b as u64).sum(), v)
}

/// Workers killed at random while large values go to them and come back (memfds reused all the
/// while): every result is the value sent, or the error of a death; never another task's bytes.
#[test]
fn workers_killed_at_random_never_hand_back_another_tasks_bytes() {
    let _serial = serial();
    within(DEADLINE, || {
        let pool = std::sync::Arc::new(Pool::builder().workers(2).chunksize(1).build().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killer = {
            let (pool, stop) = (pool.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = common::Rng(0x5eed_1a76);
                let mut kills = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(5 + rng.below(25)));
                    let pids = pool.pids();
                    if let Some(pid) = pids.get(rng.below(pids.len().max(1) as u64) as usize) {
                        common::signal(*pid, libc::SIGKILL);
                        kills += 1;
                    }
                }
                kills
            })
        };
        let (mut ok, mut died) = (0, 0);
        for round in 0..6u8 {
            let inputs: Vec<Vec<u8>> = (0..20u8).map(|k| bytes(LARGE + 4096 * k as usize, k ^ round)).collect();
            for (k, r) in pool.map_results(summed, inputs.clone()).into_iter().enumerate() {
                match r {
                    Ok((sum, back)) => {
                        assert!(back == inputs[k], "round {round} item {k}: other bytes came back");
                        assert_eq!(sum, inputs[k].iter().map(|b| *b as u64).sum::<u64>());
                        ok += 1;
                    }
                    Err(Error::Signaled { .. } | Error::Exited { .. }) => died += 1,
                    Err(e) => panic!("round {round} item {k}: {e}"),
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let kills = killer.join().unwrap();
        println!("{ok} results whole, {died} deaths, {kills} kills");
        assert!(ok > 0 && kills > 0, "{ok} results, {died} deaths, {kills} kills: nothing tested");
    });
}
