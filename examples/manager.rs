//! The tutorial's section 4, server process: a manager holds a dict and a list; a child writes
//! to the dict and reverses the list; the parent prints both. (The Python documentation's
//! example, with typed keys and values.)
//!
//! Python:
//! ```python
//! def f(d, l):
//!     d[1] = '1'; d[2] = '2'; d[3] = '3'
//!     l.reverse()
//! with Manager() as manager:
//!     d = manager.dict()
//!     l = manager.list(range(10))
//!     p = Process(target=f, args=(d, l)); p.start(); p.join()
//!     print(d)
//!     print(l)
//! ```

use multiproc::{process_fn, DictProxy, ListProxy, Manager};

#[process_fn]
fn f(d: DictProxy<u32, String>, l: ListProxy<u32>) {
    for i in 1..=3 {
        d.insert(i, i.to_string()).unwrap();
    }
    l.reverse().unwrap();
}

fn main() -> multiproc::Result<()> {
    let manager = Manager::start()?; // the server process; it ends when `manager` is dropped
    let d = manager.dict()?;
    let l = manager.list_from((0..10).collect())?;
    f.spawn(d.clone(), l.clone())?.join()?; // proxies are ordinary arguments
    let items = d.items()?.into_iter().map(|(k, v)| format!("{k}: {v:?}")).collect::<Vec<_>>();
    println!("{{{}}}", items.join(", "));
    println!("{:?}", l.to_vec()?);
    Ok(())
}
