//! Every `#[process_fn]` by its stable name: the table a child dispatches on.
//!
//! Entries are link-time data (a `linkme` distributed slice), so they exist before any code
//! runs, including the start-up hook. The table is built once; a name registered twice is
//! kept as a duplicate and every use of it is an error, and an unknown name is an error that
//! lists the names that are known.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::error::Error;
use crate::function::ProcessFn;
use crate::worker::{invoke, invoke_batch, Invoke, InvokeBatch};

/// One registered function. Built by `#[process_fn]`; not public API.
#[derive(Debug)]
pub struct Registration {
    pub(crate) name: &'static str,
    pub(crate) invoke: Invoke,
    pub(crate) invoke_batch: InvokeBatch,
}

impl Registration {
    /// The registration of `F`.
    pub const fn of<F: ProcessFn>() -> Registration {
        Registration { name: F::NAME, invoke: invoke::<F>, invoke_batch: invoke_batch::<F> }
    }
}

/// The distributed slice every `#[process_fn]` adds itself to.
#[linkme::distributed_slice]
pub static REGISTRY: [Registration];

enum Slot {
    One(&'static Registration),
    Duplicate,
}

fn table() -> &'static BTreeMap<&'static str, Slot> {
    static TABLE: OnceLock<BTreeMap<&'static str, Slot>> = OnceLock::new();
    TABLE.get_or_init(|| build(&REGISTRY))
}

fn build(entries: &'static [Registration]) -> BTreeMap<&'static str, Slot> {
    let mut map = BTreeMap::new();
    for r in entries {
        map.entry(r.name).and_modify(|s| *s = Slot::Duplicate).or_insert(Slot::One(r));
    }
    map
}

fn find(map: &'static BTreeMap<&'static str, Slot>, name: &str) -> Result<&'static Registration, Error> {
    match map.get(name) {
        Some(Slot::One(r)) => Ok(r),
        Some(Slot::Duplicate) => Err(Error::DuplicateFunction { name: name.to_string() }),
        None => {
            Err(Error::UnknownFunction { name: name.to_string(), known: map.keys().map(|k| k.to_string()).collect() })
        }
    }
}

/// The registration for `name`, or why there is none.
pub(crate) fn lookup(name: &str) -> Result<&'static Registration, Error> {
    find(table(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing(_: &mut crate::wire::codec::ValueReader<'_>, _: &mut Vec<u8>) -> Result<(), crate::worker::CallFailure> {
        Ok(())
    }

    fn nothing_batch(_: &mut crate::wire::items::ItemsReader<'_>, _: u32, _: &mut crate::worker::Batch<'_>) {}

    static ENTRIES: [Registration; 3] = [
        Registration { name: "a::f", invoke: nothing, invoke_batch: nothing_batch },
        Registration { name: "a::g", invoke: nothing, invoke_batch: nothing_batch },
        Registration { name: "a::f", invoke: nothing, invoke_batch: nothing_batch },
    ];

    #[test]
    fn duplicates_and_unknown_names_are_errors() {
        let map: &'static _ = Box::leak(Box::new(build(&ENTRIES)));
        assert_eq!(find(map, "a::g").unwrap().name, "a::g");
        match find(map, "a::f") {
            Err(Error::DuplicateFunction { name }) => assert_eq!(name, "a::f"),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        match find(map, "a::h") {
            Err(Error::UnknownFunction { name, known }) => {
                assert_eq!(name, "a::h");
                assert_eq!(known, ["a::f", "a::g"]);
            }
            other => panic!("expected an unknown name, got {other:?}"),
        }
    }
}
