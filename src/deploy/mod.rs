//! The deploy engine: the one implementation of "install this payload onto these hosts", used by
//! `sealer run` (payload from the store) and `app.run install` (payload from the package).
//!
//! Stages, in order: connect + preflight (arch, free disk) → agent upload → distribute (send only
//! frames a host lacks, unpack remotely into a staging dir swapped into `<dataRoot>/<cluster>/rootfs`)
//! → Configs → `pre-init-host` / `post-init-host` hooks on hosts in scope → `pre-install` hooks →
//! the image's CMDs on master0 → `post-install` hooks. Every step is recorded in a journal on its
//! host keyed by content, so a second run with the same inputs does nothing and a failed run
//! resumes where it stopped. Hosts run in parallel (bounded); a failing host is retried with
//! exponential backoff and jitter, then reported, and never stops the others; cluster stages
//! (pre-install, CMDs, post-install) wait until every host is ready.
//!
//! This module decides what runs where and in which order; it does not parse Clusterfiles,
//! speak SSH, or know the `.run` format.

pub mod image_plugins;
pub mod payload;
pub mod remote;
pub mod target;

use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::agent::protocol::{
    self, AgentCommand, HookRequest, HostState, PlanLayer, EXIT_DISK_FULL, EXIT_TIMED_OUT,
};
use crate::clusterfile::{host_env, shell_quote, Cluster, Host, Phase, Plugin, PluginKind};
pub use payload::{find_stub, Payload, PayloadLayer};
pub use remote::{ExecOutput, LocalHost, Remote, RemoteError};

/// Opens a connection to a host.
pub type Connector = dyn Fn(&Host) -> Result<Box<dyn Remote>, RemoteError> + Send + Sync;

/// How to install.
pub struct InstallOptions {
    /// Hosts worked on at once.
    pub parallel: usize,
    /// Attempts per host and stage before the host is reported failed.
    pub attempts: u32,
    /// First retry delay; doubles each time, with jitter.
    pub backoff: Duration,
    pub connect: Arc<Connector>,
}

impl InstallOptions {
    pub fn new(connect: Arc<Connector>) -> Self {
        InstallOptions {
            parallel: 8,
            attempts: 3,
            backoff: Duration::from_secs(1),
            connect,
        }
    }
}

/// What the engine reports while it works.
#[derive(Debug, Clone)]
pub enum InstallEvent {
    /// A host starts a stage.
    Stage { host: IpAddr, stage: String },
    /// Bytes of frames sent to a host so far, of `total` it needs.
    Sent { host: IpAddr, sent: u64, total: u64 },
    /// A step was skipped because the host's journal has it.
    Skipped { host: IpAddr, step: String },
    /// Something worth a line (a retry, a finished hook).
    Note { host: Option<IpAddr>, text: String },
}

/// How a host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// Steps ran and all succeeded.
    Installed,
    /// Every step was already done.
    UpToDate,
    /// It failed; the message says where and why.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct HostReport {
    pub ip: IpAddr,
    pub roles: Vec<String>,
    pub outcome: HostOutcome,
    pub bytes_sent: u64,
    pub steps_run: usize,
    pub steps_skipped: usize,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct InstallReport {
    pub hosts: Vec<HostReport>,
    /// Why cluster stages did not run, when they did not.
    pub cluster_stages_skipped: Option<String>,
    pub elapsed: Duration,
}

impl InstallReport {
    pub fn success(&self) -> bool {
        self.cluster_stages_skipped.is_none()
            && self
                .hosts
                .iter()
                .all(|h| !matches!(h.outcome, HostOutcome::Failed(_)))
    }

    /// True when nothing had to be done anywhere.
    pub fn up_to_date(&self) -> bool {
        self.success()
            && self
                .hosts
                .iter()
                .all(|h| h.outcome == HostOutcome::UpToDate)
    }
}

/// Errors that stop an install before any host is touched.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the cluster has no hosts")]
    NoHosts,
    #[error("{0}")]
    Payload(String),
}

struct HostSlot {
    host: Host,
    remote: Option<Box<dyn Remote>>,
    state: HostState,
    failed: Option<String>,
    bytes_sent: u64,
    steps_run: usize,
    steps_skipped: usize,
    started: Instant,
}

impl HostSlot {
    /// The open connection to the host; not connected is a retryable failure.
    fn connected(&self) -> Result<&dyn Remote, StepFailure> {
        self.remote
            .as_deref()
            .ok_or_else(|| StepFailure::retry("not connected".into()))
    }
}

/// One unit of work on one host.
#[derive(Clone)]
enum Step {
    Distribute,
    Config { index: usize },
    Hook { plugin: usize, phase: Phase },
    Cmd { index: usize },
}

struct Engine<'a> {
    cluster: &'a Cluster,
    payload: &'a Payload,
    opts: &'a InstallOptions,
    events: &'a (dyn Fn(InstallEvent) + Sync),
    /// Exports by step key, in the order steps finished.
    exports: Mutex<Vec<(String, String)>>,
    cmds: Vec<String>,
    /// The image's `plugins/*.yaml`, then the Clusterfile's plugins.
    plugins: Vec<Plugin>,
}

fn sha_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// The image's install commands: CMDs, or for LAUNCH images the generated app commands; the
/// Clusterfile's `cmd` list replaces them.
fn install_commands(cluster: &Cluster, payload: &Payload) -> Vec<String> {
    if !cluster.cmds.is_empty() {
        return cluster.cmds.clone();
    }
    let Some(sealer) = &payload.config.sealer else {
        return Vec::new();
    };
    let mut cmds = sealer.cmds.clone();
    let launch = if cluster.app_names.is_empty() {
        &sealer.launch
    } else {
        &cluster.app_names
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

/// Install `payload` onto `cluster`.
pub fn install(
    cluster: &Cluster,
    payload: &Payload,
    opts: &InstallOptions,
    events: &(dyn Fn(InstallEvent) + Sync),
) -> Result<InstallReport, InstallError> {
    if cluster.hosts.is_empty() {
        return Err(InstallError::NoHosts);
    }
    let started = Instant::now();
    let mut plugins = image_plugins::image_plugins(payload).map_err(InstallError::Payload)?;
    plugins.extend(cluster.plugins.iter().cloned());
    let engine = Engine {
        cluster,
        payload,
        opts,
        events,
        exports: Mutex::new(Vec::new()),
        cmds: install_commands(cluster, payload),
        plugins,
    };
    let slots: Vec<Mutex<HostSlot>> = cluster
        .hosts
        .iter()
        .map(|h| {
            Mutex::new(HostSlot {
                host: h.clone(),
                remote: None,
                state: HostState::default(),
                failed: None,
                bytes_sent: 0,
                steps_run: 0,
                steps_skipped: 0,
                started: Instant::now(),
            })
        })
        .collect();

    // Host stages: every host, in parallel.
    engine.for_hosts(&slots, &|_| true, "prepare", &|engine, slot| {
        engine.prepare(slot)
    });
    engine.for_hosts(&slots, &|_| true, "distribute", &|engine, slot| {
        engine.run_step(slot, &Step::Distribute)
    });
    for index in 0..cluster.configs.len() {
        engine.for_hosts(&slots, &|_| true, "config", &|engine, slot| {
            engine.run_step(slot, &Step::Config { index })
        });
    }
    for phase in [Phase::PreInitHost, Phase::PostInitHost] {
        engine.run_phase(&slots, phase);
    }

    // Cluster stages: only when every host is ready.
    let failed: Vec<String> = slots
        .iter()
        .filter_map(|s| {
            s.lock()
                .ok()
                .and_then(|s| s.failed.as_ref().map(|_| s.host.ip.to_string()))
        })
        .collect();
    let mut cluster_stages_skipped = None;
    if failed.is_empty() {
        engine.run_phase(&slots, Phase::PreInstall);
        let master0 = cluster.master0().ip;
        for index in 0..engine.cmds.len() {
            engine.for_hosts(&slots, &|h| h.ip == master0, "install", &|engine, slot| {
                engine.run_step(slot, &Step::Cmd { index })
            });
        }
        engine.run_phase(&slots, Phase::PostInstall);
    } else {
        cluster_stages_skipped = Some(format!(
            "cluster steps (pre-install hooks, install commands, post-install hooks) wait until every host is ready; not ready: {}",
            failed.join(", ")
        ));
    }

    let hosts = slots
        .into_iter()
        .map(|slot| {
            let slot = slot.into_inner().unwrap_or_else(|p| p.into_inner());
            let outcome = match &slot.failed {
                Some(reason) => HostOutcome::Failed(reason.clone()),
                None if slot.steps_run == 0 => HostOutcome::UpToDate,
                None => HostOutcome::Installed,
            };
            HostReport {
                ip: slot.host.ip,
                roles: slot.host.roles.clone(),
                outcome,
                bytes_sent: slot.bytes_sent,
                steps_run: slot.steps_run,
                steps_skipped: slot.steps_skipped,
                elapsed: slot.started.elapsed(),
            }
        })
        .collect();
    Ok(InstallReport {
        hosts,
        cluster_stages_skipped,
        elapsed: started.elapsed(),
    })
}

impl Engine<'_> {
    fn work_dir(&self) -> PathBuf {
        self.cluster
            .data_root
            .join(&self.cluster.name)
            .join(".sealer")
    }

    fn agent_path(&self, remote: &dyn Remote) -> String {
        if remote.is_local() {
            if let Ok(exe) = std::env::current_exe() {
                return exe.display().to_string();
            }
        }
        self.cluster
            .data_root
            .join(".agent")
            .join(format!("sealer-agent-{}", &self.payload.agent_sha256[..16]))
            .display()
            .to_string()
    }

    /// The shell command that runs the agent's `command`, each word quoted. On a remote host
    /// the agent is checked first, every time, by [`agent_guard`].
    fn agent_cmd(&self, remote: &dyn Remote, command: &AgentCommand) -> String {
        let agent = self.agent_path(remote);
        let args: Vec<String> = command.to_args().iter().map(|w| shell_quote(w)).collect();
        let args = args.join(" ");
        if remote.is_local() {
            return format!("{} agent {args}", shell_quote(&agent));
        }
        format!(
            "sealer_agent=$({}) && \"$sealer_agent\" agent {args}",
            agent_guard(&agent, &self.payload.agent_sha256)
        )
    }

    /// Run `work` for every host matching `select` that has not failed, `parallel` at a time,
    /// each with retries.
    fn for_hosts(
        &self,
        slots: &[Mutex<HostSlot>],
        select: &(dyn Fn(&Host) -> bool + Sync),
        stage: &str,
        work: &(dyn Fn(&Self, &mut HostSlot) -> Result<(), StepFailure> + Sync),
    ) {
        let chosen: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.lock()
                    .map(|s| s.failed.is_none() && select(&s.host))
                    .unwrap_or(false)
            })
            .map(|(i, _)| i)
            .collect();
        let next = AtomicUsize::new(0);
        let workers = self.opts.parallel.max(1).min(chosen.len());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&index) = chosen.get(i) else { return };
                    let Ok(mut slot) = slots[index].lock() else {
                        return;
                    };
                    (self.events)(InstallEvent::Stage {
                        host: slot.host.ip,
                        stage: stage.to_string(),
                    });
                    self.with_retries(&mut slot, stage, work);
                });
            }
        });
    }

    fn with_retries(
        &self,
        slot: &mut HostSlot,
        stage: &str,
        work: &(dyn Fn(&Self, &mut HostSlot) -> Result<(), StepFailure> + Sync),
    ) {
        let mut attempt = 1;
        loop {
            let result = if slot.remote.is_none() {
                self.connect(slot).and_then(|_| work(self, slot))
            } else {
                work(self, slot)
            };
            match result {
                Ok(()) => return,
                Err(failure) => {
                    if failure.drop_connection {
                        slot.remote = None;
                    }
                    if !failure.retry || attempt >= self.opts.attempts {
                        let attempts = if attempt > 1 {
                            format!(" (after {attempt} attempts)")
                        } else {
                            String::new()
                        };
                        slot.failed = Some(format!("{stage}: {}{attempts}", failure.message));
                        return;
                    }
                    let delay = backoff(self.opts.backoff, attempt);
                    (self.events)(InstallEvent::Note {
                        host: Some(slot.host.ip),
                        text: format!(
                            "{stage} failed ({}); retrying in {:.1}s",
                            failure.message,
                            delay.as_secs_f64()
                        ),
                    });
                    std::thread::sleep(delay);
                    attempt += 1;
                }
            }
        }
    }

    fn connect(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let remote = (self.opts.connect)(&slot.host).map_err(StepFailure::from_remote)?;
        slot.remote = Some(remote);
        Ok(())
    }

    fn exec(
        &self,
        slot: &mut HostSlot,
        command: &str,
        stdin: Option<&mut dyn Read>,
    ) -> Result<ExecOutput, StepFailure> {
        let remote = slot
            .remote
            .as_mut()
            .ok_or_else(|| StepFailure::retry("not connected".into()))?;
        remote
            .exec(command, stdin)
            .map_err(StepFailure::from_remote)
    }

    fn exec_ok(
        &self,
        slot: &mut HostSlot,
        what: &str,
        command: &str,
        stdin: Option<&mut dyn Read>,
    ) -> Result<ExecOutput, StepFailure> {
        let out = self.exec(slot, command, stdin)?;
        if out.success() {
            Ok(out)
        } else {
            Err(command_failure(what, &out))
        }
    }

    /// Preflight (arch, disk), agent upload, journal read.
    fn prepare(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let local = slot.remote.as_ref().is_some_and(|r| r.is_local());
        let agent = self.agent_path(slot.connected()?);
        let data_root = self.cluster.data_root.display().to_string();
        let probe = format!(
            "uname -m; d={}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; df -Pk \"$d\" | tail -n 1; if [ -f {a} ] && [ \"$(sha256sum < {a})\" = \"{sha}  -\" ]; then echo agent-present; else echo agent-missing; fi",
            shell_quote(&data_root),
            a = shell_quote(&agent),
            sha = self.payload.agent_sha256
        );
        let out = self.exec_ok(slot, "preflight", &probe, None)?;
        let text = out.stdout_text();
        let mut lines = text.lines();
        let arch = lines.next().unwrap_or("").trim().to_string();
        let want = match self.payload.config.architecture.as_str() {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            other => other,
        };
        if arch != want {
            return Err(StepFailure::fatal(format!(
                "the host is {arch}, the image is for {want}"
            )));
        }
        let free_kb: u64 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let agent_present = lines
            .next()
            .map(|l| l.trim() == "agent-present")
            .unwrap_or(false);
        if !agent_present && !local {
            let cmd = format!(
                "set -e; umask 022; d=$(dirname {a}); mkdir -p \"$d\"; d=$(readlink -f -- \"$d\"); {chain}; t=$(mktemp \"$d/.sealer-agent.XXXXXX\"); cat > \"$t\"; echo \"{sha}  $t\" | sha256sum -c --status || {{ rm -f \"$t\"; echo 'the agent arrived corrupt' >&2; exit 3; }}; chmod 755 \"$t\"; mv -f \"$t\" {a}",
                a = shell_quote(&agent),
                chain = root_only_chain("d", "upload the agent into $d"),
                sha = self.payload.agent_sha256
            );
            let bytes = self.payload.agent.clone();
            let mut reader: &[u8] = &bytes;
            self.exec_ok(slot, "uploading the agent", &cmd, Some(&mut reader))?;
        }
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::State {
                work: self.work_dir(),
            },
        );
        let out = self.exec_ok(slot, "reading the journal", &cmd, None)?;
        slot.state = serde_json::from_slice(&out.stdout)
            .map_err(|e| StepFailure::fatal(format!("the agent's state is unreadable: {e}")))?;
        let needed_kb = (self.payload.compressed_len() + self.payload.uncompressed_len()) / 1024;
        let rootfs_done = slot
            .state
            .done
            .contains(&self.step_key(&slot.host, &Step::Distribute));
        if !rootfs_done && free_kb < needed_kb {
            return Err(StepFailure::fatal(format!(
                "{} has {} MiB free, the image needs {} MiB; free space or choose another dataRoot",
                data_root,
                free_kb / 1024,
                needed_kb / 1024
            )));
        }
        // Exports recorded by earlier runs are visible to every later step.
        let mut exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        for (key, text) in &slot.state.exports {
            if !exports.iter().any(|(k, _)| k == key) {
                exports.push((key.clone(), text.clone()));
            }
        }
        Ok(())
    }

    fn step_key(&self, host: &Host, step: &Step) -> String {
        match step {
            Step::Distribute => sha_hex(&[
                "rootfs",
                &self.payload.id,
                &self.cluster.rootfs().display().to_string(),
            ]),
            Step::Config { index } => {
                let c = &self.cluster.configs[*index];
                sha_hex(&[
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
                sha_hex(&[
                    "hook",
                    &self.payload.id,
                    phase.name(),
                    &p.name,
                    &body,
                    &self.env_text(host),
                ])
            }
            Step::Cmd { index } => sha_hex(&[
                "cmd",
                &self.payload.id,
                &index.to_string(),
                &self.cmds[*index],
                &self.env_text(host),
            ]),
        }
    }

    fn step_name(&self, step: &Step) -> String {
        match step {
            Step::Distribute => "rootfs".into(),
            Step::Config { index } => {
                format!("config {}", self.cluster.configs[*index].path.display())
            }
            Step::Hook { plugin, phase } => {
                format!("{} hook {}", phase.name(), self.plugins[*plugin].name)
            }
            Step::Cmd { index } => format!("CMD {}", self.cmds[*index]),
        }
    }

    /// The env a host's steps start from: image env, then cluster and host env and the SEALER_*
    /// variables. Step keys hash this (not the exports), so a rerun that reads back the exports
    /// of finished steps computes the same keys.
    fn base_env(&self, host: &Host) -> Vec<(String, String)> {
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
        for (k, v) in host_env(self.cluster, host, &self.cluster.rootfs()) {
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

    fn env_text(&self, host: &Host) -> String {
        self.base_env(host)
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    fn run_phase(&self, slots: &[Mutex<HostSlot>], phase: Phase) {
        for (index, plugin) in self.plugins.iter().enumerate() {
            if !plugin.phases.contains(&phase) {
                continue;
            }
            let targets: Vec<IpAddr> = plugin
                .targets(self.cluster, phase)
                .iter()
                .map(|h| h.ip)
                .collect();
            if targets.is_empty() {
                continue;
            }
            self.for_hosts(
                slots,
                &|h| targets.contains(&h.ip),
                phase.name(),
                &|engine, slot| {
                    engine.run_step(
                        slot,
                        &Step::Hook {
                            plugin: index,
                            phase,
                        },
                    )
                },
            );
        }
    }

    fn run_step(&self, slot: &mut HostSlot, step: &Step) -> Result<(), StepFailure> {
        let key = self.step_key(&slot.host, step);
        let name = self.step_name(step);
        if slot.state.done.contains(&key) {
            slot.steps_skipped += 1;
            (self.events)(InstallEvent::Skipped {
                host: slot.host.ip,
                step: name,
            });
            return Ok(());
        }
        let remote = slot.connected()?;
        let rootfs = self.cluster.rootfs().display().to_string();
        let export_file = protocol::export_file(&self.work_dir(), &key)
            .display()
            .to_string();
        match step {
            Step::Distribute => self.distribute(slot)?,
            Step::Config { index } => {
                let c = &self.cluster.configs[*index];
                let cmd = self.agent_cmd(
                    remote,
                    &AgentCommand::Config {
                        rootfs: self.cluster.rootfs(),
                        path: c.path.clone(),
                        strategy: c.strategy,
                    },
                );
                let mut data = c.data.as_bytes();
                self.exec_ok(slot, &name, &cmd, Some(&mut data))?;
            }
            Step::Hook { plugin, .. } => {
                let script = match &self.plugins[*plugin].kind {
                    PluginKind::Shell { script } => script.clone(),
                    PluginKind::Hostname { names } => {
                        match names.iter().find(|(ip, _)| *ip == slot.host.ip) {
                            Some((_, name)) => format!(
                                "hostname {n} && echo {n} > /etc/hostname",
                                n = shell_quote(name)
                            ),
                            None => "true".to_string(),
                        }
                    }
                };
                let timeout = self.plugins[*plugin]
                    .timeout
                    .unwrap_or(DEFAULT_SCRIPT_TIMEOUT);
                self.run_script(slot, &name, &script, timeout, &rootfs, &export_file)?;
            }
            Step::Cmd { index } => {
                let script = self.cmds[*index].clone();
                let timeout = DEFAULT_SCRIPT_TIMEOUT;
                self.run_script(slot, &name, &script, timeout, &rootfs, &export_file)?;
            }
        }
        let remote = slot.connected()?;
        // The agent prints what the step exported; the spool goes once the rootfs is recorded.
        let record = self.agent_cmd(
            remote,
            &AgentCommand::Done {
                work: self.work_dir(),
                key: key.clone(),
                drop_spool: matches!(step, Step::Distribute),
            },
        );
        let mut what = name.as_bytes();
        let out = self.exec_ok(slot, "recording the step", &record, Some(&mut what))?;
        let exported = out.stdout_text();
        if !exported.trim().is_empty() {
            let mut exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
            exports.retain(|(k, _)| k != &key);
            exports.push((key.clone(), exported));
        }
        slot.state.done.push(key);
        slot.steps_run += 1;
        Ok(())
    }

    fn run_script(
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
        );
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
        Ok(())
    }

    fn plan(&self) -> Vec<PlanLayer> {
        self.payload
            .layers
            .iter()
            .map(|l| PlanLayer {
                label: l.label.clone(),
                compression: l.compression,
                frames: l.frames.clone(),
            })
            .collect()
    }

    fn distribute(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let local = slot.remote.as_ref().is_some_and(|r| r.is_local());
        let rootfs = self.cluster.rootfs();
        if local {
            return self.unpack_here(&rootfs).map_err(StepFailure::fatal);
        }
        let remote = slot.connected()?;
        let work = self.work_dir();
        // Which frames does the host lack?
        let list: String = self
            .payload
            .layers
            .iter()
            .flat_map(|l| &l.frames)
            .map(|f| format!("{}\n", f.sha256))
            .collect();
        let have_cmd = self.agent_cmd(remote, &AgentCommand::Have { work: work.clone() });
        let mut list_bytes = list.as_bytes();
        let out = self.exec_ok(
            slot,
            "checking received frames",
            &have_cmd,
            Some(&mut list_bytes),
        )?;
        let missing: std::collections::HashSet<String> = out
            .stdout_text()
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        let wanted: Vec<(usize, usize)> = self
            .payload
            .layers
            .iter()
            .enumerate()
            .flat_map(|(li, l)| {
                l.frames
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| missing.contains(&f.sha256))
                    .map(move |(fi, _)| (li, fi))
            })
            .collect();
        let mut plan = Vec::new();
        protocol::write_plan(&mut plan, &self.plan())
            .map_err(|e| StepFailure::fatal(e.to_string()))?;
        if wanted.is_empty() {
            // Every frame is spooled (an earlier run stopped before unpacking): unpack only.
            let remote = slot.connected()?;
            let cmd = self.agent_cmd(remote, &AgentCommand::Unpack { work, dest: rootfs });
            let mut plan_bytes: &[u8] = &plan;
            self.exec_ok(slot, "unpacking the rootfs", &cmd, Some(&mut plan_bytes))?;
            return Ok(());
        }
        // Send the plan, then the missing frames; the host unpacks while they arrive.
        let prefix = plan;
        let total: u64 = prefix.len() as u64
            + wanted
                .iter()
                .map(|&(l, f)| self.payload.layers[l].frames[f].compressed_len)
                .sum::<u64>();
        let remote = slot.connected()?;
        // The spool is removed only once the step is in the journal (see `run_step`): a run cut
        // off between the two finds every frame still there and sends nothing again.
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Receive {
                work,
                dest: Some(rootfs),
            },
        );
        let ip = slot.host.ip;
        let events = self.events;
        let mut stream = FrameStream::new(self.payload, wanted, prefix, move |sent| {
            events(InstallEvent::Sent {
                host: ip,
                sent,
                total,
            })
        });
        let out = self.exec(slot, &cmd, Some(&mut stream))?;
        slot.bytes_sent += stream.sent;
        if let Some(err) = stream.error.take() {
            return Err(StepFailure::fatal(format!("reading the payload: {err}")));
        }
        if !out.success() {
            return Err(command_failure("receiving and unpacking frames", &out));
        }
        Ok(())
    }

    /// Local install: unpack straight from the payload, no spool.
    fn unpack_here(&self, rootfs: &Path) -> Result<(), String> {
        crate::agent::install_rootfs(&self.payload.layer_inputs(), rootfs)
    }
}

/// How long a hook (without its own `spec.timeout`) or a CMD may run before it is killed.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A shell expression that prints the agent's real path once it is safe to run as root, and
/// fails (status [`EXIT_AGENT_UNSAFE`], one line on stderr) otherwise.
///
/// The agent's name is predictable, so anyone who can write to its directory, or to any
/// directory above it, could put a program there and have it run as root. Before every run the
/// guard resolves the path and checks the file and every directory up to `/`: owned by root,
/// writable by nobody else (a sticky directory such as `/tmp` is fine, as its root-owned entry
/// cannot be replaced by others); then it checks the file's sha256. Nobody but root can change
/// such a chain between the check and the run, so the check cannot be raced. (Uploading to a
/// fresh directory on every run would resend the agent each time instead.)
fn agent_guard(agent: &str, sha256: &str) -> String {
    format!(
        r#"a=$(readlink -f -- {agent}) && [ -f "$a" ] || {{ echo "sealer: the agent {agent} is missing" >&2; exit {code}; }}; {chain}; [ "$(sha256sum < "$a")" = "{sha256}  -" ] || {{ echo "sealer: refusing to run the agent $a: its sha256 is not the one this installer uploaded" >&2; exit {code}; }}; printf %s "$a""#,
        agent = shell_quote(agent),
        chain = root_only_chain("a", "run the agent $a as root"),
        code = EXIT_AGENT_UNSAFE,
    )
}

/// Shell that exits with [`EXIT_AGENT_UNSAFE`] unless the resolved path in `$var` and every
/// directory above it are owned by root and writable by root only; an ancestor may instead be a
/// root-owned sticky directory (`/tmp`), whose root-owned entries nobody else can replace.
fn root_only_chain(var: &str, doing: &str) -> String {
    format!(
        r#"p=${var}; while :; do s=$(stat -c '%u %a' -- "$p") || exit {code}; u=${{s%% *}}; m=0${{s#* }}; if [ "$u" != 0 ] || {{ [ $((m & 022)) -ne 0 ] && {{ [ "$p" = "${var}" ] || [ $((m & 01000)) -eq 0 ]; }}; }}; then echo "sealer: refusing to {doing}: $p is owned by uid $u with mode ${{s#* }}; it and every directory above it must be owned by root and writable by root only (choose another dataRoot)" >&2; exit {code}; fi; [ "$p" = / ] && break; p=${{p%/*}}; [ -n "$p" ] || p=/; done"#,
        code = EXIT_AGENT_UNSAFE,
    )
}

/// Exit status of [`agent_guard`] when it refuses the agent.
pub const EXIT_AGENT_UNSAFE: i32 = 97;

/// The failure of a command that exited non-zero: a full disk, a refused agent or a script that
/// outlived its timeout are not retried (the same thing would happen again); the rest is.
fn command_failure(what: &str, out: &ExecOutput) -> StepFailure {
    let message = format!("{what} exited with status {}: {}", out.status, out.tail());
    match out.status {
        EXIT_DISK_FULL => StepFailure::fatal(format!(
            "{message} (the disk is full; free space on the host and run again)"
        )),
        EXIT_AGENT_UNSAFE | EXIT_TIMED_OUT => StepFailure::fatal(message),
        _ => StepFailure::retry(message),
    }
}

/// `90 s`, `30 min`, `1 h 30 min`.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (h, 0, 0) => format!("{h} h"),
        (h, m, 0) => format!("{h} h {m} min"),
        _ => format!("{secs} s"),
    }
}

/// Set `k` to `v`, replacing an earlier value.
fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    env.retain(|(key, _)| key != k);
    env.push((k.to_string(), v.to_string()));
}

/// Why a step failed and whether trying again may help.
struct StepFailure {
    message: String,
    retry: bool,
    drop_connection: bool,
}

impl StepFailure {
    fn retry(message: String) -> Self {
        StepFailure {
            message,
            retry: true,
            drop_connection: false,
        }
    }
    fn fatal(message: String) -> Self {
        StepFailure {
            message,
            retry: false,
            drop_connection: false,
        }
    }
    fn from_remote(e: RemoteError) -> Self {
        StepFailure {
            retry: e.is_transient(),
            drop_connection: true,
            message: e.to_string(),
        }
    }
}

/// Exponential backoff with ±25 % jitter.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << (attempt - 1).min(6));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = (nanos % 500) as f64 / 1000.0 - 0.25;
    exp.mul_f64(1.0 + jitter)
}

/// The wire stream of `agent receive`: a prefix (the layer plan), records of the wanted frames,
/// then an end marker.
///
/// Frame bytes are served straight from the payload's source, without copying a whole frame,
/// and released as they are sent: the installing process holds a few MiB per host whatever the
/// frame size, host count or image size.
struct FrameStream<'a, F: Fn(u64)> {
    payload: &'a Payload,
    wanted: Vec<(usize, usize)>,
    next: usize,
    /// Record header of the current frame (or the end marker) and how much of it was sent.
    head: Vec<u8>,
    head_pos: usize,
    body: Option<FrameBody<'a>>,
    sent: u64,
    finished: bool,
    progress: F,
    error: Option<io::Error>,
}

/// The frame being sent.
struct FrameBody<'a> {
    bytes: std::borrow::Cow<'a, [u8]>,
    source: &'a dyn packer::source::ByteSource,
    /// Where the frame starts in `source`.
    offset: u64,
    pos: usize,
    released: usize,
}

/// Sent bytes of a frame are released in steps of this size.
const RELEASE_STEP: usize = 4 << 20;

impl<'a, F: Fn(u64)> FrameStream<'a, F> {
    /// `prefix` goes out before the first record.
    fn new(
        payload: &'a Payload,
        wanted: Vec<(usize, usize)>,
        prefix: Vec<u8>,
        progress: F,
    ) -> Self {
        FrameStream {
            payload,
            wanted,
            next: 0,
            head: prefix,
            head_pos: 0,
            body: None,
            sent: 0,
            finished: false,
            progress,
            error: None,
        }
    }

    /// Start the next record (or the end marker); false when everything was sent.
    fn advance(&mut self) -> io::Result<bool> {
        self.head.clear();
        self.head_pos = 0;
        if let Some(&(li, fi)) = self.wanted.get(self.next) {
            let layer = &self.payload.layers[li];
            let frame = &layer.frames[fi];
            let source = self.payload.sources[layer.source].as_ref();
            let offset = layer.base + frame.offset;
            let bytes = source.bytes(offset, frame.compressed_len)?;
            protocol::write_record_header(&mut self.head, &frame.sha256, frame.compressed_len)?;
            self.body = Some(FrameBody {
                bytes,
                source,
                offset,
                pos: 0,
                released: 0,
            });
            self.next += 1;
            Ok(true)
        } else if !self.finished {
            protocol::write_end(&mut self.head)?;
            self.finished = true;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn fill(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.head_pos < self.head.len() {
                let n = out.len().min(self.head.len() - self.head_pos);
                out[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
                self.head_pos += n;
                return Ok(n);
            }
            if let Some(body) = &mut self.body {
                if body.pos < body.bytes.len() {
                    let n = out.len().min(body.bytes.len() - body.pos);
                    out[..n].copy_from_slice(&body.bytes[body.pos..body.pos + n]);
                    body.pos += n;
                    if body.pos - body.released >= RELEASE_STEP {
                        body.source.release(
                            body.offset + body.released as u64,
                            (body.pos - body.released) as u64,
                        );
                        body.released = body.pos;
                    }
                    return Ok(n);
                }
                body.source.release(body.offset, body.bytes.len() as u64);
                self.body = None;
            }
            if !self.advance()? {
                return Ok(0);
            }
        }
    }
}

impl<F: Fn(u64)> Read for FrameStream<'_, F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.fill(out) {
            Ok(n) => {
                self.sent += n as u64;
                if n > 0 {
                    (self.progress)(self.sent);
                }
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}

/// `1536` → `1.5 KiB`.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Group a report's hosts for printing: `(ip, roles, status text)`.
pub fn report_rows(report: &InstallReport) -> Vec<(String, String, String)> {
    report
        .hosts
        .iter()
        .map(|h| {
            let status = match &h.outcome {
                HostOutcome::Installed => format!(
                    "installed ({} steps, {} already done, {} sent)",
                    h.steps_run,
                    h.steps_skipped,
                    human_size(h.bytes_sent)
                ),
                HostOutcome::UpToDate => "up to date".to_string(),
                HostOutcome::Failed(reason) => format!("FAILED: {reason}"),
            };
            (h.ip.to_string(), h.roles.join(","), status)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Runs the guard for `agent` in a real shell: `Ok(resolved path)` or `Err((status, stderr))`.
    fn guard(agent: &Path, sha: &str) -> Result<String, (i32, String)> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "x=$({}) && printf %s \"$x\"",
                agent_guard(&agent.display().to_string(), sha)
            ))
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    #[test]
    fn the_agent_guard_accepts_only_the_right_file_in_a_root_only_chain() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: the guard checks root ownership; run as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(".agent")).unwrap();
        let agent = data.join(".agent/sealer-agent-x");
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sha = hex::encode(Sha256::digest(b"#!/bin/sh\n"));
        let resolved = std::fs::canonicalize(&agent).unwrap();
        assert_eq!(guard(&agent, &sha), Ok(resolved.display().to_string()));

        let (status, err) = guard(&agent, &"0".repeat(64)).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("sha256"), "{err}");

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (status, err) = guard(&agent, &sha).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("mode 777"), "{err}");

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&data, Some(1000), None).unwrap();
        let (status, err) = guard(&agent, &sha).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("owned by uid 1000"), "{err}");

        std::fs::remove_file(&agent).unwrap();
        let (status, err) = guard(&agent, &sha).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn a_full_disk_a_refused_agent_and_a_timeout_are_not_retried() {
        let out = |status| ExecOutput {
            status,
            stdout: Vec::new(),
            stderr: b"no".to_vec(),
        };
        for status in [EXIT_DISK_FULL, EXIT_AGENT_UNSAFE, EXIT_TIMED_OUT] {
            assert!(!command_failure("step", &out(status)).retry, "{status}");
        }
        assert!(command_failure("step", &out(1)).retry);
    }
}
