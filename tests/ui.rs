//! Compile errors of `#[process_fn]`, pinned: one case per file in `tests/ui`, its expected
//! output beside it. Regenerate with `TRYBUILD=overwrite cargo test --test ui` and review the
//! diff: the wording belongs to the toolchain pinned in CI.

use std::io::Write;

#[test]
fn ui() {
    let cases = std::fs::read_dir("tests/ui")
        .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "rs"))).count())
        .unwrap_or(0);
    // Straight to the terminal, past libtest's capture: this test is silent for a while.
    let _ = writeln!(
        std::io::stderr(),
        "ui: compiling {cases} cases that must fail and the ones that must pass, each against multiproc; \
         the first run also builds multiproc's dependencies in target/tests/trybuild (about a minute, \
         later runs 20 s)"
    );
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
