//! Shared memory across real processes: `Value`, `AtomicValue`, `Array` and `SharedMemory`
//! passed to children as arguments, counted exactly, and freed after every holder died. Every
//! wait has a hard deadline.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{join, within, DEADLINE};
use multiproc::{process_fn, Array, AtomicValue, Event, Pool, SharedMemory, Value};

#[process_fn]
fn increment(v: Value<u64>, a: AtomicValue<u64>, n: u32) {
    for _ in 0..n {
        *v.lock().unwrap() += 1;
        a.fetch_add(1);
    }
}

#[test]
fn four_processes_lose_no_increment_of_a_locked_value_or_an_atomic_one() {
    within(DEADLINE, || {
        let v = Value::new(0u64).unwrap();
        let a = AtomicValue::new(0u64).unwrap();
        let children: Vec<_> = (0..4).map(|_| increment.spawn(v.clone(), a.clone(), 20_000).unwrap()).collect();
        children.into_iter().for_each(|c| join(c).unwrap());
        assert_eq!(v.get().unwrap(), 80_000);
        assert_eq!(a.load(), 80_000);
    });
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, multiproc::bytemuck::Pod, multiproc::bytemuck::Zeroable)]
#[bytemuck(crate = "multiproc::bytemuck")]
struct Particle {
    position: [f32; 3],
    mass: f32,
    id: u64,
}

#[process_fn]
fn heavier(particles: Array<Particle>, flag: Value<bool>) -> u64 {
    let mut g = particles.lock().unwrap();
    for p in g.iter_mut() {
        p.mass *= 2.0;
        p.position[0] += 1.0;
    }
    flag.set(true).unwrap();
    g.iter().map(|p| p.id).sum()
}

#[test]
fn an_array_of_repr_c_structs_and_a_bool_are_shared_with_a_child() {
    within(DEADLINE, || {
        let start: Vec<Particle> =
            (0..100).map(|i| Particle { position: [i as f32, 0.0, 0.0], mass: 1.0, id: i }).collect();
        let particles = Array::from_slice(&start).unwrap();
        let flag = Value::new(false).unwrap();
        assert_eq!(join(heavier.spawn(particles.clone(), flag.clone()).unwrap()).unwrap(), 4950);
        assert!(flag.get().unwrap());
        let after = particles.to_vec().unwrap();
        assert_eq!(after[7], Particle { position: [8.0, 0.0, 0.0], mass: 2.0, id: 7 });
    });
}

#[process_fn]
fn reverse_in_place(buf: Array<u8>) -> Array<u8> {
    buf.lock().unwrap().reverse();
    buf
}

#[test]
fn a_64_mib_array_goes_to_a_pool_worker_and_back_without_a_copy_through_the_socket() {
    within(DEADLINE, || {
        let len = 64 << 20;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let buf = Array::from_slice(&data).unwrap();
        // a frame limit of 64 KiB: the 64 MiB cannot be going through the socket
        let pool = Pool::builder().workers(1).max_frame_len(64 << 10).build().unwrap();
        let back = pool.apply(reverse_in_place, (buf.clone(),)).unwrap();
        let g = back.lock().unwrap();
        assert_eq!(g.len(), len);
        assert!(g.iter().rev().eq(data.iter()));
        drop(g);
        assert_eq!(buf.get(0).unwrap(), data[len - 1], "the same memory");
    });
}

/// The inodes of this process's SharedMemory memfds of `bytes` bytes (header included).
fn my_memfds(bytes: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else { continue };
        if !link.to_string_lossy().starts_with("/memfd:multiproc-SharedMemory") {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(entry.path()) {
            if meta.len() == bytes {
                out.push(meta.ino());
            }
        }
    }
    out
}

/// Every process that still has `inode` open or mapped.
fn holders_of(inode: u64) -> Vec<String> {
    let mut found = Vec::new();
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = proc.file_name().to_string_lossy().to_string();
        if name.parse::<u32>().is_err() {
            continue;
        }
        if let Ok(maps) = std::fs::read_to_string(proc.path().join("maps")) {
            if maps.lines().any(|l| l.contains("memfd:") && l.split_whitespace().nth(4) == Some(&inode.to_string())) {
                found.push(format!("{name} maps it"));
            }
        }
        if let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) {
            for fd in fds.flatten() {
                if std::fs::metadata(fd.path()).is_ok_and(|m| m.ino() == inode && m.nlink() == 0) {
                    found.push(format!("{name} has it open"));
                }
            }
        }
    }
    found
}

#[process_fn]
fn write_and_hang(m: SharedMemory, ready: Event, at: usize) {
    m.write_at(at, b"child was here").unwrap();
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn shared_memory_is_freed_once_every_holder_died_and_leaves_no_name_anywhere() {
    within(DEADLINE, || {
        const LEN: usize = 3_333_333;
        let shm_before: Vec<_> =
            std::fs::read_dir("/dev/shm").map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        let m = SharedMemory::new(LEN).unwrap();
        let inodes = my_memfds(LEN as u64 + 4096);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        let inode = inodes[0];
        let mut children = Vec::new();
        for i in 0..3 {
            let ready = Event::new().unwrap();
            children.push(write_and_hang.spawn(m.clone(), ready.clone(), i * 1_000_000).unwrap());
            assert!(ready.wait_timeout(DEADLINE));
        }
        let mut buf = [0u8; 14];
        m.read_at(2_000_000, &mut buf).unwrap();
        assert_eq!(&buf, b"child was here");
        assert!(holders_of(inode).len() >= 4, "{:?}", holders_of(inode));
        for mut child in children {
            child.kill().unwrap();
            let _ = child.join_timeout(DEADLINE);
        }
        drop(m);
        assert_eq!(holders_of(inode), Vec::<String>::new(), "nobody holds it: the kernel freed it");
        let shm_after: Vec<_> =
            std::fs::read_dir("/dev/shm").map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert_eq!(shm_before, shm_after, "nothing named in /dev/shm");
    });
}

#[process_fn]
fn hold_everything(m: SharedMemory, s: multiproc::Semaphore, l: multiproc::Lock, ready: Event) {
    let _count = s.acquire();
    let _held = l.lock().unwrap();
    m.write_at(0, b"grandchild").unwrap();
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
}

/// A process that makes shared objects, gives them to a child of its own, says who is who,
/// and waits to be killed.
#[process_fn]
fn make_and_share(tell: multiproc::Sender<(u32, u32, u64)>) {
    const LEN: usize = 2_222_222;
    let m = SharedMemory::new(LEN).unwrap();
    let inode = my_memfds(LEN as u64 + 4096)[0];
    let s = multiproc::Semaphore::new(1).unwrap();
    let l = multiproc::Lock::new().unwrap();
    let manager = multiproc::Manager::start().unwrap();
    let ready = Event::new().unwrap();
    let child = hold_everything.spawn(m, s, l, ready.clone()).unwrap();
    assert!(ready.wait_timeout(DEADLINE));
    tell.send((child.pid(), manager.pid().unwrap(), inode)).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_parent_killed_with_shared_objects_leaves_no_process_mapping_or_name_behind() {
    within(DEADLINE, || {
        let shm_before: Vec<_> =
            std::fs::read_dir("/dev/shm").map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        let (rx, tx) = multiproc::pipe_one_way().unwrap();
        let mut parent = make_and_share.spawn(tx).unwrap();
        let (grandchild, server, inode) = rx.recv_timeout(DEADLINE).unwrap();
        assert!(!holders_of(inode).is_empty());
        parent.kill().unwrap();
        let _ = parent.join_timeout(DEADLINE);
        assert!(common::ends_within(grandchild, Duration::from_secs(5)), "the grandchild outlived its parent");
        assert!(common::ends_within(server, Duration::from_secs(5)), "the manager outlived its owner");
        let start = std::time::Instant::now();
        while !holders_of(inode).is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(holders_of(inode), Vec::<String>::new(), "the memory is freed");
        let shm_after: Vec<_> =
            std::fs::read_dir("/dev/shm").map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert_eq!(shm_before, shm_after, "no name left in /dev/shm");
    });
}
