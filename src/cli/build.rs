//! `sealer build`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use sealer::builder::{build, BuildEvent, BuildOptions};
use sealer::reference::Reference;
use sealer::store::Store;
use sealer::ui::{human_bytes, short_digest};

use super::registry::ConnectionArgs;

#[derive(Args)]
pub struct BuildArgs {
    /// Name of the image to build (NAME:TAG).
    #[arg(short, long)]
    tag: String,
    /// The Kubefile (default: CONTEXT/Kubefile).
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Set an ARG value (repeatable).
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Do not use the step cache.
    #[arg(long)]
    no_cache: bool,
    /// zstd level of new layers (1-22).
    #[arg(long, default_value_t = 3)]
    level: i64,
    /// How to reach the registry of a `FROM` image that is not in the store.
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The build context.
    #[arg(default_value = ".")]
    context: PathBuf,
}

pub fn run(args: BuildArgs) -> Result<()> {
    let store = Store::open_default()?;
    let mut opts = BuildOptions::new(&args.context, Reference::parse(&args.tag)?);
    opts.kubefile = args.file;
    opts.no_cache = args.no_cache;
    opts.registry = args.connection.options();
    opts.level = packer::Level::new(packer::Compression::Zstd, args.level)
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    for kv in &args.build_args {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--build-arg {kv:?} must be KEY=VALUE");
        };
        opts.build_args.push((k.to_string(), v.to_string()));
    }
    let terminal = std::io::stdout().is_terminal();
    let report = build(&store, &opts, &mut |event| match event {
        BuildEvent::Step { index, total, text } => println!("STEP {index}/{total}: {text}"),
        BuildEvent::Cached => println!(" ---> cached"),
        BuildEvent::Layer { digest, size } => {
            // As docker build shows layers: the hex digits only.
            let short = short_digest(digest);
            let hex = short.split_once(':').map_or(short.as_str(), |(_, hex)| hex);
            println!(" ---> layer {hex} ({})", human_bytes(size))
        }
        BuildEvent::Output(line) => {
            if terminal {
                println!("   | {line}")
            } else {
                println!("{line}")
            }
        }
    })?;
    println!(
        "Built {} ({} layers, {}/{} steps from cache)\n{}",
        report.reference, report.layers, report.cached_steps, report.steps, report.digest
    );
    Ok(())
}
