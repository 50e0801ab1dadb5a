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
    /// The installer stub (default: $SEALER_STUB, else `sealer-stub` beside sealer, else this
    /// static sealer itself, which runs as the package when a payload follows it).
    #[arg(long)]
    stub: Option<PathBuf>,
    /// Sign the package with this secret key (NAME.key from `sealer key generate`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    #[command(flatten)]
    password: super::trust::PasswordArgs,
    /// A public key the image must be signed by (`sealer sign IMAGE`): a minisign .pub file or
    /// its key line (repeatable). Without it the site policy ($SEALER_TRUST_DIR or
    /// /etc/sealer/trust) applies, if there is one.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    /// Print the result as JSON on stdout: output, files (the executable, then the volumes),
    /// size, payload_id, image, image_digest, load_digest (null when load recompresses xz
    /// layers), layers, copied_layers, signed_by.
    #[arg(long)]
    json: bool,
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
    remove_partial_files_on_signal(args.output.clone());
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
        trust: sealer::trust::Trust::from_args(&args.trust)?,
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
    if args.json {
        let loaded = sealer::package::loaded_digest(&report.manifest);
        let doc = serde_json::json!({
            "output": args.output,
            "files": report.files,
            "size": total,
            "payload_id": report.payload_id,
            "image": opts.image.to_string(),
            "image_digest": report.manifest.image.manifest_digest,
            "load_digest": loaded.digest(),
            "layers": report.manifest.layers.len(),
            "copied_layers": report.copied_layers,
            "signed_by": key.as_ref().map(|k| k.key_id().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
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
    let packed_from = &report.manifest.image.manifest_digest;
    if let Some(note) = sealer::package::loaded_digest(&report.manifest).note(packed_from) {
        println!("Image {packed_from}; {note}");
    }
    if let Some(key) = &key {
        println!("Signed with key {}", key.key_id());
    }
    println!(
        "{} of {} copied without recompression",
        report.copied_layers,
        sealer::ui::format::count(report.manifest.layers.len(), "layer")
    );
    Ok(())
}

/// Ctrl-C, SIGTERM or SIGHUP during a pack: remove this pack's partial volumes and scratch
/// directory beside the output, say so, and exit 130 (143, 129), so nothing of it is left. The
/// signals are blocked in this thread before any worker thread starts (they inherit the mask),
/// and one thread waits for them.
fn remove_partial_files_on_signal(output: std::path::PathBuf) {
    // SAFETY: sigset_t is plain data filled by sigemptyset/sigaddset; pthread_sigmask and
    // sigwait only read it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        std::thread::spawn(move || {
            let mut signal: libc::c_int = 0;
            if libc::sigwait(&set, &mut signal) != 0 {
                return;
            }
            sealer::package::remove_own_pack_files(&output);
            eprintln!(
                "\ninterrupted: the pack stopped and its partial files beside {} were removed",
                output.display()
            );
            std::process::exit(128 + signal);
        });
    }
}
