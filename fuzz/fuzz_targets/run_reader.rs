//! Fuzz target `run_reader`: see `fuzz/src/checks/run_reader.rs` for the input format and invariants.
#![no_main]

use sealer_fuzz::checks::{alloc_limit, run_reader};

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

libfuzzer_sys::fuzz_target!(|data: &[u8]| run_reader::check(data));
