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

/// Build a new tree with `fill` beside `dest` and switch it into place. The switch is one
/// `renameat2(RENAME_EXCHANGE)`: at every instant `dest` is a whole tree, the old one or the
/// new one, never missing or half there. The replaced tree is kept in `.old` until the journal
/// records the new one ([`settle_old_tree`]).
///
/// Before the exchange, `.switching` records the inode of the new tree, so that an agent
/// stopped between the exchange and the rename after it (power loss) is recognised on the
/// next run: the tree left in `.incoming` is then the replaced one, not a new one.
fn install_tree(dest: &Path, fill: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    let parent = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", dest.display()))?;
    fs::create_dir_all(parent).map_err(io_context(format!("creating {}", parent.display())))?;
    let name = file_name(dest);
    let incoming = parent.join(format!("{name}.incoming"));
    let switching = parent.join(format!("{name}.switching"));
    finish_switch(dest, &incoming, &switching)?;
    if incoming.exists() {
        fs::remove_dir_all(&incoming)
            .map_err(io_context(format!("removing {}", incoming.display())))?;
    }
    fill(&incoming)?;
    if !dest.exists() {
        return fs::rename(&incoming, dest).map_err(io_context(format!(
            "moving the new tree to {}",
            dest.display()
        )));
    }
    let inode = inode_of(&incoming)?;
    fs::write(&switching, format!("{inode}\n"))
        .map_err(io_context(format!("writing {}", switching.display())))?;
    exchange(&incoming, dest)?;
    finish_switch(dest, &incoming, &switching)
}

/// After the exchange (or an agent stopped right after it): the tree now in `.incoming` is the
/// one replaced. It becomes `.old` when no `.old` is kept already; otherwise it was put in
/// place by a run that stopped before the journal recorded it, and it goes. Does nothing when
/// no switch is under way, and forgets a switch that never exchanged.
fn finish_switch(dest: &Path, incoming: &Path, switching: &Path) -> Result<(), String> {
    let Ok(text) = fs::read_to_string(switching) else {
        return Ok(());
    };
    let exchanged = incoming.exists()
        && text
            .trim()
            .parse::<u64>()
            .is_ok_and(|inode| inode_of(dest).is_ok_and(|now| now == inode));
    if exchanged {
        let old = old_tree(dest);
        if old.exists() {
            fs::remove_dir_all(incoming)
                .map_err(io_context(format!("removing {}", incoming.display())))?;
        } else {
            fs::rename(incoming, &old).map_err(io_context(format!(
                "keeping the old tree in {}",
                old.display()
            )))?;
        }
    }
    fs::remove_file(switching).map_err(io_context(format!("removing {}", switching.display())))
}

fn inode_of(path: &Path) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path)
        .map(|m| m.ino())
        .map_err(io_context(format!("reading {}", path.display())))
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
        for leftover in ["incoming", "switching"] {
            remove_tree(&rootfs.with_file_name(format!("rootfs.{leftover}")))?;
        }
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

    fn tree(dir: &Path, version: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("version"), version).unwrap();
    }

    fn version(dir: &Path) -> String {
        fs::read_to_string(dir.join("version")).unwrap()
    }

    #[test]
    fn a_new_tree_is_exchanged_into_place_and_the_old_one_kept_until_it_is_recorded() {
        let base = tempfile::tempdir().unwrap();
        let rootfs = base.path().join("rootfs");
        install_tree(&rootfs, |dir| {
            tree(dir, "v1");
            Ok(())
        })
        .unwrap();
        assert_eq!(version(&rootfs), "v1");
        let inode_before = inode_of(&rootfs).unwrap();
        install_tree(&rootfs, |dir| {
            tree(dir, "v2");
            Ok(())
        })
        .unwrap();
        assert_eq!(version(&rootfs), "v2");
        assert_eq!(version(&old_tree(&rootfs)), "v1");
        assert_eq!(inode_of(&old_tree(&rootfs)).unwrap(), inode_before);
        assert!(!base.path().join("rootfs.incoming").exists());
        assert!(!base.path().join("rootfs.switching").exists());
    }

    #[test]
    fn an_agent_stopped_right_after_the_exchange_keeps_the_replaced_tree_on_the_next_run() {
        let base = tempfile::tempdir().unwrap();
        let rootfs = base.path().join("rootfs");
        let incoming = base.path().join("rootfs.incoming");
        let switching = base.path().join("rootfs.switching");
        tree(&rootfs, "v1");
        // A switch cut off between the exchange and the rename after it.
        tree(&incoming, "v2");
        fs::write(&switching, format!("{}\n", inode_of(&incoming).unwrap())).unwrap();
        exchange(&incoming, &rootfs).unwrap();
        install_tree(&rootfs, |dir| {
            tree(dir, "v2");
            Ok(())
        })
        .unwrap();
        assert_eq!(version(&rootfs), "v2");
        assert_eq!(
            version(&old_tree(&rootfs)),
            "v1",
            "the replaced tree was lost"
        );

        // Cut off before the exchange: the recorded tree stays where it is.
        let base = tempfile::tempdir().unwrap();
        let rootfs = base.path().join("rootfs");
        let incoming = base.path().join("rootfs.incoming");
        let switching = base.path().join("rootfs.switching");
        tree(&rootfs, "v1");
        tree(&incoming, "v2");
        fs::write(&switching, format!("{}\n", inode_of(&incoming).unwrap())).unwrap();
        install_tree(&rootfs, |dir| {
            tree(dir, "v3");
            Ok(())
        })
        .unwrap();
        assert_eq!(version(&rootfs), "v3");
        assert_eq!(version(&old_tree(&rootfs)), "v1");
    }

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
