//! Argument parsing and printing for `sealer`. Every command turns its arguments into the options
//! struct of one library function and prints the result; no behaviour lives here.

mod build;
mod docs;
mod images;
mod pack;
mod registry;
mod run;
mod trust;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sealer",
    version,
    about = "Build cluster images, pack them into one self-extracting installer, install them over SSH"
)]
struct Cli {
    /// Say only results, warnings and errors: no progress, no stage lines, no build steps
    /// (`sealer images -q`: only the image IDs). Before or after the command.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say more: how long each stage of each host took; without a terminal, a progress line
    /// every second. Before or after the command.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a cluster image from a Kubefile.
    #[command(
        after_help = "Examples:\n  sealer build -t myapp:1.0 .\n  sealer build -t myapp:1.0 -f Kubefile.prod --build-arg VERSION=2.1 ./app\n  sealer build --list-images ."
    )]
    Build(build::BuildArgs),
    /// Pack an image and the installer into one self-extracting file.
    #[command(
        after_help = "Examples:\n  sealer pack myapp:1.0 -o myapp.run\n  sealer pack myapp:1.0 -o myapp.run --level 19        # smaller, for slow links\n  sealer pack myapp:1.0 -o myapp.run --split-size 4G    # FAT32 volumes\n  sealer pack myapp:1.0 -o myapp.run --sign vendor.key"
    )]
    Pack(pack::PackArgs),
    /// Install an image onto hosts over SSH (or this machine with --local).
    #[command(
        after_help = "Examples:\n  sealer run myapp:1.0 -m 10.0.0.2 -n 10.0.0.3,10.0.0.4 --pk ~/.ssh/id_ed25519\n  SEALER_SSH_PASSWORD=secret sealer run myapp:1.0 -m 10.0.0.2-10.0.0.4\n  sealer run myapp:1.0 -f Clusterfile\n  sealer run myapp:1.0 --local --data-root /tmp/myapp\n  sealer run myapp:1.0 -f Clusterfile --dry-run"
    )]
    Run(Box<run::RunArgs>),
    /// Show what every host of a cluster holds now (image, steps done) and who is changing it.
    #[command(
        after_help = "Examples:\n  sealer status                       # the cluster this machine installed (my-cluster)\n  sealer status -f Clusterfile --json"
    )]
    Status(run::StatusArgs),
    /// Run every preflight check of an install on every host, changing nothing.
    #[command(
        after_help = "Examples:\n  sealer check myapp:1.0 -m 10.0.0.2 -n 10.0.0.3 --pk ~/.ssh/id_ed25519\n  sealer check -f Clusterfile --json"
    )]
    Check(run::CheckCmd),
    /// Converge a cluster to a Clusterfile: hosts it no longer lists are deleted, the rest installed.
    #[command(
        after_help = "Examples:\n  sealer apply -f Clusterfile\n  sealer apply -f Clusterfile --dry-run"
    )]
    Apply(run::ApplyArgs),
    /// Add masters or nodes to a running cluster.
    #[command(
        after_help = "Examples:\n  sealer join -n 10.0.0.5\n  sealer join -m 10.0.0.6 -f Clusterfile"
    )]
    Join(run::JoinArgs),
    /// Remove hosts from a cluster (hooks, rootfs, journal, agent), or the whole cluster (--all).
    #[command(after_help = "Examples:\n  sealer delete -n 10.0.0.5\n  sealer delete --all")]
    Delete(run::DeleteArgs),
    /// Bring every host back to the image installed before the current one (kept on the hosts).
    #[command(after_help = "Examples:\n  sealer rollback\n  sealer rollback --dry-run")]
    Rollback(run::RollbackArgs),
    /// Install another image on a running cluster: its upgrade hooks run, the old tree is kept.
    #[command(
        after_help = "Examples:\n  sealer upgrade myapp:1.1\n  sealer upgrade myapp:1.1 --rollback-on-failure"
    )]
    Upgrade(run::UpgradeArgs),
    /// Make signing keys (minisign format).
    #[command(
        after_help = "Examples:\n  sealer key generate -o vendor        # vendor.key and vendor.pub"
    )]
    Key(trust::KeyArgs),
    /// Sign a .run package in place (only its signature record changes).
    #[command(
        after_help = "Examples:\n  sealer sign myapp.run --key vendor.key\n  sealer sign registry.example.com/myapp:1.0 --key vendor.key"
    )]
    Sign(trust::SignArgs),
    /// Check a .run package's signature (--trust or the site policy) and every byte of it.
    #[command(
        after_help = "Examples:\n  sealer verify myapp.run --trust vendor.pub\n  sealer verify myapp.run                   # the site policy in /etc/sealer/trust"
    )]
    Verify(trust::VerifyArgs),
    #[command(hide = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the images in the local store.
    #[command(
        after_help = "Examples:\n  sealer images\n  sealer images --json\n  sealer images -q"
    )]
    Images(images::ImagesArgs),
    /// Show an image's manifest, layers and config as JSON.
    #[command(
        after_help = "Examples:\n  sealer inspect myapp:1.0\n  sealer inspect --sbom myapp:1.0"
    )]
    Inspect(images::InspectArgs),
    /// Give an image another name.
    #[command(
        after_help = "Examples:\n  sealer tag myapp:1.0 registry.example.com/team/myapp:1.0"
    )]
    Tag(images::TagArgs),
    /// Remove images and the blobs only they used.
    #[command(after_help = "Examples:\n  sealer rmi myapp:1.0\n  sealer rmi --prune")]
    Rmi(images::RmiArgs),
    /// Write images to an OCI archive.
    #[command(after_help = "Examples:\n  sealer save -o myapp.tar myapp:1.0")]
    Save(images::SaveArgs),
    /// Import images from an OCI archive.
    #[command(
        after_help = "Examples:\n  sealer load -i myapp.tar              # a package loads itself: ./myapp.run load"
    )]
    Load(images::LoadArgs),
    /// Check credentials against a registry and save them.
    #[command(
        after_help = "Examples:\n  sealer login registry.example.com -u alice        # asks for the password\n  echo \"$TOKEN\" | sealer login registry.example.com -u ci --password-stdin"
    )]
    Login(registry::LoginArgs),
    /// Forget the saved credentials for a registry.
    #[command(after_help = "Examples:\n  sealer logout registry.example.com")]
    Logout(registry::LogoutArgs),
    /// Upload an image to its registry (REGISTRY/REPOSITORY:TAG).
    #[command(
        after_help = "Examples:\n  sealer tag myapp:1.0 registry.example.com/team/myapp:1.0\n  sealer push registry.example.com/team/myapp:1.0\n  sealer push localhost:5000/myapp:1.0 --insecure"
    )]
    Push(registry::PushArgs),
    /// Download an image from a registry into the local store.
    #[command(after_help = "Examples:\n  sealer pull registry.example.com/team/myapp:1.0")]
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
    sealer::ui::set_verbosity(sealer::ui::verbosity_from_flags(cli.quiet, cli.verbose));
    sealer::ui::log::warn_secrets_on_command_line(&std::env::args().skip(1).collect::<Vec<_>>());
    if matches!(
        cli.command,
        Command::Run(_)
            | Command::Apply(_)
            | Command::Join(_)
            | Command::Delete(_)
            | Command::Rollback(_)
            | Command::Upgrade(_)
            | Command::Agent { .. }
    ) {
        set_sigpipe(libc::SIG_IGN);
    }
    let result = match cli.command {
        Command::Build(a) => build::run(a),
        Command::Run(a) => run::run(*a),
        Command::Pack(a) => pack::run(a),
        Command::Status(a) => run::status(a),
        Command::Check(a) => run::check(a),
        Command::Apply(a) => run::apply(a),
        Command::Join(a) => run::join(a),
        Command::Delete(a) => run::delete(a),
        Command::Rollback(a) => run::rollback(a),
        Command::Upgrade(a) => run::upgrade(a),
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

/// Exits with clap's usage error (status 2) for the subcommand `verb`: a flag that parses but
/// that the command cannot act on.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command that has no subcommands of its own, with the names leading to it.
    fn leaves(command: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        let subcommands: Vec<&clap::Command> = command
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .collect();
        if subcommands.is_empty() {
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            out.push((path, help));
            return;
        }
        for sub in subcommands {
            let mut path = path.clone();
            path.push(sub.get_name().to_string());
            leaves(sub, path, out);
        }
    }

    #[test]
    fn every_command_has_examples_and_every_example_parses() {
        let mut root = Cli::command();
        root.build();
        let mut commands = Vec::new();
        leaves(&root, Vec::new(), &mut commands);
        assert!(commands.len() > 20, "{}", commands.len());
        for (path, help) in commands {
            let examples = sealer::ui::examples::example_commands(&help, "sealer");
            assert!(
                !examples.is_empty(),
                "sealer {} --help shows no example",
                path.join(" ")
            );
            assert!(
                examples.iter().any(|words| words.starts_with(&path)),
                "no example of sealer {} runs it: {examples:?}",
                path.join(" ")
            );
            for words in examples {
                let parsed =
                    Cli::try_parse_from(std::iter::once("sealer".to_string()).chain(words.clone()));
                assert!(
                    parsed.is_ok(),
                    "the example `sealer {}` does not parse: {}",
                    words.join(" "),
                    parsed.err().map(|e| e.to_string()).unwrap_or_default()
                );
            }
        }
    }
}
