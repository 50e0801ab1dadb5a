//! What gets installed: an image's layers as verified frames, its config, and the static agent
//! binary that unpacks them on each host.
//!
//! A payload comes from the local store (`sealer run IMAGE`) or from a `.run` package
//! (`app.run install`); the engine does not care which. This module reads; it never writes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use packer::format::elf_size;
use packer::frames::{scan_frames, Frame};
use packer::source::{ByteSource, MappedFile};
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
    #[error("the installer stub `sealer-stub` is not beside {}; build it (`cargo build --release`) or set SEALER_STUB", .0.display())]
    StubNotFound(PathBuf),
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
    pub agent: Arc<Vec<u8>>,
    /// sha256 of `agent`, hex.
    pub agent_sha256: String,
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
            if desc.media_type != MEDIA_TYPE_LAYER_ZSTD {
                return Err(PayloadError::NotZstd {
                    layer: i + 1,
                    image: image.reference.to_string(),
                    media_type: desc.media_type.clone(),
                });
            }
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
                // indexing it and checking its digest.
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
                (Box::new(map), frames)
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
        let agent_bytes = std::fs::read(agent).map_err(io_err("reading the agent", agent))?;
        let agent_sha256 = hex::encode(Sha256::digest(&agent_bytes));
        Ok(Payload {
            id: image.digest.trim_start_matches("sha256:").to_string(),
            image: image.reference.to_string(),
            container_images: crate::container_images::listed_images(&image.config),
            config: image.config.clone(),
            layers,
            sources,
            agent: Arc::new(agent_bytes),
            agent_sha256,
        })
    }
}

impl Payload {
    /// The payload of a `.run` package: its frames (in `package`, the volumes the caller opened
    /// and checked), config and the stub at its head (the agent).
    pub fn from_package(run: &RunFile, package: packer::Volumes) -> Result<Payload, PayloadError> {
        let manifest = run.manifest().clone();
        let config: ImageConfig =
            serde_json::from_str(&manifest.image.config_json).map_err(PayloadError::Config)?;
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
        let agent = stub_bytes(run)?;
        let agent_sha256 = hex::encode(Sha256::digest(&agent));
        Ok(Payload {
            id: run.payload_id(),
            image: manifest.image.name.clone(),
            container_images: crate::container_images::listed_images(&config),
            config,
            layers,
            sources: vec![Box::new(package)],
            agent: Arc::new(agent),
            agent_sha256,
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

/// The installer stub at the head of a package (its ELF image, without the padding).
fn stub_bytes(run: &RunFile) -> Result<Vec<u8>, PayloadError> {
    let mut file = File::open(run.path()).map_err(io_err("opening", run.path()))?;
    let mut head = vec![0u8; run.header_offset() as usize];
    std::io::Read::read_exact(&mut file, &mut head)
        .map_err(io_err("reading the installer stub from", run.path()))?;
    if let Some(len) = elf_size(&head) {
        head.truncate(len as usize);
    }
    Ok(head)
}

/// Where the static installer stub is: `$SEALER_STUB`, else `sealer-stub` beside this executable.
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
    Err(PayloadError::StubNotFound(exe))
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
