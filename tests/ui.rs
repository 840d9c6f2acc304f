//! Compile tests of `#[mongo_locked]`: every misuse fails with the reviewed
//! message in its `.stderr` file. The messages are pinned to the toolchain
//! in rust-toolchain.toml. The supported forms are in `tests/forms`, each a
//! test crate of its own built with the suite, so that trybuild only checks
//! (`cargo check`) and does not build the driver a second time.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
}
