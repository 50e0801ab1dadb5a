//! `images`, `inspect`, `tag`, `rmi`, `save`, `load`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use sealer::reference::Reference;
use sealer::store::{archive, Store};
use sealer::ui::{human_bytes, short_digest};

#[derive(Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table (with `-q`, sealer's global flag: only the image IDs,
    /// short manifest digests, each once, as sealer's `images -q`).
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
    /// Show the full manifest digest (sealer's `--digests`).
    #[arg(long)]
    digests: bool,
}

pub fn images(args: ImagesArgs) -> Result<()> {
    let store = Store::open_default()?;
    let images = store.images()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    let shown = |digest: &str| {
        if args.digests {
            digest.to_string()
        } else {
            short_digest(digest).to_string()
        }
    };
    if sealer::ui::verbosity() == sealer::ui::Verbosity::Quiet {
        let mut seen = std::collections::BTreeSet::new();
        for image in &images {
            if seen.insert(image.digest.clone()) {
                println!("{}", shown(&image.digest));
            }
        }
        return Ok(());
    }
    let width = if args.digests { 71 } else { 19 };
    // The name column fits the longest name, so long registry paths do not push rows apart.
    let names = images
        .iter()
        .map(|i| i.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<names$} {:<width$} {:>6} {:>10}",
        "IMAGE", "DIGEST", "LAYERS", "SIZE"
    );
    for image in images {
        println!(
            "{:<names$} {:<width$} {:>6} {:>10}",
            image.name,
            shown(&image.digest),
            image.layers,
            human_bytes(image.size)
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    /// Image name (NAME[:TAG]).
    image: String,
    /// Print the image's bill of materials (CycloneDX 1.5 JSON) instead.
    #[arg(long, conflicts_with_all = ["json", "text", "hooks", "clusterfile"])]
    sbom: bool,
    /// JSON (the default): layers, config and annotations, and what `./app.run inspect --json`
    /// shows (signer, env masked, container images, commands, hooks, Configs).
    #[arg(long, conflicts_with = "text")]
    json: bool,
    /// Text, as `./app.run inspect` prints it.
    #[arg(long)]
    text: bool,
    /// Also show the script text of every hook the install runs.
    #[arg(long)]
    hooks: bool,
    /// Also show what this Clusterfile adds: its hooks, its spec.cmd, the files its Configs
    /// write.
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    clusterfile: Option<PathBuf>,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let store = Store::open_default()?;
    let image = store.image_by_name(&args.image)?;
    if args.sbom {
        let bom = image
            .config
            .sbom
            .as_ref()
            .ok_or_else(|| sealer::sbom::SbomError::Missing {
                image: image.reference.store_key(),
            })?
            .read()
            .map_err(|e| sealer::sbom::SbomError::Unreadable {
                image: image.reference.store_key(),
                reason: e.to_string(),
            })?;
        println!("{}", serde_json::to_string_pretty(&bom)?);
        return Ok(());
    }
    let cluster = args
        .clusterfile
        .as_deref()
        .map(sealer::clusterfile::load_cluster)
        .transpose()?;
    let description =
        sealer::inspect::describe_store_image(&store, &image, cluster.as_ref(), args.hooks)?;
    if args.text {
        println!("image          {}", description.image);
        println!("image digest   {}", description.image_digest);
        println!("config digest  {}", description.config_digest);
        for line in description.text_lines(&image.config.config.cmd) {
            println!("{line}");
        }
        let view = sealer::store::inspect(&image);
        for (i, layer) in view.layers.iter().enumerate() {
            println!(
                "layer {:<8} {} {} {}",
                i + 1,
                layer.digest,
                human_bytes(layer.size),
                layer.media_type
            );
        }
        return Ok(());
    }
    let mut doc = serde_json::to_value(sealer::store::inspect(&image))?;
    if let (Some(map), serde_json::Value::Object(more)) =
        (doc.as_object_mut(), serde_json::to_value(&description)?)
    {
        map.extend(more);
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

#[derive(Args)]
pub struct TagArgs {
    /// Existing image.
    source: String,
    /// New name.
    target: String,
}

pub fn tag(args: TagArgs) -> Result<()> {
    let store = Store::open_default()?;
    store.tag(
        &Reference::parse(&args.source)?,
        &Reference::parse(&args.target)?,
    )?;
    Ok(())
}

#[derive(Args)]
pub struct RmiArgs {
    /// Images to remove.
    #[arg(required_unless_present = "prune")]
    images: Vec<String>,
    /// A named image that is not in the store is skipped, not an error (sealer's `-f`).
    #[arg(short, long)]
    force: bool,
    /// Also delete every blob no image references (a build or pull that was interrupted leaves
    /// some); alone, only that (sealer's `--prune`).
    #[arg(long)]
    prune: bool,
}

pub fn rmi(args: RmiArgs) -> Result<()> {
    let store = Store::open_default()?;
    let mut refs = args
        .images
        .iter()
        .map(|i| Reference::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
    if args.force {
        refs.retain(|r| match store.image(r) {
            Ok(_) => true,
            Err(_) => {
                println!("Not in the store: {r}");
                false
            }
        });
    }
    if refs.is_empty() {
        if args.prune || args.force {
            match store.gc()? {
                Some(freed) => println!("Freed {}", human_bytes(freed)),
                None => println!("Blobs are kept for now: another sealer process is writing to the store; run rmi --prune again"),
            }
        }
        return Ok(());
    }
    match store.remove(&refs)? {
        Some(freed) => {
            for r in &refs {
                println!("Untagged: {r}");
            }
            println!("Freed {}", human_bytes(freed));
        }
        None => {
            for r in &refs {
                println!("Untagged: {r}");
            }
            println!("Blobs are kept for now: another sealer process is writing to the store; the next rmi frees them");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct SaveArgs {
    /// Output OCI archive.
    #[arg(short, long)]
    output: PathBuf,
    /// Images to save.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn save(args: SaveArgs) -> Result<()> {
    let store = Store::open_default()?;
    let images = args
        .images
        .iter()
        .map(|i| store.image_by_name(i))
        .collect::<Result<Vec<_>, _>>()?;
    archive::save(&store, &images, &args.output)
        .with_context(|| format!("saving to {}", args.output.display()))?;
    println!(
        "Saved {} image(s) to {}",
        images.len(),
        args.output.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct LoadArgs {
    /// OCI archive to import.
    #[arg(short, long)]
    input: PathBuf,
}

pub fn load(args: LoadArgs) -> Result<()> {
    refuse_run_package(&args.input)?;
    let store = Store::open_default()?;
    let before = store.images().unwrap_or_default();
    let loaded = archive::load(&store, &args.input)
        .with_context(|| format!("loading {}", args.input.display()))?;
    let after = store.images().unwrap_or_default();
    for (name, old, new) in sealer::package::moved_tags(&before, &after) {
        eprintln!("{}", sealer::package::moved_tag_warning(&name, &old, &new));
    }
    for r in loaded {
        println!("Loaded image: {r}");
    }
    Ok(())
}

/// `sealer load -i app.run`: a `.run` package is an executable, not an OCI archive; say how
/// its image gets into the store instead of failing on its first tar header.
fn refuse_run_package(input: &std::path::Path) -> Result<()> {
    let mut head = [0u8; 4];
    let is_elf = std::fs::File::open(input)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"\x7fELF";
    if is_elf {
        let shown = input.display();
        let run = if input.components().count() > 1 {
            shown.to_string()
        } else {
            format!("./{shown}")
        };
        bail!(
            "{shown} is a .run package (an installer), not an OCI archive: import its image with \
             `{run} load` (it verifies itself, then fills $SEALER_ROOT), or install from it with \
             `{run} install`; `sealer load -i` takes archives written by `sealer save`"
        );
    }
    Ok(())
}
