//! What this machine knows about the clusters it changed: under `$SEALER_ROOT/clusters/NAME/`, a
//! lock that one command at a time holds while it changes the cluster (`lock`), and the record
//! of what was installed there (`record.json`: the hosts and roles, the image of every install
//! in order, when, and how it ended).
//!
//! The lock is an advisory `flock` on `lock`, so the kernel releases it when its holder dies,
//! even by `kill -9`. The holder writes who it is (host, pid, command, since when) into the
//! file and empties it when it finishes; a lock found free with a holder still written in it
//! was left by a run that did not finish, and the next run takes it over and says so. This
//! module knows nothing of hosts, SSH or the install engine.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs2::FileExt;

/// Who holds, or held, a cluster's lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// This machine's host name.
    pub host: String,
    pub pid: u32,
    /// What it is doing, e.g. `sealer run etcd:v1`.
    pub command: String,
    /// Seconds since the epoch when it took the lock.
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (pid {} on {}, since {})",
            self.command,
            self.pid,
            self.host,
            crate::builder::rfc3339(self.since)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterStateError {
    #[error("cluster {cluster} is being changed by {holder}; wait until it finishes, or stop it and run again")]
    Locked { cluster: String, holder: Holder },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the record of cluster {cluster} at {} is unreadable: {source}; move it aside to start a new record", path.display())]
    Record {
        cluster: String,
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ClusterStateError {
    let path = path.to_path_buf();
    move |source| ClusterStateError::Io { what, path, source }
}

/// The directory of cluster `name` under the state root (`$SEALER_ROOT`).
pub fn cluster_dir(root: &Path, name: &str) -> PathBuf {
    root.join("clusters").join(name)
}

/// A held cluster lock; dropping it releases the lock and clears the holder.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
    holder: Holder,
}

impl ClusterLock {
    /// Who holds it: this process.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        // A clean finish leaves an empty file; the kernel drops the flock when the file closes.
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}

/// Takes the lock of cluster `name` for `command`, at once or not at all. Returns the lock and,
/// when the last holder did not finish (its process is gone), who that was.
pub fn lock(
    root: &Path,
    name: &str,
    command: &str,
) -> Result<(ClusterLock, Option<Holder>), ClusterStateError> {
    let dir = cluster_dir(root, name);
    fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error("opening", &path))?;
    if let Err(e) = file.try_lock_exclusive() {
        if e.kind() != io::ErrorKind::WouldBlock && e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(ClusterStateError::Io {
                what: "locking",
                path,
                source: e,
            });
        }
        let holder = read_holder(&mut file).unwrap_or_else(|| Holder {
            host: "?".into(),
            pid: 0,
            command: "another sealer command".into(),
            since: 0,
        });
        return Err(ClusterStateError::Locked {
            cluster: name.to_string(),
            holder,
        });
    }
    let stale = read_holder(&mut file);
    let me = Holder {
        host: host_name(),
        pid: std::process::id(),
        command: command.to_string(),
        since: now(),
    };
    let text = serde_json::to_vec(&me).unwrap_or_default();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(&text))
        .and_then(|()| file.sync_data())
        .map_err(io_error("writing", &path))?;
    Ok((ClusterLock { file, holder: me }, stale))
}

/// Who holds the lock of cluster `name` now, if anyone (read without taking it).
pub fn holder(root: &Path, name: &str) -> Option<Holder> {
    let path = cluster_dir(root, name).join("lock");
    let mut file = OpenOptions::new().read(true).write(true).open(path).ok()?;
    if file.try_lock_exclusive().is_ok() {
        let _ = FileExt::unlock(&file);
        return None;
    }
    read_holder(&mut file)
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The action of an [`InstallRecord`] that installed an application image beside the base image.
pub const APP_INSTALL: &str = "install app";

/// One install of an image onto the cluster, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallRecord {
    /// `install`, `join`, `delete` or `delete --all`.
    #[serde(default = "install_action")]
    pub action: String,
    pub image: String,
    /// The payload's identity (what each host records as installed).
    pub payload: String,
    pub started: u64,
    pub finished: u64,
    /// Every host and cluster stage finished.
    pub ok: bool,
    /// Per host: address, roles, and how it ended (`installed`, `up to date`, `failed: …`).
    pub hosts: Vec<HostRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    pub ip: String,
    pub roles: Vec<String>,
    /// The host's OS and kernel, as preflight read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub result: String,
}

fn install_action() -> String {
    "install".into()
}

/// What this machine knows of a cluster: every install, oldest first, and the Clusterfile of
/// the last one when it came from a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    #[serde(default)]
    pub installs: Vec<InstallRecord>,
    #[serde(default)]
    pub clusterfile: Option<String>,
}

impl ClusterRecord {
    /// The record of cluster `name`; empty when there is none yet.
    pub fn load(root: &Path, name: &str) -> Result<ClusterRecord, ClusterStateError> {
        let path = cluster_dir(root, name).join("record.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ClusterStateError::Record {
                    cluster: name.to_string(),
                    path,
                    source,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ClusterRecord {
                name: name.to_string(),
                ..ClusterRecord::default()
            }),
            Err(e) => Err(ClusterStateError::Io {
                what: "reading",
                path,
                source: e,
            }),
        }
    }

    /// Writes the record (a temporary file renamed into place).
    pub fn save(&self, root: &Path) -> Result<(), ClusterStateError> {
        let dir = cluster_dir(root, &self.name);
        fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
        let path = dir.join("record.json");
        let tmp = dir.join(".record.json.tmp");
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        fs::write(&tmp, text).map_err(io_error("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("writing", &path))?;
        // The Clusterfile beside it, for the commands that change the cluster later.
        let file = dir.join("Clusterfile");
        match &self.clusterfile {
            Some(text) => {
                let tmp = dir.join(".Clusterfile.tmp");
                fs::write(&tmp, text).map_err(io_error("writing", &tmp))?;
                fs::rename(&tmp, &file).map_err(io_error("writing", &file))
            }
            None => match fs::remove_file(&file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ClusterStateError::Io {
                    what: "removing",
                    path: file,
                    source: e,
                }),
                _ => Ok(()),
            },
        }
    }

    /// The Clusterfile the record keeps for cluster `name` (see [`ClusterRecord::save`]), if any.
    pub fn clusterfile_path(root: &Path, name: &str) -> Option<PathBuf> {
        let file = cluster_dir(root, name).join("Clusterfile");
        file.is_file().then_some(file)
    }

    /// What `sealer rollback` undoes and goes back to: the current install, and the last
    /// finished one before it of another payload.
    pub fn rollback_target(&self) -> Option<(&InstallRecord, &InstallRecord)> {
        let current = self.current()?;
        let previous = self
            .installs
            .iter()
            .rev()
            .filter(|i| i.ok && matches!(i.action.as_str(), "install" | "rollback"))
            .find(|i| i.payload != current.payload)?;
        Some((current, previous))
    }

    /// The last install or join of the cluster's base image that finished everywhere; none
    /// after a `delete --all`. Application images installed beside it are not it.
    pub fn current(&self) -> Option<&InstallRecord> {
        let last = self
            .installs
            .iter()
            .rev()
            .find(|i| i.ok && i.action != APP_INSTALL)?;
        (last.action != "delete --all").then_some(last)
    }
}

/// `text` (a Clusterfile, one or more YAML documents) without any key that names a secret
/// (`passwd`, `password`, `token`, `secret`, `passphrase`, in any case and position), so the
/// record never holds one; a later command that reads the record gets passwords from its own
/// flags. Text that is not YAML is not kept.
pub fn masked_clusterfile(text: &str) -> String {
    fn mask(value: &mut serde_yaml::Value) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                map.retain(|key, v| {
                    let secret = key.as_str().is_some_and(|k| {
                        let k = k.to_ascii_lowercase();
                        ["passwd", "password", "token", "secret", "passphrase"]
                            .iter()
                            .any(|s| k.contains(s))
                    });
                    !(secret && !v.is_mapping() && !v.is_sequence())
                });
                for (_, v) in map.iter_mut() {
                    mask(v);
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(mask),
            serde_yaml::Value::Tagged(tagged) => mask(&mut tagged.value),
            _ => {}
        }
    }
    let mut out = String::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let Ok(mut value) = <serde_yaml::Value as serde::Deserialize>::deserialize(doc) else {
            return "# (not kept: the Clusterfile is not valid YAML)\n".into();
        };
        mask(&mut value);
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value).unwrap_or_default());
    }
    out
}

/// A Clusterfile (`sealer.io/v2`) describing `cluster`'s name, data root, env, hosts and their
/// SSH user, port and key — never a password — for the record of a cluster given by flags.
pub fn clusterfile_of(cluster: &crate::clusterfile::Cluster) -> String {
    use serde_yaml::{Mapping, Value};
    let text = |s: &str| Value::String(s.to_string());
    let mut spec = Mapping::new();
    spec.insert(
        text("dataRoot"),
        text(&cluster.data_root.display().to_string()),
    );
    if !cluster.env.is_empty() {
        let env = cluster
            .env
            .iter()
            .map(|(k, v)| text(&format!("{k}={v}")))
            .collect();
        spec.insert(text("env"), Value::Sequence(env));
    }
    spec.insert(text("hosts"), hosts_value(cluster));
    let mut metadata = Mapping::new();
    metadata.insert(text("name"), text(&cluster.name));
    let mut doc = Mapping::new();
    doc.insert(text("apiVersion"), text("sealer.io/v2"));
    doc.insert(text("kind"), text("Cluster"));
    doc.insert(text("metadata"), Value::Mapping(metadata));
    doc.insert(text("spec"), Value::Mapping(spec));
    serde_yaml::to_string(&Value::Mapping(doc)).unwrap_or_default()
}

/// `text` (a recorded, masked Clusterfile) with the hosts of its `sealer.io/v2` Cluster
/// document replaced by `cluster`'s members, everything else (Configs, Plugins, env) kept; a
/// Clusterfile in another form is written anew by [`clusterfile_of`].
pub fn with_members(text: &str, cluster: &crate::clusterfile::Cluster) -> String {
    use serde_yaml::Value;
    let mut docs = Vec::new();
    let mut replaced = false;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let Ok(mut value) = <Value as serde::Deserialize>::deserialize(doc) else {
            return clusterfile_of(cluster);
        };
        let is_v2_cluster = value.get("kind").and_then(Value::as_str) == Some("Cluster")
            && value.get("apiVersion").and_then(Value::as_str) == Some("sealer.io/v2");
        if is_v2_cluster {
            if let Some(spec) = value.get_mut("spec").and_then(Value::as_mapping_mut) {
                spec.insert(Value::String("hosts".into()), hosts_value(cluster));
                replaced = true;
            }
        }
        docs.push(value);
    }
    if !replaced {
        return clusterfile_of(cluster);
    }
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap_or_default()))
        .collect()
}

/// The `hosts:` list of a `sealer.io/v2` Cluster for `cluster`'s hosts: address, roles, SSH
/// user, port, key and jump host (never a password).
fn hosts_value(cluster: &crate::clusterfile::Cluster) -> serde_yaml::Value {
    use serde_yaml::{Mapping, Value};
    let text = |s: &str| Value::String(s.to_string());
    let mut hosts = Vec::new();
    for host in &cluster.hosts {
        let mut h = Mapping::new();
        h.insert(
            text("ips"),
            Value::Sequence(vec![text(&host.ip.to_string())]),
        );
        h.insert(
            text("roles"),
            Value::Sequence(host.roles.iter().map(|r| text(r)).collect()),
        );
        let mut ssh = Mapping::new();
        ssh.insert(text("user"), text(&host.ssh.user));
        ssh.insert(text("port"), text(&host.ssh.port.to_string()));
        if let Some(pk) = &host.ssh.private_key {
            ssh.insert(text("pk"), text(&pk.display().to_string()));
        }
        if let Some(bastion) = &host.ssh.bastion {
            // The jump host too, so join, delete and status reach the hosts the same way;
            // its password, like the hosts', is not kept.
            let mut b = Mapping::new();
            b.insert(text("address"), text(&bastion.address.endpoint()));
            b.insert(text("user"), text(&bastion.user));
            if let Some(pk) = &bastion.private_key {
                b.insert(text("pk"), text(&pk.display().to_string()));
            }
            ssh.insert(text("bastion"), Value::Mapping(b));
        }
        h.insert(text("ssh"), Value::Mapping(ssh));
        if !host.env.is_empty() {
            let env = host
                .env
                .iter()
                .map(|(k, v)| text(&format!("{k}={v}")))
                .collect();
            h.insert(text("env"), Value::Sequence(env));
        }
        hosts.push(Value::Mapping(h));
    }
    Value::Sequence(hosts)
}

/// Seconds since the epoch, for records.
pub fn timestamp() -> u64 {
    now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_command() {
        let root = tempfile::tempdir().unwrap();
        let (held, stale) = lock(root.path(), "c1", "sealer run a:1").unwrap();
        assert!(stale.is_none());
        assert_eq!(holder(root.path(), "c1").unwrap().command, "sealer run a:1");
        let err = lock(root.path(), "c1", "sealer run b:1").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sealer run a:1"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        // Another cluster is not affected.
        let (_other, _) = lock(root.path(), "c2", "sealer run b:1").unwrap();
        drop(held);
        assert!(holder(root.path(), "c1").is_none());
        let (_again, stale) = lock(root.path(), "c1", "sealer run b:1").unwrap();
        assert!(stale.is_none(), "a clean release leaves no holder behind");
    }

    #[test]
    fn a_lock_left_by_a_holder_that_died_is_taken_over_and_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = cluster_dir(root.path(), "c1");
        fs::create_dir_all(&dir).unwrap();
        let gone = Holder {
            host: "installer".into(),
            pid: 4242,
            command: "sealer run a:1".into(),
            since: 1,
        };
        fs::write(dir.join("lock"), serde_json::to_vec(&gone).unwrap()).unwrap();
        let (_held, stale) = lock(root.path(), "c1", "sealer run a:1").unwrap();
        assert_eq!(stale, Some(gone));
    }

    #[test]
    fn a_recorded_clusterfile_keeps_no_password() {
        let text = "apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  ssh: {user: root, passwd: hunter2}\n  hosts:\n    - ips: [10.0.0.2]\n      ssh: {pkPasswd: s3cret}\n---\nkind: Config\nspec:\n  data: |\n    token=kept-as-data\n";
        let masked = masked_clusterfile(text);
        assert!(!masked.contains("hunter2"), "{masked}");
        assert!(!masked.contains("s3cret"), "{masked}");
        assert!(masked.contains("10.0.0.2"), "{masked}");
        assert!(masked.contains("token=kept-as-data"), "{masked}");
    }

    #[test]
    fn records_round_trip_and_the_current_install_is_the_last_that_finished() {
        let root = tempfile::tempdir().unwrap();
        let mut record = ClusterRecord::load(root.path(), "c1").unwrap();
        assert!(record.installs.is_empty());
        let install = |image: &str, ok| InstallRecord {
            action: "install".into(),
            image: image.into(),
            payload: "ab".repeat(32),
            started: 1,
            finished: 2,
            ok,
            hosts: vec![],
        };
        record.installs.push(install("a:1", true));
        record.installs.push(install("a:2", false));
        record.save(root.path()).unwrap();
        let back = ClusterRecord::load(root.path(), "c1").unwrap();
        assert_eq!(back, record);
        assert_eq!(back.current().unwrap().image, "a:1");
        fs::write(cluster_dir(root.path(), "c1").join("record.json"), "{").unwrap();
        let err = ClusterRecord::load(root.path(), "c1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("move it aside"), "{err}");
    }
}
