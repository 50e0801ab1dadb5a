//! The container images of a build: declared references resolved and pinned for the build's
//! platform and their blobs fetched, before any step writes to the store ([`collect`]); then,
//! after the last step, the images layer written from them ([`Collection::layer`]) as
//! `container_images` describes it.
//!
//! Fetched blobs stay staged (in the store's scratch space, checked against their digests) until
//! the build names its image; they are then committed to the store's blobs as the cache of the
//! next build, which fetches only blobs the store lacks (it still asks the registry what a tag
//! names). The layer is cached by what it holds (platform, level, references and pinned digests),
//! not by the steps before it, so a rebuild with the same images writes nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use packer::frames::FrameMode;

use crate::container_images::ContainerImage;
use crate::container_images::{
    DeclaredImage, ImageName, ANNOTATION_DIGEST_PINNED, ANNOTATION_LAYER_CONTENT, IMAGES_DIR,
    LAYER_CONTENT_CONTAINER_IMAGES,
};
use crate::registry::{BlobKind, ImageSource, PlatformManifest, RegistryError};
use crate::store::{
    Descriptor, Index, Platform, StagedBlob, Store, StoreError, ANNOTATION_REF_NAME,
};

use super::cache::StepCache;
use super::layer::{BuiltLayer, LayerWriter};
use super::{BuildError, BuildEvent, BuildOptions};

/// One container image resolved for the build's platform.
#[derive(Debug, Clone)]
pub(super) struct CollectedImage {
    pub name: ImageName,
    pub app: Option<String>,
    /// The platform image manifest: media type, digest and size as served.
    pub manifest: Descriptor,
    pub platform: Platform,
    /// Config and layers.
    pub blobs: Vec<Descriptor>,
    /// The image index the reference pins by digest (`REPO@sha256:<index>`), kept byte for byte
    /// in `blobs/` so that a pull by that digest can be served; `None` for other references.
    pub index: Option<String>,
}

impl CollectedImage {
    /// Manifest, config and layers, in bytes.
    pub fn size(&self) -> u64 {
        self.manifest.size + self.blobs.iter().map(|b| b.size).sum::<u64>()
    }
}

/// The images of a build and the blobs fetched for them, not yet in the store.
#[derive(Default)]
pub(super) struct Collection {
    pub images: Vec<CollectedImage>,
    staged: Vec<StagedBlob>,
}

impl Collection {
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Take over the container images of a base image: its images layer (`layer`, which the new
    /// image does not keep as such) is read, its blobs the store lacks are staged, and every image
    /// of its `index.json` joins this build's unless a declaration of the same reference was
    /// resolved already (declared images win). Nothing is fetched and nothing enters the store.
    pub fn inherit(
        &mut self,
        store: &Store,
        layer: &Descriptor,
        listed: &[ContainerImage],
    ) -> Result<(), BuildError> {
        let path = store.blob_path(&layer.digest)?;
        let bad = |reason: String| {
            BuildError::io(
                format!(
                    "reading the container images of the base image (layer {})",
                    layer.digest
                ),
                std::io::Error::other(reason),
            )
        };
        let file = std::fs::File::open(&path)
            .map_err(|e| BuildError::io(format!("opening {}", path.display()), e))?;
        let decoder = zstd::stream::read::Decoder::new(std::io::BufReader::new(file))
            .map_err(|e| bad(e.to_string()))?;
        let mut archive = tar::Archive::new(decoder);
        let mut index: Option<Index> = None;
        let blobs_prefix = format!("{IMAGES_DIR}/blobs/sha256/");
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let name = entry
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            if !entry.header().entry_type().is_file() {
                continue;
            }
            if let Some(hex) = name.strip_prefix(&blobs_prefix) {
                let digest = format!("sha256:{hex}");
                crate::store::digest_hex(&digest).map_err(|e| bad(e.to_string()))?;
                if store.has_blob(&digest) || self.staged.iter().any(|s| s.digest() == digest) {
                    continue;
                }
                let mut writer = store.blob_writer()?;
                std::io::copy(&mut entry, &mut writer).map_err(|e| bad(format!("{name}: {e}")))?;
                self.staged.push(writer.finish(Some(&digest))?);
            } else if name == format!("{IMAGES_DIR}/index.json") {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes)
                    .map_err(|e| bad(e.to_string()))?;
                index =
                    Some(serde_json::from_slice(&bytes).map_err(|e| bad(format!("{name}: {e}")))?);
            }
        }
        let index = index.ok_or_else(|| bad(format!("it has no {IMAGES_DIR}/index.json")))?;
        for entry in index.manifests {
            let ref_name = entry
                .annotations
                .get(ANNOTATION_REF_NAME)
                .ok_or_else(|| bad(format!("{} has no name", entry.digest)))?;
            let name = ImageName::parse(ref_name).map_err(|e| bad(e.to_string()))?;
            if self
                .images
                .iter()
                .any(|i| i.name.ref_name() == name.ref_name())
            {
                continue;
            }
            let bytes = match self.staged.iter().find(|s| s.digest() == entry.digest) {
                Some(staged) => std::fs::read(staged.path())
                    .map_err(|e| BuildError::io("reading a staged manifest", e))?,
                None => store.read_blob(&entry.digest)?,
            };
            let manifest: crate::store::Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("manifest {}: {e}", entry.digest)))?;
            let platform = entry
                .platform
                .clone()
                .ok_or_else(|| bad(format!("{ref_name} names no platform")))?;
            let mut blobs = vec![manifest.config.clone()];
            blobs.extend(manifest.layers.iter().cloned());
            for blob in &mut blobs {
                blob.annotations.clear();
            }
            let index = pinned_index(&name, &entry.digest, |d| {
                store.has_blob(d) || self.staged.iter().any(|s| s.digest() == d)
            });
            self.images.push(CollectedImage {
                app: listed
                    .iter()
                    .find(|l| &l.image == ref_name)
                    .and_then(|l| l.app_name.clone()),
                manifest: Descriptor {
                    annotations: Default::default(),
                    platform: None,
                    ..entry
                },
                platform,
                blobs,
                index,
                name,
            });
        }
        self.images.sort_by_key(|i| i.name.ref_name());
        Ok(())
    }

    /// The config label / manifest annotation `sealer.image.container.images`.
    pub fn label(&self) -> String {
        let listed: Vec<ContainerImage> = self
            .images
            .iter()
            .map(|image| ContainerImage {
                image: image.name.ref_name(),
                app_name: image.app.clone(),
                platform: image.platform.clone(),
                digest: image.manifest.digest.clone(),
                size: image.size(),
            })
            .collect();
        serde_json::to_string(&listed).unwrap_or_else(|_| "[]".into())
    }

    /// What the history records for the layer.
    pub fn created_by(&self) -> String {
        let names: Vec<String> = self.images.iter().map(|i| i.name.ref_name()).collect();
        format!("CONTAINER-IMAGES {}", names.join(" "))
    }

    /// The images layer: from the step cache when the same images were written before, else
    /// written now. The fetched blobs are committed to the store (the next build's cache).
    pub fn layer(
        self,
        store: &Store,
        opts: &BuildOptions,
        cache: &StepCache,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<(BuiltLayer, bool), BuildError> {
        let mut key_parts = vec![
            "container-images".to_string(),
            opts.level.to_string(),
            opts.source_date_epoch.to_string(),
        ];
        for image in &self.images {
            key_parts.push(format!(
                "{}\0{}\0{}\0{}/{}",
                image.name.ref_name(),
                image.manifest.digest,
                image.app.as_deref().unwrap_or(""),
                image.platform.os,
                image.platform.architecture
            ));
        }
        let parts: Vec<&str> = key_parts.iter().map(String::as_str).collect();
        let key = super::steps::chain("", &parts);
        let mut paths: BTreeMap<String, PathBuf> = BTreeMap::new();
        for blob in &self.staged {
            paths.insert(blob.digest().to_string(), blob.path().to_path_buf());
        }
        let cached = (!opts.no_cache).then(|| cache.step(&key)).flatten();
        let (mut built, from_cache) = match cached {
            Some(built) => (built, true),
            None => {
                let built = write_layer(store, opts, &self.images, &paths)?;
                cache.record_step(&key, &built);
                (built, false)
            }
        };
        for blob in self.staged {
            blob.commit()?;
        }
        built.descriptor.annotations.insert(
            ANNOTATION_LAYER_CONTENT.to_string(),
            LAYER_CONTENT_CONTAINER_IMAGES.to_string(),
        );
        if from_cache {
            progress(BuildEvent::Cached);
        } else {
            progress(BuildEvent::Layer {
                digest: &built.descriptor.digest,
                size: built.descriptor.size,
            });
        }
        Ok((built, from_cache))
    }
}

/// Why one container image could not be collected.
fn failed(image: &DeclaredImage, source: RegistryError) -> BuildError {
    BuildError::ContainerImage {
        reference: image.reference.to_string(),
        origin: image
            .origins
            .first()
            .map(|o| o.to_string())
            .unwrap_or_default(),
        source: Box::new(source),
    }
}

/// Resolve every declared image for `linux/<architecture>` and fetch the blobs the store lacks.
/// Nothing enters the store: fetched blobs are staged, committed by [`Collection::layer`].
pub(super) fn collect(
    store: &Store,
    opts: &BuildOptions,
    declared: &[DeclaredImage],
    architecture: &str,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<Collection, BuildError> {
    let mut collection = Collection::default();
    for image in declared {
        let name = &image.reference;
        let shown = name.to_string();
        progress(BuildEvent::ContainerImage {
            reference: &shown,
            event: ImageEvent::Resolving,
        });
        let mut source = ImageSource::open(
            &name.registry,
            &name.repository,
            &name.ref_name(),
            &opts.registry,
        )
        .map_err(|e| failed(image, e))?;
        let resolved: PlatformManifest = match pinned_in_store(store, name, architecture) {
            Some(cached) => cached,
            None => source
                .resolve(name.tag_or_digest(), architecture)
                .map_err(|e| failed(image, e))?,
        };
        let manifest_blob = stage_bytes(store, &resolved.bytes, &resolved.digest)?;
        // The index a digest names is kept too, so that the next build resolves it offline.
        let index_blob = match (&resolved.index, &name.digest) {
            (Some(index), Some(digest)) => stage_bytes(store, index, digest)?,
            _ => None,
        };
        let mut blobs = vec![resolved.manifest.config.clone()];
        blobs.extend(resolved.manifest.layers.iter().cloned());
        let count = resolved.manifest.layers.len();
        let missing = |desc: &Descriptor| {
            !store.has_blob(&desc.digest)
                && !collection.staged.iter().any(|s| s.digest() == desc.digest)
        };
        let mut wanted: Vec<(BlobKind, Descriptor)> = Vec::new();
        for (i, desc) in blobs.iter().enumerate() {
            if missing(desc) && !wanted.iter().any(|(_, d)| d.digest == desc.digest) {
                let kind = match i {
                    0 => BlobKind::Config,
                    _ => BlobKind::Layer {
                        index: i - 1,
                        count,
                    },
                };
                wanted.push((kind, desc.clone()));
            }
        }
        let total: u64 = wanted.iter().map(|(_, d)| d.size).sum();
        // Byte progress across the image's blobs, downloaded side by side.
        let done_by_blob = std::cell::RefCell::new(BTreeMap::<String, u64>::new());
        let progress_cell = std::cell::RefCell::new(&mut *progress);
        let report = |p: crate::registry::Progress| {
            let done: u64 = {
                let mut by_blob = done_by_blob.borrow_mut();
                by_blob.insert(p.digest.clone(), p.done);
                by_blob.values().sum()
            };
            if let Ok(mut progress) = progress_cell.try_borrow_mut() {
                progress(BuildEvent::ContainerImage {
                    reference: &shown,
                    event: ImageEvent::Fetching { done, total },
                });
            }
        };
        let staged = source
            .fetch_blobs(store, &wanted, &report)
            .map_err(|e| failed(image, e))?;
        let fetched: u64 = staged.iter().map(|s| s.size()).sum();
        collection.staged.extend(staged);
        let config_digest = &resolved.manifest.config.digest;
        let config_path = match collection
            .staged
            .iter()
            .find(|s| s.digest() == config_digest)
        {
            Some(staged) => staged.path().to_path_buf(),
            None => store.blob_path(config_digest)?,
        };
        let platform = image_platform(&config_path, resolved.platform.clone())
            .map_err(|reason| failed(image, unsupported(name, "an image config", reason)))?;
        if platform.architecture != architecture || platform.os != "linux" {
            return Err(failed(
                image,
                unsupported(
                    name,
                    "an image",
                    format!(
                        "it is for {}/{}, but the build targets linux/{architecture}; name an image (or an index) that has linux/{architecture}",
                        platform.os, platform.architecture
                    ),
                ),
            ));
        }
        let manifest = Descriptor {
            media_type: resolved.media_type.clone(),
            digest: resolved.digest.clone(),
            size: resolved.bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        collection.staged.extend(manifest_blob);
        collection.staged.extend(index_blob);
        progress(BuildEvent::ContainerImage {
            reference: &shown,
            event: ImageEvent::Pinned {
                digest: &resolved.digest,
                fetched,
            },
        });
        let index = resolved.index.as_ref().and(name.digest.clone());
        collection.images.push(CollectedImage {
            index,
            name: name.clone(),
            app: image.app().map(str::to_string),
            manifest,
            platform,
            blobs: blobs
                .into_iter()
                .map(|mut d| {
                    d.annotations.clear();
                    d
                })
                .collect(),
        });
    }
    Ok(collection)
}

/// A reference pinned by digest whose manifest (and, for an index, the platform's manifest) the
/// store already holds: resolved without asking the registry.
fn pinned_in_store(
    store: &Store,
    name: &ImageName,
    architecture: &str,
) -> Option<PlatformManifest> {
    let mut bytes = store.read_blob(name.digest.as_deref()?).ok()?;
    let mut platform = None;
    let mut served_index = None;
    if let Ok(index) = serde_json::from_slice::<Index>(&bytes) {
        if !index.manifests.is_empty() {
            served_index = Some(bytes.clone());
            let entry = index.manifests.into_iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == architecture)
            })?;
            bytes = store.read_blob(&entry.digest).ok()?;
            platform = entry.platform;
        }
    }
    let manifest: crate::store::Manifest = serde_json::from_slice(&bytes).ok()?;
    Some(PlatformManifest {
        media_type: manifest
            .media_type
            .clone()
            .unwrap_or_else(|| crate::store::MEDIA_TYPE_MANIFEST.to_string()),
        digest: crate::registry::sha256_digest(&bytes),
        bytes,
        platform,
        manifest,
        index: served_index,
    })
}

/// The index digest a reference pins, when it is not the manifest's own and the blob is at hand.
fn pinned_index(name: &ImageName, manifest: &str, have: impl Fn(&str) -> bool) -> Option<String> {
    name.digest.clone().filter(|d| d != manifest && have(d))
}

/// What collecting one container image did, for the progress lines.
#[derive(Debug)]
pub enum ImageEvent<'a> {
    /// Asking its registry what the reference names.
    Resolving,
    /// `done` of the `total` bytes of its blobs the store lacks have arrived.
    Fetching { done: u64, total: u64 },
    /// Pinned to `digest`; `fetched` bytes were downloaded (0: every blob was in the store).
    Pinned { digest: &'a str, fetched: u64 },
}

fn unsupported(name: &ImageName, what: &str, reason: String) -> RegistryError {
    RegistryError::Unsupported {
        registry: name.registry.clone(),
        what: format!("{what} for {}", name.ref_name()),
        reason,
    }
}

/// `bytes` (with the digest they were checked to have) staged as a blob, unless the store has it.
fn stage_bytes(
    store: &Store,
    bytes: &[u8],
    digest: &str,
) -> Result<Option<StagedBlob>, BuildError> {
    if store.has_blob(digest) {
        return Ok(None);
    }
    let mut writer = store.blob_writer()?;
    writer
        .write_all(bytes)
        .map_err(|e| StoreError::io("writing a manifest blob", e))?;
    Ok(Some(writer.finish(Some(digest))?))
}

/// The platform of an image: the index's word for it, else its config's.
fn image_platform(
    config: &std::path::Path,
    from_index: Option<Platform>,
) -> Result<Platform, String> {
    if let Some(platform) = from_index {
        return Ok(platform);
    }
    #[derive(serde::Deserialize)]
    struct PlatformOf {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
    }
    let bytes = std::fs::read(config).map_err(|e| format!("reading it: {e}"))?;
    let seen: PlatformOf =
        serde_json::from_slice(&bytes).map_err(|e| format!("it is not an image config: {e}"))?;
    Ok(Platform {
        architecture: seen.architecture,
        os: seen.os,
    })
}

/// Whether a blob of this media type is already compressed (gzip or zstd layers): it goes into
/// stored frames.
fn already_compressed(media_type: &str) -> bool {
    media_type.contains("gzip") || media_type.contains("zstd")
}

/// Write the images layer: directories, every blob (digest order) in a frame of its own, then
/// `index.json` and `oci-layout`.
fn write_layer(
    store: &Store,
    opts: &BuildOptions,
    images: &[CollectedImage],
    staged: &BTreeMap<String, PathBuf>,
) -> Result<BuiltLayer, BuildError> {
    let mut blobs: BTreeMap<&str, FrameMode> = BTreeMap::new();
    let mut index = Index::default();
    for image in images {
        blobs.entry(&image.manifest.digest).or_default();
        if let Some(index) = &image.index {
            blobs.entry(index).or_default();
        }
        for blob in &image.blobs {
            let mode = if already_compressed(&blob.media_type) {
                FrameMode::Stored
            } else {
                FrameMode::Compressed
            };
            let entry = blobs.entry(&blob.digest).or_default();
            if mode == FrameMode::Stored {
                *entry = mode;
            }
        }
        let mut desc = image.manifest.clone();
        desc.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), image.name.ref_name());
        desc.annotations.insert(
            ANNOTATION_DIGEST_PINNED.to_string(),
            image.name.pinned(&image.manifest.digest),
        );
        desc.platform = Some(image.platform.clone());
        index.manifests.push(desc);
    }
    let io = |what: &str, e: std::io::Error| {
        BuildError::io(format!("writing {what} to the images layer"), e)
    };
    let mut layer = LayerWriter::new(store, opts.level.zstd(), opts.source_date_epoch)?;
    for dir in ["", "/blobs", "/blobs/sha256"] {
        let path = format!("{IMAGES_DIR}{dir}");
        layer.add_dir(&path, 0o755).map_err(|e| io(&path, e))?;
    }
    for (digest, mode) in blobs {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let path = format!("{IMAGES_DIR}/blobs/sha256/{hex}");
        let source = match staged.get(digest) {
            Some(path) => path.clone(),
            None => store.blob_path(digest)?,
        };
        layer.start_frame(mode).map_err(|e| io(&path, e))?;
        layer
            .add_file_from(&path, 0o644, &source)
            .map_err(|e| io(&path, e))?;
    }
    let index_json = serde_json::to_vec(&index)
        .map_err(|e| BuildError::io("encoding images/index.json", std::io::Error::other(e)))?;
    for (name, bytes) in [
        ("index.json", &index_json[..]),
        ("oci-layout", &br#"{"imageLayoutVersion":"1.0.0"}"#[..]),
    ] {
        let path = format!("{IMAGES_DIR}/{name}");
        layer
            .start_frame(FrameMode::Compressed)
            .map_err(|e| io(&path, e))?;
        layer
            .add_file(&path, 0o644, bytes.len() as u64, bytes)
            .map_err(|e| io(&path, e))?;
    }
    layer.finish()
}
