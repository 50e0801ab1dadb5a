//! The cluster's lock on master0, taken through the agent after preflight and held until the
//! engine's run ends: two installers on different machines (each with its own lock under its
//! `$SEALER_ROOT`) never change one cluster at once. A dedicated connection runs `agent lock`
//! ([`crate::agent::protocol::AgentCommand::Lock`]), whose stdin this side keeps open, with a
//! byte every [`KEEPALIVE`], for as long as the lock is needed; dropping [`HeldLock`] closes it.
//! An installer that dies loses its SSH session, the agent's stdin closes and the kernel
//! releases the lock, so a dead holder's lock is taken over by the next run. A holder that
//! died on this machine may still hold master0's lock for a moment (until its session's end
//! reaches master0, at most the agent's stall timeout): the next run waits for it to let go.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{Engine, ExecOutput, HostSlot, RemoteError};
use crate::agent::protocol::{AgentCommand, EXIT_LOCKED};

/// How often the held lock's stdin gets a byte (the agent gives up on a silent stdin).
const KEEPALIVE: Duration = Duration::from_secs(2);
/// What a clean end sends before closing the held lock's stdin; without it the agent leaves
/// the holder's words in the file, so the next run can say whose change did not finish.
const RELEASE: &[u8] = b"r";
/// How long taking the lock may take before the run gives up.
const TAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a lock still held by a holder known to be dead is asked for again.
const DEAD_HOLDER_POLL: Duration = Duration::from_millis(500);

/// Why master0's lock was not taken.
enum Refused {
    /// Another installer holds it: its words.
    Held(String),
    Failed(String),
}

/// The lock, held until dropped.
pub(super) struct HeldLock {
    feeder: Option<UnixStream>,
    holder: Option<std::thread::JoinHandle<Result<ExecOutput, RemoteError>>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // `r` then EOF on the agent's stdin: it clears the holder, releases the lock and exits.
        if let Some(mut feeder) = self.feeder.take() {
            use std::io::Write;
            let _ = feeder.write_all(RELEASE);
        }
        if let Some(thread) = self.holder.take() {
            let _ = thread.join();
        }
    }
}

/// The held lock's stdin: a byte every [`KEEPALIVE`] until the other end is dropped.
struct Keepalive(UnixStream);

impl Read for Keepalive {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut one = [0u8; 1];
        match self.0.read(&mut one) {
            Ok(0) => Ok(0),
            Ok(_) => match buf.first_mut() {
                Some(b) => {
                    *b = one[0];
                    Ok(1)
                }
                None => Ok(0),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                match buf.first_mut() {
                    Some(b) => {
                        *b = b'\n';
                        Ok(1)
                    }
                    None => Ok(0),
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl Engine<'_> {
    /// The lock file on master0.
    fn lock_file(&self) -> std::path::PathBuf {
        self.cluster
            .data_root
            .join(".agent")
            .join(format!("{}.lock", self.cluster.name))
    }

    /// Takes the cluster's lock on master0 for `holder` (who this run is, as the lock names
    /// it), after master0's preflight and before anything changes. `master0` is its slot,
    /// connected and with the agent in place. Refused with who holds it; then no host is
    /// worked on (each fails `not started` with the reason, see `schedule`).
    pub(super) fn take_cluster_lock(
        &self,
        master0: &mut HostSlot,
        holder: &str,
    ) -> Result<HeldLock, String> {
        // The agent of a holder that died here exits within its stall timeout of losing its
        // session; a little more for the session's end to reach master0.
        let grace = super::launch::stream_stall() + Duration::from_secs(5);
        let started = Instant::now();
        let mut noted = false;
        loop {
            let by = match self.try_cluster_lock(master0, holder) {
                Ok(held) => return Ok(held),
                Err(Refused::Failed(why)) => return Err(why),
                Err(Refused::Held(by)) => by,
            };
            let dead = self
                .opts
                .dead_holder
                .as_deref()
                .is_some_and(|d| d.trim() == by.trim());
            if !dead || started.elapsed() > grace {
                return Err(format!(
                    "cluster {} is being changed by {by} (lock on master0 {}); wait until it finishes, or stop it and run again",
                    self.cluster.name, master0.host.ip
                ));
            }
            if !noted {
                noted = true;
                (self.events)(super::InstallEvent::Note {
                    host: Some(master0.host.ip),
                    text: format!(
                        "the lock on master0 is still held for {by}, which ended on this machine; waiting up to {}s for its session there to end",
                        grace.as_secs()
                    ),
                });
            }
            std::thread::sleep(DEAD_HOLDER_POLL);
        }
    }

    /// One attempt at master0's lock (see [`Engine::take_cluster_lock`]).
    fn try_cluster_lock(&self, master0: &mut HostSlot, holder: &str) -> Result<HeldLock, Refused> {
        let file = self.lock_file();
        let mut remote = (self.opts.connect)(&master0.host).map_err(|e| {
            Refused::Failed(format!("connecting to master0 for the cluster's lock: {e}"))
        })?;
        let cmd = self
            .agent_cmd(
                remote.as_ref(),
                &AgentCommand::Lock {
                    file: file.clone(),
                    holder: holder.to_string(),
                },
            )
            .map_err(|e| Refused::Failed(e.message))?;
        let look = format!(
            "cat {} 2>/dev/null; true",
            crate::clusterfile::shell_quote(&file.display().to_string())
        );
        // A holder that ended cleanly left the file empty: words in it now name one that died.
        // Read before the lock is asked for, which writes this run's words over them.
        let before = self
            .exec(master0, &look, None)
            .map(|out| out.stdout_text())
            .unwrap_or_default();
        let taking = |e: std::io::Error| Refused::Failed(format!("taking the cluster's lock: {e}"));
        let (feeder, fed) = UnixStream::pair().map_err(taking)?;
        fed.set_read_timeout(Some(KEEPALIVE)).map_err(taking)?;
        let thread = std::thread::spawn(move || {
            let mut input = Keepalive(fed);
            remote.exec(&cmd, Some(&mut input))
        });
        let mut held = HeldLock {
            feeder: Some(feeder),
            holder: Some(thread),
        };
        let started = Instant::now();
        // The agent takes the lock within milliseconds of starting: look again soon, then less
        // often (a fixed 100 ms wait was a tenth of a local install).
        let mut pause = Duration::from_millis(5);
        loop {
            if held.holder.as_ref().is_some_and(|t| t.is_finished()) {
                let result = held.holder.take().map(|t| t.join());
                return Err(match result {
                    Some(Ok(Ok(out))) if out.status == EXIT_LOCKED => {
                        Refused::Held(out.stderr_text().trim().to_string())
                    }
                    Some(Ok(Ok(out))) => Refused::Failed(format!(
                        "taking the cluster's lock on master0 exited with status {}: {}",
                        out.status,
                        out.tail()
                    )),
                    Some(Ok(Err(e))) => {
                        Refused::Failed(format!("taking the cluster's lock on master0: {e}"))
                    }
                    _ => Refused::Failed("taking the cluster's lock on master0 failed".into()),
                });
            }
            let now = self
                .exec(master0, &look, None)
                .map(|out| out.stdout_text())
                .map_err(|e| {
                    Refused::Failed(format!(
                        "reading the cluster's lock on master0: {}",
                        e.message
                    ))
                })?;
            if now.trim() == holder.trim() {
                let before = before.trim();
                if !before.is_empty() && before != holder.trim() {
                    (self.events)(super::InstallEvent::Note {
                        host: Some(master0.host.ip),
                        text: format!(
                            "the last change to cluster {}, {before}, did not finish; taking over its lock on master0",
                            self.cluster.name
                        ),
                    });
                }
                return Ok(held);
            }
            if started.elapsed() > TAKE_TIMEOUT {
                return Err(Refused::Failed(format!(
                    "the cluster's lock on master0 ({}) was not taken within {}s",
                    file.display(),
                    TAKE_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}
