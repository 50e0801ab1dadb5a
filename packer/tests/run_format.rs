//! The `.run` container: write, open, verify, extract; damaged, truncated, stripped and split
//! files. The stub here is `/bin/true` (any ELF will do for format-level tests).

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fingerprint, framed, gnu_tar_extract, incompressible, pseudo_random, LayerTar};
use packer::format::{Header, HEADER_LEN};
use packer::{write, Compression, LayerBlob, PackReport, PackSpec, ReadError, RunFile};

const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn stub() -> PathBuf {
    PathBuf::from("/bin/true")
}

/// Write each tar as a framed zstd blob file, as the store would.
fn store_blobs(dir: &Path, tars: &[Vec<u8>]) -> Vec<LayerBlob> {
    tars.iter()
        .enumerate()
        .map(|(i, tar)| {
            let (bytes, layer) = framed(tar);
            let path = dir.join(format!("blob{i}"));
            fs::write(&path, &bytes).unwrap();
            LayerBlob {
                path,
                media_type: ZSTD_LAYER.into(),
                digest: format!("sha256:{}", layer.digest),
                diff_id: format!("sha256:{}", layer.diff_id),
                frames: None,
                keep_frames: false,
            }
        })
        .collect()
}

fn spec(layers: Vec<LayerBlob>, output: PathBuf) -> PackSpec {
    PackSpec {
        stub: stub(),
        image_name: "example/etcd:v1".into(),
        manifest_digest: "sha256:1111".into(),
        manifest_json: "{}".into(),
        config_digest: "sha256:2222".into(),
        config_json: r#"{"config":{"Env":["A=1"],"Cmd":["install.sh"],"Labels":{"k":"v"}}}"#.into(),
        layers,
        compression: Compression::Zstd,
        level: None,
        split_size: None,
        output,
    }
}

fn two_layers() -> Vec<Vec<u8>> {
    let mut base = LayerTar::new();
    base.dir("etc/", 0o755)
        .file("etc/os-release", 0o644, b"NAME=test\n")
        .file("bin/big", 0o755, &pseudo_random(20 << 20, 5))
        .symlink("bin/alias", "big");
    for i in 0..50 {
        base.file(
            &format!("share/doc/{i}"),
            0o644,
            &pseudo_random(3000 + i, i as u64),
        );
    }
    let mut upper = LayerTar::new();
    upper
        .file("etc/os-release", 0o644, b"NAME=upper\n")
        .file("etc/.wh.gone", 0o644, b"");
    vec![base.finish(), upper.finish()]
}

fn pack(work: &Path, compression: Compression) -> (PackReport, Vec<LayerBlob>) {
    let blobs = store_blobs(work, &two_layers());
    let mut s = spec(blobs.clone(), work.join("app.run"));
    s.compression = compression;
    (write(&s, None).unwrap(), blobs)
}

#[test]
fn zstd_layers_are_copied_and_round_trip_like_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let (report, blobs) = pack(work.path(), Compression::Zstd);
    assert_eq!(
        report.copied_layers, 2,
        "framed zstd layers are copied, not recompressed"
    );
    let run_path = &report.files[0];
    let mode = fs::metadata(run_path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111,
        0o111
    );

    let run = RunFile::open(run_path).unwrap();
    assert_eq!(run.payload_id(), report.payload_id);
    assert_eq!(run.header_offset() % (64 << 10), 0);
    let m = run.manifest();
    assert_eq!(m.image.name, "example/etcd:v1");
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.layers[0].digest, blobs[0].digest);

    // The frames of each layer, concatenated, are the store blob byte for byte.
    let file = fs::read(run_path).unwrap();
    for (layer, blob) in m.layers.iter().zip(&blobs) {
        let start = (run.header_offset() + layer.frames[0].offset) as usize;
        assert_eq!(start % (64 << 10), 0, "layers start 64 KiB-aligned");
        let original = fs::read(&blob.path).unwrap();
        assert_eq!(&file[start..start + original.len()], &original[..]);
    }

    let payload = run.payload().unwrap();
    payload.verify(None).unwrap();
    let ours = work.path().join("ours");
    payload.extract(&ours, &Default::default()).unwrap();
    let judge = work.path().join("judge");
    let paths: Vec<&Path> = blobs.iter().map(|b| b.path.as_path()).collect();
    gnu_tar_extract(&paths, &judge);
    fs::remove_file(judge.join("etc/.wh.gone")).unwrap(); // GNU tar knows no whiteouts
    assert_eq!(fingerprint(&ours), fingerprint(&judge));
}

#[test]
fn a_known_frame_index_is_copied_without_rescanning_and_gives_the_same_file() {
    let work = tempfile::tempdir().unwrap();
    let tars = two_layers();
    let scanned = store_blobs(work.path(), &tars);
    let indexed: Vec<LayerBlob> = scanned
        .iter()
        .map(|b| {
            let bytes = fs::read(&b.path).unwrap();
            LayerBlob {
                frames: Some(packer::frames::scan_frames(&bytes).unwrap()),
                keep_frames: false,
                ..b.clone()
            }
        })
        .collect();
    let (dir_a, dir_b) = (work.path().join("a"), work.path().join("b"));
    fs::create_dir(&dir_a).unwrap();
    fs::create_dir(&dir_b).unwrap();
    let a = write(&spec(scanned, dir_a.join("app.run")), None).unwrap();
    let b = write(&spec(indexed, dir_b.join("app.run")), None).unwrap();
    assert_eq!(b.copied_layers, 2);
    assert_eq!(a.manifest.layers, b.manifest.layers);
    let same = fs::read(&a.files[0]).unwrap() == fs::read(&b.files[0]).unwrap();
    assert!(same, "both ways of packing give the same bytes");
}

#[test]
fn xz_payload_round_trips() {
    let work = tempfile::tempdir().unwrap();
    let (report, _) = pack(work.path(), Compression::Xz);
    let run = RunFile::open(&report.files[0]).unwrap();
    assert!(run
        .manifest()
        .layers
        .iter()
        .all(|l| l.compression == Compression::Xz));
    let payload = run.payload().unwrap();
    payload.verify(None).unwrap();
    let from_xz = work.path().join("xz");
    payload.extract(&from_xz, &Default::default()).unwrap();

    let zstd_dir = work.path().join("zstd-pack");
    fs::create_dir(&zstd_dir).unwrap();
    let (zreport, _) = pack(&zstd_dir, Compression::Zstd);
    let from_zstd = work.path().join("zstd");
    RunFile::open(&zreport.files[0])
        .unwrap()
        .payload()
        .unwrap()
        .extract(&from_zstd, &Default::default())
        .unwrap();
    assert_eq!(fingerprint(&from_xz), fingerprint(&from_zstd));
}

#[test]
fn gzip_and_single_frame_layers_are_reframed() {
    let work = tempfile::tempdir().unwrap();
    let tar = two_layers().remove(0);
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tar))
    );
    let gz_path = work.path().join("layer.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    // A foreign zstd blob written as one 40 MiB frame is too large to decode in one piece.
    let mut big = LayerTar::new();
    big.file("etc/os-release", 0o644, b"NAME=test\n").file(
        "big",
        0o644,
        &pseudo_random(40 << 20, 9),
    );
    let big = big.finish();
    let big_diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big))
    );
    let one_frame = work.path().join("layer.zst");
    fs::write(&one_frame, zstd::encode_all(&big[..], 3).unwrap()).unwrap();
    let layers = vec![
        LayerBlob {
            path: gz_path,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: "sha256:gz".into(),
            diff_id: diff_id.clone(),
            frames: None,
            keep_frames: false,
        },
        LayerBlob {
            path: one_frame,
            media_type: ZSTD_LAYER.into(),
            digest: "sha256:one".into(),
            diff_id: big_diff_id,
            frames: None,
            keep_frames: false,
        },
    ];
    let report = write(&spec(layers, work.path().join("app.run")), None).unwrap();
    assert_eq!(report.copied_layers, 0);
    for layer in &report.manifest.layers {
        assert!(layer.frames.len() > 1, "a 20+ MiB layer is cut into frames");
        assert_eq!(layer.compression, Compression::Zstd);
    }
    let run = RunFile::open(&report.files[0]).unwrap();
    run.payload()
        .unwrap()
        .extract(&work.path().join("out"), &Default::default())
        .unwrap();
    assert_eq!(
        fs::read(work.path().join("out/etc/os-release")).unwrap(),
        b"NAME=test\n"
    );
}

#[test]
fn a_wrong_diff_id_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let tar = two_layers().remove(1);
    let gz_path = work.path().join("layer.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let layers = vec![LayerBlob {
        path: gz_path,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: "sha256:gz".into(),
        diff_id: "sha256:0000".into(),
        frames: None,
        keep_frames: false,
    }];
    let err = write(&spec(layers, work.path().join("app.run")), None).unwrap_err();
    assert!(err.to_string().contains("diff_id"), "{err}");
    assert!(!work.path().join("app.run").exists());
}

#[test]
fn a_flipped_byte_is_reported_with_layer_frame_and_bytes() {
    let work = tempfile::tempdir().unwrap();
    let (report, _) = pack(work.path(), Compression::Zstd);
    let run_path = &report.files[0];
    let run = RunFile::open(run_path).unwrap();
    let frame = run.manifest().layers[0].frames[1].clone();
    let start = run.header_offset() + frame.offset;
    let mut bytes = fs::read(run_path).unwrap();
    bytes[(start + 100) as usize] ^= 0xff;
    fs::write(run_path, &bytes).unwrap();

    let run = RunFile::open(run_path).unwrap();
    let payload = run.payload().unwrap();
    let err = payload.verify(None).unwrap_err();
    let want = format!(
        "frame 2 of layer 1 is corrupt (bytes {}–{} of {})",
        start,
        start + frame.compressed_len,
        run_path.display()
    );
    assert!(err.to_string().starts_with(&want), "{err}");

    let dest = work.path().join("out");
    let err = payload.extract(&dest, &Default::default()).unwrap_err();
    assert!(err.to_string().starts_with(&want), "{err}");
    let expected = format!(", expected {}", frame.blake3.unwrap());
    assert!(err.to_string().contains("): blake3 "), "{err}");
    assert!(err.to_string().contains(&expected), "{err}");
    assert!(!dest.exists());
}

#[test]
fn frames_are_checked_by_their_blake3_and_by_sha256_where_a_frame_has_none() {
    use sha2::{Digest, Sha256};
    let work = tempfile::tempdir().unwrap();
    let run_path = packed(work.path());
    let run = RunFile::open(&run_path).unwrap();
    let file = fs::read(&run_path).unwrap();
    // Debian's b3sum is the judge of the BLAKE3 the packer wrote.
    let one = work.path().join("frame");
    for frame in run.manifest().layers.iter().flat_map(|l| &l.frames) {
        let start = (run.header_offset() + frame.offset) as usize;
        let bytes = &file[start..start + frame.compressed_len as usize];
        assert_eq!(frame.sha256, hex::encode(Sha256::digest(bytes)));
        fs::write(&one, bytes).unwrap();
        let b3sum = Command::new("b3sum")
            .arg("--no-names")
            .arg(&one)
            .output()
            .expect("b3sum (scripts/ci-deps.sh installs it)");
        assert!(b3sum.status.success());
        let judged = String::from_utf8(b3sum.stdout).unwrap();
        assert_eq!(frame.blake3.as_deref(), Some(judged.trim()));
    }
    let extract = |name: &str| {
        let run = RunFile::open(&run_path).unwrap();
        let payload = run.payload().unwrap();
        payload.verify(None)?;
        payload.extract(&work.path().join(name), &Default::default())
    };

    // A BLAKE3 the bytes do not have is refused, though the sha256 beside it is right.
    rewrite(&run_path, |_, _, manifest| {
        manifest["layers"][0]["frames"][0]["blake3"] = serde_json::json!("00".repeat(32));
    });
    let err = extract("a").unwrap_err();
    assert!(err.to_string().contains("): blake3 "), "{err}");

    // Without a BLAKE3 (a package written before it), the sha256 is checked.
    rewrite(&run_path, |_, _, manifest| {
        for layer in manifest["layers"].as_array_mut().unwrap() {
            for frame in layer["frames"].as_array_mut().unwrap() {
                frame.as_object_mut().unwrap().remove("blake3");
            }
        }
    });
    extract("b").unwrap();
    assert_eq!(
        fs::read_to_string(work.path().join("b/etc/os-release")).unwrap(),
        "NAME=upper\n"
    );
    rewrite(&run_path, |_, _, manifest| {
        manifest["layers"][1]["frames"][0]["sha256"] = serde_json::json!("00".repeat(32));
    });
    let err = extract("c").unwrap_err();
    assert!(err.to_string().contains("): sha256 "), "{err}");
}

#[test]
fn a_truncated_copy_says_how_much_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let (report, _) = pack(work.path(), Compression::Zstd);
    let run_path = &report.files[0];
    let full = fs::metadata(run_path).unwrap().len();
    let cut = work.path().join("cut.run");
    let bytes = fs::read(run_path).unwrap();
    fs::write(&cut, &bytes[..(full / 2) as usize]).unwrap();
    match RunFile::open(&cut) {
        Err(ReadError::Incomplete { have, want, .. }) => {
            assert_eq!((have, want), (full / 2, full));
        }
        other => panic!("expected an incomplete copy, got {other:?}"),
    }
    let msg = RunFile::open(&cut).unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "incomplete copy: have {} of {full} bytes",
            full / 2
        )),
        "{msg}"
    );
}

#[test]
fn a_stripped_file_is_recognised() {
    let work = tempfile::tempdir().unwrap();
    let (report, _) = pack(work.path(), Compression::Zstd);
    let stripped = work.path().join("stripped.run");
    fs::copy(&report.files[0], &stripped).unwrap();
    let status = Command::new("strip").arg(&stripped).status().unwrap();
    assert!(status.success());
    let err = RunFile::open(&stripped).unwrap_err();
    assert!(matches!(err, ReadError::NoPayload { .. }), "{err}");
    assert!(err.to_string().contains("stripped"), "{err}");
}

#[test]
fn a_damaged_header_or_manifest_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (report, _) = pack(work.path(), Compression::Zstd);
    let run = RunFile::open(&report.files[0]).unwrap();
    let manifest_at = (run.header_offset() + HEADER_LEN + 10) as usize;
    let mut bytes = fs::read(&report.files[0]).unwrap();
    bytes[manifest_at] ^= 1;
    let damaged = work.path().join("damaged.run");
    fs::write(&damaged, &bytes).unwrap();
    let err = RunFile::open(&damaged).unwrap_err();
    assert!(matches!(err, ReadError::Damaged { .. }), "{err}");
}

/// Three layers of incompressible 10 MiB files, packed with a 12 MiB split size.
fn split_pack(work: &Path, seed: u64) -> PackReport {
    let tars: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let mut t = LayerTar::new();
            t.file(
                &format!("data/part{i}"),
                0o644,
                &incompressible(10 << 20, seed + i),
            );
            t.finish()
        })
        .collect();
    let blobs = store_blobs(work, &tars);
    let mut s = spec(blobs, work.join("app.run"));
    s.split_size = Some(12 << 20);
    write(&s, None).unwrap()
}

#[test]
fn split_volumes_are_found_by_payload_id_whatever_their_names() {
    let work = tempfile::tempdir().unwrap();
    let report = split_pack(work.path(), 1);
    assert_eq!(report.files.len(), 3);
    for f in &report.files {
        assert!(
            fs::metadata(f).unwrap().len() <= 12 << 20,
            "{} too large",
            f.display()
        );
    }
    // Move the set elsewhere and rename the volumes.
    let stick = work.path().join("stick");
    fs::create_dir(&stick).unwrap();
    fs::rename(&report.files[0], stick.join("installer")).unwrap();
    fs::rename(&report.files[1], stick.join("zz-second")).unwrap();
    fs::rename(&report.files[2], stick.join("aa-third")).unwrap();
    let run = RunFile::open(&stick.join("installer")).unwrap();
    let payload = run.payload().unwrap();
    payload.verify(None).unwrap();
    payload
        .extract(&work.path().join("out"), &Default::default())
        .unwrap();
    assert_eq!(
        fs::read(work.path().join("out/data/part2")).unwrap(),
        incompressible(10 << 20, 3)
    );
    // Opening a volume instead of the installer is explained.
    let err = RunFile::open(&stick.join("zz-second")).unwrap_err();
    assert!(
        matches!(err, ReadError::NotMainVolume { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_missing_volume_is_named() {
    let work = tempfile::tempdir().unwrap();
    let report = split_pack(work.path(), 1);
    fs::remove_file(&report.files[2]).unwrap();
    let run = RunFile::open(&report.files[0]).unwrap();
    let err = run.payload().err().expect("volume 2 is missing");
    assert!(
        matches!(&err, ReadError::VolumeMissing { index: 2, count: 3, name, .. } if name == "app.run.v002"),
        "{err}"
    );
    assert!(
        err.to_string().contains("volume 2 of 3 is missing"),
        "{err}"
    );
}

#[test]
fn a_stale_volume_from_another_pack_is_named() {
    let work = tempfile::tempdir().unwrap();
    let report = split_pack(work.path(), 1);
    let other_dir = work.path().join("other");
    fs::create_dir(&other_dir).unwrap();
    let other = split_pack(&other_dir, 100);
    fs::rename(&other.files[1], &report.files[1]).unwrap();
    let run = RunFile::open(&report.files[0]).unwrap();
    let err = run.payload().err().expect("volume 1 is stale");
    let msg = err.to_string();
    assert!(msg.contains("volume 1 of 3 is missing"), "{msg}");
    assert!(
        msg.contains("is a volume of a different installer"),
        "{msg}"
    );
}

#[test]
fn a_truncated_volume_is_named() {
    let work = tempfile::tempdir().unwrap();
    let report = split_pack(work.path(), 1);
    let v1 = &report.files[1];
    let bytes = fs::read(v1).unwrap();
    fs::write(v1, &bytes[..bytes.len() - 1000]).unwrap();
    let err = RunFile::open(&report.files[0])
        .unwrap()
        .payload()
        .err()
        .expect("volume 1 is short");
    // A volume cut short loses its footer but keeps its header, so it is still recognised.
    assert!(
        matches!(err, ReadError::VolumeIncomplete { index: 1, .. }),
        "{err}"
    );
    let header = Header::decode(&bytes[..HEADER_LEN as usize]).unwrap();
    assert_eq!(header.volume_index, 1);
}

#[test]
fn split_size_smaller_than_a_frame_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let blobs = store_blobs(work.path(), &two_layers());
    let mut s = spec(blobs, work.path().join("app.run"));
    s.split_size = Some(1 << 20);
    let err = write(&s, None).unwrap_err();
    assert!(err.to_string().contains("split size"), "{err}");
}

/// Rewrite a packed file's header, footer and manifest, keeping every checksum valid, so the
/// reader meets exactly the lie the test tells (the layout stays where the packer put it).
fn rewrite(
    run_path: &Path,
    edit: impl FnOnce(&mut Header, &mut packer::format::Footer, &mut serde_json::Value),
) {
    use packer::format::{Footer, FOOTER_LEN};
    let run = RunFile::open(run_path).unwrap();
    let header_at = run.header_offset() as usize;
    let mut bytes = fs::read(run_path).unwrap();
    let mut header = Header::decode(&bytes[header_at..header_at + HEADER_LEN as usize]).unwrap();
    let footer_at = bytes.len() - FOOTER_LEN as usize;
    let mut footer = Footer::decode(&bytes[footer_at..]).unwrap();
    let manifest_at = header_at + header.manifest_offset as usize;
    let old_len = header.manifest_len as usize;
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&bytes[manifest_at..manifest_at + old_len]).unwrap();
    let before = manifest.clone();
    edit(&mut header, &mut footer, &mut manifest);
    if manifest != before {
        let new = serde_json::to_vec(&manifest).unwrap();
        assert!(
            new.len() <= old_len + 512,
            "the manifest must fit its reserve"
        );
        bytes[manifest_at..manifest_at + new.len()].copy_from_slice(&new);
        let id = packer::format::payload_id(&new);
        header.payload_id = id;
        footer.payload_id_prefix.copy_from_slice(&id[..16]);
        if header.manifest_len == old_len as u64 {
            header.manifest_len = new.len() as u64;
            footer.manifest_len = new.len() as u64;
        }
    }
    bytes[header_at..header_at + HEADER_LEN as usize].copy_from_slice(&header.encode());
    bytes[footer_at..].copy_from_slice(&footer.encode());
    fs::write(run_path, &bytes).unwrap();
}

fn packed(work: &Path) -> PathBuf {
    let (report, _) = pack(work, Compression::Zstd);
    report.files[0].clone()
}

#[test]
fn a_header_claiming_a_terabyte_manifest_is_refused_without_allocating_it() {
    let work = tempfile::tempdir().unwrap();
    let run_path = packed(work.path());
    rewrite(&run_path, |header, footer, _| {
        header.manifest_len = 1 << 40;
        footer.manifest_len = 1 << 40;
    });
    let err = RunFile::open(&run_path).unwrap_err();
    assert!(matches!(err, ReadError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("manifest outside the file"),
        "{err}"
    );
}

#[test]
fn a_header_claiming_four_billion_volumes_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let run_path = packed(work.path());
    rewrite(&run_path, |header, _, _| header.volume_count = u32::MAX);
    let err = RunFile::open(&run_path)
        .and_then(|run| run.payload().map(|_| ()))
        .unwrap_err();
    assert!(matches!(err, ReadError::Damaged { .. }), "{err}");
}

#[test]
fn a_manifest_without_volumes_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let run_path = packed(work.path());
    rewrite(&run_path, |_, _, manifest| {
        manifest["volumes"] = serde_json::json!([]);
        manifest["layers"] = serde_json::json!([]);
        manifest["payload_len"] = serde_json::json!(0);
    });
    let err = RunFile::open(&run_path)
        .and_then(|run| run.payload().map(|_| ()))
        .unwrap_err();
    assert!(matches!(err, ReadError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("0 volumes"), "{err}");
}

#[test]
fn a_newer_format_version_is_named_not_called_stripped() {
    let work = tempfile::tempdir().unwrap();
    let run_path = packed(work.path());
    rewrite(&run_path, |header, footer, _| {
        header.version = 7;
        footer.version = 7;
    });
    let err = RunFile::open(&run_path).unwrap_err();
    assert!(
        matches!(err, ReadError::NewerFormat { found: 7, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("format version is 7"), "{err}");
    assert!(!err.to_string().contains("stripped"), "{err}");

    // Without a readable footer the header alone tells the version.
    let cut = work.path().join("cut.run");
    let bytes = fs::read(&run_path).unwrap();
    fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let err = RunFile::open(&cut).unwrap_err();
    assert!(
        matches!(err, ReadError::NewerFormat { found: 7, .. }),
        "{err}"
    );
}

#[test]
fn verify_decodes_every_frame_and_catches_a_wrong_uncompressed_length() {
    let work = tempfile::tempdir().unwrap();
    let run_path = packed(work.path());
    rewrite(&run_path, |_, _, manifest| {
        let layer = &mut manifest["layers"][0];
        let frame = &mut layer["frames"][0];
        let len = frame["uncompressed_len"].as_u64().unwrap();
        frame["uncompressed_len"] = serde_json::json!(len + 512);
        let total = layer["uncompressed_len"].as_u64().unwrap();
        layer["uncompressed_len"] = serde_json::json!(total + 512);
    });
    let run = RunFile::open(&run_path).unwrap();
    let payload = run.payload().unwrap();
    let err = payload.verify(None).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::CorruptFrame {
                layer: 1,
                frame: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("decodes to"), "{err}");
    // The cheaper check before an install sees it too (zstd frames declare their size).
    let err = payload.verify_digests(None).unwrap_err();
    assert!(err.to_string().contains("decodes to"), "{err}");
}

#[test]
fn a_file_truncated_while_mapped_is_reported_as_changed_not_a_sigbus() {
    let work = tempfile::tempdir().unwrap();
    let run_path = packed(work.path());
    let run = RunFile::open(&run_path).unwrap();
    let payload = run.payload().unwrap();
    // Cut the file under the mapping: the second half of the frames is gone.
    let len = fs::metadata(&run_path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&run_path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let dest = work.path().join("out");
    let err = payload.extract(&dest, &Default::default()).unwrap_err();
    assert!(matches!(err, ReadError::Changed { .. }), "{err}");
    assert!(
        err.to_string().contains("changed while it was being read"),
        "{err}"
    );
    assert!(!dest.exists());
    let left: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("partial"))
        .collect();
    assert!(left.is_empty(), "no staging directory is left: {left:?}");
    let err = payload.verify(None).unwrap_err();
    assert!(matches!(err, ReadError::Changed { .. }), "{err}");
}

#[test]
fn packing_a_damaged_store_blob_is_refused_with_or_without_its_frame_index() {
    let work = tempfile::tempdir().unwrap();
    let blobs = store_blobs(work.path(), &two_layers());
    for with_index in [true, false] {
        let damaged: Vec<LayerBlob> = blobs
            .iter()
            .map(|b| {
                let mut bytes = fs::read(&b.path).unwrap();
                let frames = packer::frames::scan_frames(&bytes).unwrap();
                let at = bytes.len() / 2;
                bytes[at] ^= 0x55;
                let path = b.path.with_extension(format!("damaged-{with_index}"));
                fs::write(&path, &bytes).unwrap();
                LayerBlob {
                    path,
                    frames: with_index.then_some(frames),
                    ..b.clone()
                }
            })
            .collect();
        let out = work.path().join(format!("out-{with_index}"));
        fs::create_dir(&out).unwrap();
        let err = write(&spec(damaged, out.join("app.run")), None).unwrap_err();
        assert!(
            matches!(err, packer::WriteError::LayerDamaged { .. }),
            "{with_index}: {err}"
        );
        assert!(!out.join("app.run").exists());
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            0,
            "nothing is left behind"
        );
    }
}

#[test]
fn a_full_disk_during_pack_leaves_nothing_beside_the_output() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let blobs = store_blobs(work.path(), &two_layers());
    let small = work.path().join("small");
    fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    let result = write(&spec(blobs, small.join("app.run")), None);
    let left: Vec<_> = fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    Command::new("umount").arg(&small).status().unwrap();
    let err = result.unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A package whose change time is older than [`packer::source::SETTLED`], as any package is
/// by the time someone installs it (one written a moment ago cannot vouch for itself).
fn settled_package(work: &Path) -> PathBuf {
    let run_path = packed(work);
    std::thread::sleep(packer::source::SETTLED + std::time::Duration::from_millis(100));
    run_path
}

fn total_frames(run: &RunFile) -> u64 {
    run.manifest()
        .layers
        .iter()
        .map(|l| l.frames.len() as u64)
        .sum()
}

#[test]
fn an_extraction_after_the_install_check_hashes_no_frame_a_second_time() {
    let work = tempfile::tempdir().unwrap();
    let run_path = settled_package(work.path());
    let run = RunFile::open(&run_path).unwrap();
    let frames = total_frames(&run);
    assert!(frames > 2, "the package has several frames: {frames}");

    // Without a check first, the extraction hashes every frame itself.
    let alone = run
        .payload()
        .unwrap()
        .extract(&work.path().join("alone"), &Default::default())
        .unwrap();
    assert_eq!(alone.frames_hashed, frames);

    // After the check, its verdict is reused: the same tree, no frame hashed again.
    let payload = run.payload().unwrap();
    payload.verify_digests(None).unwrap();
    let after = payload
        .extract(&work.path().join("after"), &Default::default())
        .unwrap();
    assert_eq!(after.frames_hashed, 0);
    assert_eq!(
        fingerprint(&work.path().join("alone")),
        fingerprint(&work.path().join("after"))
    );

    // A package written a moment ago cannot prove later that it did not change within the same
    // tick of the file system's clock: its frames are hashed again.
    let fresh_dir = work.path().join("fresh");
    fs::create_dir(&fresh_dir).unwrap();
    let fresh = RunFile::open(&packed(&fresh_dir)).unwrap();
    let payload = fresh.payload().unwrap();
    payload.verify_digests(None).unwrap();
    let report = payload
        .extract(&work.path().join("fresh-out"), &Default::default())
        .unwrap();
    assert_eq!(report.frames_hashed, total_frames(&fresh));
}

/// Flip one byte inside the first frame of the first layer, in place (same size, same inode).
fn flip_in_place(file: &fs::File, run: &RunFile) {
    use std::os::unix::fs::FileExt;
    let at = run.header_offset() + run.manifest().layers[0].frames[0].offset + 100;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x55], at).unwrap();
}

#[test]
fn a_package_rewritten_after_the_install_check_is_refused_before_its_tree_is_in_place() {
    let work = tempfile::tempdir().unwrap();
    let run_path = settled_package(work.path());
    let run = RunFile::open(&run_path).unwrap();
    let payload = run.payload().unwrap();
    payload.verify_digests(None).unwrap();
    // Rewritten in place between the check and the extraction, its mtime put back.
    let mtime = fs::metadata(&run_path).unwrap().modified().unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&run_path)
        .unwrap();
    flip_in_place(&file, &run);
    file.set_modified(mtime).unwrap();
    drop(file);
    let dest = work.path().join("out");
    let err = payload.extract(&dest, &Default::default()).unwrap_err();
    assert!(matches!(err, ReadError::Changed { .. }), "{err}");
    assert!(!dest.exists(), "a changed package's tree was put in place");
}

#[test]
fn a_package_open_for_writing_during_the_install_check_is_hashed_again() {
    let work = tempfile::tempdir().unwrap();
    let run_path = settled_package(work.path());
    let run = RunFile::open(&run_path).unwrap();
    // A writer holds the file open across the check (it could change mapped pages without
    // the change time moving), then changes a byte.
    let writer = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&run_path)
        .unwrap();
    let payload = run.payload().unwrap();
    payload.verify_digests(None).unwrap();
    flip_in_place(&writer, &run);
    let dest = work.path().join("out");
    let err = payload.extract(&dest, &Default::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::CorruptFrame {
                layer: 1,
                frame: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dest.exists());
    // Unchanged, but with the writer still there: every frame is hashed by the extraction.
    drop(writer);
    let clean_dir = work.path().join("clean");
    fs::create_dir(&clean_dir).unwrap();
    let clean_path = settled_package(&clean_dir);
    let clean = RunFile::open(&clean_path).unwrap();
    let _writer = fs::OpenOptions::new()
        .write(true)
        .open(&clean_path)
        .unwrap();
    let payload = clean.payload().unwrap();
    payload.verify_digests(None).unwrap();
    let report = payload
        .extract(&work.path().join("clean-out"), &Default::default())
        .unwrap();
    assert_eq!(report.frames_hashed, total_frames(&clean));
}

#[test]
fn the_image_documents_lie_beside_the_manifest_and_are_read_only_when_asked_for() {
    let work = tempfile::tempdir().unwrap();
    let (report, _) = pack(work.path(), Compression::Zstd);
    let run_path = &report.files[0];
    let config = spec(Vec::new(), PathBuf::new()).config_json;
    let run = RunFile::open(run_path).unwrap();
    assert_eq!(run.manifest().version, 2);
    assert_eq!(&*run.manifest().image.config_json, config);
    assert_eq!(&*run.manifest().image.manifest_json, "{}");
    assert_eq!(
        report.manifest.image.config_json,
        run.manifest().image.config_json
    );
    let stored = String::from_utf8(run.manifest_bytes().to_vec()).unwrap();
    assert!(!stored.contains("config_json"), "{stored}");
    assert!(stored.contains(r#""documents":{"offset":4096"#), "{stored}");

    let lean = RunFile::open_with(run_path, packer::Documents::Skip).unwrap();
    assert!(lean.manifest().image.config_json.is_empty());
    assert_eq!(lean.payload_id(), run.payload_id());

    // One byte of the config changed: the payload id still holds, the documents' sha256 not.
    let at = run.header_offset() + HEADER_LEN + 2 + config.find("Cmd").unwrap() as u64;
    let mut bytes = fs::read(run_path).unwrap();
    bytes[at as usize] ^= 0x20;
    fs::write(run_path, &bytes).unwrap();
    let err = RunFile::open(run_path).unwrap_err();
    assert!(matches!(err, ReadError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("image documents do not match"),
        "{err}"
    );
    // Extraction needs only the layers, which are intact.
    let lean = RunFile::open_with(run_path, packer::Documents::Skip).unwrap();
    let out = work.path().join("out");
    lean.payload()
        .unwrap()
        .extract(&out, &Default::default())
        .unwrap();
    assert_eq!(
        fs::read_to_string(out.join("etc/os-release")).unwrap(),
        "NAME=upper\n"
    );
}

/// A package written by the version-1 packer (documents inside the manifest), its stub cut to
/// 64 KiB of zeros: fixtures/packages/format-v1.run.
fn format_v1_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/packages/format-v1.run")
}

#[test]
fn a_version_1_package_still_opens_verifies_and_extracts() {
    use sha2::{Digest, Sha256};
    let run = RunFile::open(&format_v1_fixture()).unwrap();
    let m = run.manifest();
    assert_eq!(m.version, 1);
    assert_eq!(m.image.name, "fixture/format-v1:1");
    let digest = |text: &str| format!("sha256:{}", hex::encode(Sha256::digest(text)));
    assert_eq!(digest(&m.image.config_json), m.image.config_digest);
    assert_eq!(digest(&m.image.manifest_json), m.image.manifest_digest);
    let lean = RunFile::open_with(&format_v1_fixture(), packer::Documents::Skip).unwrap();
    assert_eq!(lean.manifest().image.config_json, m.image.config_json);
    let payload = run.payload().unwrap();
    payload.verify(None).unwrap();
    let work = tempfile::tempdir().unwrap();
    payload
        .extract(&work.path().join("out"), &Default::default())
        .unwrap();
    assert_eq!(
        fs::read_to_string(work.path().join("out/etc/hello.txt")).unwrap(),
        "hello from a version 1 package\n"
    );
}
