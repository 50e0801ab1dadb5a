//! Container images carried inside a CloudImage: how they are named, declared and listed.
//!
//! All container images of a CloudImage live in one layer, the **images layer**: the last layer,
//! its descriptor annotated `io.sealer.layer.content: container-images`, its tar an OCI image
//! layout under `images/` (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) holding, for each
//! declared reference, the image manifest of the build's platform and its config and layers,
//! byte for byte as the registry served them. Each blob starts its own zstd frame; blobs that are
//! already compressed are stored frames (see `packer::frames::FrameMode::Stored`), and `sealer
//! pack --level` keeps the layer's frames as they are. The list (reference, digest, platform,
//! size, app) is also in the image config label and manifest annotation
//! `sealer.image.container.images`, in sealer's format plus `digest` and `size`.
//!
//! This module owns the names ([`ImageName`]: normalised `REGISTRY/REPOSITORY:TAG`), the
//! declarations (`declare`: image lists and a YAML scan of kube manifests, `FILE:LINE` errors),
//! and reading the list back ([`listed_images`], [`images_layer_index`]) for `inspect` and the
//! install engine. It does no network I/O and writes nothing: the builder collects and writes the
//! layer, the registry module fetches.

mod declare;

use std::fmt;

pub use declare::{
    declared_images, parse_list, scan_manifests, Declarations, DeclareError, DeclaredImage, Origin,
};

use crate::reference::{Reference, ReferenceError};
use crate::store::{Descriptor, ImageConfig, Manifest, Platform};

/// Annotation of a layer descriptor saying what the layer holds.
pub const ANNOTATION_LAYER_CONTENT: &str = "io.sealer.layer.content";
/// [`ANNOTATION_LAYER_CONTENT`] of the images layer.
pub const LAYER_CONTENT_CONTAINER_IMAGES: &str = "container-images";
/// Annotation, in the images layer's `index.json`, of the reference pinned to the digest.
pub const ANNOTATION_DIGEST_PINNED: &str = "io.sealer.image.digest-pinned";
/// Config label and manifest annotation listing the container images (sealer's key).
pub const LABEL_CONTAINER_IMAGES: &str = "sealer.image.container.images";
/// Where the OCI layout lies inside the images layer (and in the rootfs it unpacks to).
pub const IMAGES_DIR: &str = "images";

/// Registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A container image reference, normalised as containerd names images: the registry always
/// present (`docker.io` by default), `library/` for single-name docker.io repositories, and the
/// tag `latest` only when neither a tag nor a digest was given. Parsed by the project's one
/// reference parser ([`Reference::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageName {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageName {
    pub fn parse(text: &str) -> Result<ImageName, ReferenceError> {
        let parsed = Reference::parse(text)?;
        let before_digest = text.split('@').next().unwrap_or(text);
        let last = before_digest.rsplit('/').next().unwrap_or(before_digest);
        let tag_given = last.contains(':');
        let registry = match parsed.registry.as_deref() {
            None | Some("index.docker.io" | "registry-1.docker.io") => DEFAULT_REGISTRY.to_string(),
            Some(other) => other.to_string(),
        };
        let repository = if registry == DEFAULT_REGISTRY && !parsed.repository.contains('/') {
            format!("library/{}", parsed.repository)
        } else {
            parsed.repository
        };
        let tag = (tag_given || parsed.digest.is_none()).then_some(parsed.tag);
        Ok(ImageName {
            registry,
            repository,
            tag,
            digest: parsed.digest,
        })
    }

    /// The name an OCI layout gives it (`org.opencontainers.image.ref.name`):
    /// `REGISTRY/REPOSITORY:TAG`, or `REGISTRY/REPOSITORY@sha256:…` when given by digest only.
    pub fn ref_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}/{}:{tag}", self.registry, self.repository),
            (None, Some(digest)) => format!("{}/{}@{digest}", self.registry, self.repository),
            (None, None) => format!("{}/{}", self.registry, self.repository),
        }
    }

    /// `REGISTRY/REPOSITORY@DIGEST`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest when one was given, else the tag.
    pub fn tag_or_digest(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(crate::reference::DEFAULT_TAG)
    }
}

impl fmt::Display for ImageName {
    /// The reference as normalised: [`ImageName::ref_name`], with `@DIGEST` when both were given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ref_name())?;
        if let (Some(_), Some(digest)) = (&self.tag, &self.digest) {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for ImageName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One container image of a CloudImage as its config lists it: sealer's
/// `{image, appName, platform}` plus the pinned manifest `digest` and `size` (the sum of its
/// manifest, config and layer sizes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerImage {
    /// The normalised reference ([`ImageName::ref_name`]).
    pub image: String,
    #[serde(rename = "appName", default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    pub platform: Platform,
    /// `sha256:…` of the platform's image manifest (empty in lists written by other tools).
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub size: u64,
}

/// The container images an image config lists (none when it has no list, or one sealer cannot
/// read).
pub fn listed_images(config: &ImageConfig) -> Vec<ContainerImage> {
    config
        .config
        .labels
        .get(LABEL_CONTAINER_IMAGES)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// The container images listed by an image config given as JSON text (how a `.run` package
/// carries it); none when it cannot be read.
pub fn listed_in_config_json(config_json: &str) -> Vec<ContainerImage> {
    serde_json::from_str::<ImageConfig>(config_json)
        .map(|config| listed_images(&config))
        .unwrap_or_default()
}

/// Whether a layer descriptor is the images layer.
pub fn is_images_layer(desc: &Descriptor) -> bool {
    desc.annotations
        .get(ANNOTATION_LAYER_CONTENT)
        .map(String::as_str)
        == Some(LAYER_CONTENT_CONTAINER_IMAGES)
}

/// The position of the images layer among a manifest's layers (the last one), if it has one.
/// The install engine uses it to send that layer only to registry hosts: the `.run` manifest's
/// layers are in the same order as the OCI manifest's (`manifest_json` in the package).
pub fn images_layer_index(manifest: &Manifest) -> Option<usize> {
    manifest.layers.iter().rposition(is_images_layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_as_containerd_names_them() {
        let cases = [
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("nginx", "docker.io/library/nginx:latest"),
            ("docker.io/bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("index.docker.io/nginx:1", "docker.io/library/nginx:1"),
            (
                "127.0.0.1:5000/library/foo:1",
                "127.0.0.1:5000/library/foo:1",
            ),
            ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
        ];
        for (text, want) in cases {
            assert_eq!(ImageName::parse(text).unwrap().ref_name(), want, "{text}");
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        let by_digest = ImageName::parse(&format!("quay.io/x/y@{digest}")).unwrap();
        assert_eq!(by_digest.tag, None);
        assert_eq!(by_digest.ref_name(), format!("quay.io/x/y@{digest}"));
        assert_eq!(by_digest.tag_or_digest(), digest);
        let both = ImageName::parse(&format!("foo:1@{digest}")).unwrap();
        assert_eq!(both.ref_name(), "docker.io/library/foo:1");
        assert_eq!(both.tag_or_digest(), digest);
        assert_eq!(
            both.to_string(),
            format!("docker.io/library/foo:1@{digest}")
        );
        assert!(ImageName::parse("Not A Reference").is_err());
    }

    #[test]
    fn lists_written_by_sealer_without_digests_still_read() {
        let mut config = ImageConfig::default();
        config.config.labels.insert(
            LABEL_CONTAINER_IMAGES.into(),
            r#"[{"image":"docker.io/library/nginx:1.25","appName":"web","platform":{"os":"linux","architecture":"amd64","variant":""}}]"#.into(),
        );
        let listed = listed_images(&config);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].app_name.as_deref(), Some("web"));
        assert_eq!(listed[0].digest, "");
    }
}
