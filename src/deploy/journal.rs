//! Steps and their keys. Every step the engine runs on a host is recorded in that host's journal
//! under a [`StepKey`]: the sha256 of what the step does (the payload, the step's own input, the
//! env it starts from), so a rerun with the same inputs finds it done and skips it, and a
//! changed input makes a new key. This module names the steps and computes their keys; the agent
//! keeps the journal (`agent done`, `agent state`).

use sha2::{Digest, Sha256};

use super::Engine;
use crate::agent::protocol::StepKey;
use crate::clusterfile::{Host, Phase, PluginKind};

/// One unit of work on one host.
#[derive(Clone)]
pub(super) enum Step {
    Distribute,
    Config {
        index: usize,
    },
    Hook {
        plugin: usize,
        phase: Phase,
    },
    Cmd {
        index: usize,
    },
    /// Starting (or finding running) the registry service on a registry host (never journaled:
    /// every run checks it still runs).
    Registry,
    /// containerd's hosts.toml for every registry the container images name, pointing at the
    /// registry hosts.
    Mirror,
    /// Stopping the registry service and removing the hosts.toml files on a host leaving the
    /// cluster (never journaled).
    Unregister,
    /// Bringing back the previous generation on a host that holds the payload being undone
    /// (never journaled).
    Rollback,
    /// Removing the rootfs of a host leaving the cluster (never journaled).
    RemoveRootfs,
    /// Removing everything else the cluster put on a host leaving it (never journaled).
    Forget,
}

/// The key of a step made of `parts`: the sha256 of each part followed by a NUL byte.
fn key_of(parts: &[&str]) -> StepKey {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    StepKey::from(<[u8; 32]>::from(h.finalize()))
}

impl Engine<'_> {
    /// The key `step` has in `host`'s journal.
    pub(super) fn step_key(&self, host: &Host, step: &Step) -> StepKey {
        match step {
            Step::Distribute => {
                let rootfs = self.cluster.rootfs().display().to_string();
                let mut parts = vec!["rootfs", &self.payload.id, &rootfs];
                // A registry host's tree also holds the images layer.
                if self.serves_images(host) {
                    parts.push("with container images");
                }
                key_of(&parts)
            }
            Step::Registry => key_of(&["registry", &self.payload.id]),
            Step::Mirror => key_of(&["mirror", &self.payload.id, &self.mirror_text()]),
            Step::Unregister => key_of(&["unregister", &self.payload.id]),
            Step::Config { index } => {
                let c = &self.cluster.configs[*index];
                key_of(&[
                    "config",
                    &self.payload.id,
                    &c.path.display().to_string(),
                    &c.data,
                    &format!("{:?}", c.strategy),
                ])
            }
            Step::Hook { plugin, phase } => {
                let p = &self.plugins[*plugin];
                let body = match &p.kind {
                    PluginKind::Shell { script } => script.clone(),
                    PluginKind::Hostname { names } => format!("{names:?}"),
                };
                key_of(&[
                    "hook",
                    &self.payload.id,
                    phase.name(),
                    &p.name,
                    &body,
                    &self.env_text(host),
                ])
            }
            Step::Rollback => key_of(&["rollback", &self.payload.id]),
            Step::RemoveRootfs => key_of(&["remove-rootfs", &self.payload.id]),
            Step::Forget => key_of(&["forget", &self.payload.id]),
            Step::Cmd { index } => key_of(&[
                "cmd",
                &self.payload.id,
                &index.to_string(),
                &self.cmds[*index],
                &self.env_text(host),
            ]),
        }
    }

    /// What `step` is called in events, reports and the journal file.
    pub(super) fn step_name(&self, step: &Step) -> String {
        match step {
            Step::Distribute => "rootfs".into(),
            Step::Registry => "registry".into(),
            Step::Mirror => "containerd hosts.toml".into(),
            Step::Unregister => "remove registry and hosts.toml".into(),
            Step::Rollback => "rollback to the previous tree".into(),
            Step::RemoveRootfs => "remove rootfs".into(),
            Step::Forget => "remove journal and agent".into(),
            Step::Config { index } => {
                format!("config {}", self.cluster.configs[*index].path.display())
            }
            Step::Hook { plugin, phase } => {
                format!("{} hook {}", phase.name(), self.plugins[*plugin].name)
            }
            Step::Cmd { index } => format!("CMD {}", self.cmds[*index]),
        }
    }

    /// The env a host's steps start from, as text for the keys.
    fn env_text(&self, host: &Host) -> String {
        self.base_env(host)
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}
