//! Replays a fuzz target's corpus (`fuzz/corpus/<target>/`: seeds and every reproducer found)
//! through its check on the stable toolchain; included by path by the replay tests of the
//! workspace (`tests/fuzz_corpus.rs`, `packer/tests/fuzz_corpus.rs`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus(fuzz_dir: &Path, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir.join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
}

/// Run every corpus file of `target` under `fuzz_dir`; fail naming each file whose check
/// panicked.
pub fn replay(fuzz_dir: &Path, target: &str, check: fn(&[u8])) {
    let files = corpus(fuzz_dir, target);
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
