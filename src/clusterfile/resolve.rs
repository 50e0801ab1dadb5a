//! From documents as written to the resolved model: defaults, the SSH merge, host expansion and
//! the cross-field checks (one master at least, no duplicate address, one address family, valid
//! ports and names). Every error names the document and the field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde::de::IgnoredAny;

use super::documents::{
    BastionSpec, ClusterSpecV1, ClusterSpecV2, ConfigSpec, Document, EnvList, HostSpecV2,
    MachinesV1, PluginSpec, Scalar, SshSpec,
};
use super::hostlist::{check_host_count, parse_host_item, parse_host_list};
use super::model::*;
use super::{ClusterfileError, DocumentRef};
use crate::shell::is_env_name;

type FieldResult<T> = Result<T, (String, String)>;

fn field_err(doc: &DocumentRef, (field, message): (String, String)) -> ClusterfileError {
    ClusterfileError::Field {
        doc: doc.clone(),
        field,
        message,
    }
}

fn unsupported(
    doc: &DocumentRef,
    feature: impl Into<String>,
    hint: impl Into<String>,
) -> ClusterfileError {
    ClusterfileError::Unsupported {
        doc: doc.clone(),
        feature: feature.into(),
        hint: hint.into(),
    }
}

/// A value given as an empty string (`pk: ""`) counts as not given, as in sealer.
fn given(scalar: &Option<Scalar>) -> Option<&str> {
    scalar
        .as_ref()
        .map(|s| s.0.as_str())
        .filter(|s| !s.is_empty())
}

/// Parses `KEY=VALUE` items; a value wrapped in one pair of double quotes loses them (sealer
/// wrote them into `export K="V"`, where the shell removed them).
pub(super) fn parse_env(items: &[String], field: &str) -> FieldResult<Vec<(String, String)>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Some((key, value)) = item.split_once('=') else {
                return Err((
                    format!("{field}[{i}]"),
                    format!("`{item}` is not KEY=VALUE"),
                ));
            };
            let key = key.trim();
            if !is_env_name(key) {
                return Err((
                    format!("{field}[{i}]"),
                    format!("`{key}` is not a valid environment variable name (letters, digits and _, not starting with a digit)"),
                ));
            }
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

fn env_of(list: &Option<EnvList>, field: &str) -> FieldResult<Vec<(String, String)>> {
    match list {
        Some(EnvList(items)) => parse_env(items, field),
        None => Ok(Vec::new()),
    }
}

pub(super) fn parse_port(text: &str, field: &str) -> FieldResult<u16> {
    match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err((
            field.to_string(),
            format!("`{text}` is not a port number (1-65535)"),
        )),
    }
}

/// `over` merged onto `base` (set fields of `over` win), then defaults filled in.
fn merge_ssh(
    base: Option<&SshSpec>,
    base_field: &str,
    over: Option<&SshSpec>,
    over_field: &str,
) -> FieldResult<SshConfig> {
    let pick = |get: fn(&SshSpec) -> &Option<Scalar>| -> Option<(String, &'static str)> {
        // Returns the value and whether it came from the host override.
        if let Some(v) = over.and_then(|o| given(get(o))) {
            return Some((v.to_string(), "over"));
        }
        base.and_then(|b| given(get(b)))
            .map(|v| (v.to_string(), "base"))
    };
    for (spec, field) in [(base, base_field), (over, over_field)] {
        if spec.and_then(|s| s.encrypted) == Some(true) {
            return Err((
                format!("{field}.encrypted"),
                "sealer's encrypted passwords (AES with a key built into sealer) are not supported; write the password in clear in a file only root can read, or use a key (pk)".into(),
            ));
        }
    }
    let port = match pick(|s| &s.port) {
        Some((text, from)) => {
            let field = if from == "over" {
                over_field
            } else {
                base_field
            };
            parse_port(&text, &format!("{field}.port"))?
        }
        None => DEFAULT_SSH_PORT,
    };
    // A host's own bastion replaces the cluster's as a whole.
    let bastion = match (
        over.and_then(|o| o.bastion.as_ref()),
        base.and_then(|b| b.bastion.as_ref()),
    ) {
        (Some(spec), _) => Some(bastion_of(spec, &format!("{over_field}.bastion"))?),
        (None, Some(spec)) => Some(bastion_of(spec, &format!("{base_field}.bastion"))?),
        (None, None) => None,
    };
    Ok(SshConfig {
        user: pick(|s| &s.user)
            .map(|(u, _)| u)
            .unwrap_or_else(|| DEFAULT_SSH_USER.to_string()),
        password: pick(|s| &s.passwd).map(|(p, _)| Secret::new(p)),
        private_key: pick(|s| &s.pk).map(|(p, _)| PathBuf::from(p)),
        key_passphrase: pick(|s| &s.pk_passwd).map(|(p, _)| Secret::new(p)),
        port,
        bastion,
    })
}

/// `ssh.bastion: {address, port, user, passwd, pk, pkPasswd}`: the jump host and its own auth.
fn bastion_of(spec: &BastionSpec, field: &str) -> FieldResult<Bastion> {
    let address = given(&spec.address).ok_or_else(|| {
        (
            format!("{field}.address"),
            "missing; give the jump host's address or name".to_string(),
        )
    })?;
    let mut bastion =
        Bastion::parse(address).map_err(|message| (format!("{field}.address"), message))?;
    if let Some(user) = given(&spec.user) {
        bastion.user = user.to_string();
    }
    if let Some(port) = given(&spec.port) {
        bastion.address.port = Some(parse_port(port, &format!("{field}.port"))?);
    }
    bastion.password = given(&spec.passwd).map(Secret::new);
    bastion.private_key = given(&spec.pk).map(PathBuf::from);
    bastion.key_passphrase = given(&spec.pk_passwd).map(Secret::new);
    Ok(bastion)
}

fn check_cluster_name(name: &str, field: &str) -> FieldResult<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err((
            field.to_string(),
            format!("`{name}` is not a usable cluster name (letters, digits, -, _ and .; it becomes a directory name)"),
        ))
    }
}

fn check_data_root(root: &str, field: &str) -> FieldResult<PathBuf> {
    let path = PathBuf::from(root);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err((
            field.to_string(),
            format!("`{root}` must be an absolute path without `..`"),
        ));
    }
    Ok(path)
}

/// A host before the cross-host checks, with the field it came from.
pub(super) struct HostDraft {
    pub field: String,
    pub host: Host,
}

/// The checks every cluster passes, whichever way it was written: addresses unique, one family,
/// at least one master; then pins from `hostKeys` are attached.
pub(super) fn check_hosts(drafts: &[HostDraft], hosts_field: &str) -> FieldResult<()> {
    check_host_count(drafts.len()).map_err(|e| (hosts_field.to_string(), e.0))?;
    let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for d in drafts {
        if let Some(first) = seen.insert(d.host.ip, &d.field) {
            return Err((
                d.field.clone(),
                format!("{} is listed twice (first at {first})", d.host.ip),
            ));
        }
    }
    let Some(first) = drafts.first() else {
        return Err((
            hosts_field.to_string(),
            "no hosts; list at least one host with role master".into(),
        ));
    };
    if let Some(other) = drafts
        .iter()
        .find(|d| d.host.ip.is_ipv4() != first.host.ip.is_ipv4())
    {
        return Err((
            other.field.clone(),
            format!(
                "{} is not of the same address family as {} ({}); all hosts must be IPv4 or all IPv6",
                other.host.ip, first.host.ip, first.field
            ),
        ));
    }
    if !drafts.iter().any(|d| d.host.is_master()) {
        return Err((
            hosts_field.to_string(),
            "no host has the role master; the first master (master0) runs the install steps".into(),
        ));
    }
    Ok(())
}

fn attach_pins(
    drafts: &mut [HostDraft],
    pins: &Option<BTreeMap<String, String>>,
) -> FieldResult<()> {
    for (ip_text, key) in pins.iter().flatten() {
        let field = format!("spec.hostKeys.{ip_text}");
        let ip: IpAddr = ip_text
            .trim()
            .parse()
            .map_err(|_| (field.clone(), format!("`{ip_text}` is not an IP address")))?;
        let pin = HostKeyPin::parse(key).map_err(|e| (field.clone(), e.to_string()))?;
        let Some(draft) = drafts.iter_mut().find(|d| d.host.ip == ip) else {
            return Err((field, format!("{ip} is not a host of this cluster")));
        };
        if draft.host.host_key.is_some() {
            return Err((
                field,
                format!("{ip} already has a hostKey in {}", draft.field),
            ));
        }
        draft.host.host_key = Some(pin);
    }
    Ok(())
}

fn ips_of(items: &[Scalar], field: &str) -> FieldResult<Vec<(HostAddress, String)>> {
    let mut out = Vec::new();
    for (i, Scalar(item)) in items.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let ips = parse_host_item(item).map_err(|e| (item_field.clone(), e.0))?;
        out.extend(ips.into_iter().map(|ip| (ip, item_field.clone())));
        check_host_count(out.len()).map_err(|e| (item_field.clone(), e.0))?;
    }
    Ok(out)
}

fn check_roles(roles: &[String], field: &str) -> FieldResult<()> {
    if roles.is_empty() {
        return Err((
            field.to_string(),
            "no roles; give [master] or [node] (custom roles may be added)".into(),
        ));
    }
    for (i, role) in roles.iter().enumerate() {
        if role.trim().is_empty() || role.chars().any(char::is_whitespace) || role.contains('|') {
            return Err((
                format!("{field}[{i}]"),
                format!("`{role}` is not a role name"),
            ));
        }
    }
    Ok(())
}

fn check_taint(taint: &str, field: &str) -> FieldResult<()> {
    let body = taint.strip_suffix('-').unwrap_or(taint);
    let effect = body.rsplit_once(':').map(|(_, e)| e);
    let key_ok = body
        .rsplit_once(':')
        .map(|(kv, _)| !kv.split('=').next().unwrap_or("").is_empty())
        .unwrap_or(false);
    match effect {
        Some("NoSchedule" | "PreferNoSchedule" | "NoExecute") if key_ok => Ok(()),
        _ => Err((
            field.to_string(),
            format!("`{taint}` is not a taint; write key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute), a trailing - removes it"),
        )),
    }
}

/// `spec.registry.externalRegistry`: a domain (a host name or address, no scheme or path), an
/// optional port, repository prefix and credentials (a user name without its password, as a
/// recorded Clusterfile has it, counts as none).
fn external_registry(
    doc: &DocumentRef,
    spec: &super::documents::ExternalRegistrySpec,
) -> Result<super::ExternalRegistry, ClusterfileError> {
    let field = |name: &str, message: String| {
        field_err(
            doc,
            (format!("spec.registry.externalRegistry.{name}"), message),
        )
    };
    let domain = spec
        .domain
        .as_ref()
        .map(|d| d.0.trim().to_string())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            field(
                "domain",
                "missing; name the registry's host (harbor.example.com or an address)".into(),
            )
        })?;
    let host_ok = domain
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
        && !domain.contains("://");
    if !host_ok || (domain.contains(':') && !domain.starts_with('[')) {
        return Err(field(
            "domain",
            format!("{domain:?} is not a host name or address (no scheme, port or path: put the port in `port` and the path in `prefix`)"),
        ));
    }
    let address = match &spec.port {
        Some(port) => {
            let port: u16 =
                port.0.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    field("port", format!("{:?} is not a port (1-65535)", port.0))
                })?;
            format!("{domain}:{port}")
        }
        None => domain,
    };
    let prefix = match spec
        .prefix
        .as_ref()
        .map(|p| p.0.trim_matches('/').to_string())
    {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(p) => {
            let valid = p.split('/').all(|c| {
                c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            });
            if !valid {
                return Err(field(
                    "prefix",
                    format!("{p:?} is not a repository path (lower-case components separated by '/', e.g. a Harbor project)"),
                ));
            }
            Some(p)
        }
    };
    let username = spec
        .username
        .as_ref()
        .map(|u| u.0.clone())
        .filter(|u| !u.is_empty());
    let password = spec
        .password
        .as_ref()
        .map(|p| p.0.clone())
        .filter(|p| !p.is_empty());
    // A recorded Clusterfile keeps no password: a user name alone means `sealer login`'s
    // credentials, as does neither.
    let (username, password) = match (username, password) {
        (Some(u), Some(p)) => (Some(u), Some(p)),
        (None, Some(_)) => {
            return Err(field(
                "username",
                "missing; a password needs its user name (or leave both out to use `sealer login`'s credentials for the registry)".into(),
            ))
        }
        _ => (None, None),
    };
    Ok(super::ExternalRegistry {
        address,
        prefix,
        username,
        password,
        insecure: spec.insecure.unwrap_or(false),
    })
}

fn ignored_note(doc: &DocumentRef, field: &str, what: &str) -> String {
    format!("{doc}: {field} is ignored ({what})")
}

fn check_provider(doc: &DocumentRef, provider: &Option<String>) -> Result<(), ClusterfileError> {
    match provider.as_deref() {
        None | Some("") | Some("BAREMETAL") => Ok(()),
        Some(p) => Err(unsupported(
            doc,
            format!("provider: {p}"),
            "this installer installs onto existing machines (provider BAREMETAL); list their addresses under spec.hosts",
        )),
    }
}

/// What the documents of one file add up to.
#[derive(Default)]
pub(super) struct Collected {
    cluster: Option<(DocumentRef, Cluster)>,
    configs: Vec<Config>,
    plugins: Vec<(DocumentRef, Plugin)>,
    opaque: Vec<OpaqueDocument>,
    notes: Vec<String>,
}

impl Collected {
    fn claim_cluster(&self, doc: &DocumentRef) -> Result<(), ClusterfileError> {
        match &self.cluster {
            Some((first, _)) => Err(field_err(
                doc,
                (
                    "kind".into(),
                    format!("a Clusterfile holds one Cluster; the first is {first}"),
                ),
            )),
            None => Ok(()),
        }
    }

    fn name_of(doc: &DocumentRef, name: Option<String>) -> Result<String, ClusterfileError> {
        let name = name.unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_string());
        check_cluster_name(&name, "metadata.name").map_err(|e| field_err(doc, e))?;
        Ok(name)
    }

    pub fn cluster_v2(
        &mut self,
        doc: &DocumentRef,
        d: Document<ClusterSpecV2>,
    ) -> Result<(), ClusterfileError> {
        self.claim_cluster(doc)?;
        let name = Self::name_of(doc, d.name())?;
        let spec = d.spec.ok_or_else(|| {
            field_err(
                doc,
                ("spec".into(), "missing; a Cluster needs spec.hosts".into()),
            )
        })?;
        check_provider(doc, &spec.provider)?;
        for (present, field, what) in [
            (spec.container_runtime.is_some(), "spec.containerRuntime", "no container runtime is installed by sealer itself; an image installs what it needs"),
            (spec.host_aliases.is_some(), "spec.hostAliases", "write /etc/hosts entries from a pre-init-host plugin"),
        ] {
            if present {
                self.notes.push(ignored_note(doc, field, what));
            }
        }
        let registry = self.registry_of(doc, spec.registry.as_ref())?;
        let env = env_of(&spec.env, "spec.env").map_err(|e| field_err(doc, e))?;
        let data_root = match spec.data_root.as_deref().filter(|s| !s.is_empty()) {
            Some(root) => check_data_root(root, "spec.dataRoot").map_err(|e| field_err(doc, e))?,
            None => PathBuf::from(DEFAULT_DATA_ROOT),
        };
        let mut drafts = Vec::new();
        for (i, h) in spec.hosts.iter().flatten().enumerate() {
            let field = format!("spec.hosts[{i}]");
            host_v2(doc, &field, h, spec.ssh.as_ref(), &mut drafts)?;
        }
        attach_pins(&mut drafts, &spec.host_keys).map_err(|e| field_err(doc, e))?;
        check_hosts(&drafts, "spec.hosts").map_err(|e| field_err(doc, e))?;
        let cluster = Cluster {
            name,
            image: spec.image.filter(|s| !s.is_empty()),
            data_root,
            env,
            hosts: drafts.into_iter().map(|d| d.host).collect(),
            cmds: spec.cmd.unwrap_or_default(),
            cmd_args: spec.cmd_args.unwrap_or_default(),
            app_names: spec.app_names.unwrap_or_default(),
            configs: Vec::new(),
            plugins: Vec::new(),
            registry,
        };
        self.cluster = Some((doc.clone(), cluster));
        Ok(())
    }

    /// `spec.registry`: the local registry's port and `ha` act; its other fields are noted as
    /// not used (the agent serves pull-only plain HTTP, reached through containerd's
    /// hosts.toml). An external registry replaces it (as in sealer, it wins when both are set).
    fn registry_of(
        &mut self,
        doc: &DocumentRef,
        spec: Option<&super::documents::RegistrySpec>,
    ) -> Result<ClusterRegistry, ClusterfileError> {
        let mut registry = ClusterRegistry::default();
        let Some(spec) = spec else {
            return Ok(registry);
        };
        if let Some(external) = &spec.external_registry {
            if spec.local_registry.is_some() {
                self.notes.push(ignored_note(
                    doc,
                    "spec.registry.localRegistry",
                    "spec.registry.externalRegistry is set, so the images are pushed there and no host serves them",
                ));
            }
            registry.external = Some(external_registry(doc, external)?);
            return Ok(registry);
        }
        if let Some(local) = &spec.local_registry {
            if let Some(port) = &local.port {
                registry.port = port.0.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    field_err(
                        doc,
                        (
                            "spec.registry.localRegistry.port".into(),
                            format!("{:?} is not a port (1-65535)", port.0),
                        ),
                    )
                })?;
            }
            if let Some(ha) = local.ha {
                registry.ha = ha;
            }
            for (present, field) in [
                (local.domain.is_some(), "domain"),
                (local.insecure.is_some(), "insecure"),
                (
                    local.username.is_some() || local.password.is_some(),
                    "username/password",
                ),
                (local.cert.is_some(), "cert"),
            ] {
                if present {
                    self.notes.push(ignored_note(
                        doc,
                        &format!("spec.registry.localRegistry.{field}"),
                        "the registry is served pull-only over plain HTTP on each registry host's address and port; containerd reaches it through hosts.toml, so no domain, TLS or login is involved",
                    ));
                }
            }
        }
        Ok(registry)
    }

    pub fn cluster_v1(
        &mut self,
        doc: &DocumentRef,
        d: Document<ClusterSpecV1>,
    ) -> Result<(), ClusterfileError> {
        self.claim_cluster(doc)?;
        let name = Self::name_of(doc, d.name())?;
        let spec = d.spec.ok_or_else(|| {
            field_err(
                doc,
                (
                    "spec".into(),
                    "missing; a Cluster needs spec.masters.ipList".into(),
                ),
            )
        })?;
        check_provider(doc, &spec.provider)?;
        for (present, field, what) in [
            (
                spec.network.is_some(),
                "spec.network",
                "Kubernetes networking is the image's business",
            ),
            (
                spec.cert_sans.is_some(),
                "spec.certSANS",
                "no Kubernetes certificates are generated by sealer itself",
            ),
            (
                spec.container_runtime.is_some(),
                "spec.containerRuntime",
                "no container runtime is installed by sealer itself",
            ),
        ] {
            if present {
                self.notes.push(ignored_note(doc, field, what));
            }
        }
        let env = env_of(&spec.env, "spec.env").map_err(|e| field_err(doc, e))?;
        let data_root = match spec.data_root.as_deref().filter(|s| !s.is_empty()) {
            Some(root) => check_data_root(root, "spec.dataRoot").map_err(|e| field_err(doc, e))?,
            None => PathBuf::from(DEFAULT_DATA_ROOT),
        };
        let ssh = merge_ssh(spec.ssh.as_ref(), "spec.ssh", None, "spec.ssh")
            .map_err(|e| field_err(doc, e))?;
        let mut drafts = Vec::new();
        for (group, role) in [(&spec.masters, "master"), (&spec.nodes, "node")] {
            let field = format!("spec.{role}s");
            machines_v1(doc, &field, group.as_ref(), role, &ssh, &mut drafts)?;
        }
        attach_pins(&mut drafts, &spec.host_keys).map_err(|e| field_err(doc, e))?;
        check_hosts(&drafts, "spec.masters.ipList").map_err(|e| field_err(doc, e))?;
        let cluster = Cluster {
            name,
            image: spec.image.filter(|s| !s.is_empty()),
            data_root,
            env,
            hosts: drafts.into_iter().map(|d| d.host).collect(),
            cmds: Vec::new(),
            cmd_args: Vec::new(),
            app_names: Vec::new(),
            configs: Vec::new(),
            plugins: Vec::new(),
            registry: ClusterRegistry::default(),
        };
        self.cluster = Some((doc.clone(), cluster));
        Ok(())
    }

    pub fn config(
        &mut self,
        doc: &DocumentRef,
        d: Document<ConfigSpec>,
    ) -> Result<(), ClusterfileError> {
        let name = d.name().unwrap_or_default();
        let spec = d.spec.ok_or_else(|| {
            field_err(
                doc,
                (
                    "spec".into(),
                    "missing; a Config needs spec.path and spec.data".into(),
                ),
            )
        })?;
        if spec.process.is_some() {
            return Err(unsupported(
                doc,
                "Config spec.process",
                "value|toJson|toBase64|toSecret pipelines are not available; write the final content in spec.data",
            ));
        }
        let path_text = spec.path.as_deref().unwrap_or("");
        let mut path = PathBuf::from(path_text);
        // It must name a file below the root: `.` or `./` would name the rootfs itself.
        if path_text.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            || !path.components().any(|c| matches!(c, Component::Normal(_)))
        {
            return Err(field_err(
                doc,
                (
                    "spec.path".into(),
                    format!("`{path_text}` must name a file inside the image root filesystem: a relative path, without `..`, not `.` (for example etc/app.yaml)"),
                ),
            ));
        }
        if let Some(app) = spec.app_name.as_deref().filter(|a| !a.is_empty()) {
            if app.contains('/') || app == ".." || app == "." {
                return Err(field_err(
                    doc,
                    (
                        "spec.appName".into(),
                        format!("`{app}` is not an application name"),
                    ),
                ));
            }
            path = Path::new("application/apps").join(app).join(path);
        }
        let data = match spec.data {
            Some(serde_yaml::Value::String(s)) => s,
            Some(serde_yaml::Value::Null) | None => {
                return Err(field_err(
                    doc,
                    ("spec.data".into(), "missing; give the file content".into()),
                ))
            }
            Some(other) => serde_yaml::to_string(&other)
                .map_err(|e| field_err(doc, ("spec.data".into(), e.to_string())))?,
        };
        let strategy = match spec.strategy.as_deref() {
            None | Some("") | Some("overwrite") => ConfigStrategy::Overwrite,
            Some("merge") => ConfigStrategy::Merge,
            Some(other) => {
                return Err(field_err(
                    doc,
                    (
                        "spec.strategy".into(),
                        format!("`{other}` is not a strategy; use overwrite or merge"),
                    ),
                ))
            }
        };
        if strategy == ConfigStrategy::Merge {
            for part in serde_yaml::Deserializer::from_str(&data) {
                if let Err(e) = <serde_yaml::Value as serde::Deserialize>::deserialize(part) {
                    return Err(field_err(
                        doc,
                        (
                            "spec.data".into(),
                            format!("strategy merge needs YAML data: {e}"),
                        ),
                    ));
                }
            }
        }
        self.configs.push(Config {
            name,
            path,
            data,
            strategy,
        });
        Ok(())
    }

    pub fn plugin(
        &mut self,
        doc: &DocumentRef,
        d: Document<PluginSpec>,
    ) -> Result<(), ClusterfileError> {
        let name = d.name().unwrap_or_default();
        let spec = d.spec.ok_or_else(|| {
            field_err(
                doc,
                (
                    "spec".into(),
                    "missing; a Plugin needs spec.type, spec.action and spec.data".into(),
                ),
            )
        })?;
        // sealer ≤ 0.5 chose the plugin by metadata.name when spec.type was empty.
        let plugin_type = match spec.plugin_type.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => t.to_string(),
            None if [
                "SHELL",
                "HOSTNAME",
                "LABEL",
                "TAINT",
                "ETCD",
                "CLUSTERCHECK",
            ]
            .contains(&name.as_str()) =>
            {
                name.clone()
            }
            None if name == "ETCD_BACKUP" => name.clone(),
            None => {
                return Err(field_err(
                    doc,
                    ("spec.type".into(), "missing; use SHELL or HOSTNAME".into()),
                ))
            }
        };
        let hint = match plugin_type.as_str() {
            "SHELL" | "HOSTNAME" => None,
            "LABEL" => Some("set labels with spec.hosts[].labels"),
            "TAINT" => Some("set taints with spec.hosts[].taints"),
            "ETCD" | "ETCD_BACKUP" => {
                Some("back etcd up from a SHELL plugin (etcdctl snapshot save)")
            }
            "CLUSTERCHECK" => Some("wait for readiness from a SHELL plugin"),
            _ => Some(
                "only SHELL and HOSTNAME plugins exist; out-of-tree .so plugins are not loaded",
            ),
        };
        if let Some(hint) = hint {
            return Err(unsupported(doc, format!("Plugin type {plugin_type}"), hint));
        }
        let phases = match spec.action.as_deref().filter(|a| !a.trim().is_empty()) {
            Some(action) => action
                .split('|')
                .map(|a| {
                    Phase::parse(a).ok_or_else(|| {
                        field_err(
                            doc,
                            (
                                "spec.action".into(),
                                format!(
                                    "`{}` is not a phase; known: {}",
                                    a.trim(),
                                    Phase::all_spellings()
                                ),
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if plugin_type == "HOSTNAME" => vec![Phase::PreInitHost],
            None => {
                return Err(field_err(
                    doc,
                    (
                        "spec.action".into(),
                        "missing; for example pre-init-host or post-install".into(),
                    ),
                ))
            }
        };
        if spec.scope.is_some() && spec.on.is_some() {
            return Err(field_err(
                doc,
                ("spec.on".into(), "give scope or on, not both".into()),
            ));
        }
        let (selector, selector_from_on) = match (&spec.scope, &spec.on) {
            (Some(scope), _) => (scope_selector(scope), false),
            (None, Some(Scalar(on))) => (
                on_selector(on).map_err(|m| field_err(doc, ("spec.on".into(), m)))?,
                true,
            ),
            (None, None) => (HostSelector::All, false),
        };
        let timeout = match &spec.timeout {
            None => None,
            Some(Scalar(text)) => Some(parse_timeout(text).ok_or_else(|| {
                field_err(
                    doc,
                    (
                        "spec.timeout".into(),
                        format!("`{text}` is not a duration; write for example 90s, 30m or 2h"),
                    ),
                )
            })?),
        };
        let data = given(&spec.data).unwrap_or("");
        let kind = if plugin_type == "SHELL" {
            if data.trim().is_empty() {
                return Err(field_err(
                    doc,
                    (
                        "spec.data".into(),
                        "missing; a SHELL plugin needs a script".into(),
                    ),
                ));
            }
            PluginKind::Shell {
                script: data.to_string(),
            }
        } else {
            PluginKind::Hostname {
                names: hostname_lines(data).map_err(|e| field_err(doc, e))?,
            }
        };
        self.plugins.push((
            doc.clone(),
            Plugin {
                name,
                kind,
                phases,
                selector,
                selector_from_on,
                timeout,
            },
        ));
        Ok(())
    }

    pub fn opaque(&mut self, doc: &DocumentRef, d: Document<IgnoredAny>) {
        self.notes.push(format!(
            "{doc}: kept but not used: the installer does not run kubeadm, a kubelet or sealer applications; an image that needs them reads its own configuration"
        ));
        self.opaque.push(OpaqueDocument {
            index: doc.index,
            api_version: d.api_version.clone(),
            kind: d.kind.clone(),
            name: d.name(),
        });
    }

    pub fn finish(self) -> Result<super::Clusterfile, ClusterfileError> {
        let mut notes = self.notes;
        let plugins: Vec<Plugin> = self.plugins.iter().map(|(_, p)| p.clone()).collect();
        let cluster = match self.cluster {
            None => None,
            Some((_, mut cluster)) => {
                for (doc, plugin) in &self.plugins {
                    // A hook whose selector matches no host would silently never run.
                    let runs_somewhere = plugin
                        .phases
                        .iter()
                        .any(|phase| !plugin.targets(&cluster, *phase).is_empty());
                    if !runs_somewhere {
                        let field = if plugin.selector_from_on {
                            "spec.on"
                        } else {
                            "spec.scope"
                        };
                        return Err(field_err(
                            doc,
                            (
                                field.into(),
                                format!(
                                    "matches no host of the cluster (hosts: {}); name a role or address the cluster has",
                                    cluster
                                        .hosts
                                        .iter()
                                        .map(|h| format!("{} [{}]", h.ip, h.roles.join(",")))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ),
                        ));
                    }
                    if let HostSelector::Roles(roles) = &plugin.selector {
                        for role in roles {
                            if !cluster.hosts.iter().any(|h| h.has_role(role)) {
                                notes.push(format!(
                                    "{doc}: spec.scope: no host has the role `{role}`"
                                ));
                            }
                        }
                    }
                }
                cluster.configs = self.configs.clone();
                cluster.plugins = plugins.clone();
                Some(cluster)
            }
        };
        Ok(super::Clusterfile {
            cluster,
            configs: self.configs,
            plugins,
            opaque: self.opaque,
            notes,
        })
    }
}

fn host_v2(
    doc: &DocumentRef,
    field: &str,
    h: &HostSpecV2,
    cluster_ssh: Option<&SshSpec>,
    drafts: &mut Vec<HostDraft>,
) -> Result<(), ClusterfileError> {
    if h.count.is_some()
        || h.role.is_some()
        || h.cpu.is_some()
        || h.memory.is_some()
        || h.system_disk.is_some()
        || h.data_disk.is_some()
    {
        let what = if h.count.is_some() {
            "count"
        } else if h.role.is_some() {
            "role"
        } else {
            "cpu/memory/disks"
        };
        return Err(unsupported(
            doc,
            format!("hosts by {what} ({field}.{what})"),
            "this installer does not create cloud machines; give existing hosts as ips and roles",
        ));
    }
    let ips_field = format!("{field}.ips");
    let ips = ips_of(h.ips.as_deref().unwrap_or(&[]), &ips_field).map_err(|e| field_err(doc, e))?;
    check_host_count(drafts.len() + ips.len())
        .map_err(|e| field_err(doc, (ips_field.clone(), e.0)))?;
    if ips.is_empty() {
        return Err(field_err(
            doc,
            (ips_field, "no addresses; give ips: [192.168.0.2]".into()),
        ));
    }
    let roles = h.roles.clone().unwrap_or_default();
    check_roles(&roles, &format!("{field}.roles")).map_err(|e| field_err(doc, e))?;
    let ssh = merge_ssh(
        cluster_ssh,
        "spec.ssh",
        h.ssh.as_ref(),
        &format!("{field}.ssh"),
    )
    .map_err(|e| field_err(doc, e))?;
    let env = env_of(&h.env, &format!("{field}.env")).map_err(|e| field_err(doc, e))?;
    let labels: BTreeMap<String, String> = h
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let taints = h.taints.clone().unwrap_or_default();
    for (i, t) in taints.iter().enumerate() {
        check_taint(t, &format!("{field}.taints[{i}]")).map_err(|e| field_err(doc, e))?;
    }
    let host_key = match h.host_key.as_deref() {
        Some(_) if ips.len() > 1 => {
            return Err(field_err(
                doc,
                (
                    format!("{field}.hostKey"),
                    "this entry has several addresses; pin each one under spec.hostKeys instead"
                        .into(),
                ),
            ));
        }
        Some(key) => Some(
            HostKeyPin::parse(key)
                .map_err(|e| field_err(doc, (format!("{field}.hostKey"), e.to_string())))?,
        ),
        None => None,
    };
    for (address, ip_field) in ips {
        let mut ssh = ssh.clone();
        if let Some(port) = address.port {
            ssh.port = port;
        }
        drafts.push(HostDraft {
            field: ip_field,
            host: Host {
                ip: address.ip,
                name: address.name,
                roles: roles.clone(),
                ssh,
                env: env.clone(),
                labels: labels.clone(),
                taints: taints.clone(),
                host_key: host_key.clone(),
            },
        });
    }
    Ok(())
}

fn machines_v1(
    doc: &DocumentRef,
    field: &str,
    group: Option<&MachinesV1>,
    role: &str,
    ssh: &SshConfig,
    drafts: &mut Vec<HostDraft>,
) -> Result<(), ClusterfileError> {
    let Some(group) = group else { return Ok(()) };
    let list = group.ip_list.as_deref().unwrap_or(&[]);
    let count = given(&group.count).unwrap_or("0");
    if list.is_empty() && count.trim() != "0" {
        return Err(unsupported(
            doc,
            format!("hosts by count ({field}.count: {count})"),
            format!("this installer does not create cloud machines; list existing hosts in {field}.ipList"),
        ));
    }
    let ips = ips_of(list, &format!("{field}.ipList")).map_err(|e| field_err(doc, e))?;
    check_host_count(drafts.len() + ips.len())
        .map_err(|e| field_err(doc, (format!("{field}.ipList"), e.0)))?;
    for (address, ip_field) in ips {
        drafts.push(HostDraft {
            field: ip_field,
            host: Host::at(&address, role, ssh.clone()),
        });
    }
    Ok(())
}

/// `scope: master|node`; sealer's docs also write `master/node` and `master | node`.
fn scope_selector(scope: &str) -> HostSelector {
    let roles: Vec<String> = scope
        .split(['|', '/', ','])
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect();
    if roles.is_empty() {
        HostSelector::All
    } else {
        HostSelector::Roles(roles)
    }
}

/// Old `on:`: a label selector `k=v,k2=v2`, an address list/range, or roles.
fn on_selector(on: &str) -> Result<HostSelector, String> {
    let on = on.trim();
    if on.is_empty() {
        return Ok(HostSelector::All);
    }
    if on.contains('=') {
        let labels = on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_string(), v.trim().to_string()))
                }
                _ => Err(format!("`{kv}` is not a label selector key=value")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(HostSelector::Labels(labels));
    }
    if on.starts_with(|c: char| c.is_ascii_digit()) || on.contains(':') {
        return parse_host_list(on)
            .map(|addresses| HostSelector::Ips(addresses.into_iter().map(|a| a.ip).collect()))
            .map_err(|e| e.0);
    }
    Ok(scope_selector(on))
}

/// HOSTNAME data: `IP hostname` per line; blank lines and `#` comments skipped.
fn hostname_lines(data: &str) -> FieldResult<Vec<(IpAddr, String)>> {
    let mut names = Vec::new();
    for (n, line) in data.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let field = format!("spec.data line {}", n + 1);
        let mut words = line.split_whitespace();
        let (Some(ip), Some(name), None) = (words.next(), words.next(), words.next()) else {
            return Err((field, format!("`{line}` is not `IP hostname`")));
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| (field.clone(), format!("`{ip}` is not an IP address")))?;
        let valid = name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err((field, format!("`{name}` is not a valid hostname")));
        }
        names.push((ip, name.to_string()));
    }
    if names.is_empty() {
        return Err(("spec.data".into(), "no `IP hostname` lines".into()));
    }
    Ok(names)
}

/// `90s`, `30m`, `2h`, `45` (seconds) → a duration of at least one second.
fn parse_timeout(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit.trim() {
        "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => return None,
    };
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    Some(std::time::Duration::from_secs(n.checked_mul(scale)?))
}

#[cfg(test)]
mod host_side_tests {
    use crate::clusterfile::Clusterfile;

    fn config(path: &str) -> String {
        format!(
            "apiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: c\nspec:\n  path: {path}\n  data: x\n"
        )
    }

    #[test]
    fn a_config_path_that_names_the_rootfs_itself_is_refused() {
        for path in [".", "./", "'./.'"] {
            let err = Clusterfile::parse(&config(path)).unwrap_err().to_string();
            assert!(err.contains("spec.path"), "{path}: {err}");
            assert!(err.contains("must name a file inside"), "{path}: {err}");
        }
        assert!(Clusterfile::parse(&config("./etc/app.yaml")).is_ok());
    }

    #[test]
    fn a_plugin_timeout_is_a_duration() {
        let plugin = |timeout: &str| {
            format!(
                "apiVersion: sealer.io/v1\nkind: Plugin\nmetadata:\n  name: p\nspec:\n  type: SHELL\n  action: pre-init-host\n  timeout: {timeout}\n  data: 'true'\n"
            )
        };
        for (text, secs) in [("90s", 90), ("30m", 1800), ("2h", 7200), ("45", 45)] {
            let file = Clusterfile::parse(&plugin(text)).unwrap();
            assert_eq!(
                file.plugins[0].timeout,
                Some(std::time::Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in ["0", "soon", "10d", "-5s"] {
            let err = Clusterfile::parse(&plugin(bad)).unwrap_err().to_string();
            assert!(err.contains("spec.timeout"), "{bad}: {err}");
        }
    }
}
