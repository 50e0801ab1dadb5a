//! What an install shows: the package check, a line per host stage, a byte counter per host while
//! frames are sent, and the per-host table at the end. It renders the events of
//! [`crate::install::run`]; it calls no engine function.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::deploy::{
    CheckResult, CheckState, HostOutcome, HostPlan, HostReport, InstallEvent, InstallReport,
};
use crate::install::{ClusterStatus, Event, PreflightReport, Summary};

use super::format::{human_bytes, short_digest};
use super::log::RunLog;
use super::progress::{Board, ByteProgress};

/// Renders one install's events; [`InstallView::finish`] prints the table (or the JSON report).
pub struct InstallView {
    board: Board,
    check: Mutex<Option<ByteProgress>>,
    hosts: Mutex<HashMap<IpAddr, ByteProgress>>,
    /// Every printed line is also written here.
    log: Option<RunLog>,
    /// The report is printed as JSON on stdout; the lines go to stderr.
    json: bool,
    /// The stage each host is in and when it started (`-v` prints how long each took).
    stages: Mutex<HashMap<IpAddr, (String, Instant)>>,
}

impl Default for InstallView {
    fn default() -> Self {
        InstallView::new()
    }
}

impl InstallView {
    pub fn new() -> Self {
        InstallView {
            board: Board::new(),
            check: Mutex::new(None),
            hosts: Mutex::new(HashMap::new()),
            log: None,
            json: false,
            stages: Mutex::new(HashMap::new()),
        }
    }

    /// A view of a run that changes hosts: what it prints is also written to `log`; with
    /// `json`, [`InstallView::finish`] prints the report as JSON and the lines go to stderr.
    pub fn logged(log: RunLog, json: bool) -> Self {
        InstallView {
            log: Some(log),
            json,
            ..InstallView::new()
        }
    }

    /// A line on stdout (stderr with `--json`), above the bars on a terminal, and in the log.
    fn line(&self, text: String) {
        if let Some(log) = &self.log {
            log.write(&text);
        }
        if self.json {
            self.board.suspend(|| eprintln!("{text}"));
        } else {
            self.board.suspend(|| println!("{text}"));
        }
    }

    /// A line of detail (a stage, a step already done, what a host said): logged always,
    /// printed unless `-q`.
    fn detail(&self, text: String) {
        if super::verbosity() == super::Verbosity::Quiet {
            if let Some(log) = &self.log {
                log.write(&text);
            }
            return;
        }
        self.line(text);
    }

    /// With `-v`: `[HOST] STAGE: 1.2 s` for the stage `host` was in, when it ends (another
    /// starts, or the run ends: `next` is `None`).
    fn stage_ended(&self, host: IpAddr, next: Option<&str>) {
        let Ok(mut stages) = self.stages.lock() else {
            return;
        };
        let ended = match next {
            Some(stage) => stages.insert(host, (stage.to_string(), Instant::now())),
            None => stages.remove(&host),
        };
        drop(stages);
        if super::verbosity() != super::Verbosity::Verbose {
            return;
        }
        if let Some((stage, started)) = ended {
            self.line(format!(
                "[{host}] {stage}: {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
    }

    pub fn show(&self, event: Event) {
        match event {
            Event::Checking { done, total } => {
                let Ok(mut check) = self.check.lock() else {
                    return;
                };
                check
                    .get_or_insert_with(|| self.board.bar("verifying", total))
                    .update(done);
            }
            Event::Checked => {
                if let Ok(mut check) = self.check.lock() {
                    if let Some(progress) = check.take() {
                        progress.finish();
                    }
                }
            }
            Event::Starting(summary) => {
                if let Some(log) = &self.log {
                    log.open(&summary.cluster);
                }
                self.detail(starting_line(&summary))
            }
            Event::Host(event) => self.host(event),
        }
    }

    fn host(&self, event: InstallEvent) {
        match event {
            InstallEvent::Stage { host, stage } => {
                self.stage_ended(host, Some(&stage));
                self.detail(format!("[{host}] {stage}"))
            }
            InstallEvent::Skipped { host, step } => {
                self.detail(format!("[{host}] {step}: already done"))
            }
            InstallEvent::Note {
                host: Some(host),
                text,
            } => self.detail(format!("[{host}] {text}")),
            InstallEvent::Note { host: None, text } => self.line(text),
            InstallEvent::Sent { host, sent, total } => self.sent(host, "sending", sent, total),
            InstallEvent::AgentSent { host, sent, total } => self.sent(host, "agent", sent, total),
        }
    }

    /// A host's counter of what is being sent (`agent`, then `sending` for the frames): bytes,
    /// rate and ETA, one at a time per host.
    fn sent(&self, host: IpAddr, what: &str, sent: u64, total: u64) {
        let Ok(mut hosts) = self.hosts.lock() else {
            return;
        };
        let label = format!("[{host}] {what}");
        // A retry sends again, perhaps fewer frames: a new counter.
        let fresh = hosts
            .get(&host)
            .is_none_or(|p| p.is_finished() || p.total() != total || p.label() != label);
        if fresh {
            hosts.insert(host, self.board.bar(label, total));
        }
        if let Some(progress) = hosts.get(&host) {
            progress.update(sent);
            if sent >= total {
                progress.finish();
            }
        }
    }

    /// Clear what is left of the counters and print the per-host table (the JSON report with
    /// `--json`), then where the log is.
    pub fn finish(&self, report: &InstallReport) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.clear();
        }
        let mut last: Vec<IpAddr> = self
            .stages
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        last.sort();
        for host in last {
            self.stage_ended(host, None);
        }
        let text = if self.json {
            serde_json::to_string_pretty(report).unwrap_or_else(|e| {
                format!("{{\"error\": \"the report cannot be written as JSON: {e}\"}}")
            })
        } else {
            report_text(report)
        };
        println!("{text}");
        let Some(log) = &self.log else {
            return;
        };
        log.write(&text);
        if let Some(path) = log.path() {
            let line = format!("log: {}", path.display());
            log.write(&line);
            if self.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
}

/// `Installing IMAGE (SIZE in N frames, SIZE unpacked) on N host(s) of cluster NAME`.
fn starting_line(s: &Summary) -> String {
    format!(
        "Installing {} ({} in {} frames, {} unpacked) on {} host(s) of cluster {}",
        s.image,
        human_bytes(s.compressed),
        s.frames,
        human_bytes(s.uncompressed),
        s.hosts,
        s.cluster
    )
}

/// The per-host table and the closing sentence.
pub fn print_report(report: &InstallReport) {
    println!("{}", report_text(report));
}

/// The per-host table and the closing sentence, as printed (after an empty line).
fn report_text(report: &InstallReport) -> String {
    let names: Vec<String> = report
        .hosts
        .iter()
        .map(|h| h.address().to_string())
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(0).max(18);
    let mut out = format!("\n{:<width$} {:<14} STATUS", "HOST", "ROLES");
    for (host, name) in report.hosts.iter().zip(&names) {
        out.push_str(&format!(
            "\n{name:<width$} {:<14} {}",
            host.roles.join(","),
            status(host, report.done)
        ));
    }
    let waits: Vec<String> = report
        .hosts
        .iter()
        .zip(&names)
        .flat_map(|(host, name)| {
            host.waited.iter().map(move |w| {
                format!(
                    "\n  {name}: {} waited {:.1}s for {}",
                    w.step, w.seconds, w.waited_for
                )
            })
        })
        .collect();
    if !waits.is_empty() {
        out.push_str("\n\nWaited on other hosts:");
        waits.iter().for_each(|w| out.push_str(w));
    }
    if let Some(why) = &report.cluster_stages_skipped {
        out.push_str(&format!("\n\n{why}"));
    }
    if report.up_to_date() {
        out.push_str(&format!(
            "\n\nEverything is up to date; nothing was changed ({:.1}s).",
            report.elapsed.as_secs_f64()
        ));
    } else if report.success() {
        let mut done = report.done.to_string();
        if let Some(first) = done.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        out.push_str(&format!(
            "\n\n{done} in {:.1}s.",
            report.elapsed.as_secs_f64()
        ));
    }
    out
}

/// A host's STATUS column: `installed (N steps, N already done, SIZE sent, agent SIZE)` (or
/// `joined`, `removed`, `rolled back`), with `SIZE sent of SIZE, SIZE reused` when the host
/// kept some of the frames its tree needed; `up to date`, or `FAILED: why`. The agent's upload
/// is part of the bytes sent; `agent 0 B` when the host had it. A registry host says how many
/// container images were already served (`N already done, 2 container images already served,
/// …`; `up to date (3 container images already served)`).
fn status(host: &HostReport, done: &str) -> String {
    let served = match host.images_served {
        0 => None,
        1 => Some("1 container image already served".to_string()),
        n => Some(format!("{n} container images already served")),
    };
    let reused = if host.bytes_reused > 0 {
        format!(
            " of {}, {} reused",
            human_bytes(host.bytes_needed),
            human_bytes(host.bytes_reused)
        )
    } else {
        String::new()
    };
    match &host.outcome {
        HostOutcome::Installed => format!(
            "{done} ({}, {} already done{}, {} sent{reused}{}{})",
            super::format::count(host.steps_run, "step"),
            host.steps_skipped,
            served
                .as_ref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default(),
            human_bytes(host.bytes_sent),
            host.agent_bytes_sent
                .map(|b| format!(", agent {}", human_bytes(b)))
                .unwrap_or_default(),
            through_bastion(host)
        ),
        HostOutcome::UpToDate => format!(
            "up to date{}{}",
            served
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            through_bastion(host)
        ),
        HostOutcome::Failed(reason) => format!("FAILED: {reason}"),
    }
}

/// `, via bastion root@10.0.0.1 (12.3 MiB through it)`, or nothing for a direct host.
fn through_bastion(host: &HostReport) -> String {
    match &host.bastion {
        Some(bastion) => format!(
            ", via bastion {bastion}: {} through it",
            human_bytes(host.bastion_bytes)
        ),
        None => String::new(),
    }
}

/// How a table names a host: `10.0.0.2`, `10.0.0.2:2222`, `node1 (10.0.0.2)`.
fn shown(ip: IpAddr, name: &Option<String>, port: u16) -> String {
    crate::address::HostAddress {
        ip,
        name: name.clone(),
        port: Some(port),
    }
    .to_string()
}

/// The dry run: per host what would be sent and which steps would run or be skipped, then one
/// closing sentence. Nothing was changed.
pub fn print_plan(summary: &Summary, plans: &[HostPlan]) {
    println!(
        "Dry run: {} on {} host(s) of cluster {}; nothing is changed",
        summary.image, summary.hosts, summary.cluster
    );
    println!("\n{:<18} {:<14} WOULD", "HOST", "ROLES");
    for plan in plans {
        let would = match &plan.unreachable {
            Some(why) => format!("UNREACHABLE: {why}"),
            None if plan.would_run() == 0 => "do nothing (up to date)".to_string(),
            None => format!(
                "send {}, run {} of {} steps",
                human_bytes(plan.bytes_to_send),
                plan.would_run(),
                plan.steps.len()
            ),
        };
        println!(
            "{:<18} {:<14} {would}",
            shown(plan.ip, &plan.name, plan.port),
            plan.roles.join(",")
        );
        for check in &plan.checks {
            let line = match check.state {
                CheckState::Failed => format!("preflight would refuse: {}", check.message()),
                CheckState::Ignored => format!("preflight ignored: {}", check.message()),
                CheckState::Passed => format!("preflight {:<9} ok: {}", check.check, check.found),
                CheckState::Skipped => {
                    format!("preflight {:<9} skipped: {}", check.check, check.found)
                }
            };
            println!("{:<33} {line}", "");
        }
        for step in &plan.steps {
            let what = if step.run { "run " } else { "skip" };
            println!("{:<33} {what} {}", "", step.name);
        }
    }
    let changing = plans
        .iter()
        .filter(|p| p.unreachable.is_some() || p.would_run() > 0)
        .count();
    let refused = plans.iter().filter(|p| !p.problems.is_empty()).count();
    if refused > 0 {
        println!(
            "\nPreflight would refuse {refused} of {} host(s); nothing would be sent to them.",
            plans.len()
        );
    } else if changing == 0 {
        println!("\nEverything is up to date; an install would change nothing.");
    } else {
        println!(
            "\nAn install would change {changing} of {} host(s).",
            plans.len()
        );
    }
}

/// `sealer check`: a row per host and check (host, check, result, what to do), then a line
/// saying whether an install would start.
pub fn print_checks(report: &PreflightReport) {
    println!(
        "Preflight of {} for cluster {}: {} host(s); nothing is changed",
        report.image,
        report.cluster,
        report.hosts.len()
    );
    println!(
        "\n{:<18} {:<9} {:<7} FOUND / WHAT TO DO",
        "HOST", "CHECK", "RESULT"
    );
    for host in &report.hosts {
        if let Some(why) = &host.unreachable {
            println!(
                "{:<18} {:<9} {:<7} {why}",
                shown(host.ip, &host.name, host.port),
                "connect",
                "FAILED"
            );
            continue;
        }
        for check in &host.checks {
            println!(
                "{}",
                check_row(&shown(host.ip, &host.name, host.port), check)
            );
        }
    }
    let failed = report
        .hosts
        .iter()
        .filter(|h| {
            h.unreachable.is_some() || h.checks.iter().any(|c| c.state == CheckState::Failed)
        })
        .count();
    if failed == 0 {
        println!(
            "\nEvery check passed on {} host(s): an install would start.",
            report.hosts.len()
        );
    } else {
        println!(
            "\nPreflight fails on {failed} of {} host(s): an install would refuse to start.",
            report.hosts.len()
        );
    }
}

fn check_row(host: &str, check: &CheckResult) -> String {
    let result = match check.state {
        CheckState::Passed => "ok",
        CheckState::Failed => "FAILED",
        CheckState::Ignored => "ignored",
        CheckState::Skipped => "skipped",
    };
    let mut row = format!("{host:<18} {:<9} {result:<7} {}", check.check, check.found);
    if let (Some(fix), CheckState::Failed | CheckState::Ignored) = (&check.fix, check.state) {
        row.push_str(&format!("\n{:<36} -> {fix}", ""));
    }
    row
}

/// `sealer status`: one line per host, then who is changing the cluster, if anyone.
pub fn print_status(status: &ClusterStatus) {
    println!("Cluster {}", status.cluster);
    println!("\n{:<18} {:<14} {:<24} STEPS", "HOST", "ROLES", "IMAGE");
    for host in &status.hosts {
        let h = &host.host;
        let (image, steps) = match (&h.unreachable, &h.installed) {
            (Some(why), _) => (format!("UNREACHABLE: {why}"), String::new()),
            (None, None) => ("nothing installed".to_string(), String::new()),
            (None, Some(id)) => (
                host.image
                    .clone()
                    .unwrap_or_else(|| format!("payload {}", short_digest(id))),
                format!("{} done", h.steps_done),
            ),
        };
        let mut line = format!(
            "{:<18} {:<14} {image:<24} {steps}",
            shown(h.ip, &h.name, h.port),
            h.roles.join(",")
        );
        if h.frames_spooled > 0 {
            line.push_str(&format!(
                ", {} frames received and not yet unpacked",
                h.frames_spooled
            ));
        }
        if let (Some(result), Some(_)) = (&host.last_result, &h.installed) {
            line.push_str(&format!("; last install from here: {result}"));
        }
        println!("{}", line.trim_end());
        for app in &host.apps {
            let image = app
                .image
                .clone()
                .unwrap_or_else(|| format!("payload {}", short_digest(&app.payload)));
            println!(
                "{:<18} {:<14} {image:<24} application (apps/{})",
                "", "", app.app
            );
        }
    }
    match &status.changing {
        Some(holder) => println!("\nBeing changed now by {holder}."),
        None => println!("\nNo command is changing the cluster from this machine."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn host(outcome: HostOutcome, images_served: usize) -> HostReport {
        HostReport {
            ip: "10.0.0.1".parse().unwrap(),
            name: None,
            port: 22,
            bastion: None,
            bastion_bytes: 0,
            roles: vec!["master".into()],
            outcome,
            system: None,
            bytes_sent: 2048,
            agent_bytes_sent: Some(0),
            bytes_needed: 0,
            bytes_reused: 0,
            images_served,
            images_checked: 1,
            steps_run: 2,
            steps_skipped: 4,
            waited: Vec::new(),
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_registry_host_row_says_how_many_container_images_were_already_served() {
        assert_eq!(
            status(&host(HostOutcome::Installed, 3), "installed"),
            "installed (2 steps, 4 already done, 3 container images already served, 2.0 KiB sent, agent 0 B)"
        );
        assert_eq!(
            status(&host(HostOutcome::UpToDate, 1), "installed"),
            "up to date (1 container image already served)"
        );
        assert_eq!(
            status(&host(HostOutcome::UpToDate, 0), "installed"),
            "up to date"
        );
    }
}
