//! Replays the fuzz corpora of the Kubefile and Clusterfile targets (`fuzz/corpus/kubefile/`,
//! `fuzz/corpus/clusterfile/`: seeds and every reproducer found) through the very checks the
//! fuzz targets run, on the stable toolchain: no panic, errors that name a line, bounded
//! expansion and allocation. See docs/testing.md.

#[path = "../fuzz/src/checks/alloc_limit.rs"]
mod alloc_limit;
#[path = "../fuzz/src/checks/clusterfile.rs"]
mod clusterfile_check;
#[path = "../fuzz/src/checks/kubefile.rs"]
mod kubefile_check;
#[path = "../fuzz/src/checks/replay.rs"]
mod replay;

// The checks name the library's modules as `crate::kubefile` and `crate::clusterfile`.
use sealer::{clusterfile, kubefile};

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

fn replay(target: &str, check: fn(&[u8])) {
    let fuzz_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    replay::replay(&fuzz_dir, target, check);
}

#[test]
fn kubefile_corpus_parses_and_expands_within_bounds() {
    replay("kubefile", kubefile_check::check);
}

#[test]
fn clusterfile_corpus_loads_without_panic() {
    replay("clusterfile", clusterfile_check::check);
}
