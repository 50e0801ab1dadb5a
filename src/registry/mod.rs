//! CloudImages in OCI registries: `login`/`logout`, `push` and `pull` over the OCI distribution API.
//!
//! This module owns talking to registries and the credentials file; it never decides what an image
//! contains (the builder does) nor how the store lays blobs out (the store does). Pushing reads
//! blobs from the store and uploads them byte for byte, so manifest, config and layer digests are
//! the same on both sides and the zstd frame structure of sealer layers survives. Pulling streams
//! each blob into [`Store::blob_writer`](crate::store::Store::blob_writer) and commits it with the
//! digest the manifest promises, so nothing unverified enters the store, and names the image only
//! once every blob is in.
//!
//! The distribution protocol (bearer and basic auth, blob HEAD, cross-repository mount, chunked
//! uploads, manifests as raw bytes, streamed blob downloads, plain HTTP, extra CA roots) is done by
//! the `oci-client` crate, run on a private single-threaded tokio runtime so that the API here is
//! synchronous. Two things are our own. The credential check of `login` is a few `reqwest`
//! requests (the HTTP client `oci-client` itself uses), because `oci-client` does not check
//! credentials against a registry using basic auth (it only attaches them to later requests) and
//! always asks a token server for a repository scope, whereas login has no repository. Retries
//! with exponential backoff wrap each blob and manifest transfer, because `oci-client` has none.
//!
//! For the builder: `FROM registry/repo:tag` whose image is not in the store is one call,
//! `pull(&store, &reference, &build_options.registry, &|_| {})`; the container images a build
//! collects are resolved for the build's platform and fetched blob by blob through
//! [`ImageSource`] (same connection, credentials and retries), staged until the build commits.
//! For an install with an external registry, [`push_layout`] pushes the images layer's OCI
//! layout there, under the repositories the install names.

pub mod auth;
mod client;
mod collect;
mod login;
mod pull;
mod push;
mod push_layout;
mod signature;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::Credentials;
pub use collect::{ImageSource, PlatformManifest};
pub use login::{login, logout, verify_credentials};
pub use pull::pull;
pub use push::{push, PushReport};
pub use push_layout::{
    plan_layout_push, push_layout, LayoutImage, LayoutPushPlan, LayoutPushReport,
};

use crate::reference::Reference;
use crate::store::StoreError;

/// How to reach registries; the same for push, pull and login.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Talk plain HTTP instead of HTTPS to every registry (`--insecure`).
    pub insecure: bool,
    /// Registries (`host[:port]`) always talked to over plain HTTP, from
    /// `SEALER_INSECURE_REGISTRIES` (comma-separated): how a build's `FROM` reaches a lab registry.
    pub insecure_registries: Vec<String>,
    /// PEM file of extra CA certificates to trust (`--ca-file`, `SEALER_REGISTRY_CA`).
    pub ca_file: Option<PathBuf>,
    /// Credentials to use instead of looking them up in `auth_files`.
    pub credentials: Option<Credentials>,
    /// Where `login` writes; looked up first.
    pub auth_file: PathBuf,
    /// Read-only credential files looked up after `auth_file` (`~/.docker/config.json`).
    pub extra_auth_files: Vec<PathBuf>,
    /// Attempts per transfer before giving up (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one, with jitter
    /// ([`crate::retry::RetryPolicy`]).
    pub backoff: Duration,
    /// Blobs larger than this are streamed from disk in chunked uploads; smaller ones are sent
    /// from memory.
    pub stream_threshold: u64,
}

impl Default for RegistryOptions {
    /// The same as [`RegistryOptions::from_env`]: the credential files and CA come from the
    /// environment as for the CLI.
    fn default() -> Self {
        RegistryOptions::from_env()
    }
}

impl RegistryOptions {
    /// TLS against the system roots, credentials from `REGISTRY_AUTH_FILE` or
    /// `$SEALER_ROOT/auth.json` then `~/.docker/config.json`, extra CA from `SEALER_REGISTRY_CA`,
    /// 4 attempts per transfer with backoff from 0.5 s.
    pub fn from_env() -> Self {
        RegistryOptions {
            insecure: false,
            insecure_registries: std::env::var("SEALER_INSECURE_REGISTRIES")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(auth::registry_key)
                .collect(),
            ca_file: std::env::var_os("SEALER_REGISTRY_CA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            credentials: None,
            auth_file: auth::default_auth_file(),
            extra_auth_files: auth::docker_config_file().into_iter().collect(),
            attempts: 4,
            backoff: Duration::from_millis(500),
            stream_threshold: 8 << 20,
        }
    }

    /// Whether `registry` is talked to over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure
            || self
                .insecure_registries
                .iter()
                .any(|h| *h == auth::registry_key(registry))
    }

    /// Credentials for `registry`: the explicit ones, else the first credential file naming it.
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = &self.credentials {
            return Ok(Some(c.clone()));
        }
        let mut files = vec![self.auth_file.clone()];
        files.extend(self.extra_auth_files.iter().cloned());
        auth::lookup(&files, registry)
    }
}

/// Which blob of an image a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// Layer `index` (0-based) of `count`.
    Layer {
        index: usize,
        count: usize,
    },
    Config,
    Manifest,
}

/// What happened to a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// Transfer begins.
    Started,
    /// `done` bytes of `total` have moved.
    Transferring,
    /// The registry already had it (push) or the store already had it (pull); nothing moved.
    AlreadyPresent,
    /// The registry linked it from another repository instead of receiving it again.
    Mounted { from: String },
    /// Transfer finished and the blob is verified.
    Done,
    /// A transient failure; the transfer starts again after `wait`.
    Retrying {
        attempt: u32,
        attempts: u32,
        wait: Duration,
        error: String,
    },
}

/// One progress report of a push or pull, per blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub kind: BlobKind,
    pub digest: String,
    pub total: u64,
    pub done: u64,
    pub event: ProgressEvent,
}

/// Errors of registry operations that callers (and users) branch on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {image} names no registry; push and pull need REGISTRY/REPOSITORY:TAG (e.g. `sealer tag {image} registry.example.com:5000/{repository}:{tag}`)")]
    NoRegistry {
        image: String,
        repository: String,
        tag: String,
    },
    #[error("registry {registry} refused access to {repository} ({detail}); run `sealer login {registry}` with an account allowed to {action} it")]
    Unauthorized {
        registry: String,
        repository: String,
        action: &'static str,
        detail: String,
    },
    #[error(
        "registry {registry} rejected the user name or password for {username}; nothing was saved"
    )]
    WrongCredentials { registry: String, username: String },
    #[error("cannot reach registry {registry}: {detail}; check the address and that it is running (add --insecure for a plain-HTTP registry, --ca-file for a private CA)")]
    Unreachable { registry: String, detail: String },
    /// As [`RegistryError::Unreachable`], for a registry already talked to over plain HTTP
    /// (`--insecure`, `SEALER_INSECURE_REGISTRIES`): the hint is not to add what was given.
    #[error("cannot reach registry {registry} over plain HTTP (--insecure): {detail}; check the address and port, that it is running, and whether it wants HTTPS (then leave --insecure out)")]
    UnreachablePlainHttp { registry: String, detail: String },
    #[error("TLS with registry {registry} failed: {detail}; for a private CA pass --ca-file PEM (or set SEALER_REGISTRY_CA), for a plain-HTTP registry use --insecure")]
    Tls { registry: String, detail: String },
    #[error("registry {registry} has no image {reference}; check the name and tag")]
    NotFound { registry: String, reference: String },
    #[error("{what} at registry {registry} failed after {attempts} attempt(s): {detail}")]
    Transfer {
        registry: String,
        what: String,
        attempts: u32,
        detail: String,
    },
    /// A downloaded blob did not hash to its digest, every attempt; the store's
    /// [`StoreError::BlobCorrupt`] is kept.
    #[error("{what} at registry {registry} failed after {attempts} attempt(s): {source}")]
    Corrupt {
        registry: String,
        what: String,
        attempts: u32,
        source: StoreError,
    },
    #[error("registry {registry} sent {what} that sealer cannot use: {reason}")]
    Unsupported {
        registry: String,
        what: String,
        reason: String,
    },
    #[error("credentials file {}: {reason}", path.display())]
    AuthFile { path: PathBuf, reason: String },
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("not logged in to {registry} (no entry in {})", path.display())]
    NotLoggedIn { registry: String, path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("starting the network runtime: {0}")]
    Runtime(std::io::Error),
}

/// The registry a reference lives in, or the error telling the user to name one.
pub(crate) fn registry_of(reference: &Reference) -> Result<&str, RegistryError> {
    reference
        .registry
        .as_deref()
        .ok_or_else(|| RegistryError::NoRegistry {
            image: reference.store_key(),
            repository: reference.repository.clone(),
            tag: reference.tag.clone(),
        })
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
