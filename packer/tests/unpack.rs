//! The extraction engine against GNU tar as the judge, and against crafted malicious layers.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{fingerprint, framed, gnu_tar_extract, pseudo_random, LayerTar};
use packer::frames::Frame;
use packer::{
    unpack, unpack_blob_files, ByteSource, Compression, EntryProblem, FrameProblem, LayerInput,
    UnpackError, UnpackOptions,
};

struct Blob {
    bytes: Vec<u8>,
    frames: Vec<Frame>,
}

fn blob(tar: &[u8]) -> Blob {
    let (bytes, layer) = framed(tar);
    Blob {
        bytes,
        frames: layer.frames,
    }
}

fn inputs(blobs: &[Blob]) -> Vec<LayerInput<'_>> {
    blobs
        .iter()
        .enumerate()
        .map(|(i, b)| LayerInput {
            label: format!("layer {}", i + 1),
            compression: Compression::Zstd,
            base: 0,
            frames: &b.frames,
            source: &b.bytes as &dyn ByteSource,
        })
        .collect()
}

fn extract(blobs: &[Blob], dest: &Path) -> Result<packer::UnpackReport, UnpackError> {
    unpack(&inputs(blobs), dest, &UnpackOptions::default())
}

fn save(dir: &Path, name: &str, blob: &Blob) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, &blob.bytes).unwrap();
    path
}

/// A layer with a bit of everything: nested dirs, modes, small/large/multi-frame files, links.
fn rich_layer() -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir("etc/", 0o755)
        .dir("etc/app/", 0o750)
        .file("etc/app/config.yaml", 0o640, b"key: value\n")
        .file("etc/app/empty", 0o600, b"")
        .dir("usr/", 0o755)
        .dir("usr/bin/", 0o755)
        .file("usr/bin/tool", 0o755, &pseudo_random(5 << 20, 1))
        .file("usr/bin/setuid-tool", 0o4755, b"#!/bin/sh\n")
        .hard_link("usr/bin/tool-alias", "usr/bin/tool")
        .symlink("usr/bin/t", "tool")
        .symlink("etc/app/up", "../../usr/bin")
        .file(
            "implicit/parent/dirs/file.txt",
            0o644,
            b"parents made on the fly",
        )
        .file("data/huge.bin", 0o644, &pseudo_random(40 << 20, 2));
    for i in 0..300 {
        t.file(
            &format!("many/f{i:04}"),
            0o644,
            &pseudo_random(100 + i * 37, i as u64),
        );
    }
    t.long_file(
        &format!("deep/{}/long-name-file", "x".repeat(150)),
        b"long names survive",
    );
    t.finish()
}

#[test]
fn extraction_matches_gnu_tar_of_the_same_layers() {
    let work = tempfile::tempdir().unwrap();
    let mut second = LayerTar::new();
    second
        .file("etc/app/config.yaml", 0o644, b"key: overridden\n")
        .file("many/f0001", 0o600, b"replaced by layer 2")
        .file("added/in/layer2", 0o644, b"new");
    let blobs = vec![blob(&rich_layer()), blob(&second.finish())];
    assert!(
        blobs[0].frames.len() > 2,
        "the big layer spans several frames"
    );

    let ours = work.path().join("ours");
    let report = extract(&blobs, &ours).unwrap();
    assert!(report.files > 300);
    assert_eq!(report.hard_links, 1);

    let paths: Vec<PathBuf> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| save(work.path(), &format!("layer{i}.tar.zst"), b))
        .collect();
    let theirs = work.path().join("theirs");
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    gnu_tar_extract(&refs, &theirs);

    assert_same_tree(&ours, &theirs);
}

/// A blob of one zstd frame per `size` bytes of tar, cut wherever that falls: inside headers,
/// inside file content, and (for sizes that are multiples of 512) exactly where content starts.
fn blob_cut_every(tar: &[u8], size: usize) -> Blob {
    let mut bytes = Vec::new();
    for piece in tar.chunks(size) {
        bytes.extend(zstd::encode_all(piece, 1).unwrap());
    }
    let frames = packer::frames::scan_frames(&bytes).unwrap();
    assert_eq!(frames.len(), tar.len().div_ceil(size));
    Blob { bytes, frames }
}

#[test]
fn file_content_across_frame_boundaries_extracts_like_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let mut layer = LayerTar::new();
    layer
        .dir("etc/", 0o755)
        .file("etc/empty", 0o600, b"")
        .file("bin/tool", 0o755, &pseudo_random(5 << 20, 7))
        .hard_link("bin/alias", "bin/tool")
        .long_file(&format!("deep/{}/name", "x".repeat(150)), b"long name")
        .symlink("bin/t", "tool");
    for i in 0..200 {
        layer.file(
            &format!("many/f{i:03}"),
            0o644,
            &pseudo_random(100 + i * 211, i as u64),
        );
    }
    let tar = layer.finish();
    let plain = blob(&tar);
    let theirs = work.path().join("theirs");
    gnu_tar_extract(&[&save(work.path(), "layer.tar.zst", &plain)], &theirs);
    // 8 KiB: many files start exactly at a frame; 3001 bytes: headers and content split
    // anywhere.
    for size in [8192, 3001] {
        let ours = work.path().join(format!("ours-{size}"));
        let report = extract(&[blob_cut_every(&tar, size)], &ours).unwrap();
        assert_eq!(report.files, 203, "cut every {size} bytes");
        assert_same_tree(&ours, &theirs);
    }
}

/// 3,000 files in one directory (`man/man1`) among six directories of 40: many batches of one
/// directory, with its own content, mode and time for every file.
fn big_directory_layer() -> Vec<u8> {
    let mut layer = LayerTar::new();
    layer.dir("man/", 0o755).dir("man/man1/", 0o755);
    for i in 0..3000u64 {
        let body = format!("page {i}\n").repeat(1 + (i % 7) as usize);
        let mode = [0o644, 0o600, 0o755, 0o640][(i % 4) as usize];
        layer.file_with_mtime(
            &format!("man/man1/p{i:05}.1"),
            mode,
            1_600_000_000 + i,
            body.as_bytes(),
        );
        if i % 500 == 0 {
            let other = format!("other{}/", i / 500);
            layer.dir(&other, 0o750);
            for j in 0..40u64 {
                layer.file_with_mtime(
                    &format!("{other}f{j}"),
                    0o600,
                    1_500_000_000 + j,
                    &pseudo_random(3000, i + j),
                );
            }
        }
    }
    layer.finish()
}

/// One directory of thousands of files among small ones: its names are created by one worker,
/// which runs ahead of the others writing and timing the files it opened, and stops to write
/// when too many are open. Every file must still end with its own content, mode and time.
#[test]
fn a_directory_of_thousands_of_files_is_written_whole_like_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let blobs = vec![blob(&big_directory_layer())];

    let ours = work.path().join("ours");
    let report = extract(&blobs, &ours).unwrap();
    assert_eq!(report.files, 3000 + 6 * 40);

    let path = save(work.path(), "layer.tar.zst", &blobs[0]);
    let theirs = work.path().join("theirs");
    gnu_tar_extract(&[path.as_path()], &theirs);
    assert_same_tree(&ours, &theirs);
}

/// The directories the writers are done with get their times and modes while the others are
/// still being filled; those (a `man1` of thousands) get theirs after the last file.
#[test]
fn every_directory_gets_its_header_time_also_the_one_still_being_filled() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("ours");
    extract(&[blob(&big_directory_layer())], &dest).unwrap();
    let mut dirs = vec![("man".to_string(), 0o755), ("man/man1".to_string(), 0o755)];
    dirs.extend((0..6).map(|i| (format!("other{i}"), 0o750)));
    for (dir, mode) in dirs {
        let meta = fs::metadata(dest.join(&dir)).unwrap();
        assert_eq!(meta.mtime(), 1_600_000_000, "{dir}");
        assert_eq!(meta.mode() & 0o7777, mode, "{dir}");
    }
}

/// Where the process may open few files (`ulimit -n 128`), the writers create, write and close
/// one file at a time instead of keeping batches open, and the extraction still succeeds. Runs
/// itself in a child process with that limit, so the other tests keep theirs.
#[test]
fn a_low_limit_on_open_files_still_extracts_a_directory_of_thousands() {
    const NAME: &str = "a_low_limit_on_open_files_still_extracts_a_directory_of_thousands";
    if std::env::var_os("UNPACK_TEST_LOW_NOFILE").is_some() {
        let work = tempfile::tempdir().unwrap();
        let blobs = vec![blob(&big_directory_layer())];
        let report = extract(&blobs, &work.path().join("ours")).unwrap();
        assert_eq!(report.files, 3000 + 6 * 40);
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
        .env("UNPACK_TEST_LOW_NOFILE", "1");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        child.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = child.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the extraction under ulimit -n 128 failed:\n{text}"
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

fn assert_same_tree(ours: &Path, judge: &Path) {
    let (a, b) = (fingerprint(ours), fingerprint(judge));
    for (path, desc) in &b {
        assert_eq!(
            a.get(path),
            Some(desc),
            "entry {path} differs from the judge"
        );
    }
    for path in a.keys() {
        assert!(
            b.contains_key(path),
            "entry {path} is not in the judge's tree"
        );
    }
}

#[test]
fn blob_files_from_the_store_materialise_like_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let layer = blob(&rich_layer());
    let path = save(work.path(), "blob", &layer);
    let ours = work.path().join("rootfs");
    unpack_blob_files(
        std::slice::from_ref(&path),
        &ours,
        &UnpackOptions::default(),
    )
    .unwrap();
    let theirs = work.path().join("judge");
    gnu_tar_extract(&[&path], &theirs);
    assert_same_tree(&ours, &theirs);
}

#[test]
fn xz_frames_extract_like_zstd_frames() {
    let work = tempfile::tempdir().unwrap();
    let zstd_blob = blob(&rich_layer());
    // Re-encode every frame as an independent xz stream.
    let mut xz_bytes = Vec::new();
    let mut xz_frames = Vec::new();
    for frame in &zstd_blob.frames {
        let start = frame.offset as usize;
        let plain =
            zstd::decode_all(&zstd_blob.bytes[start..start + frame.compressed_len as usize])
                .unwrap();
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(&plain).unwrap();
        let packed = enc.finish().unwrap();
        xz_frames.push(Frame {
            offset: xz_bytes.len() as u64,
            compressed_len: packed.len() as u64,
            uncompressed_len: plain.len() as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&packed)),
            blake3: None,
        });
        xz_bytes.extend_from_slice(&packed);
    }
    let layer = LayerInput {
        label: "layer 1".into(),
        compression: Compression::Xz,
        base: 0,
        frames: &xz_frames,
        source: &xz_bytes as &dyn ByteSource,
    };
    let from_xz = work.path().join("xz");
    unpack(&[layer], &from_xz, &UnpackOptions::default()).unwrap();
    let from_zstd = work.path().join("zstd");
    extract(&[zstd_blob], &from_zstd).unwrap();
    assert_same_tree(&from_xz, &from_zstd);
}

#[test]
fn whiteouts_remove_lower_entries_and_opaque_dirs_hide_them() {
    let work = tempfile::tempdir().unwrap();
    let mut lower = LayerTar::new();
    lower
        .file("keep/a", 0o644, b"a")
        .file("keep/gone", 0o644, b"deleted by layer 2")
        .file("dirgone/inner/x", 0o644, b"x")
        .file("opaque/old1", 0o644, b"old")
        .file("opaque/sub/old2", 0o644, b"old");
    let mut upper = LayerTar::new();
    upper
        .file("keep/.wh.gone", 0o644, b"")
        .file(".wh.dirgone", 0o644, b"")
        .dir("opaque/", 0o755)
        .file("opaque/.wh..wh..opq", 0o644, b"")
        .file("opaque/new", 0o644, b"new")
        .file("nowhere/.wh.nothing", 0o644, b"");
    let dest = work.path().join("out");
    let report = extract(&[blob(&lower.finish()), blob(&upper.finish())], &dest).unwrap();
    assert_eq!(report.whiteouts, 4);
    let tree = fingerprint(&dest);
    let names: Vec<&str> = tree.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        vec!["keep", "keep/a", "opaque", "opaque/new"],
        "whiteout markers themselves never appear"
    );
}

#[test]
fn directory_modes_and_times_come_from_the_headers_after_all_writes() {
    let work = tempfile::tempdir().unwrap();
    let mut t = LayerTar::new();
    t.dir("locked/", 0o555)
        .file(
            "locked/inside",
            0o644,
            b"written before the mode is applied",
        )
        .symlink("locked/link", "inside");
    let mut upper = LayerTar::new();
    upper.file("locked/added-later", 0o644, b"layer 2");
    let dest = work.path().join("out");
    extract(&[blob(&t.finish()), blob(&upper.finish())], &dest).unwrap();
    let meta = fs::metadata(dest.join("locked")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o555);
    assert_eq!(meta.mtime(), 1_600_000_000);
    assert!(dest.join("locked/added-later").exists());
}

#[test]
fn directory_modes_are_exact_also_under_a_set_group_id_parent() {
    // Directories whose header asks for the mode they were made with need no chmod, except
    // where the destination's parent hands them its set-group-ID bit.
    let mut t = LayerTar::new();
    t.dir("plain/", 0o755)
        .dir("private/", 0o700)
        .dir("shared/", 0o1777)
        .dir("grouped/", 0o2755)
        .file("plain/file", 0o644, b"x");
    let layer = blob(&t.finish());
    let work = tempfile::tempdir().unwrap();
    let setgid = work.path().join("setgid");
    fs::create_dir(&setgid).unwrap();
    fs::set_permissions(&setgid, fs::Permissions::from_mode(0o2775)).unwrap();
    assert_eq!(fs::metadata(&setgid).unwrap().mode() & 0o7777, 0o2775);
    for parent in [work.path(), setgid.as_path()] {
        let dest = parent.join("out");
        extract(std::slice::from_ref(&layer), &dest).unwrap();
        for (name, mode) in [
            ("plain", 0o755),
            ("private", 0o700),
            ("shared", 0o1777),
            ("grouped", 0o2755),
        ] {
            let found = fs::metadata(dest.join(name)).unwrap().mode() & 0o7777;
            assert_eq!(found, mode, "{name} under {}", parent.display());
        }
    }
}

#[test]
fn hard_links_share_one_inode() {
    let work = tempfile::tempdir().unwrap();
    let mut t = LayerTar::new();
    t.file("bin/busybox", 0o755, b"one binary")
        .hard_link("bin/sh", "bin/busybox")
        .hard_link("./bin/ls", "./bin/busybox");
    let dest = work.path().join("out");
    extract(&[blob(&t.finish())], &dest).unwrap();
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("bin/busybox"), ino("bin/sh"));
    assert_eq!(ino("bin/busybox"), ino("bin/ls"));
    assert_eq!(fs::metadata(dest.join("bin/sh")).unwrap().nlink(), 3);
}

#[test]
fn hard_links_to_files_of_a_lower_layer_or_streamed_or_still_queued_share_one_inode() {
    // Only a link whose target may still wait in the writer queue waits for it; the others
    // (a lower layer's file, a large file written as it streams) are linked at once.
    let work = tempfile::tempdir().unwrap();
    let mut lower = LayerTar::new();
    lower.file("usr/lib/base.so", 0o644, b"lower layer");
    let mut upper = LayerTar::new();
    upper
        .file("usr/lib/big.so", 0o644, &pseudo_random(5 << 20, 9))
        .file("usr/lib/small.so", 0o644, b"small")
        .hard_link("usr/lib/base-link.so", "usr/lib/base.so")
        .hard_link("usr/lib/big-link.so", "usr/lib/big.so")
        .hard_link("usr/bin/small-link", "usr/lib/small.so")
        .file("usr/lib/after", 0o644, b"after the links");
    let dest = work.path().join("out");
    extract(&[blob(&lower.finish()), blob(&upper.finish())], &dest).unwrap();
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("usr/lib/base.so"), ino("usr/lib/base-link.so"));
    assert_eq!(ino("usr/lib/big.so"), ino("usr/lib/big-link.so"));
    assert_eq!(ino("usr/lib/small.so"), ino("usr/bin/small-link"));
    assert_eq!(fs::read(dest.join("usr/bin/small-link")).unwrap(), b"small");
    assert_eq!(
        fs::read(dest.join("usr/lib/base-link.so")).unwrap(),
        b"lower layer"
    );
    assert_eq!(
        fs::read(dest.join("usr/lib/after")).unwrap(),
        b"after the links"
    );
}

/// Extract one crafted layer and return the refusal; checks nothing was left behind.
fn refused(tar: Vec<u8>, options: &UnpackOptions<'_>) -> UnpackError {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("out");
    let blobs = [
        blob(&LayerTar::new().file("ok", 0o644, b"fine").finish()),
        blob(&tar),
    ];
    let err = unpack(&inputs(&blobs), &dest, options).expect_err("the layer must be refused");
    assert!(!dest.exists(), "nothing may appear at the destination");
    let leftovers: Vec<_> = fs::read_dir(work.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "the staging directory is removed");
    err
}

fn assert_entry_refused(err: UnpackError, want_path: &str, check: impl Fn(&EntryProblem) -> bool) {
    match &err {
        UnpackError::Entry {
            layer,
            path,
            problem,
        } => {
            assert_eq!(layer, "layer 2", "{err}");
            assert_eq!(path, want_path, "{err}");
            assert!(check(problem), "unexpected problem: {err}");
        }
        other => panic!("expected an entry refusal, got: {other}"),
    }
}

#[test]
fn absolute_entry_path_is_refused() {
    let mut t = LayerTar::new();
    t.file("/etc/evil", 0o644, b"x");
    let err = refused(t.finish(), &UnpackOptions::default());
    assert_entry_refused(err, "/etc/evil", |p| {
        matches!(p, EntryProblem::AbsolutePath)
    });
}

#[test]
fn parent_dir_entry_path_is_refused() {
    let mut t = LayerTar::new();
    t.file("a/../../escape", 0o644, b"x");
    let err = refused(t.finish(), &UnpackOptions::default());
    assert_entry_refused(err, "a/../../escape", |p| {
        matches!(p, EntryProblem::ParentDir)
    });
}

#[test]
fn symlink_climbing_out_is_refused() {
    let mut t = LayerTar::new();
    t.symlink("sub/evil", "../../etc");
    let err = refused(t.finish(), &UnpackOptions::default());
    assert_entry_refused(
        err,
        "sub/evil",
        |p| matches!(p, EntryProblem::SymlinkEscapes { target } if target == "../../etc"),
    );
}

#[test]
fn absolute_symlink_is_kept_as_rooted_at_the_destination_by_default() {
    let work = tempfile::tempdir().unwrap();
    let mut t = LayerTar::new();
    t.dir("etc/", 0o755)
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC");
    let dest = work.path().join("out");
    extract(&[blob(&t.finish())], &dest).unwrap();
    assert_eq!(
        fs::read_link(dest.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
}

#[test]
fn absolute_symlink_is_refused_when_the_caller_forbids_them() {
    let mut t = LayerTar::new();
    t.symlink("etc-link", "/etc");
    let options = UnpackOptions {
        absolute_symlinks: false,
        ..UnpackOptions::default()
    };
    let err = refused(t.finish(), &options);
    assert_entry_refused(err, "etc-link", |p| {
        matches!(p, EntryProblem::SymlinkEscapes { .. })
    });
}

#[test]
fn symlink_escaping_through_another_symlink_is_refused() {
    // `l -> .` is harmless and `q -> l/..` looks harmless lexically, but resolves to DEST/..
    let mut t = LayerTar::new();
    t.symlink("q", "l/..").symlink("l", ".");
    let err = refused(t.finish(), &UnpackOptions::default());
    match err {
        UnpackError::Entry { path, problem, .. } => {
            assert_eq!(path, "q");
            assert!(matches!(problem, EntryProblem::SymlinkEscapes { .. }));
        }
        other => panic!("expected a symlink refusal, got {other}"),
    }
}

#[test]
fn hard_link_outside_is_refused() {
    let mut t = LayerTar::new();
    t.hard_link("passwd", "../../../etc/passwd");
    let err = refused(t.finish(), &UnpackOptions::default());
    assert_entry_refused(err, "passwd", |p| {
        matches!(p, EntryProblem::HardLinkOutside { .. })
    });
}

#[test]
fn hard_link_through_symlink_is_refused() {
    let mut t = LayerTar::new();
    t.symlink("sys", "ok-dir")
        .dir("ok-dir/", 0o755)
        .file("ok-dir/f", 0o644, b"f")
        .hard_link("h", "sys/f");
    let err = refused(t.finish(), &UnpackOptions::default());
    assert_entry_refused(err, "h", |p| {
        matches!(p, EntryProblem::HardLinkOutside { .. })
    });
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let mut t = LayerTar::new();
    t.dir("real/", 0o755)
        .symlink("alias", "real")
        .file("alias/file", 0o644, b"through the link");
    let err = refused(t.finish(), &UnpackOptions::default());
    assert_entry_refused(
        err,
        "alias/file",
        |p| matches!(p, EntryProblem::ThroughSymlink { link } if link == "alias"),
    );
}

#[test]
fn device_files_are_refused_unless_allowed() {
    let mut t = LayerTar::new();
    t.char_device("dev/null", 1, 3);
    let options = UnpackOptions {
        devices: false,
        ..UnpackOptions::default()
    };
    let err = refused(t.finish(), &options);
    assert_entry_refused(err, "dev/null", |p| matches!(p, EntryProblem::Device));
}

#[test]
fn corrupt_frame_is_named_with_its_bytes_and_nothing_is_written() {
    let work = tempfile::tempdir().unwrap();
    let mut layer = blob(&rich_layer());
    let victim = layer.frames[1].clone();
    layer.bytes[(victim.offset + victim.compressed_len / 2) as usize] ^= 0x40;
    let dest = work.path().join("out");
    let blobs = [
        blob(&LayerTar::new().file("a", 0o644, b"a").finish()),
        layer,
    ];
    let err = extract(&blobs, &dest).unwrap_err();
    match &err {
        UnpackError::Frame {
            layer,
            frame,
            start,
            end,
            problem,
        } => {
            assert_eq!(layer, "layer 2");
            assert_eq!(*frame, 2);
            assert_eq!(
                (*start, *end),
                (victim.offset, victim.offset + victim.compressed_len)
            );
            assert!(matches!(problem, FrameProblem::Checksum { .. }));
        }
        other => panic!("expected a frame error, got {other}"),
    }
    let text = err.to_string();
    assert!(text.starts_with("frame 2 of layer 2 is corrupt"), "{text}");
    assert!(!dest.exists());
    assert_eq!(fs::read_dir(work.path()).unwrap().count(), 0);
}

#[test]
fn truncated_tar_stream_is_a_tar_error_naming_the_layer() {
    let work = tempfile::tempdir().unwrap();
    let mut tar = LayerTar::new();
    tar.file("big", 0o644, &pseudo_random(100_000, 3));
    let mut bytes = tar.finish();
    bytes.truncate(50_000);
    let dest = work.path().join("out");
    let err = extract(&[blob(&bytes)], &dest).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Tar { layer, .. } | UnpackError::Entry { layer, .. } if layer == "layer 1"),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn non_empty_destination_is_left_alone() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("out");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("precious"), b"keep me").unwrap();
    let err = extract(
        &[blob(&LayerTar::new().file("a", 0o644, b"a").finish())],
        &dest,
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::DestinationExists { .. }),
        "{err}"
    );
    assert_eq!(fs::read(dest.join("precious")).unwrap(), b"keep me");
}

#[test]
fn empty_destination_directory_is_filled() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("out");
    fs::create_dir(&dest).unwrap();
    extract(
        &[blob(&LayerTar::new().file("a", 0o644, b"a").finish())],
        &dest,
    )
    .unwrap();
    assert_eq!(fs::read(dest.join("a")).unwrap(), b"a");
}

#[test]
fn ownership_is_restored_when_root() {
    if !common::is_root() {
        eprintln!("skipped: restoring owners needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("out");
    extract(
        &[blob(&LayerTar::new().file("owned", 0o644, b"a").finish())],
        &dest,
    )
    .unwrap();
    let meta = fs::metadata(dest.join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}

/// Every name under `root` (recursively, links not followed).
fn names_under(root: &Path) -> Vec<String> {
    fingerprint(root).into_keys().collect()
}

#[test]
fn file_queued_under_a_directory_later_replaced_by_a_symlink_stays_inside() {
    // `d/evil` goes to the writer pool; `d` then becomes a symlink to a directory outside.
    // The queued write must not follow the link.
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let mut t = LayerTar::new();
    t.file("d/evil", 0o644, b"* * * * * root id > /tmp/owned\n")
        .symlink("d", outside.to_str().unwrap());
    let dest = work.path().join("out");
    let result = extract(&[blob(&t.finish())], &dest);
    assert_eq!(
        names_under(&outside),
        Vec::<String>::new(),
        "nothing may be written outside the destination (result: {result:?})"
    );
    // The later entry wins, as in Docker: `d` is the link, rooted at the destination.
    result.unwrap();
    let link = fs::symlink_metadata(dest.join("d")).unwrap();
    assert!(link.file_type().is_symlink());
}

#[test]
fn many_queued_files_under_a_directory_replaced_by_a_symlink_stay_inside() {
    // Enough files that some batches are already with the writers when the link arrives.
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let mut t = LayerTar::new();
    for i in 0..200 {
        t.file(&format!("d/f{i:03}"), 0o644, &pseudo_random(3000, i));
    }
    t.symlink("d", outside.to_str().unwrap());
    let dest = work.path().join("out");
    let result = extract(&[blob(&t.finish())], &dest);
    assert_eq!(names_under(&outside), Vec::<String>::new(), "{result:?}");
}

#[test]
fn whiteouts_naming_the_directory_or_its_parent_are_refused_and_remove_nothing() {
    for marker in [
        ".wh...",
        ".wh..",
        ".wh.",
        "sub/.wh...",
        "sub/.wh..",
        "sub/.wh.",
    ] {
        let work = tempfile::tempdir().unwrap();
        let sentinel = work.path().join("sentinel");
        fs::write(&sentinel, b"must survive").unwrap();
        let mut lower = LayerTar::new();
        lower.file("sub/keep", 0o644, b"keep");
        let mut upper = LayerTar::new();
        upper.file(marker, 0o644, b"");
        let dest = work.path().join("out");
        let err = extract(&[blob(&lower.finish()), blob(&upper.finish())], &dest).unwrap_err();
        assert_entry_refused(err, marker, |p| matches!(p, EntryProblem::BadWhiteout));
        assert_eq!(fs::read(&sentinel).unwrap(), b"must survive", "{marker}");
        assert!(
            !dest.exists(),
            "{marker}: a failed extraction leaves no destination"
        );
        let left: Vec<_> = fs::read_dir(work.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{marker}: only the sentinel is left");
    }
}

/// A file entry with its own owner.
fn owned_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, uid: u64, gid: u64, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(data.len() as u64);
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

#[test]
fn owners_from_the_headers_hold_also_under_a_set_group_id_directory() {
    if !common::is_root() {
        eprintln!("skipped: restoring owners needs root");
        return;
    }
    // Files owned by root need no chown when root extracts, except where a set-group-ID
    // directory would give them its group: there they are chowned back to the header's.
    let mut tar = tar::Builder::new(Vec::new());
    owned_file(&mut tar, "etc/root-owned", 0, 0, b"r");
    owned_file(&mut tar, "etc/user-owned", 1000, 1000, b"u");
    owned_file(&mut tar, "etc/group-only", 0, 1000, b"g");
    owned_file(&mut tar, "etc/big", 0, 0, &pseudo_random(5 << 20, 3));
    let layer = blob(&tar.into_inner().unwrap());
    let work = tempfile::tempdir().unwrap();
    let setgid = work.path().join("setgid");
    fs::create_dir(&setgid).unwrap();
    std::os::unix::fs::chown(&setgid, None, Some(4321)).unwrap();
    fs::set_permissions(&setgid, fs::Permissions::from_mode(0o2755)).unwrap();
    for parent in [work.path(), setgid.as_path()] {
        let dest = parent.join("out");
        extract(std::slice::from_ref(&layer), &dest).unwrap();
        let owner = |name: &str| {
            let meta = fs::metadata(dest.join(name)).unwrap();
            (meta.uid(), meta.gid())
        };
        assert_eq!(
            owner("etc/root-owned"),
            (0, 0),
            "under {}",
            parent.display()
        );
        assert_eq!(owner("etc/user-owned"), (1000, 1000));
        assert_eq!(owner("etc/group-only"), (0, 1000));
        assert_eq!(owner("etc/big"), (0, 0), "under {}", parent.display());
    }
}
