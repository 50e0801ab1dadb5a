//! What the registry serves, read from an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/`): the images named by their `org.opencontainers.image.ref.name` annotations,
//! the manifests (held in memory, each checked against its digest), and the set of blobs some
//! manifest references. Names are resolved here, including containerd's `ns` query. It reads
//! only inside the layout and never writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::container_images::ImageName;

/// The annotation naming an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The largest `index.json` read.
pub(super) const MAX_INDEX_LEN: u64 = 64 << 20;
/// The largest manifest read (the distribution spec lets registries refuse above 4 MiB).
pub(super) const MAX_MANIFEST_LEN: u64 = 4 << 20;
/// How deep image indexes may nest below `index.json`.
const MAX_INDEX_DEPTH: usize = 2;

/// A blob's name: `sha256:` and 64 lowercase hex digits, nothing else (it becomes a path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobDigest(String);

impl BlobDigest {
    pub fn parse(text: &str) -> Option<BlobDigest> {
        let hex = text.strip_prefix("sha256:")?;
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| BlobDigest(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The blob's file in the layout at `root`.
    pub fn path(&self, root: &Path) -> PathBuf {
        root.join("blobs").join("sha256").join(self.hex())
    }
}

impl std::fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {limit} bytes; it is not an OCI layout's")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} is not valid JSON for an OCI {what}: {source}")]
    Json {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{path} does not hash to {digest} (or is not {size} bytes); the layout is damaged, install it again")]
    Corrupt {
        path: PathBuf,
        digest: BlobDigest,
        size: u64,
    },
    #[error("{path} names {digest:?}, which is not sha256: and 64 lowercase hex digits")]
    BadDigest { path: PathBuf, digest: String },
}

/// A manifest as served: its bytes exactly as stored and the media type to send with them.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// One repository of one registry: its tags and the manifests it may serve by digest.
#[derive(Debug, Default)]
pub struct Repository {
    pub tags: BTreeMap<String, BlobDigest>,
    pub manifests: BTreeSet<BlobDigest>,
}

/// Everything the layout offers, in memory. Built by [`Catalog::load`]; an empty one serves
/// nothing.
#[derive(Debug, Default)]
pub struct Catalog {
    /// By `(registry, repository)`, both normalized (`docker.io`, `library/…`).
    repositories: BTreeMap<(String, String), Repository>,
    manifests: HashMap<BlobDigest, StoredManifest>,
    /// Blobs some manifest references (configs and layers).
    blobs: HashSet<BlobDigest>,
    /// `index.json` entries that could not be served, each one sentence.
    pub skipped: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// The parts of a manifest or an index that name other content.
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

/// Where a request's repository is looked up: the repository path and the `ns` query.
pub struct Lookup<'a> {
    pub name: &'a str,
    pub ns: Option<&'a str>,
}

impl Catalog {
    /// Reads the layout at `root`. An entry of `index.json` without a usable name is skipped
    /// (and listed in [`Catalog::skipped`]); a manifest that does not hash to its digest makes
    /// the whole layout refused, as a damaged layout would serve damaged images.
    pub fn load(root: &Path) -> Result<Catalog, LayoutError> {
        let index_path = root.join("index.json");
        let text = read_bounded(&index_path, MAX_INDEX_LEN)?;
        let index: Index = serde_json::from_slice(&text).map_err(|source| LayoutError::Json {
            path: index_path.clone(),
            what: "image index",
            source,
        })?;
        let mut catalog = Catalog::default();
        for entry in &index.manifests {
            let digest = parse_digest(&index_path, &entry.digest)?;
            catalog.add_manifest(root, &digest, entry, 0)?;
            let Some(name) = entry.annotations.get(REF_NAME) else {
                catalog
                    .skipped
                    .push(format!("{digest} has no {REF_NAME} annotation"));
                continue;
            };
            match named(name) {
                Ok((key, tag)) => {
                    let reachable = catalog.reachable(&digest);
                    let repo = catalog.repositories.entry(key).or_default();
                    repo.manifests.extend(reachable);
                    if let Some(tag) = tag {
                        repo.tags.insert(tag, digest);
                    }
                }
                Err(reason) => catalog.skipped.push(format!("{name:?}: {reason}")),
            }
        }
        Ok(catalog)
    }

    /// `digest` and the manifests of the indexes below it.
    fn reachable(&self, digest: &BlobDigest) -> BTreeSet<BlobDigest> {
        let mut found = BTreeSet::from([digest.clone()]);
        let mut stack = vec![digest.clone()];
        while let Some(d) = stack.pop() {
            for child in self.children(&d).unwrap_or_default() {
                if found.insert(child.clone()) {
                    stack.push(child);
                }
            }
        }
        found
    }

    fn children(&self, digest: &BlobDigest) -> Option<Vec<BlobDigest>> {
        let m = self.manifests.get(digest)?;
        let links: Links = serde_json::from_slice(&m.bytes).ok()?;
        Some(
            links
                .manifests
                .iter()
                .filter_map(|d| BlobDigest::parse(&d.digest))
                .collect(),
        )
    }

    fn add_manifest(
        &mut self,
        root: &Path,
        digest: &BlobDigest,
        descriptor: &Descriptor,
        depth: usize,
    ) -> Result<(), LayoutError> {
        if self.manifests.contains_key(digest) {
            return Ok(());
        }
        let path = digest.path(root);
        let bytes = read_bounded(&path, MAX_MANIFEST_LEN)?;
        if bytes.len() as u64 != descriptor.size
            || hex::encode(Sha256::digest(&bytes)) != digest.hex()
        {
            return Err(LayoutError::Corrupt {
                path,
                digest: digest.clone(),
                size: descriptor.size,
            });
        }
        let links: Links = serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
            path: path.clone(),
            what: "manifest",
            source,
        })?;
        let media_type = match (&links.media_type, descriptor.media_type.as_str()) {
            (Some(own), _) if !own.is_empty() => own.clone(),
            (_, "") => "application/vnd.oci.image.manifest.v1+json".to_string(),
            (_, given) => given.to_string(),
        };
        for blob in links.config.iter().chain(&links.layers) {
            self.blobs.insert(parse_digest(&path, &blob.digest)?);
        }
        self.manifests.insert(
            digest.clone(),
            StoredManifest {
                media_type,
                bytes: Bytes::from(bytes),
            },
        );
        if depth < MAX_INDEX_DEPTH {
            for child in &links.manifests {
                let child_digest = parse_digest(&path, &child.digest)?;
                self.add_manifest(root, &child_digest, child, depth + 1)?;
            }
        }
        Ok(())
    }

    /// The repository a request names. With `ns` (containerd as a mirror), only that registry
    /// is searched. Without it, the name is read as a reference (`library/foo` is docker.io's,
    /// `quay.io/x/bar` names its registry); failing that, the one other registry holding the
    /// name serves it. A name two registries hold is not guessed.
    pub fn repository(&self, lookup: &Lookup) -> Option<&Repository> {
        let key = |text: &str| {
            ImageName::parse(text)
                .ok()
                .map(|name| (name.registry, name.repository))
        };
        if let Some(ns) = lookup.ns {
            return self
                .repositories
                .get(&key(&format!("{ns}/{}", lookup.name))?);
        }
        if let Some(found) = key(lookup.name).and_then(|k| self.repositories.get(&k)) {
            return Some(found);
        }
        let mut others = self
            .repositories
            .iter()
            .filter(|((_, repo), _)| repo == lookup.name)
            .map(|(_, found)| found);
        match (others.next(), others.next()) {
            (Some(found), None) => Some(found),
            _ => None,
        }
    }

    pub fn manifest(&self, digest: &BlobDigest) -> Option<&StoredManifest> {
        self.manifests.get(digest)
    }

    /// Whether some manifest references `digest` as a config or layer.
    pub fn references_blob(&self, digest: &BlobDigest) -> bool {
        self.blobs.contains(digest)
    }

    /// `(registry, repository:tag)` of every tag, for logs and tests.
    pub fn names(&self) -> Vec<String> {
        self.repositories
            .iter()
            .flat_map(|((registry, repo), r)| {
                r.tags.keys().map(move |t| format!("{registry}/{repo}:{t}"))
            })
            .collect()
    }
}

/// The repository key and the tag (none for a reference by digest alone) of a `ref.name`.
fn named(name: &str) -> Result<((String, String), Option<String>), String> {
    let name = ImageName::parse(name).map_err(|e| e.reason)?;
    Ok(((name.registry, name.repository), name.tag))
}

fn parse_digest(path: &Path, text: &str) -> Result<BlobDigest, LayoutError> {
    BlobDigest::parse(text).ok_or_else(|| LayoutError::BadDigest {
        path: path.to_path_buf(),
        digest: text.to_string(),
    })
}

/// The whole of a regular file of at most `limit` bytes, symlinks not followed.
pub(super) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, LayoutError> {
    let io_err = |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(LayoutError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_blob(root: &Path, bytes: &[u8]) -> String {
        let hex = hex::encode(Sha256::digest(bytes));
        fs::write(root.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    /// A layout with one image under each of `names`, all sharing one manifest.
    fn layout(names: &[&str]) -> (tempfile::TempDir, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        let layer = write_blob(root, b"layer bytes");
        let config = write_blob(root, b"{}");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":11}}]}}"#
        );
        let digest = write_blob(root, manifest.as_bytes());
        let entries: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{},"annotations":{{"{REF_NAME}":"{n}"}}}}"#,
                    manifest.len()
                )
            })
            .collect();
        fs::write(
            root.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
                entries.join(",")
            ),
        )
        .unwrap();
        (dir, digest, layer)
    }

    fn find<'a>(c: &'a Catalog, name: &str, ns: Option<&str>) -> Option<&'a Repository> {
        c.repository(&Lookup { name, ns })
    }

    #[test]
    fn the_ns_query_tells_registries_apart_and_docker_hub_names_get_library() {
        let (dir, digest, layer) = layout(&[
            "docker.io/library/foo:1",
            "quay.io/x/bar:2",
            "quay.io/library/foo:9",
        ]);
        let c = Catalog::load(dir.path()).unwrap();
        let hub = find(&c, "library/foo", Some("docker.io")).unwrap();
        assert_eq!(
            hub.tags.get("1"),
            Some(&BlobDigest::parse(&digest).unwrap())
        );
        assert!(!hub.tags.contains_key("9"));
        assert!(find(&c, "foo", Some("registry-1.docker.io")).is_some());
        assert!(find(&c, "library/foo", Some("quay.io"))
            .unwrap()
            .tags
            .contains_key("9"));
        assert!(find(&c, "x/bar", Some("docker.io")).is_none());
        assert!(find(&c, "x/bar", Some("quay.io")).is_some());
        assert!(c.references_blob(&BlobDigest::parse(&layer).unwrap()));
        assert!(c.manifest(&BlobDigest::parse(&digest).unwrap()).is_some());
    }

    #[test]
    fn without_ns_docker_hub_comes_first_then_a_unique_name_elsewhere() {
        let (dir, _, _) = layout(&[
            "docker.io/library/foo:1",
            "quay.io/library/foo:9",
            "quay.io/x/bar:2",
            "a.io/y/dup:1",
            "b.io/y/dup:1",
        ]);
        let c = Catalog::load(dir.path()).unwrap();
        assert!(find(&c, "library/foo", None)
            .unwrap()
            .tags
            .contains_key("1"));
        assert!(find(&c, "x/bar", None).unwrap().tags.contains_key("2"));
        assert!(find(&c, "quay.io/library/foo", None)
            .unwrap()
            .tags
            .contains_key("9"));
        assert!(find(&c, "y/dup", None).is_none(), "two registries hold it");
        assert!(find(&c, "a.io/y/dup", None).is_some());
    }

    #[test]
    fn a_reference_by_digest_alone_adds_no_tag() {
        let (dir, digest, _) = layout(&["quay.io/x/bar@SHA"]);
        let index = fs::read_to_string(dir.path().join("index.json")).unwrap();
        fs::write(dir.path().join("index.json"), index.replace("SHA", &digest)).unwrap();
        let c = Catalog::load(dir.path()).unwrap();
        let repo = find(&c, "x/bar", Some("quay.io")).unwrap();
        assert!(repo.tags.is_empty());
        assert!(repo
            .manifests
            .contains(&BlobDigest::parse(&digest).unwrap()));
    }

    #[test]
    fn a_manifest_that_does_not_match_its_digest_refuses_the_layout() {
        let (dir, digest, _) = layout(&["docker.io/library/foo:1"]);
        let path = BlobDigest::parse(&digest).unwrap().path(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] = b' ';
        fs::write(&path, bytes).unwrap();
        let err = Catalog::load(dir.path()).unwrap_err();
        assert!(matches!(err, LayoutError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn only_sha256_and_64_lowercase_hex_digits_make_a_blob_digest() {
        assert!(BlobDigest::parse(&format!("sha256:{}", "a".repeat(64))).is_some());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:../../{}", "a".repeat(58)),
            String::new(),
        ] {
            assert!(BlobDigest::parse(&bad).is_none(), "{bad}");
        }
    }
}
