//! Writing `.run` files: stub ‖ header ‖ image documents ‖ manifest ‖ layer frames ‖ footer,
//! optionally split into volumes.
//!
//! Inputs are plain structs: a stub executable, the image's identity and config, and layer
//! blob files. Layers that already are framed zstd are copied byte for byte (the kernel copies
//! them with `copy_file_range`); other layers (gzip, plain tar, zstd in one huge frame) are
//! re-framed; `xz` recompresses each frame as an independent xz stream. Everything is written
//! to temporary files beside the output and renamed into place at the end. This module knows
//! nothing about the image store: `sealer pack` resolves the image and calls [`write`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::codec::{self, Compression, Level};
use crate::format::{
    self, align_up, DocumentsEntry, Footer, FrameEntry, Header, ImageInfo, JsonText, LayerEntry,
    RunManifest, VolumeEntry, ALIGN, FOOTER_LEN, FORMAT_VERSION, HEADER_LEN, MANIFEST_FORMAT,
};
use crate::frames::{scan_frames, Frame, FramedWriter};
use crate::source::MappedFile;

/// Frames larger than this (uncompressed) are re-framed rather than copied.
const MAX_COPY_FRAME: u64 = 32 << 20;

/// One layer blob to pack, as the image store holds it.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub path: PathBuf,
    /// OCI media type, e.g. `application/vnd.oci.image.layer.v1.tar+zstd`.
    pub media_type: String,
    /// OCI digest of the blob, `sha256:…`.
    pub digest: String,
    /// sha256 of the uncompressed tar, `sha256:…`.
    pub diff_id: String,
    /// The blob's frame index if the store kept it (what `FramedWriter` reported). Packing
    /// then copies the blob without reading it; without it the blob is scanned and hashed.
    pub frames: Option<Vec<Frame>>,
    /// Copy the frames as they are whatever level or compression the package asks for: for a
    /// layer whose frames must stay identical across builds and packs (the container-images
    /// layer, whose already-compressed blobs are stored frames). The layer stays zstd.
    pub keep_frames: bool,
}

/// Everything [`write`] needs.
#[derive(Debug, Clone)]
pub struct PackSpec {
    /// The installer executable that becomes the head of the file (`sealer-stub`).
    pub stub: PathBuf,
    pub image_name: String,
    pub manifest_digest: String,
    /// The OCI image manifest bytes (may be empty).
    pub manifest_json: String,
    pub config_digest: String,
    /// The OCI image config bytes.
    pub config_json: String,
    pub layers: Vec<LayerBlob>,
    pub compression: Compression,
    /// `None`: zstd frames are copied as they are (other layers are framed at the zstd default)
    /// and xz uses its default. `Some(level)` (a level of `compression`): every frame is
    /// compressed at it, zstd frames included; the frame boundaries stay, so decoding stays
    /// parallel.
    pub level: Option<Level>,
    /// Largest size of any output file; `None` writes one file.
    pub split_size: Option<u64>,
    pub output: PathBuf,
}

/// What [`write`] produced.
#[derive(Debug, Clone)]
pub struct PackReport {
    /// The executable first, then the volumes.
    pub files: Vec<PathBuf>,
    pub payload_id: String,
    pub manifest: RunManifest,
    /// Layers whose frames were copied without recompression.
    pub copied_layers: usize,
}

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer {} is not a layer this packer understands: {reason}", path.display())]
    Layer { path: PathBuf, reason: String },
    #[error("{level} was asked for a {compression} package")]
    LevelMismatch {
        level: Level,
        compression: Compression,
    },
    #[error("layer {} is damaged: {reason}", path.display())]
    LayerDamaged { path: PathBuf, reason: String },
    #[error("signing the package: {0}")]
    Sign(Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "split size {split} is too small: it must hold the stub ({stub} bytes) and a whole frame \
         ({frame} bytes); use at least {needed}"
    )]
    SplitTooSmall {
        split: u64,
        stub: u64,
        frame: u64,
        needed: u64,
    },
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> WriteError + 'p {
    move |source| WriteError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A layer ready to be laid out: a file whose byte ranges are the frames.
struct PreparedLayer {
    file: PathBuf,
    frames: Vec<Frame>,
    entry: LayerEntry,
    /// The store's blob goes in byte for byte (not recompressed).
    copied: bool,
    /// Its frames come from the store's index, not from reading these bytes: each is checked
    /// while it is copied ([`copy_checked`]).
    check_on_copy: bool,
}

/// Where one contiguous run of a layer's frames goes.
struct Segment {
    layer: usize,
    volume: u32,
    /// Offset relative to the volume header.
    offset: u64,
    /// Offset in the layer's prepared file, and length.
    source_offset: u64,
    len: u64,
}

/// Signs the manifest bytes of a package being written and returns the signature text to
/// store in its signature record (`crate::signature`).
pub type ManifestSigner<'a> =
    &'a (dyn Fn(&[u8]) -> Result<String, Box<dyn std::error::Error + Send + Sync>> + Sync);

/// Pack `spec` into `spec.output` (and volumes beside it when split).
pub fn write(
    spec: &PackSpec,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PackReport, WriteError> {
    write_signed(spec, None, progress)
}

/// [`write`], storing the signature `signer` makes of the manifest bytes in the package's
/// signature record before any file is renamed into place.
pub fn write_signed(
    spec: &PackSpec,
    signer: Option<ManifestSigner<'_>>,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PackReport, WriteError> {
    if let Some(level) = spec.level.filter(|l| l.compression() != spec.compression) {
        return Err(WriteError::LevelMismatch {
            level,
            compression: spec.compression,
        });
    }
    let out_dir = match spec.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_name = spec
        .output
        .file_name()
        .ok_or_else(|| WriteError::Io {
            what: "writing",
            path: spec.output.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the output path has no name"),
        })?
        .to_string_lossy()
        .into_owned();
    let scratch = tempdir_in(&out_dir)?;
    let result = write_in(spec, &out_dir, &out_name, &scratch, signer, progress);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, WriteError> {
    for attempt in 0..100u32 {
        let path = dir.join(format!(".sealer-pack-{}-{attempt}", std::process::id()));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating a scratch directory in", dir)(e)),
        }
    }
    Err(WriteError::Io {
        what: "creating a scratch directory in",
        path: dir.to_path_buf(),
        source: io::Error::other("too many leftover scratch directories"),
    })
}

fn write_in(
    spec: &PackSpec,
    out_dir: &Path,
    out_name: &str,
    scratch: &Path,
    signer: Option<ManifestSigner<'_>>,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PackReport, WriteError> {
    let mut stub = fs::read(&spec.stub).map_err(io_err("reading the stub", &spec.stub))?;
    let stub_len = stub.len() as u64;
    // What `sh app.run` says instead of a syntax error; it sits in the padding after the stub.
    let notice = crate::shell_notice::for_stub(&stub);
    if let Some(notice) = &notice {
        stub[6..16].copy_from_slice(&notice.ident_tail);
        stub.extend_from_slice(&notice.script);
    }
    let mut prepared = Vec::with_capacity(spec.layers.len());
    for (index, layer) in spec.layers.iter().enumerate() {
        prepared.push(prepare_layer(spec, layer, index, scratch, progress)?);
    }

    let header_at = format::header_offset_after(stub.len() as u64);
    // The image documents sit between the header and the manifest, which only names them.
    let (oci_manifest, config) = (spec.manifest_json.as_bytes(), spec.config_json.as_bytes());
    let documents_entry = DocumentsEntry {
        offset: HEADER_LEN,
        manifest_len: oci_manifest.len() as u64,
        config_len: config.len() as u64,
        sha256: format::documents_sha256(oci_manifest, config),
    };
    let manifest_at = HEADER_LEN + (oci_manifest.len() + config.len()) as u64;
    let split = spec.split_size.unwrap_or(u64::MAX);
    if let Some(split) = spec.split_size {
        let largest = prepared
            .iter()
            .flat_map(|l| l.frames.iter().map(|f| f.compressed_len))
            .max()
            .unwrap_or(0);
        // Volume 0 must hold the stub, header, documents and manifest; every volume a whole
        // frame.
        let needed = (header_at + manifest_at + ALIGN + FOOTER_LEN + (1 << 20))
            .max(ALIGN + largest + FOOTER_LEN);
        if split < needed {
            return Err(WriteError::SplitTooSmall {
                split,
                stub: stub_len,
                frame: largest,
                needed,
            });
        }
    }

    // The manifest records the layout and the layout starts after the manifest: lay out with a
    // reserved manifest size until the manifest fits in it.
    let mut reserve = 4096u64;
    let (mut manifest, manifest_bytes, segments, volume_lens) = loop {
        let (layers, segments, volume_lens) =
            lay_out(&prepared, header_at, manifest_at + reserve, split, stub_len)?;
        let volumes = volume_lens
            .iter()
            .enumerate()
            .map(|(i, len)| VolumeEntry {
                index: i as u32,
                len: *len,
                name: volume_name(out_name, i as u32),
            })
            .collect();
        let manifest = RunManifest {
            format: MANIFEST_FORMAT.to_string(),
            version: FORMAT_VERSION,
            image: ImageInfo {
                name: spec.image_name.clone(),
                manifest_digest: spec.manifest_digest.clone(),
                manifest_json: JsonText::default(),
                config_digest: spec.config_digest.clone(),
                config_json: JsonText::default(),
                documents: Some(documents_entry.clone()),
            },
            layers,
            payload_len: volume_lens.iter().sum(),
            volumes,
        };
        let bytes = manifest.to_bytes();
        if bytes.len() as u64 <= reserve {
            break (manifest, bytes, segments, volume_lens);
        }
        reserve = align_up(bytes.len() as u64 + 1024, 4096);
    };
    let payload_id = format::payload_id(&manifest_bytes);
    let signature = match signer {
        Some(sign) => {
            let text = sign(&manifest_bytes).map_err(WriteError::Sign)?;
            Some(crate::signature::encode_slot(1, &text).map_err(|e| WriteError::Sign(e.into()))?)
        }
        None => None,
    };
    let total: u64 = segments.iter().map(|s| s.len).sum();
    let mut done = 0u64;

    let mut temp_files = PartialFiles::default();
    let mut final_files = Vec::new();
    for (volume, volume_len) in volume_lens.iter().enumerate() {
        let volume = volume as u32;
        let name = volume_name(out_name, volume);
        let temp = out_dir.join(format!(".{name}.partial-{}", std::process::id()));
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if volume == 0 { 0o755 } else { 0o644 })
            .open(&temp)
            .map_err(io_err("creating", &temp))?;
        temp_files.0.push(temp.clone());
        final_files.push(out_dir.join(&name));
        let base = if volume == 0 {
            out.write_all(&stub)
                .map_err(io_err("copying the stub into", &temp))?;
            header_at
        } else {
            0
        };
        let (manifest_offset, manifest_len) = if volume == 0 {
            (manifest_at, manifest_bytes.len() as u64)
        } else {
            (0, 0)
        };
        let header = Header {
            version: FORMAT_VERSION,
            payload_id,
            volume_index: volume,
            volume_count: volume_lens.len() as u32,
            manifest_offset,
            manifest_len,
            volume_len: *volume_len,
            payload_len: manifest.payload_len,
        };
        write_at(&mut out, base, &header.encode(), &temp)?;
        if volume == 0 {
            write_at(&mut out, base + HEADER_LEN, oci_manifest, &temp)?;
            let config_at = HEADER_LEN + oci_manifest.len() as u64;
            write_at(&mut out, base + config_at, config, &temp)?;
            write_at(&mut out, base + manifest_at, &manifest_bytes, &temp)?;
            if let Some(slot) = &signature {
                let at = base + crate::signature::SLOT_OFFSETS[0];
                write_at(&mut out, at, slot, &temp)?;
            }
        }
        for segment in segments.iter().filter(|s| s.volume == volume) {
            let layer = &prepared[segment.layer];
            if layer.check_on_copy {
                copy_checked(layer, segment, &out, base, &temp)?;
            } else {
                copy_plain(layer, segment, &mut out, base, &temp)?;
            }
            done += segment.len;
            if let Some(progress) = progress {
                progress(done, total);
            }
        }
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&payload_id[..16]);
        let footer = Footer {
            version: FORMAT_VERSION,
            volume_index: volume,
            volume_len: *volume_len,
            manifest_offset,
            manifest_len,
            payload_id_prefix: prefix,
        };
        write_at(
            &mut out,
            base + volume_len - FOOTER_LEN,
            &footer.encode(),
            &temp,
        )?;
        // No fsync (cp does none either): the rename below makes the name appear only once
        // the file is complete, and the reader detects any copy that is cut short.
    }
    for (temp, target) in temp_files.0.iter().zip(&final_files) {
        fs::rename(temp, target).map_err(io_err("renaming into place", target))?;
    }
    temp_files.0.clear();
    if let Ok(meta) = fs::metadata(&final_files[0]) {
        let mut perms = meta.permissions();
        perms.set_mode(0o755);
        let _ = fs::set_permissions(&final_files[0], perms);
    }
    // What a reader sees: the documents filled in from beside the manifest.
    manifest.image.manifest_json = spec.manifest_json.clone().into();
    manifest.image.config_json = spec.config_json.clone().into();
    Ok(PackReport {
        files: final_files,
        payload_id: hex::encode(payload_id),
        copied_layers: prepared.iter().filter(|l| l.copied).count(),
        manifest,
    })
}

/// Copy a segment of a store blob that goes in as it is, checking every frame against the
/// store's index on the way (sha256 and declared size), in parallel: the bytes are read once,
/// hashed and written by the same worker. Without this a damaged store blob would pack into a
/// file that fails its own `verify`.
fn copy_checked(
    layer: &PreparedLayer,
    segment: &Segment,
    out: &File,
    base: u64,
    temp: &Path,
) -> Result<(), WriteError> {
    use std::os::unix::fs::FileExt;
    let file = File::open(&layer.file).map_err(io_err("opening", &layer.file))?;
    let map = MappedFile::new(&file).map_err(io_err("mapping", &layer.file))?;
    let end = segment.source_offset + segment.len;
    let first = layer
        .frames
        .partition_point(|f| f.offset < segment.source_offset);
    let count = layer.frames[first..].partition_point(|f| f.offset < end);
    let frames = &layer.frames[first..first + count];
    let at = base + segment.offset;
    crate::frames::check_and_copy_frames(map.as_slice(), frames, |frame, data| {
        out.write_all_at(data, at + (frame.offset - segment.source_offset))
    })
    .map_err(|(index, problem)| {
        let frame = &frames[index];
        match problem {
            crate::codec::FrameProblem::Unreadable(source)
                if map.as_slice().len() as u64 >= end =>
            {
                WriteError::Io {
                    what: "copying layer frames into",
                    path: temp.to_path_buf(),
                    source,
                }
            }
            problem => WriteError::LayerDamaged {
                path: layer.file.clone(),
                reason: format!(
                    "frame {} (bytes {}–{}) is corrupt: {}; build or pull the image again",
                    first + index + 1,
                    frame.offset,
                    frame.offset.saturating_add(frame.compressed_len),
                    problem.detail()
                ),
            },
        }
    })
}

/// Copy a segment whose frames were hashed from these very bytes (a file this pack wrote, or a
/// store blob it scanned and checked against its digest).
fn copy_plain(
    layer: &PreparedLayer,
    segment: &Segment,
    out: &mut File,
    base: u64,
    temp: &Path,
) -> Result<(), WriteError> {
    let mut src = File::open(&layer.file).map_err(io_err("opening", &layer.file))?;
    src.seek(SeekFrom::Start(segment.source_offset))
        .map_err(io_err("reading", &layer.file))?;
    out.seek(SeekFrom::Start(base + segment.offset))
        .map_err(io_err("writing", temp))?;
    let copied = io::copy(&mut (&mut src).take(segment.len), out)
        .map_err(io_err("copying layer frames into", temp))?;
    if copied != segment.len {
        return Err(WriteError::Io {
            what: "copying layer frames from",
            path: layer.file.clone(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the blob is shorter than its frames",
            ),
        });
    }
    Ok(())
}

/// Volumes being written under temporary names; removed unless they were renamed into place,
/// so a failed pack (a full disk, a damaged blob) leaves nothing beside the output.
#[derive(Default)]
struct PartialFiles(Vec<PathBuf>);

impl Drop for PartialFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

fn write_at(out: &mut File, at: u64, bytes: &[u8], path: &Path) -> Result<(), WriteError> {
    out.seek(SeekFrom::Start(at))
        .and_then(|_| out.write_all(bytes))
        .map_err(io_err("writing", path))
}

/// The file name of volume `index` for an output named `name` (volume 0 is `name` itself).
pub fn volume_name(name: &str, index: u32) -> String {
    if index == 0 {
        name.to_string()
    } else {
        format!("{name}.v{index:03}")
    }
}

#[allow(clippy::type_complexity)]
fn lay_out(
    prepared: &[PreparedLayer],
    header_at: u64,
    manifest_reserve: u64,
    split: u64,
    stub_len: u64,
) -> Result<(Vec<LayerEntry>, Vec<Segment>, Vec<u64>), WriteError> {
    // Capacity of a volume's payload (header to end, footer included).
    let capacity = |volume: u32| {
        if volume == 0 {
            split.saturating_sub(header_at)
        } else {
            split
        }
    };
    let mut volume = 0u32;
    let mut cursor = align_up(HEADER_LEN + manifest_reserve, ALIGN);
    if cursor + FOOTER_LEN > capacity(0) {
        return Err(WriteError::SplitTooSmall {
            split,
            stub: stub_len,
            frame: 0,
            needed: header_at + cursor + FOOTER_LEN,
        });
    }
    let mut volume_lens = Vec::new();
    let mut layers = Vec::with_capacity(prepared.len());
    let mut segments: Vec<Segment> = Vec::new();
    for (index, layer) in prepared.iter().enumerate() {
        cursor = align_up(cursor, ALIGN);
        let mut entry = layer.entry.clone();
        entry.frames.clear();
        let mut open_segment: Option<Segment> = None;
        for frame in &layer.frames {
            if cursor + frame.compressed_len + FOOTER_LEN > capacity(volume) {
                if let Some(seg) = open_segment.take() {
                    segments.push(seg);
                }
                volume_lens.push(cursor + FOOTER_LEN);
                volume += 1;
                cursor = ALIGN;
                if cursor + frame.compressed_len + FOOTER_LEN > capacity(volume) {
                    return Err(WriteError::SplitTooSmall {
                        split,
                        stub: stub_len,
                        frame: frame.compressed_len,
                        needed: ALIGN + frame.compressed_len + FOOTER_LEN,
                    });
                }
            }
            match &mut open_segment {
                Some(seg) => seg.len += frame.compressed_len,
                None => {
                    open_segment = Some(Segment {
                        layer: index,
                        volume,
                        offset: cursor,
                        source_offset: frame.offset,
                        len: frame.compressed_len,
                    })
                }
            }
            entry.frames.push(FrameEntry {
                volume,
                offset: cursor,
                compressed_len: frame.compressed_len,
                uncompressed_len: frame.uncompressed_len,
                sha256: frame.sha256.clone(),
                blake3: frame.blake3.clone(),
            });
            cursor += frame.compressed_len;
        }
        if let Some(seg) = open_segment.take() {
            segments.push(seg);
        }
        layers.push(entry);
    }
    volume_lens.push(cursor + FOOTER_LEN);
    Ok((layers, segments, volume_lens))
}

fn is_zstd(media_type: &str) -> bool {
    media_type.ends_with("+zstd") || media_type.ends_with(".zstd")
}

fn is_gzip(media_type: &str) -> bool {
    media_type.ends_with("+gzip")
        || media_type.ends_with(".gzip")
        || media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
}

fn layer_error(blob: &LayerBlob, reason: impl Into<String>) -> WriteError {
    WriteError::Layer {
        path: blob.path.clone(),
        reason: reason.into(),
    }
}

fn map_blob(blob: &LayerBlob) -> Result<Option<MappedFile>, WriteError> {
    let file = File::open(&blob.path).map_err(io_err("opening layer blob", &blob.path))?;
    let len = file
        .metadata()
        .map_err(io_err("reading layer blob", &blob.path))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    MappedFile::new(&file)
        .map(Some)
        .map_err(io_err("mapping layer blob", &blob.path))
}

/// How one layer gets into the package: chosen once, from what the store holds and what was
/// asked for, by [`plan_layer`], then carried out by one function.
enum LayerPlan {
    /// Framed zstd with the store's frame index, kept as it is: checked against the index and
    /// copied.
    CopyIndexed(Vec<Frame>),
    /// Framed zstd without an index, kept as it is: indexed by a scan, its digest checked, copied.
    CopyScanned(Vec<Frame>),
    /// Framed zstd whose frames are recompressed (an explicit level, or xz).
    Recompress(Vec<Frame>),
    /// Anything else (tar, tar+gzip, zstd with oversized frames): decoded, cut into frames at
    /// the asked zstd level, then recompressed when the package is xz.
    Reframe,
}

/// Choose the plan for `blob`; the blob is mapped (and returned) unless the plan copies it
/// by its index without reading it here.
fn plan_layer(
    spec: &PackSpec,
    blob: &LayerBlob,
) -> Result<(LayerPlan, Option<MappedFile>), WriteError> {
    // Zstd frames keep their bytes unless a level or another compression was asked for.
    let keep_zstd =
        (spec.compression == Compression::Zstd && spec.level.is_none()) || blob.keep_frames;
    let zstd = is_zstd(&blob.media_type);
    let small = |frames: &[Frame]| frames.iter().all(|f| f.uncompressed_len <= MAX_COPY_FRAME);
    // An index written before frames carried their BLAKE3 is scanned like no index: every
    // frame of a package names its BLAKE3.
    let indexed = blob
        .frames
        .as_ref()
        .filter(|frames| frames.iter().all(|f| f.blake3.is_some()));
    if let (Some(frames), true, true) = (indexed, keep_zstd, zstd) {
        let len = fs::metadata(&blob.path)
            .map_err(io_err("reading layer blob", &blob.path))?
            .len();
        let contiguous = frames.iter().try_fold(0u64, |at, f| {
            (f.offset == at).then_some(at + f.compressed_len)
        });
        if contiguous == Some(len) && small(frames) {
            return Ok((LayerPlan::CopyIndexed(frames.clone()), None));
        }
    }
    let map = map_blob(blob)?;
    let bytes: &[u8] = map.as_ref().map(|m| m.as_slice()).unwrap_or(&[]);
    let scanned = if zstd {
        scan_frames(bytes).ok().filter(|f| small(f))
    } else {
        None
    };
    let plan = match (scanned, keep_zstd) {
        (Some(frames), true) => LayerPlan::CopyScanned(frames),
        (Some(frames), false) => LayerPlan::Recompress(frames),
        (None, _) => LayerPlan::Reframe,
    };
    Ok((plan, map))
}

fn prepare_layer(
    spec: &PackSpec,
    blob: &LayerBlob,
    index: usize,
    scratch: &Path,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PreparedLayer, WriteError> {
    let (plan, map) = plan_layer(spec, blob)?;
    let bytes: &[u8] = map.as_ref().map(|m| m.as_slice()).unwrap_or(&[]);
    match plan {
        LayerPlan::CopyIndexed(frames) => copy_indexed(blob, frames),
        LayerPlan::CopyScanned(frames) => copy_scanned(blob, bytes, frames),
        LayerPlan::Recompress(frames) => {
            recompress(spec, blob, index, scratch, bytes, frames, None, progress)
        }
        LayerPlan::Reframe => reframe_layer(spec, blob, index, scratch, bytes, progress),
    }
}

fn layer_entry(
    blob: &LayerBlob,
    compression: Compression,
    compressed_len: u64,
    uncompressed_len: u64,
    digest: String,
) -> LayerEntry {
    LayerEntry {
        digest,
        diff_id: blob.diff_id.clone(),
        media_type: blob.media_type.clone(),
        compression,
        compressed_len,
        uncompressed_len,
        frames: Vec::new(),
    }
}

/// [`LayerPlan::CopyIndexed`]: the blob copied as is; every frame is checked against the index
/// while it is copied ([`copy_checked`]).
fn copy_indexed(blob: &LayerBlob, frames: Vec<Frame>) -> Result<PreparedLayer, WriteError> {
    Ok(copied_as_is(blob, frames, true))
}

/// [`LayerPlan::CopyScanned`]: the frames are indexed from these very bytes, so the blob's
/// digest is what proves they are the image's.
fn copy_scanned(
    blob: &LayerBlob,
    bytes: &[u8],
    frames: Vec<Frame>,
) -> Result<PreparedLayer, WriteError> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    let named = blob
        .digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64);
    if named && actual != blob.digest {
        return Err(WriteError::LayerDamaged {
            path: blob.path.clone(),
            reason: format!(
                "its content hashes to {actual}, but the image says {}; build or pull the \
                 image again",
                blob.digest
            ),
        });
    }
    Ok(copied_as_is(blob, frames, false))
}

/// A store blob that goes into the package byte for byte, under its own digest.
fn copied_as_is(blob: &LayerBlob, frames: Vec<Frame>, check_on_copy: bool) -> PreparedLayer {
    let compressed = frames.iter().map(|f| f.compressed_len).sum();
    let uncompressed = frames.iter().map(|f| f.uncompressed_len).sum();
    PreparedLayer {
        file: blob.path.clone(),
        entry: layer_entry(
            blob,
            Compression::Zstd,
            compressed,
            uncompressed,
            blob.digest.clone(),
        ),
        frames,
        copied: true,
        check_on_copy,
    }
}

/// The level of the frames this pack writes.
fn level(spec: &PackSpec) -> Level {
    spec.level.unwrap_or(spec.compression.default_level())
}

/// The zstd level of re-framed layers: the pack's level, or the fastest when the frames are
/// only an intermediate for xz.
fn zstd_level(spec: &PackSpec) -> i32 {
    match spec.compression {
        Compression::Zstd => level(spec).zstd(),
        Compression::Xz => 1,
    }
}

/// [`LayerPlan::Reframe`]: decode whatever the store holds to tar and write framed zstd into
/// the scratch directory, checking the diff_id on the way; xz packages recompress that.
fn reframe_layer(
    spec: &PackSpec,
    blob: &LayerBlob,
    index: usize,
    scratch: &Path,
    bytes: &[u8],
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PreparedLayer, WriteError> {
    let framed_path = scratch.join(format!("layer-{index}.zst"));
    let tar: Box<dyn Read + '_> = if is_zstd(&blob.media_type) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(bytes)
                .map_err(|e| layer_error(blob, format!("not zstd: {e}")))?,
        )
    } else if is_gzip(&blob.media_type) {
        Box::new(flate2::read::MultiGzDecoder::new(bytes))
    } else if blob.media_type.ends_with(".tar") || blob.media_type.ends_with("layer.v1.tar") {
        Box::new(bytes)
    } else {
        return Err(layer_error(
            blob,
            format!(
                "media type {} is not tar, tar+gzip or tar+zstd",
                blob.media_type
            ),
        ));
    };
    let out = File::create(&framed_path).map_err(io_err("creating", &framed_path))?;
    let layer = reframe(tar, BufWriter::new(out), zstd_level(spec))
        .map_err(|e| layer_error(blob, format!("cannot be read: {e}")))?;
    let expected = blob.diff_id.trim_start_matches("sha256:");
    if !expected.is_empty() && layer.diff_id != expected {
        return Err(layer_error(
            blob,
            format!(
                "its content hashes to sha256:{}, but the image says diff_id {}",
                layer.diff_id, blob.diff_id
            ),
        ));
    }
    if spec.compression == Compression::Zstd {
        return Ok(PreparedLayer {
            file: framed_path,
            frames: layer.frames.clone(),
            entry: layer_entry(
                blob,
                Compression::Zstd,
                layer.compressed_len,
                layer.uncompressed_len,
                format!("sha256:{}", layer.digest),
            ),
            copied: false,
            check_on_copy: false,
        });
    }
    let file = File::open(&framed_path).map_err(io_err("opening", &framed_path))?;
    let map = if layer.compressed_len == 0 {
        None
    } else {
        Some(MappedFile::new(&file).map_err(io_err("mapping", &framed_path))?)
    };
    let framed_bytes = map.as_ref().map(|m| m.as_slice()).unwrap_or(&[]);
    let digest = format!("sha256:{}", layer.digest);
    recompress(
        spec,
        blob,
        index,
        scratch,
        framed_bytes,
        layer.frames.clone(),
        Some(digest),
        progress,
    )
}

/// [`LayerPlan::Recompress`] (and the xz step of a reframed layer): every frame recompressed
/// on its own, in parallel, written in order. `zstd_digest` names the zstd blob an xz layer
/// stands for when it is not the store's blob. `progress` hears the layer's uncompressed bytes
/// done and in all after every frame (the long part of a pack at a high level).
#[allow(clippy::too_many_arguments)]
fn recompress(
    spec: &PackSpec,
    blob: &LayerBlob,
    index: usize,
    scratch: &Path,
    zstd_bytes: &[u8],
    zstd_frames: Vec<Frame>,
    zstd_digest: Option<String>,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PreparedLayer, WriteError> {
    let layer_total: u64 = zstd_frames.iter().map(|f| f.uncompressed_len).sum();
    let layer_done = std::sync::atomic::AtomicU64::new(0);
    let level = level(spec);
    let out_path = scratch.join(match spec.compression {
        Compression::Xz => format!("layer-{index}.xz"),
        Compression::Zstd => format!("layer-{index}.zst"),
    });
    let mut out = BufWriter::new(File::create(&out_path).map_err(io_err("creating", &out_path))?);
    let mut blob_hash = Sha256::new();
    let mut frames = Vec::with_capacity(zstd_frames.len());
    let mut offset = 0u64;
    let batch = rayon::current_num_threads().max(1) * 2;
    for chunk in zstd_frames.chunks(batch) {
        let packed: Vec<Result<Recompressed, String>> = chunk
            .par_iter()
            .map(|frame| {
                let start = frame.offset as usize;
                let compressed = &zstd_bytes[start..start + frame.compressed_len as usize];
                let mut plain = Vec::new();
                codec::decode_frame(
                    Compression::Zstd,
                    compressed,
                    frame.uncompressed_len,
                    &mut plain,
                )
                .map_err(|e| e.to_string())?;
                let bytes = codec::encode_frame(level, &plain).map_err(|e| e.to_string())?;
                let done = layer_done
                    .fetch_add(plain.len() as u64, std::sync::atomic::Ordering::Relaxed)
                    + plain.len() as u64;
                if let Some(progress) = progress {
                    progress(done, layer_total);
                }
                let (sha256, blake3) = crate::frames::frame_digests(&bytes);
                Ok(Recompressed {
                    sha256,
                    blake3,
                    uncompressed_len: plain.len() as u64,
                    bytes,
                })
            })
            .collect();
        for result in packed {
            let frame = result.map_err(|e| layer_error(blob, e))?;
            out.write_all(&frame.bytes)
                .map_err(io_err("writing", &out_path))?;
            blob_hash.update(&frame.bytes);
            frames.push(Frame {
                offset,
                compressed_len: frame.bytes.len() as u64,
                uncompressed_len: frame.uncompressed_len,
                sha256: frame.sha256,
                blake3: Some(frame.blake3),
            });
            offset += frame.bytes.len() as u64;
        }
    }
    out.flush().map_err(io_err("writing", &out_path))?;
    let uncompressed = frames.iter().map(|f| f.uncompressed_len).sum();
    // zstd: the digest of the new blob (what `load` stores); xz: the zstd blob it stands for.
    let digest = match spec.compression {
        Compression::Zstd => format!("sha256:{}", hex::encode(blob_hash.finalize())),
        Compression::Xz => zstd_digest.unwrap_or_else(|| blob.digest.clone()),
    };
    Ok(PreparedLayer {
        file: out_path,
        entry: layer_entry(blob, spec.compression, offset, uncompressed, digest),
        frames,
        copied: false,
        check_on_copy: false,
    })
}

/// One frame after recompression.
struct Recompressed {
    bytes: Vec<u8>,
    uncompressed_len: u64,
    sha256: String,
    blake3: String,
}

/// Cut a tar stream into frames at entry boundaries.
fn reframe<W: Write>(
    mut tar: impl Read,
    sink: W,
    level: i32,
) -> io::Result<crate::frames::FramedLayer> {
    let mut writer = FramedWriter::new(sink, level);
    let mut block = [0u8; 512];
    // Walk tar headers so frames end at entry boundaries (the reader does not need it, but it
    // keeps files whole inside frames, as the store's own writer does).
    loop {
        if !read_full(&mut tar, &mut block)? {
            break;
        }
        writer.entry_boundary()?;
        writer.write_all(&block)?;
        let header = tar::Header::from_byte_slice(&block);
        if block.iter().all(|b| *b == 0) {
            // End marker: copy whatever follows verbatim.
            io::copy(&mut tar, &mut writer)?;
            break;
        }
        let size = header.entry_size().unwrap_or(0);
        let padded = align_up(size, 512);
        let copied = io::copy(&mut (&mut tar).take(padded), &mut writer)?;
        if copied != padded {
            break;
        }
    }
    let (mut sink, layer) = writer.finish()?;
    sink.flush()?;
    Ok(layer)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..])?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar stream ends mid-block",
            ));
        }
        filled += n;
    }
    Ok(true)
}
