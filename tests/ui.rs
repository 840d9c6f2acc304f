//! Compile tests of `#[mongo_locked]`: every supported form builds, every
//! misuse fails with the reviewed message in its `.stderr` file. The
//! messages are pinned to the toolchain in rust-toolchain.toml.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
