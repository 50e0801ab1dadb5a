//! The build context: resolving COPY/ADD sources inside it and turning them into layer entries.
//!
//! Sources are globbed relative to the context and must stay inside it (after following
//! symlinks); directories are walked in sorted order; symlinks below a source are kept as symlinks.
//! Hard links are kept: a file whose inode was already planned under another name in the same
//! COPY/ADD becomes a hard-link entry to that first name (first in the sorted walk, so the layer
//! stays reproducible); a name whose other names are not copied is an ordinary file.
//! Destination rules are Docker's: a destination ending in `/`, several sources, or a directory
//! source means "into this directory"; otherwise the destination is the file's new path.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layer::LayerWriter;
use crate::hashing::HashingReader;

/// One entry of a COPY/ADD plan, with its path relative to the image root.
#[derive(Debug, Clone)]
pub enum PlanEntry {
    Dir {
        dest: String,
        mode: u32,
    },
    File {
        dest: String,
        mode: u32,
        source: PathBuf,
    },
    Symlink {
        dest: String,
        target: PathBuf,
    },
    /// Another name of a file planned earlier in the same plan (`target`, relative to the image
    /// root).
    HardLink {
        dest: String,
        target: String,
    },
    /// A tar archive unpacked below `dest` (ADD).
    Archive {
        dest: String,
        source: PathBuf,
    },
}

/// What one COPY or ADD will put into its layer, in order.
#[derive(Debug, Default)]
pub struct Plan {
    pub entries: Vec<PlanEntry>,
    /// First planned name of each multiply-linked file, by (device, inode).
    linked: HashMap<(u64, u64), String>,
}

/// Normalise a destination to a path relative to the image root (no leading `/`, no `..`).
pub fn normalize_dest(dest: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = Vec::new();
    for comp in Path::new(dest).components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_str().ok_or("the destination is not UTF-8")?),
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!("destination {dest:?} leaves the image root"));
                }
            }
            Component::Prefix(_) => return Err(format!("destination {dest:?} is not a Unix path")),
        }
    }
    Ok(parts.join("/"))
}

/// True when the symlink at `link` (relative to the image root) points above the image root when
/// read from its own directory. Absolute targets count from the image root, as install reads
/// them; only `..` past the root escapes. Install refuses such links, so the build does too.
pub fn symlink_leaves_root(link: &str, target: &Path) -> bool {
    let mut depth = if target.has_root() {
        0
    } else {
        Path::new(link)
            .parent()
            .map_or(0, |p| p.components().count())
    };
    for component in target.components() {
        match component {
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

fn join(dest: &str, name: &str) -> String {
    if dest.is_empty() {
        name.to_string()
    } else {
        format!("{dest}/{name}")
    }
}

/// Resolve `sources` (already expanded) against `context` into a plan for `dest`.
/// `unpack_archives` is ADD's behaviour for local tar archives.
pub fn plan(
    context: &Path,
    sources: &[String],
    dest: &str,
    unpack_archives: bool,
) -> Result<Plan, String> {
    let context = context
        .canonicalize()
        .map_err(|e| format!("build context {}: {e}", context.display()))?;
    let into_dir = dest.ends_with('/') || sources.len() > 1;
    let dest_rel = normalize_dest(dest)?;
    let mut matched: Vec<PathBuf> = Vec::new();
    for source in sources {
        if source.contains("://") {
            return Err(format!(
                "source {source:?} is a URL; builds run offline, so download it into the build context and name the file"
            ));
        }
        let rel = source.trim_start_matches('/');
        let mut depth: i32 = 0;
        for comp in Path::new(rel).components() {
            match comp {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(format!(
                    "source {source:?} is outside the build context {}",
                    context.display()
                ));
            }
        }
        let pattern = context.join(if rel.is_empty() { "." } else { rel });
        let pattern_text = pattern
            .to_str()
            .ok_or_else(|| format!("source {source:?} is not UTF-8"))?;
        let has_glob = rel.contains(['*', '?', '[']);
        let mut found: Vec<PathBuf> = if has_glob {
            glob::glob(pattern_text)
                .map_err(|e| format!("source pattern {source:?}: {e}"))?
                .filter_map(Result::ok)
                .collect()
        } else if fs::symlink_metadata(&pattern).is_ok() {
            vec![pattern.clone()]
        } else {
            Vec::new()
        };
        if found.is_empty() {
            return Err(format!(
                "source {source:?} matches nothing in the build context {}",
                context.display()
            ));
        }
        found.sort();
        for path in found {
            let real = path
                .canonicalize()
                .map_err(|e| format!("source {}: {e}", path.display()))?;
            if !real.starts_with(&context) {
                return Err(format!(
                    "source {source:?} resolves to {}, which is outside the build context {}",
                    real.display(),
                    context.display()
                ));
            }
            matched.push(real);
        }
    }
    let into_dir = into_dir || matched.len() > 1;
    let mut plan = Plan::default();
    for source in matched {
        let meta = fs::metadata(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if meta.is_dir() {
            plan.entries.push(PlanEntry::Dir {
                dest: dest_rel.clone(),
                mode: 0o755,
            });
            walk(&source, &dest_rel, &mut plan)?;
        } else if meta.is_file() {
            if unpack_archives
                && is_archive(&source).map_err(|e| format!("{}: {e}", source.display()))?
            {
                plan.entries.push(PlanEntry::Archive {
                    dest: dest_rel.clone(),
                    source,
                });
                continue;
            }
            let target = if into_dir || dest_rel.is_empty() {
                join(&dest_rel, &name)
            } else {
                dest_rel.clone()
            };
            plan.push_file(target, meta.permissions().mode() & 0o7777, source, &meta);
        } else {
            return Err(format!(
                "source {} is neither a file nor a directory",
                source.display()
            ));
        }
    }
    Ok(plan)
}

fn walk(dir: &Path, dest: &str, plan: &mut Plan) -> Result<(), String> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading {}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| format!("{}: file name {n:?} is not UTF-8", dir.display()))?;
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let target = join(dest, &name);
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if symlink_leaves_root(&target, &link) {
                return Err(format!(
                    "{} is a symlink to `{}`, which leads outside the image root from {target}; make it point inside the image (or absolute, counted from the image root)",
                    path.display(),
                    link.display()
                ));
            }
            plan.entries.push(PlanEntry::Symlink {
                dest: target,
                target: link,
            });
        } else if meta.is_dir() {
            plan.entries.push(PlanEntry::Dir {
                dest: target.clone(),
                mode,
            });
            walk(&path, &target, plan)?;
        } else if meta.is_file() {
            plan.push_file(target, mode, path, &meta);
        } else {
            return Err(format!("{} is a device, socket or pipe; the build context may hold only files, directories and symlinks", path.display()));
        }
    }
    Ok(())
}

/// True when the file starts like a tar, gzip, zstd or xz archive.
pub fn is_archive(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; 512];
    let mut file = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let r = file.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = &head[..n];
    Ok(head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || (n >= 262 && &head[257..262] == b"ustar"))
}

impl Plan {
    /// Plan a regular file, or a hard link to the name it was first planned under when it is
    /// another name of a file already in the plan.
    fn push_file(&mut self, dest: String, mode: u32, source: PathBuf, meta: &fs::Metadata) {
        if meta.nlink() > 1 {
            match self.linked.get(&(meta.dev(), meta.ino())) {
                Some(first) if *first != dest => {
                    let target = first.clone();
                    self.entries.push(PlanEntry::HardLink { dest, target });
                    return;
                }
                Some(_) => {}
                None => {
                    self.linked.insert((meta.dev(), meta.ino()), dest.clone());
                }
            }
        }
        self.entries.push(PlanEntry::File { dest, mode, source });
    }

    /// Apply `--chmod`: files and directories get `mode`.
    pub fn set_mode(&mut self, new_mode: u32) {
        for entry in &mut self.entries {
            if let PlanEntry::File { mode, .. } | PlanEntry::Dir { mode, .. } = entry {
                *mode = new_mode;
            }
        }
    }

    /// Regular files the plan writes below `prefix`, relative to it, sorted.
    pub fn files_below(&self, prefix: &str) -> Vec<String> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        let mut files: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| match e {
                PlanEntry::File { dest, .. } | PlanEntry::HardLink { dest, .. } => {
                    dest.strip_prefix(&prefix).map(str::to_string)
                }
                _ => None,
            })
            .collect();
        files.sort();
        files
    }

    /// A cheap fingerprint of the sources from file metadata (path, mode, size, mtime, inode),
    /// used to find a cached content hash without reading file contents.
    pub fn stat_fingerprint(&self) -> Result<String, String> {
        let mut h = Sha256::new();
        for entry in &self.entries {
            match entry {
                PlanEntry::Dir { dest, mode } => h.update(format!("D {dest} {mode:o}\n")),
                PlanEntry::Symlink { dest, target } => {
                    h.update(format!("L {dest} {}\n", target.display()))
                }
                PlanEntry::HardLink { dest, target } => h.update(format!("H {dest} {target}\n")),
                PlanEntry::File { dest, source, .. } | PlanEntry::Archive { dest, source } => {
                    let m =
                        fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
                    h.update(format!(
                        "F {dest} {:o} {} {} {} {} {} {}\n",
                        mode_of(entry),
                        source.display(),
                        m.len(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ino(),
                        m.ctime_nsec()
                    ));
                }
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Write the plan's entries into `layer`. What was written is identified afterwards by the
    /// layer's diff_id (tar headers are normalised, so it depends on paths, modes, link targets
    /// and contents only).
    pub fn write(&self, layer: &mut LayerWriter) -> Result<(), String> {
        for entry in &self.entries {
            match entry {
                PlanEntry::Dir { dest, mode } => {
                    if !dest.is_empty() {
                        layer
                            .add_dir(dest, *mode)
                            .map_err(|e| format!("writing {dest}: {e}"))?;
                    }
                }
                PlanEntry::Symlink { dest, target } => {
                    layer
                        .add_symlink(dest, target)
                        .map_err(|e| format!("writing {dest}: {e}"))?;
                }
                PlanEntry::HardLink { dest, target } => {
                    layer
                        .add_hardlink(dest, target)
                        .map_err(|e| format!("writing {dest} as a link to {target}: {e}"))?;
                }
                PlanEntry::File { dest, mode, source } => {
                    layer
                        .add_file_from(dest, *mode, source)
                        .map_err(|e| format!("writing {dest} from {}: {e}", source.display()))?;
                }
                PlanEntry::Archive { dest, source } => {
                    unpack_archive_into(layer, dest, source)
                        .map_err(|e| format!("unpacking {}: {e}", source.display()))?;
                }
            }
        }
        Ok(())
    }
}

fn mode_of(entry: &PlanEntry) -> u32 {
    match entry {
        PlanEntry::File { mode, .. } | PlanEntry::Dir { mode, .. } => *mode,
        _ => 0,
    }
}

/// Re-emit the entries of a local archive below `dest` with normalised metadata.
/// Returns the sha256 of the archive file.
fn unpack_archive_into(layer: &mut LayerWriter, dest: &str, source: &Path) -> io::Result<String> {
    let file = File::open(source)?;
    let mut hashing = HashingReader::new(io::BufReader::with_capacity(1 << 20, file));
    {
        let mut magic = [0u8; 6];
        let n = {
            let mut f = File::open(source)?;
            f.read(&mut magic)?
        };
        let magic = &magic[..n];
        let reader: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(&mut hashing))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::new(&mut hashing)?)
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Box::new(xz2::read::XzDecoder::new_multi_decoder(&mut hashing))
        } else {
            Box::new(&mut hashing)
        };
        let mut archive = tar::Archive::new(reader);
        // Files and symlinks written so far, the only things a hard link may name.
        let mut linkable: HashSet<String> = HashSet::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.into_owned();
            let rel = normalize_dest(&raw.to_string_lossy()).map_err(io::Error::other)?;
            if raw.components().any(|c| c == Component::ParentDir) {
                return Err(io::Error::other(format!(
                    "entry {} climbs out with '..'",
                    raw.display()
                )));
            }
            if rel.is_empty() {
                continue;
            }
            let path = join(dest, &rel);
            let mode = entry.header().mode()? & 0o7777;
            match entry.header().entry_type() {
                tar::EntryType::Directory => layer.add_dir(&path, mode)?,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    layer.add_file(&path, mode, size, &mut entry)?;
                    linkable.insert(path);
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name()?.ok_or_else(|| {
                        io::Error::other(format!("symlink {} has no target", raw.display()))
                    })?;
                    if symlink_leaves_root(&path, &target) {
                        return Err(io::Error::other(format!(
                            "entry {} is a symlink to `{}`, which leads outside the image root from {path}; make it point inside the image (or absolute, counted from the image root)",
                            raw.display(),
                            target.display()
                        )));
                    }
                    layer.add_symlink(&path, &target)?;
                    linkable.insert(path);
                }
                tar::EntryType::Link => {
                    let target = entry.link_name()?.ok_or_else(|| {
                        io::Error::other(format!("hard link {} has no target", raw.display()))
                    })?;
                    let target =
                        normalize_dest(&target.to_string_lossy()).map_err(io::Error::other)?;
                    let target = join(dest, &target);
                    if !linkable.contains(&target) {
                        return Err(io::Error::other(format!(
                            "entry {} is a hard link to {target}, which is not a file earlier in the archive; an archive may link only to its own files",
                            raw.display()
                        )));
                    }
                    layer.add_hardlink(&path, &target)?;
                    linkable.insert(path);
                }
                other => {
                    return Err(io::Error::other(format!(
                        "entry {} has type {other:?}; only files, directories and links are taken",
                        raw.display()
                    )))
                }
            }
        }
        // Read to the end so the digest covers the whole file.
        io::copy(&mut archive.into_inner(), &mut io::sink())?;
    }
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hashing.hex_digest())
}

/// sealer's app type detection: helm chart, plain Kubernetes YAML, shell scripts, or other.
pub fn app_kind(files: &[String]) -> &'static str {
    let has = |name: &str| files.iter().any(|f| f == name);
    if has("Chart.yaml") && has("values.yaml") && files.iter().any(|f| f.starts_with("templates/"))
    {
        "helm"
    } else if !files.is_empty()
        && files
            .iter()
            .all(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
    {
        "kube"
    } else if !files.is_empty() && files.iter().all(|f| f.ends_with(".sh")) {
        "shell"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_leave_the_root_only_by_climbing_past_it() {
        let leaves = |link: &str, target: &str| symlink_leaves_root(link, Path::new(target));
        assert!(leaves("x", "../etc"));
        assert!(leaves("a/b/x", "../../../etc"));
        assert!(leaves("a/x", "b/../../../etc"));
        assert!(leaves("x", "/../etc"));
        assert!(!leaves("a/b/x", "../../etc"));
        assert!(!leaves("a/x", "/etc/passwd"));
        assert!(!leaves("x", "y/../z"));
        assert!(!leaves("var/run", "/run"));
    }

    #[test]
    fn app_kinds_follow_sealer_detection() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            app_kind(&s(&["Chart.yaml", "values.yaml", "templates/a.yaml"])),
            "helm"
        );
        assert_eq!(app_kind(&s(&["a.yaml", "b.yml"])), "kube");
        assert_eq!(app_kind(&s(&["install.sh"])), "shell");
        assert_eq!(app_kind(&s(&["bin/tool", "x.sh"])), "other");
    }
}
