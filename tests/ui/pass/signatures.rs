//! Every shape of signature `#[process_fn]` accepts, used both ways.
use multiproc::process_fn;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    x: i32,
    y: i32,
}

/// No parameters, no result.
#[process_fn]
fn nothing() {}

/// Documented, public, with an attribute kept on the function.
#[process_fn]
#[inline]
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[process_fn]
pub(crate) fn shift(mut p: Point, by: i32) -> Point {
    p.x += by;
    p.y += by;
    p
}

#[process_fn]
fn parse(text: String) -> Result<u64, String> {
    text.parse().map_err(|e| format!("{e}"))
}

#[process_fn(name = "custom::stable::name")]
fn renamed(values: Vec<(String, Option<u8>)>) -> usize {
    values.len()
}

mod nested {
    use multiproc::process_fn;

    #[process_fn]
    pub fn twice(x: i64) -> i64 {
        2 * x
    }
}

#[process_fn]
fn countdown(n: u32) -> u32 {
    if n == 0 { 0 } else { countdown(n - 1) }
}

fn main() -> multiproc::Result<()> {
    nothing();
    assert_eq!(add(1, 2), 3);
    assert_eq!(shift(Point { x: 1, y: 2 }, 1), Point { x: 2, y: 3 });
    assert_eq!(parse("12".into()), Ok(12));
    assert_eq!(renamed(vec![]), 0);
    assert_eq!(nested::twice(4), 8);
    assert_eq!(countdown(3), 0);
    assert_eq!(renamed.name(), "custom::stable::name");
    assert!(nested::twice.name().ends_with("::nested::twice"));

    nothing.spawn()?.join()?;
    let sum: u64 = add.spawn(40, 2)?.join()?;
    assert_eq!(sum, 42);
    assert_eq!(shift.spawn(Point { x: 0, y: 0 }, 5)?.join()?, Point { x: 5, y: 5 });
    assert_eq!(parse.spawn("x".into())?.join()?, Err("invalid digit found in string".into()));
    assert_eq!(renamed.spawn(vec![("a".into(), None)])?.join()?, 1);
    assert_eq!(nested::twice.spawn(21)?.join()?, 42);
    Ok(())
}
