//! What an install runs as root, read from a payload before any host is touched: the install
//! commands (CMDs, or the LAUNCH apps' commands) as a cluster without `spec.cmd` runs them,
//! every hook from the image's `plugins/*.yaml` with its phases, scope and script, and the image
//! env with secret-looking values masked. This module only reads; it never writes or runs.

use serde::Serialize;

use crate::clusterfile::{HostSelector, PluginKind};
use crate::deploy::image_plugins::{image_plugins, ImagePluginError};
use crate::deploy::{image_install_commands, Payload};

/// What replaces a secret-looking env value.
pub const MASK: &str = "***";

/// Substrings (upper case) of an env key that make its value a secret.
const SECRET_KEY_PARTS: &[&str] = &["PASSWORD", "PASSWD", "TOKEN", "SECRET", "KEY"];

/// One hook from the image's `plugins/*.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub name: String,
    /// `SHELL` or `HOSTNAME`.
    pub kind: String,
    /// Phase names, sealer ≥ 0.9 spelling where there is one.
    pub phases: Vec<String>,
    /// Which hosts: `all`, `role:master`, `ip:…`, `label:k=v`; from an old `on:` key it is
    /// prefixed `on ` (it then also applies to cluster-level phases).
    pub scope: String,
    /// The script run as root (for HOSTNAME, the commands it generates per address).
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

/// The commands, hooks and masked env of an install of `payload`.
pub fn what_runs(payload: &Payload) -> Result<WhatRuns, ImagePluginError> {
    let hooks = image_plugins(payload)?
        .into_iter()
        .map(|plugin| {
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
                kind: kind.to_string(),
                phases: plugin.phases.iter().map(|p| p.name().to_string()).collect(),
                scope: if plugin.selector_from_on {
                    format!("on {scope}")
                } else {
                    scope
                },
                script,
            }
        })
        .collect();
    Ok(WhatRuns {
        commands: image_install_commands(&payload.config, &[]),
        hooks,
        env: payload
            .config
            .config
            .env
            .iter()
            .map(|e| mask_env_entry(e))
            .collect(),
    })
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
