//! Two functions registered under one name: every use of that name is an error, never a
//! call of the wrong function. (Its own test binary: the registry is per binary.)

mod common;

use multiproc::{process_fn, Error};

#[process_fn(name = "shared::name")]
fn one() -> u32 {
    1
}

#[process_fn(name = "shared::name")]
fn two() -> u32 {
    2
}

#[process_fn]
fn unique() -> u32 {
    3
}

#[test]
fn a_name_registered_twice_is_an_error_for_both_functions() {
    for result in [one.spawn().map(drop), two.spawn().map(drop)] {
        match result {
            Err(Error::DuplicateFunction { name }) => assert_eq!(name, "shared::name"),
            other => panic!("expected a duplicate name, got {other:?}"),
        }
    }
    assert_eq!(one.name(), "shared::name");
    assert_eq!(common::join(unique.spawn().unwrap()).unwrap(), 3);
}
