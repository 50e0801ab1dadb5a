//! The resolved cluster the deploy engine consumes: hosts with addresses, roles and final SSH
//! settings, Configs and Plugins in typed form. Built by the Clusterfile parser or by
//! [`super::from_flags`]; everything here has already been validated, so the engine never
//! re-checks YAML. No I/O happens here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use crate::address::HostAddress;
pub use crate::host_key::HostKeyPin;
pub use crate::secret::Secret;

/// Cluster name used when neither `metadata.name` nor `--cluster-name` gives one.
pub const DEFAULT_CLUSTER_NAME: &str = "my-cluster";
/// Where hosts keep cluster data unless `spec.dataRoot` says otherwise.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/sealer/data";
/// SSH user when none is given.
pub const DEFAULT_SSH_USER: &str = "root";
/// SSH port when none is given.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// Final SSH settings of one host (cluster `spec.ssh` with the host's `ssh` merged over it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    pub user: String,
    pub password: Option<Secret>,
    /// Private key file on the installing machine, as written (`~` not yet expanded).
    pub private_key: Option<PathBuf>,
    pub key_passphrase: Option<Secret>,
    pub port: u16,
    /// The jump host the host is reached through, if any.
    pub bastion: Option<Bastion>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            user: DEFAULT_SSH_USER.to_string(),
            password: None,
            private_key: None,
            key_passphrase: None,
            port: DEFAULT_SSH_PORT,
            bastion: None,
        }
    }
}

/// A jump host (`--bastion user@host[:port]`, `spec.ssh.bastion`, a host's `ssh.bastion`):
/// every SSH connection to the hosts behind it is tunnelled through a session to it, which has
/// its own user and authentication (a key, else a password, else the ssh-agent) and its host
/// key checked against the same `known_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bastion {
    /// Its address; the port is always set (22 unless written).
    pub address: HostAddress,
    pub user: String,
    pub password: Option<Secret>,
    /// Private key file on the installing machine (`~` not yet expanded).
    pub private_key: Option<PathBuf>,
    pub key_passphrase: Option<Secret>,
}

impl Bastion {
    /// Reads `[user@]host[:port]` (host an address, `[v6]` or a name, resolved now); auth is
    /// filled in by the caller.
    pub fn parse(text: &str) -> Result<Bastion, String> {
        let text = text.trim();
        let (user, host) = match text.rsplit_once('@') {
            Some((user, host)) if !user.is_empty() => (user.to_string(), host),
            Some(_) => return Err(format!("`{text}`: the user before `@` is empty")),
            None => (DEFAULT_SSH_USER.to_string(), text),
        };
        let mut address = crate::address::parse_address(host).map_err(|e| e.0)?;
        address.port = Some(address.port.unwrap_or(DEFAULT_SSH_PORT));
        Ok(Bastion {
            address,
            user,
            password: None,
            private_key: None,
            key_passphrase: None,
        })
    }

    /// The port (22 unless written).
    pub fn port(&self) -> u16 {
        self.address.port.unwrap_or(DEFAULT_SSH_PORT)
    }
}

impl fmt::Display for Bastion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.address)
    }
}

/// One machine of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub ip: IpAddr,
    /// The host name `ip` was resolved from, when the host was given by name.
    pub name: Option<String>,
    /// `master`, `node` or custom roles, in the order written.
    pub roles: Vec<String>,
    pub ssh: SshConfig,
    /// Host env as written; [`super::host_env`] merges it over the cluster env.
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// `key[=value]:Effect` (a trailing `-` removes the taint); recorded, not applied by the engine.
    pub taints: Vec<String>,
    pub host_key: Option<HostKeyPin>,
}

impl Host {
    /// A host with one role and nothing else set (how flags and the old ipList form list hosts).
    pub fn with_role(ip: IpAddr, role: &str, ssh: SshConfig) -> Host {
        Host {
            ip,
            name: None,
            roles: vec![role.to_string()],
            ssh,
            env: Vec::new(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            host_key: None,
        }
    }

    /// A host at `address` (its name kept, its port replacing the one in `ssh`).
    pub fn at(address: &HostAddress, role: &str, mut ssh: SshConfig) -> Host {
        if let Some(port) = address.port {
            ssh.port = port;
        }
        let mut host = Host::with_role(address.ip, role, ssh);
        host.name = address.name.clone();
        host
    }

    /// How the host is addressed: `10.0.0.2`, `10.0.0.2:2222`, `node1 (10.0.0.2)`.
    pub fn address(&self) -> HostAddress {
        HostAddress {
            ip: self.ip,
            name: self.name.clone(),
            port: Some(self.ssh.port),
        }
    }

    pub fn is_master(&self) -> bool {
        self.roles.iter().any(|r| r == "master")
    }
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// What to install where: the model the deploy engine consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    /// `spec.image`; `None` when the image comes from the command line.
    pub image: Option<String>,
    pub data_root: PathBuf,
    /// Cluster env as written (`KEY=VALUE` items, repeated keys kept).
    pub env: Vec<(String, String)>,
    /// Hosts in the order written; at least one master, all of one address family, no duplicates.
    pub hosts: Vec<Host>,
    /// `spec.cmd`: replaces the image's CMDs when not empty.
    pub cmds: Vec<String>,
    /// `spec.cmd_args`: `KEY=VALUE` overrides of image ARGs, as written.
    pub cmd_args: Vec<String>,
    /// `spec.appNames`: replaces the launched apps when not empty.
    pub app_names: Vec<String>,
    pub configs: Vec<Config>,
    pub plugins: Vec<Plugin>,
    /// Where the container images of the image are served from in the cluster.
    pub registry: ClusterRegistry,
}

/// Where the cluster's container images are served from: the cluster's own pull-only registry
/// (`spec.registry.localRegistry`), served by the agent on every master (`ha`, the default) or
/// on master0 only, on `port`; or, with `external`, an existing registry the install pushes
/// the images to (`spec.registry.externalRegistry`), and then no host serves anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRegistry {
    pub port: u16,
    pub ha: bool,
    pub external: Option<ExternalRegistry>,
}

/// An existing registry that holds the cluster's container images
/// (`spec.registry.externalRegistry`). Images of `docker.io/library/foo:1` go to
/// `ADDRESS/[PREFIX/]docker.io/library/foo:1` ([`ExternalRegistry::repository`]), so images
/// of two registries never meet, and containerd reaches them with `override_path`.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalRegistry {
    /// `domain[:port]`, as registry clients and containerd name it.
    pub address: String,
    /// Repository path the images go under (a Harbor project, `team/mirror`), if any.
    pub prefix: Option<String>,
    /// From the Clusterfile (both or neither); without them, `sealer login`'s credentials for
    /// `address` are used.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
}

impl std::fmt::Debug for ExternalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalRegistry")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ExternalRegistry {
    /// `http://ADDRESS` or `https://ADDRESS`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.address)
    }

    /// The repository path under which the images of `registry` (`docker.io`,
    /// `127.0.0.1:5000`) live: `[PREFIX/]REGISTRY`, with a port's `:` written `_` (a
    /// repository path allows no `:`) and letters in lower case.
    pub fn path_for(&self, registry: &str) -> String {
        let component = registry.to_ascii_lowercase().replace(':', "_");
        match &self.prefix {
            Some(prefix) => format!("{prefix}/{component}"),
            None => component,
        }
    }

    /// The repository `registry`/`repository` is pushed to.
    pub fn repository(&self, registry: &str, repository: &str) -> String {
        format!("{}/{repository}", self.path_for(registry))
    }
}

/// sealer's default registry port.
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;

impl Default for ClusterRegistry {
    fn default() -> Self {
        ClusterRegistry {
            port: DEFAULT_REGISTRY_PORT,
            ha: true,
            external: None,
        }
    }
}

impl Cluster {
    /// The hosts that serve the cluster's container images, in host order.
    /// None with an external registry.
    pub fn registry_hosts(&self) -> Vec<&Host> {
        if self.registry.external.is_some() {
            Vec::new()
        } else if self.registry.ha {
            self.hosts.iter().filter(|h| h.is_master()).collect()
        } else {
            vec![self.master0()]
        }
    }

    /// The first master in file order. Every cluster built by this module has one; a
    /// hand-built cluster without any host makes this panic.
    pub fn master0(&self) -> &Host {
        // Resolution refuses clusters without a master, so the fallback is never taken.
        self.hosts
            .iter()
            .find(|h| h.is_master())
            .unwrap_or(&self.hosts[0])
    }
    pub fn masters(&self) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.is_master()).collect()
    }
    /// Every host that is not a master.
    pub fn nodes(&self) -> Vec<&Host> {
        self.hosts.iter().filter(|h| !h.is_master()).collect()
    }
    pub fn host(&self, ip: IpAddr) -> Option<&Host> {
        self.hosts.iter().find(|h| h.ip == ip)
    }
    /// `<dataRoot>/<name>/rootfs`, where each host keeps the image root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.data_root.join(&self.name).join("rootfs")
    }
}

/// How a Config's data meets an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStrategy {
    /// Replace the file (the default).
    Overwrite,
    /// Deep-merge YAML: mappings merge key by key, everything else is replaced.
    Merge,
}

/// A file written into the image root filesystem before it is distributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    /// Relative to the rootfs; never absolute, never containing `..`.
    pub path: PathBuf,
    pub data: String,
    pub strategy: ConfigStrategy,
}

/// A `strategy: merge` Config that could not be merged into the file it names.
#[derive(Debug, thiserror::Error)]
#[error("Config {name}: merging into {}: {source}", path.display())]
pub struct ConfigMergeError {
    pub name: String,
    pub path: PathBuf,
    pub source: super::merge::MergeError,
}

impl Config {
    /// The new content of the file, given its current content (`None` when it does not exist).
    pub fn render(&self, existing: Option<&str>) -> Result<String, ConfigMergeError> {
        match (self.strategy, existing) {
            (ConfigStrategy::Overwrite, _) | (ConfigStrategy::Merge, None) => Ok(self.data.clone()),
            (ConfigStrategy::Merge, Some(existing)) => {
                super::merge::merge_yaml_documents(existing, &self.data).map_err(|source| {
                    ConfigMergeError {
                        name: self.name.clone(),
                        path: self.path.clone(),
                        source,
                    }
                })
            }
        }
    }

    /// The file this Config writes, under `rootfs`.
    pub fn target(&self, rootfs: &Path) -> PathBuf {
        rootfs.join(&self.path)
    }
}

/// When a plugin runs. Both sealer spellings map here: the lower-case hook names of sealer ≥ 0.9
/// and the CamelCase phases of sealer ≤ 0.8 (`PreInit` = `pre-init-host`, `PreClean` =
/// `pre-clean-host`, ...). Old phases without a new equivalent keep their own variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// `pre-install` / `PreInstall`: master0, before the first host is initialised.
    PreInstall,
    /// `post-install` / `PostInstall`: master0, after every host is initialised.
    PostInstall,
    PreUninstall,
    PostUninstall,
    PreScaleUp,
    PostScaleUp,
    Upgrade,
    Rollback,
    /// `pre-init-host` / `PreInit`: hosts in scope, after the rootfs is in place.
    PreInitHost,
    /// `post-init-host`: hosts in scope, after they are initialised.
    PostInitHost,
    /// `pre-clean-host` / `PreClean`.
    PreCleanHost,
    /// `post-clean-host` / `PostClean`.
    PostCleanHost,
    UpgradeHost,
    /// Old `Originally`: before anything else, before the rootfs exists on hosts.
    Originally,
    /// Old `PreJoin`: on hosts about to join (sealer ≤ 0.8 Kubernetes join).
    PreJoin,
    /// Old `PostJoin`: on hosts that joined.
    PostJoin,
    /// Old `PreGuest`: before the image CMDs.
    PreGuest,
    /// Old `Manual`: only when asked for.
    Manual,
}

impl Phase {
    const SPELLINGS: &'static [(&'static str, Phase)] = &[
        ("pre-install", Phase::PreInstall),
        ("post-install", Phase::PostInstall),
        ("pre-uninstall", Phase::PreUninstall),
        ("post-uninstall", Phase::PostUninstall),
        ("pre-scaleup", Phase::PreScaleUp),
        ("post-scaleup", Phase::PostScaleUp),
        ("upgrade", Phase::Upgrade),
        ("rollback", Phase::Rollback),
        ("pre-init-host", Phase::PreInitHost),
        ("post-init-host", Phase::PostInitHost),
        ("pre-clean-host", Phase::PreCleanHost),
        ("post-clean-host", Phase::PostCleanHost),
        ("upgrade-host", Phase::UpgradeHost),
        ("PreInstall", Phase::PreInstall),
        ("PostInstall", Phase::PostInstall),
        ("PreInit", Phase::PreInitHost),
        ("PreClean", Phase::PreCleanHost),
        ("PostClean", Phase::PostCleanHost),
        ("Originally", Phase::Originally),
        ("PreJoin", Phase::PreJoin),
        ("PostJoin", Phase::PostJoin),
        ("PreGuest", Phase::PreGuest),
        ("Manual", Phase::Manual),
    ];

    /// Reads one phase name in either spelling.
    pub fn parse(name: &str) -> Option<Phase> {
        let name = name.trim();
        Self::SPELLINGS
            .iter()
            .find(|(spelling, _)| *spelling == name)
            .map(|(_, phase)| *phase)
    }

    /// The sealer ≥ 0.9 name, or the old name when there is no new one.
    pub fn name(self) -> &'static str {
        Self::SPELLINGS
            .iter()
            .find(|(_, phase)| *phase == self)
            .map(|(spelling, _)| *spelling)
            .unwrap_or("unknown")
    }

    /// Cluster-level phases run on master0 only (unless an old `on:` selector says otherwise).
    pub fn is_cluster_level(self) -> bool {
        matches!(
            self,
            Phase::PreInstall
                | Phase::PostInstall
                | Phase::PreUninstall
                | Phase::PostUninstall
                | Phase::PreScaleUp
                | Phase::PostScaleUp
                | Phase::Upgrade
                | Phase::Rollback
        )
    }

    pub(crate) fn all_spellings() -> String {
        Self::SPELLINGS
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which hosts a plugin applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSelector {
    /// No `scope`/`on`: every host.
    All,
    /// Hosts having any of these roles (`scope: master|node`, `on: master`).
    Roles(Vec<String>),
    /// These addresses (`on: 192.168.0.2,192.168.0.5-192.168.0.7`).
    Ips(Vec<IpAddr>),
    /// Hosts carrying all these labels (`on: ssd=true`). Roles count as the labels
    /// `node-role.kubernetes.io/<role>=""`.
    Labels(Vec<(String, String)>),
}

impl HostSelector {
    pub fn matches(&self, host: &Host) -> bool {
        match self {
            HostSelector::All => true,
            HostSelector::Roles(roles) => roles.iter().any(|r| host.has_role(r)),
            HostSelector::Ips(ips) => ips.contains(&host.ip),
            HostSelector::Labels(labels) => labels.iter().all(|(k, v)| {
                host.labels.get(k) == Some(v)
                    || (v.is_empty()
                        && k.strip_prefix("node-role.kubernetes.io/")
                            .is_some_and(|role| host.has_role(role)))
            }),
        }
    }
}

/// What a plugin does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginKind {
    /// `SHELL`: run the script (`cd <rootfs> && <script>`, with the host env).
    Shell { script: String },
    /// `HOSTNAME`: set the hostname of each listed address.
    Hostname { names: Vec<(IpAddr, String)> },
}

/// A hook from the Clusterfile or from the image's `plugins/*.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    pub name: String,
    pub kind: PluginKind,
    /// Phases it runs in (`action: a|b` gives several), in the order written.
    pub phases: Vec<Phase>,
    pub selector: HostSelector,
    /// The selector came from an old `on:` key; then it also applies to cluster-level phases,
    /// as sealer ≤ 0.8 did. A new `scope:` applies to host phases only.
    pub selector_from_on: bool,
    /// `spec.timeout`: how long the script may run before it is killed with its process group
    /// (`None`: the engine's default).
    pub timeout: Option<std::time::Duration>,
}

impl Plugin {
    /// The hosts this plugin runs on in `phase` (empty when it does not run in `phase`).
    pub fn targets<'c>(&self, cluster: &'c Cluster, phase: Phase) -> Vec<&'c Host> {
        if !self.phases.contains(&phase) {
            return Vec::new();
        }
        if phase.is_cluster_level() && !self.selector_from_on {
            return vec![cluster.master0()];
        }
        cluster
            .hosts
            .iter()
            .filter(|h| self.selector.matches(h))
            .collect()
    }
}

/// A document kept but not used by the installer (kubeadm and kubelet configuration,
/// `Application`), recorded so the user can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueDocument {
    /// 1-based position in the file.
    pub index: usize,
    pub api_version: Option<String>,
    pub kind: String,
    pub name: Option<String>,
}
