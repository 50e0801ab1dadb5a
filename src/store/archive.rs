//! OCI archives (`sealer save` / `sealer load`): a tar of an OCI image layout holding one or more
//! named images, readable by `skopeo inspect oci-archive:FILE`.
//!
//! Saving writes to a temporary file renamed into place. Loading checks every blob against its
//! digest and every image whole (manifest, config, layers present with their sizes, diff_ids
//! matching the unpacked layers) before any of it enters the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use super::signatures;
use super::{
    Descriptor, Image, ImageConfig, Index, Manifest, StagedBlob, Store, StoreError,
    ANNOTATION_REF_NAME, MEDIA_TYPE_MANIFEST,
};
use crate::reference::Reference;

type Result<T> = std::result::Result<T, StoreError>;

fn archive_err(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Archive {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Write `images` into an OCI archive at `out`.
pub fn save(store: &Store, images: &[Image], out: &Path) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".sealer-save-")
        .tempfile_in(dir)
        .map_err(|e| {
            StoreError::io(format!("creating a temporary file in {}", dir.display()), e)
        })?;
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, tmp));
    let mut index = Index::default();
    let mut blobs = std::collections::BTreeSet::new();
    // Signature artifacts of signed images (tag `sha256-<hex>.sig` beside each), held in memory.
    let mut signature_blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for image in images {
        let size = fs::metadata(store.blob_path(&image.digest)?)
            .map_err(|e| StoreError::io("reading a manifest blob", e))?
            .len();
        let mut desc = Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.to_string(),
            digest: image.digest.clone(),
            size,
            annotations: Default::default(),
            platform: None,
        };
        desc.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), image.reference.store_key());
        if let Some(artifact) = store.signature_artifact(&desc)? {
            let name = Reference {
                tag: signatures::signature_tag(&image.digest)?,
                digest: None,
                ..image.reference.clone()
            };
            let mut sig = Descriptor {
                media_type: MEDIA_TYPE_MANIFEST.to_string(),
                digest: artifact.manifest_digest.clone(),
                size: artifact.manifest.len() as u64,
                annotations: Default::default(),
                platform: None,
            };
            sig.annotations
                .insert(ANNOTATION_REF_NAME.to_string(), name.store_key());
            index.manifests.push(sig);
            signature_blobs.insert(artifact.manifest_digest, artifact.manifest);
            signature_blobs.extend(artifact.blobs);
        }
        index.manifests.push(desc);
        blobs.insert(image.digest.clone());
        blobs.insert(image.manifest.config.digest.clone());
        blobs.extend(image.manifest.layers.iter().map(|l| l.digest.clone()));
    }
    let add_bytes = |builder: &mut tar::Builder<_>, name: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar_header(bytes.len() as u64, tar::EntryType::Regular, 0o644);
        builder
            .append_data(&mut header, name, bytes)
            .map_err(|e| StoreError::io(format!("writing {name} into {}", out.display()), e))
    };
    add_bytes(
        &mut builder,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index_bytes = serde_json::to_vec_pretty(&index).map_err(|e| StoreError::Malformed {
        what: "index.json".into(),
        reason: e.to_string(),
    })?;
    add_bytes(&mut builder, "index.json", &index_bytes)?;
    for dir_name in ["blobs/", "blobs/sha256/"] {
        let mut header = tar_header(0, tar::EntryType::Directory, 0o755);
        builder
            .append_data(&mut header, dir_name, io::empty())
            .map_err(|e| StoreError::io(format!("writing {}", out.display()), e))?;
    }
    for (digest, bytes) in &signature_blobs {
        if blobs.contains(digest) {
            continue;
        }
        let name = format!(
            "blobs/sha256/{}",
            super::digest_hex(digest).unwrap_or_default()
        );
        add_bytes(&mut builder, &name, bytes)?;
    }
    for digest in &blobs {
        let path = store.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::BlobMissing {
                digest: digest.clone(),
                path: path.clone(),
            },
            _ => StoreError::io(format!("opening {}", path.display()), e),
        })?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("reading blob metadata", e))?
            .len();
        let mut header = tar_header(len, tar::EntryType::Regular, 0o644);
        let name = format!(
            "blobs/sha256/{}",
            super::digest_hex(digest).unwrap_or_default()
        );
        builder
            .append_data(&mut header, name, file)
            .map_err(|e| StoreError::io(format!("writing {}", out.display()), e))?;
    }
    let writer = builder
        .into_inner()
        .map_err(|e| StoreError::io(format!("finishing {}", out.display()), e))?;
    let tmp = writer
        .into_inner()
        .map_err(|e| StoreError::io(format!("writing {}", out.display()), e.into_error()))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| StoreError::io(format!("syncing {}", out.display()), e))?;
    tmp.persist(out)
        .map_err(|e| StoreError::io(format!("writing {}", out.display()), e.error))?;
    Ok(())
}

fn tar_header(size: u64, kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Import every named image of the OCI archive at `path`. Returns the names imported.
///
/// Blobs are staged (digest checked) while the tar is read; each named image is then checked
/// whole (manifest, config, every layer present with its size, one diff_id per layer matching
/// what the layer unpacks to) and only when every image passes are its blobs stored and named.
pub fn load(store: &Store, path: &Path) -> Result<Vec<Reference>> {
    let _writers = store.writer_guard()?;
    let file =
        File::open(path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    let mut index: Option<Index> = None;
    let mut saw_layout = false;
    let mut staged: BTreeMap<String, StagedBlob> = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_err(path, format!("it is not a readable tar: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| archive_err(path, e.to_string()))?
            .into_owned();
        let parts: Vec<String> = name
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(Ok(s.to_string_lossy().into_owned())),
                Component::CurDir => None,
                _ => Some(Err(())),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                archive_err(
                    path,
                    format!("entry {} leaves the archive root", name.display()),
                )
            })?;
        let kind = entry.header().entry_type();
        match parts
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] | ["blobs"] | ["blobs", "sha256"] if kind.is_dir() => {}
            ["oci-layout"] => saw_layout = true,
            ["index.json"] => {
                let mut bytes = Vec::new();
                io::copy(&mut entry, &mut bytes).map_err(|e| archive_err(path, e.to_string()))?;
                index = Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| archive_err(path, format!("index.json: {e}")))?,
                );
            }
            ["blobs", "sha256", hex] if kind.is_file() => {
                let digest = format!("sha256:{hex}");
                store.blob_path(&digest)?;
                if store.has_blob(&digest) || staged.contains_key(&digest) {
                    continue;
                }
                let mut writer = store.blob_writer()?;
                io::copy(&mut entry, &mut writer)
                    .map_err(|e| archive_err(path, format!("reading {}: {e}", name.display())))?;
                writer
                    .flush()
                    .map_err(|e| StoreError::io("writing a blob", e))?;
                let blob = writer.finish(Some(&digest)).map_err(|e| match e {
                    StoreError::BlobCorrupt { actual, .. } => archive_err(
                        path,
                        format!("blob {digest} does not match its content ({actual})"),
                    ),
                    other => other,
                })?;
                staged.insert(digest, blob);
            }
            _ => {
                return Err(archive_err(
                    path,
                    format!("unexpected entry {}", name.display()),
                ))
            }
        }
    }
    if !saw_layout {
        return Err(archive_err(
            path,
            "it has no oci-layout file, so it is not an OCI archive",
        ));
    }
    let index = index.ok_or_else(|| archive_err(path, "it has no index.json"))?;
    let mut checked = ImageCheck {
        store,
        staged: &staged,
        diff_ids: BTreeMap::new(),
    };
    let mut names = Vec::new();
    let mut used = BTreeSet::new();
    let mut signatures = Vec::new();
    for desc in &index.manifests {
        let name = desc.annotations.get(ANNOTATION_REF_NAME).ok_or_else(|| {
            archive_err(
                path,
                format!(
                    "manifest {} has no {ANNOTATION_REF_NAME} annotation",
                    desc.digest
                ),
            )
        })?;
        let reference = Reference::parse(name).map_err(|e| archive_err(path, e.to_string()))?;
        if let Some(subject) = signatures::signed_digest(&reference.tag) {
            let text = checked
                .signature(desc, &subject, name)
                .map_err(|reason| archive_err(path, reason))?;
            signatures.push((subject, text));
            continue;
        }
        let size = checked
            .check(desc, name)
            .map_err(|reason| archive_err(path, reason))?;
        used.extend(checked.blobs_of(desc));
        names.push((reference, desc.digest.clone(), size));
    }
    for (digest, blob) in staged {
        if used.contains(&digest) {
            blob.commit()?;
        }
    }
    let mut loaded = Vec::new();
    let mut digests = BTreeSet::new();
    for (reference, digest, size) in names {
        store.set_name(&reference, &digest, size)?;
        loaded.push(reference);
        digests.insert(digest);
    }
    for (subject, text) in signatures {
        if digests.contains(&subject) {
            store.put_signature(&subject, &text)?;
        }
    }
    Ok(loaded)
}

/// Checks the images of an archive against its staged blobs and the store's.
struct ImageCheck<'a> {
    store: &'a Store,
    staged: &'a BTreeMap<String, StagedBlob>,
    /// diff_ids already computed, by layer digest.
    diff_ids: BTreeMap<String, String>,
}

impl ImageCheck<'_> {
    /// Where the blob is, staged or stored; `None` when it is in neither.
    fn blob(&self, digest: &str) -> Option<PathBuf> {
        match self.staged.get(digest) {
            Some(blob) => Some(blob.path().to_path_buf()),
            None => self
                .store
                .has_blob(digest)
                .then(|| self.store.blob_path(digest).ok())
                .flatten(),
        }
    }

    /// A blob's path, checked to exist with the size its descriptor gives.
    fn sized_blob(&self, desc: &Descriptor, what: &str) -> std::result::Result<PathBuf, String> {
        let path = self
            .blob(&desc.digest)
            .ok_or_else(|| format!("{what} {} is missing from the archive", desc.digest))?;
        let size = fs::metadata(&path)
            .map_err(|e| format!("{what} {}: {e}", desc.digest))?
            .len();
        if size != desc.size {
            return Err(format!(
                "{what} {} has {size} bytes, but its descriptor says {}",
                desc.digest, desc.size
            ));
        }
        Ok(path)
    }

    fn read(&self, desc: &Descriptor, what: &str) -> std::result::Result<Vec<u8>, String> {
        let path = self.sized_blob(desc, what)?;
        if self.staged.contains_key(&desc.digest) {
            fs::read(&path).map_err(|e| format!("{what} {}: {e}", desc.digest))
        } else {
            self.store
                .read_blob(&desc.digest)
                .map_err(|e| e.to_string())
        }
    }

    /// Check the image whose manifest `desc` names; returns the manifest's size.
    fn check(&mut self, desc: &Descriptor, name: &str) -> std::result::Result<u64, String> {
        let bytes = self.read(desc, &format!("the manifest of {name}"))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("manifest {} of {name}: {e}", desc.digest))?;
        let config_bytes = self.read(&manifest.config, &format!("the config of {name}"))?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("config {} of {name}: {e}", manifest.config.digest))?;
        let mut found = Vec::new();
        for (i, layer) in manifest.layers.iter().enumerate() {
            let what = format!("layer {} of {name}", i + 1);
            let path = self.sized_blob(layer, &what)?;
            let diff_id = match self.diff_ids.get(&layer.digest) {
                Some(d) => d.clone(),
                None => {
                    let d = super::layer_diff_id(&path, &layer.media_type)
                        .map_err(|e| format!("{what} ({}): {e}", layer.digest))?;
                    self.diff_ids.insert(layer.digest.clone(), d.clone());
                    d
                }
            };
            found.push(diff_id);
        }
        super::check_image_layers(&manifest, &config, Some(&found))
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(bytes.len() as u64)
    }

    /// The text of the signature artifact `desc` (named `name`) for the image `subject`.
    fn signature(
        &self,
        desc: &Descriptor,
        subject: &str,
        name: &str,
    ) -> std::result::Result<String, String> {
        let what = format!("the signature {name}");
        let bytes = self.read(desc, &what)?;
        let layer =
            signatures::signature_layer(&bytes, subject).map_err(|e| format!("{what}: {e}"))?;
        let text = self.read(&layer, &what)?;
        signatures::signature_text(&layer, &text).map_err(|e| format!("{what}: {e}"))
    }

    /// The digests of the manifest `desc`, its config and its layers (after a successful check).
    fn blobs_of(&self, desc: &Descriptor) -> Vec<String> {
        let mut out = vec![desc.digest.clone()];
        let manifest = self
            .blob(&desc.digest)
            .and_then(|p| fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        if let Some(m) = manifest {
            out.push(m.config.digest);
            out.extend(m.layers.into_iter().map(|l| l.digest));
        }
        out
    }
}
