//! Between the store and `.run` packages: `sealer pack` (an image and the stub into one
//! self-extracting file) and `app.run load` (a package's image back into a store).
//!
//! The format itself lives in `packer`; this module only maps store images onto it and back.

use std::io::Write;
use std::path::{Path, PathBuf};

use packer::frames::FramedWriter;
use packer::unpack::Compression;
use packer::{LayerBlob, PackReport, PackSpec, RunFile};
use sha2::{Digest, Sha256};

use crate::reference::{Reference, ReferenceError};
use crate::store::{
    check_image_layers, ImageConfig, Manifest, Store, StoreError, MEDIA_TYPE_LAYER_ZSTD,
};
use crate::trust::{SigningKey, Trust, TrustError};

/// Why packing an image or loading a package failed. The kinds of the store and the format
/// (a corrupt blob, a split size too small, a damaged volume) pass through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] packer::WriteError),
    #[error(transparent)]
    Read(#[from] packer::ReadError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The image is not signed as `--trust` or the site policy requires; nothing was written.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The image in the store cannot be packed as it is.
    #[error("the {what} of {image} is not UTF-8")]
    NotUtf8 {
        what: &'static str,
        image: Reference,
    },
    #[error("the config of {0} lists fewer diff_ids than layers")]
    MissingDiffIds(Reference),
    /// The package's image does not hold together; nothing was loaded.
    #[error(
        "{reason}; the package is damaged or was not made by `sealer pack`, nothing was loaded"
    )]
    Refused { reason: String },
    #[error("decoding frame {frame} of layer {layer}: {source}")]
    Decode {
        layer: usize,
        frame: usize,
        source: std::io::Error,
    },
    #[error("{what} layer {layer}: {source}")]
    Layer {
        what: &'static str,
        layer: usize,
        source: std::io::Error,
    },
    #[error("layer {layer} hashes to {actual}, not {digest}")]
    LayerDigest {
        layer: usize,
        actual: String,
        digest: String,
    },
}

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    pub image: Reference,
    pub output: PathBuf,
    pub compression: Compression,
    /// A level of `compression`. Without one, zstd frames are copied and keep their level;
    /// with one, every frame is recompressed at it.
    pub level: Option<packer::Level>,
    /// Largest output file; larger packages become volumes.
    pub split_size: Option<u64>,
    /// The installer stub (`sealer-stub`).
    pub stub: PathBuf,
    /// Keys the image must be signed by (`--trust`); `None`: the site policy, if there is one.
    pub trust: Option<Trust>,
}

/// Pack an image of `store` into a `.run` file. `progress(done, total)` reports bytes written.
pub fn pack(
    store: &Store,
    opts: &PackOptions,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PackReport, PackError> {
    pack_signed(store, opts, None, progress)
}

/// [`pack`], with the package's manifest signed by `key` (`sealer pack --sign`): the signature
/// is in the package before it is renamed into place.
pub fn pack_signed(
    store: &Store,
    opts: &PackOptions,
    key: Option<&SigningKey>,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PackReport, PackError> {
    let not_utf8 = |what| PackError::NotUtf8 {
        what,
        image: opts.image.clone(),
    };
    let image = store.image(&opts.image)?;
    crate::trust::enforce_image_trust(store, &image, opts.trust.as_ref())?;
    let manifest_json =
        String::from_utf8(store.read_blob(&image.digest)?).map_err(|_| not_utf8("manifest"))?;
    let config_json = String::from_utf8(store.read_blob(&image.manifest.config.digest)?)
        .map_err(|_| not_utf8("config"))?;
    let mut layers = Vec::new();
    for (i, desc) in image.manifest.layers.iter().enumerate() {
        let diff_id = image
            .config
            .rootfs
            .diff_ids
            .get(i)
            .cloned()
            .ok_or_else(|| PackError::MissingDiffIds(opts.image.clone()))?;
        layers.push(LayerBlob {
            path: store.blob_path(&desc.digest)?,
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            diff_id,
            frames: store.frame_index(&desc.digest),
            keep_frames: crate::container_images::is_images_layer(desc),
        });
    }
    let spec = PackSpec {
        stub: opts.stub.clone(),
        image_name: opts.image.store_key(),
        manifest_digest: image.digest.clone(),
        manifest_json,
        config_digest: image.manifest.config.digest.clone(),
        config_json,
        layers,
        compression: opts.compression,
        level: opts.level,
        split_size: opts.split_size,
        output: opts.output.clone(),
    };
    remove_stale_pack_files(&opts.output);
    let image_name = spec.image_name.clone();
    let sign = |manifest: &[u8]| -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        match key {
            Some(key) => Ok(key.sign_manifest(manifest, &image_name)?),
            None => Err("no signing key".into()),
        }
    };
    let signer = key.map(|_| &sign as packer::ManifestSigner<'_>);
    Ok(packer::write_signed(&spec, signer, progress)?)
}

/// Remove what killed packs left beside `output`: its partial volumes (`.NAME.partial-PID`,
/// `.NAME.v001.partial-PID`, ...) and scratch directories (`.sealer-pack-PID-N`) whose process is
/// no longer running. Best effort.
pub fn remove_stale_pack_files(output: &Path) {
    remove_pack_files(output, |pid| !crate::store::process_is_running(pid));
}

/// Remove this process's own partial volumes and scratch directories beside `output`: what an
/// interrupted `sealer pack` does before it exits. Best effort.
pub fn remove_own_pack_files(output: &Path) {
    let own = std::process::id();
    remove_pack_files(output, |pid| pid == own);
}

/// Remove the pack files beside `output` (partial volumes, scratch directories) of the
/// processes `whose` selects.
fn remove_pack_files(output: &Path, whose: impl Fn(u32) -> bool) {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(out_name) = output.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let pid = if let Some(rest) = name.strip_prefix(".sealer-pack-") {
            rest.split_once('-').map(|(pid, _)| pid)
        } else if let Some(rest) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_prefix(out_name))
        {
            let (volume, pid) = rest.rsplit_once(".partial-").unwrap_or(("?", ""));
            // `.NAME.partial-PID` or `.NAME.vNNN.partial-PID`
            let is_volume = volume.is_empty()
                || volume
                    .strip_prefix(".v")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            is_volume.then_some(pid)
        } else {
            None
        };
        let Some(Ok(pid)) = pid.map(str::parse::<u32>) else {
            continue;
        };
        if whose(pid) {
            crate::store::remove_tree(&entry.path());
        }
    }
}

/// The names a load moved: for every image name that named one digest in `before` and another
/// in `after`, `name, old digest, new digest` (a load replaces a tag silently otherwise).
pub fn moved_tags(
    before: &[crate::store::ImageSummary],
    after: &[crate::store::ImageSummary],
) -> Vec<(String, String, String)> {
    after
        .iter()
        .filter_map(|now| {
            let old = before.iter().find(|b| b.name == now.name)?;
            (old.digest != now.digest)
                .then(|| (now.name.clone(), old.digest.clone(), now.digest.clone()))
        })
        .collect()
}

/// The warning for a tag a load moved to another image.
pub fn moved_tag_warning(name: &str, old: &str, new: &str) -> String {
    format!(
        "warning: {name} named {old} before this load and now names {new}; the image it named \
         is no longer tagged (sealer tag the old digest again, or rebuild it, if you need it)"
    )
}

/// What `load` of a package gives its image, as the package can tell before it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadedDigest {
    /// Every layer was packed as built: the image keeps the digest it had in the store.
    Same(String),
    /// zstd layers were packed at another `--level`: [`load_package`] stores them as packed, so
    /// the image it names gets this digest (a manifest naming the recompressed layers).
    Recompressed(String),
    /// xz layers: `load` recompresses them to zstd frames, and the digest is known only then
    /// (`load` prints it).
    AfterXz,
}

impl LoadedDigest {
    /// The digest `load` will store, when the package can tell.
    pub fn digest(&self) -> Option<&str> {
        match self {
            LoadedDigest::Same(d) | LoadedDigest::Recompressed(d) => Some(d),
            LoadedDigest::AfterXz => None,
        }
    }

    /// One line for `sealer pack` and `./app.run inspect` when `load` gives the image another
    /// digest than the one it was packed from (`None` when it keeps it).
    pub fn note(&self, packed_from: &str) -> Option<String> {
        match self {
            LoadedDigest::Same(_) => None,
            LoadedDigest::Recompressed(d) => Some(format!(
                "load gives {d}: its layers were recompressed at another level, so the image a \
                 load stores is not byte for byte {packed_from} (the files are the same)"
            )),
            LoadedDigest::AfterXz => Some(format!(
                "load gives another digest than {packed_from}: it recompresses the xz layers to \
                 zstd frames and prints the digest it stored (the files are the same)"
            )),
        }
    }
}

/// The digest [`load_package`] will give the image of the package whose manifest is `m`: the
/// same manifest edit it makes (each layer packed at another zstd level named by the digest and
/// size of its frames as packed), hashed as [`Store::commit_image`] writes it.
pub fn loaded_digest(m: &packer::format::RunManifest) -> LoadedDigest {
    let same = || LoadedDigest::Same(m.image.manifest_digest.clone());
    if m.layers.iter().any(|l| l.compression == Compression::Xz) {
        return LoadedDigest::AfterXz;
    }
    let Ok(mut manifest) = serde_json::from_str::<Manifest>(&m.image.manifest_json) else {
        // A package whose manifest does not parse is refused by load; nothing else to say.
        return same();
    };
    let mut changed = false;
    for (desc, layer) in manifest.layers.iter_mut().zip(&m.layers) {
        if desc.digest != layer.digest {
            desc.digest = layer.digest.clone();
            desc.size = layer.compressed_len;
            changed = true;
        }
    }
    match serde_json::to_vec(&manifest) {
        Ok(bytes) if changed => {
            LoadedDigest::Recompressed(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
        }
        _ => same(),
    }
}

/// Import the image of a package into `store`, verifying every frame. zstd layers packed as
/// they were keep their digests (their frames are the original blobs); zstd layers packed at
/// another level are stored as packed, and xz layers are recompressed to zstd frames; the
/// manifest is then rewritten to name them.
///
/// Nothing enters the store until the whole image is checked: the manifest and config match
/// their digests, the manifest lists exactly the layers the package carries (same digests and
/// sizes where they were copied), and the config lists one diff_id per layer, each matching
/// what the layer unpacks to.
pub fn load_package(store: &Store, run: &RunFile) -> Result<Reference, PackError> {
    let _writers = store.writer_guard()?;
    let m = run.manifest();
    let payload = run.payload()?;
    let reference = Reference::parse(&m.image.name)?;
    let refuse = |reason: String| PackError::Refused { reason };
    let sha256 = |text: &str| format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
    let manifest_digest = sha256(&m.image.manifest_json);
    if manifest_digest != m.image.manifest_digest {
        return Err(refuse(format!(
            "the package's image manifest hashes to {manifest_digest}, not {}",
            m.image.manifest_digest
        )));
    }
    let mut manifest: Manifest = serde_json::from_str(&m.image.manifest_json)
        .map_err(|e| refuse(format!("the package's image manifest is not readable: {e}")))?;
    let config_digest = sha256(&m.image.config_json);
    if config_digest != m.image.config_digest
        || manifest.config.digest != config_digest
        || manifest.config.size != m.image.config_json.len() as u64
    {
        return Err(refuse(format!(
            "the package's image config ({config_digest}, {} bytes) is not the one its manifest names ({}, {} bytes)",
            m.image.config_json.len(),
            manifest.config.digest,
            manifest.config.size
        )));
    }
    let config: ImageConfig = serde_json::from_str(&m.image.config_json)
        .map_err(|e| refuse(format!("the package's image config is not readable: {e}")))?;
    if let Some((i, missing)) = manifest.layers.iter().enumerate().nth(m.layers.len()) {
        return Err(refuse(format!(
            "the image manifest lists layer {} ({}), which the package does not carry",
            i + 1,
            missing.digest
        )));
    }
    if m.layers.len() > manifest.layers.len() {
        return Err(refuse(format!(
            "the package carries {} layers, but its image manifest lists {}",
            m.layers.len(),
            manifest.layers.len()
        )));
    }
    check_image_layers(&manifest, &config, None).map_err(|e| refuse(e.to_string()))?;
    for (li, (layer, listed)) in m.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
        if &layer.diff_id != listed {
            return Err(refuse(format!(
                "layer {} ({}) is recorded as {}, but the image config says {listed}",
                li + 1,
                layer.digest,
                layer.diff_id
            )));
        }
    }
    let original_layers = manifest.layers.clone();
    let mut staged = Vec::with_capacity(m.layers.len());
    for (li, layer) in m.layers.iter().enumerate() {
        let blob = store.blob_writer()?;
        let mut diff_id = Sha256::new();
        let decode_err = |fi: usize, source: std::io::Error| PackError::Decode {
            layer: li + 1,
            frame: fi + 1,
            source,
        };
        let layer_err = |what: &'static str| {
            move |source: std::io::Error| PackError::Layer {
                what,
                layer: li + 1,
                source,
            }
        };
        let (blob, unpacked, media_type) = match layer.compression {
            Compression::Zstd => {
                let mut blob = blob;
                for fi in 0..layer.frames.len() {
                    let bytes = payload.frame_bytes(li, fi)?;
                    packer::codec::frame_reader(
                        Compression::Zstd,
                        std::borrow::Cow::Borrowed(&bytes),
                    )
                    .map_err(|e| decode_err(fi, std::io::Error::other(e.detail())))
                    .and_then(|mut d| {
                        std::io::copy(&mut d, &mut diff_id).map_err(|e| decode_err(fi, e))
                    })?;
                    blob.write_all(&bytes).map_err(layer_err("writing"))?;
                }
                let blob = blob.finish(Some(&layer.digest)).map_err(|e| match e {
                    StoreError::BlobCorrupt { actual, .. } => PackError::LayerDigest {
                        layer: li + 1,
                        actual,
                        digest: layer.digest.clone(),
                    },
                    other => other.into(),
                })?;
                let unpacked = format!("sha256:{}", hex::encode(diff_id.finalize()));
                (blob, unpacked, None)
            }
            Compression::Xz => {
                let mut framed = FramedWriter::new(blob, 3);
                for fi in 0..layer.frames.len() {
                    let bytes = payload.frame_bytes(li, fi)?;
                    let mut decoder = packer::codec::frame_reader(
                        Compression::Xz,
                        std::borrow::Cow::Borrowed(&bytes),
                    )
                    .map_err(|e| decode_err(fi, std::io::Error::other(e.detail())))?;
                    std::io::copy(&mut decoder, &mut framed).map_err(|e| decode_err(fi, e))?;
                }
                let (blob, info) = framed.finish().map_err(layer_err("recompressing"))?;
                let blob = blob.finish(Some(&format!("sha256:{}", info.digest)))?;
                let unpacked = format!("sha256:{}", info.diff_id);
                (blob, unpacked, Some(MEDIA_TYPE_LAYER_ZSTD))
            }
        };
        if unpacked != layer.diff_id {
            return Err(refuse(format!(
                "layer {} ({}) unpacks to {unpacked}, but the image config says {}",
                li + 1,
                layer.digest,
                layer.diff_id
            )));
        }
        let desc = &mut manifest.layers[li];
        if desc.digest == blob.digest() {
            if desc.size != blob.size() {
                return Err(refuse(format!(
                    "layer {} ({}) has {} bytes, but the image manifest says {}",
                    li + 1,
                    desc.digest,
                    blob.size(),
                    desc.size
                )));
            }
        } else {
            desc.digest = blob.digest().to_string();
            desc.size = blob.size();
        }
        if let Some(media_type) = media_type {
            desc.media_type = media_type.to_string();
        }
        staged.push(blob);
    }
    // Every part checked: store the blobs, then name the image.
    for blob in staged {
        blob.commit()?;
    }
    store.put_blob(m.image.config_json.as_bytes())?;
    if manifest.layers == original_layers {
        // Every layer as it was: the original manifest bytes, so the image keeps its digest.
        let (digest, size) = store.put_blob(m.image.manifest_json.as_bytes())?;
        store.set_name(&reference, &digest, size)?;
    } else {
        store.commit_image(&reference, &manifest)?;
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Descriptor, MEDIA_TYPE_CONFIG};

    #[test]
    fn a_split_size_too_small_reaches_the_caller_as_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let (digest, size) = store.put_blob(config).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: None,
            config: Descriptor {
                media_type: MEDIA_TYPE_CONFIG.to_string(),
                digest,
                size,
                annotations: Default::default(),
                platform: None,
            },
            layers: Vec::new(),
            annotations: Default::default(),
        };
        let image = Reference::parse("empty:v1").unwrap();
        store.commit_image(&image, &manifest).unwrap();
        let stub = dir.path().join("stub");
        std::fs::write(&stub, b"not really a stub").unwrap();
        let opts = PackOptions {
            image,
            output: dir.path().join("app.run"),
            compression: Compression::Zstd,
            level: None,
            split_size: Some(4096),
            stub,
            trust: None,
        };
        let err = pack(&store, &opts, None).err().unwrap();
        assert!(
            matches!(
                err,
                PackError::Write(packer::WriteError::SplitTooSmall { split: 4096, .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("split size 4096 is too small"),
            "{err}"
        );
    }
}
