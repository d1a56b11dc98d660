//! The tutorial's section 4, shared memory for small data: a child sets a `Value` and negates
//! every element of an `Array`; the parent prints both. (The Python documentation's example.)
//!
//! Python:
//! ```python
//! def f(n, a):
//!     n.value = 3.1415927
//!     for i in range(len(a)):
//!         a[i] = -a[i]
//! num = Value('d', 0.0)
//! arr = Array('i', range(10))
//! p = Process(target=f, args=(num, arr)); p.start(); p.join()
//! print(num.value)
//! print(arr[:])
//! ```

use multiproc::{process_fn, Array, Value};

#[process_fn]
#[allow(clippy::approx_constant)] // the documentation's number, printed as it is there
fn f(n: Value<f64>, a: Array<i32>) {
    n.set(3.1415927).unwrap();
    for x in a.lock().unwrap().iter_mut() {
        *x = -*x;
    }
}

fn main() -> multiproc::Result<()> {
    let num = Value::new(0.0f64)?;
    let arr = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
    f.spawn(num.clone(), arr.clone())?.join()?; // the handles are ordinary arguments
    println!("{}", num.get()?);
    println!("{:?}", arr.to_vec()?);
    Ok(())
}
