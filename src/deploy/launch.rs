//! The agent on a host: where it lives, how it gets there and how every command line that runs
//! it is made. On a remote host the agent is checked before each run (owner, mode and sha256 of
//! the file and of every directory above it), as its name is predictable.

use super::{Engine, HostSlot, Remote, StepFailure};
use crate::agent::protocol::AgentCommand;
use crate::clusterfile::shell_quote;

impl Engine<'_> {
    /// Where the agent is on the host: this very program on this machine, else a file under the
    /// data root named by the agent's sha256.
    pub(super) fn agent_path(&self, remote: &dyn Remote) -> String {
        if remote.is_local() {
            if let Ok(exe) = std::env::current_exe() {
                return exe.display().to_string();
            }
        }
        self.cluster
            .data_root
            .join(".agent")
            .join(format!("sealer-agent-{}", &self.payload.agent_sha256[..16]))
            .display()
            .to_string()
    }

    /// The shell command that runs the agent's `command`: the words of
    /// [`AgentCommand::to_args`], each quoted. On a remote host the agent is checked first,
    /// every time, by [`agent_guard`].
    pub(super) fn agent_cmd(&self, remote: &dyn Remote, command: &AgentCommand) -> String {
        let agent = self.agent_path(remote);
        let words: Vec<String> = std::iter::once("agent".to_string())
            .chain(command.to_args())
            .map(|w| shell_quote(&w))
            .collect();
        let words = words.join(" ");
        if remote.is_local() {
            return format!("{} {words}", shell_quote(&agent));
        }
        format!(
            "sealer_agent=$({}) && \"$sealer_agent\" {words}",
            agent_guard(&agent, &self.payload.agent_sha256)
        )
    }

    /// Uploads the agent to `agent` on the host: into a temporary file in a directory that
    /// passes [`root_only_chain`], checked against its sha256, then renamed into place.
    pub(super) fn upload_agent(&self, slot: &mut HostSlot, agent: &str) -> Result<(), StepFailure> {
        let cmd = format!(
            "set -e; umask 022; d=$(dirname {a}); mkdir -p \"$d\"; d=$(readlink -f -- \"$d\"); {chain}; t=$(mktemp \"$d/.sealer-agent.XXXXXX\"); cat > \"$t\"; echo \"{sha}  $t\" | sha256sum -c --status || {{ rm -f \"$t\"; echo 'the agent arrived corrupt' >&2; exit 3; }}; chmod 755 \"$t\"; mv -f \"$t\" {a}",
            a = shell_quote(agent),
            chain = root_only_chain("d", "upload the agent into $d"),
            sha = self.payload.agent_sha256
        );
        let bytes = self.payload.agent.clone();
        let mut reader: &[u8] = &bytes;
        self.exec_ok(slot, "uploading the agent", &cmd, Some(&mut reader))?;
        Ok(())
    }
}

/// A shell expression that prints the agent's real path once it is safe to run as root, and
/// fails (status [`EXIT_AGENT_UNSAFE`], one line on stderr) otherwise.
///
/// The agent's name is predictable, so anyone who can write to its directory, or to any
/// directory above it, could put a program there and have it run as root. Before every run the
/// guard resolves the path and checks the file and every directory up to `/`: owned by root,
/// writable by nobody else (a sticky directory such as `/tmp` is fine, as its root-owned entry
/// cannot be replaced by others); then it checks the file's sha256. Nobody but root can change
/// such a chain between the check and the run, so the check cannot be raced. (Uploading to a
/// fresh directory on every run would resend the agent each time instead.)
fn agent_guard(agent: &str, sha256: &str) -> String {
    format!(
        r#"a=$(readlink -f -- {agent}) && [ -f "$a" ] || {{ echo "sealer: the agent {agent} is missing" >&2; exit {code}; }}; {chain}; [ "$(sha256sum < "$a")" = "{sha256}  -" ] || {{ echo "sealer: refusing to run the agent $a: its sha256 is not the one this installer uploaded" >&2; exit {code}; }}; printf %s "$a""#,
        agent = shell_quote(agent),
        chain = root_only_chain("a", "run the agent $a as root"),
        code = EXIT_AGENT_UNSAFE,
    )
}

/// Shell that exits with [`EXIT_AGENT_UNSAFE`] unless the resolved path in `$var` and every
/// directory above it are owned by root and writable by root only; an ancestor may instead be a
/// root-owned sticky directory (`/tmp`), whose root-owned entries nobody else can replace.
fn root_only_chain(var: &str, doing: &str) -> String {
    format!(
        r#"p=${var}; while :; do s=$(stat -c '%u %a' -- "$p") || exit {code}; u=${{s%% *}}; m=0${{s#* }}; if [ "$u" != 0 ] || {{ [ $((m & 022)) -ne 0 ] && {{ [ "$p" = "${var}" ] || [ $((m & 01000)) -eq 0 ]; }}; }}; then echo "sealer: refusing to {doing}: $p is owned by uid $u with mode ${{s#* }}; it and every directory above it must be owned by root and writable by root only (choose another dataRoot)" >&2; exit {code}; fi; [ "$p" = / ] && break; p=${{p%/*}}; [ -n "$p" ] || p=/; done"#,
        code = EXIT_AGENT_UNSAFE,
    )
}

/// Exit status of [`agent_guard`] when it refuses the agent.
pub const EXIT_AGENT_UNSAFE: i32 = 97;

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Runs the guard for `agent` in a real shell: `Ok(resolved path)` or `Err((status, stderr))`.
    fn guard(agent: &Path, sha: &str) -> Result<String, (i32, String)> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "x=$({}) && printf %s \"$x\"",
                agent_guard(&agent.display().to_string(), sha)
            ))
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    #[test]
    fn the_agent_guard_accepts_only_the_right_file_in_a_root_only_chain() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: the guard checks root ownership; run as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(".agent")).unwrap();
        let agent = data.join(".agent/sealer-agent-x");
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sha = hex::encode(Sha256::digest(b"#!/bin/sh\n"));
        let resolved = std::fs::canonicalize(&agent).unwrap();
        assert_eq!(guard(&agent, &sha), Ok(resolved.display().to_string()));

        let (status, err) = guard(&agent, &"0".repeat(64)).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("sha256"), "{err}");

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (status, err) = guard(&agent, &sha).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("mode 777"), "{err}");

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&data, Some(1000), None).unwrap();
        let (status, err) = guard(&agent, &sha).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("owned by uid 1000"), "{err}");

        std::fs::remove_file(&agent).unwrap();
        let (status, err) = guard(&agent, &sha).unwrap_err();
        assert_eq!(status, EXIT_AGENT_UNSAFE);
        assert!(err.contains("missing"), "{err}");
    }
}
