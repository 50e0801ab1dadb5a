//! Hooks and CMDs: which commands an image installs with, the env every script on a host
//! starts from and gets from earlier exports, and running one script through the agent (the
//! script and its env on stdin, under a timeout).

use std::collections::BTreeMap;
use std::time::Duration;

use super::report::human_duration;
use super::{command_failure, Engine, HostSlot, InstallEvent, Payload, StepFailure};
use crate::agent::protocol::{
    AgentCommand, HookRequest, RenderOutcome, RenderRequest, EXIT_TIMED_OUT,
};
use crate::clusterfile::{host_env, shell_quote, Cluster, Host, PluginKind};
use crate::store::ImageConfig;

/// How long a hook (without its own `spec.timeout`) or a CMD may run before it is killed.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The image's install commands: CMDs, or for LAUNCH images the generated app commands; the
/// Clusterfile's `cmd` list replaces them.
pub(super) fn install_commands(cluster: &Cluster, payload: &Payload) -> Vec<String> {
    if !cluster.cmds.is_empty() {
        return cluster.cmds.clone();
    }
    image_install_commands(&payload.config, &cluster.app_names)
}

/// The install commands of an image config alone (no Clusterfile `cmd`): its CMDs, then the
/// commands of the apps in `app_names` (empty: the image's LAUNCH list).
pub fn image_install_commands(config: &ImageConfig, app_names: &[String]) -> Vec<String> {
    let Some(sealer) = &config.sealer else {
        return Vec::new();
    };
    let mut cmds = sealer.cmds.clone();
    let launch = if app_names.is_empty() {
        &sealer.launch
    } else {
        app_names
    };
    for name in launch {
        let Some(app) = sealer.apps.get(name) else {
            continue;
        };
        if !app.cmds.is_empty() {
            cmds.push(format!(
                "cd {} && {}",
                shell_quote(&app.path),
                app.cmds.join(" ")
            ));
            continue;
        }
        let files = |pred: &dyn Fn(&str) -> bool| {
            app.files
                .iter()
                .filter(|f| pred(f))
                .map(|f| format!("{}/{f}", app.path))
                .collect::<Vec<_>>()
        };
        let generated = match app.kind.as_str() {
            "helm" => vec![format!("helm install {name} {}/", app.path)],
            "kube" => files(&|f| f.ends_with(".yaml") || f.ends_with(".yml"))
                .into_iter()
                .map(|f| format!("kubectl apply -f {f}"))
                .collect(),
            "shell" => files(&|f| f.ends_with(".sh"))
                .into_iter()
                .map(|f| format!("bash {f}"))
                .collect(),
            _ => Vec::new(),
        };
        let env: Vec<String> = app.env.iter().map(|e| format!("export {e}")).collect();
        let mut line = env.join("; ");
        if !line.is_empty() {
            line.push_str("; ");
        }
        line.push_str(&generated.join(" && "));
        if !generated.is_empty() {
            cmds.push(line);
        }
    }
    cmds
}

impl Engine<'_> {
    /// The script of hook `plugin` on `host`, and how long it may run.
    pub(super) fn hook_script(&self, plugin: usize, host: &Host) -> (String, Duration) {
        let script = match &self.plugins[plugin].kind {
            PluginKind::Shell { script } => script.clone(),
            PluginKind::Hostname { names } => match names.iter().find(|(ip, _)| *ip == host.ip) {
                Some((_, name)) => format!(
                    "hostname {n} && echo {n} > /etc/hostname",
                    n = shell_quote(name)
                ),
                None => "true".to_string(),
            },
        };
        let timeout = self.plugins[plugin]
            .timeout
            .unwrap_or(DEFAULT_SCRIPT_TIMEOUT);
        (script, timeout)
    }

    /// The env a host's steps start from: image env, then cluster and host env and the SEALER_*
    /// variables. Step keys hash this (not the exports), so a rerun that reads back the exports
    /// of finished steps computes the same keys.
    pub(super) fn base_env(&self, host: &Host) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .payload
            .config
            .config
            .env
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        for (k, v) in host_env(self.cluster, host, &self.rootfs()) {
            set_env(&mut env, &k, &v);
        }
        env
    }

    /// Env of every command on `host`: [`Engine::base_env`], then what hooks exported.
    fn env(&self, host: &Host) -> Vec<(String, String)> {
        let mut env = self.base_env(host);
        let exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        for (_, text) in exports.iter() {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    let k = k.trim().trim_start_matches("export ").trim();
                    if !k.starts_with("SEALER_") && crate::clusterfile::is_env_name(k) {
                        set_env(&mut env, k, v);
                    }
                }
            }
        }
        env
    }

    /// The APPENV of every app, by its directory: what [`Engine::render`] sends.
    pub(super) fn app_envs(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let Some(sealer) = &self.payload.config.sealer else {
            return BTreeMap::new();
        };
        sealer
            .apps
            .values()
            .filter(|app| !app.env.is_empty() && !app.path.is_empty())
            .map(|app| {
                let env = app
                    .env
                    .iter()
                    .filter_map(|e| e.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (app.path.trim_end_matches('/').to_string(), env)
            })
            .collect()
    }

    /// [`Engine::app_envs`] as text for the render step's key.
    pub(super) fn app_env_text(&self) -> String {
        format!("{:?}", self.app_envs())
    }

    /// Renders the rootfs's `*.tmpl` files on the host with its env (what hooks and CMDs get,
    /// exports included) and APPENV; notes what was rendered. True when a template reads a
    /// variable naming the cluster's members ([`super::journal::MEMBER_VARIABLES`]).
    pub(super) fn render(&self, slot: &mut HostSlot, name: &str) -> Result<bool, StepFailure> {
        if !self.may_hold_templates() {
            return Ok(false);
        }
        let request = RenderRequest {
            env: self.env(&slot.host),
            apps: self.app_envs(),
        };
        let request =
            serde_json::to_vec(&request).map_err(|e| StepFailure::fatal(e.to_string()))?;
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Render {
                rootfs: self.rootfs(),
            },
        )?;
        let mut stdin: &[u8] = &request;
        let out = self.exec(slot, &cmd, Some(&mut stdin))?;
        if !out.success() {
            let mut failure = command_failure(name, &out);
            // The same templates and env fail the same way on a retry.
            failure.retry = false;
            return Err(failure);
        }
        let outcome: RenderOutcome = serde_json::from_slice(&out.stdout).map_err(|e| {
            StepFailure::fatal(format!("{name}: the agent's answer is unreadable: {e}"))
        })?;
        if !outcome.rendered.is_empty() {
            let rendered: Vec<String> = outcome
                .rendered
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            (self.events)(InstallEvent::Note {
                host: Some(slot.host.ip),
                text: format!("rendered {}", rendered.join(", ")),
            });
        }
        Ok(super::journal::MEMBER_VARIABLES
            .iter()
            .any(|v| outcome.reads.contains(*v)))
    }

    /// Whether the rootfs may hold a `*.tmpl` file, so that rendering must walk it (tens of
    /// milliseconds for a tree of tens of thousands of names): the image's bill of materials
    /// lists every file of its tree, so with none named `*.tmpl` there and no Config writing
    /// one, there is nothing to render. Without a readable bill of materials, it may.
    fn may_hold_templates(&self) -> bool {
        let configs = self
            .cluster
            .configs
            .iter()
            .any(|c| c.path.to_string_lossy().ends_with(".tmpl"));
        match self.payload.config.sbom.as_ref().map(|bom| bom.counts()) {
            Some(Ok(counts)) => counts.templates > 0 || configs,
            Some(Err(_)) | None => true,
        }
    }

    pub(super) fn run_script(
        &self,
        slot: &mut HostSlot,
        name: &str,
        script: &str,
        timeout: Duration,
        rootfs: &str,
        export_file: &str,
    ) -> Result<(), StepFailure> {
        let mut env = self.env(&slot.host);
        env.push(("SEALER_EXPORT".to_string(), export_file.to_string()));
        if let Some((bad, _)) = env
            .iter()
            .find(|(k, _)| !crate::clusterfile::is_env_name(k))
        {
            return Err(StepFailure::fatal(format!("bad env name {bad}")));
        }
        // Script and env travel on stdin: a command line is readable by every user of the host.
        let request = HookRequest {
            script: script.to_string(),
            env,
            dir: rootfs.to_string(),
            export_file: export_file.to_string(),
            timeout_secs: timeout.as_secs().max(1),
        };
        let request =
            serde_json::to_vec(&request).map_err(|e| StepFailure::fatal(e.to_string()))?;
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Run {
                work: self.work_dir(),
            },
        )?;
        // The stage line says the phase; this one says which hook or CMD of it runs.
        (self.events)(InstallEvent::Note {
            host: Some(slot.host.ip),
            text: format!("running {name}"),
        });
        let mut stdin: &[u8] = &request;
        let out = self.exec(slot, &cmd, Some(&mut stdin))?;
        if !out.success() {
            let mut failure = command_failure(name, &out);
            if out.status == EXIT_TIMED_OUT {
                failure.message = format!(
                    "{name} ran longer than its timeout of {} and was killed: {}",
                    human_duration(timeout),
                    out.tail()
                );
            }
            return Err(failure);
        }
        let printed = out.stdout_text();
        for line in printed.lines().filter(|l| !l.trim().is_empty()).take(50) {
            (self.events)(InstallEvent::Note {
                host: Some(slot.host.ip),
                text: line.to_string(),
            });
        }
        // What it said on stderr (warnings, mostly) is shown too, marked, even when it
        // succeeded: a warning hidden until a failure helps nobody.
        let warned = out.stderr_text();
        for line in warned.lines().filter(|l| !l.trim().is_empty()).take(50) {
            (self.events)(InstallEvent::Note {
                host: Some(slot.host.ip),
                text: format!("(stderr) {line}"),
            });
        }
        Ok(())
    }
}

fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    env.retain(|(key, _)| key != k);
    env.push((k.to_string(), v.to_string()));
}
