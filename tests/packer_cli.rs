//! End to end with the real `sealer-stub` binary at the head of a `.run` file: summary,
//! inspect, verify, extract; damaged, truncated, stripped and split files; static linking; and
//! a run inside a chroot that holds nothing but the `.run` file.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use packer::frames::FramedWriter;
use packer::{write, Compression, LayerBlob, PackSpec, RunFile};
use support::noise;
use support::store::STUB;
use support::tar::tar_of;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Two framed zstd layers as the store keeps them.
fn example_blobs(dir: &Path) -> Vec<LayerBlob> {
    let big = noise::partly_compressible(18 << 20, 1);
    let script = b"#!/bin/sh\necho installing\n".to_vec();
    let base = tar_of(
        &[
            ("etc/app/config.yaml", b"replicas: 3\n", 0o644),
            ("bin/install.sh", &script, 0o755),
            ("images/etcd.tar", &big, 0o644),
        ],
        &[("bin/run", "install.sh")],
    );
    let upper = tar_of(&[("etc/app/config.yaml", b"replicas: 5\n", 0o600)], &[]);
    [base, upper]
        .iter()
        .enumerate()
        .map(|(i, tar)| {
            let mut w = FramedWriter::with_threads(Vec::new(), 3, 2);
            w.write_all(tar).unwrap();
            let (bytes, layer) = w.finish().unwrap();
            let path = dir.join(format!("layer{i}.tar.zst"));
            fs::write(&path, bytes).unwrap();
            LayerBlob {
                path,
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
                digest: format!("sha256:{}", layer.digest),
                diff_id: format!("sha256:{}", layer.diff_id),
                frames: Some(layer.frames),
                keep_frames: false,
            }
        })
        .collect()
}

fn pack_example(dir: &Path, split: Option<u64>) -> (Vec<PathBuf>, Vec<LayerBlob>) {
    let blobs = example_blobs(dir);
    let spec = PackSpec {
        stub: PathBuf::from(STUB),
        image_name: "example/etcd:3.5".into(),
        manifest_digest: "sha256:abc".into(),
        manifest_json: "{}".into(),
        config_digest: "sha256:def".into(),
        config_json: r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Env":["ETCD_VERSION=3.5"],"Cmd":["bin/install.sh"],"Labels":{"vendor":"example"}}}"#.into(),
        layers: blobs.clone(),
        compression: Compression::Zstd,
        level: None,
        split_size: split,
        output: dir.join("app.run"),
    };
    (write(&spec, None).unwrap().files, blobs)
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("SEALER_RUN_FILE")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Everything about a tree extraction must preserve (directory times aside).
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    fs::read_link(&path).unwrap().display()
                ));
            } else if meta.is_dir() {
                out.push(format!("{rel}/ {:o}", meta.mode() & 0o7777));
                stack.push(path);
            } else {
                let digest = <sha2::Sha256 as sha2::Digest>::digest(fs::read(&path).unwrap());
                out.push(format!(
                    "{rel} {:o} {} {}",
                    meta.mode() & 0o7777,
                    meta.mtime(),
                    hex::encode(&digest[..8])
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn summary_inspect_verify_and_extract_work_and_match_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let (files, blobs) = pack_example(work.path(), None);
    let app = &files[0];

    let before: Vec<_> = fs::read_dir(work.path()).unwrap().collect();
    let o = run(app, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("example/etcd:3.5"), "{}", stdout(&o));
    assert!(stdout(&o).contains("usage:"));
    assert_eq!(
        fs::read_dir(work.path()).unwrap().count(),
        before.len(),
        "changes nothing"
    );

    let o = run(app, &["inspect", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["manifest"]["image"]["name"], "example/etcd:3.5");
    assert_eq!(doc["config"]["config"]["Cmd"][0], "bin/install.sh");
    assert_eq!(doc["manifest"]["layers"].as_array().unwrap().len(), 2);

    let o = run(app, &["inspect"]);
    assert!(stdout(&o).contains("vendor=example"), "{}", stdout(&o));

    let o = run(app, &["verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("intact"));

    let ours = work.path().join("rootfs");
    let o = run(app, &["extract", ours.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let judge = work.path().join("judge");
    fs::create_dir(&judge).unwrap();
    for blob in &blobs {
        let status = Command::new("sh")
            .arg("-c")
            .arg("zstd -dc \"$1\" | tar -xpf - -C \"$2\"")
            .arg("sh")
            .arg(&blob.path)
            .arg(&judge)
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert_eq!(tree(&ours), tree(&judge));
}

#[test]
fn a_flipped_byte_fails_verify_and_extract_with_the_exact_region() {
    let work = tempfile::tempdir().unwrap();
    let (files, _) = pack_example(work.path(), None);
    let app = &files[0];
    let info = RunFile::open(app).unwrap();
    let frame = info.manifest().layers[0].frames[0].clone();
    let start = info.header_offset() + frame.offset;
    let mut bytes = fs::read(app).unwrap();
    bytes[(start + 7) as usize] ^= 1;
    support::write_program(app, &bytes);

    let o = run(app, &["verify"]);
    assert!(!o.status.success());
    let want = format!(
        "frame 1 of layer 1 is corrupt (bytes {start}–{}",
        start + frame.compressed_len
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert_eq!(
        stderr(&o)
            .trim()
            .lines()
            .last()
            .map(|l| l.starts_with("error: ")),
        Some(true)
    );

    let dest = work.path().join("out");
    let o = run(app, &["extract", dest.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("frame 1 of layer 1 is corrupt"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    assert!(!dest.exists());
}

#[test]
fn truncated_and_stripped_files_say_so() {
    let work = tempfile::tempdir().unwrap();
    let (files, _) = pack_example(work.path(), None);
    let full = fs::read(&files[0]).unwrap();

    let cut = work.path().join("cut.run");
    fs::write(&cut, &full[..full.len() - 5_000_000]).unwrap();
    fs::set_permissions(&cut, fs::metadata(&files[0]).unwrap().permissions()).unwrap();
    let o = run(&cut, &["verify"]);
    assert!(!o.status.success());
    let want = format!(
        "incomplete copy: have {} of {} bytes",
        full.len() - 5_000_000,
        full.len()
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));

    let stripped = work.path().join("stripped.run");
    fs::copy(&files[0], &stripped).unwrap();
    assert!(Command::new("strip")
        .arg(&stripped)
        .status()
        .unwrap()
        .success());
    let o = run(&stripped, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("stripped"), "{}", stderr(&o));
}

#[test]
fn split_volumes_renamed_still_verify_and_a_missing_one_is_named() {
    let work = tempfile::tempdir().unwrap();
    // Volume 0 holds the stub and a frame or so; the rest go to volumes.
    let stub_len = fs::metadata(STUB).unwrap().len();
    let (files, _) = pack_example(work.path(), Some(stub_len + (4 << 20)));
    assert!(files.len() >= 2, "the example is split");
    fs::rename(&files[1], work.path().join("renamed-part")).unwrap();
    let o = run(&files[0], &["verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    fs::remove_file(work.path().join("renamed-part")).unwrap();
    let o = run(&files[0], &["verify"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("volume 1 of"), "{}", stderr(&o));
    assert!(stderr(&o).contains("app.run.v001"), "{}", stderr(&o));
}

#[test]
fn the_stub_is_a_static_executable() {
    let o = Command::new("file").arg(STUB).output().unwrap();
    let text = stdout(&o);
    assert!(
        text.contains("statically linked") || text.contains("static-pie linked"),
        "{text}"
    );
    let o = Command::new("ldd").arg(STUB).output().unwrap();
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "{text}"
    );
}

#[test]
fn the_run_file_works_in_a_chroot_holding_nothing_else() {
    if !is_root() {
        eprintln!("skipped: chroot needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (files, _) = pack_example(work.path(), None);
    let jail = work.path().join("jail");
    fs::create_dir(&jail).unwrap();
    support::copy_program(&files[0], &jail.join("app.run"));
    let o = Command::new("chroot")
        .arg(&jail)
        .args(["/app.run", "verify"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new("chroot")
        .arg(&jail)
        .args(["/app.run", "extract", "/rootfs"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(jail.join("rootfs/etc/app/config.yaml")).unwrap(),
        b"replicas: 5\n"
    );
}
