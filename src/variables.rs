//! Install-time variables: what an image declares (ARG defaults, required names) and what the
//! user gives (`spec.cmd_args` / `--cmd-args`, `spec.env`, `--env-file`, `-e`), folded into the
//! cluster env once, before any host is touched. The engine then exports that env (under each
//! host's own `hosts[].env` and the `SEALER_*` variables) to hooks, CMDs, LAUNCH and `.tmpl`
//! rendering.
//!
//! Precedence, lowest first: the image's ENV, its ARG defaults, `spec.cmd_args` and
//! `--cmd-args` (ARG overrides), the Clusterfile's `spec.env`, `--env-file` files in order, `-e`,
//! the host's `hosts[].env`, the `SEALER_*` variables. A required variable (the image label
//! [`LABEL_REQUIRED`]) without a non-empty value after all of them is asked for on a terminal,
//! else the install is refused naming it. This module decides values; it runs nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::clusterfile::{is_env_name, Cluster};
use crate::store::ImageConfig;

/// Image label listing the variables an install must be given (names separated by spaces or
/// commas): `LABEL sealer.io/required-vars="DB_PASSWORD ADMIN_EMAIL"`.
pub const LABEL_REQUIRED: &str = "sealer.io/required-vars";

/// Asks the user for a variable's value (`None`: no answer).
pub type Ask = dyn Fn(&str) -> Option<String>;

/// What the command line adds to the cluster's variables.
#[derive(Debug, Clone, Default)]
pub struct VariableFlags {
    /// `--env-file FILE`s, in order.
    pub env_files: Vec<PathBuf>,
    /// `-e KEY=VALUE`, as given.
    pub env: Vec<String>,
    /// `--cmd-args KEY=VALUE`: ARG overrides.
    pub cmd_args: Vec<String>,
    /// `--cmds`: replace the image's install commands.
    pub cmds: Vec<String>,
    /// `--apps`: the apps to launch instead of the image's LAUNCH list.
    pub apps: Vec<String>,
}

impl From<&crate::clusterfile::ClusterFlags> for VariableFlags {
    /// What the install flags add to an install's variables ([`settle`]).
    fn from(flags: &crate::clusterfile::ClusterFlags) -> Self {
        VariableFlags {
            env_files: flags.env_file.clone(),
            env: flags.env.clone(),
            cmd_args: flags.cmd_args.clone(),
            cmds: flags.cmds.clone(),
            apps: flags.apps.clone(),
        }
    }
}

/// Why the variables of an install could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum VariableError {
    #[error("--env-file {}: {message}", path.display())]
    EnvFile { path: PathBuf, message: String },
    #[error("{flag} {item:?}: {message}")]
    Item {
        flag: &'static str,
        item: String,
        message: String,
    },
    #[error("the image requires {} (label {LABEL_REQUIRED}) and {} no value; give {} with -e, --env-file or the Clusterfile's spec.env; nothing was installed", names.join(", "), if names.len() == 1 { "it has" } else { "they have" }, names.iter().map(|n| format!("{n}=...")).collect::<Vec<_>>().join(" "))]
    Missing { names: Vec<String> },
}

/// `KEY=VALUE` with a shell-name key.
fn pair(item: &str, flag: &'static str) -> Result<(String, String), VariableError> {
    let bad = |message: &str| VariableError::Item {
        flag,
        item: item.to_string(),
        message: message.to_string(),
    };
    let (k, v) = item
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE"))?;
    let k = k.trim();
    if !is_env_name(k) {
        return Err(bad(
            "the key must be letters, digits and _, not starting with a digit",
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The `KEY=VALUE` lines of an env file: blank lines and `#` comments skipped, an `export `
/// prefix allowed, a value in matching single or double quotes unquoted. Errors name the line.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE, got {line:?}", i + 1));
        };
        let k = k.trim();
        if !is_env_name(k) {
            return Err(format!(
                "line {}: {k:?} is not a variable name (letters, digits and _, not starting with a digit)",
                i + 1
            ));
        }
        let v = v.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if v.len() >= 2 && q == e => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Replaces, in `base`, every key `layer` sets by `layer`'s entries (a key repeated inside
/// `layer` stays repeated: the engine joins it into a list).
fn overlay(base: &mut Vec<(String, String)>, layer: &[(String, String)]) {
    base.retain(|(k, _)| !layer.iter().any(|(l, _)| l == k));
    base.extend(layer.iter().cloned());
}

/// The ARG defaults an image declares for install time, by name.
pub fn image_args(config: &ImageConfig) -> BTreeMap<String, String> {
    config
        .sealer
        .as_ref()
        .map(|s| s.args.clone())
        .unwrap_or_default()
}

/// The variables the image requires, from [`LABEL_REQUIRED`].
pub fn required(config: &ImageConfig) -> Vec<String> {
    config
        .config
        .labels
        .get(LABEL_REQUIRED)
        .map(|v| {
            v.split([' ', ','])
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Folds the image's and the user's variables into `cluster` as the module doc says; `-e`
/// is applied here only when the cluster came from a Clusterfile (`from_clusterfile`; the
/// host flags put it there already). `ask` is called for each required variable without a
/// value (a terminal prompt); `None` from it, or no `ask`, refuses the install.
pub fn settle(
    cluster: &mut Cluster,
    config: &ImageConfig,
    flags: &VariableFlags,
    from_clusterfile: bool,
    ask: Option<&Ask>,
) -> Result<(), VariableError> {
    settle_env(cluster, config, flags, from_clusterfile)?;
    check_required(cluster, config, ask)
}

/// [`settle`] without the check of required variables (a delete or a rollback installs
/// nothing new).
pub fn settle_env(
    cluster: &mut Cluster,
    config: &ImageConfig,
    flags: &VariableFlags,
    from_clusterfile: bool,
) -> Result<(), VariableError> {
    let mut env: Vec<(String, String)> = if from_clusterfile {
        cluster.env.clone()
    } else {
        Vec::new()
    };
    for path in &flags.env_files {
        let text = std::fs::read_to_string(path).map_err(|e| VariableError::EnvFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let pairs = parse_env_file(&text).map_err(|message| VariableError::EnvFile {
            path: path.clone(),
            message,
        })?;
        overlay(&mut env, &pairs);
    }
    let dash_e = if from_clusterfile {
        flags
            .env
            .iter()
            .map(|e| pair(e, "-e"))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        cluster.env.clone()
    };
    overlay(&mut env, &dash_e);

    // ARG defaults, overridden by cmd_args, under every env the user gave.
    let mut args = image_args(config);
    let image_env: Vec<&str> = config
        .config
        .env
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, _)| k))
        .collect();
    args.retain(|k, _| !image_env.contains(&k.as_str()));
    for item in cluster.cmd_args.iter().chain(&flags.cmd_args) {
        let (k, v) = pair(item, "--cmd-args")?;
        args.insert(k, v);
    }
    let mut merged: Vec<(String, String)> = args
        .into_iter()
        .filter(|(k, _)| !env.iter().any(|(e, _)| e == k))
        .collect();
    merged.extend(env);
    cluster.env = merged;
    cluster.cmd_args.extend(flags.cmd_args.iter().cloned());
    if !flags.cmds.is_empty() {
        cluster.cmds = flags.cmds.clone();
    }
    if !flags.apps.is_empty() {
        cluster.app_names = flags.apps.clone();
    }
    Ok(())
}

/// Every variable the image requires has a value, is asked for with `ask`, or is reported.
pub fn check_required(
    cluster: &mut Cluster,
    config: &ImageConfig,
    ask: Option<&Ask>,
) -> Result<(), VariableError> {
    let has_value = |cluster: &Cluster, name: &str| {
        let in_image = config
            .config
            .env
            .iter()
            .any(|e| matches!(e.split_once('='), Some((k, v)) if k == name && !v.is_empty()));
        let in_cluster = cluster.env.iter().any(|(k, v)| k == name && !v.is_empty());
        let on_every_host = !cluster.hosts.is_empty()
            && cluster
                .hosts
                .iter()
                .all(|h| h.env.iter().any(|(k, v)| k == name && !v.is_empty()));
        in_image || in_cluster || on_every_host
    };
    let mut missing = Vec::new();
    for name in required(config) {
        if has_value(cluster, &name) {
            continue;
        }
        match ask.and_then(|ask| ask(&name)).filter(|v| !v.is_empty()) {
            Some(value) => cluster.env.push((name, value)),
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        return Err(VariableError::Missing { names: missing });
    }
    Ok(())
}

/// Asks for a required variable on the terminal (stdin and stderr both a tty); `None` when
/// there is no terminal or nothing was typed.
pub fn ask_on_terminal(name: &str) -> Option<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    eprint!("the image requires {name}; value: ");
    std::io::stderr().flush().ok()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    let value = line.trim_end_matches(['\n', '\r']).to_string();
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusterfile::{from_flags, ClusterFlags};
    use crate::store::SealerConfig;

    fn cluster(env: &[&str]) -> Cluster {
        from_flags(&ClusterFlags {
            masters: Some("127.0.0.1".into()),
            env: env.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn image(env: &[&str], args: &[(&str, &str)], required: &str) -> ImageConfig {
        let mut config = ImageConfig::default();
        config.config.env = env.iter().map(|s| s.to_string()).collect();
        config.sealer = Some(SealerConfig {
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        });
        if !required.is_empty() {
            config
                .config
                .labels
                .insert(LABEL_REQUIRED.into(), required.into());
        }
        config
    }

    fn value(c: &Cluster, k: &str) -> Option<String> {
        c.env
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn arg_defaults_are_overridden_by_cmd_args_and_any_env() {
        let config = image(
            &[],
            &[("Version", "4.0.0"), ("Mode", "one"), ("Tier", "a")],
            "",
        );
        let mut c = cluster(&["Tier=b"]);
        c.cmd_args = vec!["Mode=ha".into()];
        let flags = VariableFlags {
            cmd_args: vec!["Version=5.0".into()],
            ..Default::default()
        };
        settle(&mut c, &config, &flags, false, None).unwrap();
        assert_eq!(value(&c, "Version").as_deref(), Some("5.0"));
        assert_eq!(value(&c, "Mode").as_deref(), Some("ha"));
        assert_eq!(value(&c, "Tier").as_deref(), Some("b"));
    }

    #[test]
    fn dash_e_beats_env_files_which_beat_the_clusterfile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("site.env");
        std::fs::write(&file, "# site\nexport A=file\nB=\"file b\"\n\nC='c'\n").unwrap();
        let mut c = cluster(&[]);
        c.env = vec![
            ("A".into(), "spec".into()),
            ("B".into(), "spec".into()),
            ("D".into(), "spec".into()),
        ];
        let flags = VariableFlags {
            env_files: vec![file],
            env: vec!["A=cli".into()],
            ..Default::default()
        };
        settle(&mut c, &image(&[], &[], ""), &flags, true, None).unwrap();
        assert_eq!(value(&c, "A").as_deref(), Some("cli"));
        assert_eq!(value(&c, "B").as_deref(), Some("file b"));
        assert_eq!(value(&c, "C").as_deref(), Some("c"));
        assert_eq!(value(&c, "D").as_deref(), Some("spec"));
    }

    #[test]
    fn a_required_variable_without_value_is_asked_for_or_refused_by_name() {
        let config = image(&["HAS=1"], &[], "DB_PASSWORD, HAS ADMIN");
        let mut c = cluster(&["ADMIN=root"]);
        let err = settle(&mut c, &config, &VariableFlags::default(), false, None).unwrap_err();
        assert!(err.to_string().contains("requires DB_PASSWORD"), "{err}");
        assert!(!err.to_string().contains("HAS"), "{err}");
        let mut c = cluster(&["ADMIN=root"]);
        let ask = |name: &str| (name == "DB_PASSWORD").then(|| "s3cret".to_string());
        settle(
            &mut c,
            &config,
            &VariableFlags::default(),
            false,
            Some(&ask),
        )
        .unwrap();
        assert_eq!(value(&c, "DB_PASSWORD").as_deref(), Some("s3cret"));
    }

    #[test]
    fn env_file_errors_name_the_line() {
        let e = parse_env_file("A=1\nnot a pair\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse_env_file("1A=x").unwrap_err();
        assert!(e.contains("not a variable name"), "{e}");
    }
}
