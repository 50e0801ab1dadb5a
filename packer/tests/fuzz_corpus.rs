//! Replays the fuzz corpora of the packer targets (`fuzz/corpus/unpack_tar/`,
//! `fuzz/corpus/run_reader/`: seeds and every reproducer found) through the very checks the
//! fuzz targets run, on the stable toolchain, so their invariants hold in every test run:
//! extraction changes nothing outside its destination and leaves no escaping symlink, the
//! `.run` reader never panics, aborts or allocates without bound. See docs/testing.md.

#[path = "../../fuzz/src/checks/alloc_limit.rs"]
mod alloc_limit;
#[path = "../../fuzz/src/checks/replay.rs"]
mod replay;
#[path = "../../fuzz/src/checks/run_reader.rs"]
mod run_reader;
#[path = "../../fuzz/src/checks/scratch.rs"]
mod scratch;
#[allow(dead_code)]
#[path = "../../fuzz/src/checks/unpack_tar.rs"]
mod unpack_tar;

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

fn replay(target: &str, check: fn(&[u8])) {
    let fuzz_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    replay::replay(&fuzz_dir, target, check);
}

#[test]
fn unpack_tar_corpus_changes_nothing_outside_the_destination() {
    replay("unpack_tar", unpack_tar::check);
}

#[test]
fn run_reader_corpus_never_panics_or_allocates_without_bound() {
    replay("run_reader", run_reader::check);
}
