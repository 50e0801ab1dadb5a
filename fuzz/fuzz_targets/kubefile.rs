//! Fuzz target `kubefile`: see `fuzz/src/checks/kubefile.rs` for the input format and invariants.
#![no_main]

use sealer_fuzz::checks::{alloc_limit, kubefile};

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubefile::check(data));
