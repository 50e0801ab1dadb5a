//! `sealer run`: install an image from the local store onto hosts.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use sealer::clusterfile::ClusterFlags;
use sealer::deploy::target::{resolve, TargetSpec};
use sealer::deploy::{
    find_stub, install, report_rows, InstallEvent, InstallOptions, InstallReport, Payload,
};
use sealer::store::Store;

use super::human_bytes;

/// Host selection flags shared by `sealer run` and the installer stub.
#[derive(Args, Clone, Default)]
pub struct TargetArgs {
    #[command(flatten)]
    pub flags: ClusterFlags,
    /// Clusterfile describing hosts, Configs and Plugins.
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    pub clusterfile: Option<PathBuf>,
    /// Install on this machine, without SSH.
    #[arg(long)]
    pub local: bool,
    /// Where rootfs and journal live on every host (default /var/lib/sealer/data).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Attempts per host before it is reported failed.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
}

impl TargetArgs {
    pub fn spec(&self) -> TargetSpec {
        TargetSpec {
            flags: self.flags.clone(),
            clusterfile: self.clusterfile.clone(),
            local: self.local,
            data_root: self.data_root.clone(),
            known_hosts: self.known_hosts.clone(),
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Image to install (NAME:TAG); a Clusterfile's spec.image when omitted.
    image: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let target = resolve(&args.target.spec()).map_err(anyhow::Error::msg)?;
    let image_name = match (&args.image, &target.cluster.image) {
        (Some(i), _) | (None, Some(i)) => i.clone(),
        (None, None) => bail!(
            "name the image to install (sealer run IMAGE ...) or set spec.image in the Clusterfile"
        ),
    };
    let store = Store::open_default()?;
    let image = store.image_by_name(&image_name)?;
    let stub = find_stub().map_err(anyhow::Error::msg)?;
    let payload = Payload::from_store(&store, &image, &stub).map_err(anyhow::Error::msg)?;
    let mut opts = InstallOptions::new(target.connect.clone());
    opts.parallel = args.target.parallel;
    opts.attempts = args.target.attempts.max(1);
    let report = install_with_progress(&target.cluster, &payload, &opts)?;
    finish(&report)
}

/// Run the engine, showing per-host progress, and print the per-host table.
pub fn install_with_progress(
    cluster: &sealer::clusterfile::Cluster,
    payload: &Payload,
    opts: &InstallOptions,
) -> Result<InstallReport> {
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

pub fn finish(report: &InstallReport) -> Result<()> {
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
        bail!("the install did not finish on every host; fix the cause above and run the same command again: finished steps are not repeated")
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
