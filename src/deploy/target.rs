//! Which hosts an install goes to and how they are reached: host flags, a Clusterfile, or
//! `--local`, shared by `sealer run` and `app.run install`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::clusterfile::{
    from_flags, Bastion, Cluster, ClusterFlags, Clusterfile, ClusterfileError, Secret,
};
use crate::ssh::{default_known_hosts, Timeouts};

use super::remote::{local_connector, ssh_connector};
use super::Connector;

/// Where to install, as the user said it.
#[derive(Debug, Clone, Default)]
pub struct TargetSpec {
    pub flags: ClusterFlags,
    pub clusterfile: Option<PathBuf>,
    /// Install on this machine without SSH.
    pub local: bool,
    /// Replaces the cluster's dataRoot.
    pub data_root: Option<PathBuf>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// `--bastion`: every host is reached through this jump host (replacing the Clusterfile's).
    pub bastion: Option<Bastion>,
    /// Preflight's clock skew limit; `None` for [`super::DEFAULT_MAX_CLOCK_SKEW`].
    pub max_clock_skew: Option<std::time::Duration>,
    /// Preflight checks let through when they fail (`all` for every one but sudo).
    pub ignore_preflight: Vec<String>,
}

/// The resolved cluster and how to reach its hosts.
pub struct Target {
    pub cluster: Cluster,
    pub connect: Arc<Connector>,
    pub local: bool,
    /// What the Clusterfile holds that the installer does not act on, as its loader said;
    /// printed on every run that uses it.
    pub notes: Vec<String>,
}

/// Why the hosts of an install could not be worked out. A Clusterfile's own kinds (an
/// unsupported feature, a bad field) pass through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Clusterfile(#[from] ClusterfileError),
    #[error("say where to install: -m MASTERS [-n NODES] with SSH credentials, -f Clusterfile, or --local")]
    NoHosts,
    #[error("--local installs on this machine only, but {source_name} lists {} hosts ({}); drop --local to install on them over SSH, or give a Clusterfile with one host", hosts.len(), hosts.join(", "))]
    LocalWithSeveralHosts {
        /// The Clusterfile, or "the cluster" for host flags.
        source_name: String,
        hosts: Vec<String>,
    },
    #[error("resolving --data-root: {0}")]
    DataRoot(std::io::Error),
    #[error(transparent)]
    PrivateKey(#[from] crate::ssh::key_file::KeyFileError),
    #[error("--local as a user other than root: {dir} (where the data root {data_root} goes) is not writable by this user, so the install would fail part way; run it as root (sudo), or give a --data-root this user can write")]
    LocalNotRoot { dir: String, data_root: String },
}

/// Resolve a [`TargetSpec`]. A Clusterfile whose only host is a loopback address is local.
pub fn resolve(spec: &TargetSpec) -> Result<Target, TargetError> {
    let mut notes = Vec::new();
    let mut cluster = match (&spec.clusterfile, spec.local) {
        (Some(path), _) => {
            let file = Clusterfile::load(path)?;
            notes = file.notes.clone();
            file.into_cluster()?
        }
        (None, true) => {
            let mut flags = spec.flags.clone();
            flags.masters = Some("127.0.0.1".into());
            from_flags(&flags)?
        }
        (None, false) => {
            if spec.flags.masters.is_none() {
                return Err(TargetError::NoHosts);
            }
            from_flags(&spec.flags)?
        }
    };
    if spec.local && cluster.hosts.len() > 1 {
        return Err(TargetError::LocalWithSeveralHosts {
            source_name: spec
                .clusterfile
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the cluster".into()),
            hosts: cluster.hosts.iter().map(|h| h.ip.to_string()).collect(),
        });
    }
    if let Some(bastion) = &spec.bastion {
        for host in &mut cluster.hosts {
            host.ssh.bastion = Some(bastion.clone());
        }
    }
    if let Some(root) = &spec.data_root {
        let root = if root.is_absolute() {
            root.clone()
        } else {
            std::env::current_dir()
                .map_err(TargetError::DataRoot)?
                .join(root)
        };
        cluster.data_root = root;
    }
    // A loopback address behind a jump host is the jump host's own loopback, not this machine.
    let local = spec.local
        || (cluster.hosts.len() == 1
            && cluster.hosts[0].ip.is_loopback()
            && cluster.hosts[0].ssh.bastion.is_none());
    let connect = if local {
        check_local_user(&cluster.data_root)?;
        local_connector()
    } else {
        check_private_keys(&mut cluster, spec.clusterfile.is_some())?;
        ask_password(&mut cluster)?;
        let known_hosts = spec.known_hosts.clone().unwrap_or_else(default_known_hosts);
        ssh_connector(known_hosts, Timeouts::default())
    };
    Ok(Target {
        cluster,
        connect,
        local,
        notes,
    })
}

/// A local install by a user other than root: refused before anything is written unless the
/// data root (or the directory it would be made in) is writable by that user.
fn check_local_user(data_root: &std::path::Path) -> Result<(), TargetError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let mut dir = data_root;
    while !dir.exists() {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    let Ok(c_dir) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return Ok(());
    };
    // SAFETY: c_dir is a NUL-terminated path that outlives the call.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK) } == 0 {
        return Ok(());
    }
    Err(TargetError::LocalNotRoot {
        dir: dir.display().to_string(),
        data_root: data_root.display().to_string(),
    })
}

/// Hosts with neither a key nor a password, when nothing else could log in (no ssh-agent, no
/// default key in ~/.ssh) and a terminal is there to ask: one prompt, the password used for
/// every such host (as `-p` would be, without it showing in the process list).
fn ask_password(cluster: &mut Cluster) -> Result<(), crate::ssh::key_file::KeyFileError> {
    let bare: Vec<usize> = (0..cluster.hosts.len())
        .filter(|&i| {
            let ssh = &cluster.hosts[i].ssh;
            ssh.password.is_none() && ssh.private_key.is_none()
        })
        .collect();
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let has_default_key = ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .any(|k| home.join(".ssh").join(k).is_file());
    if bare.is_empty()
        || std::env::var_os("SSH_AUTH_SOCK").is_some()
        || has_default_key
        || !std::io::IsTerminal::is_terminal(&std::io::stdin())
    {
        return Ok(());
    }
    let first = &cluster.hosts[bare[0]];
    let whom = match bare.len() {
        1 => format!("{}@{}", first.ssh.user, first.ip),
        n => format!("{}@{} and {} more", first.ssh.user, first.ip, n - 1),
    };
    let typed = rpassword::prompt_password(format!("SSH password for {whom}: ")).map_err(|e| {
        crate::ssh::key_file::KeyFileError(format!("reading the SSH password: {e}"))
    })?;
    let typed = Secret::new(typed);
    for i in bare {
        cluster.hosts[i].ssh.password = Some(typed.clone());
    }
    Ok(())
}

/// Every private key the hosts and their bastions are reached with, checked before any host is
/// contacted (exists, is a private key); an encrypted one without a passphrase gets it from a
/// prompt on a terminal (asked once per file), else it is refused naming the file and the fix.
fn check_private_keys(
    cluster: &mut Cluster,
    from_clusterfile: bool,
) -> Result<(), crate::ssh::key_file::KeyFileError> {
    use crate::ssh::key_file::{check, needs_passphrase, KeyFile, KeyFileError};
    use std::collections::HashMap;
    let mut asked: HashMap<PathBuf, Secret> = HashMap::new();
    let mut settle = |key: &Option<PathBuf>,
                      passphrase: &mut Option<Secret>,
                      flags: (&str, &str, Option<&str>)|
     -> Result<(), KeyFileError> {
        let Some(path) = key else { return Ok(()) };
        let (flag, passphrase_flag, env) = flags;
        if check(path, flag)? == KeyFile::Plain || passphrase.is_some() {
            return Ok(());
        }
        if let Some(known) = asked.get(path) {
            *passphrase = Some(known.clone());
            return Ok(());
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(KeyFileError(needs_passphrase(
                path,
                flag,
                passphrase_flag,
                env,
            )));
        }
        let typed = rpassword::prompt_password(format!("Passphrase for {}: ", path.display()))
            .map_err(|e| {
                KeyFileError(format!("reading the passphrase of {}: {e}", path.display()))
            })?;
        let typed = Secret::new(typed);
        asked.insert(path.clone(), typed.clone());
        *passphrase = Some(typed);
        Ok(())
    };
    let host_flags = if from_clusterfile {
        ("pk in the Clusterfile", "its pkPasswd", None)
    } else {
        ("--pk", "--pk-passwd", Some("SEALER_SSH_KEY_PASSPHRASE"))
    };
    for host in &mut cluster.hosts {
        let ssh = &mut host.ssh;
        settle(&ssh.private_key, &mut ssh.key_passphrase, host_flags)?;
        if let Some(bastion) = &mut ssh.bastion {
            settle(
                &bastion.private_key,
                &mut bastion.key_passphrase,
                ("--bastion-pk", "--bastion-pk-passwd", None),
            )?;
        }
    }
    Ok(())
}

/// How a command that changes hosts works through them; shared by run, install, apply, join,
/// delete and rollback.
#[derive(Args, Clone, Debug, Default)]
pub struct WorkArgs {
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    #[command(flatten)]
    pub bastion: BastionArgs,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Attempts per host before it is reported failed.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Show per host what would be sent and which steps would run or be skipped; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The jump host flags of every command that reaches hosts.
#[derive(Args, Clone, Debug, Default)]
pub struct BastionArgs {
    /// Reach every host through this jump host (SSH tunnel); user root and port 22 unless given,
    /// e.g. ops@10.0.0.1:2222 or [fd00::1]:22. Replaces a bastion in the Clusterfile.
    #[arg(long, value_name = "USER@HOST[:PORT]", value_parser = Bastion::parse)]
    pub bastion: Option<Bastion>,
    /// The jump host's SSH password (without it or --bastion-pk: the ssh-agent).
    #[arg(long = "bastion-passwd", value_name = "PASSWORD", requires = "bastion")]
    pub bastion_password: Option<Secret>,
    /// The jump host's SSH private key file.
    #[arg(long = "bastion-pk", value_name = "FILE", requires = "bastion")]
    pub bastion_pk: Option<PathBuf>,
    /// Passphrase of the jump host's private key.
    #[arg(
        long = "bastion-pk-passwd",
        value_name = "PASSPHRASE",
        requires = "bastion"
    )]
    pub bastion_pk_passwd: Option<Secret>,
}

impl BastionArgs {
    /// The jump host with its credentials, when `--bastion` was given.
    pub fn bastion(&self) -> Option<Bastion> {
        self.bastion.clone().map(|mut b| {
            b.password = self.bastion_password.clone();
            b.private_key = self.bastion_pk.clone();
            b.key_passphrase = self.bastion_pk_passwd.clone();
            b
        })
    }
}

/// Host selection flags shared by `sealer run` and the installer stub.
#[derive(Args, Clone, Debug, Default)]
pub struct TargetArgs {
    #[command(flatten)]
    pub hosts: HostsArgs,
    #[command(flatten)]
    pub work: WorkArgs,
    /// When the install does not finish on every host, bring back the previous tree on the
    /// hosts that switched to this one.
    #[arg(long)]
    pub rollback_on_failure: bool,
    /// Preflight refuses a host whose clock is further off this machine's (e.g. 5s, 500ms, 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_clock_skew: Option<std::time::Duration>,
    /// Go ahead although these preflight checks fail (each is still reported, as a warning):
    /// os, arch, disk, inodes, tmp, clock, hostname, ports, containerd, commands, or all.
    #[arg(long, value_name = "CHECK,...", value_delimiter = ',', value_parser = parse_check)]
    pub ignore_preflight: Vec<String>,
    /// Print the report as JSON on stdout instead of the table; progress lines go to stderr.
    #[arg(long, conflicts_with = "dry_run")]
    pub json: bool,
}

/// `5`, `5s`, `500ms`, `1.5s`: a duration for a flag.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, scale) = match text.trim() {
        t if t.ends_with("ms") => (&t[..t.len() - 2], 0.001),
        t if t.ends_with('s') => (&t[..t.len() - 1], 1.0),
        t => (t, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| std::time::Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 5s, 500ms, 0s)"))
}

impl TargetArgs {
    pub fn spec(&self) -> TargetSpec {
        self.hosts.spec(
            self.work.known_hosts.clone(),
            &self.work.bastion,
            self.max_clock_skew,
            &self.ignore_preflight,
        )
    }
}

/// Which hosts a command reaches, as `sealer run`/`apply` and `sealer check` (and the
/// package's `install` and `check`) all name them: `-m/-n` (with the SSH flags), a
/// Clusterfile, or this machine; and where their data lives.
#[derive(Args, Clone, Debug, Default)]
pub struct HostsArgs {
    #[command(flatten)]
    pub flags: ClusterFlags,
    /// Clusterfile describing the hosts (and the Configs and Plugins an install applies).
    #[arg(
        short = 'f',
        long = "clusterfile",
        alias = "Clusterfile",
        value_name = "FILE",
        conflicts_with_all = ["masters", "nodes"]
    )]
    pub clusterfile: Option<PathBuf>,
    /// Work on this machine, without SSH.
    #[arg(long, conflicts_with_all = ["masters", "nodes"])]
    pub local: bool,
    /// Where rootfs and journal live on every host (default /var/lib/sealer/data).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
}

impl HostsArgs {
    fn spec(
        &self,
        known_hosts: Option<PathBuf>,
        bastion: &BastionArgs,
        max_clock_skew: Option<std::time::Duration>,
        ignore_preflight: &[String],
    ) -> TargetSpec {
        TargetSpec {
            flags: self.flags.clone(),
            clusterfile: self.clusterfile.clone(),
            local: self.local,
            data_root: self.data_root.clone(),
            known_hosts,
            bastion: bastion.bastion(),
            max_clock_skew,
            ignore_preflight: ignore_preflight.to_vec(),
        }
    }
}

/// A preflight check's name for `--ignore-preflight` (or `all`).
pub fn parse_check(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name == "sudo" {
        return Err("sudo cannot be ignored: every command on the host runs through it".into());
    }
    if name == "all" || super::PREFLIGHT_CHECKS.contains(&name) {
        return Ok(name.to_string());
    }
    Err(format!(
        "{name:?} is not a preflight check; the checks are {} (or all)",
        super::PREFLIGHT_CHECKS.join(", ")
    ))
}

/// Where `sealer check` and `./app.run check` look, and with which limits.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub hosts: HostsArgs,
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    #[command(flatten)]
    pub bastion: BastionArgs,
    /// A host whose clock is further off this machine's fails the clock check.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_clock_skew: Option<std::time::Duration>,
    /// Report these checks' failures as ignored, as the install would with the same flag.
    #[arg(long, value_name = "CHECK,...", value_delimiter = ',', value_parser = parse_check)]
    pub ignore_preflight: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CheckArgs {
    pub fn spec(&self) -> TargetSpec {
        self.hosts.spec(
            self.known_hosts.clone(),
            &self.bastion,
            self.max_clock_skew,
            &self.ignore_preflight,
        )
    }
}

/// Where `sealer status` and `./app.run status` look.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub flags: ClusterFlags,
    /// Clusterfile describing the hosts.
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    pub clusterfile: Option<PathBuf>,
    /// This machine, without SSH.
    #[arg(long)]
    pub local: bool,
    /// Where rootfs and journal live on every host (default /var/lib/sealer/data).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    #[command(flatten)]
    pub bastion: BastionArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The cluster a join or delete changes: a Clusterfile, or the one this machine recorded.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Clusterfile describing the cluster as it runs now (default: the one recorded under
    /// $SEALER_ROOT/clusters/NAME/ by the last command that changed it from here).
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    pub clusterfile: Option<PathBuf>,
    /// The cluster's name, to find its record when no Clusterfile is given.
    #[arg(
        long = "cluster-name",
        value_name = "NAME",
        default_value = "my-cluster"
    )]
    pub cluster_name: String,
    /// The image the cluster runs (default: the last one installed from here).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub work: WorkArgs,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Masters to add: comma list or range.
    #[arg(short = 'm', long = "masters", value_name = "IPS")]
    pub masters: Option<String>,
    /// Nodes to add: comma list or range.
    #[arg(short = 'n', long = "nodes", value_name = "IPS")]
    pub nodes: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the report as JSON on stdout instead of the table (the shape of `sealer run
    /// --json`); progress lines go to stderr.
    #[arg(long, conflicts_with = "dry_run")]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Hosts to remove: comma list or range.
    #[arg(
        short = 'n',
        long = "nodes",
        visible_alias = "masters",
        short_alias = 'm',
        value_name = "IPS",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub hosts: Option<String>,
    /// Remove the whole cluster from every host.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `sealer upgrade IMAGE`: install another image on the cluster this machine recorded (or the
/// one a Clusterfile describes), as `sealer run IMAGE -f` would.
#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// The image to upgrade to (NAME:TAG); the package's own image for `./app.run upgrade`.
    #[arg(value_name = "IMAGE")]
    pub to: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// When the upgrade does not finish on every host, bring back the previous tree on the
    /// hosts that switched.
    #[arg(long)]
    pub rollback_on_failure: bool,
}

/// `sealer apply -f Clusterfile`: converge the cluster to the file.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The Clusterfile the cluster is to match.
    #[arg(
        short = 'f',
        long = "clusterfile",
        alias = "Clusterfile",
        value_name = "FILE"
    )]
    pub clusterfile: PathBuf,
    /// The image to install (default: the Clusterfile's spec.image).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Delete the hosts the file no longer lists without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub work: WorkArgs,
    /// When the install does not finish on every host, bring back the previous tree on the
    /// hosts that switched to this one.
    #[arg(long)]
    pub rollback_on_failure: bool,
}

impl StatusArgs {
    /// The hosts to ask: `-f`, `-m`/`-n` or `--local` as given, else the Clusterfile this
    /// machine recorded for the cluster (`--cluster-name`, default my-cluster), as `join` and
    /// `delete` use it.
    pub fn spec(&self) -> TargetSpec {
        let recorded = || {
            let name = self
                .flags
                .cluster_name
                .as_deref()
                .unwrap_or(crate::clusterfile::DEFAULT_CLUSTER_NAME);
            crate::clusters::ClusterRecord::clusterfile_path(
                &crate::store::Store::default_root(),
                name,
            )
        };
        let clusterfile = match (&self.clusterfile, &self.flags.masters, self.local) {
            (None, None, false) => recorded(),
            _ => self.clusterfile.clone(),
        };
        TargetSpec {
            flags: self.flags.clone(),
            clusterfile,
            local: self.local,
            data_root: self.data_root.clone(),
            known_hosts: self.known_hosts.clone(),
            bastion: self.bastion.bastion(),
            max_clock_skew: None,
            ignore_preflight: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_with_a_clusterfile_of_several_hosts_is_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("Clusterfile");
        std::fs::write(
            &file,
            "apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    - {ips: [10.0.0.2, 10.0.0.3], roles: [master]}\n    - {ips: [10.0.0.4], roles: [node]}\n",
        )
        .unwrap();
        let spec = TargetSpec {
            clusterfile: Some(file.clone()),
            local: true,
            ..TargetSpec::default()
        };
        let err = resolve(&spec)
            .err()
            .expect("--local with 3 hosts must be refused")
            .to_string();
        assert!(err.contains("--local"), "{err}");
        assert!(err.contains("10.0.0.2, 10.0.0.3, 10.0.0.4"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");

        // One host: that host is this machine.
        std::fs::write(
            &file,
            "apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    - {ips: [10.0.0.2], roles: [master]}\n",
        )
        .unwrap();
        let target = resolve(&spec).unwrap();
        assert!(target.local);
        assert_eq!(target.cluster.hosts.len(), 1);
    }

    #[test]
    fn an_unsupported_clusterfile_feature_reaches_the_install_error_as_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("Clusterfile");
        std::fs::write(
            &file,
            "apiVersion: sealer.io/v1\nkind: Cluster\nspec:\n  provider: CONTAINER\n",
        )
        .unwrap();
        let spec = TargetSpec {
            clusterfile: Some(file),
            ..TargetSpec::default()
        };
        let err = crate::install::Error::from(resolve(&spec).err().unwrap());
        match &err {
            crate::install::Error::Target(TargetError::Clusterfile(e)) => {
                assert_eq!(e.unsupported_feature(), Some("provider: CONTAINER"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .contains("provider: CONTAINER is not supported"),
            "{err}"
        );
    }
}
