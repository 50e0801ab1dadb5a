//! What the integration tests share, as `mod support;` in each test file: the store and CLI
//! harness ([`store`]), real SSH hosts ([`testbed`]) and Clusterfile documents for them
//! ([`clusterfile`]), registry servers ([`registry`]), test data ([`noise`]) and tar archives
//! ([`tar`]). Each test binary compiles all of it and uses a part.
#![allow(dead_code)]

pub mod clusterfile;
pub mod containerd;
pub mod noise;
pub mod oci;
pub mod registry;
pub mod store;
pub mod tar;
pub mod testbed;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Copies the program `from` to `to`, mode included, by `cp` in a process of its own, so that
/// `to` can be run at once. A file this test binary writes itself can be refused for a moment
/// with "Text file busy" (ETXTBSY): a child that another test thread forks while the file is
/// open for writing inherits the descriptor and holds it until that child execs.
pub fn copy_program(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--preserve=mode")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

/// Writes `bytes` as the program `path` (keeping its mode, 0755 when new) so that it can be run
/// at once; see [`copy_program`].
pub fn write_program(path: &Path, bytes: &[u8]) {
    let name = path.file_name().unwrap().to_string_lossy();
    let staged = path.with_file_name(format!(".{name}.staged"));
    fs::write(&staged, bytes).unwrap();
    let mode = fs::metadata(path).map_or(0o755, |m| m.permissions().mode());
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode)).unwrap();
    copy_program(&staged, path);
    fs::remove_file(&staged).unwrap();
}
