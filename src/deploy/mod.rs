//! The deploy engine: the one implementation of "install this payload onto these hosts", used by
//! `sealer run` (payload from the store) and `app.run install` (payload from the package).
//!
//! Stages, in order: connect + preflight (arch, free disk) → agent upload → distribute (send only
//! frames a host lacks, unpack remotely into a staging dir swapped into `<dataRoot>/<cluster>/rootfs`)
//! → Configs → `pre-init-host` / `post-init-host` hooks on hosts in scope → `pre-install` hooks →
//! the image's CMDs on master0 → `post-install` hooks. Every step is recorded in a journal on its
//! host keyed by content, so a second run with the same inputs does nothing and a failed run
//! resumes where it stopped. Hosts run in parallel (bounded); a failing host is retried with
//! exponential backoff and jitter ([`crate::retry`]), then reported, and never stops the
//! others; cluster stages (pre-install, CMDs, post-install) wait until every host is ready.
//!
//! This module holds the stages, their order and the retries; it does not parse Clusterfiles,
//! speak SSH, or know the `.run` format. The rest of the engine is split by job: `journal`
//! (steps and their keys), `distribute` (the plan and the frame stream), `scripts` (hooks and
//! CMDs), `launch` (the agent on a host), `report` (events and outcomes). It talks to hosts
//! through [`Remote`] and to the agent only through [`crate::agent::protocol`].

mod distribute;
pub mod image_plugins;
mod images;
mod journal;
mod launch;
pub mod payload;
mod plan;
mod preflight;
pub mod remote;
mod report;
mod scripts;
pub mod target;

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::protocol::{
    self, AgentCommand, HostState, StepKey, EXIT_DISK_FULL, EXIT_TIMED_OUT,
};
use crate::clusterfile::{Cluster, Host, Phase, Plugin};
use crate::retry::RetryPolicy;
use journal::Step;
pub use launch::EXIT_AGENT_UNSAFE;
pub use payload::{find_stub, Payload, PayloadLayer};
pub use plan::{status, HostPlan, HostStatus, PlannedStep};
pub use remote::{ExecOutput, LocalHost, Remote, RemoteError};
pub use report::{HostOutcome, HostReport, InstallEvent, InstallReport};
pub use scripts::{image_install_commands, DEFAULT_SCRIPT_TIMEOUT};

/// Opens a connection to a host.
pub type Connector = dyn Fn(&Host) -> Result<Box<dyn Remote>, RemoteError> + Send + Sync;

/// What a run of the engine changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Change {
    /// Install the payload on every host, or converge every host to it.
    #[default]
    Install,
    /// Add `hosts` (already in the cluster given to the engine) to a running cluster: only they
    /// are worked on; their `PreJoin`/`PostJoin` hooks run; the cluster stages (CMDs) do not run
    /// again. Exports of earlier steps reach them.
    Join { hosts: Vec<IpAddr> },
    /// Remove what the cluster put on `hosts`: clean hooks, then rootfs, journal and agent.
    /// With `all`, the whole cluster goes and the uninstall hooks run on master0.
    Delete { hosts: Vec<IpAddr>, all: bool },
    /// Bring back the previous generation (tree, journal, exports) on every host whose rootfs
    /// holds the payload `undo` (a sha256 hex id) and keeps a previous one; `rollback` hooks
    /// run on master0 afterwards. Nothing is sent.
    Rollback { undo: String },
}

/// How to install.
pub struct InstallOptions {
    /// Hosts worked on at once.
    pub parallel: usize,
    /// Attempts per host and stage before the host is reported failed.
    pub attempts: u32,
    /// First retry delay; doubles each time, with jitter.
    pub backoff: Duration,
    pub connect: Arc<Connector>,
    pub change: Change,
    /// Preflight refuses a host whose clock is further off this machine's.
    pub max_clock_skew: Duration,
}

/// Preflight's default clock skew limit: a few seconds, as k0sctl and KubeKey allow.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

impl InstallOptions {
    pub fn new(connect: Arc<Connector>) -> Self {
        InstallOptions {
            parallel: 8,
            attempts: 3,
            backoff: Duration::from_secs(1),
            connect,
            change: Change::Install,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

/// One stage of an install: `step` on each of `hosts`.
struct Stage {
    /// What the host lines call it (`distribute`, `config`, a phase name, `install`).
    label: String,
    step: Step,
    hosts: Vec<IpAddr>,
    /// Runs only when every host is ready.
    cluster_level: bool,
}

/// Errors that stop an install before any host is touched.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the cluster has no hosts")]
    NoHosts,
    /// The image's `plugins/*.yaml` could not be read or parsed.
    #[error(transparent)]
    Plugins(#[from] image_plugins::ImagePluginError),
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
    /// containerd's `config_path` on the host, when the image carries container images.
    containerd_certs: Option<PathBuf>,
    /// The host's name, as `hostname` says (preflight: unique across the cluster).
    hostname: Option<String>,
    /// What preflight found, for the stage after it.
    probed: Option<Probed>,
}

/// What a host's preflight found that the next stage uses.
#[derive(Clone, Copy)]
struct Probed {
    free_kb: u64,
    agent_present: bool,
}

impl HostSlot {
    /// The open connection to the host; not connected is a retryable failure.
    fn connected(&self) -> Result<&dyn Remote, StepFailure> {
        self.remote
            .as_deref()
            .ok_or_else(|| StepFailure::retry("not connected".into()))
    }
}

struct Engine<'a> {
    cluster: &'a Cluster,
    payload: &'a Payload,
    opts: &'a InstallOptions,
    events: &'a (dyn Fn(InstallEvent) + Sync),
    /// Exports by step, in the order steps finished.
    exports: Mutex<Vec<(StepKey, String)>>,
    cmds: Vec<String>,
    /// The image's `plugins/*.yaml`, then the Clusterfile's plugins.
    plugins: Vec<Plugin>,
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
    let engine = Engine::new(cluster, payload, opts, events)?;
    for note in engine.unrun_hooks() {
        events(InstallEvent::Note {
            host: None,
            text: note,
        });
    }
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
                containerd_certs: None,
                hostname: None,
                probed: None,
            })
        })
        .collect();

    // Host stages on every host in parallel; cluster stages only when every host is ready.
    engine.for_hosts(&slots, &|_| true, "preflight", &|engine, slot| {
        engine.preflight(slot)
    });
    refuse_duplicate_hostnames(&slots);
    engine.for_hosts(&slots, &|_| true, "prepare", &|engine, slot| {
        engine.prepare(slot)
    });
    let (host_stages, cluster_stages): (Vec<Stage>, Vec<Stage>) =
        engine.stages().into_iter().partition(|s| !s.cluster_level);
    let run_stage = |stage: &Stage| {
        engine.for_hosts(
            &slots,
            &|h| stage.hosts.contains(&h.ip),
            &stage.label,
            &|engine, slot| engine.run_step(slot, &stage.step),
        )
    };
    host_stages.iter().for_each(run_stage);
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
        cluster_stages.iter().for_each(run_stage);
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
        done: match &opts.change {
            Change::Install => "installed",
            Change::Join { .. } => "joined",
            Change::Delete { .. } => "removed",
            Change::Rollback { .. } => "rolled back",
        },
        hosts,
        cluster_stages_skipped,
        elapsed: started.elapsed(),
    })
}

/// What installing `payload` onto `cluster` would do on each host, found without changing
/// anything (the dry run).
pub fn dry_run(
    cluster: &Cluster,
    payload: &Payload,
    opts: &InstallOptions,
) -> Result<Vec<HostPlan>, InstallError> {
    if cluster.hosts.is_empty() {
        return Err(InstallError::NoHosts);
    }
    Ok(Engine::new(cluster, payload, opts, &|_| {})?.plan())
}

impl<'a> Engine<'a> {
    fn new(
        cluster: &'a Cluster,
        payload: &'a Payload,
        opts: &'a InstallOptions,
        events: &'a (dyn Fn(InstallEvent) + Sync),
    ) -> Result<Self, InstallError> {
        let mut plugins = image_plugins::image_plugins(payload)?;
        plugins.extend(cluster.plugins.iter().cloned());
        Ok(Engine {
            cluster,
            payload,
            opts,
            events,
            exports: Mutex::new(Vec::new()),
            cmds: scripts::install_commands(cluster, payload),
            plugins,
        })
    }
}

impl Engine<'_> {
    fn work_dir(&self) -> PathBuf {
        self.cluster
            .data_root
            .join(&self.cluster.name)
            .join(".sealer")
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
        let policy = RetryPolicy::new(self.opts.attempts, self.opts.backoff);
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
                    if !policy.retries(failure.retry, attempt) {
                        let attempts = if attempt > 1 {
                            format!(" (after {attempt} attempts)")
                        } else {
                            String::new()
                        };
                        slot.failed = Some(format!("{stage}: {}{attempts}", failure.message));
                        return;
                    }
                    let delay = policy.delay(attempt);
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
    /// Preflight of one host, changing nothing there: architecture, free space, clock, name,
    /// and whether the agent is there already.
    fn preflight(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let agent = self.agent_path(slot.connected()?);
        let probe = self.preflight_command(&agent);
        let asked = std::time::SystemTime::now();
        let out = self.exec_ok(slot, "preflight", &probe, None)?;
        let found = self.read_preflight(&out.stdout_text(), asked, std::time::SystemTime::now());
        slot.hostname = found.hostname;
        if let Some(problem) = found.problems.into_iter().next() {
            return Err(StepFailure::fatal(problem));
        }
        let (free_kb, agent_present) = (found.free_kb, found.agent_present);
        slot.probed = Some(Probed {
            free_kb,
            agent_present,
        });
        Ok(())
    }

    /// After every host's preflight: the agent (uploaded when missing), its journal, and the
    /// checks that need it (containerd, free space for what is still to come).
    fn prepare(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let Some(Probed {
            free_kb,
            agent_present,
        }) = slot.probed
        else {
            self.preflight(slot)?;
            return self.prepare(slot);
        };
        let local = slot.remote.as_ref().is_some_and(|r| r.is_local());
        let agent = self.agent_path(slot.connected()?);
        let data_root = self.cluster.data_root.display().to_string();
        if !agent_present && !local {
            self.upload_agent(slot, &agent)?;
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
        if slot
            .state
            .installed
            .as_ref()
            .is_some_and(|id| id.as_str() != self.payload.id)
        {
            // The rootfs holds another payload: nothing recorded for it is done for this one,
            // even a step this payload ran before that other one replaced it.
            slot.state.done.clear();
            slot.state.exports.clear();
        }
        slot.containerd_certs = self.containerd_config_path(slot)?;
        let needed_kb = (self.payload.compressed_len() + self.payload.uncompressed_len()) / 1024;
        let rootfs_done = slot
            .state
            .done
            .contains(&self.step_key(&slot.host, &Step::Distribute));
        let sends_nothing = matches!(
            self.opts.change,
            Change::Delete { .. } | Change::Rollback { .. }
        );
        if !rootfs_done && !sends_nothing && free_kb < needed_kb {
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

    /// The rollback step: the previous generation comes back on a host that holds the payload
    /// being undone and keeps one; any other host is left as it is.
    fn roll_back(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let Change::Rollback { undo } = &self.opts.change else {
            return Ok(());
        };
        let holds_undone = slot
            .state
            .installed
            .as_ref()
            .is_some_and(|id| id.as_str() == undo);
        if !holds_undone || slot.state.previous.is_none() {
            slot.steps_skipped += 1;
            (self.events)(InstallEvent::Skipped {
                host: slot.host.ip,
                step: "rollback (nothing to undo here)".into(),
            });
            return Ok(());
        }
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Rollback {
                work: self.work_dir(),
            },
        );
        self.exec_ok(slot, "rolling back", &cmd, None)?;
        slot.state.installed = slot.state.previous.take();
        slot.steps_run += 1;
        Ok(())
    }

    /// A note for every hook phase that no command of this installer runs, so that none is
    /// dropped without a word.
    fn unrun_hooks(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for plugin in &self.plugins {
            for phase in &plugin.phases {
                let why = match phase {
                    Phase::Upgrade | Phase::UpgradeHost => {
                        "an install over another image replaces each host's tree without upgrade phases; rollback hooks run in `sealer rollback`"
                    }
                    Phase::Originally => {
                        "it would run before the rootfs exists; use pre-init-host, which runs right after"
                    }
                    Phase::Manual => "this installer runs no hook only on request",
                    _ => continue,
                };
                notes.push(format!(
                    "note: hook {} ({}) is not run: {why}",
                    plugin.name,
                    phase.name()
                ));
            }
        }
        notes
    }

    /// Every stage of an install, in order: the step it runs, on which hosts, and whether it
    /// is a cluster stage (one that waits until every host is ready). The install and the dry
    /// run walk this one list.
    fn stages(&self) -> Vec<Stage> {
        match &self.opts.change {
            Change::Install => self.install_stages(),
            Change::Join { hosts } => self.join_stages(hosts),
            Change::Delete { hosts, all } => self.delete_stages(hosts, *all),
            Change::Rollback { .. } => {
                let all: Vec<IpAddr> = self.cluster.hosts.iter().map(|h| h.ip).collect();
                let mut stages = vec![Stage {
                    label: "rollback".into(),
                    step: Step::Rollback,
                    hosts: all,
                    cluster_level: false,
                }];
                let master0 = [self.cluster.master0().ip];
                stages.extend(self.hook_stages(Phase::Rollback, &master0, true));
                stages
            }
        }
    }

    /// The hook stage of every plugin acting in `phase`, on its hosts that `within` keeps.
    fn hook_stages(&self, phase: Phase, within: &[IpAddr], cluster_level: bool) -> Vec<Stage> {
        let mut stages = Vec::new();
        for (plugin, p) in self.plugins.iter().enumerate() {
            if !p.phases.contains(&phase) {
                continue;
            }
            let hosts: Vec<IpAddr> = p
                .targets(self.cluster, phase)
                .iter()
                .map(|h| h.ip)
                .filter(|ip| within.contains(ip))
                .collect();
            if hosts.is_empty() {
                continue;
            }
            stages.push(Stage {
                label: phase.name().into(),
                step: Step::Hook { plugin, phase },
                hosts,
                cluster_level,
            });
        }
        stages
    }

    /// Join: the host stages of an install on the new hosts only, with their join hooks.
    fn join_stages(&self, new: &[IpAddr]) -> Vec<Stage> {
        let mut stages = vec![Stage {
            label: "distribute".into(),
            step: Step::Distribute,
            hosts: new.to_vec(),
            cluster_level: false,
        }];
        stages.extend(self.image_stages(new));
        for index in 0..self.cluster.configs.len() {
            stages.push(Stage {
                label: "config".into(),
                step: Step::Config { index },
                hosts: new.to_vec(),
                cluster_level: false,
            });
        }
        let master0 = [self.cluster.master0().ip];
        // sealer's scale-up phases run on master0 around the join.
        let mut stages_before = self.hook_stages(Phase::PreScaleUp, &master0, false);
        stages_before.append(&mut stages);
        let mut stages = stages_before;
        for phase in [
            Phase::PreJoin,
            Phase::PreInitHost,
            Phase::PostInitHost,
            Phase::PostJoin,
        ] {
            stages.extend(self.hook_stages(phase, new, false));
        }
        stages.extend(self.hook_stages(Phase::PostScaleUp, &master0, false));
        stages
    }

    /// Delete: uninstall and clean hooks around the removal of what the cluster put there.
    fn delete_stages(&self, gone: &[IpAddr], all: bool) -> Vec<Stage> {
        let master0 = [self.cluster.master0().ip];
        let mut stages = Vec::new();
        if all {
            stages.extend(self.hook_stages(Phase::PreUninstall, &master0, false));
        }
        stages.extend(self.hook_stages(Phase::PreCleanHost, gone, false));
        if self.has_images_layer() {
            stages.push(Stage {
                label: "remove".into(),
                step: Step::Unregister,
                hosts: gone.to_vec(),
                cluster_level: false,
            });
        }
        stages.push(Stage {
            label: "remove".into(),
            step: Step::RemoveRootfs,
            hosts: gone.to_vec(),
            cluster_level: false,
        });
        stages.extend(self.hook_stages(Phase::PostCleanHost, gone, false));
        if all {
            stages.extend(self.hook_stages(Phase::PostUninstall, &master0, false));
        }
        stages.push(Stage {
            label: "remove".into(),
            step: Step::Forget,
            hosts: gone.to_vec(),
            cluster_level: false,
        });
        stages
    }

    /// The registry on the registry hosts among `within`, then hosts.toml on all of them.
    fn image_stages(&self, within: &[IpAddr]) -> Vec<Stage> {
        let mut stages = Vec::new();
        if !self.has_images_layer() {
            return stages;
        }
        let serving: Vec<IpAddr> = self
            .cluster
            .registry_hosts()
            .iter()
            .map(|h| h.ip)
            .filter(|ip| within.contains(ip))
            .collect();
        if !serving.is_empty() {
            stages.push(Stage {
                label: "registry".into(),
                step: Step::Registry,
                hosts: serving,
                cluster_level: false,
            });
        }
        stages.push(Stage {
            label: "registry".into(),
            step: Step::Mirror,
            hosts: within.to_vec(),
            cluster_level: false,
        });
        stages
    }

    fn install_stages(&self) -> Vec<Stage> {
        let all: Vec<IpAddr> = self.cluster.hosts.iter().map(|h| h.ip).collect();
        let mut stages = vec![Stage {
            label: "distribute".into(),
            step: Step::Distribute,
            hosts: all.clone(),
            cluster_level: false,
        }];
        stages.extend(self.image_stages(&all));
        for index in 0..self.cluster.configs.len() {
            stages.push(Stage {
                label: "config".into(),
                step: Step::Config { index },
                hosts: all.clone(),
                cluster_level: false,
            });
        }
        stages.extend(self.hook_stages(Phase::PreInitHost, &all, false));
        stages.extend(self.hook_stages(Phase::PostInitHost, &all, false));
        stages.extend(self.hook_stages(Phase::PreInstall, &all, true));
        let master0 = self.cluster.master0().ip;
        // sealer's old PreGuest: right before the image's CMDs.
        stages.extend(self.hook_stages(Phase::PreGuest, &all, true));
        for index in 0..self.cmds.len() {
            stages.push(Stage {
                label: "install".into(),
                step: Step::Cmd { index },
                hosts: vec![master0],
                cluster_level: true,
            });
        }
        stages.extend(self.hook_stages(Phase::PostInstall, &all, true));
        stages
    }

    fn run_step(&self, slot: &mut HostSlot, step: &Step) -> Result<(), StepFailure> {
        let key = self.step_key(&slot.host, step);
        let name = self.step_name(step);
        // A host leaving the cluster that holds nothing of it has nothing to clean.
        let holds_nothing = slot.state.installed.is_none() && slot.state.done.is_empty();
        if let Step::Registry = step {
            if self.start_registry(slot)? {
                slot.steps_run += 1;
            } else {
                slot.steps_skipped += 1;
            }
            return Ok(());
        }
        if let Step::Rollback = step {
            return self.roll_back(slot);
        }
        if let Step::Unregister = step {
            self.unregister(slot)?;
            slot.steps_skipped += 1;
            return Ok(());
        }
        if let Step::RemoveRootfs | Step::Forget = step {
            let remote = slot.connected()?;
            let cmd = self.agent_cmd(
                remote,
                &AgentCommand::Remove {
                    data_root: self.cluster.data_root.clone(),
                    cluster: self.cluster.name.clone(),
                    all: matches!(step, Step::Forget),
                },
            );
            self.exec_ok(slot, &name, &cmd, None)?;
            if holds_nothing {
                slot.steps_skipped += 1;
            } else {
                slot.steps_run += 1;
            }
            return Ok(());
        }
        let deleting = matches!(self.opts.change, Change::Delete { .. });
        // Rollback hooks run on every rollback and are not recorded: the journal now in place
        // is the previous generation's.
        let journaled = !matches!(self.opts.change, Change::Rollback { .. });
        if journaled && slot.state.done.contains(&key) || (deleting && holds_nothing) {
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
                let (script, timeout) = self.hook_script(*plugin, &slot.host);
                self.run_script(slot, &name, &script, timeout, &rootfs, &export_file)?;
            }
            Step::Cmd { index } => {
                let script = self.cmds[*index].clone();
                let timeout = DEFAULT_SCRIPT_TIMEOUT;
                self.run_script(slot, &name, &script, timeout, &rootfs, &export_file)?;
            }
            Step::Mirror => self.write_mirrors(slot)?,
            // Done and counted above: never journaled (removals take the journal with them;
            // the registry is checked on every run).
            Step::Registry
            | Step::Unregister
            | Step::Rollback
            | Step::RemoveRootfs
            | Step::Forget => return Ok(()),
        }
        if !journaled {
            slot.steps_run += 1;
            return Ok(());
        }
        let remote = slot.connected()?;
        // The agent prints what the step exported; the spool goes once the rootfs is recorded.
        let record = self.agent_cmd(
            remote,
            &AgentCommand::Done {
                work: self.work_dir(),
                key: key.clone(),
                drop_spool: matches!(step, Step::Distribute),
                installs: match step {
                    Step::Distribute => self.payload.id.parse().ok(),
                    _ => None,
                },
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
}

/// Preflight across hosts: two hosts that answer to the same name are both refused, naming
/// each other (cluster software tells its members apart by name).
fn refuse_duplicate_hostnames(slots: &[Mutex<HostSlot>]) {
    let names: Vec<(IpAddr, Option<String>)> = slots
        .iter()
        .filter_map(|s| s.lock().ok().map(|s| (s.host.ip, s.hostname.clone())))
        .collect();
    for slot in slots {
        let Ok(mut slot) = slot.lock() else { continue };
        let Some(name) = slot.hostname.clone() else {
            continue;
        };
        if slot.failed.is_none() {
            if let Some(why) = preflight::twins(&names, slot.host.ip, &name) {
                slot.failed = Some(format!("preflight: {why}"));
            }
        }
    }
}

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

/// Set `k` to `v`, replacing an earlier value.
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

#[cfg(test)]
mod tests {
    use super::*;

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
