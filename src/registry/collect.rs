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

use super::client::{Connection, Failure, Op};
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

impl ImageSource {
    /// Stream the blob `desc` names into `sink` as it arrives, hashed on the way and checked
    /// against its size and digest: the one pass over its bytes (the builder hands the images
    /// layer's framed writer here, so a blob is written once, where it stays). A transfer that
    /// breaks off is resumed where it stopped (a `Range` request; retried as the connection's
    /// policy says), so no byte reaches `sink` twice; a registry that answers the resumed
    /// request with the whole blob is read past what arrived. A blob that ends up not hashing
    /// to its digest is an error: its bytes are already in `sink`, which the caller drops.
    pub fn stream_blob(
        &mut self,
        desc: &Descriptor,
        sink: &mut dyn std::io::Write,
        progress: &dyn Fn(u64),
    ) -> Result<(), RegistryError> {
        use futures_util::StreamExt;
        use sha2::Digest;
        use std::cell::RefCell;
        let target = self.target(&desc.digest);
        self.authenticate(&target)?;
        let conn = &self.conn;
        let digest = desc.digest.as_str();
        let size = desc.size;
        let op = Op {
            what: "downloading a blob",
            repository: &self.repository,
            action: "pull",
            reference: digest,
        };
        let transfer = |detail: String| RegistryError::Transfer {
            registry: conn.registry.clone(),
            what: format!("downloading blob {digest}"),
            attempts: 1,
            detail,
        };
        // The blob's digest is computed on a thread of its own, fed the received chunks (shared,
        // not copied), so the receiving thread only copies them into the layer.
        let (chunks, to_hash) = std::sync::mpsc::sync_channel::<bytes::Bytes>(64);
        let hashing = std::thread::spawn(move || {
            let mut hasher = sha2::Sha256::new();
            for chunk in to_hash {
                hasher.update(&chunk);
            }
            hasher.finalize()
        });
        // What arrived so far, across attempts.
        let state = RefCell::new((0u64, chunks, sink));
        let attempt = || async {
            let offset = state.borrow().0;
            // Always a range request, even from byte 0: the client checks the digest of a whole
            // (200) response itself, a second hash of every byte; a range (206) response it
            // leaves to the caller, who hashes it here anyway.
            let (mut stream, mut skip) = match conn
                .client
                .pull_blob_stream_partial(&target, digest, offset, None)
                .await
                .map_err(|e| conn.classify(op, e))?
            {
                oci_client::client::BlobResponse::Partial(stream) => (stream, 0),
                oci_client::client::BlobResponse::Full(stream) => (stream, offset),
            };
            let mut last_report = std::time::Instant::now();
            while let Some(chunk) = stream.stream.next().await {
                let chunk = chunk.map_err(|e| Failure {
                    transient: true,
                    error: transfer(super::client::error_chain(&e)),
                })?;
                let mut chunk = chunk;
                if skip > 0 {
                    let n = (skip as usize).min(chunk.len());
                    chunk = chunk.slice(n..);
                    skip -= n as u64;
                }
                let mut st = state.borrow_mut();
                let (done, hasher, sink) = &mut *st;
                if *done + chunk.len() as u64 > size {
                    return Err(Failure::from(transfer(format!(
                        "the registry sent more than the {size} bytes the manifest gives"
                    ))));
                }
                sink.write_all(&chunk).map_err(|e| {
                    Failure::from(transfer(format!("writing it into the images layer: {e}")))
                })?;
                *done += chunk.len() as u64;
                hasher.send(chunk).map_err(|_| {
                    Failure::from(transfer("the thread hashing it stopped".to_string()))
                })?;
                if last_report.elapsed() >= std::time::Duration::from_millis(250) {
                    progress(*done);
                    last_report = std::time::Instant::now();
                }
            }
            let done = state.borrow().0;
            if done != size {
                return Err(Failure {
                    transient: true,
                    error: transfer(format!("the download ended after {done} of {size} bytes")),
                });
            }
            Ok(())
        };
        let quiet = |_: u32, _: Duration, _: &RegistryError| {};
        conn.runtime.block_on(conn.retry(attempt, &quiet))?;
        let (done, chunks, _) = state.into_inner();
        drop(chunks);
        let hash = hashing
            .join()
            .map_err(|_| transfer("the thread hashing it panicked".to_string()))?;
        let actual = format!("sha256:{}", hex::encode(hash));
        if actual != digest {
            return Err(self.unsupported(
                &format!("blob {digest}"),
                format!("its content hashes to {actual}, not to the digest the manifest names"),
            ));
        }
        progress(done);
        Ok(())
    }
}

/// Blobs of one image downloaded at the same time (skopeo's default is 6).
pub const PARALLEL_BLOBS: usize = 4;
