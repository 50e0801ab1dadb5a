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
    /// Master addresses: comma list and ranges (192.168.0.2-192.168.0.4), ADDRESS:PORT,
    /// [IPv6]:PORT and host names (resolved once); the first is master0
    #[arg(short = 'm', long = "masters", value_name = "IPS")]
    pub masters: Option<String>,
    /// Node addresses: as for --masters
    #[arg(short = 'n', long = "nodes", value_name = "IPS")]
    pub nodes: Option<String>,
    /// SSH user (default root; other users need passwordless sudo)
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// SSH password (better: $SEALER_SSH_PASSWORD, or the prompt on a terminal; a password on
    /// the command line is visible to other users)
    #[arg(
        short = 'p',
        long = "passwd",
        visible_alias = "password",
        value_name = "PASSWORD",
        env = "SEALER_SSH_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,
    /// SSH private key file
    #[arg(long = "pk", value_name = "FILE")]
    pub pk: Option<PathBuf>,
    /// Passphrase of the private key (better: $SEALER_SSH_KEY_PASSPHRASE, or the prompt on a
    /// terminal)
    #[arg(
        long = "pk-passwd",
        value_name = "PASSPHRASE",
        env = "SEALER_SSH_KEY_PASSPHRASE",
        hide_env_values = true
    )]
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
    /// File of KEY=VALUE lines (# comments, `export` allowed) added to the cluster env, under -e; repeatable
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Override an ARG default of the image for its install commands (sealer's spec.cmd_args); comma list, repeatable
    #[arg(long = "cmd-args", value_name = "KEY=VALUE", value_delimiter = ',')]
    pub cmd_args: Vec<String>,
    /// Install commands to run instead of the image's CMDs (sealer's spec.cmd); comma list, repeatable
    #[arg(long = "cmds", value_name = "CMD", value_delimiter = ',')]
    pub cmds: Vec<String>,
    /// Apps to launch instead of the image's LAUNCH list (sealer's spec.appNames); comma list
    #[arg(long = "apps", value_name = "APP", value_delimiter = ',')]
    pub apps: Vec<String>,
}

impl ClusterFlags {
    /// The install-only flags given (for commands that install nothing, which refuse them).
    pub fn install_only_given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        if !self.env_file.is_empty() {
            given.push("--env-file");
        }
        if !self.cmd_args.is_empty() {
            given.push("--cmd-args");
        }
        if !self.cmds.is_empty() {
            given.push("--cmds");
        }
        if !self.apps.is_empty() {
            given.push("--apps");
        }
        given
    }
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
        bastion: None,
    };
    let env =
        parse_env(&flags.env, "--env").map_err(|(field, message)| ClusterfileError::Flag {
            flag: field,
            message,
        })?;
    let drafts: Vec<HostDraft> = masters
        .iter()
        .enumerate()
        .map(|(i, address)| (format!("--masters item {}", i + 1), address, "master"))
        .chain(
            nodes
                .iter()
                .enumerate()
                .map(|(i, address)| (format!("--nodes item {}", i + 1), address, "node")),
        )
        .map(|(field, address, role)| HostDraft {
            field,
            host: Host::at(address, role, ssh.clone()),
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
