//! The agent on a host: where it lives, how it gets there and how every command line that runs
//! it is made. On a remote host the agent is checked before each run (owner, mode and sha256 of
//! the file and of every directory above it), as its name is predictable.
//!
//! The upload is the first thing a new host receives: it travels gzip-compressed when the host
//! has `gzip` to undo it (every Debian and RHEL base and busybox do; preflight asks), as it is
//! otherwise, and the file it becomes is checked against the agent's sha256 either way. Its bytes
//! are counted like the frames' ([`InstallEvent::AgentSent`], and the report's bytes sent).
//! A command that reads a stream from the installer (`have`, `receive`, `unpack`, and `lock`,
//! whose stdin gets a byte every 2 s) is given a stall timeout of [`stream_stall`], so an agent
//! whose link was cut exits within seconds.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Engine, HostSlot, InstallEvent, Remote, StepFailure};
use crate::agent::protocol::{AgentCommand, Invocation};
use crate::clusterfile::shell_quote;

/// gzip level of the agent upload: on the static agent, 6 gives 2.46x where 1 gives 2.26x and
/// 9 only 2.48x at nearly 3 times the CPU of 6.
const AGENT_GZIP_LEVEL: u32 = 6;
/// The agent is compressed in independent gzip members of this size, in parallel; `gzip -d`
/// (GNU and busybox) undoes their concatenation into the concatenation of their contents.
const AGENT_GZIP_MEMBER: usize = 4 << 20;

/// The gzip form of the last agent compressed in this process, by its sha256: one install
/// compresses it once for all its hosts.
static GZIPPED_AGENT: Mutex<Option<(String, Arc<Vec<u8>>)>> = Mutex::new(None);
/// Set once [`Engine::compress_agent_ahead`] started its thread.
static COMPRESSING_AHEAD: AtomicBool = AtomicBool::new(false);

/// How long an agent reading a stream from the installer waits for a byte before it concludes
/// the installer is gone: one and a half keepalive intervals of the SSH connection. While the
/// installer streams, bytes never pause that long; once its link is cut, none arrive.
pub fn stream_stall() -> Duration {
    let keepalive = crate::ssh::Timeouts::default().keepalive;
    keepalive + keepalive / 2
}

impl Engine<'_> {
    /// Where the agent is on the host: this very program on this machine, else a file under the
    /// data root named by the agent's sha256.
    pub(super) fn agent_path(&self, remote: &dyn Remote) -> Result<String, StepFailure> {
        if remote.is_local() {
            if let Ok(exe) = std::env::current_exe() {
                return Ok(exe.display().to_string());
            }
        }
        let sha = self.agent_sha256()?;
        Ok(self
            .cluster
            .data_root
            .join(".agent")
            .join(format!("sealer-agent-{}", &sha[..16]))
            .display()
            .to_string())
    }

    /// The agent's sha256, read from the agent the first time it is asked for.
    pub(super) fn agent_sha256(&self) -> Result<&str, StepFailure> {
        self.payload.agent.sha256().map_err(StepFailure::fatal)
    }

    fn agent_bytes(&self) -> Result<&Arc<Vec<u8>>, StepFailure> {
        self.payload.agent.bytes().map_err(StepFailure::fatal)
    }

    /// The shell command that runs the agent's `command`: the words of
    /// [`AgentCommand::to_args`], each quoted. On a remote host the agent is checked first,
    /// every time, by [`agent_guard`].
    pub(super) fn agent_cmd(
        &self,
        remote: &dyn Remote,
        command: &AgentCommand,
    ) -> Result<String, StepFailure> {
        let agent = self.agent_path(remote)?;
        // The lock's stdin gets a byte every 2 s for as long as it is held (`host_lock`).
        let streamed = matches!(
            command,
            AgentCommand::Have { .. }
                | AgentCommand::Receive { .. }
                | AgentCommand::Unpack { .. }
                | AgentCommand::Lock { .. }
        );
        let invocation = Invocation {
            stall_timeout: streamed.then(|| stream_stall().as_secs()),
            command: command.clone(),
        };
        let words: Vec<String> = std::iter::once("agent".to_string())
            .chain(invocation.to_args())
            .map(|w| shell_quote(&w))
            .collect();
        let words = words.join(" ");
        if remote.is_local() {
            return Ok(format!("{} {words}", shell_quote(&agent)));
        }
        Ok(format!(
            "sealer_agent=$({}) && \"$sealer_agent\" {words}",
            agent_guard(&agent, self.agent_sha256()?)
        ))
    }

    /// The agent as it travels to a host that can undo gzip: compressed once per process and
    /// shared by every host.
    pub(super) fn gzipped_agent(&self) -> Result<Arc<Vec<u8>>, StepFailure> {
        gzipped(self.agent_bytes()?, self.agent_sha256()?)
            .map_err(|e| StepFailure::fatal(format!("compressing the agent for its upload: {e}")))
    }

    /// Starts compressing the agent on a thread of its own (once per process), when preflight
    /// finds a host that lacks it and has gzip: the upload after every host's preflight then
    /// finds it ready instead of waiting for it.
    pub(super) fn compress_agent_ahead(&self) {
        if COMPRESSING_AHEAD.swap(true, Ordering::SeqCst) {
            return;
        }
        // An error is met again, and reported, by the upload that needs the agent.
        let (Ok(agent), Ok(sha)) = (self.payload.agent.bytes(), self.payload.agent.sha256()) else {
            return;
        };
        let (agent, sha) = (agent.clone(), sha.to_string());
        let _ = std::thread::Builder::new()
            .name("agent-gzip".into())
            .spawn(move || {
                // An error is met again, and reported, by the upload that needs the result.
                let _ = gzipped(&agent, &sha);
            });
    }

    /// The bytes an upload of the agent sends to a host with (`gzip`) or without gzip.
    pub(super) fn agent_upload_len(&self, gzip: bool) -> Result<u64, StepFailure> {
        Ok(if gzip {
            self.gzipped_agent()?.len() as u64
        } else {
            self.agent_bytes()?.len() as u64
        })
    }

    /// Uploads the agent to `agent` on the host: gzip-compressed when the host has `gzip`, into
    /// a temporary file in a directory that passes [`root_only_chain`], checked against its
    /// sha256, then renamed into place. Its bytes are reported as they go and counted in the
    /// host's bytes sent, also when the upload fails.
    pub(super) fn upload_agent(
        &self,
        slot: &mut HostSlot,
        agent: &str,
        gzip: bool,
    ) -> Result<(), StepFailure> {
        let (bytes, write) = if gzip {
            (
                self.gzipped_agent()?,
                r#"gzip -dc > "$t" || { rm -f "$t"; echo 'the agent arrived corrupt (gzip could not undo it)' >&2; exit 3; }"#,
            )
        } else {
            (self.agent_bytes()?.clone(), r#"cat > "$t""#)
        };
        let cmd = format!(
            "set -e; umask 022; d=$(dirname {a}); mkdir -p \"$d\"; d=$(readlink -f -- \"$d\"); {chain}; t=$(mktemp \"$d/.sealer-agent.XXXXXX\"); {write}; echo \"{sha}  $t\" | sha256sum -c --status || {{ rm -f \"$t\"; echo 'the agent arrived corrupt' >&2; exit 3; }}; chmod 755 \"$t\"; mv -f \"$t\" {a}",
            a = shell_quote(agent),
            chain = root_only_chain("d", "upload the agent into $d"),
            sha = self.agent_sha256()?
        );
        let total = bytes.len() as u64;
        let host = slot.host.ip;
        let events = self.events;
        let mut upload = CountedUpload {
            bytes: &bytes,
            sent: 0,
            progress: &|sent| events(InstallEvent::AgentSent { host, sent, total }),
        };
        let done = self.exec_ok(slot, "uploading the agent", &cmd, Some(&mut upload));
        let sent = upload.sent;
        slot.bytes_sent += sent;
        slot.agent_bytes_sent = Some(slot.agent_bytes_sent.unwrap_or(0) + sent);
        done.map(drop)
    }
}

/// The gzip form of `agent` (whose sha256 is `sha`), from [`GZIPPED_AGENT`] or compressed now
/// and kept there; a caller that comes while another compresses waits for its result.
fn gzipped(agent: &[u8], sha: &str) -> std::io::Result<Arc<Vec<u8>>> {
    let mut cached = GZIPPED_AGENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((kept, bytes)) = cached.as_ref() {
        if kept == sha {
            return Ok(bytes.clone());
        }
    }
    let bytes = Arc::new(gzip_members(agent)?);
    *cached = Some((sha.to_string(), bytes.clone()));
    Ok(bytes)
}

/// `bytes` as concatenated gzip members of [`AGENT_GZIP_MEMBER`] each, compressed in parallel.
fn gzip_members(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use rayon::prelude::*;
    use std::io::Write;
    let members = bytes
        .par_chunks(AGENT_GZIP_MEMBER)
        .map(|chunk| {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(chunk.len() / 2),
                flate2::Compression::new(AGENT_GZIP_LEVEL),
            );
            gz.write_all(chunk)?;
            gz.finish()
        })
        .collect::<std::io::Result<Vec<Vec<u8>>>>()?;
    Ok(members.concat())
}

/// The agent's bytes on their way to a host, counted as the connection takes them.
struct CountedUpload<'a> {
    bytes: &'a [u8],
    sent: u64,
    progress: &'a dyn Fn(u64),
}

impl Read for CountedUpload<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read(out)?;
        if n > 0 {
            self.sent += n as u64;
            (self.progress)(self.sent);
        }
        Ok(n)
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
        r#"p=${var}; while :; do s=$(stat -c '%u %a' -- "$p") || exit {code}; u=${{s%% *}}; m=0${{s#* }}; if [ "$u" != 0 ] || {{ [ $((m & 022)) -ne 0 ] && {{ [ "$p" = "${var}" ] || [ $((m & 01000)) -eq 0 ]; }}; }}; then echo "sealer: refusing to {doing}: $p is owned by uid $u with mode ${{s#* }}; it and every directory above it must be owned by root and writable by root only (choose another data root: --data-root, or dataRoot in the Clusterfile)" >&2; exit {code}; fi; [ "$p" = / ] && break; p=${{p%/*}}; [ -n "$p" ] || p=/; done"#,
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

    /// `gzip -dc` of `gz` by the program `decoder` (`gzip`, or `busybox gzip`).
    fn gunzip(decoder: &[&str], gz: &[u8]) -> Option<Vec<u8>> {
        use std::io::Write;
        let mut child = std::process::Command::new(decoder[0])
            .args(&decoder[1..])
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let input = gz.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        out.status.success().then_some(out.stdout)
    }

    #[test]
    fn the_agent_in_parallel_gzip_members_is_undone_by_gnu_gzip_and_busybox() {
        // Several members, the last one short; bytes that compress like a program's.
        let agent: Vec<u8> = (0..(2 * AGENT_GZIP_MEMBER + 12345))
            .map(|i| ((i / 7) % 251) as u8 ^ (i % 3) as u8)
            .collect();
        let gz = gzip_members(&agent).unwrap();
        assert!(
            gz.len() < agent.len() / 2,
            "{} of {}",
            gz.len(),
            agent.len()
        );
        assert!(gunzip(&["gzip"], &gz) == Some(agent.clone()), "GNU gzip");
        if std::process::Command::new("busybox")
            .arg("true")
            .output()
            .is_ok()
        {
            assert!(
                gunzip(&["busybox", "gzip"], &gz) == Some(agent),
                "busybox gzip"
            );
        } else {
            eprintln!("busybox is not installed (scripts/ci-deps.sh); checked with GNU gzip only");
        }
    }

    #[test]
    fn a_streaming_agent_command_gets_the_short_stall_timeout() {
        assert!(stream_stall() >= Duration::from_secs(10));
        assert!(stream_stall() <= Duration::from_secs(20));
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
