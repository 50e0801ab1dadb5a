//! `sealer pull`: fetch an image from a registry into the store, verified before it enters.
//!
//! The manifest is fetched as raw bytes (OCI image manifest or docker v2 schema 2; from an index
//! or manifest list the entry for this machine's platform is taken) and kept as those bytes, so
//! its digest is the registry's. Each blob streams into [`Store::blob_writer`] and is committed
//! with the digest the manifest names: a short, long or corrupt download never reaches `blobs/`.
//! The image gets its name only after the config, every layer and the manifest are in, all while
//! holding [`Store::writer_guard`] so garbage collection cannot take blobs from under the pull.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::RegistryOperation;

use super::client::{error_chain, Connection, Failure, Op};
use super::{
    registry_of, sha256_digest, BlobKind, Progress, ProgressEvent, RegistryError, RegistryOptions,
};
use crate::reference::{Reference, DEFAULT_TAG};
use crate::store::{
    Image, ImageConfig, Index, Manifest, StagedBlob, Store, StoreError, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};

const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const ACCEPTED: &[&str] = &[
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_DOCKER_LIST,
];

/// Pull `reference` (which must name a registry) into `store` and return the stored image.
///
/// The image is named by the reference's tag; a reference pinned by digest alone
/// (`repo@sha256:<hex>`) names it `repo:sha256-<hex>`, so that pulling by digest never moves
/// `latest`. A pinned digest is checked against what the registry sends.
///
/// This is also what the builder calls for `FROM registry/repo:tag` when the base image is not in
/// the store.
pub fn pull(
    store: &Store,
    reference: &Reference,
    opts: &RegistryOptions,
    progress: &dyn Fn(Progress),
) -> Result<Image, RegistryError> {
    let registry = registry_of(reference)?;
    let name = local_name(reference);
    let conn = Connection::open(registry, opts)?;
    let target = match &reference.digest {
        Some(digest) => oci_client::Reference::with_digest(
            registry.to_string(),
            reference.repository.clone(),
            digest.clone(),
        ),
        None => oci_client::Reference::with_tag(
            registry.to_string(),
            reference.repository.clone(),
            reference.tag.clone(),
        ),
    };
    let reference_text = reference.to_string();
    let op = |what: &'static str| Op {
        what,
        repository: &reference.repository,
        action: "pull",
        reference: &reference_text,
    };
    let unsupported = |what: &str, reason: String| RegistryError::Unsupported {
        registry: registry.to_string(),
        what: what.to_string(),
        reason,
    };

    let digest = conn.runtime.block_on(async {
        let quiet = |_: u32, _: Duration, _: &RegistryError| {};
        conn.retry(
            || async {
                conn.client
                    .auth(&target, &conn.auth, RegistryOperation::Pull)
                    .await
                    .map(|_| ())
                    .map_err(|e| conn.classify(op("authenticating"), e))
            },
            &quiet,
        )
        .await?;

        let fetch_manifest = |target: oci_client::Reference| {
            let conn = &conn;
            async move {
                conn.retry(
                    || async {
                        conn.client
                            .pull_manifest_raw(&target, &conn.auth, ACCEPTED)
                            .await
                            .map_err(|e| conn.classify(op("fetching the manifest"), e))
                    },
                    &quiet,
                )
                .await
            }
        };
        let (mut bytes, _) = fetch_manifest(target.clone()).await?;
        let mut digest = sha256_digest(&bytes);
        if let Some(pinned) = &reference.digest {
            if &digest != pinned {
                return Err(unsupported(
                    "a manifest",
                    format!("it hashes to {digest}, not the requested {pinned}"),
                ));
            }
        }
        if is_index(&bytes) {
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| unsupported("an image index", e.to_string()))?;
            let chosen = pick_platform(&index).ok_or_else(|| {
                unsupported(
                    "an image index",
                    format!("it has no image for linux/{}", host_arch()),
                )
            })?;
            let by_digest = oci_client::Reference::with_digest(
                registry.to_string(),
                reference.repository.clone(),
                chosen.clone(),
            );
            (bytes, _) = fetch_manifest(by_digest).await?;
            digest = sha256_digest(&bytes);
            if digest != chosen {
                return Err(unsupported(
                    "a manifest",
                    format!("it hashes to {digest}, not {chosen} as its index says"),
                ));
            }
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| unsupported("a manifest", format!("it is not an image manifest: {e}")))?;
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            desc.hex()
                .map_err(|e| unsupported("a manifest", e.to_string()))?;
        }

        let _guard = store.writer_guard()?;
        let count = manifest.layers.len();
        let blobs = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(index, d)| (BlobKind::Layer { index, count }, d))
            .chain(std::iter::once((BlobKind::Config, &manifest.config)));
        for (kind, desc) in blobs {
            let report = |done, event| {
                progress(Progress {
                    kind,
                    digest: desc.digest.clone(),
                    total: desc.size,
                    done,
                    event,
                })
            };
            if store.has_blob(&desc.digest) {
                report(desc.size, ProgressEvent::AlreadyPresent);
                continue;
            }
            report(0, ProgressEvent::Started);
            conn.retry(
                || fetch_blob(&conn, &target, store, &desc.digest, desc.size, &report),
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
        }

        let config_bytes = store.read_blob(&manifest.config.digest)?;
        serde_json::from_slice::<ImageConfig>(&config_bytes).map_err(|e| {
            unsupported(
                "an image config",
                format!("{} is not an image config: {e}", manifest.config.digest),
            )
        })?;

        let mut writer = store.blob_writer()?;
        writer
            .write_all(&bytes)
            .map_err(|e| StoreError::io("writing the manifest blob", e))?;
        let (digest, size) = writer.commit(Some(&digest))?;
        progress(Progress {
            kind: BlobKind::Manifest,
            digest: digest.clone(),
            total: size,
            done: size,
            event: ProgressEvent::Done,
        });
        store.set_name(&name, &digest, size)?;
        super::signature::pull_signature(&conn, store, &reference.repository, &digest).await?;
        Ok::<String, RegistryError>(digest)
    })?;
    let mut image = store.image(&Reference {
        digest: Some(digest),
        ..name.clone()
    })?;
    image.reference = name;
    Ok(image)
}

/// The name a pulled image gets in the store: its tag; for a reference pinned by digest alone
/// (`repo@sha256:…`, whose tag is the default) the tag `sha256-<hex>`, so that pulling by digest
/// never moves the `latest` name.
fn local_name(reference: &Reference) -> Reference {
    let tag = match &reference.digest {
        Some(digest) if reference.tag == DEFAULT_TAG => digest.replacen(':', "-", 1),
        _ => reference.tag.clone(),
    };
    Reference {
        tag,
        digest: None,
        ..reference.clone()
    }
}

/// Stream one blob into the store; only a complete blob with the right digest is committed.
async fn fetch_blob(
    conn: &Connection,
    target: &oci_client::Reference,
    store: &Store,
    digest: &str,
    size: u64,
    report: &dyn Fn(u64, ProgressEvent),
) -> Result<(), Failure> {
    let staged = download_blob(conn, target, store, digest, size, report).await?;
    staged.commit().map_err(RegistryError::from)?;
    Ok(())
}

/// Stream one blob into the store's scratch space and check its size and digest; only a complete
/// blob with the right digest comes back, staged, for the caller to commit.
pub(super) async fn download_blob(
    conn: &Connection,
    target: &oci_client::Reference,
    store: &Store,
    digest: &str,
    size: u64,
    report: &dyn Fn(u64, ProgressEvent),
) -> Result<StagedBlob, Failure> {
    let op = Op {
        what: "downloading a blob",
        repository: target.repository(),
        action: "pull",
        reference: digest,
    };
    let mut stream = conn
        .client
        .pull_blob_stream(target, digest)
        .await
        .map_err(|e| conn.classify(op, e))?;
    let mut writer = store.blob_writer().map_err(RegistryError::from)?;
    let mut done: u64 = 0;
    let mut last_report = Instant::now();
    let transient = |detail: String| Failure {
        transient: true,
        error: RegistryError::Transfer {
            registry: conn.registry.clone(),
            what: format!("downloading blob {digest}"),
            attempts: 1,
            detail,
        },
    };
    while let Some(chunk) = stream.stream.next().await {
        let chunk = chunk.map_err(|e| transient(error_chain(&e)))?;
        done += chunk.len() as u64;
        if done > size {
            return Err(transient(format!(
                "the registry sent more than the {size} bytes the manifest gives"
            )));
        }
        writer
            .write_all(&chunk)
            .map_err(|e| RegistryError::from(StoreError::io("writing a blob to the store", e)))?;
        if last_report.elapsed() >= Duration::from_millis(250) {
            report(done, ProgressEvent::Transferring);
            last_report = Instant::now();
        }
    }
    if done != size {
        return Err(transient(format!(
            "the download ended after {done} of {size} bytes"
        )));
    }
    match writer.finish(Some(digest)) {
        Ok(staged) => Ok(staged),
        Err(e @ StoreError::BlobCorrupt { .. }) => Err(Failure {
            transient: true,
            error: RegistryError::Corrupt {
                registry: conn.registry.clone(),
                what: format!("downloading blob {digest}"),
                attempts: 1,
                source: e,
            },
        }),
        Err(e) => Err(RegistryError::from(e).into()),
    }
}

pub(super) fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => {
            matches!(
                p.media_type.as_deref(),
                Some(MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST)
            ) || (p.media_type.is_none() && p.manifests.is_some())
        }
        Err(_) => false,
    }
}

/// This machine's architecture in OCI terms.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn pick_platform(index: &Index) -> Option<String> {
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
        })
        .map(|d| d.digest.clone())
}
