//! Terminal output shared by the `sealer` CLI and the installer stub: human sizes, per-host
//! progress bars (indicatif on a terminal, plain lines otherwise) and the final install table.
//! It only prints; it never decides anything.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::clusterfile::Cluster;
use crate::deploy::{
    install, report_rows, InstallError, InstallEvent, InstallOptions, InstallReport, Payload,
};

/// Human-readable byte count (`12.3 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Run the engine, showing per-host progress, and print the per-host table.
pub fn install_with_progress(
    cluster: &Cluster,
    payload: &Payload,
    opts: &InstallOptions,
) -> Result<InstallReport, InstallError> {
    println!(
        "Installing {} ({} in {} frames, {} unpacked) on {} host(s) of cluster {}",
        payload.image,
        human_bytes(payload.compressed_len()),
        payload.frame_count(),
        human_bytes(payload.uncompressed_len()),
        cluster.hosts.len(),
        cluster.name
    );
    let progress = HostProgress::new(std::io::stderr().is_terminal());
    let report = install(cluster, payload, opts, &|event| progress.event(event))?;
    progress.clear();
    Ok(report)
}

/// Print the per-host table; an error when any host or cluster stage did not finish.
pub fn finish_install(report: &InstallReport) -> Result<(), String> {
    println!("\n{:<18} {:<14} STATUS", "HOST", "ROLES");
    for (ip, roles, status) in report_rows(report) {
        println!("{ip:<18} {roles:<14} {status}");
    }
    if let Some(why) = &report.cluster_stages_skipped {
        println!("\n{why}");
    }
    if report.up_to_date() {
        println!(
            "\nEverything is up to date; nothing was changed ({:.1}s).",
            report.elapsed.as_secs_f64()
        );
        return Ok(());
    }
    if report.success() {
        println!("\nInstalled in {:.1}s.", report.elapsed.as_secs_f64());
        Ok(())
    } else {
        Err("the install did not finish on every host; fix the cause above and run the same command again: finished steps are not repeated".into())
    }
}

/// Per-host byte bars on a terminal, plain lines otherwise.
struct HostProgress {
    terminal: bool,
    multi: MultiProgress,
    bars: Mutex<HashMap<IpAddr, ProgressBar>>,
    last_line: Mutex<HashMap<IpAddr, u64>>,
}

impl HostProgress {
    fn new(terminal: bool) -> Self {
        HostProgress {
            terminal,
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            last_line: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, text: String) {
        if self.terminal {
            let _ = self.multi.println(text);
        } else {
            println!("{text}");
        }
    }

    fn event(&self, event: InstallEvent) {
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
                if self.terminal {
                    let Ok(mut bars) = self.bars.lock() else {
                        return;
                    };
                    let bar = bars.entry(host).or_insert_with(|| {
                        let bar = self.multi.add(ProgressBar::new(total));
                        bar.set_style(
                            ProgressStyle::with_template("{prefix:>15} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        bar.set_prefix(host.to_string());
                        bar
                    });
                    bar.set_position(sent.min(total));
                } else {
                    // Plain output: a line per 10 % step.
                    let Ok(mut last) = self.last_line.lock() else {
                        return;
                    };
                    let step = (sent.min(total) * 10).checked_div(total).unwrap_or(10);
                    if last.get(&host) != Some(&step) {
                        last.insert(host, step);
                        println!(
                            "[{host}] sent {} of {}",
                            human_bytes(sent.min(total)),
                            human_bytes(total)
                        );
                    }
                }
            }
        }
    }

    fn clear(&self) {
        if let Ok(bars) = self.bars.lock() {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
        }
    }
}
