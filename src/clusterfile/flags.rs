//! The host flags of `sealer run` and `app.run install`, turned into the same [`Cluster`] a
//! Clusterfile gives. Both CLIs flatten [`ClusterFlags`] into their arguments, so the flag names
//! and their parsing exist once.

use std::path::{Path, PathBuf};

use super::hostlist::parse_host_list;
use super::model::*;
use super::resolve::{check_hosts, parse_env, HostDraft};
use super::ClusterfileError;

/// Host flags (sealer's spelling).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterFlags {
    /// Master addresses: comma list and ranges (192.168.0.2-192.168.0.4); the first is master0
    #[arg(short = 'm', long = "masters", value_name = "IPS")]
    pub masters: Option<String>,
    /// Node addresses: comma list and ranges
    #[arg(short = 'n', long = "nodes", value_name = "IPS")]
    pub nodes: Option<String>,
    /// SSH user (default root; other users need passwordless sudo)
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// SSH password
    #[arg(
        short = 'p',
        long = "passwd",
        visible_alias = "password",
        value_name = "PASSWORD"
    )]
    pub password: Option<Secret>,
    /// SSH private key file
    #[arg(long = "pk", value_name = "FILE")]
    pub pk: Option<PathBuf>,
    /// Passphrase of the private key
    #[arg(long = "pk-passwd", value_name = "PASSPHRASE")]
    pub pk_passwd: Option<Secret>,
    /// SSH port
    #[arg(long = "port", value_name = "PORT")]
    pub port: Option<u16>,
    /// Cluster environment variable, repeatable
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Cluster name (part of the data path on every host)
    #[arg(long = "cluster-name", value_name = "NAME")]
    pub cluster_name: Option<String>,
}

fn flag_err(flag: &str, message: impl Into<String>) -> ClusterfileError {
    ClusterfileError::Flag {
        flag: flag.to_string(),
        message: message.into(),
    }
}

/// Builds the cluster the flags describe; no image (it comes from the command), no Configs or
/// Plugins. Errors name the flag.
pub fn from_flags(flags: &ClusterFlags) -> Result<Cluster, ClusterfileError> {
    let name = flags
        .cluster_name
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_string());
    let valid_name = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        return Err(flag_err(
            "--cluster-name",
            format!("`{name}` is not usable (letters, digits, -, _ and .)"),
        ));
    }
    let masters_text = flags.masters.as_deref().unwrap_or("");
    let masters = parse_host_list(masters_text).map_err(|e| flag_err("--masters", e.0))?;
    if masters.is_empty() {
        return Err(flag_err(
            "--masters",
            "give at least one master address (or a Clusterfile with -f)",
        ));
    }
    let nodes = parse_host_list(flags.nodes.as_deref().unwrap_or(""))
        .map_err(|e| flag_err("--nodes", e.0))?;
    if flags.port == Some(0) {
        return Err(flag_err("--port", "`0` is not a port number (1-65535)"));
    }
    let ssh = SshConfig {
        user: flags
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_SSH_USER.to_string()),
        password: flags.password.clone().filter(|p| !p.expose().is_empty()),
        private_key: flags.pk.clone().filter(|p| p != Path::new("")),
        key_passphrase: flags.pk_passwd.clone().filter(|p| !p.expose().is_empty()),
        port: flags.port.unwrap_or(DEFAULT_SSH_PORT),
    };
    let env =
        parse_env(&flags.env, "--env").map_err(|(field, message)| ClusterfileError::Flag {
            flag: field,
            message,
        })?;
    let drafts: Vec<HostDraft> = masters
        .iter()
        .enumerate()
        .map(|(i, ip)| (format!("--masters item {}", i + 1), *ip, "master"))
        .chain(
            nodes
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("--nodes item {}", i + 1), *ip, "node")),
        )
        .map(|(field, ip, role)| HostDraft {
            field,
            host: Host::with_role(ip, role, ssh.clone()),
        })
        .collect();
    check_hosts(&drafts, "--masters")
        .map_err(|(flag, message)| ClusterfileError::Flag { flag, message })?;
    Ok(Cluster {
        name,
        image: None,
        data_root: PathBuf::from(DEFAULT_DATA_ROOT),
        env,
        hosts: drafts.into_iter().map(|d| d.host).collect(),
        cmds: Vec::new(),
        cmd_args: Vec::new(),
        app_names: Vec::new(),
        configs: Vec::new(),
        plugins: Vec::new(),
        registry: ClusterRegistry::default(),
    })
}
