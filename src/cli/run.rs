//! `sealer run`: install an image from the local store onto hosts.

use anyhow::Result;
use clap::Args;

use sealer::deploy::target::TargetArgs;
use sealer::install::{self, Request, Source};
use sealer::store::Store;
use sealer::ui::install::{print_plan, InstallView};

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
