//! Fuzz target `clusterfile`: see `fuzz/src/checks/clusterfile.rs` for the input format and invariants.
#![no_main]

use sealer_fuzz::checks::{alloc_limit, clusterfile};

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterfile::check(data));
