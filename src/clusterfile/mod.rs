//! Clusterfile: what to install where, read once and validated at the boundary.
//!
//! Owns the Clusterfile format (multi-document YAML with sealer's `Cluster`, `Config` and
//! `Plugin` kinds in their old and new apiVersions), the `sealer run` host flags that build the
//! same model ([`from_flags`]), the one host-list parser and the per-host environment (re-exporting the
//! shell quoting, [`Secret`] and [`HostKeyPin`] it shares with the transport). The rest of the code sees only the resolved
//! [`Cluster`]; a bad file is refused here with the document (index and kind) and field named.
//! It does no network or remote work and never prints a password.

mod documents;
mod env;
mod flags;
mod hostlist;
mod merge;
mod model;
mod resolve;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

pub use crate::host_key::HostKeyPinError;
pub use crate::shell::{export_line, export_script, is_env_name, shell_quote, InvalidEnvName};
pub use env::host_env;
pub use flags::{from_flags, ClusterFlags};
pub use hostlist::{parse_host_item, parse_host_list, HostListError, MAX_RANGE_LEN};
pub use merge::{merge_value, merge_yaml_documents, MergeError};
pub use model::{
    Bastion, Cluster, ClusterRegistry, Config, ConfigMergeError, ConfigStrategy, ExternalRegistry,
    Host, HostKeyPin, HostSelector, OpaqueDocument, Phase, Plugin, PluginKind, Secret, SshConfig,
    DEFAULT_CLUSTER_NAME, DEFAULT_DATA_ROOT, DEFAULT_REGISTRY_PORT, DEFAULT_SSH_PORT,
    DEFAULT_SSH_USER,
};

use documents::{ClusterSpecV1, ClusterSpecV2, ConfigSpec, Document, PluginSpec};

/// Which document an error is about: 1-based index, kind, and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    pub index: usize,
    pub kind: String,
    pub line: Option<usize>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} ({}", self.index, self.kind)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        f.write_str(")")
    }
}

/// Why a Clusterfile or a set of host flags was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterfileError {
    #[error("reading Clusterfile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Clusterfile {path}: {inner}")]
    InFile {
        path: PathBuf,
        inner: Box<ClusterfileError>,
    },
    #[error("invalid YAML{}: {message}", location(*line, *column))]
    Yaml {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A field has the wrong type, an unknown name, or a value that cannot be used.
    #[error("{doc}: {field}: {message}")]
    Field {
        doc: DocumentRef,
        field: String,
        message: String,
    },
    /// Valid sealer input using a feature this installer does not have.
    #[error("{doc}: {feature} is not supported: {hint}")]
    Unsupported {
        doc: DocumentRef,
        feature: String,
        hint: String,
    },
    #[error("the Clusterfile has no Cluster document; add one with kind: Cluster and spec.hosts")]
    NoCluster,
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

impl ClusterfileError {
    /// The feature named by an [`ClusterfileError::Unsupported`] error, looking through `InFile`.
    pub fn unsupported_feature(&self) -> Option<&str> {
        match self {
            ClusterfileError::Unsupported { feature, .. } => Some(feature),
            ClusterfileError::InFile { inner, .. } => inner.unsupported_feature(),
            _ => None,
        }
    }
}

/// A parsed Clusterfile: the resolved cluster when the file has a `Cluster` document (with the
/// file's Configs and Plugins attached), the Configs and Plugins on their own (a plugins-only
/// file from an image's `plugins/` is valid), the documents kept but unused, and notes for the
/// user about what was ignored.
#[derive(Debug, Clone)]
pub struct Clusterfile {
    pub cluster: Option<Cluster>,
    pub configs: Vec<Config>,
    pub plugins: Vec<Plugin>,
    pub opaque: Vec<OpaqueDocument>,
    pub notes: Vec<String>,
}

impl Clusterfile {
    /// Reads and validates the file at `path`; errors name the file.
    pub fn load(path: &Path) -> Result<Clusterfile, ClusterfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Clusterfile::parse(&text).map_err(|inner| ClusterfileError::InFile {
            path: path.to_path_buf(),
            inner: Box::new(inner),
        })
    }

    /// Parses and validates Clusterfile text.
    pub fn parse(text: &str) -> Result<Clusterfile, ClusterfileError> {
        parse(text)
    }

    /// The cluster, or [`ClusterfileError::NoCluster`] for a file without a `Cluster` document.
    pub fn into_cluster(self) -> Result<Cluster, ClusterfileError> {
        self.cluster.ok_or(ClusterfileError::NoCluster)
    }
}

/// Loads the Clusterfile at `path` and returns its cluster.
pub fn load_cluster(path: &Path) -> Result<Cluster, ClusterfileError> {
    Clusterfile::load(path)?.into_cluster()
}

/// apiVersions of the hosts form of `Cluster`.
pub const CLUSTER_V2_API_VERSIONS: &[&str] = &[
    "sealer.io/v2",
    "sealer.cloud/v2",
    "sealer.aliyun.com/v2alpha1",
    "cluster.sealer.cool/v2",
];
/// apiVersions of the masters/nodes form of `Cluster`.
pub const CLUSTER_V1_API_VERSIONS: &[&str] = &[
    "sealer.aliyun.com/v1alpha1",
    "zlink.aliyun.com/v1alpha1",
    "sealer.io/v1",
];
/// Kinds kept as opaque documents: the installer does not run kubeadm or a kubelet.
const OPAQUE_KINDS: &[&str] = &[
    "KubeadmConfig",
    "InitConfiguration",
    "ClusterConfiguration",
    "JoinConfiguration",
    "KubeletConfiguration",
    "KubeProxyConfiguration",
    "Application",
];

#[derive(Debug, Clone, Copy)]
enum Shape {
    Empty,
    ClusterV2,
    ClusterV1,
    Config,
    Plugin,
    Opaque,
}

pub(crate) fn yaml_error(error: &serde_yaml::Error, text: &str) -> ClusterfileError {
    let location = error.location();
    let mut message = error.to_string();
    // serde_yaml appends "at line N column M"; the variant prints the location itself.
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    let line_text = location
        .as_ref()
        .and_then(|l| text.lines().nth(l.line().saturating_sub(1)))
        .unwrap_or("");
    let value = line_text
        .split_once(": ")
        .map(|(_, v)| v.trim_start())
        .or_else(|| line_text.trim_start().strip_prefix("- "))
        .unwrap_or("");
    if message.contains("unknown anchor") || value.starts_with(['*', '&']) {
        message.push_str(
            " (a value starting with `*` or `&` is YAML alias/anchor syntax; quote it, e.g. passwd: '******')",
        );
    }
    ClusterfileError::Yaml {
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message,
    }
}

/// Lines (1-based) where each non-empty document starts, found by splitting at `---` lines;
/// used only to point the user at a document, so it is a best effort.
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut current: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            starts.extend(current.take());
            continue;
        }
        let t = line.trim_start();
        let content = !t.is_empty() && !t.starts_with('#') && !line.starts_with("...");
        if current.is_none() && content {
            current = Some(n + 1);
        }
    }
    starts.extend(current);
    starts
}

fn parse(text: &str) -> Result<Clusterfile, ClusterfileError> {
    // Pass 1: every document as a generic value, to learn its kind.
    let mut values = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        values.push(Value::deserialize(doc).map_err(|e| yaml_error(&e, text))?);
    }
    let mut starts = document_start_lines(text);
    if starts.len() != values.iter().filter(|v| !v.is_null()).count() {
        starts.clear(); // the line scan disagrees with the parser; name documents by index only
    }
    let mut starts = starts.into_iter();
    let mut shapes = Vec::new();
    let mut refs = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let index = i + 1;
        let line = if value.is_null() { None } else { starts.next() };
        let unnamed = DocumentRef {
            index,
            kind: "?".into(),
            line,
        };
        let (shape, kind) = match value {
            Value::Null => (Shape::Empty, String::new()),
            Value::Mapping(map) => {
                let kind = match map.get("kind") {
                    Some(Value::String(kind)) => kind.clone(),
                    _ => return Err(ClusterfileError::Field {
                        doc: unnamed,
                        field: "kind".into(),
                        message:
                            "missing; every document needs `kind:` (Cluster, Config, Plugin, ...)"
                                .into(),
                    }),
                };
                let doc = DocumentRef {
                    index,
                    kind: kind.clone(),
                    line,
                };
                let api = map.get("apiVersion").and_then(Value::as_str);
                (shape_of(&doc, api)?, kind)
            }
            _ => {
                return Err(ClusterfileError::Field {
                    doc: unnamed,
                    field: "(document)".into(),
                    message: "expected a mapping with apiVersion, kind, metadata and spec".into(),
                })
            }
        };
        shapes.push(shape);
        refs.push(DocumentRef { index, kind, line });
    }

    // Pass 2: each document into its typed shape, so errors carry the field path.
    let mut out = resolve::Collected::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let (Some(shape), Some(doc_ref)) = (shapes.get(i), refs.get(i)) else {
            break;
        };
        let schema = |e: serde_yaml::Error| schema_error(doc_ref, &e);
        match shape {
            Shape::Empty => {}
            Shape::ClusterV2 => {
                let d = Document::<ClusterSpecV2>::deserialize(doc).map_err(schema)?;
                out.cluster_v2(doc_ref, d)?;
            }
            Shape::ClusterV1 => {
                let d = Document::<ClusterSpecV1>::deserialize(doc).map_err(schema)?;
                out.cluster_v1(doc_ref, d)?;
            }
            Shape::Config => {
                let d = Document::<ConfigSpec>::deserialize(doc).map_err(schema)?;
                out.config(doc_ref, d)?;
            }
            Shape::Plugin => {
                let d = Document::<PluginSpec>::deserialize(doc).map_err(schema)?;
                out.plugin(doc_ref, d)?;
            }
            Shape::Opaque => {
                let d = Document::<serde::de::IgnoredAny>::deserialize(doc).map_err(schema)?;
                out.opaque(doc_ref, d);
            }
        }
    }
    out.finish()
}

fn schema_error(doc: &DocumentRef, error: &serde_yaml::Error) -> ClusterfileError {
    let mut message = error.to_string();
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    // serde_yaml prefixes the path (`spec.hosts[0].ssh: ...`); split it into the field.
    let (field, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => ("(document)".to_string(), message),
    };
    let at = error
        .location()
        .map(|l| format!(" (line {})", l.line()))
        .unwrap_or_default();
    ClusterfileError::Field {
        doc: doc.clone(),
        field,
        message: format!("{message}{at}"),
    }
}

fn shape_of(doc: &DocumentRef, api: Option<&str>) -> Result<Shape, ClusterfileError> {
    let kind = doc.kind.clone();
    let doc = doc.clone();
    Ok(match kind.as_str() {
        "Cluster" => match api {
            Some(a) if CLUSTER_V2_API_VERSIONS.contains(&a) => Shape::ClusterV2,
            Some(a) if CLUSTER_V1_API_VERSIONS.contains(&a) => Shape::ClusterV1,
            Some(a) => {
                return Err(ClusterfileError::Field {
                    doc,
                    field: "apiVersion".into(),
                    message: format!(
                        "`{a}` is not a Cluster version; use one of {}",
                        CLUSTER_V2_API_VERSIONS
                            .iter()
                            .chain(CLUSTER_V1_API_VERSIONS)
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
            None => {
                return Err(ClusterfileError::Field {
                    doc,
                    field: "apiVersion".into(),
                    message: "missing; a Cluster needs `apiVersion: sealer.io/v2`".into(),
                })
            }
        },
        "Config" => Shape::Config,
        "Plugin" => Shape::Plugin,
        "Infra" => {
            return Err(ClusterfileError::Unsupported {
                doc,
                feature: "kind Infra".into(),
                hint: "this installer does not create cloud machines; list existing hosts under spec.hosts".into(),
            })
        }
        k if OPAQUE_KINDS.contains(&k) => Shape::Opaque,
        other => {
            return Err(ClusterfileError::Field {
                doc,
                field: "kind".into(),
                message: format!(
                    "unknown kind `{other}`; known kinds: Cluster, Config, Plugin, {}",
                    OPAQUE_KINDS.join(", ")
                ),
            })
        }
    })
}

#[cfg(test)]
mod tests;
