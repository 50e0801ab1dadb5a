//! Which container images a build collects, and where each was declared.
//!
//! Sources, as sealer reads them: image lists (`manifests/imageList` in the build context,
//! `--image-list FILE`; one reference a line, `#` comments, blank lines), and the `image:` fields
//! of the pod specs in kube manifests (`manifests/**/*.yaml|yml`, `application/apps/*/` and the
//! directories of kube-type APPs), read as YAML (multi-document), not grepped. Helm charts are not
//! rendered: their images belong in an image list. `--ignored-image-list FILE` removes references.
//!
//! Everything here only reads files: a bad line is an error naming `FILE:LINE`, found before the
//! build writes anything.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::ImageName;
use crate::reference::ReferenceError;

/// Where a reference was found: `FILE:LINE`, and the app whose files hold it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One container image to collect, with every place that declared it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeclaredImage {
    pub reference: ImageName,
    pub origins: Vec<Origin>,
}

impl DeclaredImage {
    /// The first app that uses the image, for the sealer `appName` field.
    pub fn app(&self) -> Option<&str> {
        self.origins.iter().find_map(|o| o.app.as_deref())
    }
}

/// Why the declarations could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error("{file}:{line}: {source}; an image list holds one reference a line (REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST), `#` starts a comment")]
    ListLine {
        file: String,
        line: usize,
        source: ReferenceError,
    },
    #[error("{file}:{line}: the image of a container is not a usable reference: {reason}; fix the manifest, or list the image in manifests/imageList and keep this file out of manifests/")]
    ManifestImage {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}:{line}: not valid YAML ({reason}); kube manifests under manifests/ and in kube apps are read for their container images")]
    Yaml {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to read: the build context and the lists and app directories named by the build.
#[derive(Debug, Clone, Default)]
pub struct Declarations {
    /// The build context; `manifests/` and `application/apps/*/` below it are read.
    pub context: PathBuf,
    /// `--image-list FILE`s.
    pub image_lists: Vec<PathBuf>,
    /// `--ignored-image-list FILE`s.
    pub ignored_lists: Vec<PathBuf>,
    /// APP directories or files (paths in the build context) with the app's name; read when the
    /// app is kube-type (every file YAML).
    pub apps: Vec<(String, PathBuf)>,
}

/// The images declared by `what`, sorted by reference, each with where it was found.
pub fn declared_images(what: &Declarations) -> Result<Vec<DeclaredImage>, DeclareError> {
    let mut found: Vec<(ImageName, Origin)> = Vec::new();
    let shown = |path: &Path| {
        path.strip_prefix(&what.context)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let manifests = what.context.join("manifests");
    let list = manifests.join("imageList");
    if list.is_file() {
        found.extend(read_list(&list, &shown(&list))?);
    }
    for path in &what.image_lists {
        found.extend(read_list(path, &path.display().to_string())?);
    }
    for file in yaml_files(&manifests)? {
        found.extend(scan_manifest_file(&file, &shown(&file), None)?);
    }
    let apps_dir = what.context.join("application").join("apps");
    let mut apps: Vec<(String, PathBuf)> = Vec::new();
    if apps_dir.is_dir() {
        let entries = fs::read_dir(&apps_dir).map_err(|source| DeclareError::Io {
            path: apps_dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                apps.push((
                    entry.file_name().to_string_lossy().into_owned(),
                    entry.path(),
                ));
            }
        }
    }
    apps.extend(what.apps.iter().cloned());
    apps.sort();
    apps.dedup();
    for (app, path) in &apps {
        let files = app_files(path)?;
        if files.is_empty() || !files.iter().all(|f| is_yaml(f)) {
            continue; // helm, shell or other apps: their images come from image lists
        }
        for file in files {
            found.extend(scan_manifest_file(&file, &shown(&file), Some(app))?);
        }
    }
    let mut ignored = Vec::new();
    for path in &what.ignored_lists {
        ignored.extend(
            read_list(path, &path.display().to_string())?
                .into_iter()
                .map(|(name, _)| name),
        );
    }
    let mut by_name: BTreeMap<String, DeclaredImage> = BTreeMap::new();
    for (reference, origin) in found {
        if ignored.contains(&reference) {
            continue;
        }
        by_name
            .entry(reference.to_string())
            .or_insert_with(|| DeclaredImage {
                reference,
                origins: Vec::new(),
            })
            .origins
            .push(origin);
    }
    Ok(by_name
        .into_values()
        .map(|mut image| {
            image.origins.sort();
            image.origins.dedup();
            image
        })
        .collect())
}

fn read_list(path: &Path, shown: &str) -> Result<Vec<(ImageName, Origin)>, DeclareError> {
    let text = fs::read_to_string(path).map_err(|source| DeclareError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_list(&text, shown)
}

/// The references of an image list: one a line; `#` starts a comment, blank lines are skipped.
pub fn parse_list(text: &str, file: &str) -> Result<Vec<(ImageName, Origin)>, DeclareError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let name = ImageName::parse(line).map_err(|source| DeclareError::ListLine {
            file: file.to_string(),
            line: i + 1,
            source,
        })?;
        out.push((
            name,
            Origin {
                file: file.to_string(),
                line: i + 1,
                app: None,
            },
        ));
    }
    Ok(out)
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The YAML files below `dir` (recursively, sorted); none when it does not exist. Helm charts
/// (directories holding `Chart.yaml`) are left out: their templates are not plain YAML.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, DeclareError> {
    Ok(app_files(dir)?.into_iter().filter(|f| is_yaml(f)).collect())
}

/// Every regular file at `path` (itself when a file), skipping helm chart directories.
fn app_files(path: &Path) -> Result<Vec<PathBuf>, DeclareError> {
    let mut out = Vec::new();
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(out);
    }
    if !path.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if dir.join("Chart.yaml").is_file() {
            continue;
        }
        let entries = fs::read_dir(&dir).map_err(|source| DeclareError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| DeclareError::Io {
                path: dir.clone(),
                source,
            })?;
            let kind = entry.file_type().map_err(|source| DeclareError::Io {
                path: entry.path(),
                source,
            })?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn scan_manifest_file(
    path: &Path,
    shown: &str,
    app: Option<&str>,
) -> Result<Vec<(ImageName, Origin)>, DeclareError> {
    let text = fs::read_to_string(path).map_err(|source| DeclareError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    scan_manifests(&text, shown, app)
}

/// Kinds whose pod template sits at a known path, as key paths from the document root.
const POD_SPEC_PATHS: &[(&str, &[&str])] = &[
    ("Pod", &["spec"]),
    ("Deployment", &["spec", "template", "spec"]),
    ("StatefulSet", &["spec", "template", "spec"]),
    ("DaemonSet", &["spec", "template", "spec"]),
    ("ReplicaSet", &["spec", "template", "spec"]),
    ("ReplicationController", &["spec", "template", "spec"]),
    ("Job", &["spec", "template", "spec"]),
    (
        "CronJob",
        &["spec", "jobTemplate", "spec", "template", "spec"],
    ),
];

const CONTAINER_LISTS: &[&str] = &["initContainers", "containers", "ephemeralContainers"];

/// The container images of the pod specs in a (multi-document) YAML text, each with its line.
pub fn scan_manifests(
    text: &str,
    file: &str,
    app: Option<&str>,
) -> Result<Vec<(ImageName, Origin)>, DeclareError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    // Documents split on `---` lines, keeping where each starts for line numbers.
    let mut starts = vec![0usize];
    for (i, l) in lines.iter().enumerate() {
        if l.trim_end() == "---" || l.starts_with("--- ") {
            starts.push(i + 1);
        }
    }
    starts.push(lines.len() + 1);
    for pair in starts.windows(2) {
        let (first, end) = (pair[0], pair[1].saturating_sub(1).min(lines.len()));
        if first >= end {
            continue;
        }
        let doc_lines = &lines[first..end];
        let doc = doc_lines.join("\n");
        let value: Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = first + e.location().map_or(1, |l| l.line());
                return Err(DeclareError::Yaml {
                    file: file.to_string(),
                    line,
                    reason: e.to_string(),
                });
            }
        };
        let mut used = vec![false; doc_lines.len()];
        let mut images = Vec::new();
        pod_images(&value, &mut images);
        for image in images {
            let at = find_line(doc_lines, &image, &mut used).map_or(first + 1, |i| first + i + 1);
            let text = match &image {
                Value::String(s) => s.clone(),
                other => {
                    return Err(DeclareError::ManifestImage {
                        file: file.to_string(),
                        line: at,
                        reason: format!("it is {other:?}, not a string"),
                    })
                }
            };
            let name = ImageName::parse(&text).map_err(|e| DeclareError::ManifestImage {
                file: file.to_string(),
                line: at,
                reason: e.to_string(),
            })?;
            out.push((
                name,
                Origin {
                    file: file.to_string(),
                    line: at,
                    app: app.map(str::to_string),
                },
            ));
        }
    }
    Ok(out)
}

/// The `image` values of every container of the pod specs in `doc` (a `List` is walked).
fn pod_images(doc: &Value, out: &mut Vec<Value>) {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = doc.get("items").and_then(Value::as_sequence) {
            for item in items {
                pod_images(item, out);
            }
        }
        return;
    }
    let Some((_, path)) = POD_SPEC_PATHS.iter().find(|(k, _)| *k == kind) else {
        return;
    };
    let mut spec = Some(doc);
    for key in *path {
        spec = spec.and_then(|v| v.get(*key));
    }
    let Some(spec) = spec else { return };
    for list in CONTAINER_LISTS {
        for container in spec
            .get(*list)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let Some(image) = container.get("image") {
                out.push(image.clone());
            }
        }
    }
}

/// The first line not yet used that reads `image: VALUE` (optionally as a list item, quoted).
fn find_line(lines: &[&str], image: &Value, used: &mut [bool]) -> Option<usize> {
    let wanted = match image {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    };
    let found = lines.iter().enumerate().position(|(i, line)| {
        if used[i] {
            return false;
        }
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(rest) = t.strip_prefix("image:") else {
            return false;
        };
        let value = rest.split(" #").next().unwrap_or("").trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        value == wanted || wanted.is_empty()
    })?;
    used[found] = true;
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_skip_comments_and_blanks_and_name_the_bad_line() {
        let text = "# images\n\nnginx:1.25\n  quay.io/coreos/etcd:v3.5  # etcd\n";
        let found = parse_list(text, "manifests/imageList").unwrap();
        let names: Vec<String> = found.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            names,
            ["docker.io/library/nginx:1.25", "quay.io/coreos/etcd:v3.5"]
        );
        assert_eq!(found[1].1.line, 4);
        let err = parse_list("nginx:1\nNot A Reference\n", "list").unwrap_err();
        assert!(err.to_string().starts_with("list:2: "), "{err}");
    }

    #[test]
    fn pod_specs_of_every_workload_kind_are_read_with_their_lines() {
        let text = r#"apiVersion: apps/v1
kind: Deployment
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: "busybox:1.36"
      containers:
        - name: web
          image: nginx:1.25
---
kind: CronJob
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - image: 127.0.0.1:5000/library/foo:1
---
kind: ConfigMap
data:
  image: not-a-pod:1
---
kind: Pod
spec:
  ephemeralContainers:
    - image: quay.io/x/debug@sha256:0000000000000000000000000000000000000000000000000000000000000000
"#;
        let found = scan_manifests(text, "manifests/app.yaml", Some("web")).unwrap();
        let seen: Vec<(String, usize)> =
            found.iter().map(|(n, o)| (n.to_string(), o.line)).collect();
        assert_eq!(
            seen,
            [
                ("docker.io/library/busybox:1.36".to_string(), 8),
                ("docker.io/library/nginx:1.25".to_string(), 11),
                ("127.0.0.1:5000/library/foo:1".to_string(), 20),
                (
                    "quay.io/x/debug@sha256:0000000000000000000000000000000000000000000000000000000000000000"
                        .to_string(),
                    29
                ),
            ]
        );
        assert_eq!(found[0].1.app.as_deref(), Some("web"));
    }

    #[test]
    fn a_bad_manifest_image_and_bad_yaml_name_file_and_line() {
        let err = scan_manifests(
            "kind: Pod\nspec:\n  containers:\n  - image: Bad_Name\n",
            "m.yaml",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("m.yaml:4: "), "{err}");
        let err = scan_manifests("kind: Pod\n---\nspec: [unclosed\n", "m.yaml", None).unwrap_err();
        assert!(err.to_string().starts_with("m.yaml:"), "{err}");
    }
}
