//! `sealer run`: install an image from the local store onto hosts.

use anyhow::Result;
use clap::Args;

use std::path::PathBuf;

use sealer::deploy::target::{TargetArgs, TargetSpec};
use sealer::install::{self, Request, Source};
use sealer::store::Store;
use sealer::ui::install::{print_plan, print_status, InstallView};

#[derive(Args)]
pub struct RunArgs {
    /// Image to install (NAME:TAG); a Clusterfile's spec.image when omitted.
    image: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let command = match &args.image {
        Some(image) => format!("sealer run {image}"),
        None => "sealer run".to_string(),
    };
    let request = Request {
        target: args.target.spec(),
        source: Source::Store {
            root: Store::default_root(),
            image: args.image,
        },
        parallel: args.target.parallel,
        attempts: args.target.attempts,
        state_root: Store::default_root(),
        command,
    };
    if args.target.dry_run {
        let (summary, plans) = install::dry_run(&request, &|_| {})?;
        print_plan(&summary, &plans);
        return Ok(());
    }
    let view = InstallView::new();
    let report = install::run(&request, &|event| view.show(event))?;
    view.finish(&report);
    Ok(install::finished(&report)?)
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    flags: sealer::clusterfile::ClusterFlags,
    /// Clusterfile describing the hosts.
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    clusterfile: Option<PathBuf>,
    /// This machine, without SSH.
    #[arg(long)]
    local: bool,
    /// Where rootfs and journal live on every host (default /var/lib/sealer/data).
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// `sealer status`: what every host holds now; changes nothing.
pub fn status(args: StatusArgs) -> Result<()> {
    let spec = TargetSpec {
        flags: args.flags,
        clusterfile: args.clusterfile,
        local: args.local,
        data_root: args.data_root,
        known_hosts: args.known_hosts,
    };
    let status = install::status(&spec, &Store::default_root())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}
