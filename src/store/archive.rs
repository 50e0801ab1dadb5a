//! OCI archives (`sealer save` / `sealer load`): a tar of an OCI image layout holding one or more
//! named images, readable by `skopeo inspect oci-archive:FILE`.
//!
//! Saving writes to a temporary file renamed into place; loading verifies every blob against its
//! digest before it enters the store and names images only once all their blobs are in.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path};

use super::{
    Descriptor, Image, Index, Manifest, Store, StoreError, ANNOTATION_REF_NAME, MEDIA_TYPE_MANIFEST,
};
use crate::reference::Reference;

type Result<T> = std::result::Result<T, StoreError>;

fn archive_err(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Malformed {
        what: format!("archive {}", path.display()),
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
pub fn load(store: &Store, path: &Path) -> Result<Vec<Reference>> {
    let _writers = store.writer_guard()?;
    let file =
        File::open(path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    let mut index: Option<Index> = None;
    let mut saw_layout = false;
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
                if store.has_blob(&digest) {
                    continue;
                }
                let mut writer = store.blob_writer()?;
                io::copy(&mut entry, &mut writer)
                    .map_err(|e| archive_err(path, format!("reading {}: {e}", name.display())))?;
                writer
                    .flush()
                    .map_err(|e| StoreError::io("writing a blob", e))?;
                writer.commit(Some(&digest)).map_err(|e| match e {
                    StoreError::BlobCorrupt { actual, .. } => archive_err(
                        path,
                        format!("blob {digest} does not match its content ({actual})"),
                    ),
                    other => other,
                })?;
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
    let mut loaded = Vec::new();
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
        // Archives written by other tools may name images by tag only.
        let reference = Reference::parse(name)?;
        let bytes = store.read_blob(&desc.digest)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| archive_err(path, format!("manifest {}: {e}", desc.digest)))?;
        store.read_blob(&manifest.config.digest)?;
        for layer in &manifest.layers {
            if !store.has_blob(&layer.digest) {
                return Err(archive_err(
                    path,
                    format!("layer {} of {name} is missing", layer.digest),
                ));
            }
        }
        store.set_name(&reference, &desc.digest, bytes.len() as u64)?;
        loaded.push(reference);
    }
    Ok(loaded)
}
