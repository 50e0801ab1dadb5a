//! The host's journal: one file per finished step in `journal/`, named by its step key, and
//! what steps exported in `exports/KEY.env`. Read by `state`, written by `done`.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::input::Input;
use super::io_context;
use super::protocol::{export_file, HostState, StepKey};

/// `state`: prints the [`HostState`]. Files that are not named by a step key (a temporary
/// file left by a killed `done`) are no steps.
pub(super) fn state(work: &Path) -> Result<(), String> {
    let mut out = HostState::default();
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
/// exported.
pub(super) fn done(work: &Path, key: &StepKey) -> Result<(), String> {
    let dir = work.join("journal");
    fs::create_dir_all(&dir).map_err(io_context(format!("creating {}", dir.display())))?;
    let mut what = String::new();
    Input::stdin()
        .read_to_string(&mut what)
        .map_err(io_context("reading stdin"))?;
    let tmp = dir.join(format!(".{key}.tmp"));
    fs::write(&tmp, what.as_bytes()).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(key.as_str()))
        .map_err(io_context("recording the step in the journal"))?;
    // A step that exported nothing has no file.
    if let Ok(exported) = fs::read(export_file(work, key)) {
        use std::io::Write;
        io::stdout()
            .write_all(&exported)
            .map_err(io_context("writing stdout"))?;
    }
    Ok(())
}
