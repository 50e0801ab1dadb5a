//! `sealer completion SHELL` and `sealer man [COMMAND…]`: print a shell completion script or a
//! man page, both generated from the argument definitions of this CLI, so they always describe
//! the binary that prints them. Nothing is written anywhere but stdout; installing the output
//! is the caller's business (docs/cli.md shows where).

use std::io::Write;

use anyhow::{bail, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    sealer completion bash > /etc/bash_completion.d/sealer\n  \
    sealer completion zsh > \"${fpath[1]}/_sealer\"\n  \
    sealer completion fish > ~/.config/fish/completions/sealer.fish")]
pub struct CompletionArgs {
    /// The shell to print the completion script for.
    shell: Shell,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    sealer man | man -l -\n  \
    sealer man run | man -l -\n  \
    sealer man key generate > /usr/local/share/man/man1/sealer-key-generate.1")]
pub struct ManArgs {
    /// The command whose page to print (`run`, `key generate`); without it, sealer(1), which
    /// lists the commands and the exit statuses.
    command: Vec<String>,
}

/// What `sealer` and its commands exit with, as the EXIT STATUS section of sealer(1). The same
/// list, with more words, is in docs/cli.md.
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
0
The command did what it was asked (for an install: every host succeeded).
.TP
1
It failed; one line on stderr says what, where and what to do.
.TP
2
The command line was wrong (an unknown command or option, a missing or bad value).
.TP
141
A printing command's reader went away (\fBsealer images | head\fR): killed by SIGPIPE.
"#;

/// `sealer`'s command tree without its hidden commands (the agent), which the completion
/// generators would otherwise offer.
fn visible_commands() -> clap::Command {
    let full = super::Cli::command();
    let mut cli = clap::Command::new("sealer")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cli = cli.about(about.clone());
    }
    cli
}

/// Print the completion script for `args.shell`.
pub fn completion(args: CompletionArgs) -> Result<()> {
    let mut cli = visible_commands();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cli, "sealer", &mut out);
    out.flush()?;
    Ok(())
}

/// Print the man page (roff) of `sealer` or of the command `args.command` names.
pub fn man(args: ManArgs) -> Result<()> {
    // The agent stays out, and so does `help`: `man sealer-help` would be no page at all.
    let mut cli = visible_commands().disable_help_subcommand(true);
    cli.build();
    let source = format!("sealer {}", env!("CARGO_PKG_VERSION"));
    let mut page = Vec::new();
    if args.command.is_empty() {
        clap_mangen::Man::new(cli)
            .source(source)
            .render(&mut page)?;
        // EXIT STATUS goes before VERSION, where man-pages(7) puts it.
        let at = find(&page, b"\n.SH VERSION").map_or(page.len(), |i| i + 1);
        page.splice(at..at, EXIT_STATUS.bytes());
    } else {
        let mut command = &cli;
        for name in &args.command {
            match command.find_subcommand(name) {
                Some(sub) => command = sub,
                None => {
                    let parent = command.get_bin_name().unwrap_or("sealer");
                    bail!("`{parent}` has no command `{name}`; `{parent} --help` lists them")
                }
            }
        }
        clap_mangen::Man::new(command.clone())
            .source(source)
            .render(&mut page)?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&page)?;
    out.flush()?;
    Ok(())
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
