//! `sealer push`: upload an image from the store to its registry, byte for byte.
//!
//! Order: layers, then config, then the manifest, so that a registry never holds a manifest whose
//! blobs are missing. Each blob is first looked for (HEAD), then mounted from another repository
//! of the same registry that the store knows holds it, and only then uploaded: small blobs from
//! memory, large ones streamed from the store file in chunked uploads. The manifest is sent as the
//! exact bytes the store holds, so its digest is the local image's digest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use oci_client::RegistryOperation;
use reqwest::header::HeaderValue;

use super::client::{Connection, Failure, Op};
use super::{registry_of, BlobKind, Progress, ProgressEvent, RegistryError, RegistryOptions};
use crate::reference::Reference;
use crate::store::{Descriptor, Store, StoreError, MEDIA_TYPE_MANIFEST};

/// Bytes handed to the client per read when streaming a blob from disk.
const READ_CHUNK: usize = 4 << 20;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// Where the image now is.
    pub reference: Reference,
    /// Manifest digest, the same locally and in the registry.
    pub digest: String,
    /// Blobs sent (digests).
    pub uploaded: Vec<String>,
    /// Blobs the registry already had.
    pub already_present: Vec<String>,
    /// Blobs linked from another repository of the registry.
    pub mounted: Vec<String>,
    /// Bytes of blob content sent.
    pub bytes_uploaded: u64,
    /// The tag of the image's signature, pushed beside it (`sha256-<hex>.sig`) when the store
    /// holds one.
    pub signature: Option<String>,
}

pub(super) enum BlobOutcome {
    Uploaded,
    AlreadyPresent,
    Mounted,
}

/// Push the image `reference` (which must name a registry) from `store` to that registry.
pub fn push(
    store: &Store,
    reference: &Reference,
    opts: &RegistryOptions,
    progress: &dyn Fn(Progress),
) -> Result<PushReport, RegistryError> {
    let registry = registry_of(reference)?;
    let image = store.image(reference)?;
    let manifest_bytes = store.read_blob(&image.digest)?;
    let media_type = image
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string());
    let mount_sources = mount_sources(store, registry, &reference.repository);
    let conn = Connection::open(registry, opts)?;
    let target = oci_client::Reference::with_tag(
        registry.to_string(),
        reference.repository.clone(),
        reference.tag.clone(),
    );
    let reference_text = reference.store_key();
    let op = |what: &'static str| Op {
        what,
        repository: &reference.repository,
        action: "push",
        reference: &reference_text,
    };

    conn.runtime.block_on(async {
        let no_retry_report = |_: u32, _: Duration, _: &RegistryError| {};
        conn.retry(
            || async {
                conn.client
                    .auth(&target, &conn.auth, RegistryOperation::Push)
                    .await
                    .map(|_| ())
                    .map_err(|e| conn.classify(op("authenticating"), e))
            },
            &no_retry_report,
        )
        .await?;

        let mut report = PushReport {
            reference: reference.clone(),
            digest: image.digest.clone(),
            uploaded: Vec::new(),
            already_present: Vec::new(),
            mounted: Vec::new(),
            bytes_uploaded: 0,
            signature: None,
        };
        let count = image.manifest.layers.len();
        let blobs = image
            .manifest
            .layers
            .iter()
            .enumerate()
            .map(|(index, d)| (BlobKind::Layer { index, count }, d))
            .chain(std::iter::once((BlobKind::Config, &image.manifest.config)));
        for (kind, desc) in blobs {
            let sources = mount_sources
                .get(&desc.digest)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let blob = BlobPush {
                conn: &conn,
                target: &target,
                source: BlobSource::Store(store),
                desc,
                kind,
                opts,
                progress,
                op: op("uploading a blob"),
            };
            match blob.run(sources).await? {
                BlobOutcome::Uploaded => {
                    report.uploaded.push(desc.digest.clone());
                    report.bytes_uploaded += desc.size;
                }
                BlobOutcome::AlreadyPresent => report.already_present.push(desc.digest.clone()),
                BlobOutcome::Mounted => report.mounted.push(desc.digest.clone()),
            }
        }

        let manifest_progress = |done, event| {
            progress(Progress {
                kind: BlobKind::Manifest,
                digest: image.digest.clone(),
                total: manifest_bytes.len() as u64,
                done,
                event,
            })
        };
        manifest_progress(0, ProgressEvent::Started);
        let content_type =
            HeaderValue::from_str(&media_type).map_err(|_| StoreError::Malformed {
                what: format!("manifest {}", image.digest),
                reason: format!("its media type {media_type:?} is not a valid header value"),
            })?;
        let body = Bytes::from(manifest_bytes.clone());
        conn.retry(
            || async {
                conn.client
                    .push_manifest_raw(&target, body.clone(), content_type.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| conn.classify(op("uploading the manifest"), e))
            },
            &|attempt, wait, error| {
                manifest_progress(0, retry_event(attempt, conn.retry.attempts, wait, error))
            },
        )
        .await?;
        manifest_progress(manifest_bytes.len() as u64, ProgressEvent::Done);
        let subject = Descriptor {
            media_type: media_type.clone(),
            digest: image.digest.clone(),
            size: manifest_bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        if let Some(artifact) = store.signature_artifact(&subject)? {
            report.signature = Some(
                super::signature::push_signature(
                    &conn,
                    &reference.repository,
                    &image.digest,
                    &artifact,
                )
                .await?,
            );
        }
        Ok(report)
    })
}

pub(super) fn retry_event(
    attempt: u32,
    attempts: u32,
    wait: Duration,
    error: &RegistryError,
) -> ProgressEvent {
    ProgressEvent::Retrying {
        attempt,
        attempts,
        wait,
        error: error.to_string(),
    }
}

/// For every blob of other images of the same registry in the store: the repositories holding it
/// (candidates for a cross-repository mount). Best effort: unreadable images are skipped.
fn mount_sources(store: &Store, registry: &str, repository: &str) -> BTreeMap<String, Vec<String>> {
    let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(images) = store.images() else {
        return sources;
    };
    for summary in images {
        let Ok(other) = Reference::parse(&summary.name) else {
            continue;
        };
        if other.registry.as_deref() != Some(registry) || other.repository == repository {
            continue;
        }
        let Ok(image) = store.image(&other) else {
            continue;
        };
        for desc in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
            let repos = sources.entry(desc.digest.clone()).or_default();
            if !repos.contains(&other.repository) {
                repos.push(other.repository.clone());
            }
        }
    }
    sources
}

/// Where the bytes of the blobs being pushed are: the store, or an OCI image layout directory
/// (`blobs/sha256/HEX`).
#[derive(Clone, Copy)]
pub(super) enum BlobSource<'a> {
    Store(&'a Store),
    Layout(&'a std::path::Path),
}

impl BlobSource<'_> {
    pub(super) fn path(&self, digest: &str) -> Result<std::path::PathBuf, RegistryError> {
        match self {
            BlobSource::Store(store) => Ok(store.blob_path(digest)?),
            BlobSource::Layout(root) => {
                let hex = crate::store::digest_hex(digest).map_err(|e| StoreError::Malformed {
                    what: "a digest".into(),
                    reason: e.to_string(),
                })?;
                Ok(root.join("blobs").join("sha256").join(hex))
            }
        }
    }

    pub(super) fn read(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        match self {
            BlobSource::Store(store) => Ok(store.read_blob(digest)?),
            BlobSource::Layout(_) => {
                let path = self.path(digest)?;
                std::fs::read(&path).map_err(|e| {
                    RegistryError::from(StoreError::io(format!("reading {}", path.display()), e))
                })
            }
        }
    }
}

pub(super) struct BlobPush<'a> {
    pub conn: &'a Connection,
    pub target: &'a oci_client::Reference,
    pub source: BlobSource<'a>,
    pub desc: &'a Descriptor,
    pub kind: BlobKind,
    pub opts: &'a RegistryOptions,
    pub progress: &'a dyn Fn(Progress),
    pub op: Op<'a>,
}

impl BlobPush<'_> {
    fn report(&self, done: u64, event: ProgressEvent) {
        (self.progress)(Progress {
            kind: self.kind,
            digest: self.desc.digest.clone(),
            total: self.desc.size,
            done,
            event,
        });
    }

    fn on_retry(&self) -> impl Fn(u32, Duration, &RegistryError) + '_ {
        move |attempt, wait, error| {
            self.report(
                0,
                retry_event(attempt, self.conn.retry.attempts, wait, error),
            )
        }
    }

    pub(super) async fn run(&self, mount_from: &[String]) -> Result<BlobOutcome, RegistryError> {
        let conn = self.conn;
        let digest = &self.desc.digest;
        let exists = conn
            .retry(
                || async {
                    conn.client
                        .blob_exists(self.target, digest)
                        .await
                        .map_err(|e| conn.classify(self.op, e))
                },
                &self.on_retry(),
            )
            .await?;
        if exists {
            self.report(self.desc.size, ProgressEvent::AlreadyPresent);
            return Ok(BlobOutcome::AlreadyPresent);
        }
        for from in mount_from {
            let source = oci_client::Reference::with_tag(
                conn.registry.clone(),
                from.clone(),
                "latest".to_string(),
            );
            // A registry that cannot mount answers by opening an ordinary upload; we then upload.
            if conn
                .client
                .mount_blob(self.target, &source, digest)
                .await
                .is_ok()
            {
                self.report(
                    self.desc.size,
                    ProgressEvent::Mounted { from: from.clone() },
                );
                return Ok(BlobOutcome::Mounted);
            }
        }
        self.report(0, ProgressEvent::Started);
        conn.retry(|| self.upload_once(), &self.on_retry()).await?;
        self.report(self.desc.size, ProgressEvent::Done);
        Ok(BlobOutcome::Uploaded)
    }

    async fn upload_once(&self) -> Result<(), Failure> {
        let conn = self.conn;
        let digest = &self.desc.digest;
        if self.desc.size <= self.opts.stream_threshold {
            let bytes = self.source.read(digest)?;
            conn.client
                .push_blob(self.target, bytes, digest)
                .await
                .map_err(|e| conn.classify(self.op, e))?;
            return Ok(());
        }
        let path = self.source.path(digest)?;
        let file = File::open(&path).map_err(|e| {
            RegistryError::from(StoreError::io(format!("opening {}", path.display()), e))
        })?;
        let sent = Arc::new(AtomicU64::new(0));
        let stream =
            futures_util::stream::try_unfold((file, sent.clone()), |(mut file, sent)| async move {
                let mut buf = vec![0u8; READ_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok::<_, OciDistributionError>(None);
                }
                buf.truncate(filled);
                sent.fetch_add(filled as u64, Ordering::Relaxed);
                Ok(Some((Bytes::from(buf), (file, sent))))
            });
        let upload =
            conn.client
                .push_blob_stream(self.target, stream, digest, Some(self.desc.size));
        tokio::pin!(upload);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let result = loop {
            tokio::select! {
                r = &mut upload => break r,
                _ = tick.tick() => self.report(sent.load(Ordering::Relaxed), ProgressEvent::Transferring),
            }
        };
        result.map(|_| ()).map_err(|e| conn.classify(self.op, e))
    }
}
