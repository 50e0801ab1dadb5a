//! An image's signature in a registry: the artifact of [`crate::store::signatures`] under the tag
//! `sha256-<hex>.sig` of the image's repository (the tag-based fallback of registries without
//! the referrers API, such as Debian's docker-registry). `push` sends it after the image
//! manifest; `pull` looks for it after the image is stored and records it when it is there.
//! Nothing here judges a signature: `crate::trust` does, when an image is used.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderValue;

use super::client::{Connection, Op};
use super::pull::download_blob;
use super::RegistryError;
use crate::store::signatures::{self, SignatureArtifact};
use crate::store::{Store, StoreError, MEDIA_TYPE_MANIFEST};

fn quiet(_: u32, _: Duration, _: &RegistryError) {}

fn target(conn: &Connection, repository: &str, tag: &str) -> oci_client::Reference {
    oci_client::Reference::with_tag(
        conn.registry.clone(),
        repository.to_string(),
        tag.to_string(),
    )
}

/// Upload `artifact` (the signature of the image with manifest `digest`) to `repository`: its
/// blobs, then its manifest tagged `sha256-<hex>.sig`. Returns the tag.
pub(super) async fn push_signature(
    conn: &Connection,
    repository: &str,
    digest: &str,
    artifact: &SignatureArtifact,
) -> Result<String, RegistryError> {
    let tag = signatures::signature_tag(digest)?;
    let sig_target = target(conn, repository, &tag);
    let op = Op {
        what: "uploading the image's signature",
        repository,
        action: "push",
        reference: &tag,
    };
    for (blob_digest, bytes) in &artifact.blobs {
        let body = Bytes::from(bytes.clone());
        conn.retry(
            || async {
                conn.client
                    .push_blob(&sig_target, body.clone(), blob_digest)
                    .await
                    .map(|_| ())
                    .map_err(|e| conn.classify(op, e))
            },
            &quiet,
        )
        .await?;
    }
    let content_type = HeaderValue::from_static(MEDIA_TYPE_MANIFEST);
    let body = Bytes::from(artifact.manifest.clone());
    conn.retry(
        || async {
            conn.client
                .push_manifest_raw(&sig_target, body.clone(), content_type.clone())
                .await
                .map(|_| ())
                .map_err(|e| conn.classify(op, e))
        },
        &quiet,
    )
    .await?;
    Ok(tag)
}

/// Fetch the signature of the image with manifest `digest` from `repository`, if the registry
/// holds one, and record it in the store. `Ok(false)` when there is none.
pub(super) async fn pull_signature(
    conn: &Connection,
    store: &Store,
    repository: &str,
    digest: &str,
) -> Result<bool, RegistryError> {
    let tag = signatures::signature_tag(digest)?;
    let sig_target = target(conn, repository, &tag);
    let op = Op {
        what: "fetching the image's signature",
        repository,
        action: "pull",
        reference: &tag,
    };
    let fetched = conn
        .retry(
            || async {
                conn.client
                    .pull_manifest_raw(&sig_target, &conn.auth, &[MEDIA_TYPE_MANIFEST])
                    .await
                    .map_err(|e| conn.classify(op, e))
            },
            &quiet,
        )
        .await;
    let manifest = match fetched {
        Ok((bytes, _)) => bytes,
        // No signature; some registries answer a tag they do not hold with a refusal.
        Err(RegistryError::NotFound { .. } | RegistryError::Unauthorized { .. }) => {
            return Ok(false)
        }
        Err(e) => return Err(e),
    };
    let damaged = |reason: String| {
        RegistryError::from(StoreError::Malformed {
            what: format!("the signature {tag} in {}/{repository}", conn.registry),
            reason,
        })
    };
    let layer = signatures::signature_layer(&manifest, digest).map_err(damaged)?;
    let staged = conn
        .retry(
            || {
                download_blob(
                    conn,
                    &sig_target,
                    store,
                    &layer.digest,
                    layer.size,
                    &|_, _| {},
                )
            },
            &quiet,
        )
        .await?;
    let bytes = std::fs::read(staged.path())
        .map_err(|e| RegistryError::from(StoreError::io("reading a downloaded signature", e)))?;
    let text = signatures::signature_text(&layer, &bytes).map_err(damaged)?;
    store.put_signature(digest, &text)?;
    Ok(true)
}
