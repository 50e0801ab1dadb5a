//! The agent: the host side of an install, what `sealer-stub agent …` (and `sealer agent …`)
//! does on each host when the deploy engine asks. The engine and the agent speak only
//! [`protocol`]; the agent knows nothing of the engine, of SSH or of the Clusterfile beyond the
//! Config strategy it is told.
//!
//! It keeps a per-cluster work directory (`<dataRoot>/<cluster>/.sealer`): `spool/` holds received
//! compressed frames by sha256 (each verified, written to a temporary name and renamed; those of
//! the installed and the previous generation are kept for the next upgrade), `journal/`
//! holds one file per finished step, `exports/` the `KEY=VALUE` lines hooks wrote. `unpack` turns
//! spooled frames into the rootfs through the project's one extraction routine, into a staging
//! directory swapped into place; `receive --dest` does both at once, unpacking each frame as soon
//! as it is spooled, so the transfer and the unpack overlap. It trusts nothing it receives: every
//! frame is hashed. `run` runs one hook or CMD: the script and its env arrive on stdin (never in a
//! command line, where `/proc/PID/cmdline` shows them to every user), the script runs in a
//! process group of its own that is killed when it outlives its timeout or the session that
//! started it, and only a bounded head and tail of its output is kept.
//!
//! Every read of stdin gives up after [`DEFAULT_STALL`] without a byte (`--stall-timeout SECS`
//! changes it; the engine passes a short one to the commands that read a stream, see
//! `deploy::launch::stream_stall`): an installer whose link vanished leaves no agent waiting on
//! the host.
//!
//! The jobs: [`protocol`] (what is said), `spool` (frames in, missing frames out), `rootfs`
//! (unpacking into a swapped tree, Configs), `journal` (finished steps and exports), `hook`
//! (running a script under supervision), `input` (stdin that gives up).

mod hook;
mod input;
mod journal;
mod lock;
pub mod protocol;
pub mod registry;
mod render;
mod rootfs;
mod spool;

use std::io;
use std::time::Duration;

pub use protocol::{AgentCommand, Invocation, EXIT_DISK_FULL, EXIT_TIMED_OUT};
pub use rootfs::install_rootfs;

/// How long a read of stdin waits for a byte before the agent concludes the installer is gone.
pub const DEFAULT_STALL: Duration = Duration::from_secs(90);

fn io_context(what: impl Into<String>) -> impl FnOnce(io::Error) -> String {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

/// Run one agent command; `args` are the words after `agent`. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let invocation = match Invocation::parse(args) {
        Ok(invocation) => invocation,
        Err(message) => {
            eprintln!("sealer agent: {message}");
            return 1;
        }
    };
    if let Some(secs) = invocation.stall_timeout {
        input::set_stall(Duration::from_secs(secs.max(1)));
    }
    match run(invocation.command) {
        Ok(status) => status,
        Err(message) => {
            eprintln!("sealer agent: {message}");
            exit_status_for(&message)
        }
    }
}

/// Does `command`; the exit status to report when it did not fail.
fn run(command: AgentCommand) -> Result<i32, String> {
    match command {
        AgentCommand::Version => {
            println!("sealer agent {}", env!("CARGO_PKG_VERSION"));
        }
        AgentCommand::State { work } => journal::state(&work)?,
        AgentCommand::Have { work } => spool::have(&work)?,
        AgentCommand::Receive { work, dest: None } => spool::receive(&work)?,
        AgentCommand::Receive {
            work,
            dest: Some(dest),
        } => spool::receive_and_unpack(&work, &dest)?,
        AgentCommand::Unpack { work, dest } => spool::unpack(&work, &dest)?,
        AgentCommand::Done {
            work,
            key,
            prune_spool,
            installs,
        } => {
            journal::done(&work, &key, installs.as_ref())?;
            if prune_spool {
                spool::prune(&work)?;
            }
        }
        AgentCommand::Config {
            rootfs,
            path,
            strategy,
        } => rootfs::write_config(&rootfs, &path, strategy)?,
        AgentCommand::Run { work } => return hook::run_hook(&work),
        AgentCommand::Render { rootfs } => render::render_tree(&rootfs)?,
        AgentCommand::Rollback { work } => {
            journal::rollback(&work)?;
            spool::prune(&work)?;
        }
        AgentCommand::Lock { file, holder } => return lock::lock(&file, &holder),
        AgentCommand::Remove {
            data_root,
            cluster,
            all,
        } => rootfs::remove(&data_root, &cluster, all)?,
        AgentCommand::Registry { command } => return registry::run(command),
    }
    Ok(0)
}

/// [`EXIT_DISK_FULL`] for a failure caused by a full disk (every io error's text ends in its
/// `(os error N)`), else 1.
fn exit_status_for(message: &str) -> i32 {
    let full = [libc::ENOSPC, libc::EDQUOT]
        .iter()
        .any(|code| message.contains(&format!("(os error {code})")));
    if full {
        EXIT_DISK_FULL
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_gets_its_own_exit_status() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(
            exit_status_for(&format!("writing x: {full}")),
            EXIT_DISK_FULL
        );
        let other = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(exit_status_for(&format!("writing x: {other}")), 1);
    }
}
