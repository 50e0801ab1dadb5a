//! `images`, `inspect`, `tag`, `rmi`, `save`, `load`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use sealer::reference::Reference;
use sealer::store::{archive, Store};
use sealer::ui::{human_bytes, short_digest};

#[derive(Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn images(args: ImagesArgs) -> Result<()> {
    let store = Store::open_default()?;
    let images = store.images()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<19} {:>6} {:>10}",
        "IMAGE", "DIGEST", "LAYERS", "SIZE"
    );
    for image in images {
        println!(
            "{:<40} {:<19} {:>6} {:>10}",
            image.name,
            short_digest(&image.digest),
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
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let store = Store::open_default()?;
    let image = store.image_by_name(&args.image)?;
    let view = sealer::store::inspect(&image);
    println!("{}", serde_json::to_string_pretty(&view)?);
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
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn rmi(args: RmiArgs) -> Result<()> {
    let store = Store::open_default()?;
    let refs = args
        .images
        .iter()
        .map(|i| Reference::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
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
    let store = Store::open_default()?;
    let loaded = archive::load(&store, &args.input)
        .with_context(|| format!("loading {}", args.input.display()))?;
    for r in loaded {
        println!("Loaded image: {r}");
    }
    Ok(())
}
