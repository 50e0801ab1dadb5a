//! The tree under construction: entry names made safe, parents made real directories, whiteouts,
//! symlink and hard-link confinement. Decides what is written where; takes file content from
//! the layer's stream but does no decoding.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::decode::{Content, LayerReader};
use super::pool::{FileJob, WriterPool};
use super::sys::{lchown, mknod, set_times, umask, write_streamed, Meta, Owners, StreamError};
use super::{io_err, EntryProblem, UnpackError, UnpackOptions, UnpackReport};

/// Files up to this size are handed whole to the writer pool; larger ones are streamed.
const POOL_FILE_MAX: u64 = 4 << 20;

pub(super) enum Applied {
    Refused(String, EntryProblem),
    Failed(UnpackError),
    Tar(io::Error),
}

pub(super) struct Tree<'o, 'p> {
    pub(super) root: PathBuf,
    pub(super) options: &'o UnpackOptions<'o>,
    pub(super) pool: &'p WriterPool,
    /// Who owns the files written.
    pub(super) owners: Owners,
    pub(super) layer_label: Arc<str>,
    /// Relative paths known to be real directories (not symlinks) right now.
    pub(super) dirs: PathSet,
    /// Relative paths of everything else present right now. The staging directory starts
    /// empty and only this code writes into it, so a path in neither set does not exist and
    /// needs no `lstat` before it is created.
    pub(super) known: PathSet,
    /// Directory modes and mtimes, applied once everything is written.
    pub(super) dir_meta: HashMap<PathBuf, Meta>,
    /// Paths written by the current layer (opaque whiteouts spare them; rewriting one waits
    /// for the writer pool).
    pub(super) this_layer: PathSet,
    /// Files handed to the writer pool since it was last drained: a hard link to one of them
    /// waits for the pool, a hard link to anything else does not.
    pub(super) queued: PathSet,
    pub(super) symlinks: Vec<PathBuf>,
    pub(super) report: UnpackReport,
}

/// A set of clean relative paths (normal components joined by `/`, as [`entry_path`] and
/// `push` make them), hashed and compared as bytes: two clean paths are one path exactly when
/// their bytes are, and hashing the bytes once is much cheaper than hashing a `Path` component
/// by component (the tree's sets were 3 % of an extraction's samples in `perf`).
#[derive(Default)]
pub(super) struct PathSet(HashSet<Box<[u8]>, foldhash::fast::RandomState>);

impl PathSet {
    pub(super) fn contains(&self, path: &Path) -> bool {
        self.0.contains(path.as_os_str().as_bytes())
    }

    pub(super) fn insert(&mut self, path: &Path) {
        self.0.insert(path.as_os_str().as_bytes().into());
    }

    pub(super) fn remove(&mut self, path: &Path) {
        self.0.remove(path.as_os_str().as_bytes());
    }

    /// Forget `dir` and every path below it.
    pub(super) fn remove_below(&mut self, dir: &Path) {
        self.0
            .retain(|path| !Path::new(OsStr::from_bytes(path)).starts_with(dir));
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

/// An entry name made safe: relative, normal components only.
pub(super) fn entry_path(raw: &Path) -> Result<PathBuf, EntryProblem> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(EntryProblem::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(EntryProblem::AbsolutePath),
        }
    }
    Ok(clean)
}

pub(super) fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

pub(super) fn entry_meta(header: &tar::Header) -> io::Result<Meta> {
    Ok(Meta {
        mode: header.mode()? & 0o7777,
        mtime: header.mtime().unwrap_or(0),
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
    })
}

impl<'o, 'p> Tree<'o, 'p> {
    pub(super) fn new(
        root: &Path,
        options: &'o UnpackOptions<'o>,
        pool: &'p WriterPool,
        owners: Owners,
    ) -> Self {
        let mut dirs = PathSet::default();
        dirs.insert(Path::new(""));
        Tree {
            root: root.to_path_buf(),
            options,
            pool,
            owners,
            layer_label: Arc::from(""),
            dirs,
            known: PathSet::default(),
            dir_meta: HashMap::new(),
            this_layer: PathSet::default(),
            queued: PathSet::default(),
            symlinks: Vec::new(),
            report: UnpackReport::default(),
        }
    }

    pub(super) fn end_layer(&mut self) {
        self.this_layer.clear();
        self.queued.clear();
    }

    pub(super) fn apply<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        stream: &RefCell<LayerReader<'_, '_, '_>>,
    ) -> Result<(), Applied> {
        let (rel, shown) = {
            let raw = entry.path().map_err(Applied::Tar)?;
            (entry_path(&raw), display(&raw))
        };
        let refuse = |problem| Applied::Refused(shown.clone(), problem);
        let rel = rel.map_err(refuse)?;
        let kind = entry.header().entry_type();
        let meta = entry_meta(entry.header()).map_err(Applied::Tar)?;

        if let Some(name) = rel.file_name().map(|n| n.as_bytes()) {
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
                self.report.whiteouts += 1;
                return if hidden == b".wh..opq" {
                    self.opaque(&parent).map_err(refuse)
                } else {
                    // `.wh.`, `.wh..` and `.wh...` would name the directory itself or its parent.
                    if matches!(hidden, b"" | b"." | b"..") {
                        return Err(refuse(EntryProblem::BadWhiteout));
                    }
                    let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
                    self.whiteout(&target).map_err(refuse)
                };
            }
        }
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                self.dir_meta.insert(PathBuf::new(), meta);
            }
            return Ok(());
        }

        if self.this_layer.contains(&rel) {
            self.drain_pool().map_err(Applied::Failed)?;
        }
        self.ensure_parent(&rel).map_err(refuse)?;
        let full = self.root.join(&rel);
        let ownership = self.options.ownership;

        match kind {
            tar::EntryType::Directory => {
                self.make_dir(&rel, &full).map_err(refuse)?;
                if ownership {
                    lchown(&full, meta.uid, meta.gid).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                self.dir_meta.insert(rel.clone(), meta);
                self.report.directories += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&rel, &full).map_err(refuse)?;
                self.known.insert(&rel);
                let size = entry.size();
                self.report.files += 1;
                self.report.file_bytes += size;
                if size <= POOL_FILE_MAX {
                    // A plain entry's content lies in the stream where the reader stands: the
                    // writers share it from there. A sparse one is assembled by the parser.
                    // A large file is streamed through a buffer instead: written straight from
                    // the decoded frame, the kernel's copy of the real corpus's 318 MiB of
                    // large files took 0.8 s instead of 0.1 s (`perf`, ext4).
                    let direct =
                        !kind.is_gnu_sparse() && stream.borrow().at(entry.raw_file_position());
                    let data = if direct {
                        stream
                            .borrow_mut()
                            .take_content(size as usize)
                            .map_err(Applied::Failed)?
                    } else {
                        let mut data = Vec::with_capacity(size as usize);
                        entry.read_to_end(&mut data).map_err(Applied::Tar)?;
                        Content::Owned(data)
                    };
                    self.queued.insert(&rel);
                    self.pool
                        .submit(FileJob {
                            path: full,
                            shown,
                            layer: Arc::clone(&self.layer_label),
                            data,
                            meta,
                        })
                        .map_err(Applied::Failed)?;
                } else {
                    write_streamed(&full, &mut entry, meta, self.owners).map_err(|e| match e {
                        StreamError::Read(e) => Applied::Tar(e),
                        StreamError::Write(e) => refuse(EntryProblem::Io(e)),
                    })?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(Applied::Tar)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.check_symlink_target(&rel, &target).map_err(refuse)?;
                self.clear(&rel, &full).map_err(refuse)?;
                self.known.insert(&rel);
                std::os::unix::fs::symlink(&target, &full)
                    .map_err(|e| refuse(EntryProblem::Io(e)))?;
                if ownership {
                    lchown(&full, meta.uid, meta.gid).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                set_times(&full, meta.mtime, false).map_err(|e| refuse(EntryProblem::Io(e)))?;
                self.symlinks.push(rel.clone());
                self.report.symlinks += 1;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(Applied::Tar)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_shown = display(&raw_target);
                let target = entry_path(&raw_target).map_err(|_| {
                    refuse(EntryProblem::HardLinkOutside {
                        target: target_shown.clone(),
                    })
                })?;
                self.ensure_parent(&target).map_err(|e| match e {
                    EntryProblem::ThroughSymlink { .. }
                    | EntryProblem::ParentNotDirectory { .. } => {
                        refuse(EntryProblem::HardLinkOutside {
                            target: target_shown.clone(),
                        })
                    }
                    other => refuse(other),
                })?;
                // The target may still sit in the writer queue.
                if self.queued.contains(&target) {
                    self.drain_pool().map_err(Applied::Failed)?;
                }
                let source = self.root.join(&target);
                if fs::symlink_metadata(&source).is_err() {
                    return Err(refuse(EntryProblem::HardLinkMissing {
                        target: target_shown,
                    }));
                }
                if target != rel {
                    self.clear(&rel, &full).map_err(refuse)?;
                    self.known.insert(&rel);
                    fs::hard_link(&source, &full).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                self.report.hard_links += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !kind.is_fifo() && !self.options.devices {
                    return Err(refuse(EntryProblem::Device));
                }
                self.clear(&rel, &full).map_err(refuse)?;
                self.known.insert(&rel);
                let file_type = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                mknod(&full, file_type | meta.mode, libc::makedev(major, minor))
                    .map_err(|e| refuse(EntryProblem::Io(e)))?;
                if ownership {
                    lchown(&full, meta.uid, meta.gid).map_err(|e| refuse(EntryProblem::Io(e)))?;
                }
                fs::set_permissions(&full, fs::Permissions::from_mode(meta.mode))
                    .map_err(|e| refuse(EntryProblem::Io(e)))?;
                set_times(&full, meta.mtime, true).map_err(|e| refuse(EntryProblem::Io(e)))?;
                self.report.files += 1;
            }
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => {
                return Err(refuse(EntryProblem::Unsupported {
                    kind: format!("{other:?}"),
                }))
            }
        }
        self.this_layer.insert(&rel);
        Ok(())
    }

    /// Wait until every file handed to the writer pool is written.
    pub(super) fn drain_pool(&mut self) -> Result<(), UnpackError> {
        self.pool.drain()?;
        self.queued.clear();
        Ok(())
    }

    /// Make sure every ancestor of `rel` is a real directory, creating missing ones.
    pub(super) fn ensure_parent(&mut self, rel: &Path) -> Result<(), EntryProblem> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        let mut current = PathBuf::new();
        for component in parent.components() {
            current.push(component);
            if self.dirs.contains(&current) {
                continue;
            }
            let full = self.root.join(&current);
            match fs::symlink_metadata(&full) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(EntryProblem::ThroughSymlink {
                        link: display(&current),
                    })
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(EntryProblem::ParentNotDirectory {
                        parent: display(&current),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(EntryProblem::Io)?;
                    if self.options.ownership {
                        // Implicit directories belong to root, as with GNU tar run as root.
                        lchown(&full, 0, 0).map_err(EntryProblem::Io)?;
                    }
                }
                Err(e) => return Err(EntryProblem::Io(e)),
            }
            self.dirs.insert(&current);
        }
        Ok(())
    }

    pub(super) fn make_dir(&mut self, rel: &Path, full: &Path) -> Result<(), EntryProblem> {
        if self.dirs.contains(rel) {
            return Ok(());
        }
        if self.known.contains(rel) {
            self.remove(rel, full)?;
        }
        create_dir_writable(full)?;
        self.dirs.insert(rel);
        Ok(())
    }

    /// Remove whatever is at `rel` so a new entry can take its place.
    pub(super) fn clear(&mut self, rel: &Path, full: &Path) -> Result<(), EntryProblem> {
        if !self.known.contains(rel) && !self.dirs.contains(rel) {
            return Ok(());
        }
        match fs::symlink_metadata(full) {
            Ok(_) => self.remove(rel, full),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EntryProblem::Io(e)),
        }
    }

    pub(super) fn remove(&mut self, rel: &Path, full: &Path) -> Result<(), EntryProblem> {
        let meta = match fs::symlink_metadata(full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(EntryProblem::Io(e)),
        };
        if meta.is_dir() {
            // Files queued for the writer pool are opened by full path. Removing (and then
            // perhaps replacing with a symlink) a directory while one of them waits below it
            // would let the writer follow the new link out of the tree: finish them first.
            self.pool
                .drain()
                .map_err(|e| EntryProblem::Earlier(Box::new(e)))?;
            fs::remove_dir_all(full).map_err(EntryProblem::Io)?;
            self.dirs.remove_below(rel);
            self.dir_meta.retain(|d, _| !d.starts_with(rel));
            self.known.remove_below(rel);
        } else {
            fs::remove_file(full).map_err(EntryProblem::Io)?;
            self.known.remove(rel);
        }
        Ok(())
    }

    /// `.wh.NAME`: delete NAME as the lower layers left it.
    pub(super) fn whiteout(&mut self, target: &Path) -> Result<(), EntryProblem> {
        if self.this_layer.contains(target) {
            return Ok(());
        }
        if !self.existing_dir(target.parent().unwrap_or(Path::new("")))? {
            return Ok(());
        }
        let full = self.root.join(target);
        self.remove(target, &full)
    }

    /// `.wh..wh..opq`: the directory hides everything the lower layers put in it.
    pub(super) fn opaque(&mut self, dir: &Path) -> Result<(), EntryProblem> {
        self.ensure_parent(&dir.join("x"))?;
        let full = self.root.join(dir);
        let children = fs::read_dir(&full).map_err(EntryProblem::Io)?;
        for child in children {
            let child = child.map_err(EntryProblem::Io)?;
            let rel = dir.join(child.file_name());
            if !self.this_layer.contains(&rel) {
                self.remove(&rel, &child.path())?;
            }
        }
        Ok(())
    }

    /// True if `rel` is a real directory, false if it does not exist; refuses symlinks on the way.
    pub(super) fn existing_dir(&mut self, rel: &Path) -> Result<bool, EntryProblem> {
        if self.dirs.contains(rel) {
            return Ok(true);
        }
        let mut current = PathBuf::new();
        for component in rel.components() {
            current.push(component);
            if self.dirs.contains(&current) {
                continue;
            }
            match fs::symlink_metadata(self.root.join(&current)) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(EntryProblem::ThroughSymlink {
                        link: display(&current),
                    })
                }
                Ok(meta) if meta.is_dir() => {
                    self.dirs.insert(&current);
                }
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(EntryProblem::Io(e)),
            }
        }
        Ok(true)
    }

    /// A symlink target must stay inside the destination when read from the link's directory.
    pub(super) fn check_symlink_target(
        &self,
        rel: &Path,
        target: &Path,
    ) -> Result<(), EntryProblem> {
        let escapes = || EntryProblem::SymlinkEscapes {
            target: display(target),
        };
        if target.has_root() && !self.options.absolute_symlinks {
            return Err(escapes());
        }
        let mut depth: usize = if target.has_root() {
            0
        } else {
            rel.parent().map(|p| p.components().count()).unwrap_or(0)
        };
        for component in target.components() {
            match component {
                Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// Resolve a symlink physically, following the links it meets, confined to the tree.
    pub(super) fn resolves_inside(&self, link: &Path) -> bool {
        let mut stack: Vec<OsString> = link
            .parent()
            .map(|p| p.iter().map(|c| c.to_os_string()).collect())
            .unwrap_or_default();
        let Ok(target) = fs::read_link(self.root.join(link)) else {
            return true;
        };
        let mut pending: VecDeque<OsString> = VecDeque::new();
        if target.has_root() {
            stack.clear();
        }
        pending.extend(target.iter().map(|c| c.to_os_string()));
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_bytes() {
                b"/" | b"." | b"" => {}
                b".." => {
                    if stack.pop().is_none() {
                        return false;
                    }
                }
                _ => {
                    stack.push(part);
                    let here: PathBuf = stack.iter().collect();
                    let full = self.root.join(&here);
                    if fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
                        hops += 1;
                        if hops > 40 {
                            return true; // a loop: the kernel answers ELOOP, nothing escapes
                        }
                        let Ok(next) = fs::read_link(&full) else {
                            return true;
                        };
                        stack.pop();
                        if next.has_root() {
                            if !self.options.absolute_symlinks {
                                return false;
                            }
                            stack.clear();
                        }
                        for c in next.iter().rev() {
                            pending.push_front(c.to_os_string());
                        }
                    }
                }
            }
        }
        true
    }

    /// Check every symlink once all layers are in place: after the last layer is read, only
    /// the writers' files still change the tree, and they are never symlinks.
    pub(super) fn check_symlinks(&mut self) -> Result<(), UnpackError> {
        for link in std::mem::take(&mut self.symlinks) {
            if !self.resolves_inside(&link) {
                let target = fs::read_link(self.root.join(&link)).unwrap_or_default();
                return Err(UnpackError::Entry {
                    layer: "the merged layers".to_string(),
                    path: display(&link),
                    problem: EntryProblem::SymlinkEscapes {
                        target: display(&target),
                    },
                });
            }
        }
        Ok(())
    }

    /// Give directories the modes and times of their headers, deepest first.
    ///
    /// With `busy` (the directories, full paths, the writers still create files in, once the
    /// last layer is read), only the directories already complete: not busy (a new name would
    /// change its time), not above a busy one (its mode could shut the writers out), not the
    /// root. The others wait for the call without `busy`, after the writers are done. The
    /// parsing thread does the first part while the writers finish a large directory.
    pub(super) fn finish_dirs(
        &mut self,
        busy: Option<&HashSet<PathBuf>>,
    ) -> Result<(), UnpackError> {
        let root_mode = fs::metadata(&self.root)
            .map_err(io_err("reading", &self.root))?
            .permissions()
            .mode();
        // Directories made here have the mode they were made with, unless they inherited the
        // set-group-ID bit of the root's parent: a header asking for exactly that mode needs
        // no chmod.
        let inherits_setgid = root_mode & libc::S_ISGID != 0;
        let root_meta = self.dir_meta.contains_key(Path::new(""));
        let mut dirs: Vec<(PathBuf, Meta)> = Vec::new();
        match busy {
            None => dirs.extend(self.dir_meta.drain()),
            Some(busy) => {
                let mut waiting: HashSet<&Path> = HashSet::new();
                for full in busy {
                    let Ok(rel) = full.strip_prefix(&self.root) else {
                        return Ok(()); // not ours to judge: everything waits
                    };
                    waiting.extend(rel.ancestors());
                }
                waiting.insert(Path::new(""));
                self.dir_meta.retain(|rel, meta| {
                    let wait = waiting.contains(rel.as_path());
                    if !wait {
                        dirs.push((rel.clone(), *meta));
                    }
                    wait
                });
            }
        }
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (rel, meta) in dirs {
            // `dirs` follows every directory this extraction made or removed.
            if !self.dirs.contains(&rel) {
                continue;
            }
            let full = self.root.join(&rel);
            if inherits_setgid || created_dir_mode(&rel) != Some(meta.mode) {
                fs::set_permissions(&full, fs::Permissions::from_mode(meta.mode))
                    .map_err(io_err("setting the mode of", &full))?;
            }
            set_times(&full, meta.mtime, true).map_err(io_err("setting the mtime of", &full))?;
        }
        if busy.is_none() && root_mode & 0o7777 == 0o700 && !root_meta {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of", &self.root))?;
        }
        Ok(())
    }
}

/// The mode of a directory this extraction made, as the kernel gave it: the staging root is
/// made 0700 ([`super::unpack`]), every other directory 0755 ([`create_dir_writable`]), both
/// less the umask. `None` when the umask is unknown.
fn created_dir_mode(rel: &Path) -> Option<u32> {
    let asked = if rel.as_os_str().is_empty() {
        0o700
    } else {
        0o755
    };
    umask().map(|mask| asked & !mask)
}

pub(super) fn create_dir_writable(full: &Path) -> Result<(), EntryProblem> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(full)
        .map_err(EntryProblem::Io)
}
