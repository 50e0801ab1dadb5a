//! Where the fuzz checks make their scratch directories: `$SEALER_FUZZ_TMP` (set by
//! scripts/fuzz.sh), else tmpfs when there is one, else the temp dir.

use std::path::{Path, PathBuf};

pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SEALER_FUZZ_TMP") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.join("sealer-fuzz");
    }
    std::env::temp_dir().join("sealer-fuzz")
}
