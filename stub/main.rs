//! `sealer-stub`: the program at the head of every `.run` file.
//!
//! It reads its own payload through `/proc/self/exe` (rename-proof) and offers `inspect`,
//! `verify`, `extract`, `install` and `load`. It is a thin layer over `packer` and the deploy
//! engine (the same one `sealer run` uses): it parses arguments, shows progress and turns errors
//! into one sentence on stderr with a non-zero exit. On remote hosts the same binary is the
//! install agent (`agent …`). It must stay a static executable that runs on a bare host, so it
//! depends on nothing outside this binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use packer::{ReadError, RunFile, SignatureRecord, UnpackOptions, Volumes};
use sealer::deploy::Payload;
use sealer::install::{self, Request, Source};
use sealer::trust::{self, Claim, Trust};
use sealer::ui::error::one_line;
use sealer::ui::human_bytes;
use sealer::ui::install::InstallView;
use sealer::ui::log::RunLog;
use sealer::ui::progress::ByteProgress;

#[derive(Parser)]
#[command(
    name = "app.run",
    about = "A sealer installer: one file holding a cluster image",
    version = concat!(env!("CARGO_PKG_VERSION"), " (sealer installer)")
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show the image, its layers, frames, commands and labels.
    Inspect {
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
        /// Write the manifest exactly as stored (the bytes a signature signs) to stdout, for
        /// `minisign -V -m FILE`.
        #[arg(long, conflicts_with = "json")]
        manifest: bool,
        /// Write the package's signature (a minisign .minisig text) to stdout, for
        /// `minisign -V -x FILE`.
        #[arg(long, conflicts_with_all = ["json", "manifest"])]
        signature: bool,
        /// Also print the script text of every hook the install runs.
        #[arg(long, conflicts_with_all = ["manifest", "signature"])]
        hooks: bool,
    },
    /// Check the signature (with --trust or a site policy), then every byte of the payload.
    Verify {
        /// A public key the package must be signed by: a minisign .pub file or its key line
        /// (repeatable). Without it the site policy ($SEALER_TRUST_DIR or /etc/sealer/trust)
        /// applies, if there is one.
        #[arg(long, value_name = "PUBKEY")]
        trust: Vec<String>,
    },
    /// Unpack the image's merged root filesystem into DIR (which must not exist or be empty).
    Extract { dir: PathBuf },
    /// Install the image onto hosts over SSH (-m/-n, -f Clusterfile) or this machine (--local).
    Install(Box<sealer::deploy::target::TargetArgs>),
    /// Import the image into the local sealer store ($SEALER_ROOT).
    Load,
    /// Show what every host of a cluster holds now and who is changing it.
    Status(Box<sealer::deploy::target::StatusArgs>),
    /// Add masters or nodes to a running cluster, from this package.
    Join(Box<sealer::deploy::target::JoinArgs>),
    /// Remove hosts from a cluster, or the whole cluster (--all).
    Delete(Box<sealer::deploy::target::DeleteArgs>),
    /// Bring every host back to the image installed before the current one.
    Rollback(Box<sealer::deploy::target::RollbackArgs>),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("agent") {
        // The status carries meaning (a hook's own status, a full disk, a timeout): pass it on.
        let status = sealer::agent::main(&args[1..]);
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    // Commands that only print die quietly when their reader goes away (`./app.run inspect |
    // head`), as Unix tools do; install (like the agent above) feeds other processes and ignores
    // SIGPIPE so that a closed pipe is an error it reports.
    set_sigpipe(libc::SIG_DFL);
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Some(Command::Install(_) | Command::Join(_) | Command::Delete(_) | Command::Rollback(_))
    ) {
        set_sigpipe(libc::SIG_IGN);
    }
    let result = match cli.command {
        None => summary(),
        Some(Command::Inspect {
            json,
            manifest,
            signature,
            hooks,
        }) => inspect(json, manifest, signature, hooks),
        Some(Command::Verify { trust }) => verify(&trust),
        Some(Command::Extract { dir }) => extract(&dir),
        Some(Command::Install(target)) => install(&target),
        Some(Command::Load) => load(),
        Some(Command::Status(args)) => status(&args),
        Some(Command::Join(args)) => install::join_membership(&args)
            .map_err(Into::into)
            .and_then(|membership| change(&args.cluster, "join", membership)),
        Some(Command::Delete(args)) => install::delete_membership(&args)
            .map_err(Into::into)
            .and_then(|membership| change(&args.cluster, "delete", membership)),
        Some(Command::Rollback(args)) => install::rollback_membership(&args.cluster)
            .map_err(Into::into)
            .and_then(|(membership, _)| change(&args.cluster, "rollback", membership)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `SIG_DFL`: a write to a closed pipe ends the process (status 141) instead of failing, which
/// `println!` would turn into a panic. `SIG_IGN`: it fails with EPIPE.
fn set_sigpipe(disposition: libc::sighandler_t) {
    // SAFETY: SIG_DFL and SIG_IGN are valid dispositions; no handler code is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, disposition);
    }
}

fn open() -> Result<RunFile> {
    // A path in SEALER_RUN_FILE lets tests and `sealer` drive a stub against another file.
    match std::env::var_os("SEALER_RUN_FILE") {
        Some(path) => Ok(RunFile::open(&PathBuf::from(path))?),
        None => Ok(RunFile::open_self()?),
    }
}

fn program_name(run: &RunFile) -> String {
    let name = run
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app.run".into());
    format!("./{name}")
}

fn summary() -> Result<()> {
    let run = open()?;
    let m = run.manifest();
    let me = program_name(&run);
    let compressed: u64 = m.layers.iter().map(|l| l.compressed_len).sum();
    println!("{me}: sealer installer for image {}", m.image.name);
    println!("  image digest  {}", m.image.manifest_digest);
    println!("  payload id    {}", run.payload_id());
    println!(
        "  layers        {} ({} compressed, {} unpacked, {} frames)",
        m.layers.len(),
        human_bytes(compressed),
        human_bytes(m.uncompressed_len()),
        m.frame_count()
    );
    if m.volumes.len() > 1 {
        println!(
            "  volumes       {} (this file and {})",
            m.volumes.len(),
            m.volumes[1..]
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("  signer        {}", signer_line(&run));
    println!();
    println!("usage:");
    println!("  {me} inspect [--json] [--hooks]   show the image, what runs as root (commands, hooks), layers and labels");
    println!("  {me} inspect --manifest | --signature   the signed bytes and their signature");
    println!("  {me} verify [--trust KEY]   check the signature and every byte of the payload");
    println!("  {me} extract DIR        unpack the image's root filesystem into DIR");
    println!("  {me} install -m IPS [-n IPS] [-u USER] (-p PASS | --pk KEY)   install onto hosts over SSH");
    println!("  {me} install -f Clusterfile   hosts, Configs and Plugins from a Clusterfile");
    println!("  {me} install --local [--data-root DIR]   install onto this machine");
    println!("  {me} load               import the image into the local sealer store");
    println!("Running {me} without arguments changes nothing.");
    Ok(())
}

/// Who the package says signed it; checked only by `verify --trust` or a site policy.
fn signer_line(run: &RunFile) -> String {
    match trust::claim(run) {
        Claim::Unsigned => "unsigned".into(),
        Claim::SignedBy { key_id, .. } => format!("{key_id} (check it: verify --trust KEY)"),
        Claim::Damaged => "damaged signature record".into(),
    }
}

fn inspect(json: bool, manifest: bool, signature: bool, hooks: bool) -> Result<()> {
    let run = open()?;
    if manifest || signature {
        let bytes = if manifest {
            run.manifest_bytes()
        } else {
            match run.signature() {
                SignatureRecord::Signed { text, .. } => text.as_bytes(),
                SignatureRecord::Unsigned => anyhow::bail!("{} is unsigned", run.path().display()),
                SignatureRecord::Damaged => {
                    anyhow::bail!(
                        "the signature record of {} is damaged",
                        run.path().display()
                    )
                }
            }
        };
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()?;
        return Ok(());
    }
    let m = run.manifest();
    let mut config: serde_json::Value =
        serde_json::from_str(&m.image.config_json).unwrap_or(serde_json::Value::Null);
    sealer::inspect::mask_config_env(&mut config);
    // A package whose image config or plugins cannot be read still shows everything else.
    let runs = payload(&run)
        .and_then(|volumes| Ok(Payload::from_package(&run, volumes)?))
        .and_then(|p| Ok(sealer::inspect::what_runs(&p)?));
    if json {
        let mut manifest_doc = serde_json::to_value(m)?;
        // The stored config carries the env unmasked; show the masked one instead.
        manifest_doc["image"]["config_json"] = serde_json::Value::String(config.to_string());
        let mut runs_doc = match &runs {
            Ok(runs) => serde_json::to_value(runs)?,
            Err(e) => serde_json::json!({
                "commands": null,
                "hooks": null,
                "error": format!("cannot tell what the install runs: {}", one_line(e.as_ref())),
            }),
        };
        if !hooks {
            if let Some(list) = runs_doc["hooks"].as_array_mut() {
                for hook in list {
                    if let Some(h) = hook.as_object_mut() {
                        h.remove("script");
                    }
                }
            }
        }
        let doc = serde_json::json!({
            "file": run.path(),
            "payload_id": run.payload_id(),
            "header_offset": run.header_offset(),
            "signer": match trust::claim(&run) {
                Claim::Unsigned => serde_json::Value::Null,
                Claim::SignedBy { key_id, trusted_comment } => serde_json::json!({
                    "key_id": key_id.to_string(),
                    "trusted_comment": trusted_comment,
                    "checked": false,
                }),
                Claim::Damaged => serde_json::json!("damaged"),
            },
            "config": config,
            "container_images": sealer::container_images::listed_in_config_json(&m.image.config_json),
            "commands": runs_doc["commands"],
            "hooks": runs_doc["hooks"],
            "runs_error": runs_doc["error"],
            "manifest": manifest_doc,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("image          {}", m.image.name);
    println!("image digest   {}", m.image.manifest_digest);
    println!("config digest  {}", m.image.config_digest);
    println!("payload id     {}", run.payload_id());
    println!("format         {} v{}", m.format, m.version);
    println!("signer         {}", signer_line(&run));
    let section = &config["config"];
    for (key, label) in [("Env", "env"), ("Cmd", "cmd"), ("Entrypoint", "entrypoint")] {
        if let Some(items) = section[key].as_array() {
            let items: Vec<String> = items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect();
            println!("{label:<14} {}", items.join(" "));
        }
    }
    if let Some(labels) = section["Labels"].as_object() {
        for (k, v) in labels {
            println!("label          {k}={}", v.as_str().unwrap_or_default());
        }
    }
    for image in sealer::container_images::listed_in_config_json(&m.image.config_json) {
        println!(
            "container image {} {} {}/{} {}",
            image.image,
            image.digest,
            image.platform.os,
            image.platform.architecture,
            human_bytes(image.size)
        );
    }
    let runs = match runs {
        Ok(runs) => runs,
        Err(e) => {
            println!("runs as root   unknown: {}", one_line(e.as_ref()));
            sealer::inspect::WhatRuns {
                commands: Vec::new(),
                hooks: Vec::new(),
                env: Vec::new(),
            }
        }
    };
    for command in &runs.commands {
        println!("runs as root   {command}");
    }
    for hook in &runs.hooks {
        println!(
            "hook           {} {} phase {} scope {}",
            hook.name,
            hook.kind,
            hook.phases.join("|"),
            hook.scope
        );
        if hooks {
            for line in hook.script.lines() {
                println!("    | {line}");
            }
        }
    }
    for (i, layer) in m.layers.iter().enumerate() {
        println!(
            "layer {:<8} {} {} {} → {} in {} frames ({})",
            i + 1,
            layer.digest,
            layer.compression,
            human_bytes(layer.compressed_len),
            human_bytes(layer.uncompressed_len),
            layer.frames.len(),
            layer.media_type
        );
    }
    for v in &m.volumes {
        println!("volume {:<7} {} ({} bytes)", v.index, v.name, v.len);
    }
    Ok(())
}

fn payload(run: &RunFile) -> Result<Volumes> {
    Ok(run.payload()?)
}

fn verify(trust_args: &[String]) -> Result<()> {
    let run = open()?;
    let trust = Trust::from_args(trust_args)?;
    let verified = trust::check_for_verify(&run, trust.as_ref())?;
    let payload = run.payload()?;
    let progress = ByteProgress::new("verifying", payload.compressed_len());
    payload.verify(Some(&|done| progress.update(done)))?;
    progress.finish();
    match verified {
        Some(v) => println!(
            "{}: signed by key {} (trusted: {}); {}",
            run.path().display(),
            v.key_id,
            v.key_origin,
            v.trusted_comment
        ),
        None => println!(
            "{}: signature not checked (no --trust key and no site policy)",
            run.path().display()
        ),
    }
    println!(
        "{}: all {} frames of {} layers are intact (payload {})",
        run.path().display(),
        run.manifest().frame_count(),
        run.manifest().layers.len(),
        run.payload_id()
    );
    Ok(())
}

/// The site policy, before anything is written: refuse a package it does not trust.
fn open_trusted() -> Result<RunFile> {
    let run = open()?;
    if let Some(v) = trust::enforce_site_policy(&run)? {
        eprintln!("signed by trusted key {} ({})", v.key_id, v.key_origin);
    }
    Ok(run)
}

fn extract(dir: &std::path::Path) -> Result<()> {
    let run = open_trusted()?;
    let payload = payload(&run)?;
    let progress = ByteProgress::new("extracting", run.manifest().uncompressed_len());
    let update = |done| progress.update(done);
    let options = UnpackOptions {
        progress: Some(&update),
        ..UnpackOptions::default()
    };
    let report = payload.extract(dir, &options).map_err(|e| {
        // The cause first: "frame 3 of layer 1 is corrupt …; nothing was written to DIR".
        let cause = match &e {
            ReadError::Unpack(e) => one_line(e),
            other => one_line(other),
        };
        anyhow::anyhow!("{cause}; nothing was written to {}", dir.display())
    })?;
    progress.finish();
    println!(
        "extracted {} files, {} directories, {} symlinks, {} hard links ({}) into {}",
        report.files,
        report.directories,
        report.symlinks,
        report.hard_links,
        human_bytes(report.file_bytes),
        dir.display()
    );
    Ok(())
}

fn install(target: &sealer::deploy::target::TargetArgs) -> Result<()> {
    let run = open_trusted()?;
    let program = std::env::args().next().unwrap_or_else(|| "app.run".into());
    let request = Request {
        target: target.spec(),
        source: Source::Package(&run),
        parallel: target.work.parallel,
        attempts: target.work.attempts,
        state_root: sealer::store::Store::default_root(),
        command: format!("{program} install"),
        membership: install::Membership::Keep,
        rollback_on_failure: target.rollback_on_failure,
    };
    if target.work.dry_run {
        let view = InstallView::new();
        let (summary, plans) = install::dry_run(&request, &|event| view.show(event))?;
        sealer::ui::install::print_plan(&summary, &plans);
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let log = RunLog::new(&sealer::store::Store::default_root(), "install", &args);
    let view = InstallView::logged(log, target.json);
    let report = install::run(&request, &|event| view.show(event))?;
    view.finish(&report);
    Ok(install::finished(&report)?)
}

/// `join`, `delete`, `rollback` from this package: the same recipe as `sealer`'s, with the
/// package as the payload.
fn change(
    cluster: &sealer::deploy::target::ClusterArgs,
    verb: &str,
    membership: install::Membership,
) -> Result<()> {
    let run = open_trusted()?;
    let program = std::env::args().next().unwrap_or_else(|| "app.run".into());
    let request = install::change_request(
        cluster,
        install::ChangeSource::Package(&run),
        format!("{program} {verb}"),
        membership,
    )?;
    if cluster.work.dry_run {
        let view = InstallView::new();
        let (summary, plans) = install::dry_run(&request, &|event| view.show(event))?;
        sealer::ui::install::print_plan(&summary, &plans);
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let log = RunLog::new(&sealer::store::Store::default_root(), verb, &args);
    let view = InstallView::logged(log, false);
    let report = install::run(&request, &|event| view.show(event))?;
    view.finish(&report);
    Ok(install::finished(&report)?)
}

fn status(args: &sealer::deploy::target::StatusArgs) -> Result<()> {
    let status = install::status(&args.spec(), &sealer::store::Store::default_root())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        sealer::ui::install::print_status(&status);
    }
    Ok(())
}

fn load() -> Result<()> {
    let run = open_trusted()?;
    let store = sealer::store::Store::open_default()?;
    let reference = sealer::package::load_package(&store, &run)?;
    println!("Loaded image: {reference} into {}", store.root().display());
    Ok(())
}
