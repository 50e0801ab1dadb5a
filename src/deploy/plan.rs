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
    pub roles: Vec<String>,
    /// Why the host could not be asked (unreachable, refused key…); nothing else is known then.
    pub unreachable: Option<String>,
    /// What preflight would refuse (wrong architecture, too little space).
    pub problems: Vec<String>,
    /// The payload the host's rootfs holds now.
    pub installed: Option<String>,
    /// The host's name.
    pub hostname: Option<String>,
    /// Bytes the install would send: the agent when it is missing, and the frames not spooled.
    pub bytes_to_send: u64,
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
                        roles: host.roles.clone(),
                        unreachable: Some("the planner failed".into()),
                        problems: Vec::new(),
                        installed: None,
                        hostname: None,
                        bytes_to_send: 0,
                        steps: Vec::new(),
                    })
                })
                .collect()
        });
        // Preflight across hosts, as the install does it: names must be unique.
        let names: Vec<(IpAddr, Option<String>)> =
            plans.iter().map(|p| (p.ip, p.hostname.clone())).collect();
        for plan in &mut plans {
            let twin = plan
                .hostname
                .as_deref()
                .and_then(|name| super::preflight::twins(&names, plan.ip, name));
            plan.problems.extend(twin);
        }
        plans
    }

    fn plan_host(&self, host: &crate::clusterfile::Host, stages: &[super::Stage]) -> HostPlan {
        let mut plan = HostPlan {
            ip: host.ip,
            roles: host.roles.clone(),
            unreachable: None,
            problems: Vec::new(),
            installed: None,
            hostname: None,
            bytes_to_send: 0,
            steps: Vec::new(),
        };
        let mut remote = match (self.opts.connect)(host) {
            Ok(remote) => remote,
            Err(e) => {
                plan.unreachable = Some(e.to_string());
                return plan;
            }
        };
        let agent = self.agent_path(remote.as_ref());
        let work = self.work_dir().display().to_string();
        // The install's own preflight probe, then the work directory's state.
        let probe = format!(
            "{}; w={work}; echo {SECTION}; cat \"$w/installed\" 2>/dev/null; echo {SECTION}; ls \"$w/journal\" 2>/dev/null; \
             echo {SECTION}; ls \"$w/spool\" 2>/dev/null; true",
            self.preflight_command(&agent),
            work = shell_quote(&work),
        );
        let asked = std::time::SystemTime::now();
        let out = match remote.exec(&probe, None) {
            Ok(out) if out.success() => out,
            Ok(out) => {
                plan.unreachable = Some(format!("the probe failed: {}", out.tail()));
                return plan;
            }
            Err(e) => {
                plan.unreachable = Some(e.to_string());
                return plan;
            }
        };
        let text = out.stdout_text();
        let separator = format!("{SECTION}\n");
        let mut sections = text.split(separator.as_str());
        let head = sections.next().unwrap_or_default();
        let installed = sections.next().unwrap_or_default().trim().to_string();
        let journal: HashSet<&str> = sections.next().unwrap_or_default().lines().collect();
        let spool: HashSet<&str> = sections.next().unwrap_or_default().lines().collect();
        let found = self.read_preflight(head, asked, std::time::SystemTime::now());
        plan.hostname = found.hostname;
        plan.problems.extend(found.problems);
        let free_kb = found.free_kb;
        if !found.agent_present && !remote.is_local() {
            plan.bytes_to_send += self.payload.agent.len() as u64;
        }
        // A journal kept for another payload describes a tree that would be replaced.
        let same_payload = installed.is_empty() || installed == self.payload.id;
        plan.installed = (!installed.is_empty()).then_some(installed);
        for stage in stages.iter().filter(|s| s.hosts.contains(&host.ip)) {
            let key = self.step_key(host, &stage.step);
            let run = match stage.step {
                // Checked on every run; it starts only with a new tree (or when it is down,
                // which only the run itself finds out).
                Step::Registry => {
                    let rootfs = self.step_key(host, &Step::Distribute);
                    !(same_payload && journal.contains(rootfs.as_str()))
                }
                _ => !(same_payload && journal.contains(key.as_str())),
            };
            if run && matches!(stage.step, Step::Distribute) {
                let needed_kb =
                    (self.payload.compressed_len() + self.payload.uncompressed_len()) / 1024;
                if free_kb < needed_kb {
                    plan.problems.push(format!(
                        "{} has {} MiB free, the image needs {} MiB",
                        self.cluster.data_root.display(),
                        free_kb / 1024,
                        needed_kb / 1024
                    ));
                }
                if !remote.is_local() {
                    plan.bytes_to_send += self
                        .payload
                        .layers
                        .iter()
                        .flat_map(|l| &l.frames)
                        .filter(|f| !spool.contains(f.sha256.as_str()))
                        .map(|f| f.compressed_len)
                        .sum::<u64>();
                }
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
    pub roles: Vec<String>,
    /// Why the host could not be asked.
    pub unreachable: Option<String>,
    /// The payload its rootfs holds; `None` when nothing is installed.
    pub installed: Option<String>,
    /// Steps recorded in its journal for that payload.
    pub steps_done: usize,
    /// Frames spooled and not yet unpacked (an install cut off while sending).
    pub frames_spooled: usize,
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
                    roles: host.roles.clone(),
                    unreachable: Some("the probe failed".into()),
                    installed: None,
                    steps_done: 0,
                    frames_spooled: 0,
                })
            })
            .collect()
    })
}

fn host_status(host: &Host, connect: &Connector, work: &str) -> HostStatus {
    let mut status = HostStatus {
        ip: host.ip,
        roles: host.roles.clone(),
        unreachable: None,
        installed: None,
        steps_done: 0,
        frames_spooled: 0,
    };
    let probe = format!(
        "w={}; cat \"$w/installed\" 2>/dev/null; echo {SECTION}; ls \"$w/journal\" 2>/dev/null; echo {SECTION}; ls \"$w/spool\" 2>/dev/null; true",
        shell_quote(work)
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
            status.frames_spooled = sections
                .next()
                .unwrap_or_default()
                .lines()
                .filter(is_key)
                .count();
        }
        Ok(out) => status.unreachable = Some(format!("the probe failed: {}", out.tail())),
        Err(e) => status.unreachable = Some(e.to_string()),
    }
    status
}
