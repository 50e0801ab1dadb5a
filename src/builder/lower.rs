//! What the image built so far holds at one path: read from the tar headers of its layers, in
//! order, with OCI whiteouts applied, without unpacking anything. COPY asks it whether its
//! destination is an existing directory (then a single file is copied into it, as sealer's
//! collector and buildah do). It reads layers; it never writes.

use std::io;

use crate::store::{layer_reader, Descriptor, Store};

/// What a path is in the image so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Absent,
    Dir,
    /// A file, symlink or anything else that is not a directory.
    Other,
}

/// What `path` (relative to the image root, no leading `/`) is after `layers`.
pub fn path_kind(store: &Store, layers: &[Descriptor], path: &str) -> io::Result<PathKind> {
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Ok(PathKind::Dir);
    }
    let mut kind = PathKind::Absent;
    for layer in layers {
        let blob = store
            .blob_path(&layer.digest)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let reader = layer_reader(&blob, &layer.media_type)
            .map_err(|e| io::Error::other(format!("layer {}: {e}", layer.digest)))?;
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let entry = entry?;
            let name = entry.path()?.to_string_lossy().into_owned();
            kind = apply_entry(kind, path, &name, entry.header().entry_type().is_dir());
        }
    }
    Ok(kind)
}

/// `kind` of `path` after one tar entry named `name` (a directory when `is_dir`).
fn apply_entry(kind: PathKind, path: &str, name: &str, is_dir: bool) -> PathKind {
    let name = name.trim_start_matches("./").trim_start_matches('/');
    let name = name.trim_end_matches('/');
    let (parent, base) = match name.rsplit_once('/') {
        Some((p, b)) => (p, b),
        None => ("", name),
    };
    let below = |dir: &str| dir.is_empty() || path.starts_with(&format!("{dir}/"));
    if base == ".wh..wh..opq" {
        // Everything the lower layers had below `parent` is gone.
        return if below(parent) {
            PathKind::Absent
        } else {
            kind
        };
    }
    if let Some(hidden) = base.strip_prefix(".wh.") {
        let hidden = if parent.is_empty() {
            hidden.to_string()
        } else {
            format!("{parent}/{hidden}")
        };
        if hidden == path || path.starts_with(&format!("{hidden}/")) {
            return PathKind::Absent;
        }
        // A whiteout inside `path` says `path` is a directory.
        return if name.starts_with(&format!("{path}/")) {
            PathKind::Dir
        } else {
            kind
        };
    }
    if name == path {
        return if is_dir {
            PathKind::Dir
        } else {
            PathKind::Other
        };
    }
    if name.starts_with(&format!("{path}/")) {
        return PathKind::Dir;
    }
    if path.starts_with(&format!("{name}/")) && !is_dir {
        // An ancestor replaced by a file: nothing below it remains.
        return PathKind::Absent;
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(entries: &[(&str, bool)], path: &str) -> PathKind {
        entries.iter().fold(PathKind::Absent, |k, (name, dir)| {
            apply_entry(k, path, name, *dir)
        })
    }

    #[test]
    fn a_path_is_what_the_last_entry_touching_it_says() {
        assert_eq!(walk(&[("etc/", true)], "etc"), PathKind::Dir);
        assert_eq!(walk(&[("./etc/a.conf", false)], "etc"), PathKind::Dir);
        assert_eq!(walk(&[("etc", false)], "etc"), PathKind::Other);
        assert_eq!(
            walk(&[("etc/", true), ("etcd", false)], "etc"),
            PathKind::Dir
        );
        assert_eq!(
            walk(&[("etc/", true), (".wh.etc", false)], "etc"),
            PathKind::Absent
        );
        assert_eq!(
            walk(&[("a/etc/", true), ("a/.wh..wh..opq", false)], "a/etc"),
            PathKind::Absent
        );
        assert_eq!(
            walk(&[("a/etc/", true), ("a", false)], "a/etc"),
            PathKind::Absent
        );
        assert_eq!(
            walk(&[("etc/", true), ("etc/.wh.x", false)], "etc"),
            PathKind::Dir
        );
        assert_eq!(walk(&[("bin/x", false)], "etc"), PathKind::Absent);
    }
}
