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
mod host_lock;
pub mod image_plugins;
mod images;
mod journal;
mod launch;
pub mod payload;
mod plan;
mod preflight;
pub mod remote;
mod report;
mod schedule;
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
use journal::Step;
pub use launch::EXIT_AGENT_UNSAFE;
pub use payload::{find_stub, Payload, PayloadLayer};
pub use plan::{status, HostPlan, HostStatus, PlannedStep};
pub use preflight::{
    CheckResult, CheckState, LABEL_COMMANDS, LABEL_KERNEL, LABEL_OS, LABEL_PORTS, PREFLIGHT_CHECKS,
};
pub use remote::{ExecOutput, LocalHost, Remote, RemoteError};
pub use report::{HostOutcome, HostReport, HostWait, InstallEvent, InstallReport};
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
    /// Who this run is, as the cluster's lock on master0 names it; `None` takes no lock there
    /// (the engine's own tests).
    pub holder: Option<String>,
    /// Who held this cluster's lock on this machine and died there (its words as `holder`
    /// gives them): master0's lock still held by it is waited for, not refused.
    pub dead_holder: Option<String>,
    /// Preflight checks whose failure is reported and let through (`all` for every one but
    /// `sudo`), by their [`PREFLIGHT_CHECKS`] names.
    pub ignore_preflight: Vec<String>,
    /// The package's frame check when it runs beside the preflight; `None` when the payload
    /// was checked before the engine started (or needs no check).
    pub package_check: Option<Arc<PackageCheck>>,
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
            ignore_preflight: Vec::new(),
            package_check: None,
            holder: None,
            dead_holder: None,
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
    /// Which of its hosts run it: those installed afresh, those upgraded, or both.
    route: Route,
}

/// The two ways a host comes to hold the payload, when the image declares upgrade hooks
/// (sealer's `upgrade-host` and `upgrade`): a host whose tree held no image is installed
/// (init-host hooks, install hooks, CMDs); a host whose tree held another image is upgraded
/// (`upgrade-host` hooks, then `upgrade` hooks on master0), as `sealer upgrade` does. Without
/// upgrade hooks every host takes the install route, whatever it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Every,
    Install,
    Upgrade,
}

impl Route {
    fn takes(self, upgrading: bool) -> bool {
        match self {
            Route::Every => true,
            Route::Install => !upgrading,
            Route::Upgrade => upgrading,
        }
    }
}

/// Under `<dataRoot>/<cluster>/`: one directory per application image installed beside the
/// base image, named by [`app_name`].
pub const APPS_DIR: &str = "apps";

/// The name an application image's directory has on the hosts: the last component of its
/// repository (`apps/nginx` for `registry.local/web/nginx:1.25`), so that another version of
/// the same application replaces it; `None` for a cluster image.
pub fn app_name(payload: &Payload) -> Option<String> {
    let app = payload
        .config
        .sealer
        .as_ref()
        .is_some_and(|s| s.image_type == crate::store::ImageType::AppInstaller);
    if !app {
        return None;
    }
    let repository = crate::reference::Reference::parse(&payload.image)
        .map(|r| r.repository)
        .unwrap_or_else(|_| payload.image.clone());
    let last = repository.rsplit('/').next().unwrap_or(&repository);
    let name: String = last
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    let name = name.trim_start_matches('.').to_string();
    Some(if name.is_empty() { "app".into() } else { name })
}

/// Errors that stop an install before any host is touched.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the cluster has no hosts")]
    NoHosts,
    /// The image's `plugins/*.yaml` could not be read or parsed.
    #[error(transparent)]
    Plugins(#[from] image_plugins::ImagePluginError),
    /// The container images could not be pushed to the external registry.
    #[error("{0}")]
    ExternalRegistry(String),
    /// The package's frame check ([`PackageCheck`]) found it damaged or could not read it.
    #[error("{0}")]
    Package(String),
}

/// The package's frame check, run beside the hosts' first preflight: the start waits for its
/// result, so a damaged package stops the install before anything is sent or changed on any
/// host, and the hosts are probed while it is hashed.
#[derive(Debug, Default)]
pub struct PackageCheck {
    result: Mutex<Option<Result<(), String>>>,
    done: std::sync::Condvar,
}

impl PackageCheck {
    /// The check's result (`Err` says what is damaged).
    pub fn finish(&self, result: Result<(), String>) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        self.done.notify_all();
    }

    /// Waits for [`PackageCheck::finish`].
    fn wait(&self) -> Result<(), String> {
        let mut result = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = &*result {
                return result.clone();
            }
            result = self.done.wait(result).unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct HostSlot {
    host: Host,
    remote: Option<Box<dyn Remote>>,
    state: HostState,
    failed: Option<String>,
    /// Every byte sent to the host: the agent's upload and the frames.
    bytes_sent: u64,
    /// Of those, the agent's upload (0 when the host had the agent); `None` until the agent
    /// was checked, and on this machine.
    agent_bytes_sent: Option<u64>,
    /// Compressed bytes of the frames the host's tree is unpacked from, when it got a tree.
    bytes_needed: u64,
    /// Of those, bytes of frames the host kept from an earlier generation or run.
    bytes_reused: u64,
    /// On a registry host: container images whose step was done and whose files are there.
    images_served: usize,
    /// On a registry host: container images checked (or repaired) by this run.
    images_checked: usize,
    /// Bytes earlier connections carried through the host's jump host.
    bastion_bytes: u64,
    steps_run: usize,
    steps_skipped: usize,
    started: Instant,
    /// containerd's `config_path` on the host, when the image carries container images.
    containerd_certs: Option<PathBuf>,
    /// The host's name, as `hostname` says (preflight: unique across the cluster).
    hostname: Option<String>,
    /// What preflight found, for the stage after it.
    probed: Option<Probed>,
    /// The host's OS and kernel, as preflight read them.
    system: Option<String>,
    /// A preflight check failed on the host: the install does not start anywhere.
    refused: bool,
    /// The payload the host's tree held before this one, when it is being (or was) upgraded
    /// to it rather than installed afresh.
    upgrading_from: Option<String>,
    /// When its first preflight attempt failed in a way a retry may help: it is retried on
    /// its own, without holding the other hosts.
    late: Option<Instant>,
    /// What the host's steps waited for (other hosts' hooks, the cluster's lock).
    waits: Vec<HostWait>,
    /// When the host's last step ended (its walk, or master0's cluster stages).
    ended: Option<Instant>,
}

/// What a host's preflight found that the next stage uses.
#[derive(Clone, Copy)]
struct Probed {
    agent_present: bool,
    /// The host has `gzip`: the agent travels compressed.
    gzip: bool,
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
    /// The image's `plugins/*.yaml`, then the Clusterfile's plugins (an application image's
    /// own plugins only).
    plugins: Vec<Plugin>,
    /// Where the payload's tree and journal live on each host: `<dataRoot>/<cluster>` for the
    /// cluster's base image, `<dataRoot>/<cluster>/apps/<app>` for an application image.
    home: PathBuf,
    /// The application's name, when the payload is an application image.
    app: Option<String>,
    /// At most `parallel` hosts work at once.
    permits: schedule::Permits,
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
                agent_bytes_sent: None,
                bytes_needed: 0,
                bytes_reused: 0,
                images_served: 0,
                images_checked: 0,
                bastion_bytes: 0,
                steps_run: 0,
                steps_skipped: 0,
                started: Instant::now(),
                containerd_certs: None,
                hostname: None,
                probed: None,
                system: None,
                refused: false,
                upgrading_from: None,
                late: None,
                waits: Vec::new(),
                ended: None,
            })
        })
        .collect();

    if let (Some(app), true) = (&engine.app, engine.has_images_layer()) {
        events(InstallEvent::Note {
            host: None,
            text: format!(
                "note: the container images of application {app} are not served by this install (only a cluster image's are); push them to the cluster's registry"
            ),
        });
    }
    let (host_stages, cluster_stages): (Vec<Stage>, Vec<Stage>) =
        engine.stages().into_iter().partition(|s| !s.cluster_level);
    // Each host walks preflight and the host stages on its own, holding no other host while
    // it retries; the start waits for every host's first answer, the cluster stages for every
    // host.
    let _cluster_lock = engine.walk(&slots, &host_stages)?;
    let run_stage = |stage: &Stage| {
        engine.for_hosts(
            &slots,
            &|slot| {
                stage.hosts.contains(&slot.host.ip)
                    && stage.route.takes(slot.upgrading_from.is_some())
            },
            &stage.label,
            &|engine, slot| engine.run_step(slot, &stage.step),
        )
    };
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
        engine.note_cluster_wait(&slots, &cluster_stages);
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
                name: slot.host.name.clone(),
                port: slot.host.ssh.port,
                bastion: slot.host.ssh.bastion.as_ref().map(|b| b.to_string()),
                bastion_bytes: slot.bastion_bytes
                    + slot.remote.as_ref().map_or(0, |r| r.relayed_bytes()),
                roles: slot.host.roles.clone(),
                outcome,
                system: slot.system.clone(),
                bytes_sent: slot.bytes_sent,
                agent_bytes_sent: slot.agent_bytes_sent,
                bytes_needed: slot.bytes_needed,
                bytes_reused: slot.bytes_reused,
                images_served: slot.images_served,
                images_checked: slot.images_checked,
                steps_run: slot.steps_run,
                steps_skipped: slot.steps_skipped,
                waited: slot.waits,
                elapsed: slot
                    .ended
                    .map_or_else(|| slot.started.elapsed(), |e| e - slot.started),
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
        let app = app_name(payload);
        let mut home = cluster.data_root.join(&cluster.name);
        let cmds = match &app {
            // An application brings its own steps: the Clusterfile's hooks, Configs and
            // commands belong to the base image.
            Some(name) => {
                home = home.join(APPS_DIR).join(name);
                scripts::image_install_commands(&payload.config, &[])
            }
            None => {
                plugins.extend(cluster.plugins.iter().cloned());
                scripts::install_commands(cluster, payload)
            }
        };
        Ok(Engine {
            cluster,
            payload,
            opts,
            events,
            exports: Mutex::new(Vec::new()),
            cmds,
            plugins,
            home,
            app,
            permits: schedule::Permits::new(opts.parallel),
        })
    }
}

impl Engine<'_> {
    fn work_dir(&self) -> PathBuf {
        self.home.join(".sealer")
    }

    /// The payload's tree on every host.
    fn rootfs(&self) -> PathBuf {
        self.home.join("rootfs")
    }

    /// Run `work` for every host matching `select` that has not failed, `parallel` at a time,
    /// each with retries.
    fn for_hosts(
        &self,
        slots: &[Mutex<HostSlot>],
        select: &(dyn Fn(&HostSlot) -> bool + Sync),
        stage: &str,
        work: &(dyn Fn(&Self, &mut HostSlot) -> Result<(), StepFailure> + Sync),
    ) {
        let chosen: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.lock()
                    .map(|s| s.failed.is_none() && select(&s))
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

    /// `work` on a host until it succeeds or its attempts run out ([`Engine::retry_from`]).
    fn with_retries(
        &self,
        slot: &mut HostSlot,
        stage: &str,
        work: &(dyn Fn(&Self, &mut HostSlot) -> Result<(), StepFailure> + Sync),
    ) {
        self.retry_from(slot, stage, work, 1)
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

    /// Preflight of one host, changing nothing there: every check of [`preflight`] through
    /// one probe. A failed check refuses the host (and so the install); an ignored one is
    /// reported as a warning.
    fn preflight(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let agent = self.agent_path(slot.connected()?)?;
        let probe = self.preflight_command(&slot.host, &agent)?;
        let asked = std::time::SystemTime::now();
        let out = self.exec(slot, &probe, None)?;
        if let Some(sudo) = preflight::sudo_refusal(&slot.host, &out) {
            slot.refused = true;
            return Err(StepFailure::fatal(sudo.message()));
        }
        if !out.success() {
            return Err(command_failure("preflight", &out));
        }
        let found = self.read_preflight(
            &slot.host,
            &out.stdout_text(),
            asked,
            std::time::SystemTime::now(),
        );
        slot.hostname = found.hostname.clone();
        slot.system = found.system.clone();
        slot.containerd_certs = found.containerd_certs.clone();
        for ignored in found
            .checks
            .iter()
            .filter(|c| c.state == CheckState::Ignored)
        {
            (self.events)(InstallEvent::Note {
                host: Some(slot.host.ip),
                text: format!(
                    "warning: preflight check {} failed and is ignored (--ignore-preflight): {}",
                    ignored.check,
                    ignored.message()
                ),
            });
        }
        let refusals: Vec<String> = found.refusals().map(|c| c.message()).collect();
        if !refusals.is_empty() {
            slot.refused = true;
            return Err(StepFailure::fatal(refusals.join("; ")));
        }
        slot.probed = Some(Probed {
            agent_present: found.agent_present,
            gzip: found.gzip,
        });
        Ok(())
    }

    /// After every host's preflight: the agent (uploaded when missing) and its journal.
    fn prepare(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let Some(Probed {
            agent_present,
            gzip,
        }) = slot.probed
        else {
            self.preflight(slot)?;
            return self.prepare(slot);
        };
        let local = slot.remote.as_ref().is_some_and(|r| r.is_local());
        let agent = self.agent_path(slot.connected()?)?;
        if !agent_present && !local {
            self.upload_agent(slot, &agent, gzip)?;
            // Uploaded: a retry of this stage after a later failure does not send it again.
            slot.probed = Some(Probed {
                agent_present: true,
                gzip,
            });
        } else if !local {
            slot.agent_bytes_sent.get_or_insert(0);
        }
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::State {
                work: self.work_dir(),
            },
        )?;
        let out = self.exec_ok(slot, "reading the journal", &cmd, None)?;
        slot.state = serde_json::from_slice(&out.stdout)
            .map_err(|e| StepFailure::fatal(format!("the agent's state is unreadable: {e}")))?;
        slot.upgrading_from = self.upgrading_from(
            slot.state.installed.as_ref().map(|id| id.as_str()),
            slot.state.upgraded_from.as_ref().map(|id| id.as_str()),
        );
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
        )?;
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
            Change::Install if self.app.is_some() => self.app_stages(),
            Change::Install => self.install_stages(),
            Change::Join { hosts } if self.app.is_some() => self.app_join_stages(hosts),
            Change::Join { hosts } => self.join_stages(hosts),
            Change::Delete { hosts, all } => self.delete_stages(hosts, *all),
            Change::Rollback { .. } => {
                let all: Vec<IpAddr> = self.cluster.hosts.iter().map(|h| h.ip).collect();
                let mut stages = vec![Stage {
                    label: "rollback".into(),
                    step: Step::Rollback,
                    hosts: all,
                    cluster_level: false,
                    route: Route::Every,
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
                route: Route::Every,
            });
        }
        stages
    }

    /// Join: the host stages of an install on the new hosts only, with their join hooks; the
    /// render on every member (see [`journal::MEMBER_VARIABLES`]).
    fn join_stages(&self, new: &[IpAddr]) -> Vec<Stage> {
        let mut stages = vec![Stage {
            label: "distribute".into(),
            step: Step::Distribute,
            hosts: new.to_vec(),
            cluster_level: false,
            route: Route::Every,
        }];
        stages.extend(self.image_stages(new));
        for index in 0..self.cluster.configs.len() {
            stages.push(Stage {
                label: "config".into(),
                step: Step::Config { index },
                hosts: new.to_vec(),
                cluster_level: false,
                route: Route::Every,
            });
        }
        // Every member renders: the new hosts their templates, the others again only when a
        // template reads the member variables, which the join changes (their journal says).
        stages.push(Stage {
            label: "render".into(),
            step: Step::Render,
            hosts: self.cluster.hosts.iter().map(|h| h.ip).collect(),
            cluster_level: false,
            route: Route::Every,
        });
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
                route: Route::Every,
            });
        }
        stages.push(Stage {
            label: "remove".into(),
            step: Step::RemoveRootfs,
            hosts: gone.to_vec(),
            cluster_level: false,
            route: Route::Every,
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
            route: Route::Every,
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
                hosts: serving.clone(),
                cluster_level: false,
                route: Route::Every,
            });
            // One journal step per container image, once the registry serves the tree.
            stages.push(Stage {
                label: "images".into(),
                step: Step::Images,
                hosts: serving,
                cluster_level: false,
                route: Route::Every,
            });
        }
        stages.push(Stage {
            label: "registry".into(),
            step: Step::Mirror,
            hosts: within.to_vec(),
            cluster_level: false,
            route: Route::Every,
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
            route: Route::Every,
        }];
        stages.extend(self.image_stages(&all));
        for index in 0..self.cluster.configs.len() {
            stages.push(Stage {
                label: "config".into(),
                step: Step::Config { index },
                hosts: all.clone(),
                cluster_level: false,
                route: Route::Every,
            });
        }
        stages.push(Stage {
            label: "render".into(),
            step: Step::Render,
            hosts: all.clone(),
            cluster_level: false,
            route: Route::Every,
        });
        // With upgrade hooks, a host that held another image takes the upgrade route instead
        // of the install hooks and CMDs.
        let install = if self.has_upgrade_hooks() {
            Route::Install
        } else {
            Route::Every
        };
        let on = |route: Route, mut stages: Vec<Stage>| {
            stages.iter_mut().for_each(|s| s.route = route);
            stages
        };
        stages.extend(on(
            install,
            self.hook_stages(Phase::PreInitHost, &all, false),
        ));
        stages.extend(on(
            install,
            self.hook_stages(Phase::PostInitHost, &all, false),
        ));
        stages.extend(on(
            Route::Upgrade,
            self.hook_stages(Phase::UpgradeHost, &all, false),
        ));
        stages.extend(on(install, self.hook_stages(Phase::PreInstall, &all, true)));
        let master0 = self.cluster.master0().ip;
        // sealer's old PreGuest: right before the image's CMDs.
        stages.extend(on(install, self.hook_stages(Phase::PreGuest, &all, true)));
        for index in 0..self.cmds.len() {
            stages.push(Stage {
                label: "install".into(),
                step: Step::Cmd { index },
                hosts: vec![master0],
                cluster_level: true,
                route: install,
            });
        }
        stages.extend(on(
            install,
            self.hook_stages(Phase::PostInstall, &all, true),
        ));
        // sealer's `upgrade`: on master0 once every host holds the new tree.
        stages.extend(on(
            Route::Upgrade,
            self.hook_stages(Phase::Upgrade, &all, true),
        ));
        stages
    }

    /// An application image onto a running cluster, as sealer's app installer does it: its
    /// tree on the masters (in its own directory, beside the base image's), then its
    /// `pre-install` hooks, install commands and `post-install` hooks on master0.
    fn app_stages(&self) -> Vec<Stage> {
        let masters: Vec<IpAddr> = self
            .cluster
            .hosts
            .iter()
            .filter(|h| h.roles.iter().any(|r| r == "master"))
            .map(|h| h.ip)
            .collect();
        let mut stages = vec![Stage {
            label: "distribute".into(),
            step: Step::Distribute,
            hosts: masters.clone(),
            cluster_level: false,
            route: Route::Every,
        }];
        stages.extend(self.hook_stages(Phase::PreInstall, &masters, true));
        let master0 = self.cluster.master0().ip;
        for index in 0..self.cmds.len() {
            stages.push(Stage {
                label: "install".into(),
                step: Step::Cmd { index },
                hosts: vec![master0],
                cluster_level: true,
                route: Route::Every,
            });
        }
        stages.extend(self.hook_stages(Phase::PostInstall, &masters, true));
        stages
    }

    /// An application image onto masters joined later: its tree on the new masters among
    /// `new`, and nothing else (its CMDs and install hooks ran on master0 when it was
    /// installed; the cluster's env changed with the join, so their keys would not match).
    fn app_join_stages(&self, new: &[IpAddr]) -> Vec<Stage> {
        let masters: Vec<IpAddr> = self
            .cluster
            .hosts
            .iter()
            .filter(|h| new.contains(&h.ip) && h.roles.iter().any(|r| r == "master"))
            .map(|h| h.ip)
            .collect();
        vec![Stage {
            label: "distribute".into(),
            step: Step::Distribute,
            hosts: masters,
            cluster_level: false,
            route: Route::Every,
        }]
    }

    /// Whether the image or the Clusterfile declares `upgrade` or `upgrade-host` hooks.
    fn has_upgrade_hooks(&self) -> bool {
        self.plugins.iter().any(|p| {
            p.phases
                .iter()
                .any(|ph| matches!(ph, Phase::Upgrade | Phase::UpgradeHost))
        })
    }

    /// Whether a host whose tree holds `installed` (and whose installed generation replaced
    /// `upgraded_from`) comes to hold this payload by an upgrade: its tree holds another
    /// payload now, or the payload it holds was installed over another one.
    fn upgrading_from(
        &self,
        installed: Option<&str>,
        upgraded_from: Option<&str>,
    ) -> Option<String> {
        match installed {
            Some(id) if id != self.payload.id => Some(id.to_string()),
            Some(_) => upgraded_from.map(str::to_string),
            None => None,
        }
    }

    /// What an install says when a host takes the upgrade route, before that host's stages:
    /// the whole sentence for the first such host (`noted` is still false), a short one after.
    fn upgrade_note(
        &self,
        slot: &HostSlot,
        noted: &std::sync::atomic::AtomicBool,
    ) -> Option<String> {
        if self.opts.change != Change::Install
            || !self.has_upgrade_hooks()
            || slot.upgrading_from.is_none()
        {
            return None;
        }
        let ip = slot.host.ip;
        if noted.swap(true, Ordering::SeqCst) {
            return Some(format!("upgrade on {ip} too"));
        }
        Some(format!(
            "upgrade on {ip}: rootfs and Configs, then upgrade-host hooks, then upgrade hooks on master0 once every host holds the new tree (install hooks and CMDs are not run again); the previous tree is kept for `sealer rollback`"
        ))
    }

    fn run_step(&self, slot: &mut HostSlot, step: &Step) -> Result<(), StepFailure> {
        let mut key = self.step_key(&slot.host, step);
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
        if let Step::Images = step {
            return self.check_images(slot);
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
            )?;
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
        let done = self
            .done_keys(&slot.host, step)
            .iter()
            .any(|k| slot.state.done.contains(k));
        if journaled && done || (deleting && holds_nothing) {
            slot.steps_skipped += 1;
            (self.events)(InstallEvent::Skipped {
                host: slot.host.ip,
                step: name,
            });
            return Ok(());
        }
        let remote = slot.connected()?;
        let rootfs = self.rootfs().display().to_string();
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
                        rootfs: self.rootfs(),
                        path: c.path.clone(),
                        strategy: c.strategy,
                    },
                )?;
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
            Step::Render => {
                if !self.render(slot, &name)? {
                    key = self.render_key_without_members(&slot.host);
                }
            }
            // Done and counted above: never journaled (removals take the journal with them;
            // the registry is checked on every run).
            Step::Registry
            | Step::Images
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
        // The agent prints what the step exported; once the rootfs is recorded the spool is
        // pruned to the frames of the generations the host keeps.
        let record = self.agent_cmd(
            remote,
            &AgentCommand::Done {
                work: self.work_dir(),
                key: key.clone(),
                prune_spool: matches!(step, Step::Distribute),
                installs: match step {
                    Step::Distribute => self.payload.id.parse().ok(),
                    _ => None,
                },
            },
        )?;
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
