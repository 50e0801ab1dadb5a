//! The one tar extraction routine of the project.
//!
//! [`unpack`] turns an ordered list of layers — each a sequence of compressed frames with known
//! sha256 and lengths — into a directory tree: `app.run extract`, remote unpack on hosts, `load`
//! and the image builder all call it. Frames are verified before they are decoded (hashed here,
//! or covered by the verdict of a check made just before, whose file provably has not changed
//! since), decoded in parallel on the rayon pool into a bounded in-order window, parsed by one
//! thread, and small files are written by a pool of writer threads. Layers are applied in order
//! with OCI whiteouts. Everything is extracted into a staging directory beside the destination
//! and renamed into place at the end, so a failure never leaves a half-written tree behind.
//!
//! It refuses entries that could reach outside the destination (absolute paths, `..`, symlinks
//! or hard links that lead outside, writing through a symlink) and device files unless running
//! as root. It does not know about `.run` files, image stores or manifests: callers hand it
//! frames and a [`ByteSource`].
//!
//! By job: `decode` (frame checks and the decode window), `tree` (entry names, parents,
//! whiteouts, link confinement: what is written where), `pool` (the writer threads), `sys`
//! (the system calls). This file holds the public types and wires them together.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

mod decode;
mod pool;
mod sys;
mod tree;

pub use crate::codec::{check_frame_content, Compression, FrameCheck, FrameProblem};

use decode::{LayerReader, Pipeline, Spare, Stream};
use pool::WriterPool;
use sys::{is_root, Owners};
use tree::{Applied, Tree};

use crate::frames::{scan_frames, Frame};
use crate::source::{ByteSource, MappedFile};

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
    /// Frames whose sha256 this extraction checked (the others were checked before it, by a
    /// check whose verdict their source still holds: [`ByteSource::checked`]).
    pub frames_hashed: u64,
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
    let owners = Owners::under(root, options.ownership);
    let pool = WriterPool::new(writers, owners);
    std::thread::scope(|threads| {
        pool.start(threads);
        let spare = std::sync::Arc::new(Spare::new(window + 1));
        let result = rayon::in_place_scope(|scope| {
            let mut pipeline = Pipeline::new(scope, layers, window, &spare);
            let mut tree = Tree::new(root, options, &pool, owners);
            for (index, layer) in layers.iter().enumerate() {
                apply_layer(&mut pipeline, &mut tree, index, layer)?;
                if index + 1 == layers.len() {
                    // From here on only the writers' queued files change the tree: check
                    // the symlinks and finish the complete directories while they work.
                    tree.check_symlinks()?;
                    tree.finish_dirs(Some(&pool.busy_dirs()?))?;
                }
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
            tree.finish_dirs(None)?;
            let mut report = tree.report.clone();
            report.frames_hashed = spare.hashed.load(std::sync::atomic::Ordering::Relaxed);
            Ok(report)
        });
        pool.stop();
        result
    })
}

fn apply_layer(
    pipeline: &mut Pipeline<'_, '_>,
    tree: &mut Tree<'_, '_>,
    index: usize,
    layer: &LayerInput<'_>,
) -> Result<(), UnpackError> {
    let reader = RefCell::new(LayerReader {
        pipeline,
        layer: index,
        frames_total: layer.frames.len(),
        frames_taken: 0,
        chunk: None,
        pos: 0,
        consumed: 0,
        consumed_before: tree.report.tar_bytes,
        lent: 0,
        failure: None,
        progress: tree.options.progress,
    });
    tree.layer_label = std::sync::Arc::from(layer.label.as_str());
    let result = read_entries(&mut tar::Archive::new(Stream(&reader)), tree, &reader);
    let mut reader = reader.into_inner();
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

fn read_entries<R: Read + io::Seek>(
    archive: &mut tar::Archive<R>,
    tree: &mut Tree<'_, '_>,
    stream: &RefCell<LayerReader<'_, '_, '_>>,
) -> Result<(), UnpackError> {
    let layer = tree.layer_label.to_string();
    let tar_error = |error: io::Error, offset: Option<u64>| UnpackError::Tar {
        layer: layer.clone(),
        offset,
        error,
    };
    let entries = archive
        .entries_with_seek()
        .map_err(|e| tar_error(e, None))?;
    for entry in entries {
        let entry = entry.map_err(|e| tar_error(e, None))?;
        let offset = entry.raw_header_position();
        tree.apply(entry, stream).map_err(|e| match e {
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
