//! The rootfs on a host: layers unpacked into a staging tree swapped into place, and Configs
//! written into it without ever leaving it, whatever symlinks the image holds.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use packer::unpack::{unpack, LayerInput, UnpackOptions};

use super::input::Input;
use super::io_context;
use crate::clusterfile::ConfigStrategy;

/// Unpacks `inputs` through the project's one extraction routine into a tree built beside
/// `dest` and swapped into its place; the old tree is removed. The agent does this from its
/// spool, the engine from the payload when it installs on its own machine.
pub fn install_rootfs(inputs: &[LayerInput<'_>], dest: &Path) -> Result<(), String> {
    install_tree(dest, |staging| {
        unpack(
            inputs,
            staging,
            &UnpackOptions {
                absolute_symlinks: true,
                ..UnpackOptions::default()
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
}

/// Build a new tree with `fill` beside `dest` and swap it into place; the old tree is removed.
fn install_tree(dest: &Path, fill: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    let parent = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", dest.display()))?;
    fs::create_dir_all(parent).map_err(io_context(format!("creating {}", parent.display())))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let incoming = parent.join(format!("{name}.incoming"));
    let old = parent.join(format!("{name}.old"));
    if incoming.exists() {
        fs::remove_dir_all(&incoming)
            .map_err(io_context(format!("removing {}", incoming.display())))?;
    }
    fill(&incoming)?;
    if old.exists() {
        // A tree put in place by a run that stopped before the journal recorded it: the tree
        // recorded before it stays in `.old`, this one is replaced.
        if dest.exists() {
            fs::remove_dir_all(dest).map_err(io_context(format!("removing {}", dest.display())))?;
        }
    } else if dest.exists() {
        fs::rename(dest, &old).map_err(io_context(format!(
            "moving the old {} aside",
            dest.display()
        )))?;
    }
    fs::rename(&incoming, dest).map_err(io_context(format!(
        "moving the new tree to {}",
        dest.display()
    )))?;
    Ok(())
}

/// The tree an install replaced, kept beside `rootfs` until the journal records the new one
/// ([`settle_old_tree`]).
fn old_tree(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name(format!("{}.old", file_name(rootfs)))
}

/// The previous generation's tree, kept until the upgrade is committed on every host.
pub(super) fn previous_tree(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name(format!("{}.prev", file_name(rootfs)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Once the journal records the tree in `rootfs`: the tree it replaced becomes the previous
/// generation (`keep`, when another payload was installed before) or goes.
pub(super) fn settle_old_tree(rootfs: &Path, keep: bool) -> Result<(), String> {
    let old = old_tree(rootfs);
    if !old.exists() {
        return Ok(());
    }
    if keep {
        let prev = previous_tree(rootfs);
        if prev.exists() {
            fs::remove_dir_all(&prev)
                .map_err(io_context(format!("removing {}", prev.display())))?;
        }
        fs::rename(&old, &prev).map_err(io_context(format!("keeping {}", prev.display())))
    } else {
        fs::remove_dir_all(&old).map_err(io_context(format!("removing {}", old.display())))
    }
}

/// Exchanges `a` and `b` atomically (both must exist).
pub(super) fn exchange(a: &Path, b: &Path) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: both are valid NUL-terminated paths; renameat2 reads them and touches no memory
    // of ours.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "exchanging {} and {}: {}",
            a.display(),
            b.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// `config`: writes the data on stdin to `rel` inside `rootfs`, merged into what is there when
/// the strategy says so.
pub(super) fn write_config(
    rootfs: &Path,
    rel: &Path,
    strategy: ConfigStrategy,
) -> Result<(), String> {
    let target = path_in_root(rootfs, rel)?;
    let mut data = String::new();
    Input::stdin()
        .read_to_string(&mut data)
        .map_err(io_context("reading the config data"))?;
    let existing = fs::read_to_string(&target).ok();
    let content = match (strategy, existing) {
        (ConfigStrategy::Merge, Some(existing)) => {
            crate::clusterfile::merge_yaml_documents(&existing, &data).map_err(|e| e.to_string())?
        }
        (ConfigStrategy::Merge | ConfigStrategy::Overwrite, _) => data,
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_context(format!("creating {}", parent.display())))?;
    }
    let mut tmp_name = target.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".sealer-tmp");
    let tmp = target.with_file_name(tmp_name);
    // The image may hold a symlink by that name too: never write through one.
    let removed = match fs::symlink_metadata(&tmp) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&tmp),
        Ok(_) => fs::remove_file(&tmp),
        Err(_) => Ok(()),
    };
    removed.map_err(io_context(format!("removing {}", tmp.display())))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_context(format!("writing {}", tmp.display())))?;
    file.write_all(content.as_bytes())
        .map_err(io_context(format!("writing {}", tmp.display())))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(io_context(format!("writing {}", target.display())))?;
    Ok(())
}

/// Where the rootfs-relative `rel` leads inside `root`, resolving symlinks as if `root` were `/`:
/// an absolute link target starts again at `root`, and `..` never climbs above it (Debian's
/// `var/run -> /run` leads to `root/run`, an image's `ext -> /outside` to `root/outside`). The
/// result holds no symlink up to its last existing component, so writing to it cannot leave
/// the rootfs. `rel` must name something below `root` (not `.`), without `..`.
pub(super) fn path_in_root(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let outside = || {
        format!(
            "config path {} must name a file inside the rootfs (relative, without `..`, not `.`)",
            rel.display()
        )
    };
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        || !rel.components().any(|c| matches!(c, Component::Normal(_)))
    {
        return Err(outside());
    }
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            done.pop();
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.as_os_str())
            .chain(done.iter().map(|d| d.as_os_str()))
            .chain(std::iter::once(part.as_os_str()))
            .collect();
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!(
                        "config path {}: too many symlinks in the rootfs",
                        rel.display()
                    ));
                }
                let target = fs::read_link(&candidate)
                    .map_err(io_context(format!("reading {}", candidate.display())))?;
                if target.is_absolute() {
                    done.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done.push(part),
        }
    }
    if done.is_empty() {
        return Err(outside());
    }
    Ok(std::iter::once(root.as_os_str())
        .chain(done.iter().map(|d| d.as_os_str()))
        .collect())
}

/// `remove`: what installs of `cluster` put under `data_root` — its rootfs, or with `all` the
/// cluster's whole directory, then the agent directory (`.agent`) and `data_root` itself when
/// nothing else is left there. The cluster name must be one path component; nothing outside
/// `data_root/cluster` and `data_root/.agent` is touched, and what is already gone is no error.
pub(super) fn remove(data_root: &Path, cluster: &str, all: bool) -> Result<(), String> {
    let mut parts = Path::new(cluster).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) || cluster.starts_with('.')
    {
        return Err(format!("{cluster:?} is not a cluster name"));
    }
    let dir = data_root.join(cluster);
    if !all {
        let rootfs = dir.join("rootfs");
        remove_tree(&old_tree(&rootfs))?;
        remove_tree(&previous_tree(&rootfs))?;
        return remove_tree(&rootfs);
    }
    remove_tree(&dir)?;
    // The agent and the data root go only when no other cluster lives there.
    let others = match fs::read_dir(data_root) {
        Ok(entries) => entries.flatten().any(|e| e.file_name() != ".agent"),
        Err(_) => return Ok(()),
    };
    if !others {
        remove_tree(&data_root.join(".agent"))?;
        let _ = fs::remove_dir(data_root);
    }
    Ok(())
}

fn remove_tree(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).map_err(io_context(format!("removing {}", path.display())))
        }
        Ok(_) => fs::remove_file(path).map_err(io_context(format!("removing {}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_paths_resolve_symlinks_as_if_the_rootfs_were_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("/outside", root.join("ext")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/link.conf")).unwrap();
        let cases = [
            ("ext/evil.conf", "outside/evil.conf"),
            ("var/run/app.pid", "run/app.pid"),
            ("etc/up/etc/x", "etc/x"),
            ("etc/link.conf", "etc/passwd"),
            ("./etc/app.yaml", "etc/app.yaml"),
        ];
        for (rel, inside) in cases {
            assert_eq!(
                path_in_root(&root, Path::new(rel)).unwrap(),
                root.join(inside),
                "{rel}"
            );
        }
        for rel in [".", "./", "", "etc/..", "../x", "/etc/x"] {
            let err = path_in_root(&root, Path::new(rel)).unwrap_err();
            assert!(err.contains("inside the rootfs"), "{rel}: {err}");
        }
    }
}
