//! The host's journal: one file per finished step in `journal/`, named by its step key, what
//! steps exported in `exports/KEY.env`, and in `installed` the payload whose tree the rootfs
//! holds. Read by `state`, written by `done`. The journal describes the installed payload
//! only: when a step installs another payload's tree, the steps and exports of the one before
//! are cleared, so installing v1 after v2 runs v1's steps again on v1's tree.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::input::Input;
use super::io_context;
use super::protocol::{export_file, HostState, PayloadId, StepKey};
use super::spool::FRAMES;

/// The file naming the payload the rootfs holds.
const INSTALLED: &str = "installed";

/// In `journal/`: the payload the installed generation replaced (written when a tree replaces
/// another payload's, so it moves with the journal on a rollback). Not a step key, so no step.
const UPGRADED_FROM: &str = "upgraded-from";

/// `state`: prints the [`HostState`]. Files that are not named by a step key (a temporary
/// file left by a killed `done`) are no steps.
pub(super) fn state(work: &Path) -> Result<(), String> {
    let mut out = HostState::default();
    if let Ok(text) = fs::read_to_string(work.join(INSTALLED)) {
        out.installed = text.trim().parse().ok();
    }
    if let Ok(text) = fs::read_to_string(work.join(format!("{INSTALLED}.prev"))) {
        out.previous = text.trim().parse().ok();
    }
    if let Ok(text) = fs::read_to_string(work.join("journal").join(UPGRADED_FROM)) {
        out.upgraded_from = text.trim().parse().ok();
    }
    if let Ok(entries) = fs::read_dir(work.join("journal")) {
        for e in entries.flatten() {
            if let Ok(key) = e.file_name().to_string_lossy().parse::<StepKey>() {
                out.done.push(key);
            }
        }
    }
    out.done.sort();
    if let Ok(entries) = fs::read_dir(work.join("exports")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(Ok(key)) = name.strip_suffix(".env").map(str::parse::<StepKey>) else {
                continue;
            };
            if let Ok(text) = fs::read_to_string(e.path()) {
                out.exports.insert(key, text);
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string(&out).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// `done`: records the step `key` (its name on stdin) in the journal, then prints what it
/// exported. With `installs`, the step put that payload's tree in place: a journal kept for
/// another payload is cleared first, and `installed` names the new one.
pub(super) fn done(work: &Path, key: &StepKey, installs: Option<&PayloadId>) -> Result<(), String> {
    if let Some(id) = installs {
        switch_payload(work, id)?;
        super::spool::adopt_unpacked(work)?;
    }
    let mut what = String::new();
    Input::stdin()
        .read_to_string(&mut what)
        .map_err(io_context("reading stdin"))?;
    record(work, key, &what)?;
    // A step that exported nothing has no file.
    if let Ok(exported) = fs::read(export_file(work, key)) {
        use std::io::Write;
        io::stdout()
            .write_all(&exported)
            .map_err(io_context("writing stdout"))?;
    }
    Ok(())
}

/// Records the step `key`, called `what`, in the journal.
pub(super) fn record(work: &Path, key: &StepKey, what: &str) -> Result<(), String> {
    let dir = work.join("journal");
    fs::create_dir_all(&dir).map_err(io_context(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(".{key}.tmp"));
    fs::write(&tmp, what.as_bytes()).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(key.as_str()))
        .map_err(io_context("recording the step in the journal"))
}

/// Whether the journal records `key`; with `or_previous`, the previous generation's counts too.
pub(super) fn recorded(work: &Path, key: &StepKey, or_previous: bool) -> bool {
    let dirs: &[&str] = if or_previous {
        &["journal", "journal.prev"]
    } else {
        &["journal"]
    };
    dirs.iter()
        .any(|d| fs::symlink_metadata(work.join(d).join(key.as_str())).is_ok_and(|m| m.is_file()))
}

/// Removes `key` from the journal (a step whose work was found undone since).
pub(super) fn forget(work: &Path, key: &StepKey) -> Result<(), String> {
    let path = work.join("journal").join(key.as_str());
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_context(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Records that the rootfs holds `id`. When it held another payload, that payload's journal,
/// exports, frame list and tree become the previous generation (`*.prev`, replacing an older one: one
/// generation is kept), which `rollback` brings back; otherwise the replaced tree goes.
fn switch_payload(work: &Path, id: &PayloadId) -> Result<(), String> {
    let file = work.join(INSTALLED);
    let current = fs::read_to_string(&file).ok();
    let current = current.as_deref().map(str::trim).filter(|c| !c.is_empty());
    let rootfs = rootfs_of(work);
    if current == Some(id.as_str()) {
        return super::rootfs::settle_old_tree(&rootfs, false);
    }
    fs::create_dir_all(work).map_err(io_context(format!("creating {}", work.display())))?;
    let keep = current.is_some();
    for name in ["journal", "exports", INSTALLED, FRAMES] {
        let path = work.join(name);
        let prev = work.join(format!("{name}.prev"));
        remove_any(&prev)?;
        if keep && path.exists() {
            fs::rename(&path, &prev).map_err(io_context(format!("keeping {}", prev.display())))?;
        } else {
            remove_any(&path)?;
        }
    }
    super::rootfs::settle_old_tree(&rootfs, keep)?;
    if let Some(from) = current.filter(|_| keep) {
        // Before `installed` names the new payload: the rename of `installed` commits the switch.
        let journal = work.join("journal");
        fs::create_dir_all(&journal)
            .map_err(io_context(format!("creating {}", journal.display())))?;
        let marker = journal.join(UPGRADED_FROM);
        fs::write(&marker, format!("{from}\n"))
            .map_err(io_context(format!("writing {}", marker.display())))?;
    }
    let tmp = work.join(".installed.tmp");
    fs::write(&tmp, format!("{id}\n")).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &file).map_err(io_context(format!("writing {}", file.display())))
}

/// The rootfs of the cluster whose work directory is `work` (`<dataRoot>/<cluster>/.sealer`
/// beside `<dataRoot>/<cluster>/rootfs`).
fn rootfs_of(work: &Path) -> std::path::PathBuf {
    work.parent().unwrap_or(work).join("rootfs")
}

fn remove_any(path: &Path) -> Result<(), String> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(io_context(format!("removing {}", path.display())))
}

/// `rollback`: the previous generation (tree, journal, exports, payload) and the current one
/// change places; the tree is exchanged atomically. Prints the payload now installed.
pub(super) fn rollback(work: &Path) -> Result<(), String> {
    let prev_id = work.join(format!("{INSTALLED}.prev"));
    let rootfs = rootfs_of(work);
    let prev_tree = super::rootfs::previous_tree(&rootfs);
    let Ok(previous) = fs::read_to_string(&prev_id) else {
        return Err(format!(
            "{} holds no previous generation to roll back to (it is dropped once an upgrade finished on every host)",
            rootfs.display()
        ));
    };
    if !prev_tree.is_dir() || !rootfs.is_dir() {
        return Err(format!(
            "the previous tree {} or the current {} is missing; install the image you want instead",
            prev_tree.display(),
            rootfs.display()
        ));
    }
    super::rootfs::exchange(&rootfs, &prev_tree)?;
    for name in ["journal", "exports", INSTALLED, FRAMES] {
        let path = work.join(name);
        let prev = work.join(format!("{name}.prev"));
        let swap = work.join(format!(".{name}.swap"));
        remove_any(&swap)?;
        if path.exists() {
            fs::rename(&path, &swap).map_err(io_context(format!("moving {}", path.display())))?;
        }
        if prev.exists() {
            fs::rename(&prev, &path).map_err(io_context(format!("moving {}", prev.display())))?;
        }
        if swap.exists() {
            fs::rename(&swap, &prev).map_err(io_context(format!("moving {}", swap.display())))?;
        }
    }
    println!("{}", previous.trim());
    Ok(())
}
