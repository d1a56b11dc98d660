// A lock is released only by the thread that holds it (Python's "release by a non-owner" of an
// RLock is an error at run time; here it does not compile).
use multiproc::RLock;

fn main() {
    let lock = RLock::new().unwrap();
    let guard = lock.lock().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || drop(guard));
    });
}
