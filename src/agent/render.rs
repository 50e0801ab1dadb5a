//! `render`: every `*.tmpl` file of the rootfs becomes the file without the suffix, rendered
//! with the env the engine sends ([`crate::template`] does the rendering). Files under an app's
//! directory get that app's APPENV on top. Symlinks are never followed, the container images
//! (`images/`, `registry/`) are not walked, and each output is written to a temporary name
//! and renamed, keeping the template's mode.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::input::Input;
use super::io_context;
use super::protocol::{RenderOutcome, RenderRequest};
use crate::template::Template;

/// Top-level directories of the rootfs that hold no templates of the image's own.
const SKIPPED: &[&str] = &["images", "registry"];

/// Reads the [`RenderRequest`] on stdin and renders every template below `rootfs`; prints the
/// [`RenderOutcome`] (JSON).
pub(super) fn render_tree(rootfs: &Path) -> Result<(), String> {
    let mut text = String::new();
    Input::stdin()
        .read_to_string(&mut text)
        .map_err(io_context("reading the render request"))?;
    let request: RenderRequest =
        serde_json::from_str(&text).map_err(|e| format!("malformed render request: {e}"))?;
    let outcome = render_all(rootfs, &request)?;
    println!(
        "{}",
        serde_json::to_string(&outcome).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Renders every template below `rootfs`: the rendered files (relative to it, sorted) and the
/// keys the templates read.
pub fn render_all(rootfs: &Path, request: &RenderRequest) -> Result<RenderOutcome, String> {
    let mut templates = Vec::new();
    find_templates(rootfs, Path::new(""), &mut templates)?;
    templates.sort();
    let base: BTreeMap<String, String> = request.env.iter().cloned().collect();
    let mut outcome = RenderOutcome::default();
    for rel in templates {
        let mut vars = base.clone();
        for (dir, env) in &request.apps {
            if rel.starts_with(dir) {
                vars.extend(env.iter().cloned());
            }
        }
        let source = rootfs.join(&rel);
        let text = fs::read_to_string(&source)
            .map_err(io_context(format!("reading template {}", rel.display())))?;
        let output = Template::parse(&text)
            .and_then(|t| {
                outcome.reads.extend(t.fields());
                t.render(&vars)
            })
            .map_err(|e| format!("rendering {}: {e}", rel.display()))?;
        let target_rel = rel.with_extension("");
        let mode = fs::symlink_metadata(&source)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        write_atomically(&rootfs.join(&target_rel), output.as_bytes(), mode)?;
        outcome.rendered.push(target_rel);
    }
    Ok(outcome)
}

fn find_templates(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).map_err(io_context(format!("reading {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_context(format!("reading {}", dir.display())))?;
        let name = entry.file_name();
        let child = rel.join(&name);
        let kind = entry
            .file_type()
            .map_err(io_context(format!("reading {}", child.display())))?;
        if kind.is_dir() {
            if rel.as_os_str().is_empty() && SKIPPED.iter().any(|s| name == *s) {
                continue;
            }
            find_templates(root, &child, out)?;
        } else if kind.is_file() && name.to_string_lossy().ends_with(".tmpl") && name != ".tmpl" {
            out.push(child);
        }
    }
    Ok(())
}

fn write_atomically(target: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut tmp_name = target.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".sealer-tmp");
    let tmp = target.with_file_name(tmp_name);
    if let Ok(meta) = fs::symlink_metadata(&tmp) {
        let removed = if meta.is_dir() {
            fs::remove_dir_all(&tmp)
        } else {
            fs::remove_file(&tmp)
        };
        removed.map_err(io_context(format!("removing {}", tmp.display())))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_context(format!("writing {}", tmp.display())))?;
    file.write_all(bytes)
        .map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(io_context(format!("setting the mode of {}", tmp.display())))?;
    drop(file);
    fs::rename(&tmp, target).map_err(io_context(format!("writing {}", target.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_beside_themselves_with_app_env_winning_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("application/apps/web")).unwrap();
        fs::create_dir_all(root.join("images")).unwrap();
        fs::write(root.join("etc/app.conf.tmpl"), "port={{ .Port }}\n").unwrap();
        fs::set_permissions(
            root.join("etc/app.conf.tmpl"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(root.join("application/apps/web/w.yaml.tmpl"), "{{ .Port }}").unwrap();
        fs::write(root.join("images/x.tmpl"), "{{ .Nope }}").unwrap();
        let request = RenderRequest {
            env: vec![("Port".into(), "80".into())],
            apps: BTreeMap::from([(
                "application/apps/web".to_string(),
                vec![("Port".to_string(), "8080".to_string())],
            )]),
        };
        let outcome = render_all(root, &request).unwrap();
        assert_eq!(
            outcome.reads.iter().collect::<Vec<_>>(),
            ["Port"],
            "the key both templates read, and not the skipped images/ one's"
        );
        assert_eq!(
            outcome.rendered,
            vec![
                PathBuf::from("application/apps/web/w.yaml"),
                PathBuf::from("etc/app.conf")
            ]
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/app.conf")).unwrap(),
            "port=80\n"
        );
        let mode = fs::metadata(root.join("etc/app.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::read_to_string(root.join("application/apps/web/w.yaml")).unwrap(),
            "8080"
        );
        assert!(!root.join("images/x").exists());

        fs::write(root.join("etc/bad.tmpl"), "a\n{{ .Missing }}").unwrap();
        let e = render_all(root, &request).unwrap_err();
        assert!(
            e.contains("etc/bad.tmpl: line 2: `Missing` has no value"),
            "{e}"
        );
    }
}
