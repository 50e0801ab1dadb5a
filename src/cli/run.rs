//! `sealer run`: install an image from the local store onto hosts.

use anyhow::{bail, Result};
use clap::Args;

use sealer::deploy::target::{resolve, TargetArgs};
use sealer::deploy::{find_stub, InstallOptions, Payload};
use sealer::store::Store;
use sealer::ui;

#[derive(Args)]
pub struct RunArgs {
    /// Image to install (NAME:TAG); a Clusterfile's spec.image when omitted.
    image: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let target = resolve(&args.target.spec()).map_err(anyhow::Error::msg)?;
    let (parallel, attempts) = (args.target.parallel, args.target.attempts);
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
    opts.parallel = parallel;
    opts.attempts = attempts.max(1);
    let report = ui::install_with_progress(&target.cluster, &payload, &opts)?;
    ui::finish_install(&report).map_err(anyhow::Error::msg)
}
