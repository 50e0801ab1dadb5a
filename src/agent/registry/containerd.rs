//! containerd's side of the cluster registry: the `hosts.toml` that sends every pull of one
//! registry's images to the cluster's registry hosts (in order, each a failover for the one
//! before, never the registry itself), and reading containerd's `config.toml` for the CRI
//! registry `config_path` without which containerd ignores `hosts.toml`. It writes only the
//! one `hosts.toml` it is asked for and never restarts containerd (it rereads `hosts.toml` on
//! every pull).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::container_images::ImageName;
use crate::reference::ReferenceError;

/// containerd's configuration file when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
/// Where Debian and containerd's documentation keep `hosts.toml` files.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d";

/// Why containerd's configuration could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("{0:?} is not a registry name for containerd (a host[:port] or _default)")]
    BadRegistry(String),
    #[error("{0:?} is not a registry endpoint (http:// or https://, a host[:port], no path)")]
    BadEndpoint(String),
    #[error("{0:?} is not a path prefix (repository components separated by '/')")]
    BadPrefix(String),
    #[error("a mirror needs at least one endpoint")]
    NoEndpoint,
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("reading {path}: {source}; containerd must be configured with a config_path for the cluster's registry (add `config_path = \"{DEFAULT_CONFIG_PATH}\"` under [{section}])", section = CRI_V2_SECTION)]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{path} sets no CRI registry config_path, so containerd ignores hosts.toml: add `config_path = \"{DEFAULT_CONFIG_PATH}\"` under [{section}] and restart containerd")]
    NoConfigPath {
        path: PathBuf,
        section: &'static str,
    },
}

/// How every `hosts.toml` sealer writes begins.
const MARK: &str = "# Written by sealer";

/// The section holding `config_path` in a version 2 config (containerd 1.5 to 1.7).
const CRI_V2_SECTION: &str = "plugins.\"io.containerd.grpc.v1.cri\".registry";
/// The same in a version 3 config (containerd 2).
const CRI_V3_SECTION: &str = "plugins.\"io.containerd.cri.v1.images\".registry";

/// Where pulls of one registry's images go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The registry whose images are served (`docker.io`, `quay.io`, `_default`): the
    /// directory under `config_path`.
    pub registry: String,
    /// `http://HOST:PORT` of each registry host, in the order containerd tries them.
    pub endpoints: Vec<String>,
    /// In an existing registry, the repository path the images of `registry` live under
    /// (`PREFIX/…`, e.g. `mirror/docker.io`), reached with `override_path`.
    pub prefix: Option<String>,
}

impl Mirror {
    /// Checks every part; what [`Mirror::hosts_toml`] writes is then well-formed TOML.
    pub fn new(
        registry: &str,
        endpoints: &[String],
        prefix: Option<&str>,
    ) -> Result<Mirror, ContainerdError> {
        check_registry(registry)?;
        if endpoints.is_empty() {
            return Err(ContainerdError::NoEndpoint);
        }
        for endpoint in endpoints {
            let host = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if !host.is_some_and(host_chars) {
                return Err(ContainerdError::BadEndpoint(endpoint.clone()));
            }
        }
        if let Some(prefix) = prefix {
            let valid = prefix.split('/').all(|c| {
                c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            });
            if !valid {
                return Err(ContainerdError::BadPrefix(prefix.to_string()));
            }
        }
        Ok(Mirror {
            registry: registry.to_string(),
            endpoints: endpoints.to_vec(),
            prefix: prefix.map(str::to_string),
        })
    }

    /// The `hosts.toml` text: `server` is the first endpoint (so nothing falls back to the
    /// registry itself), then one `[host]` per endpoint, pull and resolve only, in order.
    pub fn hosts_toml(&self) -> String {
        let mut text = format!(
            "{MARK}: pulls of {} images go to the cluster's registry hosts, in this\n\
             # order, and never to {} itself.\nserver = \"{}\"\n",
            self.registry, self.registry, self.endpoints[0]
        );
        for endpoint in &self.endpoints {
            match &self.prefix {
                None => text.push_str(&format!(
                    "\n[host.\"{endpoint}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                )),
                Some(prefix) => text.push_str(&format!(
                    "\n[host.\"{endpoint}/v2/{prefix}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
                )),
            }
        }
        text
    }

    /// `config_path/REGISTRY/hosts.toml`.
    pub fn file(&self, config_path: &Path) -> PathBuf {
        config_path.join(&self.registry).join("hosts.toml")
    }

    /// Writes [`Mirror::hosts_toml`] under `config_path` (a temporary file renamed into
    /// place). Returns whether the file changed; the same text again writes nothing.
    pub fn write(&self, config_path: &Path) -> Result<bool, ContainerdError> {
        let file = self.file(config_path);
        let text = self.hosts_toml();
        if fs::read(&file).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(false);
        }
        let write_err = |source| ContainerdError::Write {
            path: file.clone(),
            source,
        };
        let dir = file.parent().unwrap_or(config_path);
        fs::create_dir_all(dir).map_err(write_err)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".hosts.toml.")
            .tempfile_in(dir)
            .map_err(write_err)?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(write_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
                .map_err(write_err)?;
        }
        tmp.persist(&file).map_err(|e| write_err(e.error))?;
        Ok(true)
    }
}

/// A host name, address or `[v6]`, with an optional port: nothing that leaves a directory or a
/// TOML string.
fn host_chars(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '[')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

fn check_registry(registry: &str) -> Result<(), ContainerdError> {
    if registry == "_default" || host_chars(registry) {
        Ok(())
    } else {
        Err(ContainerdError::BadRegistry(registry.to_string()))
    }
}

/// What [`remove_mirror`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// There was no `hosts.toml` for the registry.
    Absent,
    /// The `hosts.toml` there was not written by sealer and is left alone.
    NotOurs,
}

/// Removes `config_path/REGISTRY/hosts.toml` when sealer wrote it (its first line says so),
/// and the registry's directory when that leaves it empty.
pub fn remove_mirror(config_path: &Path, registry: &str) -> Result<Removal, ContainerdError> {
    check_registry(registry)?;
    let dir = config_path.join(registry);
    let file = dir.join("hosts.toml");
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Absent),
        Err(source) => return Err(ContainerdError::Read { path: file, source }),
    };
    if !text.starts_with(MARK) {
        return Ok(Removal::NotOurs);
    }
    fs::remove_file(&file).map_err(|source| ContainerdError::Write {
        path: file.clone(),
        source,
    })?;
    let _ = fs::remove_dir(&dir);
    Ok(Removal::Removed)
}

/// The registries whose `hosts.toml` must point at the cluster's registry for `references`
/// (full references as the images layer names them): each one's registry host, `docker.io`
/// for a reference that names none.
pub fn registries_of<'a>(
    references: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeSet<String>, ReferenceError> {
    references
        .into_iter()
        .map(|r| ImageName::parse(r).map(|name| name.registry))
        .collect()
}

/// The CRI registry `config_path` set in containerd's `config` file (version 2 or 3). An
/// absent file, key or empty value is an error naming the file and the line to add.
pub fn config_path(config: &Path) -> Result<PathBuf, ContainerdError> {
    let text = fs::read_to_string(config).map_err(|source| ContainerdError::Read {
        path: config.to_path_buf(),
        source,
    })?;
    config_path_in(config, &text)
}

/// The CRI registry `config_path` set in `text`, the content of containerd's `config` file
/// (as preflight reads it from a host before anything is sent there).
pub fn config_path_in(config: &Path, text: &str) -> Result<PathBuf, ContainerdError> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| ContainerdError::Toml {
        path: config.to_path_buf(),
        message: e.message().to_string(),
    })?;
    let version = doc.get("version").and_then(toml::Value::as_integer);
    let (plugin, section) = if version == Some(3) {
        ("io.containerd.cri.v1.images", CRI_V3_SECTION)
    } else {
        ("io.containerd.grpc.v1.cri", CRI_V2_SECTION)
    };
    let found = doc
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("registry"))
        .and_then(|r| r.get("config_path"))
        .and_then(toml::Value::as_str)
        .filter(|p| !p.is_empty());
    match found {
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(ContainerdError::NoConfigPath {
            path: config.to_path_buf(),
            section,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hosts_toml_lists_every_endpoint_in_order_and_parses_as_toml() {
        let m = Mirror::new(
            "docker.io",
            &endpoints(&["http://10.0.0.1:5000", "http://10.0.0.2:5000"]),
            None,
        )
        .unwrap();
        let text = m.hosts_toml();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["server"].as_str(), Some("http://10.0.0.1:5000"));
        let first = text.find("[host.\"http://10.0.0.1:5000\"]").unwrap();
        let second = text.find("[host.\"http://10.0.0.2:5000\"]").unwrap();
        assert!(first < second);
        let host = &doc["host"]["http://10.0.0.2:5000"];
        assert_eq!(
            host["capabilities"].as_array().unwrap().len(),
            2,
            "pull and resolve only"
        );
    }

    #[test]
    fn a_path_prefix_gives_override_path_hosts() {
        let m = Mirror::new(
            "quay.io",
            &endpoints(&["https://harbor.example:443"]),
            Some("mirror/quay.io"),
        )
        .unwrap();
        let doc: toml::Table = toml::from_str(&m.hosts_toml()).unwrap();
        let host = &doc["host"]["https://harbor.example:443/v2/mirror/quay.io"];
        assert_eq!(host["override_path"].as_bool(), Some(true));
    }

    #[test]
    fn writing_twice_changes_nothing_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::new("docker.io", &endpoints(&["http://127.0.0.1:5000"]), None).unwrap();
        assert!(m.write(dir.path()).unwrap());
        assert!(!m.write(dir.path()).unwrap());
        let written = fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
        assert_eq!(written, m.hosts_toml());
    }

    #[test]
    fn only_a_hosts_toml_sealer_wrote_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::new("quay.io", &endpoints(&["http://127.0.0.1:5000"]), None).unwrap();
        m.write(dir.path()).unwrap();
        assert_eq!(
            remove_mirror(dir.path(), "quay.io").unwrap(),
            Removal::Removed
        );
        assert!(!dir.path().join("quay.io").exists());
        assert_eq!(
            remove_mirror(dir.path(), "quay.io").unwrap(),
            Removal::Absent
        );
        let theirs = dir.path().join("docker.io/hosts.toml");
        fs::create_dir_all(theirs.parent().unwrap()).unwrap();
        fs::write(&theirs, "server = \"https://mirror.example\"\n").unwrap();
        assert_eq!(
            remove_mirror(dir.path(), "docker.io").unwrap(),
            Removal::NotOurs
        );
        assert!(theirs.exists());
        assert!(remove_mirror(dir.path(), "..").is_err());
    }

    #[test]
    fn what_would_break_the_toml_or_escape_the_directory_is_refused() {
        let one = endpoints(&["http://h:1"]);
        assert!(Mirror::new("../etc", &one, None).is_err());
        assert!(Mirror::new("..", &one, None).is_err());
        assert!(Mirror::new("docker.io\"]", &one, None).is_err());
        assert!(Mirror::new("docker.io", &endpoints(&["ftp://h"]), None).is_err());
        assert!(Mirror::new("docker.io", &endpoints(&["http://h/x\""]), None).is_err());
        assert!(Mirror::new("docker.io", &[], None).is_err());
        assert!(Mirror::new("docker.io", &one, Some("../x")).is_err());
        assert!(Mirror::new("_default", &one, Some("a/b")).is_ok());
    }

    #[test]
    fn each_registry_named_by_the_references_needs_one_hosts_toml() {
        let found = registries_of([
            "docker.io/library/nginx:1.25",
            "nginx:1.25",
            "registry-1.docker.io/library/redis:7",
            "quay.io/coreos/etcd:v3.5",
            "127.0.0.1:5000/library/foo@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ])
        .unwrap();
        let expected: BTreeSet<String> = ["127.0.0.1:5000", "docker.io", "quay.io"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(found, expected);
        assert!(registries_of(["not a reference"]).is_err());
    }

    #[test]
    fn config_path_is_read_from_a_version_2_or_3_config_and_its_absence_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        fs::write(
            &file,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
        )
        .unwrap();
        assert_eq!(
            config_path(&file).unwrap(),
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
        fs::write(
            &file,
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/x'\n",
        )
        .unwrap();
        assert_eq!(config_path(&file).unwrap(), PathBuf::from("/x"));
        fs::write(
            &file,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n",
        )
        .unwrap();
        let err = config_path(&file).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(
            err.contains("config_path = \"/etc/containerd/certs.d\""),
            "{err}"
        );
        assert!(err.contains("io.containerd.grpc.v1.cri"), "{err}");
        let missing = config_path(&dir.path().join("none.toml"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("none.toml"), "{missing}");
    }
}
