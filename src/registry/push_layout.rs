//! Pushing the images of an OCI image layout (the images layer's `images/` tree) into an
//! existing registry, each under a repository the caller names: what an install does with an
//! external registry. Per image: its blobs (looked for first, mounted from a repository this
//! push already filled, uploaded only when the registry has neither), then the manifests of an
//! index's platforms that the layout holds, then the manifest itself as its exact bytes, so the
//! registry serves the digest the image was built with. A blob the registry holds is never sent
//! again, so pushing the same layout twice sends only manifests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use oci_client::RegistryOperation;
use reqwest::header::HeaderValue;

use super::client::{Connection, Op};
use super::push::{retry_event, BlobOutcome, BlobPush, BlobSource};
use super::{BlobKind, Progress, ProgressEvent, RegistryError, RegistryOptions};
use crate::store::{Descriptor, StoreError, MEDIA_TYPE_MANIFEST};

/// One image of the layout and where it goes.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The manifest (or index) in the layout.
    pub manifest: Descriptor,
    /// The repository in the target registry (`mirror/docker.io/library/foo`).
    pub repository: String,
    /// The tag it is pushed under; by digest alone when `None`.
    pub tag: Option<String>,
}

impl LayoutImage {
    /// `REPOSITORY:TAG`, or `REPOSITORY:DIGEST` for an image pushed by digest alone: how
    /// errors name it.
    fn reference_text(&self) -> String {
        format!(
            "{}:{}",
            self.repository,
            self.tag.as_deref().unwrap_or(&self.manifest.digest)
        )
    }

    /// Its repository in `registry` at `reference`, a tag or a `sha256:` digest.
    fn at(&self, registry: &str, reference: &str) -> oci_client::Reference {
        let (registry, repository) = (registry.to_string(), self.repository.clone());
        if reference.starts_with("sha256:") {
            oci_client::Reference::with_digest(registry, repository, reference.to_string())
        } else {
            oci_client::Reference::with_tag(registry, repository, reference.to_string())
        }
    }
}

/// What pushing a layout did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutPushReport {
    pub images: usize,
    /// Blobs sent (digests), and their bytes.
    pub uploaded: Vec<String>,
    pub bytes_uploaded: u64,
    /// Blobs the registry held already.
    pub already_present: usize,
    /// Blobs linked from a repository this push filled.
    pub mounted: usize,
}

/// The parts of a manifest or index that name other content.
#[derive(serde::Deserialize)]
struct Links {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// What pushing a layout would send, found by asking the registry (`HEAD` of each blob in the
/// repository it goes to) without writing anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutPushPlan {
    pub images: usize,
    /// Blobs (digest, size) the registry would be sent.
    pub to_upload: Vec<(String, u64)>,
    /// Blobs the registry holds already where they go.
    pub already_present: Vec<(String, u64)>,
    /// Blobs a repository this push fills first would give by a mount.
    pub mounted: Vec<(String, u64)>,
}

/// What [`push_layout`] of the same arguments would do with each blob, each counted once per
/// repository as the push does: held there already, mounted from a repository filled earlier in
/// the push, or uploaded. Asks the registry with `HEAD` only (pull access is enough).
pub fn plan_layout_push(
    registry: &str,
    layout: &Path,
    images: &[LayoutImage],
    opts: &RegistryOptions,
) -> Result<LayoutPushPlan, RegistryError> {
    let source = BlobSource::Layout(layout);
    let conn = Connection::open(registry, opts)?;
    let mut plan = LayoutPushPlan::default();
    // Blob digest -> a repository of this push that would hold it.
    let mut holders: BTreeMap<String, String> = BTreeMap::new();
    for image in images {
        let reference_text = image.reference_text();
        let op = Op {
            what: "looking for a blob",
            repository: &image.repository,
            action: "pull",
            reference: &reference_text,
        };
        let target = image.at(registry, &image.manifest.digest);
        let (_, blobs) = image_content(&source, image, &reference_text)?;
        conn.runtime.block_on(async {
            conn.retry(
                || async {
                    conn.client
                        .auth(&target, &conn.auth, RegistryOperation::Pull)
                        .await
                        .map(|_| ())
                        .map_err(|e| conn.classify(op, e))
                },
                &|_, _, _| {},
            )
            .await?;
            let mut seen = std::collections::BTreeSet::new();
            for desc in &blobs {
                if !seen.insert(desc.digest.clone()) {
                    continue;
                }
                let exists = conn
                    .retry(
                        || async {
                            conn.client
                                .blob_exists(&target, &desc.digest)
                                .await
                                .map_err(|e| conn.classify(op, e))
                        },
                        &|_, _, _| {},
                    )
                    .await?;
                let entry = (desc.digest.clone(), desc.size);
                if exists {
                    plan.already_present.push(entry);
                } else if holders
                    .get(&desc.digest)
                    .is_some_and(|r| *r != image.repository)
                {
                    plan.mounted.push(entry);
                } else {
                    plan.to_upload.push(entry);
                }
                holders
                    .entry(desc.digest.clone())
                    .or_insert_with(|| image.repository.clone());
            }
            Ok::<(), RegistryError>(())
        })?;
        plan.images += 1;
    }
    Ok(plan)
}

/// Push `images` from the layout at `layout` to `registry`.
pub fn push_layout(
    registry: &str,
    layout: &Path,
    images: &[LayoutImage],
    opts: &RegistryOptions,
    progress: &dyn Fn(Progress),
) -> Result<LayoutPushReport, RegistryError> {
    let source = BlobSource::Layout(layout);
    let conn = Connection::open(registry, opts)?;
    let mut report = LayoutPushReport::default();
    // Blob digest -> a repository of this push that holds it (to mount from).
    let mut holders: BTreeMap<String, String> = BTreeMap::new();
    for image in images {
        let reference_text = image.reference_text();
        let op = |what: &'static str| Op {
            what,
            repository: &image.repository,
            action: "push",
            reference: &reference_text,
        };
        let at = |reference: &str| image.at(registry, reference);
        let target = at(image.tag.as_deref().unwrap_or(&image.manifest.digest));
        let (manifests, blobs) = image_content(&source, image, &reference_text)?;

        conn.runtime.block_on(async {
            conn.retry(
                || async {
                    conn.client
                        .auth(&target, &conn.auth, RegistryOperation::Push)
                        .await
                        .map(|_| ())
                        .map_err(|e| conn.classify(op("authenticating"), e))
                },
                &|_, _, _| {},
            )
            .await?;
            let count = blobs.len();
            for (index, desc) in blobs.iter().enumerate() {
                let mount_from: Vec<String> = holders
                    .get(&desc.digest)
                    .filter(|r| **r != image.repository)
                    .cloned()
                    .into_iter()
                    .collect();
                let blob = BlobPush {
                    conn: &conn,
                    target: &target,
                    source,
                    desc,
                    kind: BlobKind::Layer { index, count },
                    opts,
                    progress,
                    op: op("uploading a blob"),
                };
                match blob.run(&mount_from).await? {
                    BlobOutcome::Uploaded => {
                        report.uploaded.push(desc.digest.clone());
                        report.bytes_uploaded += desc.size;
                    }
                    BlobOutcome::AlreadyPresent => report.already_present += 1,
                    BlobOutcome::Mounted => report.mounted += 1,
                }
                holders
                    .entry(desc.digest.clone())
                    .or_insert_with(|| image.repository.clone());
            }
            let last = manifests.len().saturating_sub(1);
            for (i, (desc, bytes, media_type)) in manifests.iter().enumerate() {
                // The image's own manifest goes under its tag; an index's platforms by digest.
                let reference = if i == last {
                    target.clone()
                } else {
                    at(&desc.digest)
                };
                let content_type =
                    HeaderValue::from_str(media_type).map_err(|_| StoreError::Malformed {
                        what: format!("manifest {}", desc.digest),
                        reason: format!(
                            "its media type {media_type:?} is not a valid header value"
                        ),
                    })?;
                let body = Bytes::from(bytes.clone());
                let report_manifest = |done, event| {
                    progress(Progress {
                        kind: BlobKind::Manifest,
                        digest: desc.digest.clone(),
                        total: bytes.len() as u64,
                        done,
                        event,
                    })
                };
                report_manifest(0, ProgressEvent::Started);
                conn.retry(
                    || async {
                        conn.client
                            .push_manifest_raw(&reference, body.clone(), content_type.clone())
                            .await
                            .map(|_| ())
                            .map_err(|e| conn.classify(op("uploading the manifest"), e))
                    },
                    &|attempt, wait: Duration, error| {
                        report_manifest(0, retry_event(attempt, conn.retry.attempts, wait, error))
                    },
                )
                .await?;
                report_manifest(bytes.len() as u64, ProgressEvent::Done);
            }
            Ok::<(), RegistryError>(())
        })?;
        report.images += 1;
    }
    Ok(report)
}

/// An image's manifests to send (children first, each with its bytes and media type) and the
/// config and layer blobs they name, read from the layout and checked against their digests.
type ImageContent = (Vec<(Descriptor, Vec<u8>, String)>, Vec<Descriptor>);

fn image_content(
    source: &BlobSource<'_>,
    image: &LayoutImage,
    reference_text: &str,
) -> Result<ImageContent, RegistryError> {
    // Manifests to send, children first, each with its bytes and media type.
    let mut manifests: Vec<(Descriptor, Vec<u8>, String)> = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut pending = vec![(image.manifest.clone(), 0usize)];
    while let Some((desc, depth)) = pending.pop() {
        let bytes = source.read(&desc.digest)?;
        if super::sha256_digest(&bytes) != desc.digest {
            return Err(StoreError::Malformed {
                what: format!("manifest {} of {reference_text}", desc.digest),
                reason: "its bytes do not hash to its digest; the package is damaged".into(),
            }
            .into());
        }
        let links: Links = serde_json::from_slice(&bytes).map_err(|e| StoreError::Malformed {
            what: format!("manifest {} of {reference_text}", desc.digest),
            reason: e.to_string(),
        })?;
        let media_type = links
            .media_type
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| Some(desc.media_type.clone()).filter(|m| !m.is_empty()))
            .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string());
        blobs.extend(links.config.into_iter().chain(links.layers));
        // An index's platforms the layout holds go first; the others were not collected.
        if depth < 2 {
            for child in links.manifests {
                if source.path(&child.digest)?.is_file() {
                    pending.push((child, depth + 1));
                }
            }
        }
        manifests.push((desc, bytes, media_type));
    }
    manifests.reverse();
    Ok((manifests, blobs))
}
