//! `sealer build`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use sealer::builder::{build, declared_images, BuildEvent, BuildOptions, ImageEvent};
use sealer::reference::Reference;
use sealer::store::Store;
use sealer::ui::progress::ByteProgress;
use sealer::ui::{human_bytes, short_digest};

use super::registry::ConnectionArgs;

#[derive(Args)]
pub struct BuildArgs {
    /// Name of the image to build (NAME:TAG).
    #[arg(short, long, required_unless_present = "list_images")]
    tag: Option<String>,
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
    /// More container images to collect: a file with one reference a line (repeatable).
    #[arg(long = "image-list", value_name = "FILE")]
    image_lists: Vec<PathBuf>,
    /// Container images not to collect: a file with one reference a line (repeatable).
    #[arg(long = "ignored-image-list", value_name = "FILE")]
    ignored_image_lists: Vec<PathBuf>,
    /// Print the container images the build would collect and where each is declared
    /// (FILE:LINE), then stop: nothing is pulled or built.
    #[arg(long)]
    list_images: bool,
    /// How to reach the registry of a `FROM` image that is not in the store, and the registries
    /// of container images.
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The build context.
    #[arg(default_value = ".")]
    context: PathBuf,
}

pub fn run(args: BuildArgs) -> Result<()> {
    // `--list-images` builds nothing, so it needs no name.
    let tag = args.tag.as_deref().unwrap_or("list-images:latest");
    let mut opts = BuildOptions::new(&args.context, Reference::parse(tag)?);
    opts.image_lists = args.image_lists;
    opts.ignored_image_lists = args.ignored_image_lists;
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
    if args.list_images {
        for image in declared_images(&opts)? {
            let origins: Vec<String> = image.origins.iter().map(|o| o.to_string()).collect();
            println!("{}\t{}", image.reference, origins.join(" "));
        }
        return Ok(());
    }
    let store = Store::open_default()?;
    let terminal = std::io::stdout().is_terminal();
    let mut fetching: Option<ByteProgress> = None;
    let report = build(&store, &opts, &mut |event| match event {
        BuildEvent::Step { index, total, text } => println!("STEP {index}/{total}: {text}"),
        BuildEvent::Cached => println!(" ---> cached"),
        BuildEvent::Layer { digest, size } => {
            // As docker build shows layers: the hex digits only.
            let short = short_digest(digest);
            let hex = short.split_once(':').map_or(short.as_str(), |(_, hex)| hex);
            println!(" ---> layer {hex} ({})", human_bytes(size))
        }
        BuildEvent::ImagesLayer { images } => {
            println!("IMAGES LAYER: {images} container image(s)")
        }
        BuildEvent::ContainerImage { reference, event } => match event {
            ImageEvent::Resolving => println!("IMAGE {reference}"),
            ImageEvent::Fetching { done, total } => fetching
                .get_or_insert_with(|| ByteProgress::new("fetching", total))
                .update(done),
            ImageEvent::Pinned { digest, fetched } => {
                if let Some(bar) = fetching.take() {
                    bar.finish();
                }
                if fetched == 0 {
                    println!(" ---> {digest} (every blob already in the store)")
                } else {
                    println!(" ---> {digest} ({} fetched)", human_bytes(fetched))
                }
            }
        },
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
