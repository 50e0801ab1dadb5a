//! The container images of a build: declared references resolved and pinned for the build's
//! platform, their manifests and configs fetched, before any step writes to the store
//! ([`collect`]); then, after the last step, the images layer written ([`Collection::layer`]) as
//! `container_images` describes it, each image layer blob streamed from its registry straight
//! into it.
//!
//! Manifests, indexes and configs (small: what resolving offline and checking a platform need)
//! stay staged (in the store's scratch space, checked against their digests) until the build
//! names its image, then enter the store's blobs. Image layer blobs are downloaded once, into
//! their frames of the images layer, hashed on the way (no staged copy, no second pass over
//! their bytes); a blob the store already holds (an older store, a pulled image) is copied from
//! there. The layer is cached by what it holds (platform, level, references and pinned digests),
//! not by the steps before it, so a rebuild with the same images fetches and writes nothing (it
//! still asks the registry what a tag names).

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

/// An image layer blob the store lacks: streamed from its registry into the images layer.
struct RemoteBlob {
    /// Index into [`Collection::sources`].
    source: usize,
    desc: Descriptor,
    /// The first image that names it, for errors.
    reference: String,
    origin: String,
}
use crate::store::{
    Descriptor, Index, Platform, StagedBlob, Store, StoreError, ANNOTATION_REF_NAME,
};

use super::cache::StepCache;
use super::layer::{BuiltLayer, LayerWriter, StagedLayer, StreamedError};
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

/// The images of a build, the blobs fetched for them (not yet in the store) and where the rest
/// come from.
#[derive(Default)]
pub(super) struct Collection {
    pub images: Vec<CollectedImage>,
    staged: Vec<StagedBlob>,
    /// One connection per declared image, kept for streaming its layers.
    sources: Vec<ImageSource>,
    /// Blobs to stream into the images layer, by digest.
    remote: BTreeMap<String, RemoteBlob>,
    /// The images layer of the declared images, written (or found in the cache) before the first
    /// step, with the cache key it was written for.
    prepared: Option<(String, Prepared)>,
}

/// The images layer as [`Collection::prepare`] left it.
enum Prepared {
    /// In the store already (the step cache had it).
    Cached(BuiltLayer),
    /// Written, not yet in the store.
    Staged(StagedLayer),
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
        let what = format!("the base image (layer {})", layer.digest);
        let bad = |reason: String| {
            BuildError::io(
                format!("reading the container images of {what}"),
                std::io::Error::other(reason),
            )
        };
        let index = self.stage_blobs_of(store, &path, &what)?;
        let index = index.ok_or_else(|| bad(format!("it has no {IMAGES_DIR}/index.json")))?;
        self.join(store, index, listed, &bad)
    }

    /// Stage the blobs of the images layer at `path` that the store and this collection lack;
    /// returns its `index.json`, if it has one. `what` names the layer in errors.
    fn stage_blobs_of(
        &mut self,
        store: &Store,
        path: &std::path::Path,
        what: &str,
    ) -> Result<Option<Index>, BuildError> {
        let bad = |reason: String| {
            BuildError::io(
                format!("reading the container images of {what}"),
                std::io::Error::other(reason),
            )
        };
        let file = std::fs::File::open(path)
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
        Ok(index)
    }

    /// The images of a base image's `index.json` join this build's, unless a declaration of the
    /// same reference was resolved already.
    fn join(
        &mut self,
        store: &Store,
        index: Index,
        listed: &[ContainerImage],
        bad: &dyn Fn(String) -> BuildError,
    ) -> Result<(), BuildError> {
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

    /// The step-cache key of the images layer: what it holds.
    fn key(&self, opts: &BuildOptions) -> String {
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
        super::steps::chain("", &parts)
    }

    /// Write the images layer of the declared images now, before the first step, each image
    /// layer the store lacks streamed from its registry into it (or find it in the step cache):
    /// a blob that cannot be fetched fails the build before any step writes to the store. The
    /// layer stays staged until [`Collection::layer`].
    fn prepare(
        &mut self,
        store: &Store,
        opts: &BuildOptions,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<(), BuildError> {
        if self.images.is_empty() {
            return Ok(());
        }
        let key = self.key(opts);
        let cache = StepCache::new(store);
        if let Some(built) = (!opts.no_cache).then(|| cache.step(&key)).flatten() {
            self.prepared = Some((key, Prepared::Cached(built)));
            return Ok(());
        }
        let paths = self.staged_paths();
        let mut sources = Sources {
            staged: &paths,
            connections: &mut self.sources,
            remote: &self.remote,
            progress,
            done: 0,
            total: self.remote.values().map(|b| b.desc.size).sum(),
        };
        let staged = write_layer(store, opts, &self.images, &mut sources)?;
        let fetched = sources.done;
        if fetched > 0 {
            progress(BuildEvent::ImagesFetched { bytes: fetched });
        }
        self.prepared = Some((key, Prepared::Staged(staged)));
        Ok(())
    }

    fn staged_paths(&self) -> BTreeMap<String, PathBuf> {
        self.staged
            .iter()
            .map(|blob| (blob.digest().to_string(), blob.path().to_path_buf()))
            .collect()
    }

    /// The images layer: the one [`Collection::prepare`] wrote or found in the step cache; when
    /// a base image brought more images, one holding them all (from the step cache, else
    /// written now from the prepared layer's blobs and the base's). Manifests, indexes and
    /// configs are committed to the store (what the next build resolves from).
    pub fn layer(
        mut self,
        store: &Store,
        opts: &BuildOptions,
        cache: &StepCache,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<(BuiltLayer, bool), BuildError> {
        let key = self.key(opts);
        let prepared = match self.prepared.take() {
            Some((prepared_key, prepared)) if prepared_key == key => Some(prepared),
            Some((_, Prepared::Staged(staged))) => {
                let path = staged.path().to_path_buf();
                self.stage_blobs_of(store, &path, "the images layer being built")?;
                None
            }
            Some((_, Prepared::Cached(built))) => {
                let path = store.blob_path(&built.descriptor.digest)?;
                self.stage_blobs_of(store, &path, "the cached images layer")?;
                None
            }
            None => None,
        };
        let prepared = match prepared {
            Some(prepared) => prepared,
            None => match (!opts.no_cache).then(|| cache.step(&key)).flatten() {
                Some(built) => Prepared::Cached(built),
                None => {
                    let paths = self.staged_paths();
                    let mut sources = Sources {
                        staged: &paths,
                        connections: &mut self.sources,
                        remote: &self.remote,
                        progress,
                        done: 0,
                        total: self.remote.values().map(|b| b.desc.size).sum(),
                    };
                    Prepared::Staged(write_layer(store, opts, &self.images, &mut sources)?)
                }
            },
        };
        let (mut built, from_cache) = match prepared {
            Prepared::Cached(built) => (built, true),
            Prepared::Staged(staged) => {
                let built = staged.commit()?;
                cache.record_step(&key, &built);
                (built, false)
            }
        };
        // Manifests, indexes and configs enter the store (the next build resolves and checks
        // platforms from them); image layers live in the images layer only.
        let layers: std::collections::BTreeSet<&str> = self
            .images
            .iter()
            .flat_map(|i| i.blobs.iter().skip(1).map(|d| d.digest.as_str()))
            .collect();
        for blob in self.staged {
            if !layers.contains(blob.digest()) {
                blob.commit()?;
            }
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
        let missing = |collection: &Collection, desc: &Descriptor| {
            !store.has_blob(&desc.digest)
                && !collection.staged.iter().any(|s| s.digest() == desc.digest)
        };
        // The config now (its platform is checked before any step runs); the layers when the
        // images layer is written, straight into it, unless that layer is cached.
        let mut wanted: Vec<(BlobKind, Descriptor)> = Vec::new();
        let config = &resolved.manifest.config;
        if missing(&collection, config) {
            wanted.push((BlobKind::Config, config.clone()));
        }
        let mut pending = 0;
        for desc in &resolved.manifest.layers {
            if missing(&collection, desc) && !collection.remote.contains_key(&desc.digest) {
                pending += desc.size;
                collection.remote.insert(
                    desc.digest.clone(),
                    RemoteBlob {
                        source: collection.sources.len(),
                        desc: Descriptor {
                            annotations: Default::default(),
                            ..desc.clone()
                        },
                        reference: image.reference.to_string(),
                        origin: image
                            .origins
                            .first()
                            .map(|o| o.to_string())
                            .unwrap_or_default(),
                    },
                );
            }
        }
        let staged = source
            .fetch_blobs(store, &wanted, &|_| {})
            .map_err(|e| failed(image, e))?;
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
        collection.sources.push(source);
        progress(BuildEvent::ContainerImage {
            reference: &shown,
            event: ImageEvent::Pinned {
                digest: &resolved.digest,
                pending,
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
    collection.prepare(store, opts, progress)?;
    // Every remote blob is in the prepared layer now; the connections are done.
    collection.sources.clear();
    collection.remote.clear();
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
    /// Pinned to `digest` (its manifest and config at hand); `pending` bytes of its layers are
    /// not in the store, fetched into the images layer unless that layer is cached (0: none).
    Pinned { digest: &'a str, pending: u64 },
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

/// Where the blobs of the images layer come from while it is written.
struct Sources<'a> {
    /// Staged blobs (configs, manifests, a base image's blobs), by digest.
    staged: &'a BTreeMap<String, PathBuf>,
    connections: &'a mut [ImageSource],
    remote: &'a BTreeMap<String, RemoteBlob>,
    progress: &'a mut dyn FnMut(BuildEvent),
    /// Bytes of remote blobs fetched so far, of `total`.
    done: u64,
    total: u64,
}

impl Sources<'_> {
    /// Stream the remote blob `digest` from its registry into `layer` as the entry `path`.
    fn stream(
        &mut self,
        layer: &mut LayerWriter,
        path: &str,
        digest: &str,
    ) -> Result<(), BuildError> {
        let Some(blob) = self.remote.get(digest) else {
            return Err(BuildError::io(
                format!("writing {path} to the images layer"),
                std::io::Error::other("no registry was resolved for this blob"),
            ));
        };
        let Some(connection) = self.connections.get_mut(blob.source) else {
            return Err(BuildError::io(
                format!("writing {path} to the images layer"),
                std::io::Error::other("its registry connection is gone"),
            ));
        };
        let before = self.done;
        let total = self.total;
        let progress = std::cell::RefCell::new(&mut *self.progress);
        let report = |done: u64| {
            if let Ok(mut progress) = progress.try_borrow_mut() {
                progress(BuildEvent::ImagesFetching {
                    done: before + done,
                    total,
                });
            }
        };
        layer
            .add_file_streamed(path, 0o644, blob.desc.size, |sink| {
                connection.stream_blob(&blob.desc, sink, &report)
            })
            .map_err(|e| match e {
                StreamedError::Io(e) => {
                    BuildError::io(format!("writing {path} to the images layer"), e)
                }
                StreamedError::Fill(source) => BuildError::ContainerImage {
                    reference: blob.reference.clone(),
                    origin: blob.origin.clone(),
                    source: Box::new(source),
                },
            })?;
        self.done += blob.desc.size;
        Ok(())
    }
}

/// Write the images layer: directories, every blob (digest order) in a frame of its own, then
/// `index.json` and `oci-layout`.
fn write_layer(
    store: &Store,
    opts: &BuildOptions,
    images: &[CollectedImage],
    sources: &mut Sources<'_>,
) -> Result<StagedLayer, BuildError> {
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
        layer.start_frame(mode).map_err(|e| io(&path, e))?;
        if let Some(staged) = sources.staged.get(digest) {
            layer
                .add_file_from(&path, 0o644, staged)
                .map_err(|e| io(&path, e))?;
        } else if store.has_blob(digest) || !sources.remote.contains_key(digest) {
            layer
                .add_file_from(&path, 0o644, &store.blob_path(digest)?)
                .map_err(|e| io(&path, e))?;
        } else {
            sources.stream(&mut layer, &path, digest)?;
        }
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
    layer.finish_staged()
}
