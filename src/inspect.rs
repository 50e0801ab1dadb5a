//! What an install runs as root, read from a payload before any host is touched: the install
//! commands (CMDs, or the LAUNCH apps' commands) as a cluster without `spec.cmd` runs them,
//! every hook from the image's `plugins/*.yaml` with its phases, scope and script, and the image
//! env with secret-looking values masked. With a Clusterfile, also what it adds: its own hooks,
//! its `spec.cmd` in place of the image's, and the files its Configs write.
//!
//! [`describe`] is the one description of an image that `sealer inspect IMAGE` (an image of the
//! store) and `./app.run inspect` (the image a package carries) both print: signer, env, labels,
//! container images, bill of materials, commands, hooks and Configs, as [`Inspection`] (JSON) or
//! [`Inspection::text_lines`] (text); each front adds only what its source alone has (store
//! layers and annotations; package payload id, frames and volumes). This module only reads; it
//! never writes or runs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clusterfile::{Cluster, ConfigStrategy, HostSelector, Plugin, PluginKind};
use crate::container_images::ContainerImage;
use crate::deploy::image_plugins::{image_plugins, parse_plugin_files, ImagePluginError};
use crate::deploy::{image_install_commands, Payload};
use crate::store::ImageConfig;
use crate::trust::Claim;

/// What replaces a secret-looking env value.
pub const MASK: &str = "***";

/// Substrings (upper case) of an env key that make its value a secret.
const SECRET_KEY_PARTS: &[&str] = &["PASSWORD", "PASSWD", "TOKEN", "SECRET", "KEY"];

/// One hook from the image's `plugins/*.yaml` (or from the Clusterfile given to inspect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub name: String,
    /// `image` (its `plugins/*.yaml`) or `clusterfile`.
    pub source: String,
    /// `SHELL` or `HOSTNAME`.
    pub kind: String,
    /// Phase names, sealer ≥ 0.9 spelling where there is one.
    pub phases: Vec<String>,
    /// Which hosts: `all`, `role:master`, `ip:…`, `label:k=v`; from an old `on:` key it is
    /// prefixed `on ` (it then also applies to cluster-level phases).
    pub scope: String,
    /// The script run as root (for HOSTNAME, the commands it generates per address); left out
    /// of inspect's output without `--hooks`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub script: String,
}

/// Everything an install of the payload runs as root, and the env it starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhatRuns {
    pub commands: Vec<String>,
    pub hooks: Vec<Hook>,
    /// `KEY=value` of the image env, secret-looking values replaced by [`MASK`].
    pub env: Vec<String>,
}

/// Whether an env key names a secret (case-insensitive substring match).
pub fn is_secret_key(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    SECRET_KEY_PARTS.iter().any(|part| upper.contains(part))
}

/// `KEY=value` with the value masked when the key looks secret; other entries unchanged.
pub fn mask_env_entry(entry: &str) -> String {
    match entry.split_once('=') {
        Some((key, _)) if is_secret_key(key) => format!("{key}={MASK}"),
        _ => entry.to_string(),
    }
}

/// An `ENV` instruction as recorded in a config's history (`ENV K=v K2=v2` or `ENV K v`) with
/// secret-looking values masked; any other instruction unchanged.
pub fn mask_env_instruction(created_by: &str) -> String {
    let Some(rest) = created_by.strip_prefix("ENV ") else {
        return created_by.to_string();
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.first() {
        Some(first) if !first.contains('=') => {
            if is_secret_key(first) {
                format!("ENV {first} {MASK}")
            } else {
                created_by.to_string()
            }
        }
        _ => {
            let masked: Vec<String> = words.iter().map(|w| mask_env_entry(w)).collect();
            format!("ENV {}", masked.join(" "))
        }
    }
}

/// Masks every `Env` entry of an OCI image config JSON (`config.Env`) and every `ENV` step of
/// its `history` in place.
pub fn mask_config_env(config: &mut serde_json::Value) {
    if let Some(history) = config.get_mut("history").and_then(|h| h.as_array_mut()) {
        for step in history.iter_mut() {
            if let Some(created_by) = step.get_mut("created_by") {
                if let Some(text) = created_by.as_str() {
                    *created_by = serde_json::Value::String(mask_env_instruction(text));
                }
            }
        }
    }
    if let Some(env) = config
        .get_mut("config")
        .and_then(|c| c.get_mut("Env"))
        .and_then(|e| e.as_array_mut())
    {
        for item in env.iter_mut() {
            if let Some(text) = item.as_str() {
                *item = serde_json::Value::String(mask_env_entry(text));
            }
        }
    }
}

/// A plugin as inspect shows it; `source` says where it came from.
fn hook_of(plugin: &Plugin, source: &str) -> Hook {
    let (kind, script) = match &plugin.kind {
        PluginKind::Shell { script } => ("SHELL", script.clone()),
        PluginKind::Hostname { names } => (
            "HOSTNAME",
            names
                .iter()
                .map(|(ip, name)| format!("{ip}: hostname {name}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    };
    let scope = scope_text(&plugin.selector);
    Hook {
        name: plugin.name.clone(),
        source: source.to_string(),
        kind: kind.to_string(),
        phases: plugin.phases.iter().map(|p| p.name().to_string()).collect(),
        scope: if plugin.selector_from_on {
            format!("on {scope}")
        } else {
            scope
        },
        script,
    }
}

/// The commands, hooks and masked env of an install of `payload`.
pub fn what_runs(payload: &Payload) -> Result<WhatRuns, ImagePluginError> {
    what_runs_with(payload, None)
}

/// The commands, hooks and masked env of an install of `payload` with `cluster`'s Clusterfile:
/// the image's hooks, then the Clusterfile's (the order the engine runs them in); its
/// `spec.cmd` replaces the image's commands, its `spec.appNames` the launched apps.
pub fn what_runs_with(
    payload: &Payload,
    cluster: Option<&Cluster>,
) -> Result<WhatRuns, ImagePluginError> {
    Ok(runs_of(&payload.config, &image_plugins(payload)?, cluster))
}

/// [`what_runs_with`] from the image config and the image's plugins.
fn runs_of(config: &ImageConfig, plugins: &[Plugin], cluster: Option<&Cluster>) -> WhatRuns {
    let mut hooks: Vec<Hook> = plugins.iter().map(|p| hook_of(p, "image")).collect();
    let commands = match cluster {
        Some(c) if !c.cmds.is_empty() => c.cmds.clone(),
        Some(c) => image_install_commands(config, &c.app_names),
        None => image_install_commands(config, &[]),
    };
    if let Some(c) = cluster {
        hooks.extend(c.plugins.iter().map(|p| hook_of(p, "clusterfile")));
    }
    WhatRuns {
        commands,
        hooks,
        env: config
            .config
            .env
            .iter()
            .map(|e| mask_env_entry(e))
            .collect(),
    }
}

/// A file a Config document of the Clusterfile writes on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigWrite {
    pub name: String,
    /// Where on each host: under the cluster's rootfs (`<dataRoot>/<cluster>/rootfs`).
    pub path: String,
    /// `overwrite` or `merge`.
    pub strategy: String,
    pub bytes: usize,
}

/// Who a package or image says signed it (not checked: `verify --trust` and `--trust` check).
/// JSON: `null` when unsigned, `"damaged"`, or `{key_id, trusted_comment, checked: false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Signer {
    Unsigned(()),
    Damaged(&'static str),
    Signed {
        key_id: String,
        trusted_comment: String,
        checked: bool,
    },
}

impl Signer {
    pub fn of(claim: &Claim) -> Signer {
        match claim {
            Claim::Unsigned => Signer::Unsigned(()),
            Claim::Damaged => Signer::Damaged("damaged"),
            Claim::SignedBy {
                key_id,
                trusted_comment,
            } => Signer::Signed {
                key_id: key_id.to_string(),
                trusted_comment: trusted_comment.clone(),
                checked: false,
            },
        }
    }

    fn text(&self) -> String {
        match self {
            Signer::Unsigned(()) => "unsigned".into(),
            Signer::Damaged(_) => "damaged signature (verify says why)".into(),
            Signer::Signed { key_id, .. } => format!("{key_id} (check it: --trust KEY)"),
        }
    }
}

/// How big the image's bill of materials is (`inspect --sbom` prints it whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SbomSummary {
    pub packages: usize,
    pub files: usize,
    pub container_images: usize,
}

/// Everything `inspect` shows of an image, whatever holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub image: String,
    pub image_digest: String,
    pub config_digest: String,
    pub signer: Signer,
    /// The image config with secret-looking env masked and the bill of materials left out.
    pub config: serde_json::Value,
    /// `KEY=value`, secret-looking values masked.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub container_images: Vec<ContainerImage>,
    pub sbom: Option<SbomSummary>,
    /// Why the image's bill of materials cannot be read, when it carries one that cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom_error: Option<String>,
    /// What the install runs on master0; `null` when it cannot be told (`runs_error`).
    pub commands: Option<Vec<String>>,
    /// Every hook, image first; each one's `script` only with `--hooks`.
    pub hooks: Option<Vec<Hook>>,
    pub runs_error: Option<String>,
    /// Files the Clusterfile's Configs write (empty without `-f`).
    pub configs: Vec<ConfigWrite>,
}

/// What [`describe`] reads.
pub struct InspectInput<'a> {
    pub image: &'a str,
    pub image_digest: &'a str,
    pub config_digest: &'a str,
    pub config: &'a ImageConfig,
    /// The config as stored (JSON text), for the view of the config.
    pub config_json: &'a str,
    pub claim: Claim,
    /// The image's plugins (`plugins/*.yaml`), or why they could not be read; with them, what
    /// runs is told.
    pub plugins: Result<Vec<Plugin>, String>,
    /// A Clusterfile given to inspect.
    pub cluster: Option<&'a Cluster>,
    /// Keep each hook's script text (`--hooks`).
    pub scripts: bool,
}

/// The description of an image both `inspect`s print.
pub fn describe(input: &InspectInput) -> Inspection {
    let mut config: serde_json::Value =
        serde_json::from_str(input.config_json).unwrap_or(serde_json::Value::Null);
    mask_config_env(&mut config);
    if let Some(map) = config.as_object_mut() {
        map.remove(crate::sbom::CONFIG_KEY);
    }
    let runs = input
        .plugins
        .as_ref()
        .map(|plugins| runs_of(input.config, plugins, input.cluster))
        .map_err(|e| e.clone());
    let (commands, hooks, runs_error) = match runs {
        Ok(mut runs) => {
            if !input.scripts {
                for hook in &mut runs.hooks {
                    hook.script.clear();
                }
            }
            (Some(runs.commands), Some(runs.hooks), None)
        }
        Err(e) => (
            None,
            None,
            Some(format!("cannot tell what the install runs: {e}")),
        ),
    };
    let configs = input
        .cluster
        .map(|c| {
            c.configs
                .iter()
                .map(|cfg| ConfigWrite {
                    name: cfg.name.clone(),
                    path: cfg.target(&c.rootfs()).display().to_string(),
                    strategy: match cfg.strategy {
                        ConfigStrategy::Overwrite => "overwrite",
                        ConfigStrategy::Merge => "merge",
                    }
                    .to_string(),
                    bytes: cfg.data.len(),
                })
                .collect()
        })
        .unwrap_or_default();
    let container_images = crate::container_images::listed_images(input.config);
    let (sbom, sbom_error) = match input.config.sbom.as_ref().map(|bom| bom.counts()) {
        Some(Ok(counts)) => (
            Some(SbomSummary {
                packages: counts.packages as usize,
                files: counts.files as usize,
                container_images: counts.container_images as usize,
            }),
            None,
        ),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    Inspection {
        image: input.image.to_string(),
        image_digest: input.image_digest.to_string(),
        config_digest: input.config_digest.to_string(),
        signer: Signer::of(&input.claim),
        config,
        env: input
            .config
            .config
            .env
            .iter()
            .map(|e| mask_env_entry(e))
            .collect(),
        labels: input.config.config.labels.clone(),
        sbom,
        sbom_error,
        container_images,
        commands,
        hooks,
        runs_error,
        configs,
    }
}

/// The plugins of a package's image: its config's record, else read from its layers.
pub fn package_plugins(payload: Result<&Payload, String>) -> Result<Vec<Plugin>, String> {
    image_plugins(payload?).map_err(|e| e.to_string())
}

/// [`describe`] for an image of the store (`sealer inspect IMAGE`). The plugins come from the
/// config's record; for an image built before the record, its payload is assembled as `sealer
/// run` would (every blob checked, the stub found) and its layers read. When they cannot be had,
/// the reason is the description's `runs_error`.
pub fn describe_store_image(
    store: &crate::store::Store,
    image: &crate::store::Image,
    cluster: Option<&Cluster>,
    scripts: bool,
) -> Result<Inspection, crate::store::StoreError> {
    let config_json =
        String::from_utf8_lossy(&store.read_blob(&image.manifest.config.digest)?).into_owned();
    let claim = crate::trust::image_claim(store, image).unwrap_or(Claim::Damaged);
    let name = image.reference.store_key();
    let recorded = image
        .config
        .sealer
        .as_ref()
        .and_then(|s| s.plugins.as_ref());
    let plugins = match recorded {
        Some(files) => parse_plugin_files(files, &name).map_err(|e| e.to_string()),
        None => crate::deploy::find_stub()
            .map_err(|e| e.to_string())
            .and_then(|stub| Payload::from_store(store, image, &stub).map_err(|e| e.to_string()))
            .and_then(|payload| image_plugins(&payload).map_err(|e| e.to_string())),
    };
    Ok(describe(&InspectInput {
        image: &name,
        image_digest: &image.digest,
        config_digest: &image.manifest.config.digest,
        config: &image.config,
        config_json: &config_json,
        claim,
        plugins,
        cluster,
        scripts,
    }))
}

impl Inspection {
    /// The text `inspect` prints between the source's own header and its layers: signer, env,
    /// cmd, labels, container images, bill of materials, what runs as root, Configs.
    pub fn text_lines(&self, cmd: &[String]) -> Vec<String> {
        let mut out = vec![format!("signer         {}", self.signer.text())];
        if !self.env.is_empty() {
            out.push(format!("env            {}", self.env.join(" ")));
        }
        if !cmd.is_empty() {
            out.push(format!("cmd            {}", cmd.join(" ")));
        }
        for (k, v) in &self.labels {
            out.push(format!("label          {k}={v}"));
        }
        for image in &self.container_images {
            out.push(format!(
                "container image {} {} {}/{} {}",
                image.image,
                image.digest,
                image.platform.os,
                image.platform.architecture,
                crate::ui::human_bytes(image.size)
            ));
        }
        match &self.sbom {
            Some(s) => out.push(format!(
                "sbom           CycloneDX 1.5: {} Debian package(s), {} file(s), {} container image(s) (inspect --sbom prints it)",
                s.packages, s.files, s.container_images
            )),
            None => match &self.sbom_error {
                Some(why) => out.push(format!("sbom           unreadable: {why}")),
                None => out.push("sbom           none".into()),
            },
        }
        if let Some(e) = &self.runs_error {
            out.push(format!("runs as root   unknown: {e}"));
        }
        for command in self.commands.iter().flatten() {
            out.push(format!("runs as root   {command}"));
        }
        for hook in self.hooks.iter().flatten() {
            let from = if hook.source == "image" {
                String::new()
            } else {
                format!(" (from the {})", hook.source)
            };
            out.push(format!(
                "hook           {} {} phase {} scope {}{from}",
                hook.name,
                hook.kind,
                hook.phases.join("|"),
                hook.scope
            ));
            for line in hook.script.lines() {
                out.push(format!("    | {line}"));
            }
        }
        for c in &self.configs {
            out.push(format!(
                "config         {} writes {} on every host ({}, {} bytes)",
                c.name, c.path, c.strategy, c.bytes
            ));
        }
        out
    }
}

fn scope_text(selector: &HostSelector) -> String {
    match selector {
        HostSelector::All => "all".to_string(),
        HostSelector::Roles(roles) => format!("role:{}", roles.join("|")),
        HostSelector::Ips(ips) => format!(
            "ip:{}",
            ips.iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        HostSelector::Labels(labels) => format!(
            "label:{}",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bill_of_materials_that_cannot_be_read_is_named_not_shown_as_none() {
        let config_json = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"io.sealer.sbom":{"components":3}}"#;
        let config: ImageConfig = serde_json::from_str(config_json).unwrap();
        let seen = describe(&InspectInput {
            image: "app:v1",
            image_digest: "sha256:0",
            config_digest: "sha256:0",
            config: &config,
            config_json,
            claim: crate::trust::Claim::Unsigned,
            plugins: Ok(Vec::new()),
            cluster: None,
            scripts: false,
        });
        assert_eq!(seen.sbom, None);
        let why = seen
            .sbom_error
            .clone()
            .expect("the reason it cannot be read");
        let lines = seen.text_lines(&[]);
        assert!(
            lines
                .iter()
                .any(|l| l == &format!("sbom           unreadable: {why}")),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("sbom           none")));
    }

    #[test]
    fn secret_looking_keys_are_masked_case_insensitively() {
        assert_eq!(mask_env_entry("DB_PASSWORD=hunter2"), "DB_PASSWORD=***");
        assert_eq!(mask_env_entry("api_token=x"), "api_token=***");
        assert_eq!(mask_env_entry("SshKey=abc"), "SshKey=***");
        assert_eq!(mask_env_entry("PATH=/bin"), "PATH=/bin");
        assert_eq!(mask_env_entry("NOVALUE"), "NOVALUE");
        assert_eq!(
            mask_env_instruction("ENV A=1 DB_PASSWORD=hunter2"),
            "ENV A=1 DB_PASSWORD=***"
        );
        assert_eq!(
            mask_env_instruction("ENV MY_TOKEN abc def"),
            "ENV MY_TOKEN ***"
        );
        assert_eq!(mask_env_instruction("CMD echo hi"), "CMD echo hi");
    }
}
