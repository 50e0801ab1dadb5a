//! `sealer build`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use sealer::builder::{build, declared_images, BuildEvent, BuildOptions, ImageEvent};
use sealer::reference::Reference;
use sealer::store::Store;
use sealer::ui::progress::{Activity, Board, ByteProgress};
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
    #[arg(long, default_value_t = i64::from(packer::STORE_ZSTD_LEVEL))]
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
    /// Do not write the image's bill of materials (CycloneDX SBOM in the config); also
    /// SEALER_BUILD_SBOM=0.
    #[arg(long)]
    no_sbom: bool,
    /// The image's kind: kube-installer (a cluster image, the default) or app-installer (an
    /// application that `sealer run` installs into a running cluster beside its base image).
    #[arg(long = "type", value_name = "TYPE")]
    image_type: Option<sealer::store::ImageType>,
    /// Add a label to the image config (as a LABEL at the end of the Kubefile; repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Add an annotation to the image manifest (repeatable).
    #[arg(long = "annotation", value_name = "K=V")]
    annotations: Vec<String>,
    /// Print the result as JSON on stdout (image, digest, layers, steps, cached_steps); the
    /// steps and the output of RUN go to stderr.
    #[arg(long)]
    json: bool,
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
    opts.image_type = args.image_type;
    if args.no_sbom {
        opts.sbom = false;
    }
    opts.registry = args.connection.options();
    opts.level = packer::Level::new(packer::Compression::Zstd, args.level)
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    for (flag, items, into) in [
        ("--label", &args.labels, &mut opts.labels),
        ("--annotation", &args.annotations, &mut opts.annotations),
    ] {
        for kv in items {
            match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => into.push((k.to_string(), v.to_string())),
                _ => bail!("{flag} {kv:?} must be KEY=VALUE"),
            }
        }
    }
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
    // The step running now: a spinner with its elapsed time on a terminal, a line every few
    // seconds otherwise; every line is printed with the spinner hidden.
    let board = Board::new();
    let mut step: Option<Activity> = None;
    // `-q`: only the result (the Built line and the digest).
    let quiet = sealer::ui::verbosity() == sealer::ui::Verbosity::Quiet;
    let json = args.json;
    let println = |line: String| {
        if quiet {
        } else if json {
            board.suspend(|| eprintln!("{line}"))
        } else {
            board.suspend(|| println!("{line}"))
        }
    };
    let report = build(&store, &opts, &mut |event| match event {
        BuildEvent::Step { index, total, text } => {
            if let Some(done) = step.take() {
                done.finish();
            }
            println(format!("STEP {index}/{total}: {text}"));
            step = Some(board.activity(format!("STEP {index}/{total}")));
        }
        BuildEvent::Cached => println(" ---> cached".to_string()),
        BuildEvent::Layer { digest, size } => {
            // As docker build shows layers: the hex digits only; then how long the step took.
            let short = short_digest(digest);
            let hex = short.split_once(':').map_or(short.as_str(), |(_, hex)| hex);
            let took = step.as_ref().map(|s| s.elapsed()).unwrap_or_default();
            println(format!(
                " ---> layer {hex} ({}) in {:.1} s",
                human_bytes(size),
                took.as_secs_f64()
            ))
        }
        BuildEvent::ImagesLayer { images } => {
            if let Some(done) = step.take() {
                done.finish();
            }
            println(format!("IMAGES LAYER: {images} container image(s)"));
            step = Some(board.activity("IMAGES LAYER"));
        }
        BuildEvent::ImagesFetching { done, total } => fetching
            .get_or_insert_with(|| board.bar("fetching", total))
            .update(done),
        BuildEvent::ImagesFetched { bytes } => {
            if let Some(bar) = fetching.take() {
                bar.finish();
            }
            println(format!(
                " ---> {} fetched into the images layer",
                human_bytes(bytes)
            ))
        }
        BuildEvent::Sbom {
            packages,
            files,
            images,
        } => println(format!(
            "SBOM: {packages} Debian package(s), {files} file(s), {images} container image(s)"
        )),
        BuildEvent::ContainerImage { reference, event } => match event {
            ImageEvent::Resolving => println(format!("IMAGE {reference}")),
            ImageEvent::Pinned { digest, pending } => {
                if pending == 0 {
                    println(format!(" ---> {digest} (every blob already in the store)"))
                } else {
                    println(format!(
                        " ---> {digest} ({} of layers to fetch, unless the images layer is cached)",
                        human_bytes(pending)
                    ))
                }
            }
        },
        BuildEvent::Output(line) => {
            if terminal {
                println(format!("   | {line}"))
            } else {
                println(line.to_string())
            }
        }
    });
    if let Some(done) = step.take() {
        done.finish();
    }
    let report = report?;
    if json {
        let doc = serde_json::json!({
            "image": report.reference.to_string(),
            "digest": report.digest,
            "layers": report.layers,
            "steps": report.steps,
            "cached_steps": report.cached_steps,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "Built {} ({}, {}/{} from cache)\n{}",
        report.reference,
        sealer::ui::format::count(report.layers, "layer"),
        report.cached_steps,
        sealer::ui::format::count(report.steps, "step"),
        report.digest
    );
    Ok(())
}
