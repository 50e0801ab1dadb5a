//! The local CloudImage store: a standard OCI image layout at `$SEALER_ROOT/oci`.
//!
//! It owns the layout on disk (blobs, `index.json`, image names as
//! `org.opencontainers.image.ref.name` annotations), its lock, garbage collection, and OCI archive
//! import/export. It never decides what goes into an image (that is the builder's job) and never
//! talks to a network (that is the registry's). Every write goes to a temporary file in
//! `$SEALER_ROOT/tmp` and is renamed into place; `index.json` changes only under an exclusive lock,
//! so concurrent sealer processes cannot corrupt the store.

pub mod archive;
pub mod oci;
pub mod signatures;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;
use sha2::{Digest, Sha256};

use crate::reference::{Reference, ReferenceError};
pub use oci::*;

/// Errors from the store that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image {0} is not in the local store (see `sealer images`)")]
    ImageNotFound(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("blob {digest} is missing from the store at {path}; the store is damaged, pull or build the image again")]
    BlobMissing { digest: String, path: PathBuf },
    #[error("blob {digest} is corrupt (its content hashes to {actual}); remove the image and pull or build it again")]
    BlobCorrupt { digest: String, actual: String },
    #[error("{what} in the store is not valid: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{path} is not a usable OCI archive: {reason}; nothing was imported")]
    Archive { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// An image as the store holds it, fully parsed.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: Reference,
    /// Digest of the manifest, `sha256:<hex>`.
    pub digest: String,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

impl Image {
    /// Total compressed size of the layers.
    pub fn layers_size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum()
    }
}

/// One row of `sealer images`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub digest: String,
    pub layers: usize,
    pub size: u64,
    pub created: Option<String>,
}

/// The store at one root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Held while the index may change; dropping it releases the lock.
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// `$SEALER_ROOT`, else `/var/lib/sealer` as root, else `$XDG_DATA_HOME/sealer`
    /// (`~/.local/share/sealer`).
    pub fn default_root() -> PathBuf {
        if let Some(root) = std::env::var_os("SEALER_ROOT").filter(|v| !v.is_empty()) {
            return PathBuf::from(root);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/sealer");
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("sealer");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/share/sealer")
    }

    /// Open (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        for dir in [store.blobs_dir(), store.tmp_dir(), store.cache_dir()] {
            fs::create_dir_all(&dir)
                .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        }
        store.remove_stale_temporaries();
        let layout = store.oci_dir().join("oci-layout");
        if !layout.exists() {
            store.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = store.oci_dir().join("index.json");
        if !index.exists() {
            let _lock = store.lock()?;
            if !index.exists() {
                store.write_index(&Index::default())?;
            }
        }
        Ok(store)
    }

    pub fn open_default() -> Result<Store> {
        Store::open(Store::default_root())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The OCI image layout directory (`skopeo inspect oci:<this>:NAME:TAG`).
    pub fn oci_dir(&self) -> PathBuf {
        self.root.join("oci")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.oci_dir().join("blobs").join("sha256")
    }

    /// Scratch space on the store's filesystem, for files renamed into the store.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The name prefix of an entry of [`Store::tmp_dir`] made by this process (`KIND-PID-`):
    /// a later process removes it once this one is gone (see [`Store::open`]).
    pub fn tmp_prefix(kind: &str) -> String {
        format!("{kind}-{}-", std::process::id())
    }

    /// Remove what killed builds, pulls and loads left in `tmp/`: entries named by
    /// [`Store::tmp_prefix`] whose process is no longer running. Best effort; a failure to remove
    /// only leaves the space in use.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').nth(1))
                .and_then(|pid| pid.parse::<u32>().ok());
            if pid.is_some_and(|pid| !process_is_running(pid)) {
                remove_tree(&entry.path());
            }
        }
    }

    /// Where the builder keeps its step cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Record where the zstd frames of a layer blob lie (what the writer reported), so packing
    /// can copy the blob without scanning it. Advisory: failing to record it only costs a scan.
    pub fn put_frame_index(&self, digest: &str, frames: &[packer::frames::Frame]) {
        let (Ok(hex), Ok(bytes)) = (digest_hex(digest), serde_json::to_vec(frames)) else {
            return;
        };
        let dir = self.root.join("frames");
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = self.write_atomic(&dir.join(format!("{hex}.json")), &bytes);
        }
    }

    /// The frame index recorded for a blob, when there is one and its lengths add up.
    pub fn frame_index(&self, digest: &str) -> Option<Vec<packer::frames::Frame>> {
        let hex = digest_hex(digest).ok()?;
        let bytes = fs::read(self.root.join("frames").join(format!("{hex}.json"))).ok()?;
        let frames: Vec<packer::frames::Frame> = serde_json::from_slice(&bytes).ok()?;
        let len = fs::metadata(self.blob_path(digest).ok()?).ok()?.len();
        (frames.iter().map(|f| f.compressed_len).sum::<u64>() == len).then_some(frames)
    }

    /// Exclusive lock over changes to `index.json` and garbage collection.
    pub fn lock(&self) -> Result<StoreLock> {
        self.lock_file("store.lock", LockMode::Exclusive)?
            .ok_or_else(|| {
                StoreError::io("locking store.lock", io::Error::other("lock not granted"))
            })
    }

    /// Path of a blob by digest (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest_hex(digest).map_err(|e| StoreError::Malformed {
            what: "a digest".into(),
            reason: e.to_string(),
        })?;
        Ok(self.blobs_dir().join(hex))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Start writing a blob; its digest is computed while writing.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let mut writer = self.unhashed_blob_writer()?;
        writer.hasher = Some(Sha256::new());
        Ok(writer)
    }

    /// Start writing a blob whose writer computes its digest itself (the layer writer hashes the
    /// compressed stream as it goes): the store does not hash it a second time, and
    /// [`BlobWriter::commit`] takes the writer's word for it, so it must be given.
    pub fn unhashed_blob_writer(&self) -> Result<BlobWriter> {
        let file = tempfile::Builder::new()
            .prefix(&Store::tmp_prefix("blob"))
            .tempfile_in(self.tmp_dir())
            .map_err(|e| {
                StoreError::io(
                    format!("creating a temporary file in {}", self.tmp_dir().display()),
                    e,
                )
            })?;
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: None,
            size: 0,
            store: self.clone(),
        })
    }

    /// Store `bytes` as a blob; returns `(digest, size)`.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(|e| StoreError::io("writing a blob", e))?;
        w.commit(None)
    }

    /// Read a (small) blob whole, checking its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobMissing {
                    digest: digest.to_string(),
                    path,
                })
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(StoreError::BlobCorrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Check a (possibly large) blob's content against its digest by streaming it.
    pub fn verify_blob(&self, digest: &str) -> Result<()> {
        let path = self.blob_path(digest)?;
        let mut file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::BlobMissing {
                digest: digest.to_string(),
                path: path.clone(),
            },
            _ => StoreError::io(format!("opening {}", path.display()), e),
        })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(StoreError::BlobCorrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    pub fn read_index(&self) -> Result<Index> {
        let path = self.oci_dir().join("index.json");
        let bytes = fs::read(&path)
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Malformed {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| StoreError::Malformed {
            what: "index.json".into(),
            reason: e.to_string(),
        })?;
        self.write_atomic(&self.oci_dir().join("index.json"), &bytes)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
            StoreError::io(format!("creating a temporary file in {}", dir.display()), e)
        })?;
        tmp.write_all(bytes)
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| StoreError::io(format!("syncing {}", path.display()), e))?;
        tmp.persist(path)
            .map_err(|e| StoreError::io(format!("replacing {}", path.display()), e.error))?;
        Ok(())
    }

    /// Every image in the store, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for desc in &index.manifests {
            let Some(name) = desc.annotations.get(ANNOTATION_REF_NAME) else {
                continue;
            };
            let (manifest, config) = self.read_manifest_and_config(&desc.digest)?;
            out.push(ImageSummary {
                name: name.clone(),
                digest: desc.digest.clone(),
                layers: manifest.layers.len(),
                size: manifest.layers.iter().map(|l| l.size).sum(),
                created: config.created,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_manifest_and_config(&self, digest: &str) -> Result<(Manifest, ImageConfig)> {
        let manifest: Manifest = serde_json::from_slice(&self.read_blob(digest)?).map_err(|e| {
            StoreError::Malformed {
                what: format!("manifest {digest}"),
                reason: e.to_string(),
            }
        })?;
        let config: ImageConfig = serde_json::from_slice(&self.read_blob(&manifest.config.digest)?)
            .map_err(|e| StoreError::Malformed {
                what: format!("config {}", manifest.config.digest),
                reason: e.to_string(),
            })?;
        Ok((manifest, config))
    }

    /// Look an image up by reference (name:tag, or a pinned digest).
    pub fn image(&self, reference: &Reference) -> Result<Image> {
        let index = self.read_index()?;
        let key = reference.store_key();
        let desc = index
            .manifests
            .iter()
            .find(|d| match &reference.digest {
                Some(digest) => &d.digest == digest,
                None => d.annotations.get(ANNOTATION_REF_NAME) == Some(&key),
            })
            .ok_or_else(|| StoreError::ImageNotFound(reference.to_string()))?;
        let (manifest, config) = self.read_manifest_and_config(&desc.digest)?;
        Ok(Image {
            reference: reference.clone(),
            digest: desc.digest.clone(),
            manifest,
            config,
        })
    }

    /// Parse `name` and look the image up.
    pub fn image_by_name(&self, name: &str) -> Result<Image> {
        self.image(&Reference::parse(name)?)
    }

    /// Record `manifest` (whose config and layers must already be blobs) under `reference`,
    /// replacing what the name pointed at before. Returns the manifest digest.
    pub fn commit_image(&self, reference: &Reference, manifest: &Manifest) -> Result<String> {
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let path = self.blob_path(&desc.digest)?;
            if !path.is_file() {
                return Err(StoreError::BlobMissing {
                    digest: desc.digest.clone(),
                    path,
                });
            }
        }
        let bytes = serde_json::to_vec(manifest).map_err(|e| StoreError::Malformed {
            what: "a manifest".into(),
            reason: e.to_string(),
        })?;
        let (digest, size) = self.put_blob(&bytes)?;
        self.set_name(reference, &digest, size)?;
        Ok(digest)
    }

    pub(crate) fn set_name(&self, reference: &Reference, digest: &str, size: u64) -> Result<()> {
        let key = reference.store_key();
        // The index entry carries the manifest's own media type (docker v2s2 images stay readable).
        let media_type = self
            .read_blob(digest)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
            .and_then(|m| m.media_type)
            .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string());
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME) != Some(&key));
        let mut desc = Descriptor {
            media_type,
            digest: digest.to_string(),
            size,
            annotations: Default::default(),
            platform: None,
        };
        desc.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), key);
        index.manifests.push(desc);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(ANNOTATION_REF_NAME)
                .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
        });
        self.write_index(&index)
    }

    /// Give the image `src` a second name `dst`.
    pub fn tag(&self, src: &Reference, dst: &Reference) -> Result<()> {
        let image = self.image(src)?;
        let size = fs::metadata(self.blob_path(&image.digest)?)
            .map_err(|e| StoreError::io("reading the manifest blob", e))?
            .len();
        self.set_name(dst, &image.digest, size)
    }

    /// Remove names; then delete every blob no remaining image references (see [`Store::gc`]).
    pub fn remove(&self, references: &[Reference]) -> Result<Option<u64>> {
        {
            let _lock = self.lock()?;
            let mut index = self.read_index()?;
            for reference in references {
                let key = reference.store_key();
                let before = index.manifests.len();
                index
                    .manifests
                    .retain(|d| d.annotations.get(ANNOTATION_REF_NAME) != Some(&key));
                if index.manifests.len() == before {
                    return Err(StoreError::ImageNotFound(reference.to_string()));
                }
            }
            self.write_index(&index)?;
        }
        self.gc()
    }

    /// Delete blobs that no image references. Returns bytes freed, or `None` when a build, pull
    /// or load is running (its blobs are not referenced yet), in which case nothing is deleted.
    pub fn gc(&self) -> Result<Option<u64>> {
        let Some(_writers) = self.lock_file("writers.lock", LockMode::TryExclusive)? else {
            return Ok(None);
        };
        let _lock = self.lock()?;
        let index = self.read_index()?;
        let mut keep = BTreeSet::new();
        for desc in &index.manifests {
            keep.insert(desc.digest.clone());
            if let Ok((manifest, _)) = self.read_manifest_and_config(&desc.digest) {
                keep.insert(manifest.config.digest.clone());
                keep.extend(manifest.layers.iter().map(|l| l.digest.clone()));
            }
        }
        let mut freed = 0;
        let dir = self.blobs_dir();
        let entries = fs::read_dir(&dir)
            .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if keep.contains(&digest) {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(|e| StoreError::io("reading blob metadata", e))?;
            freed += meta.len();
            fs::remove_file(entry.path())
                .map_err(|e| StoreError::io(format!("removing {}", entry.path().display()), e))?;
            let index = self
                .root
                .join("frames")
                .join(format!("{}.json", entry.file_name().to_string_lossy()));
            let _ = fs::remove_file(index);
        }
        self.prune_signatures(&keep);
        Ok(Some(freed))
    }

    /// Held by anything that writes blobs before an image references them (build, pull, load), so
    /// that garbage collection leaves them alone.
    pub fn writer_guard(&self) -> Result<StoreLock> {
        self.lock_file("writers.lock", LockMode::Shared)?
            .ok_or_else(|| {
                StoreError::io("locking writers.lock", io::Error::other("lock not granted"))
            })
    }

    fn lock_file(&self, name: &str, mode: LockMode) -> Result<Option<StoreLock>> {
        let path = self.root.join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let locked = match mode {
            LockMode::Exclusive => file.lock_exclusive().map(|_| true),
            LockMode::Shared => FileExt::lock_shared(&file).map(|_| true),
            LockMode::TryExclusive => match file.try_lock_exclusive() {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
                    Ok(false)
                }
                Err(e) => Err(e),
            },
        }
        .map_err(|e| StoreError::io(format!("locking {}", path.display()), e))?;
        Ok(locked.then_some(StoreLock { _file: file }))
    }
}

/// True while a process with this id exists (it may belong to another user).
pub fn process_is_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Remove a file or a directory tree, making read-only directories writable when that is what
/// stops the removal (a RUN may leave them). Best effort.
pub fn remove_tree(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        let _ = fs::remove_file(path);
        return;
    }
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    let _ = fs::remove_dir_all(path);
}

#[derive(Clone, Copy)]
enum LockMode {
    Exclusive,
    Shared,
    TryExclusive,
}

/// A blob being written to the store's scratch space; [`BlobWriter::commit`] moves it into place.
pub struct BlobWriter {
    file: io::BufWriter<tempfile::NamedTempFile>,
    /// `None` for [`Store::unhashed_blob_writer`].
    hasher: Option<Sha256>,
    size: u64,
    store: Store,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Move the blob into the store. With `expected`, a content mismatch is an error and nothing is
    /// stored. Returns `(digest, size)`.
    pub fn commit(self, expected: Option<&str>) -> Result<(String, u64)> {
        self.finish(expected)?.commit()
    }

    /// Finish writing and check the content, but keep the blob out of the store until
    /// [`StagedBlob::commit`]: for imports that must check a whole image before storing any of it.
    pub fn finish(self, expected: Option<&str>) -> Result<StagedBlob> {
        let digest = match (self.hasher, expected) {
            (Some(hasher), expected) => {
                let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
                if let Some(expected) = expected {
                    if expected != digest {
                        return Err(StoreError::BlobCorrupt {
                            digest: expected.to_string(),
                            actual: digest,
                        });
                    }
                }
                digest
            }
            (None, Some(expected)) => {
                digest_hex(expected).map_err(|e| StoreError::Malformed {
                    what: "a digest".into(),
                    reason: e.to_string(),
                })?;
                expected.to_string()
            }
            (None, None) => {
                return Err(StoreError::io(
                    "storing a blob",
                    io::Error::other("a blob written unhashed was committed without its digest"),
                ))
            }
        };
        let file = self
            .file
            .into_inner()
            .map_err(|e| StoreError::io("writing a blob", e.into_error()))?;
        Ok(StagedBlob {
            file,
            digest,
            size: self.size,
            store: self.store,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A complete blob in the store's scratch space, checked but not yet stored; dropping it removes it.
pub struct StagedBlob {
    file: tempfile::NamedTempFile,
    digest: String,
    size: u64,
    store: Store,
}

impl StagedBlob {
    /// `sha256:<hex>` of the content.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the content is while staged (to read it back for checks).
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Move the blob into the store. Returns `(digest, size)`.
    pub fn commit(self) -> Result<(String, u64)> {
        let target = self.store.blob_path(&self.digest)?;
        if !target.is_file() {
            self.file.persist(&target).map_err(|e| {
                StoreError::io(format!("moving a blob to {}", target.display()), e.error)
            })?;
        }
        Ok((self.digest, self.size))
    }
}

/// A layer blob's uncompressed tar stream, reading the blob at `path` as its media type says
/// (zstd, gzip or plain tar).
pub fn layer_reader(
    path: &Path,
    media_type: &str,
) -> std::result::Result<Box<dyn Read>, LayerError> {
    let file = File::open(path).map_err(|source| LayerError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let file = io::BufReader::with_capacity(1 << 20, file);
    Ok(
        if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(LayerError::Decoder)?)
        } else if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else if media_type.ends_with(".tar") {
            Box::new(file)
        } else {
            return Err(LayerError::MediaType(media_type.to_string()));
        },
    )
}

/// The sha256 of a layer's uncompressed tar (its diff_id, `sha256:<hex>`), reading the blob at
/// `path` as its media type says (zstd, gzip or plain tar).
pub fn layer_diff_id(path: &Path, media_type: &str) -> std::result::Result<String, LayerError> {
    let mut reader = layer_reader(path, media_type)?;
    let mut hasher = Sha256::new();
    io::copy(&mut reader, &mut hasher).map_err(|source| LayerError::Decompress {
        media_type: media_type.to_string(),
        source,
    })?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Why a layer's diff_id could not be worked out, or does not match its image.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("opening {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Decoder(io::Error),
    #[error("its media type {0} is not a layer type sealer reads (tar, tar+gzip, tar+zstd)")]
    MediaType(String),
    #[error("it does not decompress as {media_type}: {source}")]
    Decompress {
        media_type: String,
        source: io::Error,
    },
    #[error("the image config lists {listed} diff_ids for the {layers} layers of the manifest")]
    DiffIdCount { listed: usize, layers: usize },
    #[error("layer {layer} ({digest}) unpacks to {found}, but the image config says {listed}")]
    DiffIdMismatch {
        layer: usize,
        digest: String,
        found: String,
        listed: String,
    },
}

/// Check that a manifest and its config describe the same layers before an image is named:
/// the config parses, lists one diff_id per layer, and (with `diff_ids`, the diff_ids the layers
/// were found to have, in order) each one matches. Errors name the layer.
pub fn check_image_layers(
    manifest: &Manifest,
    config: &ImageConfig,
    diff_ids: Option<&[String]>,
) -> std::result::Result<(), LayerError> {
    let listed = &config.rootfs.diff_ids;
    if listed.len() != manifest.layers.len() {
        return Err(LayerError::DiffIdCount {
            listed: listed.len(),
            layers: manifest.layers.len(),
        });
    }
    if let Some(found) = diff_ids {
        for (i, ((layer, listed), found)) in
            manifest.layers.iter().zip(listed).zip(found).enumerate()
        {
            if listed != found {
                return Err(LayerError::DiffIdMismatch {
                    layer: i + 1,
                    digest: layer.digest.clone(),
                    found: found.clone(),
                    listed: listed.clone(),
                });
            }
        }
    }
    Ok(())
}

/// What `sealer inspect` prints.
#[derive(Debug, serde::Serialize)]
pub struct InspectView<'a> {
    pub name: String,
    pub digest: &'a str,
    pub size: u64,
    pub layers: Vec<InspectLayer<'a>>,
    /// The container images the image carries (its config's `sealer.image.container.images`).
    pub container_images: Vec<crate::container_images::ContainerImage>,
    pub config: &'a ImageConfig,
    pub annotations: &'a std::collections::BTreeMap<String, String>,
}

#[derive(Debug, serde::Serialize)]
pub struct InspectLayer<'a> {
    pub digest: &'a str,
    pub diff_id: Option<&'a str>,
    pub media_type: &'a str,
    pub size: u64,
    pub created_by: Option<&'a str>,
}

/// The inspect view of an image: digest, layers with sizes and the commands that made them, config.
pub fn inspect(image: &Image) -> InspectView<'_> {
    let mut history = image.config.history.iter().filter(|h| !h.empty_layer);
    let layers = image
        .manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| InspectLayer {
            digest: &l.digest,
            diff_id: image.config.rootfs.diff_ids.get(i).map(String::as_str),
            media_type: &l.media_type,
            size: l.size,
            created_by: history.next().and_then(|h| h.created_by.as_deref()),
        })
        .collect();
    InspectView {
        name: image.reference.store_key(),
        digest: &image.digest,
        size: image.layers_size(),
        layers,
        container_images: crate::container_images::listed_images(&image.config),
        config: &image.config,
        annotations: &image.manifest.annotations,
    }
}
