//! Argument parsing and printing for `sealer`. Every command turns its arguments into the options
//! struct of one library function and prints the result; no behaviour lives here.

mod build;
mod docs;
mod images;
mod pack;
mod registry;
mod run;
mod trust;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sealer",
    version,
    about = "Build cluster images, pack them into one self-extracting installer, install them over SSH"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a cluster image from a Kubefile.
    Build(build::BuildArgs),
    /// Pack an image and the installer into one self-extracting file.
    Pack(pack::PackArgs),
    /// Install an image onto hosts over SSH (or this machine with --local).
    Run(Box<run::RunArgs>),
    /// Show what every host of a cluster holds now (image, steps done) and who is changing it.
    Status(run::StatusArgs),
    /// Converge a cluster to a Clusterfile: hosts it no longer lists are deleted, the rest installed.
    Apply(run::ApplyArgs),
    /// Add masters or nodes to a running cluster.
    Join(run::JoinArgs),
    /// Remove hosts from a cluster (hooks, rootfs, journal, agent), or the whole cluster (--all).
    Delete(run::DeleteArgs),
    /// Bring every host back to the image installed before the current one (kept on the hosts).
    Rollback(run::RollbackArgs),
    /// Make signing keys (minisign format).
    Key(trust::KeyArgs),
    /// Sign a .run package in place (only its signature record changes).
    Sign(trust::SignArgs),
    /// Check a .run package's signature (--trust or the site policy) and every byte of it.
    Verify(trust::VerifyArgs),
    #[command(hide = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the images in the local store.
    Images(images::ImagesArgs),
    /// Show an image's manifest, layers and config as JSON.
    Inspect(images::InspectArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Remove images and the blobs only they used.
    Rmi(images::RmiArgs),
    /// Write images to an OCI archive.
    Save(images::SaveArgs),
    /// Import images from an OCI archive.
    Load(images::LoadArgs),
    /// Check credentials against a registry and save them.
    Login(registry::LoginArgs),
    /// Forget the saved credentials for a registry.
    Logout(registry::LogoutArgs),
    /// Upload an image to its registry (REGISTRY/REPOSITORY:TAG).
    Push(registry::PushArgs),
    /// Download an image from a registry into the local store.
    Pull(registry::PullArgs),
    /// Print a completion script for bash, zsh, fish, elvish or powershell.
    Completion(docs::CompletionArgs),
    /// Print the man page of sealer or of one of its commands (roff, for `man -l -`).
    Man(docs::ManArgs),
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    // Commands that only print die quietly when their reader goes away (`sealer images | head`),
    // as Unix tools do. Those that feed other processes (installs, the agent) ignore SIGPIPE so
    // that a closed pipe is an error they report.
    set_sigpipe(libc::SIG_DFL);
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Run(_)
            | Command::Apply(_)
            | Command::Join(_)
            | Command::Delete(_)
            | Command::Rollback(_)
            | Command::Agent { .. }
    ) {
        set_sigpipe(libc::SIG_IGN);
    }
    let result = match cli.command {
        Command::Build(a) => build::run(a),
        Command::Run(a) => run::run(*a),
        Command::Pack(a) => pack::run(a),
        Command::Status(a) => run::status(a),
        Command::Apply(a) => run::apply(a),
        Command::Join(a) => run::join(a),
        Command::Delete(a) => run::delete(a),
        Command::Rollback(a) => run::rollback(a),
        Command::Key(a) => trust::key(a),
        Command::Sign(a) => trust::sign(a),
        Command::Verify(a) => trust::verify(a),
        Command::Agent { args } => return sealer::agent::main(&args),
        Command::Images(a) => images::images(a),
        Command::Inspect(a) => images::inspect(a),
        Command::Tag(a) => images::tag(a),
        Command::Rmi(a) => images::rmi(a),
        Command::Save(a) => images::save(a),
        Command::Load(a) => images::load(a),
        Command::Login(a) => registry::login(a),
        Command::Logout(a) => registry::logout(a),
        Command::Push(a) => registry::push(a),
        Command::Pull(a) => registry::pull(a),
        Command::Completion(a) => docs::completion(a),
        Command::Man(a) => docs::man(a),
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error: {}", sealer::ui::error::one_line(err.as_ref()));
            1
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
