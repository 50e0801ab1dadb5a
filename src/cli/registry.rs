//! `login`, `logout`, `push`, `pull`: arguments into [`RegistryOptions`], progress onto the
//! terminal (one bar per blob) or as plain lines when stderr is not a terminal.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::Args;

use sealer::reference::Reference;
use sealer::registry::{self, BlobKind, Credentials, Progress, ProgressEvent, RegistryOptions};
use sealer::store::Store;
use sealer::ui::progress::{Board, ByteProgress};
use sealer::ui::{human_bytes, short_digest};

/// How to reach the registry.
#[derive(Args)]
pub struct ConnectionArgs {
    /// Talk plain HTTP to the registry (no TLS).
    #[arg(long)]
    insecure: bool,
    /// PEM file with extra CA certificates to trust.
    #[arg(long, value_name = "PEM", env = "SEALER_REGISTRY_CA")]
    ca_file: Option<PathBuf>,
}

impl ConnectionArgs {
    pub(super) fn options(&self) -> RegistryOptions {
        let mut opts = RegistryOptions::from_env();
        opts.insecure = self.insecure;
        if let Some(ca) = &self.ca_file {
            opts.ca_file = Some(ca.clone());
        }
        opts
    }
}

#[derive(Args)]
pub struct LoginArgs {
    /// Registry host, with port when not 443 (e.g. `registry.example.com:5000`).
    registry: String,
    #[arg(short, long)]
    username: String,
    /// Password (visible in the process list; prefer --password-stdin, or leave it out on a
    /// terminal to be asked).
    #[arg(short, long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
}

pub fn login(args: LoginArgs) -> Result<()> {
    let password = match (args.password, args.password_stdin) {
        (Some(p), false) => {
            eprintln!("warning: a password on the command line is visible to other users; use --password-stdin");
            p
        }
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the password from standard input")?;
            text.trim_end_matches(['\r', '\n']).to_string()
        }
        _ if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            rpassword::prompt_password(format!("Password for {} at {}: ", args.username, args.registry))
                .context("reading the password from the terminal")?
        }
        _ => bail!(
            "no password for {} at {}: pipe it in with --password-stdin (echo \"$PASSWORD\" | sealer login {} -u {} --password-stdin), or run on a terminal to be asked",
            args.username,
            args.registry,
            args.registry,
            args.username
        ),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let opts = args.connection.options();
    let creds = Credentials {
        username: args.username,
        password,
    };
    registry::login(&args.registry, &creds, &opts)?;
    println!(
        "Login succeeded; credentials saved in {}",
        opts.auth_file.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct LogoutArgs {
    /// Registry host (with port).
    registry: String,
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let opts = RegistryOptions::from_env();
    match registry::logout(&args.registry, &opts) {
        Ok(()) => {}
        // As docker: logging out when not logged in is not a failure.
        Err(registry::RegistryError::NotLoggedIn { registry, path }) => {
            println!(
                "Not logged in to {registry}: {} holds no credentials for it",
                path.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    println!(
        "Removed the credentials for {} from {}",
        args.registry,
        opts.auth_file.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct PushArgs {
    /// Image to push: REGISTRY/REPOSITORY:TAG.
    image: String,
    #[command(flatten)]
    connection: ConnectionArgs,
}

pub fn push(args: PushArgs) -> Result<()> {
    let reference = Reference::parse(&args.image)?;
    let store = Store::open_default()?;
    let opts = args.connection.options();
    let view = ProgressView::new("push");
    let report = registry::push(&store, &reference, &opts, &|p| view.show(p))?;
    view.finish();
    println!(
        "Pushed {} ({}): {} blob(s) uploaded ({}), {} already there, {} mounted",
        report.reference,
        report.digest,
        report.uploaded.len(),
        human_bytes(report.bytes_uploaded),
        report.already_present.len(),
        report.mounted.len()
    );
    if let Some(tag) = &report.signature {
        println!(
            "Pushed its signature as {}:{tag}",
            report.reference.repository
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PullArgs {
    /// Image to pull: REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST].
    image: String,
    #[command(flatten)]
    connection: ConnectionArgs,
}

pub fn pull(args: PullArgs) -> Result<()> {
    let reference = Reference::parse(&args.image)?;
    let store = Store::open_default()?;
    let opts = args.connection.options();
    let view = ProgressView::new("pull");
    let image = registry::pull(&store, &reference, &opts, &|p| view.show(p))?;
    view.finish();
    println!(
        "Pulled {} ({}, {} layer(s), {})",
        image.reference.store_key(),
        image.digest,
        image.manifest.layers.len(),
        human_bytes(image.layers_size())
    );
    match store.signature(&image.digest)? {
        Some(_) => println!("Signature: present (sealer run/pack --trust check it)"),
        None => println!("Signature: none"),
    }
    Ok(())
}

/// Progress of a push or pull: one byte counter per blob.
struct ProgressView {
    verb: &'static str,
    board: Board,
    blobs: Mutex<HashMap<String, ByteProgress>>,
}

impl ProgressView {
    fn new(verb: &'static str) -> Self {
        ProgressView {
            verb,
            board: Board::new(),
            blobs: Mutex::new(HashMap::new()),
        }
    }

    fn label(p: &Progress) -> String {
        let what = match p.kind {
            BlobKind::Layer { index, count } => format!("layer {}/{count}", index + 1),
            BlobKind::Config => "config".to_string(),
            BlobKind::Manifest => "manifest".to_string(),
        };
        format!("{what} {}", short_digest(&p.digest))
    }

    fn show(&self, p: Progress) {
        let Ok(mut blobs) = self.blobs.lock() else {
            return;
        };
        let counter = blobs.entry(p.digest.clone()).or_insert_with(|| {
            self.board
                .bar(format!("{}ing {}", self.verb, Self::label(&p)), p.total)
        });
        if counter.total() != p.total {
            counter.set_total(p.total);
        }
        counter.update(p.done);
        match &p.event {
            ProgressEvent::Started | ProgressEvent::Transferring => {}
            ProgressEvent::AlreadyPresent => counter.finish_with("already present"),
            ProgressEvent::Mounted { from } => counter.finish_with(&format!("mounted from {from}")),
            ProgressEvent::Done => counter.finish_with("done"),
            ProgressEvent::Retrying {
                attempt,
                attempts,
                wait,
                error,
            } => counter.note(&format!(
                "attempt {attempt}/{attempts} failed ({error}); retrying in {:.1}s",
                wait.as_secs_f64()
            )),
        }
    }

    /// Counters of blobs that did not finish (the transfer failed) are cleared.
    fn finish(&self) {
        if let Ok(mut blobs) = self.blobs.lock() {
            blobs.clear();
        }
    }
}
