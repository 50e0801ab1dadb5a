//! Fetching the container images a build collects: a reference resolved at its registry to the
//! image manifest of one platform (pinned by digest, kept as the bytes the registry served), and
//! blobs downloaded and verified into staged blobs that enter the store only when the caller
//! commits them.
//!
//! It uses the same connection, credentials, plain-HTTP and CA settings and retry policy as
//! `pull`, and the same blob download; it never names an image in the store and never decides
//! which images a CloudImage carries (the builder does).

use std::time::Duration;

use oci_client::RegistryOperation;

use super::client::{Connection, Op};
use super::pull::{download_blob, is_index, ACCEPTED};
use super::{sha256_digest, BlobKind, Progress, ProgressEvent, RegistryError, RegistryOptions};
use crate::store::{Descriptor, Index, Manifest, Platform, StagedBlob, Store, MEDIA_TYPE_MANIFEST};

/// The image manifest of one platform, as its registry served it.
#[derive(Debug, Clone)]
pub struct PlatformManifest {
    /// The manifest bytes; their sha256 is [`PlatformManifest::digest`].
    pub bytes: Vec<u8>,
    /// The manifest's own media type (OCI image manifest or docker v2 schema 2).
    pub media_type: String,
    /// `sha256:<hex>` of [`PlatformManifest::bytes`].
    pub digest: String,
    /// The platform the image index named for it; `None` when the reference named a single
    /// manifest (its config then says).
    pub platform: Option<Platform>,
    pub manifest: Manifest,
    /// The image index the reference named, as served, when it named one.
    pub index: Option<Vec<u8>>,
}

/// One repository at one registry, connected once for every request about it.
pub struct ImageSource {
    conn: Connection,
    repository: String,
    /// The reference as the user wrote it (normalised), for error messages.
    reference: String,
    authenticated: bool,
}

impl ImageSource {
    /// Connect to `registry` for `repository`; `reference` names the image in errors.
    pub fn open(
        registry: &str,
        repository: &str,
        reference: &str,
        opts: &RegistryOptions,
    ) -> Result<ImageSource, RegistryError> {
        Ok(ImageSource {
            conn: Connection::open(registry, opts)?,
            repository: repository.to_string(),
            reference: reference.to_string(),
            authenticated: false,
        })
    }

    fn target(&self, tag_or_digest: &str) -> oci_client::Reference {
        let registry = self.conn.registry.clone();
        if tag_or_digest.starts_with("sha256:") {
            oci_client::Reference::with_digest(
                registry,
                self.repository.clone(),
                tag_or_digest.to_string(),
            )
        } else {
            oci_client::Reference::with_tag(
                registry,
                self.repository.clone(),
                tag_or_digest.to_string(),
            )
        }
    }

    fn op(&self, what: &'static str) -> Op<'_> {
        Op {
            what,
            repository: &self.repository,
            action: "pull",
            reference: &self.reference,
        }
    }

    fn unsupported(&self, what: &str, reason: String) -> RegistryError {
        RegistryError::Unsupported {
            registry: self.conn.registry.clone(),
            what: format!("{what} for {}", self.reference),
            reason,
        }
    }

    fn authenticate(&mut self, target: &oci_client::Reference) -> Result<(), RegistryError> {
        if self.authenticated {
            return Ok(());
        }
        let quiet = |_: u32, _: Duration, _: &RegistryError| {};
        self.conn.runtime.block_on(self.conn.retry(
            || async {
                self.conn
                    .client
                    .auth(target, &self.conn.auth, RegistryOperation::Pull)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.conn.classify(self.op("authenticating"), e))
            },
            &quiet,
        ))?;
        self.authenticated = true;
        Ok(())
    }

    fn fetch_manifest(&mut self, tag_or_digest: &str) -> Result<Vec<u8>, RegistryError> {
        let target = self.target(tag_or_digest);
        self.authenticate(&target)?;
        let quiet = |_: u32, _: Duration, _: &RegistryError| {};
        let (bytes, _) = self.conn.runtime.block_on(self.conn.retry(
            || async {
                self.conn
                    .client
                    .pull_manifest_raw(&target, &self.conn.auth, ACCEPTED)
                    .await
                    .map_err(|e| self.conn.classify(self.op("fetching the manifest"), e))
            },
            &quiet,
        ))?;
        let bytes = bytes.to_vec();
        if tag_or_digest.starts_with("sha256:") && sha256_digest(&bytes) != tag_or_digest {
            return Err(self.unsupported(
                "a manifest",
                format!(
                    "it hashes to {}, not the requested {tag_or_digest}",
                    sha256_digest(&bytes)
                ),
            ));
        }
        Ok(bytes)
    }

    /// Resolve `tag_or_digest` (a tag, or `sha256:<hex>` of a manifest or an index) to the image
    /// manifest for `linux/<architecture>`: an index is narrowed to that platform's entry, whose
    /// manifest is fetched by digest and checked against it.
    pub fn resolve(
        &mut self,
        tag_or_digest: &str,
        architecture: &str,
    ) -> Result<PlatformManifest, RegistryError> {
        let mut bytes = self.fetch_manifest(tag_or_digest)?;
        let mut platform = None;
        let mut served_index = None;
        if is_index(&bytes) {
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| self.unsupported("an image index", e.to_string()))?;
            let chosen = index
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == architecture)
                })
                .ok_or_else(|| {
                    let offered: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    self.unsupported(
                        "an image index",
                        format!(
                            "it has no image for linux/{architecture} (it offers {}); the build targets linux/{architecture}",
                            if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
                        ),
                    )
                })?
                .clone();
            served_index = Some(std::mem::replace(
                &mut bytes,
                self.fetch_manifest(&chosen.digest)?,
            ));
            platform = chosen.platform;
        }
        let digest = sha256_digest(&bytes);
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            self.unsupported("a manifest", format!("it is not an image manifest: {e}"))
        })?;
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            desc.hex()
                .map_err(|e| self.unsupported("a manifest", e.to_string()))?;
        }
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string());
        Ok(PlatformManifest {
            bytes,
            media_type,
            digest,
            platform,
            manifest,
            index: served_index,
        })
    }

    /// Download the blobs `wanted` into the store's scratch space, [`PARALLEL_BLOBS`] at a time
    /// over the one connection, each checked against its digest and size (and retried on its
    /// own); the caller commits the [`StagedBlob`]s (or drops them, leaving the store as it was).
    /// The first blob that fails for good ends the whole fetch.
    pub fn fetch_blobs(
        &mut self,
        store: &Store,
        wanted: &[(BlobKind, Descriptor)],
        progress: &dyn Fn(Progress),
    ) -> Result<Vec<StagedBlob>, RegistryError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let Some((_, first)) = wanted.first() else {
            return Ok(Vec::new());
        };
        self.authenticate(&self.target(&first.digest))?;
        let conn = &self.conn;
        let this = &*self;
        let downloads = wanted.iter().map(|(kind, desc)| {
            let kind = *kind;
            async move {
                let target = this.target(&desc.digest);
                let report = |done, event| {
                    progress(Progress {
                        kind,
                        digest: desc.digest.clone(),
                        total: desc.size,
                        done,
                        event,
                    })
                };
                report(0, ProgressEvent::Started);
                let staged = conn
                    .retry(
                        || download_blob(conn, &target, store, &desc.digest, desc.size, &report),
                        &|attempt, wait, error| {
                            report(
                                0,
                                ProgressEvent::Retrying {
                                    attempt,
                                    attempts: conn.retry.attempts,
                                    wait,
                                    error: error.to_string(),
                                },
                            )
                        },
                    )
                    .await?;
                report(desc.size, ProgressEvent::Done);
                Ok::<StagedBlob, RegistryError>(staged)
            }
        });
        conn.runtime.block_on(
            stream::iter(downloads)
                .buffer_unordered(PARALLEL_BLOBS)
                .try_collect(),
        )
    }
}

/// Blobs of one image downloaded at the same time (skopeo's default is 6).
pub const PARALLEL_BLOBS: usize = 4;
