//! Typed OCI documents (image-spec v1.1): descriptors, manifests, the layout index and the image
//! config, plus sealer's own install-time extension of the config.
//!
//! Everything the store reads is parsed into these structs once; the rest of the code never sees
//! raw JSON. Serialisation is deterministic (struct field order, sorted maps) so that builds are
//! reproducible.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Annotation naming an image inside an OCI layout (`NAME:TAG`).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

impl Descriptor {
    /// The hex part of the digest, checked to be a sha256 digest (64 lowercase hex digits).
    pub fn hex(&self) -> Result<&str, DigestError> {
        digest_hex(&self.digest)
    }
}

/// Why a digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("unsupported digest {0:?} (only sha256 is supported)")]
    Unsupported(String),
    #[error("malformed digest {0:?}")]
    Malformed(String),
}

/// The hex of a `sha256:<hex>` digest, checked.
pub fn digest_hex(digest: &str) -> Result<&str, DigestError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| DigestError::Unsupported(digest.to_string()))?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(hex)
    } else {
        Err(DigestError::Malformed(digest.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_string()),
            manifests: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// sealer's install-time meaning of the image (absent in images from other tools).
    #[serde(
        rename = "io.sealer.image",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sealer: Option<SealerConfig>,
    /// The image's bill of materials (CycloneDX 1.5), written by the build's last step.
    #[serde(
        rename = "io.sealer.sbom",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sbom: Option<crate::sbom::EmbeddedBom>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// sealer's two kinds of image: a cluster image (`kube-installer`, the default) installs a
/// cluster and is its base image; an application image (`app-installer`) installs into a
/// running cluster beside its base image. Spelled as sealer spells them in `sealer build
/// --type` and in the `type` of its `sealer.image.extension` manifest annotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageType {
    #[default]
    KubeInstaller,
    AppInstaller,
}

impl ImageType {
    pub fn is_default(&self) -> bool {
        *self == ImageType::KubeInstaller
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageType::KubeInstaller => "kube-installer",
            ImageType::AppInstaller => "app-installer",
        }
    }
}

impl std::str::FromStr for ImageType {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "kube-installer" => Ok(ImageType::KubeInstaller),
            "app-installer" => Ok(ImageType::AppInstaller),
            other => Err(format!(
                "{other:?} is not an image type: kube-installer (a cluster image) or app-installer (an application installed into a running cluster)"
            )),
        }
    }
}

/// The manifest annotation in which sealer (v0.9+) records an image's install-time meaning.
pub const ANNOTATION_SEALER_EXTENSION: &str = "sealer.image.extension";

/// sealer's `sealer.image.extension` annotation (JSON; `pkg/define/image/v1/sealer_image.go`):
/// the fields that mean something at install. [`crate::sealer_image`] reads it into a
/// [`SealerConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SealerExtension {
    #[serde(rename = "type", default)]
    pub image_type: ImageType,
    #[serde(default)]
    pub applications: Vec<ExtensionApp>,
    #[serde(default)]
    pub launch: ExtensionLaunch,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One of `applications` in [`SealerExtension`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ExtensionApp {
    pub name: String,
    /// `kube`, `helm`, `shell`.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, alias = "launchfiles", alias = "launchFiles")]
    pub files: Vec<String>,
    #[serde(default)]
    pub cmds: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `launch` in [`SealerExtension`]: commands (`CMDS`) or apps (`LAUNCH`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ExtensionLaunch {
    #[serde(default)]
    pub cmds: Vec<String>,
    #[serde(default, alias = "appNames")]
    pub app_names: Vec<String>,
}

impl SealerExtension {
    /// Reads the annotation's JSON; `None` when it is not a document sealer would write.
    pub fn parse(json: &str) -> Option<SealerExtension> {
        serde_json::from_str(json).ok()
    }
}

/// What a cluster image means at install time, recorded by the builder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealerConfig {
    /// Cluster image or application image (`sealer build --type`).
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "ImageType::is_default"
    )]
    pub image_type: ImageType,
    /// Install commands run on master0 in the rootfs, in order (`CMD` lines accumulate; `CMDS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmds: Vec<String>,
    /// Apps to launch (`LAUNCH`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launch: Vec<String>,
    /// ARG values at build (the default, or `--build-arg`), by name: defaults of install-time
    /// variables, overridden by `spec.cmd_args` / `--cmd-args` and by any env.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Apps defined by `APP`/`CNI`/`CSI`, keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, App>,
    /// `KUBEVERSION` constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
    /// The image's `plugins/*.yaml` after all its layers (file name to text), recorded by the
    /// build so that a run does not decode every layer to find them; `None` for an image built
    /// before the record existed (its layers are read instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// Where the app's files live in the rootfs (`application/apps/<name>`).
    pub path: String,
    /// `helm`, `kube`, `shell` or `other`.
    pub kind: String,
    /// Files of the app, relative to `path`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmds: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `cni` or `csi` when defined by those instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl SealerConfig {
    pub fn is_empty(&self) -> bool {
        self == &SealerConfig::default()
    }
}
