//! The bill of materials of a CloudImage: a CycloneDX 1.5 JSON document listing the Debian
//! packages of the image's dpkg status, every file of its merged root filesystem with sha256 and
//! size, each container image it carries with reference and digest, and the base image it was
//! built from.
//!
//! It owns the document model (serde structs for the part of CycloneDX 1.5 sealer writes; the
//! output is checked against the official JSON schema by `tests/sbom.rs`) and reading an image's
//! layers into it: each layer's files are read once and remembered by diff_id under
//! `$SEALER_ROOT/cache/sbom`, so layers of a base image or of cached steps cost nothing on later
//! builds, then whiteouts and hard links are applied layer over layer. It never changes an image:
//! the builder stores the document in the image config (`io.sealer.sbom`), which the manifest,
//! push, pull, save, load, the `.run` package and its signature all carry as they are.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::container_images::ContainerImage;
use crate::store::{layer_reader, Descriptor, LayerError, Store, StoreError};

/// The key of the image config that holds the document.
pub const CONFIG_KEY: &str = "io.sealer.sbom";

/// Property naming a file's size in bytes (CycloneDX has no size field for a component).
pub const PROPERTY_SIZE: &str = "sealer:file:size";
/// Property naming a container image's manifest digest.
pub const PROPERTY_DIGEST: &str = "sealer:image:digest";

/// A CycloneDX 1.5 bill of materials (the fields sealer writes; others are kept when read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bom {
    #[serde(rename = "bomFormat")]
    pub bom_format: String,
    #[serde(rename = "specVersion")]
    pub spec_version: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Tools>,
    /// The image itself; its base image is its pedigree's ancestor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<Component>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    #[serde(default)]
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// `file`, `library` (a Debian package), `container` or `application`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "bom-ref", default, skip_serializing_if = "Option::is_none")]
    pub bom_ref: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purl: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashes: Vec<Hash>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Property>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pedigree: Option<Pedigree>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hash {
    pub alg: String,
    pub content: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pedigree {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Component>,
}

impl Bom {
    /// The components of one type (`file`, `library`, `container`).
    pub fn components_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Component> {
        self.components.iter().filter(move |c| c.kind == kind)
    }
}

/// The bill of materials as an image config carries it (`io.sealer.sbom`): the JSON text as
/// written, so an image's config reads in a few milliseconds however many files the document
/// lists. What prints it whole reads it into a [`Bom`] ([`EmbeddedBom::read`]); what only counts
/// reads the kinds and names of its components ([`EmbeddedBom::counts`], read once).
#[derive(Debug, Clone)]
pub struct EmbeddedBom {
    json: Box<serde_json::value::RawValue>,
    counts: std::sync::OnceLock<Result<Counts, String>>,
}

/// How many components of each kind a bill of materials lists, and the directories above its
/// files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Debian packages (`library`).
    pub packages: u64,
    pub files: u64,
    /// Distinct directories above the files (the root not counted).
    pub dirs: u64,
    pub container_images: u64,
    /// Files named `*.tmpl` (the templates an install renders), wherever they are.
    pub templates: u64,
}

impl EmbeddedBom {
    pub fn new(bom: &Bom) -> Result<Self, serde_json::Error> {
        Ok(EmbeddedBom {
            json: serde_json::value::to_raw_value(bom)?,
            counts: std::sync::OnceLock::new(),
        })
    }

    /// The whole document.
    pub fn read(&self) -> Result<Bom, serde_json::Error> {
        serde_json::from_str(self.json.get())
    }

    /// What the document lists, read once for every caller; `Err` says why it cannot be read.
    pub fn counts(&self) -> Result<Counts, String> {
        self.counts
            .get_or_init(|| count_components(self.json.get()).map_err(|e| e.to_string()))
            .clone()
    }
}

impl PartialEq for EmbeddedBom {
    fn eq(&self, other: &Self) -> bool {
        self.json.get() == other.json.get()
    }
}

impl Eq for EmbeddedBom {}

impl Serialize for EmbeddedBom {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EmbeddedBom {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(EmbeddedBom {
            json: Box::<serde_json::value::RawValue>::deserialize(deserializer)?,
            counts: std::sync::OnceLock::new(),
        })
    }
}

/// [`Counts`] of a document, reading only each component's `type` and `name` (borrowed from the
/// text where they need no unescaping).
fn count_components(json: &str) -> Result<Counts, serde_json::Error> {
    use std::borrow::Cow;
    #[derive(Deserialize)]
    struct Listing<'a> {
        #[serde(default, borrow)]
        components: Vec<Listed<'a>>,
    }
    #[derive(Deserialize)]
    struct Listed<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default, borrow)]
        name: Cow<'a, str>,
    }
    let listing: Listing = serde_json::from_str(json)?;
    let mut counts = Counts::default();
    let mut dirs = std::collections::HashSet::new();
    for c in &listing.components {
        match c.kind.as_ref() {
            "library" => counts.packages += 1,
            "container" => counts.container_images += 1,
            "file" => {
                counts.files += 1;
                if c.name.ends_with(".tmpl") {
                    counts.templates += 1;
                }
                let mut path = c.name.trim_start_matches("./").trim_start_matches('/');
                while let Some((parent, _)) = path.rsplit_once('/') {
                    if !dirs.insert(parent) {
                        break;
                    }
                    path = parent;
                }
            }
            _ => {}
        }
    }
    counts.dirs = dirs.len() as u64;
    Ok(counts)
}

impl Component {
    /// The SHA-256 hash, hex.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes
            .iter()
            .find(|h| h.alg == "SHA-256")
            .map(|h| h.content.as_str())
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }
}

/// Why a bill of materials could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("reading layer {digest} for the bill of materials: {source}")]
    Layer {
        digest: String,
        #[source]
        source: LayerError,
    },
    #[error("reading layer {digest} for the bill of materials: {source}; the layer blob is damaged, build the image again")]
    Tar {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{image} carries no bill of materials (built with --no-sbom or SEALER_BUILD_SBOM=0, or by another tool); build it again with sealer to get one")]
    Missing { image: String },
    #[error("the bill of materials of {image} cannot be read: {reason}")]
    Unreadable { image: String, reason: String },
}

/// The bill of materials an image config's JSON carries (`io.sealer.sbom`), for readers that
/// hold the config as text (a `.run` manifest). `image` names it in errors.
pub fn from_config_json(config_json: &str, image: &str) -> Result<Bom, SbomError> {
    #[derive(Deserialize)]
    struct Carrier {
        #[serde(rename = "io.sealer.sbom", default)]
        sbom: Option<Bom>,
    }
    let carrier: Carrier =
        serde_json::from_str(config_json).map_err(|e| SbomError::Unreadable {
            image: image.to_string(),
            reason: e.to_string(),
        })?;
    carrier.sbom.ok_or_else(|| SbomError::Missing {
        image: image.to_string(),
    })
}

/// What a bill of materials describes.
pub struct SbomInput<'a> {
    /// `NAME:TAG` of the image.
    pub image: &'a str,
    /// The layers, lowest first, with their diff_ids (the cache key of their file lists).
    pub layers: &'a [(Descriptor, String)],
    pub container_images: &'a [ContainerImage],
    /// The `FROM` image: its reference and manifest digest.
    pub base: Option<(&'a str, &'a str)>,
    /// The image's `created` time (RFC 3339), so the document is reproducible.
    pub created: Option<&'a str>,
}

/// One regular file of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LayerFile {
    path: String,
    size: u64,
    sha256: String,
}

/// What a layer does to the file set, as remembered in the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LayerFiles {
    files: Vec<LayerFile>,
    /// Hard links: (path, the path it names).
    links: Vec<(String, String)>,
    /// Paths a whiteout removes from lower layers.
    removed: Vec<String>,
    /// Directories an opaque whiteout empties of lower layers' entries.
    opaque: Vec<String>,
    /// Content of `var/lib/dpkg/status`, when this layer writes it.
    dpkg_status: Option<String>,
}

const DPKG_STATUS: &str = "var/lib/dpkg/status";
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A tar entry's path as the file set keys it: no leading `./` or `/`, no trailing `/`.
fn normal_path(path: &str) -> String {
    let path = path.trim_start_matches("./").trim_start_matches('/');
    path.trim_end_matches('/').to_string()
}

/// Read one layer blob's files (sha256 and size of each regular file).
fn read_layer(store: &Store, layer: &Descriptor) -> Result<LayerFiles, SbomError> {
    let path = store.blob_path(&layer.digest)?;
    let reader = layer_reader(&path, &layer.media_type).map_err(|source| SbomError::Layer {
        digest: layer.digest.clone(),
        source,
    })?;
    let tar_err = |source: io::Error| SbomError::Tar {
        digest: layer.digest.clone(),
        source,
    };
    // The images layer's blobs are named by the sha256 of their content, checked when the build
    // collected them and covered by the layer's diff_id: their names are their hashes.
    let named_blobs = crate::container_images::is_images_layer(layer)
        .then(|| format!("{}/blobs/sha256/", crate::container_images::IMAGES_DIR));
    let mut out = LayerFiles::default();
    let mut archive = tar::Archive::new(reader);
    let mut buf = vec![0u8; 1 << 16];
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let name = normal_path(&entry.path().map_err(tar_err)?.to_string_lossy());
        let (dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (d.to_string(), b),
            None => (String::new(), name.as_str()),
        };
        if base == OPAQUE {
            out.opaque.push(dir);
            continue;
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT) {
            out.removed.push(if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            });
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            if let Some(target) = entry.link_name().map_err(tar_err)? {
                out.links
                    .push((name, normal_path(&target.to_string_lossy())));
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        if let Some(hex) = named_blobs
            .as_deref()
            .and_then(|prefix| name.strip_prefix(prefix))
            .filter(|hex| {
                hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
        {
            out.files.push(LayerFile {
                sha256: hex.to_string(),
                size: entry.size(),
                path: name,
            });
            continue;
        }
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let keep = name == DPKG_STATUS;
        let mut kept = Vec::new();
        loop {
            let n = entry.read(&mut buf).map_err(tar_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
            size += n as u64;
        }
        if keep {
            out.dpkg_status = Some(String::from_utf8_lossy(&kept).into_owned());
        }
        out.files.push(LayerFile {
            path: name,
            size,
            sha256: hex::encode(hasher.finalize()),
        });
    }
    Ok(out)
}

/// A layer's files from the cache, else read from its blob (and remembered).
fn layer_files(store: &Store, layer: &Descriptor, diff_id: &str) -> Result<LayerFiles, SbomError> {
    let cache = diff_id
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|hex| store.cache_dir().join("sbom").join(format!("{hex}.json")));
    if let Some(files) = cache
        .as_ref()
        .and_then(|path| fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    {
        return Ok(files);
    }
    let files = read_layer(store, layer)?;
    if let Some(path) = cache {
        remember(&path, &files);
    }
    Ok(files)
}

/// Best effort: a cache entry that cannot be written only costs a read next time.
fn remember(path: &PathBuf, files: &LayerFiles) {
    let (Some(dir), Ok(bytes)) = (path.parent(), serde_json::to_vec(files)) else {
        return;
    };
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        if io::Write::write_all(&mut tmp, &bytes).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}

/// The merged file set: layer over layer, whiteouts and opaque directories applied, hard links
/// resolved to the file they name. Returns the files by path and the dpkg status, if any.
fn merge(layers: Vec<LayerFiles>) -> (BTreeMap<String, (u64, String)>, Option<String>) {
    let mut files: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut dpkg: Option<String> = None;
    let under = |dir: &str, path: &str| {
        dir.is_empty() || path == dir || path.starts_with(&format!("{dir}/"))
    };
    for layer in layers {
        for dir in &layer.opaque {
            files.retain(|p, _| !(under(dir, p) && p != dir));
            if under(dir, DPKG_STATUS) {
                dpkg = None;
            }
        }
        for gone in &layer.removed {
            files.retain(|p, _| !under(gone, p));
            if under(gone, DPKG_STATUS) {
                dpkg = None;
            }
        }
        let mut this: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
        for f in &layer.files {
            this.insert(&f.path, (f.size, &f.sha256));
            files.insert(f.path.clone(), (f.size, f.sha256.clone()));
        }
        for (path, target) in &layer.links {
            let found = this
                .get(target.as_str())
                .map(|(s, h)| (*s, h.to_string()))
                .or_else(|| files.get(target).cloned());
            if let Some(found) = found {
                files.insert(path.clone(), found);
            }
        }
        if layer.dpkg_status.is_some() {
            dpkg = layer.dpkg_status;
        }
    }
    (files, dpkg)
}

/// An installed package of a dpkg status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// The packages a dpkg status file lists as installed (`Status: install ok installed`), sorted.
pub fn installed_packages(status: &str) -> Vec<DebPackage> {
    let mut out = Vec::new();
    for paragraph in status.split("\n\n") {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in paragraph.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim(), v.trim());
            }
        }
        let installed = fields
            .get("Status")
            .is_some_and(|s| s.split_whitespace().last() == Some("installed"));
        if let (true, Some(name), Some(version)) =
            (installed, fields.get("Package"), fields.get("Version"))
        {
            out.push(DebPackage {
                name: name.to_string(),
                version: version.to_string(),
                architecture: fields.get("Architecture").unwrap_or(&"").to_string(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    out.dedup_by(|a, b| a.name == b.name && a.architecture == b.architecture);
    out
}

/// Percent-encode a package URL part (everything but unreserved characters).
fn purl_encode(part: &str) -> String {
    let mut out = String::new();
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn sha256_hash(hex: &str) -> Vec<Hash> {
    vec![Hash {
        alg: "SHA-256".into(),
        content: hex.to_string(),
    }]
}

/// A container image (or the base image) as a component.
fn image_component(reference: &str, digest: &str) -> Component {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    Component {
        kind: "container".into(),
        bom_ref: Some(format!("image:{reference}@{digest}")),
        name: reference.to_string(),
        version: (!digest.is_empty()).then(|| digest.to_string()),
        hashes: if valid { sha256_hash(hex) } else { Vec::new() },
        properties: (!digest.is_empty())
            .then(|| Property {
                name: PROPERTY_DIGEST.into(),
                value: digest.to_string(),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// The bill of materials of an image: reads every layer not yet in the cache.
pub fn generate(store: &Store, input: &SbomInput) -> Result<Bom, SbomError> {
    let mut layers = Vec::with_capacity(input.layers.len());
    for (layer, diff_id) in input.layers {
        layers.push(layer_files(store, layer, diff_id)?);
    }
    let (files, dpkg) = merge(layers);
    let mut components = Vec::new();
    for pkg in dpkg.as_deref().map(installed_packages).unwrap_or_default() {
        let mut purl = format!(
            "pkg:deb/debian/{}@{}",
            purl_encode(&pkg.name),
            purl_encode(&pkg.version)
        );
        if !pkg.architecture.is_empty() {
            purl.push_str(&format!("?arch={}", purl_encode(&pkg.architecture)));
        }
        components.push(Component {
            kind: "library".into(),
            bom_ref: Some(purl.clone()),
            name: pkg.name,
            version: Some(pkg.version),
            purl: Some(purl),
            ..Default::default()
        });
    }
    for image in input.container_images {
        components.push(image_component(&image.image, &image.digest));
    }
    for (path, (size, sha256)) in files {
        components.push(Component {
            kind: "file".into(),
            bom_ref: Some(format!("file:/{path}")),
            name: format!("/{path}"),
            hashes: sha256_hash(&sha256),
            properties: vec![Property {
                name: PROPERTY_SIZE.into(),
                value: size.to_string(),
            }],
            ..Default::default()
        });
    }
    let image = Component {
        kind: "container".into(),
        bom_ref: Some(format!("image:{}", input.image)),
        name: input.image.to_string(),
        pedigree: input.base.map(|(reference, digest)| Pedigree {
            ancestors: vec![image_component(reference, digest)],
        }),
        ..Default::default()
    };
    Ok(Bom {
        bom_format: "CycloneDX".into(),
        spec_version: "1.5".into(),
        version: 1,
        metadata: Some(Metadata {
            timestamp: input.created.map(str::to_string),
            tools: Some(Tools {
                components: vec![Component {
                    kind: "application".into(),
                    name: "sealer".into(),
                    version: Some(env!("CARGO_PKG_VERSION").into()),
                    ..Default::default()
                }],
            }),
            component: Some(image),
        }),
        components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, hash: &str) -> LayerFile {
        LayerFile {
            path: path.into(),
            size: 1,
            sha256: hash.into(),
        }
    }

    #[test]
    fn whiteouts_opaque_directories_and_hard_links_apply_layer_over_layer() {
        let lower = LayerFiles {
            files: vec![file("etc/a", "1"), file("opt/x/y", "2"), file("keep", "3")],
            dpkg_status: Some("old".into()),
            ..Default::default()
        };
        let upper = LayerFiles {
            files: vec![file("opt/x/new", "4")],
            links: vec![("bin/k".into(), "keep".into())],
            removed: vec!["etc/a".into(), "var/lib/dpkg".into()],
            opaque: vec!["opt/x".into()],
            ..Default::default()
        };
        let (files, dpkg) = merge(vec![lower, upper]);
        let paths: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(paths, ["bin/k", "keep", "opt/x/new"]);
        assert_eq!(files["bin/k"].1, "3");
        assert_eq!(dpkg, None);
    }

    #[test]
    fn a_carried_document_is_counted_without_reading_it_whole_and_written_back_as_it_was() {
        let component = |kind: &str, name: &str| Component {
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        };
        let bom = Bom {
            bom_format: "CycloneDX".into(),
            spec_version: "1.5".into(),
            version: 1,
            metadata: None,
            components: vec![
                component("library", "bash"),
                component("file", "./etc/app.conf.tmpl"),
                component("file", "etc/app/a"),
                component("file", "etc/app/b"),
                // A name that must be unescaped is counted like any other.
                component("file", "opt/\"quoted\"/c.tmpl"),
                component("file", "top"),
                component("container", "docker.io/library/redis:7"),
            ],
        };
        let carried = EmbeddedBom::new(&bom).unwrap();
        let counts = carried.counts().unwrap();
        assert_eq!(
            counts,
            Counts {
                packages: 1,
                files: 5,
                // etc, etc/app, opt, opt/"quoted"
                dirs: 4,
                container_images: 1,
                templates: 2,
            }
        );
        assert_eq!(carried.read().unwrap(), bom);
        // In a config it is written as the document itself, and read back the same.
        let text = serde_json::to_string(&carried).unwrap();
        assert_eq!(text, serde_json::to_string(&bom).unwrap());
        let back: EmbeddedBom = serde_json::from_str(&text).unwrap();
        assert_eq!(back, carried);
        assert!(
            EmbeddedBom::deserialize(&mut serde_json::Deserializer::from_str(
                "{\"components\": 3}"
            ))
            .unwrap()
            .counts()
            .is_err()
        );
    }

    #[test]
    fn only_installed_packages_are_listed() {
        let status = "Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nArchitecture: amd64\nDescription: x\n continued\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n";
        let pkgs = installed_packages(status);
        assert_eq!(
            pkgs,
            vec![DebPackage {
                name: "bash".into(),
                version: "5.2.15-2+b2".into(),
                architecture: "amd64".into()
            }]
        );
        assert_eq!(purl_encode("1:2.3+b1"), "1%3A2.3%2Bb1");
    }
}
