//! The environment every remote command gets.
//!
//! Owns the precedence (cluster env, then host env, then the `SEALER_*` variables the engine
//! guarantees); the quoting that carries it to a host is [`crate::shell`]. It does not run
//! anything.

use std::path::Path;

use super::model::{Cluster, Host};

/// Folds a `KEY=VALUE` list into one value per key, first appearance deciding the order. A key
/// repeated inside one list becomes a space-separated list (`CertSANs=a`, `CertSANs=b` →
/// `a b`), as sealer did; a later layer replaces the whole value.
fn fold_layer(merged: &mut Vec<(String, String)>, layer: &[(String, String)]) {
    let mut seen_in_layer: Vec<&str> = Vec::new();
    for (key, value) in layer {
        match merged.iter_mut().find(|(k, _)| k == key) {
            Some((_, existing)) if seen_in_layer.contains(&key.as_str()) => {
                existing.push(' ');
                existing.push_str(value);
            }
            Some((_, existing)) => *existing = value.clone(),
            None => merged.push((key.clone(), value.clone())),
        }
        seen_in_layer.push(key);
    }
}

/// The environment of every remote command on `host`: the cluster env, then the host env
/// (a key set there replaces the cluster value), then the variables the engine guarantees:
///
/// | name | value |
/// |---|---|
/// | `SEALER_CLUSTER` | cluster name |
/// | `SEALER_ROOTFS` | `rootfs` (the image root filesystem on that host) |
/// | `SEALER_MASTER0` | address of the first master |
/// | `SEALER_MASTERS` | addresses of all masters, space-separated, master0 first |
/// | `SEALER_NODES` | addresses of all non-master hosts, space-separated (may be empty) |
/// | `SEALER_HOST_IP` | address of `host` |
/// | `SEALER_HOST_ROLES` | roles of `host`, space-separated |
///
/// The `SEALER_*` values always win over user env of the same name.
pub fn host_env(cluster: &Cluster, host: &Host, rootfs: &Path) -> Vec<(String, String)> {
    let mut env = Vec::new();
    fold_layer(&mut env, &cluster.env);
    fold_layer(&mut env, &host.env);
    let join = |hosts: Vec<&Host>| {
        hosts
            .iter()
            .map(|h| h.ip.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let sealer = [
        ("SEALER_CLUSTER", cluster.name.clone()),
        ("SEALER_ROOTFS", rootfs.display().to_string()),
        ("SEALER_MASTER0", cluster.master0().ip.to_string()),
        ("SEALER_MASTERS", join(cluster.masters())),
        ("SEALER_NODES", join(cluster.nodes())),
        ("SEALER_HOST_IP", host.ip.to_string()),
        ("SEALER_HOST_ROLES", host.roles.join(" ")),
    ]
    .map(|(k, v)| (k.to_string(), v));
    fold_layer(&mut env, &sealer);
    env
}
