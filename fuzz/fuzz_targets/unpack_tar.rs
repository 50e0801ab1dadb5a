//! Fuzz target `unpack_tar`: see `fuzz/src/checks/unpack_tar.rs` for the input format and invariants.
#![no_main]

use sealer_fuzz::checks::{alloc_limit, unpack_tar};

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

libfuzzer_sys::fuzz_target!(|data: &[u8]| unpack_tar::check(data));
