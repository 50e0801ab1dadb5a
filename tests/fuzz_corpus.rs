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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

// The checks name the library's modules as `crate::kubefile` and `crate::clusterfile`.
use sealer::{clusterfile, kubefile};

#[global_allocator]
static ALLOC: alloc_limit::Limited = alloc_limit::Limited;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
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
fn kubefile_corpus_parses_and_expands_within_bounds() {
    replay("kubefile", kubefile_check::check);
}

#[test]
fn clusterfile_corpus_loads_without_panic() {
    replay("clusterfile", clusterfile_check::check);
}
