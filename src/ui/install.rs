//! What an install shows: the package check, a line per host stage, a byte counter per host while
//! frames are sent, and the per-host table at the end. It renders the events of
//! [`crate::install::run`]; it calls no engine function.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::deploy::{HostOutcome, HostPlan, HostReport, InstallEvent, InstallReport};
use crate::install::{ClusterStatus, Event, Summary};

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
                self.line(starting_line(&summary))
            }
            Event::Host(event) => self.host(event),
        }
    }

    fn host(&self, event: InstallEvent) {
        match event {
            InstallEvent::Stage { host, stage } => self.line(format!("[{host}] {stage}")),
            InstallEvent::Skipped { host, step } => {
                self.line(format!("[{host}] {step}: already done"))
            }
            InstallEvent::Note {
                host: Some(host),
                text,
            } => self.line(format!("[{host}] {text}")),
            InstallEvent::Note { host: None, text } => self.line(text),
            InstallEvent::Sent { host, sent, total } => {
                let Ok(mut hosts) = self.hosts.lock() else {
                    return;
                };
                // A retry sends again, perhaps fewer frames: a new counter.
                let fresh = hosts
                    .get(&host)
                    .is_none_or(|p| p.is_finished() || p.total() != total);
                if fresh {
                    hosts.insert(host, self.board.bar(format!("[{host}] sending"), total));
                }
                if let Some(progress) = hosts.get(&host) {
                    progress.update(sent);
                    if sent >= total {
                        progress.finish();
                    }
                }
            }
        }
    }

    /// Clear what is left of the counters and print the per-host table (the JSON report with
    /// `--json`), then where the log is.
    pub fn finish(&self, report: &InstallReport) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.clear();
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
    let mut out = format!("\n{:<18} {:<14} STATUS", "HOST", "ROLES");
    for host in &report.hosts {
        out.push_str(&format!(
            "\n{:<18} {:<14} {}",
            host.ip,
            host.roles.join(","),
            status(host, report.done)
        ));
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

/// A host's STATUS column: `installed (N steps, N already done, SIZE sent)` (or `joined`,
/// `removed`, `rolled back`), `up to date`, or `FAILED: why`.
fn status(host: &HostReport, done: &str) -> String {
    match &host.outcome {
        HostOutcome::Installed => format!(
            "{done} ({} steps, {} already done, {} sent)",
            host.steps_run,
            host.steps_skipped,
            human_bytes(host.bytes_sent)
        ),
        HostOutcome::UpToDate => "up to date".to_string(),
        HostOutcome::Failed(reason) => format!("FAILED: {reason}"),
    }
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
        println!("{:<18} {:<14} {would}", plan.ip, plan.roles.join(","));
        for problem in &plan.problems {
            println!("{:<33} preflight would refuse: {problem}", "");
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
        let mut line = format!("{:<18} {:<14} {image:<24} {steps}", h.ip, h.roles.join(","));
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
    }
    match &status.changing {
        Some(holder) => println!("\nBeing changed now by {holder}."),
        None => println!("\nNo command is changing the cluster from this machine."),
    }
}
