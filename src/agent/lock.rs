//! The cluster's lock on master0: one installer at a time changes a cluster, whichever machine
//! it runs on. `lock` takes an advisory `flock` on `<dataRoot>/.agent/<cluster>.lock`, writes
//! who holds it there, and keeps it while the installer keeps its stdin open (it sends a byte
//! now and then); when the installer ends, or dies and its SSH session goes, stdin closes, the
//! agent exits and the kernel releases the lock, so a stale lock is never left behind. An
//! installer that ends cleanly sends `r` first and the holder's words are cleared; one that
//! died leaves them, so the next run can name it. A lock that is held is refused at once with
//! [`EXIT_LOCKED`] and the holder on stderr.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use fs2::FileExt;

use super::input::Input;
use super::io_context;
use super::protocol::EXIT_LOCKED;

/// `lock`: takes the lock in `file` for `holder`, prints `locked`, and holds it until stdin
/// closes. Returns the exit status.
pub(super) fn lock(file: &Path, holder: &str) -> Result<i32, String> {
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(io_context(format!("creating {}", dir.display())))?;
    }
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
        .map_err(io_context(format!("opening {}", file.display())))?;
    if lock.try_lock_exclusive().is_err() {
        let mut text = String::new();
        let _ = Read::by_ref(&mut lock).take(4096).read_to_string(&mut text);
        let text = text.trim();
        eprintln!(
            "{}",
            if text.is_empty() {
                "another installer"
            } else {
                text
            }
        );
        return Ok(EXIT_LOCKED);
    }
    lock.set_len(0)
        .and_then(|()| lock.seek(SeekFrom::Start(0)))
        .and_then(|_| lock.write_all(format!("{holder}\n").as_bytes()))
        .map_err(io_context(format!("writing {}", file.display())))?;
    println!("locked");
    let _ = std::io::stdout().flush();
    let mut input = Input::stdin();
    let mut buf = [0u8; 64];
    // Held until the installer closes stdin, goes silent past the stall timeout, or is gone.
    // Only an installer that ends cleanly says so (`r`) first: then the holder is cleared;
    // otherwise its words stay, for the next run to name the change that did not finish.
    let mut released = false;
    while let Ok(n) = input.read(&mut buf) {
        if n == 0 {
            break;
        }
        if buf[..n].contains(&b'r') {
            released = true;
        }
    }
    if released {
        let _ = lock.set_len(0);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_naming_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".agent/c.lock");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let held = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        held.try_lock_exclusive().unwrap();
        fs::write(&path, "`sealer run x:1` (pid 7 on other)\n").unwrap();
        assert_eq!(lock(&path, "me").unwrap(), EXIT_LOCKED);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "`sealer run x:1` (pid 7 on other)\n"
        );
    }
}
