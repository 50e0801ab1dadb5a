//! The dry run: what an install would do on each host, found without changing anything there.
//! Each host is asked, through one read-only shell probe, for its architecture, free space,
//! the payload its rootfs holds, its journal and its spool; the engine's own stage list and
//! step keys then say which steps would run or be skipped and how many bytes would travel.
//! No agent is uploaded, no directory created, no lock taken on the host. [`status`] asks the
//! same probe what each host holds now.

use std::collections::HashSet;
use std::net::IpAddr;

use super::{Connector, Engine, Step};
use crate::clusterfile::{shell_quote, Cluster, Host};

/// What an install would do on one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostPlan {
    pub ip: IpAddr,
    /// The host name the address was resolved from, when the host was given by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The SSH port.
    pub port: u16,
    pub roles: Vec<String>,
    /// Why the host could not be asked (unreachable, refused key…); nothing else is known then.
    pub unreachable: Option<String>,
    /// What preflight would refuse (wrong architecture, too little space): the message of
    /// every failed check.
    pub problems: Vec<String>,
    /// The payload the host's rootfs holds now.
    pub installed: Option<String>,
    /// The host's name.
    pub hostname: Option<String>,
    /// The host's OS and kernel.
    pub system: Option<String>,
    /// Every preflight check's result on the host, in [`super::PREFLIGHT_CHECKS`] order.
    pub checks: Vec<super::CheckResult>,
    /// Bytes the install would send: the agent when it is missing, and the frames not spooled.
    pub bytes_to_send: u64,
    /// Of `bytes_to_send`, the agent's.
    #[serde(skip)]
    pub agent_bytes: u64,
    pub steps: Vec<PlannedStep>,
}

/// One step and whether it would run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedStep {
    pub name: String,
    pub run: bool,
}

impl HostPlan {
    pub fn would_run(&self) -> usize {
        self.steps.iter().filter(|s| s.run).count()
    }

    /// The plan `app` of the same host for the application `image` (a join's second part,
    /// after this one): its steps, named for the application, and its frames; the agent is
    /// counted once.
    pub fn add_application(&mut self, image: &str, app: HostPlan) {
        if self.unreachable.is_some() || app.unreachable.is_some() {
            return;
        }
        self.bytes_to_send += app.bytes_to_send - app.agent_bytes;
        self.steps
            .extend(app.steps.into_iter().map(|step| PlannedStep {
                name: format!("{} (application {image})", step.name),
                run: step.run,
            }));
    }
}

const SECTION: &str = "--sealer-section--";

impl Engine<'_> {
    /// The plan for every host, in cluster order.
    pub(super) fn plan(&self) -> Vec<HostPlan> {
        let stages = self.stages();
        let mut plans: Vec<HostPlan> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .cluster
                .hosts
                .iter()
                .map(|host| {
                    let stages = &stages;
                    scope.spawn(move || self.plan_host(host, stages))
                })
                .collect();
            handles
                .into_iter()
                .zip(&self.cluster.hosts)
                .map(|(h, host)| {
                    h.join().unwrap_or_else(|_| HostPlan {
                        ip: host.ip,
                        name: host.name.clone(),
                        port: host.ssh.port,
                        roles: host.roles.clone(),
                        unreachable: Some("the planner failed".into()),
                        problems: Vec::new(),
                        installed: None,
                        hostname: None,
                        system: None,
                        checks: Vec::new(),
                        bytes_to_send: 0,
                        agent_bytes: 0,
                        steps: Vec::new(),
                    })
                })
                .collect()
        });
        // Preflight across hosts, as the install does it: names must be unique.
        let names: Vec<(IpAddr, Option<String>)> =
            plans.iter().map(|p| (p.ip, p.hostname.clone())).collect();
        for plan in &mut plans {
            let Some(name) = plan.hostname.as_deref() else {
                continue;
            };
            let twin = super::preflight::twins(&names, plan.ip, name, &self.opts.ignore_preflight);
            if twin.state == super::CheckState::Failed {
                plan.problems.push(twin.message());
            }
            // In PREFLIGHT_CHECKS order: after the clock.
            let at = plan
                .checks
                .iter()
                .position(|c| c.check == "ports")
                .unwrap_or(plan.checks.len());
            plan.checks.insert(at, twin);
        }
        // The push to an external registry runs here, before any host changes: shown as the
        // first step of master0.
        if let Some(push) = self.external_push_plan() {
            let master0 = self.cluster.master0().ip;
            if let Some(plan) = plans.iter_mut().find(|p| p.ip == master0) {
                plan.steps.insert(
                    0,
                    PlannedStep {
                        name: push,
                        run: true,
                    },
                );
            }
        }
        plans
    }

    fn plan_host(&self, host: &crate::clusterfile::Host, stages: &[super::Stage]) -> HostPlan {
        let mut plan = HostPlan {
            ip: host.ip,
            name: host.name.clone(),
            port: host.ssh.port,
            roles: host.roles.clone(),
            unreachable: None,
            problems: Vec::new(),
            installed: None,
            hostname: None,
            system: None,
            checks: Vec::new(),
            bytes_to_send: 0,
            agent_bytes: 0,
            steps: Vec::new(),
        };
        let mut remote = match (self.opts.connect)(host) {
            Ok(remote) => remote,
            Err(e) => {
                plan.unreachable = Some(e.to_string());
                return plan;
            }
        };
        // The install's own preflight probe: its checks and the work directory's state.
        let probe = match self
            .agent_path(remote.as_ref())
            .and_then(|agent| self.preflight_command(host, &agent))
        {
            Ok(probe) => probe,
            Err(e) => {
                plan.problems.push(e.message);
                return plan;
            }
        };
        let asked = std::time::SystemTime::now();
        let out = match remote.exec(&probe, None) {
            Ok(out) if out.success() => out,
            Ok(out) => {
                match super::preflight::sudo_refusal(host, &out) {
                    Some(sudo) => {
                        plan.problems.push(sudo.message());
                        plan.checks.push(sudo);
                    }
                    None => plan.unreachable = Some(format!("the probe failed: {}", out.tail())),
                }
                return plan;
            }
            Err(e) => {
                plan.unreachable = Some(e.to_string());
                return plan;
            }
        };
        let found = self.read_preflight(
            host,
            &out.stdout_text(),
            asked,
            std::time::SystemTime::now(),
        );
        plan.hostname = found.hostname.clone();
        plan.system = found.system.clone();
        plan.problems.extend(found.refusals().map(|c| c.message()));
        plan.checks = found.checks;
        let installed = found.installed.unwrap_or_default();
        let journal: HashSet<&str> = found.journal.iter().map(String::as_str).collect();
        let spool: HashSet<&str> = found.spool.iter().map(String::as_str).collect();
        if !found.agent_present && !remote.is_local() {
            plan.agent_bytes = self
                .agent_upload_len(found.gzip)
                .or_else(|_| self.agent_upload_len(false))
                .unwrap_or(0);
            plan.bytes_to_send += plan.agent_bytes;
        }
        // A journal kept for another payload describes a tree that would be replaced.
        let same_payload = installed.is_empty() || installed == self.payload.id;
        let upgrading = self
            .upgrading_from(
                (!installed.is_empty()).then_some(installed.as_str()),
                journal
                    .contains("upgraded-from")
                    .then_some("another payload"),
            )
            .is_some();
        plan.installed = (!installed.is_empty()).then_some(installed);
        let on_route = |s: &&super::Stage| s.hosts.contains(&host.ip) && s.route.takes(upgrading);
        for stage in stages.iter().filter(on_route) {
            if let Step::Images = stage.step {
                // One step per container image: done when the journal has it, whichever
                // payload's journal it is (an upgrade carries the images both payloads hold).
                for image in self.image_steps() {
                    let key = self.image_key(&image.digest);
                    plan.steps.push(PlannedStep {
                        name: self.image_step_name(image),
                        run: !journal.contains(key.as_str()),
                    });
                }
                continue;
            }
            let done = self
                .done_keys(host, &stage.step)
                .iter()
                .any(|k| journal.contains(k.as_str()));
            let run = match stage.step {
                // Checked on every run; it starts only with a new tree (or when it is down,
                // which only the run itself finds out).
                Step::Registry => {
                    let rootfs = self.step_key(host, &Step::Distribute);
                    !(same_payload && journal.contains(rootfs.as_str()))
                }
                _ => !(same_payload && done),
            };
            if run && matches!(stage.step, Step::Distribute) && !remote.is_local() {
                plan.bytes_to_send += self
                    .payload
                    .layers
                    .iter()
                    .flat_map(|l| &l.frames)
                    .filter(|f| !spool.contains(f.sha256.as_str()))
                    .map(|f| f.compressed_len)
                    .sum::<u64>();
            }
            plan.steps.push(PlannedStep {
                name: self.step_name(&stage.step),
                run,
            });
        }
        plan
    }
}

/// What one host holds now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub ip: IpAddr,
    /// The host name the address was resolved from, when the host was given by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The SSH port.
    pub port: u16,
    pub roles: Vec<String>,
    /// Why the host could not be asked.
    pub unreachable: Option<String>,
    /// The payload its rootfs holds; `None` when nothing is installed.
    pub installed: Option<String>,
    /// Steps recorded in its journal for that payload.
    pub steps_done: usize,
    /// Frames spooled and not yet unpacked (an install cut off while sending); the frames the
    /// host keeps of its installed and previous tree are not counted.
    pub frames_spooled: usize,
    /// Application images beside the base image: `(directory under apps/, payload)`.
    pub apps: Vec<(String, String)>,
}

/// What every host of `cluster` holds now, asked in parallel through a read-only probe.
pub fn status(cluster: &Cluster, connect: &Connector) -> Vec<HostStatus> {
    let work = cluster.data_root.join(&cluster.name).join(".sealer");
    let work = work.display().to_string();
    std::thread::scope(|scope| {
        let handles: Vec<_> = cluster
            .hosts
            .iter()
            .map(|host| {
                let work = &work;
                scope.spawn(move || host_status(host, connect, work))
            })
            .collect();
        handles
            .into_iter()
            .zip(&cluster.hosts)
            .map(|(h, host)| {
                h.join().unwrap_or_else(|_| HostStatus {
                    ip: host.ip,
                    name: host.name.clone(),
                    port: host.ssh.port,
                    roles: host.roles.clone(),
                    unreachable: Some("the probe failed".into()),
                    installed: None,
                    steps_done: 0,
                    frames_spooled: 0,
                    apps: Vec::new(),
                })
            })
            .collect()
    })
}

fn host_status(host: &Host, connect: &Connector, work: &str) -> HostStatus {
    let mut status = HostStatus {
        ip: host.ip,
        name: host.name.clone(),
        port: host.ssh.port,
        roles: host.roles.clone(),
        unreachable: None,
        installed: None,
        steps_done: 0,
        frames_spooled: 0,
        apps: Vec::new(),
    };
    let probe = format!(
        "w={}; cat \"$w/installed\" 2>/dev/null; echo {SECTION}; ls \"$w/journal\" 2>/dev/null; echo {SECTION}; ls \"$w/spool\" 2>/dev/null; \
         echo {SECTION}; cat \"$w/frames\" \"$w/frames.prev\" 2>/dev/null; \
         echo {SECTION}; for a in \"$w\"/../{}/*/.sealer/installed; do [ -f \"$a\" ] && echo \"$a $(cat \"$a\")\"; done; true",
        shell_quote(work),
        super::APPS_DIR,
    );
    let out = connect(host).and_then(|mut remote| remote.exec(&probe, None));
    match out {
        Ok(out) if out.success() => {
            let text = out.stdout_text();
            let separator = format!("{SECTION}\n");
            let mut sections = text.split(separator.as_str());
            let installed = sections.next().unwrap_or_default().trim();
            status.installed = (!installed.is_empty()).then(|| installed.to_string());
            let is_key = |l: &&str| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit());
            status.steps_done = sections
                .next()
                .unwrap_or_default()
                .lines()
                .filter(is_key)
                .count();
            let spooled = sections.next().unwrap_or_default();
            let kept: std::collections::HashSet<&str> =
                sections.next().unwrap_or_default().lines().collect();
            status.frames_spooled = spooled
                .lines()
                .filter(is_key)
                .filter(|f| !kept.contains(f))
                .count();
            // `PATH/apps/NAME/.sealer/installed ID`, one an application.
            status.apps = sections
                .next()
                .unwrap_or_default()
                .lines()
                .filter_map(|line| {
                    let (path, id) = line.rsplit_once(' ')?;
                    let app = path
                        .strip_suffix("/.sealer/installed")?
                        .rsplit('/')
                        .next()?;
                    Some((app.to_string(), id.trim().to_string()))
                })
                .collect();
        }
        Ok(out) => status.unreachable = Some(format!("the probe failed: {}", out.tail())),
        Err(e) => status.unreachable = Some(e.to_string()),
    }
    status
}
