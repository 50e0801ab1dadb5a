//! `sealer pack`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use sealer::deploy::find_stub;
use sealer::package::{pack_signed, PackOptions};
use sealer::reference::Reference;
use sealer::store::Store;
use sealer::ui::human_bytes;
use sealer::ui::progress::ByteProgress;

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    Zstd,
    Xz,
}

#[derive(Args)]
pub struct PackArgs {
    /// Image to pack (NAME:TAG).
    image: String,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// zstd copies the store's frames as they are; xz recompresses each frame (smaller, slower).
    #[arg(long, value_enum, default_value = "zstd")]
    compression: CompressionArg,
    /// Compress every frame at this level (zstd 1-22, xz 0-9; default: zstd frames copied as
    /// built, xz at 6). Higher levels make a smaller file for slow links, at pack-time cost.
    #[arg(long)]
    level: Option<u32>,
    /// Split into volumes no larger than SIZE (e.g. 4G, 3900M; FAT32 holds 4G minus 1 byte per file).
    #[arg(long, value_name = "SIZE")]
    split_size: Option<String>,
    /// The installer stub (default: `sealer-stub` beside sealer, or $SEALER_STUB).
    #[arg(long)]
    stub: Option<PathBuf>,
    /// Sign the package with this secret key (NAME.key from `sealer key generate`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    #[command(flatten)]
    password: super::trust::PasswordArgs,
}

/// `4G`, `3900M`, `512k` or plain bytes.
fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| {
        anyhow::anyhow!("--split-size {text:?} is not a size like 4G, 3900M or 1048576")
    })?;
    let size = n
        .checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("--split-size {text:?} is too large"))?;
    if size == 0 {
        bail!("--split-size must be more than 0");
    }
    Ok(size)
}

pub fn run(args: PackArgs) -> Result<()> {
    let store = Store::open_default()?;
    // The key first: a wrong password must not cost a pack.
    let key = args
        .sign
        .as_deref()
        .map(|k| super::trust::open_signing_key(k, &args.password))
        .transpose()?;
    let compression = match args.compression {
        CompressionArg::Zstd => packer::Compression::Zstd,
        CompressionArg::Xz => packer::Compression::Xz,
    };
    let level = args
        .level
        .map(|level| packer::Level::new(compression, level.into()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    let stub = match args.stub {
        Some(s) => s,
        None => find_stub()?,
    };
    let opts = PackOptions {
        image: Reference::parse(&args.image)?,
        output: args.output.clone(),
        compression,
        level,
        split_size: args.split_size.as_deref().map(parse_size).transpose()?,
        stub,
    };
    let progress = ByteProgress::new("packing", 0);
    let update = |done: u64, total: u64| {
        if progress.total() != total {
            progress.set_total(total);
        }
        progress.update(done);
    };
    let report = pack_signed(&store, &opts, key.as_ref(), Some(&update))?;
    progress.finish();
    let total: u64 = report
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "Packed {} into {} ({}, payload {})",
        opts.image,
        args.output.display(),
        human_bytes(total),
        report.payload_id
    );
    if report.files.len() > 1 {
        for f in &report.files[1..] {
            println!("  volume {}", f.display());
        }
        println!(
            "Keep the volumes beside {}; they are found by content, whatever their names.",
            args.output.display()
        );
    }
    if let Some(key) = &key {
        println!("Signed with key {}", key.key_id());
    }
    println!(
        "{} of {} layers copied without recompression",
        report.copied_layers,
        report.manifest.layers.len()
    );
    Ok(())
}
