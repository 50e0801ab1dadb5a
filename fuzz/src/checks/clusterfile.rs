//! Fuzz check `clusterfile`: text loaded as a Clusterfile (documents, resolution, validation),
//! then what an install does with the result: host lists, per-host env and export scripts,
//! plugin targets and Config rendering (merge strategy included).
//!
//! Invariant: no panic (and no allocation past the limit the targets and the stable replay run
//! under). Shared by the fuzz target and the stable replay (`tests/fuzz_corpus.rs`), which
//! include this file by path; `crate::clusterfile` is the library's module in both.

use std::path::Path;

use crate::clusterfile::{export_script, host_env, Clusterfile, Phase};

/// Hosts and plugins looked at, at most (resolution itself bounds how many there may be).
const MAX_HOSTS: usize = 32;

const PHASES: &[&str] = &[
    "pre-install",
    "post-install",
    "pre-init-host",
    "post-init-host",
    "pre-clean-host",
    "PreInit",
    "PostInstall",
];

/// Run one input. Panics when an invariant does not hold.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let file = match Clusterfile::parse(&text) {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            let _ = e.unsupported_feature();
            return;
        }
    };
    let _ = &file.notes;
    for config in &file.configs {
        let _ = config.render(None);
        let _ = config.render(Some("a: 1\nb:\n  c: [1, 2]\n"));
        let _ = config.target(Path::new("/var/lib/sealer/c/rootfs"));
    }
    let Some(cluster) = &file.cluster else {
        return;
    };
    let _ = cluster.master0();
    let _ = (cluster.masters(), cluster.nodes(), cluster.rootfs());
    for host in cluster.hosts.iter().take(MAX_HOSTS) {
        let _ = cluster.host(host.ip);
        let env = host_env(cluster, host, &cluster.rootfs());
        let _ = export_script(&env);
    }
    for plugin in cluster.plugins.iter().take(MAX_HOSTS) {
        for phase in PHASES.iter().filter_map(|p| Phase::parse(p)) {
            let _ = plugin.targets(cluster, phase).len();
        }
    }
    for config in &cluster.configs {
        let _ = config.render(Some("x: [1]\n"));
    }
}
