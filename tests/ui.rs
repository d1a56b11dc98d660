//! Compile errors of `#[process_fn]`, pinned: one case per file in `tests/ui`, its expected
//! output beside it. Regenerate with `TRYBUILD=overwrite cargo test --test ui` and review the
//! diff: the wording belongs to the toolchain pinned in CI.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
