//! Replays the fuzz corpora of the packer targets (`fuzz/corpus/unpack_tar/`,
//! `fuzz/corpus/run_reader/`: seeds and every reproducer found) through the very checks the
//! fuzz targets run, on the stable toolchain, so their invariants hold in every test run:
//! extraction changes nothing outside its destination and leaves no escaping symlink, the
//! `.run` reader never panics, aborts or allocates without bound. See docs/testing.md.

#[path = "../../fuzz/src/checks/alloc_limit.rs"]
mod alloc_limit;
#[path = "../../fuzz/src/checks/run_reader.rs"]
mod run_reader;
#[allow(dead_code)]
#[path = "../../fuzz/src/checks/unpack_tar.rs"]
mod unpack_tar;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
}

/// Run every corpus file of `target`; fail naming each file whose check panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let files = corpus(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).expect("reading a corpus file");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus files break an invariant (messages above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn unpack_tar_corpus_changes_nothing_outside_the_destination() {
    replay("unpack_tar", unpack_tar::check);
}

#[test]
fn run_reader_corpus_never_panics_or_allocates_without_bound() {
    replay("run_reader", run_reader::check);
}
