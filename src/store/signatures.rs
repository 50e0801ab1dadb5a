//! Image signatures kept beside the store, and the OCI artifact that carries one elsewhere.
//!
//! A signature belongs to an image's manifest digest, not to a name: `sealer sign IMAGE` writes
//! `$SEALER_ROOT/signatures/<hex>.minisig` (a minisign signature of the manifest bytes, made and
//! checked by `crate::trust`), and every local name of that digest is signed. Outside the store
//! it travels as an OCI artifact next to the image, found by the tag-based fallback that
//! registries without the referrers API use: an image manifest tagged `sha256-<hex>.sig` in the
//! image's repository, whose one layer is the signature text and whose `subject` names the image.
//! `sealer push`/`pull` and `save`/`load` move it; skopeo, copying the image alone, leaves it
//! behind and the image untouched. This module only stores and (de)serialises; it never judges a
//! signature.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{digest_hex, Descriptor, Store, StoreError, MEDIA_TYPE_MANIFEST};

/// Media type of the signature layer (and the artifact type of its manifest).
pub const MEDIA_TYPE_SIGNATURE: &str = "application/vnd.sealer.signature.minisign.v1";
/// The OCI empty descriptor's media type and content (the artifact's config).
pub const MEDIA_TYPE_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_JSON: &[u8] = b"{}";
/// The largest signature text accepted from an archive or a registry (a minisign signature is
/// about 300 bytes; the trusted comment is short).
const MAX_SIGNATURE_LEN: u64 = 64 << 10;

type Result<T> = std::result::Result<T, StoreError>;

/// The tag the signature of the image with manifest `digest` has in its repository:
/// `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> Result<String> {
    let hex = digest_hex(digest).map_err(|e| StoreError::Malformed {
        what: "a digest".into(),
        reason: e.to_string(),
    })?;
    Ok(format!("sha256-{hex}.sig"))
}

/// The image digest a signature tag names, when `tag` is one.
pub fn signed_digest(tag: &str) -> Option<String> {
    let hex = tag.strip_prefix("sha256-")?.strip_suffix(".sig")?;
    let digest = format!("sha256:{hex}");
    digest_hex(&digest).ok()?;
    Some(digest)
}

/// The manifest of a signature artifact (OCI image manifest with `artifactType` and `subject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
}

/// A signature artifact ready to be written somewhere: its manifest bytes and its two blobs.
#[derive(Debug, Clone)]
pub struct SignatureArtifact {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    /// `(digest, bytes)` of the config (`{}`) and of the signature text.
    pub blobs: Vec<(String, Vec<u8>)>,
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The artifact carrying `text`, the signature of the image whose manifest is `subject`.
pub fn artifact(subject: &Descriptor, text: &str) -> Result<SignatureArtifact> {
    let layer_digest = sha256_digest(text.as_bytes());
    let manifest = SignatureManifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.into(),
        artifact_type: Some(MEDIA_TYPE_SIGNATURE.into()),
        config: Descriptor {
            media_type: MEDIA_TYPE_EMPTY.into(),
            digest: sha256_digest(EMPTY_JSON),
            size: EMPTY_JSON.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        layers: vec![Descriptor {
            media_type: MEDIA_TYPE_SIGNATURE.into(),
            digest: layer_digest.clone(),
            size: text.len() as u64,
            annotations: Default::default(),
            platform: None,
        }],
        subject: Some(Descriptor {
            media_type: subject.media_type.clone(),
            digest: subject.digest.clone(),
            size: subject.size,
            annotations: Default::default(),
            platform: None,
        }),
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| StoreError::Malformed {
        what: "a signature manifest".into(),
        reason: e.to_string(),
    })?;
    Ok(SignatureArtifact {
        manifest_digest: sha256_digest(&bytes),
        manifest: bytes,
        blobs: vec![
            (sha256_digest(EMPTY_JSON), EMPTY_JSON.to_vec()),
            (layer_digest, text.as_bytes().to_vec()),
        ],
    })
}

/// The signature layer an artifact manifest names, checked to be one of ours for `subject`
/// (the subject, when the manifest names one, must be that digest).
pub fn signature_layer(manifest: &[u8], subject: &str) -> std::result::Result<Descriptor, String> {
    let m: SignatureManifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("its manifest is not a signature manifest: {e}"))?;
    if let Some(s) = &m.subject {
        if s.digest != subject {
            return Err(format!("it signs {}, not {subject}", s.digest));
        }
    }
    let layer = match m.layers.as_slice() {
        [layer] if layer.media_type == MEDIA_TYPE_SIGNATURE => layer.clone(),
        _ => return Err(format!("it has no single {MEDIA_TYPE_SIGNATURE} layer")),
    };
    layer.hex().map_err(|e| e.to_string())?;
    if layer.size > MAX_SIGNATURE_LEN {
        return Err(format!("its signature layer has {} bytes", layer.size));
    }
    Ok(layer)
}

/// The signature text of a layer's bytes, checked against the layer's digest.
pub fn signature_text(layer: &Descriptor, bytes: &[u8]) -> std::result::Result<String, String> {
    let actual = sha256_digest(bytes);
    if actual != layer.digest {
        return Err(format!(
            "its signature blob hashes to {actual}, not {}",
            layer.digest
        ));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| "its signature is not text".to_string())
}

impl Store {
    fn signatures_dir(&self) -> PathBuf {
        self.root.join("signatures")
    }

    fn signature_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest_hex(digest).map_err(|e| StoreError::Malformed {
            what: "a digest".into(),
            reason: e.to_string(),
        })?;
        Ok(self.signatures_dir().join(format!("{hex}.minisig")))
    }

    /// The signature text recorded for the image with manifest `digest`, if any.
    pub fn signature(&self, digest: &str) -> Result<Option<String>> {
        let path = self.signature_path(digest)?;
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Record `text` as the signature of the image with manifest `digest` (replacing one).
    pub fn put_signature(&self, digest: &str, text: &str) -> Result<()> {
        let path = self.signature_path(digest)?;
        let dir = self.signatures_dir();
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        self.write_atomic(&path, text.as_bytes())
    }

    /// Remove the signatures of images whose manifest is no longer kept (garbage collection,
    /// under the store lock). Best effort: a signature left behind signs nothing stored.
    pub(super) fn prune_signatures(&self, keep: &std::collections::BTreeSet<String>) {
        let Ok(entries) = fs::read_dir(self.signatures_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".minisig") else {
                continue;
            };
            if !keep.contains(&format!("sha256:{hex}")) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The signature artifact of the image with manifest `subject`, when it is signed.
    pub fn signature_artifact(&self, subject: &Descriptor) -> Result<Option<SignatureArtifact>> {
        self.signature(&subject.digest)?
            .map(|text| artifact(subject, &text))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_names_its_subject_and_reads_back() {
        let subject = Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest: sha256_digest(b"m"),
            size: 1,
            annotations: Default::default(),
            platform: None,
        };
        let a = artifact(&subject, "untrusted comment: x\nAAAA\n").unwrap();
        let layer = signature_layer(&a.manifest, &subject.digest).unwrap();
        assert_eq!(
            signature_text(&layer, &a.blobs[1].1).unwrap(),
            "untrusted comment: x\nAAAA\n"
        );
        assert!(signature_layer(&a.manifest, &sha256_digest(b"other")).is_err());
        assert!(signature_text(&layer, b"changed").is_err());
        let tag = signature_tag(&subject.digest).unwrap();
        assert_eq!(signed_digest(&tag), Some(subject.digest.clone()));
        assert_eq!(signed_digest("v1"), None);
    }
}
