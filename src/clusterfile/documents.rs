//! The Clusterfile documents as written, one serde struct per document shape (sealer's kinds
//! and apiVersions). Unknown fields inside `spec` are errors (a typo must not be silently
//! ignored); fields sealer had that this installer does not use are declared so they can be
//! reported. Nothing here is validated beyond types: `resolve` turns these into the model.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A YAML scalar read as text: `port: 22` and `port: "22"` are both `"22"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// `env:` as a list of `KEY=VALUE` strings (sealer's form) or as a mapping; kept as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvList(pub Vec<String>);

impl<'de> Deserialize<'de> for EnvList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of KEY=VALUE strings (or a mapping KEY: VALUE)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvList, A::Error> {
                let mut items = Vec::new();
                while let Some(Scalar(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(EnvList(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvList, A::Error> {
                let mut items = Vec::new();
                while let Some((Scalar(k), v)) = map.next_entry::<Scalar, Option<Scalar>>()? {
                    items.push(format!("{k}={}", v.unwrap_or_default().0));
                }
                Ok(EnvList(items))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}

/// The envelope of every document. Top-level keys other than these (`status`, ...) are ignored.
#[derive(Debug, Deserialize)]
pub struct Document<S> {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub spec: Option<S>,
}

impl<S> Document<S> {
    pub fn name(&self) -> Option<String> {
        self.metadata
            .as_ref()
            .and_then(|m| m.name.as_ref())
            .map(|n| n.0.clone())
    }
}

/// `metadata`: only the name matters; annotations, labels and timestamps are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    pub name: Option<Scalar>,
}

/// `spec.ssh` and `spec.hosts[].ssh`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    pub user: Option<Scalar>,
    pub passwd: Option<Scalar>,
    pub pk: Option<Scalar>,
    #[serde(rename = "pkPasswd")]
    pub pk_passwd: Option<Scalar>,
    pub port: Option<Scalar>,
    /// sealer's `encrypted: true`: `passwd` AES-encrypted with a key built into sealer.
    pub encrypted: Option<bool>,
    /// Ours (k0sctl's `bastion`): the jump host the hosts are reached through.
    pub bastion: Option<BastionSpec>,
}

/// `ssh.bastion`: a jump host, with its own credentials (none: the ssh-agent).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BastionSpec {
    /// `host`, `host:port`, `[v6]:port` or `user@host[:port]`.
    pub address: Option<Scalar>,
    pub port: Option<Scalar>,
    pub user: Option<Scalar>,
    pub passwd: Option<Scalar>,
    pub pk: Option<Scalar>,
    #[serde(rename = "pkPasswd")]
    pub pk_passwd: Option<Scalar>,
}

/// `spec` of a `Cluster` in the hosts form (`sealer.io/v2`, `sealer.cloud/v2`,
/// `sealer.aliyun.com/v2alpha1`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpecV2 {
    pub image: Option<String>,
    pub env: Option<EnvList>,
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "cmd_args")]
    pub cmd_args: Option<Vec<String>>,
    pub app_names: Option<Vec<String>>,
    pub ssh: Option<SshSpec>,
    pub hosts: Option<Vec<HostSpecV2>>,
    pub data_root: Option<String>,
    /// Ours: `IP: "ssh-ed25519 AAAA..."` pins.
    pub host_keys: Option<BTreeMap<String, String>>,
    pub provider: Option<String>,
    // Kubernetes runtime settings of sealer that this installer does not use.
    pub container_runtime: Option<IgnoredAny>,
    pub registry: Option<RegistrySpec>,
    pub host_aliases: Option<IgnoredAny>,
}

/// `spec.registry`: where the cluster's container images are served from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistrySpec {
    pub local_registry: Option<LocalRegistrySpec>,
    pub external_registry: Option<ExternalRegistrySpec>,
}

/// `spec.registry.externalRegistry`: sealer's `domain`, `port`, `username`, `password`, and
/// ours: `prefix` (the repository path the images go under, e.g. a Harbor project) and
/// `insecure` (plain HTTP).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalRegistrySpec {
    pub domain: Option<Scalar>,
    pub port: Option<Scalar>,
    pub prefix: Option<Scalar>,
    pub username: Option<Scalar>,
    pub password: Option<Scalar>,
    pub insecure: Option<bool>,
}

/// `spec.registry.localRegistry` (sealer's fields; `port` and `ha` are used).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalRegistrySpec {
    pub domain: Option<Scalar>,
    pub port: Option<Scalar>,
    pub ha: Option<bool>,
    pub insecure: Option<bool>,
    pub username: Option<Scalar>,
    pub password: Option<Scalar>,
    pub cert: Option<IgnoredAny>,
}

/// One entry of `spec.hosts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSpecV2 {
    pub ips: Option<Vec<Scalar>>,
    pub roles: Option<Vec<String>>,
    pub ssh: Option<SshSpec>,
    pub env: Option<EnvList>,
    pub labels: Option<BTreeMap<String, Scalar>>,
    pub taints: Option<Vec<String>>,
    /// Ours: a pinned host key for a single-address entry.
    pub host_key: Option<String>,
    // Cloud infrastructure (hosts by count), sealer's `Infra` design; not supported.
    pub count: Option<Scalar>,
    pub role: Option<IgnoredAny>,
    pub cpu: Option<IgnoredAny>,
    pub memory: Option<IgnoredAny>,
    pub system_disk: Option<IgnoredAny>,
    pub data_disk: Option<IgnoredAny>,
}

/// `spec` of a `Cluster` in the masters/nodes form (`sealer.aliyun.com/v1alpha1`,
/// `zlink.aliyun.com/v1alpha1`, `sealer.io/v1`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpecV1 {
    pub image: Option<String>,
    pub env: Option<EnvList>,
    pub provider: Option<String>,
    pub ssh: Option<SshSpec>,
    pub masters: Option<MachinesV1>,
    pub nodes: Option<MachinesV1>,
    pub data_root: Option<String>,
    pub host_keys: Option<BTreeMap<String, String>>,
    pub network: Option<IgnoredAny>,
    #[serde(rename = "certSANS")]
    pub cert_sans: Option<IgnoredAny>,
    pub container_runtime: Option<IgnoredAny>,
    #[allow(dead_code)] // declared so that `status:` inside spec is accepted
    pub status: Option<IgnoredAny>,
}

/// `spec.masters` / `spec.nodes` of the old form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachinesV1 {
    pub ip_list: Option<Vec<Scalar>>,
    pub count: Option<Scalar>,
    // Machine sizes for cloud-created hosts; accepted when ipList is given, otherwise refused.
    #[allow(dead_code)]
    pub cpu: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub memory: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub system_disk: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub data_disks: Option<IgnoredAny>,
}

/// `spec` of a `Config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigSpec {
    pub path: Option<String>,
    pub data: Option<serde_yaml::Value>,
    pub strategy: Option<String>,
    pub process: Option<IgnoredAny>,
    pub app_name: Option<String>,
}

/// `spec` of a `Plugin`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    pub data: Option<Scalar>,
    pub action: Option<String>,
    pub scope: Option<String>,
    #[serde(rename = "on")]
    pub on: Option<Scalar>,
    /// How long the script may run: `90s`, `30m`, `2h`, or seconds.
    pub timeout: Option<Scalar>,
}
