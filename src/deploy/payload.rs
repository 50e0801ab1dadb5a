//! What gets installed: an image's layers as verified frames, its config, and the static agent
//! binary that unpacks them on each host.
//!
//! A payload comes from the local store (`sealer run IMAGE`) or from a `.run` package
//! (`app.run install`); the engine does not care which. This module reads; the one thing it
//! writes is the zstd copy of a gzip or plain-tar layer (an image sealer or another tool pushed),
//! kept in the store beside the original and found again by the original's digest.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use packer::format::elf_size;
use packer::frames::{scan_frames, Frame};
use packer::source::{ByteSource, CheckedFile, MappedFile, Verdict, Vouched};
use packer::unpack::{Compression, LayerInput};
use packer::RunFile;
use sha2::{Digest, Sha256};

use crate::store::{Image, ImageConfig, Store, StoreError, MEDIA_TYPE_LAYER_ZSTD};

/// Why a payload could not be assembled. A corrupt store blob and a damaged package keep their
/// kinds ([`StoreError::BlobCorrupt`], [`packer::ReadError`]).
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Package(#[from] packer::ReadError),
    #[error("layer {layer} of {image} is {media_type}; only zstd layers can be installed (pack the image or rebuild it)")]
    NotZstd {
        layer: usize,
        image: String,
        media_type: String,
    },
    /// The image is sealer's, and its extension annotation is unreadable.
    #[error(transparent)]
    Extension(#[from] crate::sealer_image::ExtensionError),
    /// A gzip or plain-tar layer could not be turned into zstd frames.
    #[error("layer {layer} of {image}: {reason}")]
    Transcode {
        layer: usize,
        image: String,
        reason: String,
    },
    /// A store blob fails a frame of the index the store kept for it.
    #[error("blob {digest} is corrupt (frame {frame}: {detail}); remove the image and pull or build it again")]
    CorruptFrame {
        digest: String,
        frame: usize,
        detail: String,
    },
    /// A store blob without a frame index is not a sequence of zstd frames.
    #[error("layer {digest}: {reason}")]
    Unframed { digest: String, reason: String },
    #[error("the package's image config is unreadable: {0}")]
    Config(serde_json::Error),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SEALER_STUB={} is not a file", .0.display())]
    StubEnvNotAFile(PathBuf),
    #[error("locating this executable: {0}")]
    CurrentExe(std::io::Error),
    /// No `sealer-stub` beside this executable, and this executable cannot stand in for it.
    #[error("{} is dynamically linked, so it cannot be the installer a package starts with or the agent uploaded to bare hosts, and no static `sealer-stub` is beside it; use the static release binary, build from the checkout (its .cargo/config.toml links statically), or set SEALER_STUB", .0.display())]
    StubDynamic(PathBuf),
}

fn io_err<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> PayloadError + 'p {
    move |source| PayloadError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One layer of a payload.
#[derive(Clone)]
pub struct PayloadLayer {
    pub label: String,
    pub compression: Compression,
    /// Offset of the layer inside `source`; frame offsets are relative to it.
    pub base: u64,
    pub frames: Vec<Frame>,
    /// Index into [`Payload::sources`].
    pub source: usize,
    /// The images layer (container images as an OCI layout under `images/`): it goes only to
    /// the hosts that serve the cluster's registry.
    pub container_images: bool,
}

/// Everything the engine distributes.
pub struct Payload {
    /// Identity of the content (hex); the journal keys every step on it.
    pub id: String,
    pub image: String,
    pub config: ImageConfig,
    pub layers: Vec<PayloadLayer>,
    /// Where frame bytes are read from (store blobs, or the package's volumes).
    pub sources: Vec<Box<dyn ByteSource>>,
    /// The static agent executable uploaded to hosts.
    pub agent: Agent,
    /// The container images the image carries (its config's list).
    pub container_images: Vec<crate::container_images::ContainerImage>,
}

impl Payload {
    pub fn compressed_len(&self) -> u64 {
        self.layers
            .iter()
            .flat_map(|l| &l.frames)
            .map(|f| f.compressed_len)
            .sum()
    }

    pub fn uncompressed_len(&self) -> u64 {
        self.layers
            .iter()
            .flat_map(|l| &l.frames)
            .map(|f| f.uncompressed_len)
            .sum()
    }

    /// The layers as inputs of the extraction engine.
    pub fn layer_inputs(&self) -> Vec<LayerInput<'_>> {
        self.layers
            .iter()
            .map(|l| LayerInput {
                label: l.label.clone(),
                compression: l.compression,
                base: l.base,
                frames: &l.frames,
                source: self.sources[l.source].as_ref(),
            })
            .collect()
    }

    pub fn frame_count(&self) -> usize {
        self.layers.iter().map(|l| l.frames.len()).sum()
    }

    /// Build a payload from an image in the store; `agent` is the static stub executable.
    pub fn from_store(store: &Store, image: &Image, agent: &Path) -> Result<Payload, PayloadError> {
        let mut layers = Vec::new();
        let mut sources: Vec<Box<dyn ByteSource>> = Vec::new();
        for (i, desc) in image.manifest.layers.iter().enumerate() {
            let transcoded;
            let desc = if desc.media_type == MEDIA_TYPE_LAYER_ZSTD {
                desc
            } else if is_transcodable(&desc.media_type) {
                let diff_id = image.config.rootfs.diff_ids.get(i).map(String::as_str);
                transcoded =
                    zstd_copy(store, desc, diff_id).map_err(|reason| PayloadError::Transcode {
                        layer: i + 1,
                        image: image.reference.to_string(),
                        reason,
                    })?;
                &transcoded
            } else {
                return Err(PayloadError::NotZstd {
                    layer: i + 1,
                    image: image.reference.to_string(),
                    media_type: desc.media_type.clone(),
                });
            };
            let path = store.blob_path(&desc.digest)?;
            let file = File::open(&path).map_err(io_err("opening layer", &path))?;
            let len = file.metadata().map_err(io_err("reading", &path))?.len();
            let (source, frames): (Box<dyn ByteSource>, Vec<Frame>) = if len == 0 {
                (Box::new(Vec::<u8>::new()), Vec::new())
            } else {
                let map = MappedFile::new(&file).map_err(io_err("mapping", &path))?;
                // A damaged blob is refused here, before any host is touched: against the
                // frame index the store kept (every frame hashed once, in parallel, its pages
                // dropped from this process once hashed), or, for a blob without one, by
                // indexing it and checking its digest. The check's verdict is kept when the
                // blob can vouch for itself later, so unpacking it here hashes nothing again.
                let stamp = CheckedFile::before_check(&file);
                let frames = match store.frame_index(&desc.digest) {
                    Some(frames) => {
                        let release = |frame: &Frame, _: &[u8]| {
                            map.release(frame.offset, frame.compressed_len);
                            Ok(())
                        };
                        packer::frames::check_and_copy_frames(map.as_slice(), &frames, release)
                            .map_err(|(index, problem)| PayloadError::CorruptFrame {
                                digest: desc.digest.clone(),
                                frame: index + 1,
                                detail: problem.detail(),
                            })?;
                        frames
                    }
                    None => {
                        let (frames, actual) =
                            index_blob(&map).map_err(|reason| PayloadError::Unframed {
                                digest: desc.digest.clone(),
                                reason,
                            })?;
                        if actual != desc.digest {
                            return Err(StoreError::BlobCorrupt {
                                digest: desc.digest.clone(),
                                actual,
                            }
                            .into());
                        }
                        frames
                    }
                };
                let verdict = stamp.and_then(|s| Verdict::after_check(vec![s], &frames));
                (Box::new(Vouched::new(map, verdict)), frames)
            };
            layers.push(PayloadLayer {
                label: format!("layer {}", i + 1),
                compression: Compression::Zstd,
                base: 0,
                frames,
                source: sources.len(),
                container_images: crate::container_images::is_images_layer(desc),
            });
            sources.push(source);
        }
        let config = crate::sealer_image::with_extension(&image.manifest, image.config.clone())?;
        Ok(Payload {
            id: image.digest.trim_start_matches("sha256:").to_string(),
            image: image.reference.to_string(),
            container_images: crate::container_images::listed_images(&image.config),
            config,
            layers,
            sources,
            agent: Agent::file(agent),
        })
    }
}

/// Layer media types installed through a zstd copy: gzip (what sealer, docker and buildah push)
/// and plain tar.
fn is_transcodable(media_type: &str) -> bool {
    media_type.ends_with("+gzip") || media_type.ends_with(".gzip") || media_type.ends_with(".tar")
}

/// The zstd copy of the gzip or tar layer `desc`: found by the original's digest in the store's
/// cache (`cache/zstd-of/<hex>` names the copy, whose blob and frame index must still be
/// there), else written now as independent zstd frames. The uncompressed stream must match the
/// image's `diff_id` for that layer.
fn zstd_copy(
    store: &Store,
    desc: &crate::store::Descriptor,
    diff_id: Option<&str>,
) -> Result<crate::store::Descriptor, String> {
    let hex = desc.digest.trim_start_matches("sha256:");
    let memo = store.cache_dir().join("zstd-of").join(hex);
    let copy = |digest: String, size: u64| crate::store::Descriptor {
        media_type: MEDIA_TYPE_LAYER_ZSTD.to_string(),
        digest,
        size,
        annotations: desc.annotations.clone(),
        platform: None,
    };
    if let Ok(known) = std::fs::read_to_string(&memo) {
        let known = known.trim().to_string();
        if store.has_blob(&known) && store.frame_index(&known).is_some() {
            let size = store
                .blob_path(&known)
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len());
            return Ok(copy(known, size));
        }
    }
    let source = store.blob_path(&desc.digest).map_err(|e| e.to_string())?;
    let mut reader = crate::store::layer_reader(&source, &desc.media_type)
        .map_err(|e| format!("reading {}: {e}", desc.digest))?;
    let blob = store.unhashed_blob_writer().map_err(|e| e.to_string())?;
    let mut framed = packer::frames::FramedWriter::new(blob, 3);
    std::io::copy(&mut reader, &mut framed)
        .map_err(|e| format!("decompressing {} ({}): {e}", desc.digest, desc.media_type))?;
    let (blob, info) = framed
        .finish()
        .map_err(|e| format!("writing the zstd copy of {}: {e}", desc.digest))?;
    let unpacked = format!("sha256:{}", info.diff_id);
    if let Some(expected) = diff_id {
        if expected != unpacked {
            return Err(format!(
                "{} unpacks to {unpacked}, but the image config says {expected}; pull the image again",
                desc.digest
            ));
        }
    }
    let digest = format!("sha256:{}", info.digest);
    let (digest, size) = blob
        .commit(Some(&digest))
        .map_err(|e| format!("storing the zstd copy of {}: {e}", desc.digest))?;
    store.put_frame_index(&digest, &info.frames);
    if let Some(dir) = memo.parent() {
        // Only a shortcut: without it the next run writes the copy again.
        let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&memo, &digest));
    }
    Ok(copy(digest, size))
}

impl Payload {
    /// The payload of a `.run` package: its frames (in `package`, the volumes the caller opened
    /// and checked), config and the stub at its head (the agent).
    pub fn from_package(
        run: &RunFile,
        package: Arc<packer::Volumes>,
    ) -> Result<Payload, PayloadError> {
        let manifest = run.manifest();
        let config: ImageConfig =
            serde_json::from_str(&manifest.image.config_json).map_err(PayloadError::Config)?;
        let config =
            match serde_json::from_str::<crate::store::Manifest>(&manifest.image.manifest_json) {
                Ok(oci) => crate::sealer_image::with_extension(&oci, config)?,
                Err(_) => config,
            };
        // The package keeps the image's OCI manifest; its layers are in the same order.
        let images_layer =
            serde_json::from_str::<crate::store::Manifest>(&manifest.image.manifest_json)
                .ok()
                .and_then(|m| crate::container_images::images_layer_index(&m));
        let layers: Vec<PayloadLayer> = package
            .layer_inputs()
            .into_iter()
            .enumerate()
            .map(|(i, input)| PayloadLayer {
                label: input.label.clone(),
                compression: input.compression,
                base: input.base,
                frames: input.frames.to_vec(),
                source: 0,
                container_images: images_layer == Some(i),
            })
            .collect();
        Ok(Payload {
            id: run.payload_id(),
            image: manifest.image.name.clone(),
            container_images: crate::container_images::listed_images(&config),
            config,
            layers,
            sources: vec![Box::new(package)],
            agent: Agent::package_head(run),
        })
    }
}

/// The frame index and the digest (`sha256:…`) of a mapped store blob, one frame at a time: each
/// frame's pages are dropped once it is hashed, so a blob of any size keeps one frame resident.
fn index_blob(map: &MappedFile) -> Result<(Vec<Frame>, String), String> {
    let blob = map.as_slice();
    let mut whole = Sha256::new();
    let mut frames = Vec::new();
    let mut offset = 0usize;
    while offset < blob.len() {
        let len = zstd::zstd_safe::find_frame_compressed_size(&blob[offset..]).map_err(|code| {
            format!(
                "no zstd frame at byte {offset} ({}); the blob is damaged, pull or build the image again",
                zstd::zstd_safe::get_error_name(code)
            )
        })?;
        whole.update(&blob[offset..offset + len]);
        let found = scan_frames(&blob[offset..offset + len])
            .map_err(|e| format!("the frame at byte {offset}: {e}"))?;
        frames.extend(found.into_iter().map(|mut f| {
            f.offset += offset as u64;
            f
        }));
        map.release(offset as u64, len as u64);
        offset += len;
    }
    Ok((frames, format!("sha256:{}", hex::encode(whole.finalize()))))
}

/// The static agent executable uploaded to hosts, read and hashed the first time a host needs
/// it. On this machine the agent is the running program itself, so an install here alone never
/// reads it (15 MB and its sha256, on every run).
pub struct Agent {
    origin: AgentOrigin,
    read: OnceLock<Result<LoadedAgent, String>>,
}

/// The agent's bytes and their sha256 (hex).
type LoadedAgent = (Arc<Vec<u8>>, String);

enum AgentOrigin {
    /// A static executable: `sealer-stub`, or `sealer` itself.
    File(PathBuf),
    /// The installer at the head of a `.run` package: the bytes before its header, up to the end
    /// of the ELF image.
    PackageHead { path: PathBuf, header_offset: u64 },
}

impl Agent {
    pub fn file(path: &Path) -> Agent {
        Agent {
            origin: AgentOrigin::File(path.to_path_buf()),
            read: OnceLock::new(),
        }
    }

    pub fn package_head(run: &RunFile) -> Agent {
        Agent {
            origin: AgentOrigin::PackageHead {
                path: run.path().to_path_buf(),
                header_offset: run.header_offset(),
            },
            read: OnceLock::new(),
        }
    }

    /// An agent already in memory (the engine's own tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Agent {
        let read = OnceLock::new();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let _ = read.set(Ok((Arc::new(bytes), sha256)));
        Agent {
            origin: AgentOrigin::File(PathBuf::new()),
            read,
        }
    }

    /// The executable's bytes.
    pub fn bytes(&self) -> Result<&Arc<Vec<u8>>, String> {
        self.loaded().map(|(bytes, _)| bytes)
    }

    /// Its sha256, hex.
    pub fn sha256(&self) -> Result<&str, String> {
        self.loaded().map(|(_, sha)| sha.as_str())
    }

    fn loaded(&self) -> Result<&LoadedAgent, String> {
        self.read
            .get_or_init(|| {
                let bytes = self.origin.read().map_err(|e| e.to_string())?;
                let sha256 = hex::encode(Sha256::digest(&bytes));
                Ok((Arc::new(bytes), sha256))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl AgentOrigin {
    fn read(&self) -> Result<Vec<u8>, PayloadError> {
        match self {
            AgentOrigin::File(path) => {
                std::fs::read(path).map_err(io_err("reading the agent", path))
            }
            AgentOrigin::PackageHead {
                path,
                header_offset,
            } => {
                let mut file = File::open(path).map_err(io_err("opening", path))?;
                let mut head = vec![0u8; *header_offset as usize];
                std::io::Read::read_exact(&mut file, &mut head)
                    .map_err(io_err("reading the installer stub from", path))?;
                if let Some(len) = elf_size(&head) {
                    head.truncate(len as usize);
                }
                Ok(head)
            }
        }
    }
}

/// Where the static installer stub is: `$SEALER_STUB`, else `sealer-stub` beside this
/// executable, else this executable itself (`sealer` carries the installer and the agent, so
/// one static `sealer` is all an operator needs).
pub fn find_stub() -> Result<PathBuf, PayloadError> {
    if let Some(path) = std::env::var_os("SEALER_STUB").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(PayloadError::StubEnvNotAFile(path))
        };
    }
    let exe = std::env::current_exe().map_err(PayloadError::CurrentExe)?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for candidate in [dir.join("sealer-stub"), dir.join("../sealer-stub")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    match ExecutableHead::read(&exe) {
        Ok(head) if head.dynamic => Err(PayloadError::StubDynamic(exe)),
        Ok(_) => Ok(exe),
        Err(source) => Err(PayloadError::Io {
            what: "reading",
            path: exe,
            source,
        }),
    }
}

/// What the start of an executable file says about it: whether bytes follow its ELF image (a
/// payload: the file is a package) and whether it names a program interpreter (it is
/// dynamically linked, so it needs libraries a bare host may lack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutableHead {
    pub carries_payload: bool,
    pub dynamic: bool,
}

impl ExecutableHead {
    /// Reads the ELF header and program headers of `path` (its first 64 KiB). A file that is
    /// not ELF64 carries no payload and is not dynamic.
    pub fn read(path: &Path) -> std::io::Result<ExecutableHead> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = Vec::with_capacity(64 << 10);
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, 64 << 10), &mut head)?;
        Ok(Self::from_bytes(&head, len))
    }

    /// The same from the first bytes of a file of `len` bytes. The ELF image's end comes from
    /// its section header table, which a linker puts last.
    pub fn from_bytes(head: &[u8], len: u64) -> ExecutableHead {
        let Some(end) = elf_size(head) else {
            return ExecutableHead {
                carries_payload: false,
                dynamic: false,
            };
        };
        let u64_at = |at: usize| -> u64 {
            head.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        let u16_at = |at: usize| -> u64 {
            head.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
                .unwrap_or(0)
        };
        const PT_INTERP: u32 = 3;
        let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
        let dynamic = (0..phnum).any(|i| {
            let at = phoff.saturating_add(i.saturating_mul(phentsize));
            usize::try_from(at)
                .ok()
                .and_then(|at| head.get(at..at.checked_add(4)?))
                .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP)
        });
        ExecutableHead {
            carries_payload: len > end,
            dynamic,
        }
    }

    /// The head of the running executable (`/proc/self/exe`); `None` when it cannot be read.
    pub fn of_self() -> Option<ExecutableHead> {
        Self::read(Path::new("/proc/self/exe")).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Reference;
    use crate::store::{Descriptor, Manifest, MEDIA_TYPE_CONFIG};

    fn descriptor(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: Default::default(),
            platform: None,
        }
    }

    /// An image of one layer of `tar` bytes, stored as framed zstd with its frame index.
    fn stored_image(store: &Store, tar: &[u8]) -> Image {
        let mut framed = packer::frames::FramedWriter::new(Vec::new(), 3);
        std::io::Write::write_all(&mut framed, tar).unwrap();
        let (blob, info) = framed.finish().unwrap();
        let (layer_digest, layer_size) = store.put_blob(&blob).unwrap();
        store.put_frame_index(&layer_digest, &info.frames);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
            info.diff_id
        );
        let (config_digest, config_size) = store.put_blob(config.as_bytes()).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: None,
            config: descriptor(MEDIA_TYPE_CONFIG, config_digest, config_size),
            layers: vec![descriptor(MEDIA_TYPE_LAYER_ZSTD, layer_digest, layer_size)],
            annotations: Default::default(),
        };
        let reference = Reference::parse("checked:v1").unwrap();
        store.commit_image(&reference, &manifest).unwrap();
        store.image(&reference).unwrap()
    }

    #[test]
    fn a_store_payload_checked_before_the_install_is_not_hashed_again_by_the_unpack() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        for i in 0..40u32 {
            let data: Vec<u8> = (0..(1u32 << 20)).map(|b| (b * 7 + i) as u8).collect();
            let mut h = tar::Header::new_gnu();
            h.set_path(format!("data/{i}")).unwrap();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            tar.append(&h, &data[..]).unwrap();
        }
        let image = stored_image(&store, &tar.into_inner().unwrap());
        // Blobs are old by the time anyone installs them; a blob written a moment ago cannot
        // vouch for itself (see packer::source::CheckedFile).
        std::thread::sleep(packer::source::SETTLED + std::time::Duration::from_millis(100));
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent").unwrap();
        let payload = Payload::from_store(&store, &image, &agent).unwrap();
        assert!(payload.frame_count() > 1, "{}", payload.frame_count());
        let report = packer::unpack::unpack(
            &payload.layer_inputs(),
            &dir.path().join("rootfs"),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(report.files, 40);
        assert_eq!(report.frames_hashed, 0);

        // The blob rewritten in place after the check (same size): the unpack refuses it.
        let payload = Payload::from_store(&store, &image, &agent).unwrap();
        let blob = store.blob_path(&image.manifest.layers[0].digest).unwrap();
        let mut bytes = std::fs::read(&blob).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        let file = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes[at..at + 1], at as u64).unwrap();
        drop(file);
        let dest = dir.path().join("rootfs2");
        let err = packer::unpack::unpack(&payload.layer_inputs(), &dest, &Default::default())
            .unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn a_corrupt_store_blob_reaches_the_install_error_as_blob_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let layer = zstd::encode_all(&b"layer bytes"[..], 3).unwrap();
        let (layer_digest, layer_size) = store.put_blob(&layer).unwrap();
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let (config_digest, config_size) = store.put_blob(config).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: None,
            config: descriptor(MEDIA_TYPE_CONFIG, config_digest, config_size),
            layers: vec![descriptor(
                MEDIA_TYPE_LAYER_ZSTD,
                layer_digest.clone(),
                layer_size,
            )],
            annotations: Default::default(),
        };
        let reference = Reference::parse("corrupt:v1").unwrap();
        store.commit_image(&reference, &manifest).unwrap();
        // Another valid zstd frame in the blob's place: readable, but not the blob named.
        let path = store.blob_path(&layer_digest).unwrap();
        std::fs::write(&path, zstd::encode_all(&b"other bytes"[..], 3).unwrap()).unwrap();

        let image = store.image(&reference).unwrap();
        let err = Payload::from_store(&store, &image, &path).err().unwrap();
        assert!(
            matches!(&err, PayloadError::Store(StoreError::BlobCorrupt { digest, .. }) if *digest == layer_digest),
            "{err:?}"
        );
        let err = crate::install::Error::from(err);
        assert!(
            matches!(
                &err,
                crate::install::Error::Payload(PayloadError::Store(StoreError::BlobCorrupt { .. }))
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("blob {layer_digest} is corrupt")),
            "{err}"
        );
    }
}
