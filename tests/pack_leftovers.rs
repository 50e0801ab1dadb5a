//! A pack that fails or is interrupted leaves nothing beside its output: no partial volume
//! (`.NAME.partial-PID`), no scratch directory (`.sealer-pack-PID-N`), no output. Through the
//! real `sealer pack`: a full disk (a small tmpfs) and Ctrl-C (SIGINT) in the middle.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::store::{both, Sealer};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A store with `big:1`: a layer of 24 MiB of noise (slow to compress at level 19).
fn big_image() -> Sealer {
    let store = Sealer::new();
    let noise = support::noise::bytes(24 << 20, 7);
    store.build_from(
        "big:1",
        "FROM scratch\nCOPY noise noise\n",
        &[("noise", &noise)],
    );
    store
}

/// A tmpfs of `size` at `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_pack_onto_a_full_disk_fails_and_leaves_nothing_beside_the_output() {
    let store = big_image();
    let dir = store.path("small");
    let Some(_mount) = Tmpfs::mount(&dir, "16m") else {
        return;
    };
    let out = store
        .command()
        .args(["pack", "big:1", "-o"])
        .arg(dir.join("app.run"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(names(&dir), Vec::<String>::new(), "{err}");
}

#[test]
fn an_interrupted_pack_removes_its_partial_files() {
    let store = big_image();
    let dir = store.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = store
        .command()
        .args(["pack", "big:1", "--level", "19", "-o"])
        .arg(dir.join("app.run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the pack has written something beside its output, then Ctrl-C.
    let start = Instant::now();
    while names(&dir).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the pack wrote nothing"
        );
        if child.try_wait().unwrap().is_some() {
            panic!("the pack ended before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = names(&dir);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interrupted: the pack stopped and its partial files beside"),
        "{err}"
    );
    assert_eq!(
        names(&dir),
        Vec::<String>::new(),
        "left after Ctrl-C (during: {during:?})"
    );
}
