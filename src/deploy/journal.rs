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
    /// Rendering the rootfs's `*.tmpl` files with the host's env.
    Render,
    /// Starting (or finding running) the registry service on a registry host (never journaled:
    /// every run checks it still runs).
    Registry,
    /// The container images on a registry host: one journal step per image, keyed by its
    /// manifest digest ([`Engine::image_key`]), whose work is the agent's check that the served
    /// layout holds the image (and the repair of what it lacks). The agent reads and writes
    /// those entries itself, so this step as a whole is never journaled.
    Images,
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

/// The variables that name the cluster's members: what a join or a delete changes in every
/// host's env. A render whose templates read none of them is recorded under a key without
/// them ([`Engine::render_key_without_members`]), so that a change of members does not
/// render such a host again; one that reads them is rendered again for the new members.
/// Hooks and CMDs are keyed without them: what a script reads cannot be told, and a change of
/// members is acted on by the join and clean hooks (sealer's phases), not by running the
/// install hooks and CMDs again on the hosts that were there.
pub(super) const MEMBER_VARIABLES: &[&str] = &["SEALER_MASTERS", "SEALER_NODES"];

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
                let rootfs = self.rootfs().display().to_string();
                let mut parts = vec!["rootfs", &self.payload.id, &rootfs];
                // A registry host's tree also holds the images layer.
                if self.serves_images(host) {
                    parts.push("with container images");
                }
                key_of(&parts)
            }
            Step::Registry => key_of(&["registry", &self.payload.id]),
            Step::Images => key_of(&["container images", &self.payload.id]),
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
            Step::Hook { plugin, phase } => self.hook_key(host, *plugin, *phase, false),
            // The key of a render whose templates read the member variables (those of one
            // that does not: [`Engine::render_key_without_members`]).
            Step::Render => key_of(&[
                "render",
                &self.payload.id,
                &self.env_text(host, true),
                &self.app_env_text(),
                &self.configs_text(),
            ]),
            Step::Rollback => key_of(&["rollback", &self.payload.id]),
            Step::RemoveRootfs => key_of(&["remove-rootfs", &self.payload.id]),
            Step::Forget => key_of(&["forget", &self.payload.id]),
            Step::Cmd { index } => self.cmd_key(host, *index, false),
        }
    }

    /// The key of hook `plugin` in `phase` on `host`; `members`: with the member list in the
    /// env (as an earlier sealer keyed it).
    fn hook_key(&self, host: &Host, plugin: usize, phase: Phase, members: bool) -> StepKey {
        let p = &self.plugins[plugin];
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
            &self.env_text(host, members),
        ])
    }

    /// The key of CMD `index` on `host`; `members` as for [`Engine::hook_key`].
    fn cmd_key(&self, host: &Host, index: usize, members: bool) -> StepKey {
        key_of(&[
            "cmd",
            &self.payload.id,
            &index.to_string(),
            &self.cmds[index],
            &self.env_text(host, members),
        ])
    }

    /// The keys under which `step` counts as done on `host`: its [`Engine::step_key`]; for the
    /// render also the key of a render whose templates read no member variable; for a hook or
    /// a CMD also the key an earlier sealer gave it, with the member list in its env.
    pub(super) fn done_keys(&self, host: &Host, step: &Step) -> Vec<StepKey> {
        let mut keys = vec![self.step_key(host, step)];
        match step {
            Step::Render => keys.push(self.render_key_without_members(host)),
            Step::Hook { plugin, phase } => keys.push(self.hook_key(host, *plugin, *phase, true)),
            Step::Cmd { index } => keys.push(self.cmd_key(host, *index, true)),
            _ => {}
        }
        keys
    }

    /// The key of a render whose templates read none of [`MEMBER_VARIABLES`]: what
    /// [`Engine::step_key`] gives it, with those variables left out of the env.
    pub(super) fn render_key_without_members(&self, host: &Host) -> StepKey {
        key_of(&[
            "render without members",
            &self.payload.id,
            &self.env_text(host, false),
            &self.app_env_text(),
            &self.configs_text(),
        ])
    }

    /// The Configs as the render's keys hold them.
    fn configs_text(&self) -> String {
        self.cluster
            .configs
            .iter()
            .map(|c| format!("{}\0{}\0", c.path.display(), c.data))
            .collect()
    }

    /// The journal key of the step of the container image whose manifest is `digest`: the
    /// same in every payload that carries the image, so an upgrade runs only the steps of the
    /// images it adds.
    pub(super) fn image_key(&self, digest: &str) -> StepKey {
        let root = self.images_root().display().to_string();
        key_of(&["container image", digest, &root])
    }

    /// What the step of the container image `image` is called: `image sha256:… REFERENCE`.
    pub(super) fn image_step_name(
        &self,
        image: &crate::container_images::ContainerImage,
    ) -> String {
        format!("image {} {}", image.digest, image.image)
    }

    /// What `step` is called in events, reports and the journal file.
    pub(super) fn step_name(&self, step: &Step) -> String {
        match step {
            Step::Distribute => "rootfs".into(),
            Step::Registry => "registry".into(),
            Step::Images => "container images".into(),
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
            Step::Render => "render *.tmpl".into(),
        }
    }

    /// The env a host's steps start from, as text for the keys; without `members`, less the
    /// [`MEMBER_VARIABLES`].
    fn env_text(&self, host: &Host, members: bool) -> String {
        self.base_env(host)
            .iter()
            .filter(|(k, _)| members || !MEMBER_VARIABLES.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}
