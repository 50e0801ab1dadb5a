//! Fuzz check `run_reader`: bytes become a `.run` file (and its volumes) that the reader opens,
//! inspects, verifies and extracts, as `app.run`, `app.run inspect`, `verify` and `extract` do.
//!
//! Invariants: no panic, no abort, and bounded allocation (the fuzz targets and the stable
//! replay run under [`super::alloc_limit`]-style limits; libFuzzer adds `-rss_limit_mb`).
//!
//! The first input byte picks the mode: even = the rest of the input is the file as is;
//! odd = structured: a valid small package written by [`packer::write`] (one of three shapes:
//! bare, with an ELF-like stub and two layers one of them xz, split into volumes) is decoded,
//! and [`Mutations`] (decoded with `arbitrary`) change header, footer and manifest fields,
//! lengths, counts and frame offsets, then re-encode the records with valid checksums and
//! payload id so the reader's later checks are reached. Shared by the fuzz target and the
//! stable replay (`packer/tests/fuzz_corpus.rs`), which include this file by path.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use packer::format::{self, Footer, Header, RunManifest, FOOTER_LEN, HEADER_LEN};
use packer::{Compression, Documents, LayerBlob, PackSpec, RunFile, UnpackOptions};

const MAX_EDITS: usize = 10;
/// Frames read one by one through `Volumes::frame_bytes` at most.
const MAX_FRAME_READS: usize = 16;

/// Run one input. Panics when an invariant does not hold.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = Scratch::new();
    let main = if mode & 1 == 0 {
        let path = dir.0.join("app.run");
        fs::write(&path, rest).expect("writing the input file");
        path
    } else {
        let Ok(plan) = Mutations::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        let files = plan.apply();
        for (name, bytes) in &files {
            fs::write(dir.0.join(name), bytes).expect("writing the input files");
        }
        dir.0.join(&files[0].0)
    };
    exercise(&main, &dir.0.join("out"));
}

/// What the stub does with a `.run` file, in order, ignoring the errors it would print.
fn exercise(path: &Path, out: &Path) {
    // `app.run extract` opens without the image documents.
    let _ = RunFile::open_with(path, Documents::Skip).map(|run| run.manifest().frame_count());
    let Ok(run) = RunFile::open(path) else {
        return;
    };
    // `app.run` (summary) and `app.run inspect [--json]`.
    let m = run.manifest();
    let _ = (run.payload_id(), run.header_offset(), run.manifest_len());
    let _ = (run.file_len(), run.path());
    let _ = (m.uncompressed_len(), m.frame_count());
    let _: u64 = m
        .layers
        .iter()
        .map(|l| l.compressed_len)
        .fold(0, u64::wrapping_add);
    let _ = serde_json::to_string_pretty(m);
    let _ = serde_json::from_str::<serde_json::Value>(&m.image.config_json);
    // `app.run verify` and `extract`.
    let Ok(payload) = run.payload() else {
        return;
    };
    let _ = (payload.compressed_len(), payload.volume_paths());
    let mut reads = 0;
    'layers: for (l, layer) in m.layers.iter().enumerate() {
        for f in 0..layer.frames.len() {
            if reads == MAX_FRAME_READS {
                break 'layers;
            }
            reads += 1;
            if let Ok(bytes) = payload.frame_bytes(l, f) {
                let _ = payload.locate(0, bytes.len() as u64);
            }
        }
    }
    let _ = payload.verify(None);
    let options = UnpackOptions {
        ownership: false,
        devices: false,
        absolute_symlinks: true,
        writers: 2,
        progress: None,
    };
    let _ = payload.extract(out, &options);
}

// ---------------------------------------------------------------------------------------------
// Scratch directories.

/// A fresh directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = super::scratch::base_dir().join(format!("run-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Valid packages to start from.

/// One written package: `(file name, bytes)`, the main file first.
type Package = Vec<(String, Vec<u8>)>;

fn tar_layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, *data)
            .expect("building a tar layer");
    }
    builder.into_inner().expect("finishing a tar layer")
}

fn write_package(dir: &Path, shape: usize) -> Package {
    let stub = dir.join("stub");
    let stub_bytes = match shape {
        1 => {
            // Enough of an ELF64 header for `elf_size`: section headers end at 264.
            let mut b = vec![0u8; 300];
            b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
            b[40..48].copy_from_slice(&200u64.to_le_bytes());
            b[58..60].copy_from_slice(&64u16.to_le_bytes());
            b[60..62].copy_from_slice(&1u16.to_le_bytes());
            b
        }
        _ => Vec::new(),
    };
    fs::write(&stub, &stub_bytes).expect("writing the stub");
    let tars = [
        tar_layer(&[("etc/hello", b"hello\n"), ("bin/run.sh", b"#!/bin/sh\n")]),
        tar_layer(&[("data/a", &[7u8; 3000]), ("data/b", b"")]),
    ];
    // Shape 2 adds a layer that does not compress, so the split needs several volumes.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let tars = [
        tars[0].clone(),
        tars[1].clone(),
        tar_layer(&[("data/noise", &noise)]),
    ];
    let layer_count = [1, 2, 3][shape];
    let mut layers = Vec::new();
    for (i, tar) in tars.iter().take(layer_count).enumerate() {
        let path = dir.join(format!("layer{i}"));
        let mut w = packer::frames::FramedWriter::new(Vec::new(), 3);
        std::io::Write::write_all(&mut w, tar).expect("framing a layer");
        let (blob, framed) = w.finish().expect("framing a layer");
        fs::write(&path, &blob).expect("writing a layer");
        layers.push(LayerBlob {
            path,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            digest: format!("sha256:{}", framed.digest),
            diff_id: format!("sha256:{}", framed.diff_id),
            frames: Some(framed.frames),
            keep_frames: false,
        });
    }
    let spec = PackSpec {
        stub,
        image_name: "fuzz/app:1".into(),
        manifest_digest: format!("sha256:{}", "a".repeat(64)),
        manifest_json: String::new(),
        config_digest: format!("sha256:{}", "b".repeat(64)),
        config_json: r#"{"config":{"Env":["A=1"],"Labels":{"k":"v"}}}"#.into(),
        layers,
        compression: if shape == 1 {
            Compression::Xz
        } else {
            Compression::Zstd
        },
        level: None,
        split_size: if shape == 2 { Some(1) } else { None },
        output: dir.join("app.run"),
    };
    let report = match packer::write(&spec, None) {
        // The smallest split the writer accepts gives the most volumes.
        Err(packer::WriteError::SplitTooSmall { needed, .. }) => {
            let spec = PackSpec {
                split_size: Some(needed),
                ..spec
            };
            packer::write(&spec, None)
        }
        other => other,
    }
    .expect("writing a base package");
    report
        .files
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, fs::read(p).expect("reading a base package"))
        })
        .collect()
}

fn base_packages() -> &'static [Package] {
    static BASES: OnceLock<Vec<Package>> = OnceLock::new();
    BASES.get_or_init(|| {
        let dir = Scratch::new();
        (0..3)
            .map(|shape| {
                let sub = dir.0.join(format!("shape{shape}"));
                fs::create_dir_all(&sub).expect("creating a scratch directory");
                write_package(&sub, shape)
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// Edits to one of the base packages.
#[derive(Debug, Arbitrary)]
pub struct Mutations {
    base: u8,
    edits: Vec<Edit>,
    /// Leave the header and footer checksums as they were after field edits.
    stale_checksums: bool,
    /// Leave the payload id as it was after manifest edits.
    stale_payload_id: bool,
}

#[derive(Debug, Arbitrary)]
enum Edit {
    Header {
        volume: u8,
        field: HeaderField,
        value: Value,
    },
    Footer {
        volume: u8,
        field: FooterField,
        value: Value,
    },
    Manifest(ManifestEdit),
    /// Replace the manifest with these bytes (JSON or not).
    ManifestBytes(Vec<u8>),
    Flip {
        volume: u8,
        at: u32,
        xor: u8,
    },
    Truncate {
        volume: u8,
        cut: u32,
    },
    Append {
        volume: u8,
        bytes: Vec<u8>,
    },
    DropVolumeFile(u8),
    CopyVolumeFile(u8),
}

#[derive(Debug, Arbitrary)]
enum HeaderField {
    Version,
    PayloadId,
    VolumeIndex,
    VolumeCount,
    ManifestOffset,
    ManifestLen,
    VolumeLen,
    PayloadLen,
}

#[derive(Debug, Arbitrary)]
enum FooterField {
    Version,
    VolumeIndex,
    VolumeLen,
    ManifestOffset,
    ManifestLen,
    PayloadIdPrefix,
}

#[derive(Debug, Arbitrary)]
enum Value {
    Zero,
    Small(u8),
    Near(i16),
    Max,
    NearMax(u8),
    Pow2(u8),
    Raw(u64),
}

impl Value {
    fn apply(&self, old: u64) -> u64 {
        match self {
            Value::Zero => 0,
            Value::Small(n) => u64::from(*n),
            Value::Near(d) => old.wrapping_add_signed(i64::from(*d)),
            Value::Max => u64::MAX,
            Value::NearMax(n) => u64::MAX - u64::from(*n),
            Value::Pow2(n) => 1u64 << (n % 64),
            Value::Raw(v) => *v,
        }
    }

    fn apply32(&self, old: u32) -> u32 {
        match self {
            Value::Max => u32::MAX,
            Value::NearMax(n) => u32::MAX - u32::from(*n),
            Value::Pow2(n) => 1u32 << (n % 32),
            other => other.apply(u64::from(old)) as u32,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum ManifestEdit {
    Format,
    Version(Value),
    PayloadLen(Value),
    DropVolume(u8),
    AddVolume,
    VolumeIndex(u8, Value),
    VolumeLen(u8, Value),
    VolumeName(u8, String),
    DropLayer(u8),
    DuplicateLayer(u8),
    SwapLayers(u8, u8),
    LayerCompressedLen(u8, Value),
    LayerUncompressedLen(u8, Value),
    ToggleCompression(u8),
    DropFrame(u8, u8),
    DuplicateFrame(u8, u8),
    FrameVolume(u8, u8, Value),
    FrameOffset(u8, u8, Value),
    FrameCompressedLen(u8, u8, Value),
    FrameUncompressedLen(u8, u8, Value),
    FrameSha(u8, u8, ShaEdit),
    ConfigJson(String),
    DropDocuments,
    DocumentsOffset(Value),
    DocumentsManifestLen(Value),
    DocumentsConfigLen(Value),
}

#[derive(Debug, Arbitrary)]
enum ShaEdit {
    Empty,
    Short,
    Upper,
    OtherFrame,
}

fn pick<T>(items: &mut [T], i: u8) -> Option<&mut T> {
    let len = items.len();
    if len == 0 {
        None
    } else {
        items.get_mut(i as usize % len)
    }
}

impl ManifestEdit {
    fn apply(&self, m: &mut RunManifest) {
        use ManifestEdit as E;
        macro_rules! with_frame {
            ($l:expr, $f:expr, |$fr:ident| $body:expr) => {
                if let Some(layer) = pick(&mut m.layers, *$l) {
                    if let Some($fr) = pick(&mut layer.frames, *$f) {
                        $body;
                    }
                }
            };
        }
        match self {
            E::Format => m.format = "sealer.other".into(),
            E::Version(v) => m.version = v.apply32(m.version),
            E::PayloadLen(v) => m.payload_len = v.apply(m.payload_len),
            E::DropVolume(i) => {
                if !m.volumes.is_empty() {
                    let i = *i as usize % m.volumes.len();
                    m.volumes.remove(i);
                }
            }
            E::AddVolume => {
                let index = m.volumes.len() as u32;
                m.volumes.push(format::VolumeEntry {
                    index,
                    len: HEADER_LEN + FOOTER_LEN,
                    name: format!("extra.{index}"),
                });
            }
            E::VolumeIndex(i, v) => {
                if let Some(vol) = pick(&mut m.volumes, *i) {
                    vol.index = v.apply32(vol.index);
                }
            }
            E::VolumeLen(i, v) => {
                if let Some(vol) = pick(&mut m.volumes, *i) {
                    vol.len = v.apply(vol.len);
                }
            }
            E::VolumeName(i, name) => {
                if let Some(vol) = pick(&mut m.volumes, *i) {
                    vol.name = name.clone();
                }
            }
            E::DropLayer(i) => {
                if !m.layers.is_empty() {
                    let i = *i as usize % m.layers.len();
                    m.layers.remove(i);
                }
            }
            E::DuplicateLayer(i) => {
                if let Some(layer) = pick(&mut m.layers, *i).cloned() {
                    m.layers.push(layer);
                }
            }
            E::SwapLayers(a, b) => {
                let n = m.layers.len();
                if n > 0 {
                    m.layers.swap(*a as usize % n, *b as usize % n);
                }
            }
            E::LayerCompressedLen(i, v) => {
                if let Some(layer) = pick(&mut m.layers, *i) {
                    layer.compressed_len = v.apply(layer.compressed_len);
                }
            }
            E::LayerUncompressedLen(i, v) => {
                if let Some(layer) = pick(&mut m.layers, *i) {
                    layer.uncompressed_len = v.apply(layer.uncompressed_len);
                }
            }
            E::ToggleCompression(i) => {
                if let Some(layer) = pick(&mut m.layers, *i) {
                    layer.compression = match layer.compression {
                        Compression::Zstd => Compression::Xz,
                        Compression::Xz => Compression::Zstd,
                    };
                }
            }
            E::DropFrame(l, f) => {
                if let Some(layer) = pick(&mut m.layers, *l) {
                    if !layer.frames.is_empty() {
                        let f = *f as usize % layer.frames.len();
                        layer.frames.remove(f);
                    }
                }
            }
            E::DuplicateFrame(l, f) => {
                if let Some(layer) = pick(&mut m.layers, *l) {
                    if let Some(frame) = pick(&mut layer.frames, *f).cloned() {
                        layer.frames.push(frame);
                    }
                }
            }
            E::FrameVolume(l, f, v) => with_frame!(l, f, |fr| fr.volume = v.apply32(fr.volume)),
            E::FrameOffset(l, f, v) => with_frame!(l, f, |fr| fr.offset = v.apply(fr.offset)),
            E::FrameCompressedLen(l, f, v) => {
                with_frame!(l, f, |fr| fr.compressed_len = v.apply(fr.compressed_len))
            }
            E::FrameUncompressedLen(l, f, v) => {
                with_frame!(l, f, |fr| fr.uncompressed_len =
                    v.apply(fr.uncompressed_len))
            }
            E::FrameSha(l, f, edit) => {
                let other = m
                    .layers
                    .iter()
                    .flat_map(|l| l.frames.iter())
                    .last()
                    .map(|f| f.sha256.clone())
                    .unwrap_or_default();
                with_frame!(l, f, |fr| {
                    fr.sha256 = match edit {
                        ShaEdit::Empty => String::new(),
                        ShaEdit::Short => fr.sha256[..fr.sha256.len().min(8)].to_string(),
                        ShaEdit::Upper => fr.sha256.to_uppercase(),
                        ShaEdit::OtherFrame => other.clone(),
                    }
                })
            }
            E::ConfigJson(text) => m.image.config_json = text.clone().into(),
            E::DropDocuments => m.image.documents = None,
            E::DocumentsOffset(v) => {
                if let Some(d) = &mut m.image.documents {
                    d.offset = v.apply(d.offset)
                }
            }
            E::DocumentsManifestLen(v) => {
                if let Some(d) = &mut m.image.documents {
                    d.manifest_len = v.apply(d.manifest_len)
                }
            }
            E::DocumentsConfigLen(v) => {
                if let Some(d) = &mut m.image.documents {
                    d.config_len = v.apply(d.config_len)
                }
            }
        }
    }
}

/// One volume of a package being edited: its bytes and where its header sits.
struct Volume {
    name: String,
    bytes: Vec<u8>,
    header_at: usize,
}

impl Volume {
    fn header(&self) -> Option<Header> {
        Header::decode(
            self.bytes
                .get(self.header_at..self.header_at + HEADER_LEN as usize)?,
        )
        .ok()
    }

    fn footer(&self) -> Option<Footer> {
        let at = self.bytes.len().checked_sub(FOOTER_LEN as usize)?;
        Footer::decode(&self.bytes[at..]).ok()
    }

    fn put(&mut self, at: usize, record: &[u8]) {
        if self.bytes.len() < at + record.len() {
            self.bytes.resize(at + record.len(), 0);
        }
        self.bytes[at..at + record.len()].copy_from_slice(record);
    }
}

/// Replace the 8-byte checksum that ends the checked part of a record with garbage.
fn stale(record: &mut [u8], checksum_at: usize) {
    for b in &mut record[checksum_at..checksum_at + 8] {
        *b ^= 0x5a;
    }
}

impl Mutations {
    /// The package's files after the edits: `(name, bytes)`, the main file first.
    pub fn apply(&self) -> Package {
        let bases = base_packages();
        let base = &bases[self.base as usize % bases.len()];
        let mut volumes: Vec<Volume> = base
            .iter()
            .enumerate()
            .map(|(i, (name, bytes))| {
                let header_at = if i == 0 {
                    Footer::decode(&bytes[bytes.len() - FOOTER_LEN as usize..])
                        .map(|f| bytes.len() - f.volume_len as usize)
                        .unwrap_or(0)
                } else {
                    0
                };
                Volume {
                    name: name.clone(),
                    bytes: bytes.clone(),
                    header_at,
                }
            })
            .collect();
        let edits: Vec<&Edit> = self.edits.iter().take(MAX_EDITS).collect();
        let mut headers: Vec<Option<Header>> = volumes.iter().map(Volume::header).collect();
        let mut footers: Vec<Option<Footer>> = volumes.iter().map(Volume::footer).collect();
        let Some(h0) = headers[0].clone() else {
            return volumes.into_iter().map(|v| (v.name, v.bytes)).collect();
        };
        let manifest_at = volumes[0].header_at + h0.manifest_offset as usize;
        let manifest_end = manifest_at + h0.manifest_len as usize;
        let original = volumes[0].bytes[manifest_at..manifest_end].to_vec();
        let mut manifest = RunManifest::from_bytes(&original).expect("the base manifest");

        // Manifest edits, then the manifest back in place with its payload id.
        let mut raw: Option<Vec<u8>> = None;
        for edit in &edits {
            match edit {
                Edit::Manifest(e) => e.apply(&mut manifest),
                Edit::ManifestBytes(bytes) => {
                    raw = Some(bytes.iter().take(4096).copied().collect())
                }
                _ => {}
            }
        }
        let manifest_bytes = raw.unwrap_or_else(|| manifest.to_bytes());
        if manifest_bytes != original {
            volumes[0].put(manifest_at, &manifest_bytes);
            let id = format::payload_id(&manifest_bytes);
            for (h, f) in headers.iter_mut().zip(footers.iter_mut()) {
                if !self.stale_payload_id {
                    if let Some(h) = h {
                        h.payload_id = id;
                    }
                    if let Some(f) = f {
                        f.payload_id_prefix.copy_from_slice(&id[..16]);
                    }
                }
            }
            if let Some(h) = &mut headers[0] {
                h.manifest_len = manifest_bytes.len() as u64;
            }
            if let Some(f) = &mut footers[0] {
                f.manifest_len = manifest_bytes.len() as u64;
            }
        }

        // Header and footer fields.
        let count = volumes.len();
        for edit in &edits {
            match edit {
                Edit::Header {
                    volume,
                    field,
                    value,
                } => {
                    if let Some(h) = &mut headers[*volume as usize % count] {
                        use HeaderField as F;
                        match field {
                            F::Version => h.version = value.apply32(h.version),
                            F::PayloadId => h.payload_id[0] ^= value.apply(0) as u8 | 1,
                            F::VolumeIndex => h.volume_index = value.apply32(h.volume_index),
                            F::VolumeCount => h.volume_count = value.apply32(h.volume_count),
                            F::ManifestOffset => h.manifest_offset = value.apply(h.manifest_offset),
                            F::ManifestLen => h.manifest_len = value.apply(h.manifest_len),
                            F::VolumeLen => h.volume_len = value.apply(h.volume_len),
                            F::PayloadLen => h.payload_len = value.apply(h.payload_len),
                        }
                    }
                }
                Edit::Footer {
                    volume,
                    field,
                    value,
                } => {
                    if let Some(f) = &mut footers[*volume as usize % count] {
                        use FooterField as F;
                        match field {
                            F::Version => f.version = value.apply32(f.version),
                            F::VolumeIndex => f.volume_index = value.apply32(f.volume_index),
                            F::VolumeLen => f.volume_len = value.apply(f.volume_len),
                            F::ManifestOffset => f.manifest_offset = value.apply(f.manifest_offset),
                            F::ManifestLen => f.manifest_len = value.apply(f.manifest_len),
                            F::PayloadIdPrefix => {
                                f.payload_id_prefix[0] ^= value.apply(0) as u8 | 1
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for ((volume, header), footer) in volumes.iter_mut().zip(&headers).zip(&footers) {
            if let Some(h) = header {
                let mut record = h.encode();
                if self.stale_checksums {
                    stale(&mut record, 88);
                }
                let at = volume.header_at;
                volume.put(at, &record);
            }
            if let Some(f) = footer {
                let mut record = f.encode();
                if self.stale_checksums {
                    stale(&mut record, 56);
                }
                let at = volume.bytes.len() - FOOTER_LEN as usize;
                volume.put(at, &record);
            }
        }

        // Byte-level edits and files, last.
        for edit in &edits {
            match edit {
                Edit::Flip { volume, at, xor } => {
                    let v = &mut volumes[*volume as usize % count];
                    if !v.bytes.is_empty() {
                        let at = *at as usize % v.bytes.len();
                        v.bytes[at] ^= xor | 1;
                    }
                }
                Edit::Truncate { volume, cut } => {
                    let v = &mut volumes[*volume as usize % count];
                    let keep = v.bytes.len().saturating_sub(*cut as usize % 70_000);
                    v.bytes.truncate(keep);
                }
                Edit::Append { volume, bytes } => {
                    let v = &mut volumes[*volume as usize % count];
                    v.bytes.extend(bytes.iter().take(4096));
                }
                _ => {}
            }
        }
        let mut files: Package = Vec::new();
        for (i, v) in volumes.into_iter().enumerate() {
            let dropped = edits
                .iter()
                .any(|e| matches!(e, Edit::DropVolumeFile(n) if i > 0 && *n as usize % count == i));
            let copied = edits
                .iter()
                .any(|e| matches!(e, Edit::CopyVolumeFile(n) if *n as usize % count == i));
            if copied {
                files.push((format!("{}.copy", v.name), v.bytes.clone()));
            }
            if !dropped {
                files.push((v.name, v.bytes));
            }
        }
        // The main file stays first.
        if let Some(main) = files.iter().position(|(n, _)| n == &base[0].0) {
            let entry = files.remove(main);
            files.insert(0, entry);
        }
        files
    }
}
