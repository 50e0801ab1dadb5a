//! The checks behind the fuzz targets in `fuzz_targets/`, one module per target. The stable
//! corpus replays (`packer/tests/fuzz_corpus.rs`, `tests/fuzz_corpus.rs`) include the same
//! files by path, so every CI run checks the same invariants on the corpus without nightly.
//!
//! The Kubefile and Clusterfile modules of the `sealer` library are included here by path:
//! they depend only on serde, serde_yaml, serde_json, sha2 and thiserror, and building the whole
//! library (TLS, SSH, registry client) for every fuzz build would cost minutes.

#[path = "../../src/kubefile/mod.rs"]
#[allow(dead_code, clippy::all)]
pub mod kubefile;

// Small shared modules the Clusterfile model uses (src/lib.rs has them at the crate root too).
#[path = "../../src/address.rs"]
#[allow(dead_code, clippy::all)]
pub mod address;
#[path = "../../src/host_key.rs"]
#[allow(dead_code, clippy::all)]
pub mod host_key;
#[path = "../../src/secret.rs"]
#[allow(dead_code, clippy::all)]
pub mod secret;
#[path = "../../src/shell.rs"]
#[allow(dead_code, clippy::all)]
pub mod shell;

#[path = "../../src/clusterfile/mod.rs"]
#[allow(dead_code, clippy::all)]
pub mod clusterfile;

pub mod checks {
    pub mod alloc_limit;
    pub mod clusterfile;
    pub mod kubefile;
    pub mod run_reader;
    pub mod scratch;
    pub mod unpack_tar;
}
