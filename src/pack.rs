//! Between the store and `.run` packages: `sealer pack` (an image and the stub into one
//! self-extracting file) and `app.run load` (a package's image back into a store).
//!
//! The format itself lives in `packer`; this module only maps store images onto it and back.

use std::io::Write;
use std::path::PathBuf;

use packer::frames::FramedWriter;
use packer::unpack::Compression;
use packer::{LayerBlob, PackReport, PackSpec, RunFile};
use sha2::{Digest, Sha256};

use crate::reference::Reference;
use crate::store::{Manifest, Store, StoreError, MEDIA_TYPE_LAYER_ZSTD};

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    pub image: Reference,
    pub output: PathBuf,
    pub compression: Compression,
    /// zstd 1–22 or xz 0–9. Without a level, zstd frames are copied and keep their level;
    /// with one, every frame is recompressed at it.
    pub level: Option<u32>,
    /// Largest output file; larger packages become volumes.
    pub split_size: Option<u64>,
    /// The installer stub (`sealer-stub`).
    pub stub: PathBuf,
}

/// Pack an image of `store` into a `.run` file. `progress(done, total)` reports bytes written.
pub fn pack(
    store: &Store,
    opts: &PackOptions,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<PackReport, String> {
    let image = store.image(&opts.image).map_err(|e| e.to_string())?;
    let manifest_json =
        String::from_utf8(store.read_blob(&image.digest).map_err(|e| e.to_string())?)
            .map_err(|_| format!("the manifest of {} is not UTF-8", opts.image))?;
    let config_json = String::from_utf8(
        store
            .read_blob(&image.manifest.config.digest)
            .map_err(|e| e.to_string())?,
    )
    .map_err(|_| format!("the config of {} is not UTF-8", opts.image))?;
    let mut layers = Vec::new();
    for (i, desc) in image.manifest.layers.iter().enumerate() {
        let diff_id = image
            .config
            .rootfs
            .diff_ids
            .get(i)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "the config of {} lists fewer diff_ids than layers",
                    opts.image
                )
            })?;
        layers.push(LayerBlob {
            path: store.blob_path(&desc.digest).map_err(|e| e.to_string())?,
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            diff_id,
            frames: store.frame_index(&desc.digest),
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
    packer::write(&spec, progress).map_err(|e| e.to_string())
}

/// Import the image of a package into `store`, verifying every frame. zstd layers packed as
/// they were keep their digests (their frames are the original blobs); zstd layers packed at
/// another level are stored as packed, and xz layers are recompressed to zstd frames; both are
/// checked against the image's diff_ids and the manifest is rewritten to name them.
pub fn load_package(store: &Store, run: &RunFile) -> Result<Reference, String> {
    let _writers = store.writer_guard().map_err(|e| e.to_string())?;
    let m = run.manifest();
    let payload = run.payload().map_err(|e| e.to_string())?;
    let reference = Reference::parse(&m.image.name).map_err(|e| e.to_string())?;
    let mut manifest: Manifest = serde_json::from_str(&m.image.manifest_json)
        .map_err(|e| format!("the package carries no readable image manifest: {e}"))?;
    let (config_digest, _) = store
        .put_blob(m.image.config_json.as_bytes())
        .map_err(|e| e.to_string())?;
    if config_digest != m.image.config_digest {
        return Err(format!(
            "the package's config hashes to {config_digest}, not {}",
            m.image.config_digest
        ));
    }
    let original_layers = manifest.layers.clone();
    for (li, layer) in m.layers.iter().enumerate() {
        let mut blob = store.blob_writer().map_err(|e| e.to_string())?;
        match layer.compression {
            Compression::Zstd => {
                let original = original_layers.get(li).map(|d| d.digest.as_str());
                // Layers recompressed at pack time: hash their content as it is written.
                let mut diff_id = (original != Some(layer.digest.as_str())).then(Sha256::new);
                for fi in 0..layer.frames.len() {
                    let bytes = payload.frame_bytes(li, fi).map_err(|e| e.to_string())?;
                    if let Some(hasher) = diff_id.as_mut() {
                        zstd::stream::read::Decoder::new(&bytes[..])
                            .and_then(|mut d| std::io::copy(&mut d, hasher))
                            .map_err(|e| {
                                format!("decoding frame {} of layer {}: {e}", fi + 1, li + 1)
                            })?;
                    }
                    blob.write_all(&bytes)
                        .map_err(|e| format!("writing layer {}: {e}", li + 1))?;
                }
                if let Some(hasher) = diff_id {
                    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
                    if actual != layer.diff_id {
                        return Err(format!(
                            "layer {} unpacks to {actual}, not {}",
                            li + 1,
                            layer.diff_id
                        ));
                    }
                }
                let (digest, size) = blob.commit(Some(&layer.digest)).map_err(|e| match e {
                    StoreError::BlobCorrupt { actual, .. } => {
                        format!("layer {} hashes to {actual}, not {}", li + 1, layer.digest)
                    }
                    other => other.to_string(),
                })?;
                if let Some(desc) = manifest.layers.get_mut(li) {
                    desc.digest = digest;
                    desc.size = size;
                }
            }
            Compression::Xz => {
                let mut framed = FramedWriter::new(blob, 3);
                for fi in 0..layer.frames.len() {
                    let bytes = payload.frame_bytes(li, fi).map_err(|e| e.to_string())?;
                    let mut decoder = xz2::read::XzDecoder::new(&bytes[..]);
                    std::io::copy(&mut decoder, &mut framed).map_err(|e| {
                        format!("decoding frame {} of layer {}: {e}", fi + 1, li + 1)
                    })?;
                }
                let (blob, info) = framed
                    .finish()
                    .map_err(|e| format!("recompressing layer {}: {e}", li + 1))?;
                if format!("sha256:{}", info.diff_id) != layer.diff_id {
                    return Err(format!(
                        "layer {} unpacks to {}, not {}",
                        li + 1,
                        info.diff_id,
                        layer.diff_id
                    ));
                }
                let (digest, size) = blob
                    .commit(Some(&format!("sha256:{}", info.digest)))
                    .map_err(|e| e.to_string())?;
                if let Some(desc) = manifest.layers.get_mut(li) {
                    desc.digest = digest;
                    desc.size = size;
                    desc.media_type = MEDIA_TYPE_LAYER_ZSTD.to_string();
                }
            }
        }
    }
    if manifest.layers == original_layers {
        // Every layer as it was: the original manifest bytes, so the image keeps its digest.
        let (digest, size) = store
            .put_blob(m.image.manifest_json.as_bytes())
            .map_err(|e| e.to_string())?;
        if digest != m.image.manifest_digest {
            return Err(format!(
                "the package's image manifest hashes to {digest}, not {}",
                m.image.manifest_digest
            ));
        }
        store
            .set_name(&reference, &digest, size)
            .map_err(|e| e.to_string())?;
    } else {
        store
            .commit_image(&reference, &manifest)
            .map_err(|e| e.to_string())?;
    }
    Ok(reference)
}
