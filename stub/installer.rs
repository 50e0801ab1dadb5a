//! The package's command line: what a `.run` file does when it is run (`inspect`, `verify`,
//! `extract`, `install`, `load`, `status`, `check`, `join`, `delete`, `rollback`, `upgrade`,
//! and `agent …` on remote hosts).
//!
//! It reads its own payload through `/proc/self/exe` (rename-proof). It is a thin layer over
//! `packer` and the deploy engine (the same one `sealer run` uses): it parses arguments, shows
//! progress and turns errors into one sentence on stderr with a non-zero exit. Two programs are
//! built from it: `sealer-stub` (stub/main.rs), and `sealer` itself, which runs it when it finds
//! a payload after its own executable (a package whose head is `sealer`). Either must stay a
//! static executable that runs on a bare host, so it depends on nothing outside this binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use packer::{Documents, ReadError, RunFile, SignatureRecord, UnpackOptions, Volumes};
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
    /// Say only results, warnings and errors: no progress, no stage lines. Before or after
    /// the command.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say more: how long each stage of each host took; without a terminal, a progress line
    /// every second. Before or after the command.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show the image, its layers, frames, commands and labels.
    #[command(
        after_help = "Examples:\n  ./app.run inspect\n  ./app.run inspect --hooks -f Clusterfile\n  ./app.run inspect --json\n  ./app.run inspect --manifest > manifest.json; ./app.run inspect --signature > manifest.json.minisig"
    )]
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
        /// Print the image's bill of materials (CycloneDX 1.5 JSON) instead.
        #[arg(long, conflicts_with_all = ["json", "manifest", "signature", "hooks"])]
        sbom: bool,
        /// Also show what this Clusterfile adds: its hooks, its spec.cmd, the files its Configs
        /// write.
        #[arg(short = 'f', long = "clusterfile", value_name = "FILE", conflicts_with_all = ["manifest", "signature", "sbom"])]
        clusterfile: Option<PathBuf>,
    },
    /// Check the signature (with --trust or a site policy), then every byte of the payload.
    #[command(after_help = "Examples:\n  ./app.run verify\n  ./app.run verify --trust vendor.pub")]
    Verify {
        /// A public key the package must be signed by: a minisign .pub file or its key line
        /// (repeatable). Without it the site policy ($SEALER_TRUST_DIR or /etc/sealer/trust)
        /// applies, if there is one.
        #[arg(long, value_name = "PUBKEY")]
        trust: Vec<String>,
    },
    /// Unpack the image's merged root filesystem into DIR (which must not exist or be empty).
    #[command(after_help = "Examples:\n  ./app.run extract /tmp/rootfs")]
    Extract { dir: PathBuf },
    /// Install the image onto hosts over SSH (-m/-n, -f Clusterfile) or this machine (--local).
    #[command(
        after_help = "Examples:\n  ./app.run install -m 10.0.0.2 -n 10.0.0.3,10.0.0.4 --pk ~/.ssh/id_ed25519\n  SEALER_SSH_PASSWORD=secret ./app.run install -m 10.0.0.2-10.0.0.4\n  ./app.run install -f Clusterfile\n  ./app.run install --local\n  ./app.run install -f Clusterfile --dry-run"
    )]
    Install(Box<sealer::deploy::target::TargetArgs>),
    /// Import the image into the local sealer store ($SEALER_ROOT).
    #[command(
        after_help = "Examples:\n  ./app.run load\n  SEALER_ROOT=/srv/sealer ./app.run load"
    )]
    Load,
    /// Show what every host of a cluster holds now and who is changing it.
    #[command(
        after_help = "Examples:\n  ./app.run status\n  ./app.run status -f Clusterfile --json"
    )]
    Status(Box<sealer::deploy::target::StatusArgs>),
    /// Run every preflight check of an install on every host, changing nothing.
    #[command(
        after_help = "Examples:\n  ./app.run check -m 10.0.0.2 -n 10.0.0.3 --pk ~/.ssh/id_ed25519\n  ./app.run check --local"
    )]
    Check(Box<sealer::deploy::target::CheckArgs>),
    /// Add masters or nodes to a running cluster, from this package.
    #[command(after_help = "Examples:\n  ./app.run join -n 10.0.0.5")]
    Join(Box<sealer::deploy::target::JoinArgs>),
    /// Remove hosts from a cluster, or the whole cluster (--all).
    #[command(after_help = "Examples:\n  ./app.run delete -n 10.0.0.5\n  ./app.run delete --all")]
    Delete(Box<sealer::deploy::target::DeleteArgs>),
    /// Bring every host back to the image installed before the current one.
    #[command(after_help = "Examples:\n  ./app.run rollback")]
    Rollback(Box<sealer::deploy::target::RollbackArgs>),
    /// Install this package's image on a running cluster: its upgrade hooks run.
    #[command(
        after_help = "Examples:\n  ./app.run upgrade\n  ./app.run upgrade --rollback-on-failure"
    )]
    Upgrade(Box<sealer::deploy::target::UpgradeArgs>),
}

/// Run the package's command line; the process's exit status.
pub fn main() -> ExitCode {
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
    sealer::ui::set_verbosity(sealer::ui::verbosity_from_flags(cli.quiet, cli.verbose));
    refuse_unused_flags(&cli);
    sealer::ui::log::warn_secrets_on_command_line(&args);
    if matches!(
        cli.command,
        Some(
            Command::Install(_)
                | Command::Join(_)
                | Command::Delete(_)
                | Command::Rollback(_)
                | Command::Upgrade(_)
        )
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
            sbom,
            clusterfile,
        }) => match sbom {
            true => inspect_sbom(),
            false => inspect(json, manifest, signature, hooks, clusterfile.as_deref()),
        },
        Some(Command::Verify { trust }) => verify(&trust),
        Some(Command::Extract { dir }) => extract(&dir),
        Some(Command::Install(target)) => install(&target),
        Some(Command::Load) => load(),
        Some(Command::Status(args)) => status(&args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Join(args)) => install::join_membership(&args)
            .map_err(Into::into)
            .and_then(|membership| {
                change_with(&args.cluster, "join", membership, false, args.json)
            }),
        Some(Command::Delete(args)) => install::delete_membership(&args)
            .map_err(Into::into)
            .and_then(|membership| change(&args.cluster, "delete", membership)),
        Some(Command::Rollback(args)) => install::rollback_membership(&args.cluster)
            .map_err(Into::into)
            .and_then(|(membership, _)| change(&args.cluster, "rollback", membership)),
        Some(Command::Upgrade(args)) => upgrade(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Flags the verbs share with `sealer`'s but cannot act on here are usage errors (exit 2), not
/// silently ignored: a package changes hosts only with the image it carries, and `status`
/// runs nothing that an env could reach.
fn refuse_unused_flags(cli: &Cli) {
    let image = |verb: &str, cluster: &sealer::deploy::target::ClusterArgs| {
        if let Some(image) = &cluster.image {
            usage_error(
                verb,
                &format!(
                    "--image {image}: `{verb}` from this package uses the image it carries; for another image, use its own .run file or `sealer {verb} --image {image}`"
                ),
            );
        }
    };
    match &cli.command {
        Some(Command::Join(a)) => image("join", &a.cluster),
        Some(Command::Delete(a)) => image("delete", &a.cluster),
        Some(Command::Rollback(a)) => image("rollback", &a.cluster),
        Some(Command::Upgrade(a)) => {
            image("upgrade", &a.cluster);
            if let Some(to) = &a.to {
                usage_error(
                    "upgrade",
                    &format!(
                        "{to}: this package upgrades to the image it carries; leave the image out"
                    ),
                );
            }
        }
        Some(Command::Status(a)) if !a.flags.env.is_empty() => usage_error(
            "status",
            "-e/--env sets the env of install steps; status runs none and only reads: leave it out",
        ),
        Some(Command::Status(a)) if !a.flags.install_only_given().is_empty() => usage_error(
            "status",
            &format!(
                "{} sets what an install runs; status runs nothing and only reads: leave it out",
                a.flags.install_only_given().join(", ")
            ),
        ),
        _ => {}
    }
}

/// Exits with clap's usage error (status 2) for the subcommand `verb`.
fn usage_error(verb: &str, message: &str) -> ! {
    let mut cli = Cli::command();
    cli.build();
    let mut command = cli.find_subcommand(verb).cloned().unwrap_or(cli);
    command
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
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
    open_with(Documents::Read)
}

fn open_with(documents: Documents) -> Result<RunFile> {
    // A path in SEALER_RUN_FILE lets tests and `sealer` drive a stub against another file.
    match std::env::var_os("SEALER_RUN_FILE") {
        Some(path) => Ok(RunFile::open_with(&PathBuf::from(path), documents)?),
        None => Ok(RunFile::open_self_with(documents)?),
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
    if let Some(note) = sealer::package::loaded_digest(m).note(&m.image.manifest_digest) {
        println!("  load          {note}");
    }
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
    println!("  {me} check -m IPS [-n IPS] | -f Clusterfile | --local   preflight every host; change nothing");
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

/// `inspect --sbom`: the bill of materials in the image config the package carries.
fn inspect_sbom() -> Result<()> {
    let run = open()?;
    let image = &run.manifest().image;
    let bom = sealer::sbom::from_config_json(&image.config_json, &image.name)?;
    println!("{}", serde_json::to_string_pretty(&bom)?);
    Ok(())
}

fn inspect(
    json: bool,
    manifest: bool,
    signature: bool,
    hooks: bool,
    clusterfile: Option<&std::path::Path>,
) -> Result<()> {
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
    // A config that cannot be read shows as empty; the payload's error says why.
    let config: sealer::store::ImageConfig =
        serde_json::from_str(&m.image.config_json).unwrap_or_default();
    let cluster = clusterfile
        .map(sealer::clusterfile::load_cluster)
        .transpose()?;
    // A package whose plugins cannot be read still shows everything else.
    let payload = payload(&run)
        .and_then(|volumes| Ok(Payload::from_package(&run, std::sync::Arc::new(volumes))?))
        .map_err(|e| one_line(e.as_ref()));
    let view = sealer::inspect::describe(&sealer::inspect::InspectInput {
        image: &m.image.name,
        image_digest: &m.image.manifest_digest,
        config_digest: &m.image.config_digest,
        config: &config,
        config_json: &m.image.config_json,
        claim: trust::claim(&run),
        plugins: sealer::inspect::package_plugins(payload.as_ref().map_err(|e| e.clone())),
        cluster: cluster.as_ref(),
        scripts: hooks,
    });
    if json {
        let mut manifest_doc = serde_json::to_value(m)?;
        // The stored config carries the env unmasked; show the masked one instead.
        manifest_doc["image"]["config_json"] = serde_json::Value::String(view.config.to_string());
        let mut doc = serde_json::to_value(&view)?;
        if let Some(map) = doc.as_object_mut() {
            map.insert("file".into(), serde_json::json!(run.path()));
            map.insert("payload_id".into(), serde_json::json!(run.payload_id()));
            // What `load` will store: the image digest, another one (layers packed at another
            // zstd level), or null (xz layers, recompressed by load).
            map.insert(
                "load_digest".into(),
                serde_json::json!(sealer::package::loaded_digest(m).digest()),
            );
            map.insert(
                "header_offset".into(),
                serde_json::json!(run.header_offset()),
            );
            map.insert("manifest".into(), manifest_doc);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("image          {}", m.image.name);
    println!("image digest   {}", m.image.manifest_digest);
    if let Some(note) = sealer::package::loaded_digest(m).note(&m.image.manifest_digest) {
        println!("load           {note}");
    }
    println!("config digest  {}", m.image.config_digest);
    println!("payload id     {}", run.payload_id());
    println!("format         {} v{}", m.format, m.version);
    for line in view.text_lines(&config.config.cmd) {
        println!("{line}");
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
fn open_trusted(documents: Documents) -> Result<RunFile> {
    let run = open_with(documents)?;
    if let Some(v) = trust::enforce_site_policy(&run)? {
        eprintln!("signed by trusted key {} ({})", v.key_id, v.key_origin);
    }
    Ok(run)
}

fn extract(dir: &std::path::Path) -> Result<()> {
    // The layers are all it writes: the image's config (and its SBOM) is not read.
    let run = open_trusted(Documents::Skip)?;
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
    let run = open_trusted(Documents::Read)?;
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

/// `upgrade` from this package: the package's image on the cluster this machine recorded (or
/// `-f`), upgraded hosts running its upgrade hooks.
fn upgrade(args: &sealer::deploy::target::UpgradeArgs) -> Result<()> {
    change_with(
        &args.cluster,
        "upgrade",
        install::Membership::Keep,
        args.rollback_on_failure,
        false,
    )
}

/// `join`, `delete`, `rollback` from this package: the same recipe as `sealer`'s, with the
/// package as the payload.
fn change(
    cluster: &sealer::deploy::target::ClusterArgs,
    verb: &str,
    membership: install::Membership,
) -> Result<()> {
    change_with(cluster, verb, membership, false, false)
}

fn change_with(
    cluster: &sealer::deploy::target::ClusterArgs,
    verb: &str,
    membership: install::Membership,
    rollback_on_failure: bool,
    json: bool,
) -> Result<()> {
    let run = open_trusted(Documents::Read)?;
    let program = std::env::args().next().unwrap_or_else(|| "app.run".into());
    let mut request = install::change_request(
        cluster,
        install::ChangeSource::Package(&run),
        format!("{program} {verb}"),
        membership,
    )?;
    request.rollback_on_failure = rollback_on_failure;
    if cluster.work.dry_run {
        let view = InstallView::new();
        let (summary, plans) = install::dry_run(&request, &|event| view.show(event))?;
        sealer::ui::install::print_plan(&summary, &plans);
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let log = RunLog::new(&sealer::store::Store::default_root(), verb, &args);
    let view = InstallView::logged(log, json);
    let report = install::run(&request, &|event| view.show(event))?;
    view.finish(&report);
    Ok(install::finished(&report)?)
}

/// `check`: every preflight check of an install of this package on every host; changes
/// nothing and fails when a check fails.
fn check(args: &sealer::deploy::target::CheckArgs) -> Result<()> {
    let run = open_trusted(Documents::Read)?;
    let program = std::env::args().next().unwrap_or_else(|| "app.run".into());
    let request = Request {
        target: args.spec(),
        source: Source::Package(&run),
        parallel: 8,
        attempts: 1,
        state_root: sealer::store::Store::default_root(),
        command: format!("{program} check"),
        membership: install::Membership::Keep,
        rollback_on_failure: false,
    };
    let view = InstallView::new();
    let report = install::check(&request, &|event| view.show(event))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        sealer::ui::install::print_checks(&report);
    }
    Ok(install::preflight_passed(&report)?)
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
    let run = open_trusted(Documents::Read)?;
    let store = sealer::store::Store::open_default()?;
    let before = store.images().unwrap_or_default();
    let reference = sealer::package::load_package(&store, &run)?;
    let after = store.images().unwrap_or_default();
    for (name, old, new) in sealer::package::moved_tags(&before, &after) {
        eprintln!("{}", sealer::package::moved_tag_warning(&name, &old, &new));
    }
    let digest = after
        .iter()
        .find(|i| i.name == reference.store_key())
        .map(|i| format!(" ({})", i.digest))
        .unwrap_or_default();
    println!(
        "Loaded image: {reference}{digest} into {}",
        store.root().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_examples_and_every_example_parses() {
        let mut root = Cli::command();
        root.build();
        let commands: Vec<(String, String)> = root
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .map(|c| {
                let help = c
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                (c.get_name().to_string(), help)
            })
            .collect();
        assert!(commands.len() >= 10, "{}", commands.len());
        for (name, help) in commands {
            let examples = sealer::ui::examples::example_commands(&help, "./app.run");
            assert!(
                !examples.is_empty(),
                "./app.run {name} --help shows no example"
            );
            for words in examples {
                assert_eq!(words.first(), Some(&name), "{words:?}");
                let parsed = Cli::try_parse_from(
                    std::iter::once("app.run".to_string()).chain(words.clone()),
                );
                assert!(
                    parsed.is_ok(),
                    "the example `./app.run {}` does not parse: {}",
                    words.join(" "),
                    parsed.err().map(|e| e.to_string()).unwrap_or_default()
                );
            }
        }
    }
}
