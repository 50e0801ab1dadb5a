//! Reading `.run` files: locate the payload, check it, find volumes, verify and extract.
//!
//! [`RunFile::open`] reads only the footer, the header and the manifest, so it is instant on a
//! multi-gigabyte file. When the footer is missing it finds the header after the stub's ELF image
//! to tell a truncated copy ("incomplete copy: have X of Y bytes") from a stripped one.
//! [`RunFile::payload`] then finds the volumes beside the file by payload id (whatever their
//! names) and opens every file with `mmap` on local filesystems or `pread` on removable and
//! network media (where a failing device must give an error, not a SIGBUS). This module does not
//! print; the stub and `sealer` decide how to show what it returns.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::format::{
    self, align_up, FormatError, Header, RunManifest, ALIGN, FOOTER_LEN, HEADER_LEN,
};
use crate::frames::Frame;
use crate::signature::{self, SignatureRecord};
use crate::source::{ByteSource, CheckedFile, MappedFile, PositionedFile, Verdict};
use crate::unpack::{
    self, FrameCheck, FrameProblem, LayerInput, UnpackError, UnpackOptions, UnpackReport,
};

/// Why a `.run` file cannot be used. Every message says what and where.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{} contains no installer payload: it was stripped (`strip` removes everything after \
         the program) or it is not a .run file; copy the original .run file again",
        path.display()
    )]
    NoPayload { path: PathBuf },
    #[error(
        "{} was made by a newer sealer: its format version is {found}, this program reads \
         version {supported}; use a newer sealer or the installer's own stub",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "{} changed while it was being read (it was truncated or rewritten); copy the file \
         again and do not modify it during the install",
        path.display()
    )]
    Changed { path: PathBuf },
    #[error(
        "{} is an incomplete copy: have {have} of {want} bytes; copy the file again",
        path.display()
    )]
    Incomplete { path: PathBuf, have: u64, want: u64 },
    #[error("{} is damaged: {what}; copy the file again", path.display())]
    Damaged { path: PathBuf, what: String },
    #[error(
        "{} is volume {index} of an installer, not the installer itself; run the main .run file \
         that sits beside it",
        path.display()
    )]
    NotMainVolume { path: PathBuf, index: u32 },
    #[error(
        "volume {index} of {count} is missing: no file in {} carries this installer's payload id \
         {payload_id}{hint}; copy `{name}` next to the .run file",
        dir.display()
    )]
    VolumeMissing {
        index: u32,
        count: u32,
        dir: PathBuf,
        name: String,
        payload_id: String,
        hint: String,
    },
    #[error(
        "{} claims to be volume {index} of this installer, but it has only {count} volumes; \
         remove the extra file",
        path.display()
    )]
    VolumeExtra {
        path: PathBuf,
        index: u32,
        count: u32,
    },
    #[error("volume {index} ({}) is an incomplete copy: have {have} of {want} bytes; copy it again", path.display())]
    VolumeIncomplete {
        path: PathBuf,
        index: u32,
        have: u64,
        want: u64,
    },
    #[error(
        "frame {frame} of layer {layer} is corrupt (bytes {start}–{end} of {}): {}; copy the \
         file again",
        path.display(),
        problem.detail()
    )]
    CorruptFrame {
        layer: usize,
        frame: usize,
        path: PathBuf,
        start: u64,
        end: u64,
        problem: FrameProblem,
    },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ReadError + 'p {
    move |source| ReadError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn damaged(path: &Path, e: FormatError, record: &str) -> ReadError {
    if let FormatError::Version { found } = e {
        return newer(path, found);
    }
    ReadError::Damaged {
        path: path.to_path_buf(),
        what: format!("its {record} is not valid ({e})"),
    }
}

fn newer(path: &Path, found: u32) -> ReadError {
    ReadError::NewerFormat {
        path: path.to_path_buf(),
        found,
        supported: format::FORMAT_VERSION,
    }
}

/// What [`RunFile::open_with`] reads besides the header and the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Documents {
    /// The image's OCI manifest and config as well, checked against the sha256 the manifest
    /// gives: what [`RunFile::open`] does, for every caller that looks at the image.
    Read,
    /// Not them, for a caller that needs only the layers (`extract`): an image config with a
    /// large SBOM is neither read nor hashed. A version-2 package's `manifest().image`
    /// `manifest_json` and `config_json` are then empty.
    Skip,
}

/// An opened `.run` file: its manifest and where its payload starts.
#[derive(Debug)]
pub struct RunFile {
    path: PathBuf,
    /// The path the file was opened through (`/proc/self/exe` for the running stub).
    open_path: PathBuf,
    /// Directory searched for volumes.
    dir: PathBuf,
    file_len: u64,
    header_offset: u64,
    header: Header,
    manifest: RunManifest,
    /// The manifest exactly as stored: what the payload id hashes and a signature signs.
    manifest_bytes: Vec<u8>,
    signature: SignatureRecord,
}

fn read_exact_at(file: &File, len: u64, at: u64, path: &Path) -> Result<Vec<u8>, ReadError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, at)
        .map_err(io_err("reading", path))?;
    Ok(buf)
}

impl RunFile {
    /// Open the `.run` file that is running (`/proc/self/exe`, immune to renames).
    ///
    /// Without `/proc` (a bare chroot) the program path from `argv[0]` is used instead.
    pub fn open_self() -> Result<RunFile, ReadError> {
        Self::open_self_with(Documents::Read)
    }

    /// [`RunFile::open_self`], reading the image documents or not.
    pub fn open_self_with(documents: Documents) -> Result<RunFile, ReadError> {
        let exe = PathBuf::from("/proc/self/exe");
        if let Ok(real) = fs::read_link(&exe) {
            return Self::open_file(&exe, &real, documents);
        }
        let argv0 = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .unwrap_or_default();
        let program = if argv0.components().count() > 1 {
            argv0
        } else {
            std::env::var_os("PATH")
                .map(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join(&argv0))
                        .find(|candidate| candidate.is_file())
                        .unwrap_or_else(|| argv0.clone())
                })
                .unwrap_or(argv0)
        };
        Self::open_with(&program, documents)
    }

    /// Open a `.run` file by path.
    pub fn open(path: &Path) -> Result<RunFile, ReadError> {
        Self::open_with(path, Documents::Read)
    }

    /// [`RunFile::open`], reading the image documents or not.
    pub fn open_with(path: &Path, documents: Documents) -> Result<RunFile, ReadError> {
        Self::open_file(path, path, documents)
    }

    fn open_file(
        open_path: &Path,
        shown: &Path,
        documents: Documents,
    ) -> Result<RunFile, ReadError> {
        let file = File::open(open_path).map_err(io_err("opening", shown))?;
        let file_len = file.metadata().map_err(io_err("reading", shown))?.len();
        let dir = match shown.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (header_offset, header) = match read_footer(&file, file_len, shown)? {
            Some(found) => found,
            None => return Err(diagnose_without_footer(&file, file_len, shown)),
        };
        if header.volume_index != 0 {
            return Err(ReadError::NotMainVolume {
                path: shown.to_path_buf(),
                index: header.volume_index,
            });
        }
        // Every length below comes from the file: bound it by the file before allocating.
        let manifest_end = header
            .manifest_offset
            .checked_add(header.manifest_len)
            .and_then(|end| end.checked_add(header_offset));
        if header.manifest_len > format::MAX_MANIFEST_LEN
            || manifest_end.is_none_or(|end| end > file_len - FOOTER_LEN)
        {
            return Err(ReadError::Damaged {
                path: shown.to_path_buf(),
                what: format!(
                    "its header places a {}-byte manifest outside the file",
                    header.manifest_len
                ),
            });
        }
        if header.volume_count == 0 || header.volume_count > format::MAX_VOLUMES {
            return Err(ReadError::Damaged {
                path: shown.to_path_buf(),
                what: format!("its header claims {} volumes", header.volume_count),
            });
        }
        let manifest_bytes = read_exact_at(
            &file,
            header.manifest_len,
            header_offset + header.manifest_offset,
            shown,
        )?;
        // Hashing and parsing a large manifest take milliseconds each: do them side by side.
        // Nothing parsed is used unless the hash matches.
        let (payload_id, parsed) = std::thread::scope(|scope| {
            let id = scope.spawn(|| format::payload_id(&manifest_bytes));
            let parsed = RunManifest::from_bytes(&manifest_bytes);
            (id.join(), parsed)
        });
        if payload_id.ok() != Some(header.payload_id) {
            return Err(ReadError::Damaged {
                path: shown.to_path_buf(),
                what: "its manifest does not match the payload id in its header".into(),
            });
        }
        let mut manifest = parsed.map_err(|e| damaged(shown, e, "manifest"))?;
        if manifest.volumes.len() != header.volume_count as usize
            || manifest.volumes[0].len != header.volume_len
        {
            return Err(ReadError::Damaged {
                path: shown.to_path_buf(),
                what: "its header and manifest disagree about the volumes".into(),
            });
        }
        if let (Documents::Read, Some(entry)) = (documents, &manifest.image.documents) {
            // The manifest placed them inside volume 0, which ends where the file ends.
            let (oci_manifest, config) = read_documents(&file, header_offset, entry, shown)?;
            manifest.image.manifest_json = oci_manifest.into();
            manifest.image.config_json = config.into();
        }
        let (slots_at, slots_len) = signature::region();
        let slots = read_exact_at(&file, slots_len, header_offset + slots_at, shown)?;
        Ok(RunFile {
            path: shown.to_path_buf(),
            open_path: open_path.to_path_buf(),
            dir,
            file_len,
            header_offset,
            header,
            manifest,
            manifest_bytes,
            signature: signature::decode_record(&slots),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifest(&self) -> &RunManifest {
        &self.manifest
    }

    /// sha256 of the manifest, lowercase hex: the identity of this payload.
    pub fn payload_id(&self) -> String {
        hex::encode(self.header.payload_id)
    }

    /// Where the header sits in the file (the stub's length rounded up to 64 KiB).
    pub fn header_offset(&self) -> u64 {
        self.header_offset
    }

    pub fn manifest_len(&self) -> u64 {
        self.manifest_bytes.len() as u64
    }

    /// The manifest bytes exactly as stored (`app.run inspect --manifest`): what the payload id
    /// is the sha256 of and what a signature signs.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The signature record of the package (its slots in the header of volume 0).
    pub fn signature(&self) -> &SignatureRecord {
        &self.signature
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Find and open every volume; checks lengths, headers and footers.
    pub fn payload(&self) -> Result<Volumes, ReadError> {
        let count = self.header.volume_count.max(1);
        let mut paths: Vec<Option<PathBuf>> = vec![None; count as usize];
        paths[0] = Some(self.path.clone());
        if count > 1 {
            find_volumes(self, &mut paths)?;
        }
        let mut volumes = Vec::with_capacity(paths.len());
        let mut start = 0u64;
        for (index, path) in paths.into_iter().enumerate() {
            let path = path.unwrap_or_default();
            let open_path = if index == 0 { &self.open_path } else { &path };
            let file = File::open(open_path).map_err(io_err("opening", &path))?;
            let len = file.metadata().map_err(io_err("reading", &path))?.len();
            let header_offset = if index == 0 { self.header_offset } else { 0 };
            let want = header_offset + self.manifest.volumes[index].len;
            if len != want {
                return Err(if index == 0 {
                    ReadError::Incomplete {
                        path,
                        have: len,
                        want,
                    }
                } else {
                    ReadError::VolumeIncomplete {
                        path,
                        index: index as u32,
                        have: len,
                        want,
                    }
                });
            }
            let kept = file.try_clone().map_err(io_err("opening", &path))?;
            let source: Box<dyn ByteSource> = if prefers_pread(&file) {
                Box::new(PositionedFile::new(file, &path).map_err(io_err("reading", &path))?)
            } else {
                Box::new(MappedFile::new(&file).map_err(io_err("mapping", &path))?)
            };
            volumes.push(Volume {
                path,
                file: kept,
                start,
                header_offset,
                len,
                source,
            });
            start += len;
        }
        let layers = self
            .manifest
            .layers
            .iter()
            .map(|layer| {
                layer
                    .frames
                    .iter()
                    .map(|f| Frame {
                        offset: volumes[f.volume as usize].start
                            + volumes[f.volume as usize].header_offset
                            + f.offset,
                        compressed_len: f.compressed_len,
                        uncompressed_len: f.uncompressed_len,
                        sha256: f.sha256.clone(),
                        blake3: f.blake3.clone(),
                    })
                    .collect()
            })
            .collect();
        Ok(Volumes {
            volumes,
            layers,
            manifest: self.manifest.clone(),
            verdict: OnceLock::new(),
        })
    }
}

/// The image's OCI manifest and config from beside the manifest, checked against its sha256.
fn read_documents(
    file: &File,
    header_offset: u64,
    entry: &format::DocumentsEntry,
    path: &Path,
) -> Result<(String, String), ReadError> {
    let damaged = |what: &str| ReadError::Damaged {
        path: path.to_path_buf(),
        what: format!("its image documents {what}"),
    };
    // The manifest checked that both lie inside volume 0.
    let at = header_offset + entry.offset;
    let oci_manifest = read_exact_at(file, entry.manifest_len, at, path)?;
    let config = read_exact_at(file, entry.config_len, at + entry.manifest_len, path)?;
    if format::documents_sha256(&oci_manifest, &config) != entry.sha256 {
        return Err(damaged("do not match the sha256 the manifest gives"));
    }
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| damaged("are not UTF-8"));
    Ok((text(oci_manifest)?, text(config)?))
}

fn read_footer(
    file: &File,
    file_len: u64,
    path: &Path,
) -> Result<Option<(u64, Header)>, ReadError> {
    if file_len < FOOTER_LEN + HEADER_LEN {
        return Ok(None);
    }
    let tail = read_exact_at(file, FOOTER_LEN, file_len - FOOTER_LEN, path)?;
    let footer = match format::Footer::decode(&tail) {
        Ok(footer) => footer,
        Err(FormatError::Version { found }) => return Err(newer(path, found)),
        Err(_) => return Ok(None),
    };
    if footer.volume_len > file_len || footer.volume_len < HEADER_LEN + FOOTER_LEN {
        return Err(ReadError::Damaged {
            path: path.to_path_buf(),
            what: "its footer points outside the file".into(),
        });
    }
    let header_offset = file_len - footer.volume_len;
    let bytes = read_exact_at(file, HEADER_LEN, header_offset, path)?;
    let header = Header::decode(&bytes).map_err(|e| damaged(path, e, "header"))?;
    if header.payload_id[..16] != footer.payload_id_prefix || header.volume_len != footer.volume_len
    {
        return Err(ReadError::Damaged {
            path: path.to_path_buf(),
            what: "its header and footer disagree".into(),
        });
    }
    Ok(Some((header_offset, header)))
}

/// No valid footer: find the header after the ELF image to explain what happened.
fn diagnose_without_footer(file: &File, file_len: u64, path: &Path) -> ReadError {
    let probe_len = file_len.min(64 << 20);
    let Ok(head) = read_exact_at(file, probe_len, 0, path) else {
        return ReadError::NoPayload {
            path: path.to_path_buf(),
        };
    };
    let mut candidates = vec![0u64];
    if let Some(size) = format::elf_size(&head) {
        let first = align_up(size, ALIGN);
        candidates.extend((0..16).map(|i| first.saturating_add(i * ALIGN)));
    }
    for at in candidates {
        if at.saturating_add(96) > file_len {
            continue;
        }
        let Ok(bytes) = read_exact_at(file, 96, at, path) else {
            continue;
        };
        let header = match Header::decode(&bytes) {
            Ok(header) => header,
            Err(FormatError::Version { found }) => return newer(path, found),
            Err(_) => continue,
        };
        let want = at.saturating_add(header.volume_len);
        return if file_len < want {
            ReadError::Incomplete {
                path: path.to_path_buf(),
                have: file_len,
                want,
            }
        } else if file_len > want {
            ReadError::Damaged {
                path: path.to_path_buf(),
                what: format!("{} unexpected bytes follow the payload", file_len - want),
            }
        } else {
            ReadError::Damaged {
                path: path.to_path_buf(),
                what: "its footer (the last 64 bytes) is damaged".into(),
            }
        };
    }
    ReadError::NoPayload {
        path: path.to_path_buf(),
    }
}

fn find_volumes(run: &RunFile, paths: &mut [Option<PathBuf>]) -> Result<(), ReadError> {
    let count = paths.len() as u32;
    let mut stale: Vec<(u32, PathBuf, String)> = Vec::new();
    let entries = fs::read_dir(&run.dir).map_err(io_err("listing", &run.dir))?;
    let main_name = run.path.file_name().map(|n| n.to_owned());
    for entry in entries.flatten() {
        let path = entry.path();
        if Some(entry.file_name()) == main_name {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || meta.len() < HEADER_LEN + FOOTER_LEN {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let mut head = [0u8; 96];
        if file.read_exact_at(&mut head, 0).is_err() {
            continue;
        }
        let Ok(header) = Header::decode(&head) else {
            continue;
        };
        if header.volume_index == 0 {
            continue;
        }
        if header.payload_id != run.header.payload_id {
            stale.push((
                header.volume_index,
                path,
                hex::encode(&header.payload_id[..8]),
            ));
            continue;
        }
        if header.volume_index >= count {
            return Err(ReadError::VolumeExtra {
                path,
                index: header.volume_index,
                count,
            });
        }
        let slot = &mut paths[header.volume_index as usize];
        if slot.is_none() {
            *slot = Some(path);
        }
    }
    for (index, slot) in paths.iter().enumerate() {
        if slot.is_some() {
            continue;
        }
        let name = run
            .manifest
            .volumes
            .get(index)
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let hint = stale
            .iter()
            .find(|(i, p, _)| {
                *i == index as u32 || p.file_name().map(|n| n.as_bytes()) == Some(name.as_bytes())
            })
            .map(|(_, p, id)| {
                format!(
                    " ({} is a volume of a different installer, payload {id}…)",
                    p.display()
                )
            })
            .unwrap_or_default();
        return Err(ReadError::VolumeMissing {
            index: index as u32,
            count,
            dir: run.dir.clone(),
            name,
            payload_id: hex::encode(&run.header.payload_id[..8]) + "…",
            hint,
        });
    }
    Ok(())
}

/// True when the file lies on media where a mapping could fault with SIGBUS (removable or
/// network filesystems). `SEALER_RUN_IO=pread|mmap` overrides the choice.
fn prefers_pread(file: &File) -> bool {
    match std::env::var("SEALER_RUN_IO").as_deref() {
        Ok("pread") => return true,
        Ok("mmap") => return false,
        _ => {}
    }
    use std::os::unix::io::AsRawFd;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return true;
    }
    const MSDOS: i64 = 0x4d44;
    const EXFAT: i64 = 0x2011_BAB0;
    const FUSE: i64 = 0x6573_5546;
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517B;
    const CIFS: i64 = 0xFF53_4D42;
    const SMB2: i64 = 0xFE53_4D42;
    const V9FS: i64 = 0x0102_1997;
    const NTFS: i64 = 0x5346_544e;
    const ISOFS: i64 = 0x9660;
    const UDF: i64 = 0x1501_3346;
    let kind = st.f_type as i64;
    [
        MSDOS, EXFAT, FUSE, NFS, SMB, CIFS, SMB2, V9FS, NTFS, ISOFS, UDF,
    ]
    .contains(&kind)
}

struct Volume {
    path: PathBuf,
    /// The open file, for [`CheckedFile`].
    file: File,
    /// Offset of this volume in the virtual concatenation of all volumes.
    start: u64,
    header_offset: u64,
    len: u64,
    source: Box<dyn ByteSource>,
}

/// All volumes of a payload, opened, addressed as one concatenation (volume 0 first, from its
/// first byte), so unsplit files use plain file offsets.
pub struct Volumes {
    volumes: Vec<Volume>,
    /// Per layer, frames with offsets in the concatenation.
    layers: Vec<Vec<Frame>>,
    manifest: RunManifest,
    /// Set by a passing [`verify_digests`](Volumes::verify_digests) or
    /// [`verify`](Volumes::verify) whose files can vouch for themselves afterwards.
    verdict: OnceLock<Verdict>,
}

impl Volumes {
    fn volume_at(&self, offset: u64) -> Option<&Volume> {
        let i = self.volumes.partition_point(|v| v.start <= offset);
        self.volumes.get(i.checked_sub(1)?)
    }

    /// The file and file offsets of bytes `start..end` of the concatenation.
    pub fn locate(&self, start: u64, end: u64) -> (PathBuf, u64, u64) {
        match self.volume_at(start) {
            Some(v) => (v.path.clone(), start - v.start, end - v.start),
            None => (PathBuf::new(), start, end),
        }
    }

    /// The layers as inputs for [`unpack::unpack`].
    pub fn layer_inputs(&self) -> Vec<LayerInput<'_>> {
        self.manifest
            .layers
            .iter()
            .zip(&self.layers)
            .enumerate()
            .map(|(i, (layer, frames))| LayerInput {
                label: format!("layer {}", i + 1),
                compression: layer.compression,
                base: 0,
                frames,
                source: self as &dyn ByteSource,
            })
            .collect()
    }

    /// The compressed bytes of frame `frame` of layer `layer` (0-based), verified.
    pub fn frame_bytes(&self, layer: usize, frame: usize) -> Result<Cow<'_, [u8]>, ReadError> {
        let f = &self.layers[layer][frame];
        let bytes = self.bytes(f.offset, f.compressed_len).map_err(|e| {
            let (path, _, _) = self.locate(f.offset, f.offset);
            ReadError::Io {
                what: "reading",
                path,
                source: e,
            }
        })?;
        f.check_digest(&bytes)
            .map_err(|problem| self.corrupt(layer, frame, problem))?;
        Ok(bytes)
    }

    fn corrupt(&self, layer: usize, frame: usize, problem: FrameProblem) -> ReadError {
        let f = &self.layers[layer][frame];
        if let Some(path) = self.changed_volume() {
            return ReadError::Changed { path };
        }
        let (path, start, end) = self.locate(f.offset, f.offset + f.compressed_len);
        ReadError::CorruptFrame {
            layer: layer + 1,
            frame: frame + 1,
            path,
            start,
            end,
            problem,
        }
    }

    /// One frame: its sha256, then what [`FrameCheck`] asks of its content.
    fn check_frame(
        &self,
        layer: usize,
        index: usize,
        depth: FrameCheck,
    ) -> Result<(), FrameProblem> {
        let frame = &self.layers[layer][index];
        let bytes = self
            .bytes(frame.offset, frame.compressed_len)
            .map_err(FrameProblem::Unreadable)?;
        let compression = self.manifest.layers[layer].compression;
        let result = crate::frames::check_frame_bytes(frame, compression, &bytes, depth);
        drop(bytes);
        self.release(frame.offset, frame.compressed_len);
        result
    }

    /// The full integrity check (`app.run verify`): every frame's sha256, and every frame
    /// decoded to exactly the length the manifest gives. In parallel; `progress` gets
    /// compressed bytes checked. The first bad frame in payload order is reported with its
    /// exact byte range.
    pub fn verify(&self, progress: Option<&(dyn Fn(u64) + Sync)>) -> Result<(), ReadError> {
        self.verify_with(FrameCheck::Decode, progress)
    }

    /// The check before an install: every frame's sha256 and the content size a zstd frame
    /// declares. Decoding is left to the extraction, which checks every length again before
    /// anything is renamed into place.
    ///
    /// When every volume can vouch that it still holds the bytes checked ([`CheckedFile`]),
    /// the verdict is kept: an extraction from these volumes then uses each frame without
    /// hashing it again ([`ByteSource::checked`]), and fails, before its tree is renamed into
    /// place, if a volume changed in between ([`ByteSource::changed`]).
    pub fn verify_digests(&self, progress: Option<&(dyn Fn(u64) + Sync)>) -> Result<(), ReadError> {
        self.verify_with(FrameCheck::DeclaredSize, progress)
    }

    fn verify_with(
        &self,
        depth: FrameCheck,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<(), ReadError> {
        // Stamped before the first byte is read, so a change during the check shows too.
        let stamps: Option<Vec<CheckedFile>> = self
            .volumes
            .iter()
            .map(|v| CheckedFile::before_check(&v.file))
            .collect();
        self.check_frames(depth, progress)?;
        if let Some(verdict) =
            stamps.and_then(|files| Verdict::after_check(files, self.layers.iter().flatten()))
        {
            let _ = self.verdict.set(verdict);
        }
        Ok(())
    }

    fn check_frames(
        &self,
        depth: FrameCheck,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<(), ReadError> {
        let done = AtomicU64::new(0);
        let all: Vec<(usize, usize)> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(l, frames)| (0..frames.len()).map(move |f| (l, f)))
            .collect();
        let first_bad = all
            .par_iter()
            .filter_map(|&(l, f)| {
                let compressed_len = self.layers[l][f].compressed_len;
                let result = self.check_frame(l, f, depth);
                let now = done.fetch_add(compressed_len, Ordering::Relaxed) + compressed_len;
                if let Some(progress) = progress {
                    progress(now);
                }
                result.err().map(|problem| (l, f, problem))
            })
            .min_by_key(|(l, f, _)| (*l, *f));
        match first_bad {
            Some((l, f, problem)) => Err(self.corrupt(l, f, problem)),
            None => Ok(()),
        }
    }

    /// Extract the image's merged root filesystem into the new directory `dest`.
    pub fn extract(
        &self,
        dest: &Path,
        options: &UnpackOptions<'_>,
    ) -> Result<UnpackReport, ReadError> {
        let layers = self.layer_inputs();
        unpack::unpack(&layers, dest, options).map_err(|e| match e {
            UnpackError::Frame {
                frame,
                start,
                end,
                layer,
                problem,
            } => {
                if let Some(path) = self.changed_volume() {
                    return ReadError::Changed { path };
                }
                let (path, start, end) = self.locate(start, end);
                let layer_no = layer
                    .trim_start_matches("layer ")
                    .parse()
                    .unwrap_or_default();
                ReadError::CorruptFrame {
                    layer: layer_no,
                    frame,
                    path,
                    start,
                    end,
                    problem,
                }
            }
            other => match self.changed_volume() {
                Some(path) => ReadError::Changed { path },
                None => ReadError::Unpack(other),
            },
        })
    }

    /// The first volume that changed under its mapping since it was opened, or since a
    /// verdict that readers rely on was given.
    fn changed_volume(&self) -> Option<PathBuf> {
        if let Some(i) = self.verdict.get().and_then(Verdict::first_changed) {
            return Some(self.volumes[i].path.clone());
        }
        self.volumes
            .iter()
            .find(|v| v.source.changed())
            .map(|v| v.path.clone())
    }

    /// Compressed bytes of all frames.
    pub fn compressed_len(&self) -> u64 {
        self.layers.iter().flatten().map(|f| f.compressed_len).sum()
    }

    pub fn volume_paths(&self) -> Vec<PathBuf> {
        self.volumes.iter().map(|v| v.path.clone()).collect()
    }
}

impl ByteSource for Volumes {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        let volume = self.volume_at(offset).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset before the payload")
        })?;
        let local = offset - volume.start;
        if local + len > volume.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "bytes {local}–{} are beyond the end of {}",
                    local + len,
                    volume.path.display()
                ),
            ));
        }
        volume.source.bytes(local, len)
    }

    fn len(&self) -> u64 {
        self.volumes.last().map(|v| v.start + v.len).unwrap_or(0)
    }

    fn changed(&self) -> bool {
        self.volumes.iter().any(|v| v.source.changed())
            || self
                .verdict
                .get()
                .is_some_and(|v| v.first_changed().is_some())
    }

    fn checked(&self, offset: u64, len: u64, sha256: &str) -> bool {
        self.verdict
            .get()
            .is_some_and(|verdict| verdict.covers(offset, len, sha256))
            && !self.volumes.iter().any(|v| v.source.changed())
    }

    fn release(&self, offset: u64, len: u64) {
        if let Some(volume) = self.volume_at(offset) {
            volume.source.release(offset - volume.start, len);
        }
    }
}
