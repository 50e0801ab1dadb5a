//! The one tar extraction routine of the project.
//!
//! [`unpack`] turns an ordered list of layers — each a sequence of compressed frames with known
//! sha256 and lengths — into a directory tree: `app.run extract`, remote unpack on hosts, `load`
//! and the image builder all call it. Frames are verified before they are decoded, decoded in
//! parallel on the rayon pool into a bounded in-order window, parsed by one thread, and small
//! files are written by a pool of writer threads. Layers are applied in order with OCI whiteouts.
//! Everything is extracted into a staging directory beside the destination and renamed into
//! place at the end, so a failure never leaves a half-written tree behind.
//!
//! It refuses entries that could reach outside the destination (absolute paths, `..`, symlinks
//! or hard links that lead outside, writing through a symlink) and device files unless running
//! as root. It does not know about `.run` files, image stores or manifests: callers hand it
//! frames and a [`ByteSource`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use sha2::{Digest, Sha256};

use crate::frames::{scan_frames, Frame};
use crate::source::{ByteSource, MappedFile};

/// How the frames of a layer are compressed. Every frame is an independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Xz,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        })
    }
}

/// One layer to apply: its frames and where their bytes are.
pub struct LayerInput<'a> {
    /// How errors name this layer, e.g. `layer 2`.
    pub label: String,
    pub compression: Compression,
    /// Offset of the layer's first byte inside `source`; frame offsets are relative to it.
    pub base: u64,
    pub frames: &'a [Frame],
    pub source: &'a dyn ByteSource,
}

/// How [`unpack`] behaves. `Default` does what the current user is allowed to do.
pub struct UnpackOptions<'a> {
    /// Restore numeric owners (uid/gid) from the tar headers. Default: when running as root.
    pub ownership: bool,
    /// Create character and block devices. Default: when running as root.
    pub devices: bool,
    /// Accept absolute symlink targets, read as rooted at the destination (chroot semantics,
    /// as container runtimes read them; real root filesystems are full of them). Default: true.
    /// Set it to false when programs on the host will follow links inside the tree.
    pub absolute_symlinks: bool,
    /// Threads writing small files. Default: twice the number of CPUs, between 2 and 8.
    pub writers: usize,
    /// Called from the parsing thread with the number of uncompressed bytes consumed so far.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl Default for UnpackOptions<'_> {
    fn default() -> Self {
        let root = is_root();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        UnpackOptions {
            ownership: root,
            devices: root,
            absolute_symlinks: true,
            writers: (2 * cpus).clamp(2, 8),
            progress: None,
        }
    }
}

/// What [`unpack`] created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub whiteouts: u64,
    /// Uncompressed tar bytes read, over all layers.
    pub tar_bytes: u64,
    /// Bytes of regular-file content written.
    pub file_bytes: u64,
}

/// Why a frame could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FrameProblem {
    #[error("cannot be read ({0})")]
    Unreadable(io::Error),
    #[error("is corrupt (sha256 {actual}, expected {expected})")]
    Checksum { expected: String, actual: String },
    #[error("is corrupt (not a valid {compression} stream: {reason})")]
    Decode {
        compression: Compression,
        reason: String,
    },
    #[error("is corrupt (decodes to {actual} bytes, expected {expected})")]
    Length { expected: u64, actual: u64 },
    #[error("changed while it was being read (the file was truncated or rewritten)")]
    Changed,
}

impl FrameProblem {
    /// The problem without the leading verb, for messages that already say "is corrupt".
    pub fn detail(&self) -> String {
        match self {
            FrameProblem::Unreadable(e) => format!("it cannot be read ({e})"),
            FrameProblem::Checksum { expected, actual } => {
                format!("sha256 {actual}, expected {expected}")
            }
            FrameProblem::Decode {
                compression,
                reason,
            } => format!("not a valid {compression} stream ({reason})"),
            FrameProblem::Length { expected, actual } => {
                format!("it decodes to {actual} bytes, expected {expected}")
            }
            FrameProblem::Changed => "the file changed while it was being read".into(),
        }
    }
}

/// Why a tar entry was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("is an absolute path")]
    AbsolutePath,
    #[error("contains `..`")]
    ParentDir,
    #[error("is a symlink to `{target}`, which leads outside the destination")]
    SymlinkEscapes { target: String },
    #[error("is a hard link to `{target}`, which is outside the destination")]
    HardLinkOutside { target: String },
    #[error("is a hard link to `{target}`, which does not exist in the image")]
    HardLinkMissing { target: String },
    #[error("would be written through the symlink `{link}`")]
    ThroughSymlink { link: String },
    #[error("needs `{parent}` to be a directory, but it is not")]
    ParentNotDirectory { parent: String },
    #[error("is a whiteout that names no entry (`.wh.`, `.wh..` or `.wh...`)")]
    BadWhiteout,
    #[error("is a device file, which only root may create; extract as root")]
    Device,
    #[error("has a tar entry type this extractor does not support ({kind})")]
    Unsupported { kind: String },
    #[error("cannot be written ({0})")]
    Io(io::Error),
    /// An entry written earlier failed; reported as that entry's error.
    #[error("could not be applied: {0}")]
    Earlier(Box<UnpackError>),
}

/// Error from [`unpack`]: names the layer and, where there is one, the entry or frame.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// `frame` is 1-based; `start..end` are byte offsets inside the frame's source.
    #[error("frame {frame} of {layer} {problem} (bytes {start}–{end})")]
    Frame {
        layer: String,
        frame: usize,
        start: u64,
        end: u64,
        problem: FrameProblem,
    },
    #[error("{layer}: entry `{path}` {problem}")]
    Entry {
        layer: String,
        path: String,
        problem: EntryProblem,
    },
    /// `offset` is where the entry's header starts in the layer's tar stream, when known.
    #[error("{layer}: the tar stream is damaged{} ({error})", near(*offset))]
    Tar {
        layer: String,
        offset: Option<u64>,
        error: io::Error,
    },
    #[error(
        "cannot extract into {}: it exists and is not an empty directory; \
         choose another directory or remove it",
        path.display()
    )]
    DestinationExists { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn near(offset: Option<u64>) -> String {
    offset
        .map(|o| format!(" near byte {o}"))
        .unwrap_or_default()
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> UnpackError + 'p {
    move |source| UnpackError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Frames larger than this (uncompressed) are decoded as a stream on the parsing thread instead
/// of whole in the decode window, so memory stays bounded for foreign single-frame blobs.
const MAX_WINDOW_FRAME: u64 = 32 << 20;
/// Files up to this size are handed whole to the writer pool; larger ones are streamed.
const POOL_FILE_MAX: u64 = 4 << 20;
/// Bytes of file content queued for the writer pool at most.
const POOL_BUDGET: usize = 48 << 20;
/// Buffer for streaming large files.
const STREAM_BUF: usize = 1 << 20;

/// Extract `layers`, in order, into the new directory `dest`.
///
/// `dest` must not exist or be an empty directory. The tree is built in a staging directory
/// beside it (`.NAME.partial-PID`) and renamed into place once every layer is applied; on error
/// the staging directory is removed and `dest` is untouched.
pub fn unpack(
    layers: &[LayerInput<'_>],
    dest: &Path,
    options: &UnpackOptions<'_>,
) -> Result<UnpackReport, UnpackError> {
    if let Ok(meta) = fs::symlink_metadata(dest) {
        let empty_dir = meta.is_dir()
            && fs::read_dir(dest)
                .map_err(io_err("reading", dest))?
                .next()
                .is_none();
        if !empty_dir {
            return Err(UnpackError::DestinationExists {
                path: dest.to_path_buf(),
            });
        }
    }
    let staging = staging_path(dest)?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_err("creating staging directory", &staging))?;
    let result = unpack_into(layers, &staging, options).and_then(|report| {
        fs::rename(&staging, dest).map_err(io_err("renaming the staging directory to", dest))?;
        Ok(report)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn staging_path(dest: &Path) -> Result<PathBuf, UnpackError> {
    let name = dest.file_name().ok_or_else(|| UnpackError::Io {
        what: "choosing a staging directory for",
        path: dest.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no final name"),
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(UnpackError::Io {
            what: "extracting into",
            path: dest.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "its parent directory does not exist",
            ),
        });
    }
    let mut staging_name = OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".partial-{}", std::process::id()));
    Ok(parent.join(staging_name))
}

/// Materialise framed `tar+zstd` blob files (as the image store keeps them), in order, into the
/// new directory `dest`. The frame index of each blob is recovered with [`scan_frames`].
pub fn unpack_blob_files(
    blobs: &[PathBuf],
    dest: &Path,
    options: &UnpackOptions<'_>,
) -> Result<UnpackReport, UnpackError> {
    let mut maps = Vec::with_capacity(blobs.len());
    let mut indexes = Vec::with_capacity(blobs.len());
    for blob in blobs {
        let file = File::open(blob).map_err(io_err("opening layer blob", blob))?;
        let map = if file.metadata().map_err(io_err("reading", blob))?.len() == 0 {
            None
        } else {
            Some(MappedFile::new(&file).map_err(io_err("mapping layer blob", blob))?)
        };
        let frames = match &map {
            Some(map) => scan_frames(map.as_slice()).map_err(|e| UnpackError::Io {
                what: "indexing layer blob",
                path: blob.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            })?,
            None => Vec::new(),
        };
        maps.push(map);
        indexes.push(frames);
    }
    let empty: Vec<u8> = Vec::new();
    let layers: Vec<LayerInput<'_>> = blobs
        .iter()
        .zip(maps.iter().zip(&indexes))
        .map(|(blob, (map, frames))| LayerInput {
            label: format!("layer {}", blob.display()),
            compression: Compression::Zstd,
            base: 0,
            frames,
            source: match map {
                Some(map) => map as &dyn ByteSource,
                None => &empty as &dyn ByteSource,
            },
        })
        .collect();
    unpack(&layers, dest, options)
}

/// Extract into `root`, an existing empty directory owned by this call.
fn unpack_into(
    layers: &[LayerInput<'_>],
    root: &Path,
    options: &UnpackOptions<'_>,
) -> Result<UnpackReport, UnpackError> {
    let writers = options.writers.max(1);
    let decode_threads = rayon::current_num_threads().max(1);
    let window = (2 * decode_threads).max(2);
    std::thread::scope(|threads| {
        let pool = WriterPool::start(threads, writers, options.ownership);
        let spare = Spare::default();
        let result = rayon::in_place_scope(|scope| {
            let mut pipeline = Pipeline::new(scope, layers, window, &spare);
            let mut tree = Tree::new(root, options, &pool);
            for (index, layer) in layers.iter().enumerate() {
                apply_layer(&mut pipeline, &mut tree, index, layer)?;
                pool.drain()?;
                tree.end_layer();
            }
            // A mapped source that shrank gave zeros instead of a SIGBUS; whatever was read
            // after that cannot be trusted even where a hash happened to be checked first.
            if let Some(layer) = layers.iter().find(|layer| layer.source.changed()) {
                return Err(UnpackError::Io {
                    what: "reading",
                    path: PathBuf::from(&layer.label),
                    source: io::Error::other("the file changed while it was being read"),
                });
            }
            tree.finish()?;
            Ok(tree.report)
        });
        pool.stop();
        result
    })
}

// ---------------------------------------------------------------------------------------------
// Decoding: a sliding window of frames decoded on the rayon pool, consumed in order.

enum Chunk<'a> {
    Bytes(Vec<u8>),
    Stream {
        reader: Box<dyn Read + 'a>,
        expected: u64,
        seen: u64,
    },
}

struct FrameId {
    layer: usize,
    frame: usize,
}

struct Pipeline<'s, 'a> {
    scope: &'s rayon::Scope<'a>,
    spare: &'a Spare,
    layers: &'a [LayerInput<'a>],
    jobs: Vec<FrameId>,
    next_job: usize,
    window: usize,
    in_flight: VecDeque<Slot>,
}

enum Slot {
    Spawned(mpsc::Receiver<Result<Vec<u8>, UnpackError>>),
    Inline(usize),
}

fn frame_error(layer: &LayerInput<'_>, index: usize, problem: FrameProblem) -> UnpackError {
    let frame = &layer.frames[index];
    let start = layer.base + frame.offset;
    UnpackError::Frame {
        layer: layer.label.clone(),
        frame: index + 1,
        start,
        end: start + frame.compressed_len,
        problem,
    }
}

/// Read a frame's compressed bytes and check them against the index.
fn verified_bytes<'a>(
    layer: &'a LayerInput<'a>,
    index: usize,
) -> Result<Cow<'a, [u8]>, UnpackError> {
    let frame = &layer.frames[index];
    let bytes = layer
        .source
        .bytes(layer.base + frame.offset, frame.compressed_len)
        .map_err(|e| frame_error(layer, index, FrameProblem::Unreadable(e)))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(&frame.sha256) {
        return Err(frame_error(
            layer,
            index,
            FrameProblem::Checksum {
                expected: frame.sha256.clone(),
                actual,
            },
        ));
    }
    Ok(bytes)
}

/// How thoroughly [`check_frame_content`] looks at a frame whose sha256 already matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// Compare the content size a zstd frame declares in its header with the index (cheap;
    /// xz frames and zstd frames without a declared size pass).
    DeclaredSize,
    /// Decode the whole frame (into a small reused buffer) and count what it yields.
    Decode,
}

/// Check that verified compressed `bytes` are a valid `compression` stream of exactly
/// `expected` uncompressed bytes. The sha256 only proves the bytes are the ones the packer
/// indexed; this proves the index describes them.
pub fn check_frame_content(
    compression: Compression,
    bytes: &[u8],
    expected: u64,
    depth: FrameCheck,
) -> Result<(), FrameProblem> {
    let decode_error = |reason: String| FrameProblem::Decode {
        compression,
        reason,
    };
    if compression == Compression::Zstd {
        match zstd::zstd_safe::get_frame_content_size(bytes) {
            Ok(Some(declared)) if declared != expected => {
                return Err(FrameProblem::Length {
                    expected,
                    actual: declared,
                })
            }
            Ok(_) => {}
            Err(_) => return Err(decode_error("no valid zstd frame header".into())),
        }
    }
    if depth == FrameCheck::DeclaredSize {
        return Ok(());
    }
    let mut reader: Box<dyn Read + '_> = match compression {
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(bytes)
                .map_err(|e| decode_error(e.to_string()))?,
        ),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new(bytes)),
    };
    let mut buf = vec![0u8; 256 << 10];
    let mut seen = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| decode_error(e.to_string()))?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        if seen > expected {
            break;
        }
    }
    if seen != expected {
        return Err(FrameProblem::Length {
            expected,
            actual: seen,
        });
    }
    Ok(())
}

/// Decoded-frame buffers handed back by the parser for reuse, so each frame does not fault in
/// fresh pages.
type Spare = Mutex<Vec<Vec<u8>>>;

fn decode_frame(
    layer: &LayerInput<'_>,
    index: usize,
    spare: &Spare,
) -> Result<Vec<u8>, UnpackError> {
    let frame = &layer.frames[index];
    let bytes = verified_bytes(layer, index)?;
    let decode_error = |reason: String| {
        frame_error(
            layer,
            index,
            FrameProblem::Decode {
                compression: layer.compression,
                reason,
            },
        )
    };
    let expected = frame.uncompressed_len;
    let mut data = spare
        .lock()
        .ok()
        .and_then(|mut s| s.pop())
        .unwrap_or_default();
    data.clear();
    data.reserve(expected as usize);
    match layer.compression {
        Compression::Zstd => {
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(&bytes[..], &mut data))
                .map_err(|e| decode_error(e.to_string()))?;
        }
        Compression::Xz => {
            xz2::read::XzDecoder::new(&bytes[..])
                .take(expected + 1)
                .read_to_end(&mut data)
                .map_err(|e| decode_error(e.to_string()))?;
        }
    }
    drop(bytes);
    layer
        .source
        .release(layer.base + frame.offset, frame.compressed_len);
    if layer.source.changed() {
        // The bytes may have changed between the hash and the decode.
        return Err(frame_error(layer, index, FrameProblem::Changed));
    }
    if data.len() as u64 != expected {
        return Err(frame_error(
            layer,
            index,
            FrameProblem::Length {
                expected,
                actual: data.len() as u64,
            },
        ));
    }
    Ok(data)
}

impl<'s, 'a> Pipeline<'s, 'a> {
    fn new(
        scope: &'s rayon::Scope<'a>,
        layers: &'a [LayerInput<'a>],
        window: usize,
        spare: &'a Spare,
    ) -> Self {
        let jobs = layers
            .iter()
            .enumerate()
            .flat_map(|(layer, input)| {
                (0..input.frames.len()).map(move |frame| FrameId { layer, frame })
            })
            .collect();
        let mut pipeline = Pipeline {
            scope,
            spare,
            layers,
            jobs,
            next_job: 0,
            window,
            in_flight: VecDeque::new(),
        };
        pipeline.fill();
        pipeline
    }

    fn fill(&mut self) {
        while self.in_flight.len() < self.window && self.next_job < self.jobs.len() {
            let FrameId { layer, frame } = self.jobs[self.next_job];
            self.next_job += 1;
            let input = &self.layers[layer];
            if input.frames[frame].uncompressed_len > MAX_WINDOW_FRAME {
                self.in_flight.push_back(Slot::Inline(frame));
                continue;
            }
            let (tx, rx) = mpsc::sync_channel(1);
            let spare = self.spare;
            self.scope.spawn(move |_| {
                let _ = tx.send(decode_frame(input, frame, spare));
            });
            self.in_flight.push_back(Slot::Spawned(rx));
        }
    }

    /// The next frame of `layer`, in order. Callers ask exactly as many times as it has frames.
    fn next(&mut self, layer: usize) -> Result<Chunk<'a>, UnpackError> {
        let slot = self.in_flight.pop_front();
        self.fill();
        let input = &self.layers[layer];
        match slot {
            Some(Slot::Spawned(rx)) => match rx.recv() {
                Ok(result) => result.map(Chunk::Bytes),
                Err(_) => Err(UnpackError::Io {
                    what: "decoding frames for",
                    path: PathBuf::from(&input.label),
                    source: io::Error::other("a decoder thread stopped"),
                }),
            },
            Some(Slot::Inline(index)) => {
                let bytes = verified_bytes(input, index)?;
                let compression = input.compression;
                let reader: Box<dyn Read + 'a> = match (compression, bytes) {
                    (Compression::Zstd, Cow::Borrowed(b)) => {
                        Box::new(zstd::stream::read::Decoder::with_buffer(b).map_err(|e| {
                            frame_error(
                                input,
                                index,
                                FrameProblem::Decode {
                                    compression,
                                    reason: e.to_string(),
                                },
                            )
                        })?)
                    }
                    (Compression::Zstd, Cow::Owned(v)) => Box::new(
                        zstd::stream::read::Decoder::new(io::Cursor::new(v)).map_err(|e| {
                            frame_error(
                                input,
                                index,
                                FrameProblem::Decode {
                                    compression,
                                    reason: e.to_string(),
                                },
                            )
                        })?,
                    ),
                    (Compression::Xz, Cow::Borrowed(b)) => Box::new(xz2::read::XzDecoder::new(b)),
                    (Compression::Xz, Cow::Owned(v)) => {
                        Box::new(xz2::read::XzDecoder::new(io::Cursor::new(v)))
                    }
                };
                Ok(Chunk::Stream {
                    reader,
                    expected: input.frames[index].uncompressed_len,
                    seen: 0,
                })
            }
            None => Err(UnpackError::Io {
                what: "decoding frames for",
                path: PathBuf::from(&input.label),
                source: io::Error::other("asked for more frames than the layer has"),
            }),
        }
    }
}

/// The uncompressed tar stream of one layer, read frame after frame from the pipeline.
struct LayerReader<'p, 's, 'a> {
    pipeline: &'p mut Pipeline<'s, 'a>,
    layer: usize,
    frames_total: usize,
    frames_taken: usize,
    chunk: Option<Chunk<'a>>,
    pos: usize,
    consumed: u64,
    consumed_before: u64,
    failure: Option<UnpackError>,
    progress: Option<&'p (dyn Fn(u64) + Sync)>,
}

impl<'a> LayerReader<'_, '_, 'a> {
    fn fetch(&mut self) -> Result<bool, UnpackError> {
        if self.frames_taken == self.frames_total {
            return Ok(false);
        }
        let chunk = self.pipeline.next(self.layer)?;
        self.frames_taken += 1;
        self.chunk = Some(chunk);
        self.pos = 0;
        Ok(true)
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        loop {
            match &mut self.chunk {
                Some(Chunk::Bytes(data)) if self.pos < data.len() => {
                    let n = buf.len().min(data.len() - self.pos);
                    buf[..n].copy_from_slice(&data[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
                Some(Chunk::Stream {
                    reader,
                    expected,
                    seen,
                }) => {
                    let index = self.frames_taken - 1;
                    let input = &self.pipeline.layers[self.layer];
                    let n = reader.read(buf).map_err(|e| {
                        frame_error(
                            input,
                            index,
                            FrameProblem::Decode {
                                compression: input.compression,
                                reason: e.to_string(),
                            },
                        )
                    })?;
                    *seen += n as u64;
                    if *seen > *expected || (n == 0 && *seen != *expected) {
                        let actual = *seen;
                        return Err(frame_error(
                            input,
                            index,
                            FrameProblem::Length {
                                expected: *expected,
                                actual,
                            },
                        ));
                    }
                    if n > 0 {
                        return Ok(n);
                    }
                    self.chunk = None;
                }
                _ => {
                    if let Some(Chunk::Bytes(used)) = self.chunk.take() {
                        self.recycle(used);
                    }
                    if !self.fetch()? {
                        return Ok(0);
                    }
                }
            }
        }
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        if let Ok(mut spare) = self.pipeline.spare.lock() {
            if spare.len() <= self.pipeline.window {
                spare.push(buffer);
            }
        }
    }

    /// Read (and so verify) whatever the tar parser left unread: padding after the end marker.
    fn drain(&mut self) -> Result<(), UnpackError> {
        let mut sink = vec![0u8; 64 << 10];
        while self.read_inner(&mut sink)? > 0 {}
        Ok(())
    }
}

impl Read for LayerReader<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("an earlier frame failed"));
        }
        match self.read_inner(buf) {
            Ok(n) => {
                self.consumed += n as u64;
                if let Some(progress) = self.progress {
                    if n > 0 && (self.consumed >> 20) != ((self.consumed - n as u64) >> 20) {
                        progress(self.consumed_before + self.consumed);
                    }
                }
                Ok(n)
            }
            Err(e) => {
                let message = e.to_string();
                self.failure = Some(e);
                Err(io::Error::other(message))
            }
        }
    }
}

fn apply_layer(
    pipeline: &mut Pipeline<'_, '_>,
    tree: &mut Tree<'_, '_>,
    index: usize,
    layer: &LayerInput<'_>,
) -> Result<(), UnpackError> {
    let reader = LayerReader {
        pipeline,
        layer: index,
        frames_total: layer.frames.len(),
        frames_taken: 0,
        chunk: None,
        pos: 0,
        consumed: 0,
        consumed_before: tree.report.tar_bytes,
        failure: None,
        progress: tree.options.progress,
    };
    tree.layer_label = layer.label.clone();
    let mut archive = tar::Archive::new(reader);
    let result = read_entries(&mut archive, tree);
    let mut reader = archive.into_inner();
    if let Some(failure) = reader.failure.take() {
        return Err(failure);
    }
    result?;
    reader.drain()?;
    tree.report.tar_bytes += reader.consumed;
    if let Some(progress) = tree.options.progress {
        progress(tree.report.tar_bytes);
    }
    Ok(())
}

fn read_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    tree: &mut Tree<'_, '_>,
) -> Result<(), UnpackError> {
    let layer = tree.layer_label.clone();
    let tar_error = |error: io::Error, offset: Option<u64>| UnpackError::Tar {
        layer: layer.clone(),
        offset,
        error,
    };
    let entries = archive.entries().map_err(|e| tar_error(e, None))?;
    for entry in entries {
        let entry = entry.map_err(|e| tar_error(e, None))?;
        let offset = entry.raw_header_position();
        tree.apply(entry).map_err(|e| match e {
            Applied::Refused(_, EntryProblem::Earlier(earlier)) => *earlier,
            Applied::Refused(path, problem) => UnpackError::Entry {
                layer: layer.clone(),
                path,
                problem,
            },
            Applied::Failed(e) => e,
            Applied::Tar(e) => tar_error(e, Some(offset)),
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing: the tree under construction.

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
}

enum Applied {
    Refused(String, EntryProblem),
    Failed(UnpackError),
    Tar(io::Error),
}

struct Tree<'o, 'p> {
    root: PathBuf,
    options: &'o UnpackOptions<'o>,
    pool: &'p WriterPool,
    layer_label: String,
    /// Relative paths known to be real directories (not symlinks) right now.
    dirs: HashSet<PathBuf>,
    /// Relative paths of everything else present right now. The staging directory starts
    /// empty and only this code writes into it, so a path in neither set does not exist and
    /// needs no `lstat` before it is created.
    known: HashSet<PathBuf>,
    /// Directory modes and mtimes, applied once everything is written.
    dir_meta: HashMap<PathBuf, Meta>,
    /// Paths written by the current layer (opaque whiteouts spare them; rewriting one waits
    /// for the writer pool).
    this_layer: HashSet<PathBuf>,
    symlinks: Vec<PathBuf>,
    report: UnpackReport,
}

/// An entry name made safe: relative, normal components only.
fn entry_path(raw: &Path) -> Result<PathBuf, EntryProblem> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(EntryProblem::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(EntryProblem::AbsolutePath),
        }
    }
    Ok(clean)
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn entry_meta(header: &tar::Header) -> io::Result<Meta> {
    Ok(Meta {
        mode: header.mode()? & 0o7777,
        mtime: header.mtime().unwrap_or(0),
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
    })
}

impl<'o, 'p> Tree<'o, 'p> {
    fn new(root: &Path, options: &'o UnpackOptions<'o>, pool: &'p WriterPool) -> Self {
        let mut dirs = HashSet::new();
        dirs.insert(PathBuf::new());
        Tree {
            root: root.to_path_buf(),
            options,
            pool,
            layer_label: String::new(),
            dirs,
            known: HashSet::new(),
            dir_meta: HashMap::new(),
            this_layer: HashSet::new(),
            symlinks: Vec::new(),
            report: UnpackReport::default(),
        }
    }

    fn end_layer(&mut self) {
        self.this_layer.clear();
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), Applied> {
        let raw = entry.path().map_err(Applied::Tar)?.into_owned();
        let shown = display(&raw);
        let refuse = |problem| Applied::Refused(shown.clone(), problem);
        let rel = entry_path(&raw).map_err(refuse)?;
        let kind = entry.header().entry_type();
        let meta = entry_meta(entry.header()).map_err(Applied::Tar)?;

        if let Some(name) = rel.file_name().map(|n| n.as_bytes().to_vec()) {
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
                self.report.whiteouts += 1;
                return if hidden == b".wh..opq" {
                    self.opaque(&parent).map_err(refuse)
                } else {
                    // `.wh.`, `.wh..` and `.wh...` would name the directory itself or its parent.
                    if matches!(hidden, b"" | b"." | b"..") {
                        return Err(refuse(EntryProblem::BadWhiteout));
                    }
                    let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
                    self.whiteout(&target).map_err(refuse)
                };
            }
        }
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                self.dir_meta.insert(PathBuf::new(), meta);
            }
            return Ok(());
        }

        if self.this_layer.contains(&rel) {
            self.pool.drain().map_err(Applied::Failed)?;
        }
        self.ensure_parent(&rel).map_err(refuse)?;
        let full = self.root.join(&rel);
        let ownership = self.options.ownership;

        match kind {
            tar::EntryType::Directory => {
                self.make_dir(&rel, &full).map_err(refuse)?;
                if ownership {
                    lchown(&full, meta.uid, meta.gid).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                self.dir_meta.insert(rel.clone(), meta);
                self.report.directories += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&rel, &full).map_err(refuse)?;
                self.known.insert(rel.clone());
                let size = entry.size();
                self.report.files += 1;
                self.report.file_bytes += size;
                if size <= POOL_FILE_MAX {
                    let mut data = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut data).map_err(Applied::Tar)?;
                    self.pool
                        .submit(FileJob {
                            path: full,
                            shown: shown.clone(),
                            layer: self.layer_label.clone(),
                            data,
                            meta,
                        })
                        .map_err(Applied::Failed)?;
                } else {
                    write_streamed(&full, &mut entry, meta, ownership).map_err(|e| match e {
                        StreamError::Read(e) => Applied::Tar(e),
                        StreamError::Write(e) => refuse(EntryProblem::Io(e)),
                    })?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(Applied::Tar)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.check_symlink_target(&rel, &target).map_err(refuse)?;
                self.clear(&rel, &full).map_err(refuse)?;
                self.known.insert(rel.clone());
                std::os::unix::fs::symlink(&target, &full)
                    .map_err(|e| refuse(EntryProblem::Io(e)))?;
                if ownership {
                    lchown(&full, meta.uid, meta.gid).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                set_times(&full, meta.mtime, false).map_err(|e| refuse(EntryProblem::Io(e)))?;
                self.symlinks.push(rel.clone());
                self.report.symlinks += 1;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(Applied::Tar)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_shown = display(&raw_target);
                let target = entry_path(&raw_target).map_err(|_| {
                    refuse(EntryProblem::HardLinkOutside {
                        target: target_shown.clone(),
                    })
                })?;
                self.ensure_parent(&target).map_err(|e| match e {
                    EntryProblem::ThroughSymlink { .. }
                    | EntryProblem::ParentNotDirectory { .. } => {
                        refuse(EntryProblem::HardLinkOutside {
                            target: target_shown.clone(),
                        })
                    }
                    other => refuse(other),
                })?;
                // The target may still sit in the writer queue.
                self.pool.drain().map_err(Applied::Failed)?;
                let source = self.root.join(&target);
                if fs::symlink_metadata(&source).is_err() {
                    return Err(refuse(EntryProblem::HardLinkMissing {
                        target: target_shown,
                    }));
                }
                if target != rel {
                    self.clear(&rel, &full).map_err(refuse)?;
                    self.known.insert(rel.clone());
                    fs::hard_link(&source, &full).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                self.report.hard_links += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !kind.is_fifo() && !self.options.devices {
                    return Err(refuse(EntryProblem::Device));
                }
                self.clear(&rel, &full).map_err(refuse)?;
                self.known.insert(rel.clone());
                let file_type = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                mknod(&full, file_type | meta.mode, libc::makedev(major, minor))
                    .map_err(|e| refuse(EntryProblem::Io(e)))?;
                if ownership {
                    lchown(&full, meta.uid, meta.gid).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                fs::set_permissions(&full, fs::Permissions::from_mode(meta.mode))
                    .map_err(|e| refuse(EntryProblem::Io(e)))?;
                set_times(&full, meta.mtime, true).map_err(|e| refuse(EntryProblem::Io(e)))?;
                self.report.files += 1;
            }
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => {
                return Err(refuse(EntryProblem::Unsupported {
                    kind: format!("{other:?}"),
                }))
            }
        }
        self.this_layer.insert(rel);
        Ok(())
    }

    /// Make sure every ancestor of `rel` is a real directory, creating missing ones.
    fn ensure_parent(&mut self, rel: &Path) -> Result<(), EntryProblem> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        let mut current = PathBuf::new();
        for component in parent.components() {
            current.push(component);
            if self.dirs.contains(&current) {
                continue;
            }
            let full = self.root.join(&current);
            match fs::symlink_metadata(&full) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(EntryProblem::ThroughSymlink {
                        link: display(&current),
                    })
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(EntryProblem::ParentNotDirectory {
                        parent: display(&current),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(EntryProblem::Io)?;
                    if self.options.ownership {
                        // Implicit directories belong to root, as with GNU tar run as root.
                        lchown(&full, 0, 0).map_err(EntryProblem::Io)?;
                    }
                }
                Err(e) => return Err(EntryProblem::Io(e)),
            }
            self.dirs.insert(current.clone());
        }
        Ok(())
    }

    fn make_dir(&mut self, rel: &Path, full: &Path) -> Result<(), EntryProblem> {
        if self.dirs.contains(rel) {
            return Ok(());
        }
        if self.known.contains(rel) {
            self.remove(rel, full)?;
        }
        create_dir_writable(full)?;
        self.dirs.insert(rel.to_path_buf());
        Ok(())
    }

    /// Remove whatever is at `rel` so a new entry can take its place.
    fn clear(&mut self, rel: &Path, full: &Path) -> Result<(), EntryProblem> {
        if !self.known.contains(rel) && !self.dirs.contains(rel) {
            return Ok(());
        }
        match fs::symlink_metadata(full) {
            Ok(_) => self.remove(rel, full),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EntryProblem::Io(e)),
        }
    }

    fn remove(&mut self, rel: &Path, full: &Path) -> Result<(), EntryProblem> {
        let meta = match fs::symlink_metadata(full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(EntryProblem::Io(e)),
        };
        if meta.is_dir() {
            // Files queued for the writer pool are opened by full path. Removing (and then
            // perhaps replacing with a symlink) a directory while one of them waits below it
            // would let the writer follow the new link out of the tree: finish them first.
            self.pool
                .drain()
                .map_err(|e| EntryProblem::Earlier(Box::new(e)))?;
            fs::remove_dir_all(full).map_err(EntryProblem::Io)?;
            self.dirs.retain(|d| !d.starts_with(rel));
            self.dir_meta.retain(|d, _| !d.starts_with(rel));
            self.known.retain(|p| !p.starts_with(rel));
        } else {
            fs::remove_file(full).map_err(EntryProblem::Io)?;
            self.known.remove(rel);
        }
        Ok(())
    }

    /// `.wh.NAME`: delete NAME as the lower layers left it.
    fn whiteout(&mut self, target: &Path) -> Result<(), EntryProblem> {
        if self.this_layer.contains(target) {
            return Ok(());
        }
        if !self.existing_dir(target.parent().unwrap_or(Path::new("")))? {
            return Ok(());
        }
        let full = self.root.join(target);
        self.remove(target, &full)
    }

    /// `.wh..wh..opq`: the directory hides everything the lower layers put in it.
    fn opaque(&mut self, dir: &Path) -> Result<(), EntryProblem> {
        self.ensure_parent(&dir.join("x"))?;
        let full = self.root.join(dir);
        let children = fs::read_dir(&full).map_err(EntryProblem::Io)?;
        for child in children {
            let child = child.map_err(EntryProblem::Io)?;
            let rel = dir.join(child.file_name());
            if !self.this_layer.contains(&rel) {
                self.remove(&rel, &child.path())?;
            }
        }
        Ok(())
    }

    /// True if `rel` is a real directory, false if it does not exist; refuses symlinks on the way.
    fn existing_dir(&mut self, rel: &Path) -> Result<bool, EntryProblem> {
        if self.dirs.contains(rel) {
            return Ok(true);
        }
        let mut current = PathBuf::new();
        for component in rel.components() {
            current.push(component);
            if self.dirs.contains(&current) {
                continue;
            }
            match fs::symlink_metadata(self.root.join(&current)) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(EntryProblem::ThroughSymlink {
                        link: display(&current),
                    })
                }
                Ok(meta) if meta.is_dir() => {
                    self.dirs.insert(current.clone());
                }
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(EntryProblem::Io(e)),
            }
        }
        Ok(true)
    }

    /// A symlink target must stay inside the destination when read from the link's directory.
    fn check_symlink_target(&self, rel: &Path, target: &Path) -> Result<(), EntryProblem> {
        let escapes = || EntryProblem::SymlinkEscapes {
            target: display(target),
        };
        if target.has_root() && !self.options.absolute_symlinks {
            return Err(escapes());
        }
        let mut depth: usize = if target.has_root() {
            0
        } else {
            rel.parent().map(|p| p.components().count()).unwrap_or(0)
        };
        for component in target.components() {
            match component {
                Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// Resolve a symlink physically, following the links it meets, confined to the tree.
    fn resolves_inside(&self, link: &Path) -> bool {
        let mut stack: Vec<OsString> = link
            .parent()
            .map(|p| p.iter().map(|c| c.to_os_string()).collect())
            .unwrap_or_default();
        let Ok(target) = fs::read_link(self.root.join(link)) else {
            return true;
        };
        let mut pending: VecDeque<OsString> = VecDeque::new();
        if target.has_root() {
            stack.clear();
        }
        pending.extend(target.iter().map(|c| c.to_os_string()));
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_bytes() {
                b"/" | b"." | b"" => {}
                b".." => {
                    if stack.pop().is_none() {
                        return false;
                    }
                }
                _ => {
                    stack.push(part);
                    let here: PathBuf = stack.iter().collect();
                    let full = self.root.join(&here);
                    if fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
                        hops += 1;
                        if hops > 40 {
                            return true; // a loop: the kernel answers ELOOP, nothing escapes
                        }
                        let Ok(next) = fs::read_link(&full) else {
                            return true;
                        };
                        stack.pop();
                        if next.has_root() {
                            if !self.options.absolute_symlinks {
                                return false;
                            }
                            stack.clear();
                        }
                        for c in next.iter().rev() {
                            pending.push_front(c.to_os_string());
                        }
                    }
                }
            }
        }
        true
    }

    /// Check every symlink once all layers are in place, then set directory modes and times.
    fn finish(&mut self) -> Result<(), UnpackError> {
        for link in std::mem::take(&mut self.symlinks) {
            if !self.resolves_inside(&link) {
                let target = fs::read_link(self.root.join(&link)).unwrap_or_default();
                return Err(UnpackError::Entry {
                    layer: "the merged layers".to_string(),
                    path: display(&link),
                    problem: EntryProblem::SymlinkEscapes {
                        target: display(&target),
                    },
                });
            }
        }
        let mut dirs: Vec<(PathBuf, Meta)> = self.dir_meta.drain().collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (rel, meta) in dirs {
            let full = self.root.join(&rel);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            fs::set_permissions(&full, fs::Permissions::from_mode(meta.mode))
                .map_err(io_err("setting the mode of", &full))?;
            set_times(&full, meta.mtime, true).map_err(io_err("setting the mtime of", &full))?;
        }
        let root_meta = fs::metadata(&self.root).map_err(io_err("reading", &self.root))?;
        if root_meta.permissions().mode() & 0o7777 == 0o700
            && !self.dir_meta.contains_key(Path::new(""))
        {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of", &self.root))?;
        }
        Ok(())
    }
}

fn create_dir_writable(full: &Path) -> Result<(), EntryProblem> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(full)
        .map_err(EntryProblem::Io)
}

enum StreamError {
    Read(io::Error),
    Write(io::Error),
}

/// The process umask, read without changing it (`None` if unknown).
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
    })
}

/// True when creating a file with `mode` already gives exactly `mode` (no fchmod needed).
fn mode_survives_creation(mode: u32) -> bool {
    mode & 0o7000 == 0 && umask().is_some_and(|mask| mode & mask == 0)
}

fn create_file(path: &Path, mode: u32) -> io::Result<File> {
    let initial = if mode_survives_creation(mode) {
        mode
    } else {
        0o600
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(initial)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn finish_file(file: &File, meta: Meta, ownership: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    if ownership && unsafe { libc::fchown(fd, meta.uid as u32, meta.gid as u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if !mode_survives_creation(meta.mode) && unsafe { libc::fchmod(fd, meta.mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let times = [timespec(meta.mtime), timespec(meta.mtime)];
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn write_streamed(
    path: &Path,
    entry: &mut impl Read,
    meta: Meta,
    ownership: bool,
) -> Result<(), StreamError> {
    let mut file = create_file(path, meta.mode).map_err(StreamError::Write)?;
    let mut buf = vec![0u8; STREAM_BUF];
    loop {
        let n = entry.read(&mut buf).map_err(StreamError::Read)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(StreamError::Write)?;
    }
    finish_file(&file, meta, ownership).map_err(StreamError::Write)
}

fn timespec(secs: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn set_times(path: &Path, mtime: u64, follow: bool) -> io::Result<()> {
    let c = c_path(path)?;
    let times = [timespec(mtime), timespec(mtime)];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let c = c_path(path)?;
    if unsafe { libc::lchown(c.as_ptr(), uid as u32, gid as u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mknod(path: &Path, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let c = c_path(path)?;
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------------
// The writer pool: small files are created, written and closed on worker threads.

struct FileJob {
    path: PathBuf,
    shown: String,
    layer: String,
    data: Vec<u8>,
    meta: Meta,
}

#[derive(Default)]
struct PoolState {
    queued_bytes: usize,
    /// Batches sent and not yet written.
    pending: usize,
    failure: Option<UnpackError>,
}

/// Files are handed to the workers in batches, so the threads meet (a lock, a wake-up) once
/// per batch rather than once per file.
const BATCH_FILES: usize = 32;
const BATCH_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Batch {
    jobs: Vec<FileJob>,
    bytes: usize,
}

struct WriterPool {
    jobs: Mutex<Option<mpsc::Sender<Batch>>>,
    /// Files collected by the parsing thread, not yet sent (only that thread touches it).
    batch: Mutex<Batch>,
    state: Arc<(Mutex<PoolState>, Condvar)>,
}

impl WriterPool {
    fn start<'scope>(
        threads: &'scope std::thread::Scope<'scope, '_>,
        workers: usize,
        ownership: bool,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Batch>();
        let rx = Arc::new(Mutex::new(rx));
        let state: Arc<(Mutex<PoolState>, Condvar)> = Arc::default();
        for _ in 0..workers {
            let rx = Arc::clone(&rx);
            let state = Arc::clone(&state);
            threads.spawn(move || loop {
                let batch = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(batch) = batch else { return };
                let mut failure = None;
                for job in batch.jobs {
                    if let Err(e) = write_whole(&job.path, &job.data, job.meta, ownership) {
                        failure = Some(UnpackError::Entry {
                            layer: job.layer,
                            path: job.shown,
                            problem: EntryProblem::Io(e),
                        });
                        break;
                    }
                }
                let (lock, wake) = &*state;
                let mut st = match lock.lock() {
                    Ok(st) => st,
                    Err(poisoned) => poisoned.into_inner(),
                };
                st.queued_bytes -= batch.bytes;
                st.pending -= 1;
                if st.failure.is_none() {
                    st.failure = failure;
                }
                wake.notify_one();
            });
        }
        WriterPool {
            jobs: Mutex::new(Some(tx)),
            batch: Mutex::new(Batch::default()),
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        match self.state.0.lock() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn submit(&self, job: FileJob) -> Result<(), UnpackError> {
        let full = {
            let mut batch = match self.batch.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            batch.bytes += job.data.len();
            batch.jobs.push(job);
            if batch.jobs.len() >= BATCH_FILES || batch.bytes >= BATCH_BYTES {
                Some(std::mem::take(&mut *batch))
            } else {
                None
            }
        };
        match full {
            Some(batch) => self.send(batch),
            None => Ok(()),
        }
    }

    fn send(&self, batch: Batch) -> Result<(), UnpackError> {
        if batch.jobs.is_empty() {
            return Ok(());
        }
        {
            let mut st = self.lock();
            while st.queued_bytes > 0
                && st.queued_bytes + batch.bytes > POOL_BUDGET
                && st.failure.is_none()
            {
                st = match self.state.1.wait(st) {
                    Ok(st) => st,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            if let Some(failure) = st.failure.take() {
                return Err(failure);
            }
            st.queued_bytes += batch.bytes;
            st.pending += 1;
        }
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs
                .as_ref()
                .map(|tx| tx.send(batch).is_ok())
                .unwrap_or(false),
            Err(_) => false,
        };
        if !sent {
            return Err(UnpackError::Io {
                what: "writing files under",
                path: PathBuf::new(),
                source: io::Error::other("the writer threads stopped"),
            });
        }
        Ok(())
    }

    /// Wait until every submitted file is on disk; report the first failure.
    fn drain(&self) -> Result<(), UnpackError> {
        let rest = match self.batch.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        self.send(rest)?;
        let mut st = self.lock();
        while st.pending > 0 {
            st = match self.state.1.wait(st) {
                Ok(st) => st,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        match st.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    fn stop(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}

fn write_whole(path: &Path, data: &[u8], meta: Meta, ownership: bool) -> io::Result<()> {
    let mut file = create_file(path, meta.mode)?;
    file.write_all(data)?;
    finish_file(&file, meta, ownership)
}
