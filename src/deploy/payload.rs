//! What gets installed: an image's layers as verified frames, its config, and the static agent
//! binary that unpacks them on each host.
//!
//! A payload comes from the local store (`sealer run IMAGE`) or from a `.run` package
//! (`app.run install`); the engine does not care which. This module reads; it never writes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use packer::frames::{scan_frames, Frame};
use packer::source::{ByteSource, MappedFile};
use packer::unpack::Compression;
use sha2::{Digest, Sha256};

use crate::store::{Image, ImageConfig, Store, MEDIA_TYPE_LAYER_ZSTD};

/// One layer of a payload.
#[derive(Clone)]
pub struct PayloadLayer {
    pub label: String,
    pub compression: Compression,
    /// Offset of the layer inside `source`; frame offsets are relative to it.
    pub base: u64,
    pub frames: Vec<Frame>,
    pub source: Arc<dyn ByteSource + Send + Sync>,
}

/// Everything the engine distributes.
pub struct Payload {
    /// Identity of the content (hex); the journal keys every step on it.
    pub id: String,
    pub image: String,
    pub config: ImageConfig,
    pub layers: Vec<PayloadLayer>,
    /// The static agent executable uploaded to hosts.
    pub agent: Arc<Vec<u8>>,
    /// sha256 of `agent`, hex.
    pub agent_sha256: String,
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

    pub fn frame_count(&self) -> usize {
        self.layers.iter().map(|l| l.frames.len()).sum()
    }

    /// Build a payload from an image in the store; `agent` is the static stub executable.
    pub fn from_store(store: &Store, image: &Image, agent: &Path) -> Result<Payload, String> {
        let mut layers = Vec::new();
        for (i, desc) in image.manifest.layers.iter().enumerate() {
            if desc.media_type != MEDIA_TYPE_LAYER_ZSTD {
                return Err(format!(
                    "layer {} of {} is {}; only zstd layers can be installed (pack the image or rebuild it)",
                    i + 1,
                    image.reference,
                    desc.media_type
                ));
            }
            let path = store.blob_path(&desc.digest).map_err(|e| e.to_string())?;
            let file =
                File::open(&path).map_err(|e| format!("opening layer {}: {e}", path.display()))?;
            let len = file
                .metadata()
                .map_err(|e| format!("reading {}: {e}", path.display()))?
                .len();
            let (source, frames): (Arc<dyn ByteSource + Send + Sync>, Vec<Frame>) = if len == 0 {
                (Arc::new(Vec::<u8>::new()), Vec::new())
            } else {
                let map = MappedFile::new(&file)
                    .map_err(|e| format!("mapping {}: {e}", path.display()))?;
                // A damaged blob is refused here, before any host is touched.
                let actual = format!("sha256:{}", hex::encode(Sha256::digest(map.as_slice())));
                if actual != desc.digest {
                    return Err(crate::store::StoreError::BlobCorrupt {
                        digest: desc.digest.clone(),
                        actual,
                    }
                    .to_string());
                }
                let frames = scan_frames(map.as_slice())
                    .map_err(|e| format!("layer {}: {e}", desc.digest))?;
                (Arc::new(map), frames)
            };
            layers.push(PayloadLayer {
                label: format!("layer {}", i + 1),
                compression: Compression::Zstd,
                base: 0,
                frames,
                source,
            });
        }
        let agent_bytes = std::fs::read(agent)
            .map_err(|e| format!("reading the agent {}: {e}", agent.display()))?;
        let agent_sha256 = hex::encode(Sha256::digest(&agent_bytes));
        Ok(Payload {
            id: image.digest.trim_start_matches("sha256:").to_string(),
            image: image.reference.to_string(),
            config: image.config.clone(),
            layers,
            agent: Arc::new(agent_bytes),
            agent_sha256,
        })
    }
}

/// Where the static installer stub is: `$SEALER_STUB`, else `sealer-stub` beside this executable.
pub fn find_stub() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SEALER_STUB").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("SEALER_STUB={} is not a file", path.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for candidate in [dir.join("sealer-stub"), dir.join("../sealer-stub")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "the installer stub `sealer-stub` is not beside {}; build it (`cargo build --release`) or set SEALER_STUB",
        exe.display()
    ))
}
