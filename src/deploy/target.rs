//! Which hosts an install goes to and how they are reached: host flags, a Clusterfile, or
//! `--local`, shared by `sealer run` and `app.run install`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::clusterfile::{from_flags, Cluster, ClusterFlags, Clusterfile, ClusterfileError};
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
    /// Preflight's clock skew limit; `None` for [`super::DEFAULT_MAX_CLOCK_SKEW`].
    pub max_clock_skew: Option<std::time::Duration>,
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
    let local = spec.local || (cluster.hosts.len() == 1 && cluster.hosts[0].ip.is_loopback());
    let connect = if local {
        local_connector()
    } else {
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

/// How a command that changes hosts works through them; shared by run, install, apply, join,
/// delete and rollback.
#[derive(Args, Clone, Debug, Default)]
pub struct WorkArgs {
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
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

/// Host selection flags shared by `sealer run` and the installer stub.
#[derive(Args, Clone, Debug, Default)]
pub struct TargetArgs {
    #[command(flatten)]
    pub flags: ClusterFlags,
    /// Clusterfile describing hosts, Configs and Plugins.
    #[arg(
        short = 'f',
        long = "clusterfile",
        alias = "Clusterfile",
        value_name = "FILE",
        conflicts_with_all = ["masters", "nodes"]
    )]
    pub clusterfile: Option<PathBuf>,
    /// Install on this machine, without SSH.
    #[arg(long, conflicts_with_all = ["masters", "nodes"])]
    pub local: bool,
    /// Where rootfs and journal live on every host (default /var/lib/sealer/data).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    #[command(flatten)]
    pub work: WorkArgs,
    /// When the install does not finish on every host, bring back the previous tree on the
    /// hosts that switched to this one.
    #[arg(long)]
    pub rollback_on_failure: bool,
    /// Preflight refuses a host whose clock is further off this machine's (e.g. 5s, 500ms, 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_clock_skew: Option<std::time::Duration>,
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
        TargetSpec {
            flags: self.flags.clone(),
            clusterfile: self.clusterfile.clone(),
            local: self.local,
            data_root: self.data_root.clone(),
            known_hosts: self.work.known_hosts.clone(),
            max_clock_skew: self.max_clock_skew,
        }
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
    pub fn spec(&self) -> TargetSpec {
        TargetSpec {
            flags: self.flags.clone(),
            clusterfile: self.clusterfile.clone(),
            local: self.local,
            data_root: self.data_root.clone(),
            known_hosts: self.known_hosts.clone(),
            max_clock_skew: None,
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
