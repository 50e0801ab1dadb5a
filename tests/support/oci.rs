//! Small container images made offline for tests: a gzip layer, a config and an OCI image
//! manifest written as an OCI image layout, then pushed with `skopeo` (digests preserved) to a
//! registry of the test's own. Nothing here is fetched from anywhere.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::store::{sha256, tool, write};

/// One image as its source registry serves it.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// `REGISTRY/REPOSITORY:TAG`, as a build's image list names it.
    pub reference: String,
    /// Digest of the image manifest (what containerd records as the image's digest).
    pub manifest: String,
    /// Digest of the config (what the CRI reports as the image id).
    pub config: String,
    pub layer: String,
}

impl TestImage {
    /// The manifest, config and layer digests.
    pub fn blobs(&self) -> [&str; 3] {
        [&self.manifest, &self.config, &self.layer]
    }
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256(bytes);
    write(
        &layout.join("blobs/sha256").join(&digest["sha256:".len()..]),
        bytes,
    );
    (digest, bytes.len())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// Writes a one-layer linux/amd64 image (a file `NAME.bin` of `len` bytes of noise from
/// `seed`) as an OCI layout at `layout`, tagged `tag`; its (manifest, config, layer) digests.
pub fn write_layout(layout: &Path, name: &str, tag: &str, len: usize, seed: u64) -> [String; 3] {
    fs::create_dir_all(layout.join("blobs/sha256")).expect("creating an OCI layout");
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let tar = super::tar::files(&[(&format!("{name}.bin"), &super::noise::bytes(len, seed))]);
    let (layer, layer_size) = put_blob(layout, &gzip(&tar));
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": [format!("/{name}.bin")]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    });
    let (config_digest, config_size) = put_blob(layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer, "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = put_blob(layout, manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    write(&layout.join("index.json"), index.to_string().as_bytes());
    [manifest_digest, config_digest, layer]
}

/// Makes `REGISTRY/library/NAME:TAG` offline (see [`write_layout`]) and pushes it with skopeo
/// to the plain-HTTP registry `registry` (`HOST:PORT`); checks the registry serves the
/// manifest with the digest written.
pub fn push(
    work: &Path,
    registry: &str,
    name: &str,
    tag: &str,
    len: usize,
    seed: u64,
) -> TestImage {
    let layout = work.join(format!("oci-{name}-{tag}"));
    let [manifest, config, layer] = write_layout(&layout, name, tag, len, seed);
    let reference = format!("{registry}/library/{name}:{tag}");
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{reference}"),
        ],
    );
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    assert_eq!(sha256(raw.as_bytes()), manifest, "{reference} as pushed");
    TestImage {
        reference,
        manifest,
        config,
        layer,
    }
}
