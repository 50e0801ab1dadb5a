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
        },
        LayerBlob {
            path: one_frame,
            media_type: ZSTD_LAYER.into(),
            digest: "sha256:one".into(),
            diff_id: big_diff_id,
            frames: None,
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
    assert!(
        err.to_string()
            .starts_with("frame 2 of layer 1 is corrupt (sha256 "),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "(bytes {}–{})",
            start,
            start + frame.compressed_len
        )),
        "{err}"
    );
    assert!(!dest.exists());
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
