//! SSH transport of the deploy engine: one [`Session`] per host (libssh2 through `ssh2`, with
//! vendored OpenSSL so the static installer needs nothing on the machine it runs on).
//!
//! Owns connecting (TCP connect timeout, AES-GCM preferred, host key checked against
//! `known_hosts` or a pinned key, password / key / agent authentication),
//! running commands over exec channels with the environment exported and non-root users wrapped
//! in `sudo -n`, streaming large stdin (how frames travel; SFTP is not used), and uploading a file
//! with a remote sha256 check. Nothing may hang forever: blocking calls run under a watchdog that
//! shuts the socket down, and streaming loops watch keepalive replies. It never prints, logs or
//! stores a password. It does not know what an image or a journal is. A host behind a jump
//! host is reached through a `direct-tcpip` channel of a session to the jump host (`tunnel`),
//! both sessions checked and authenticated the same way.

mod kept;
pub mod key_file;
mod known_hosts;
mod tunnel;
mod watchdog;

pub use kept::KeptOutput;

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ssh2::{BlockDirections, ErrorCode, MethodType};

use crate::hashing::HashingReader;
use crate::host_key::HostKeyPin;
use crate::secret::Secret;
use crate::shell::{export_script, shell_quote};
use known_hosts::Verdict;
use watchdog::Watchdog;

/// Ciphers in order of preference: AES-GCM runs on AES-NI through OpenSSL and needs no separate
/// MAC, while libssh2's chacha20-poly1305 is portable C (research: techniques.md §2.5, §5.2).
pub const CIPHER_PREFERENCE: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes256-ctr,aes192-ctr,chacha20-poly1305@openssh.com";
const HOST_KEY_PREFERENCE: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];
/// Bytes of a command's stdout, and of its stderr, kept from the start and from the end; the
/// rest is counted and left out (see [`KeptOutput`]). Large enough for every answer the agent
/// gives; a runaway command cannot grow the installer beyond it.
pub const OUTPUT_HEAD: usize = 8 << 20;
pub const OUTPUT_TAIL: usize = 1 << 20;
/// Size of the stdin chunks handed to the channel.
pub const STDIN_CHUNK: usize = 1 << 20;
const LIBSSH2_EAGAIN: i32 = -37;

/// How to prove who we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Password(Secret),
    /// A private key file (`~/` is expanded) and its passphrase.
    Key {
        path: PathBuf,
        passphrase: Option<Secret>,
    },
    /// An ssh-agent, every identity in turn: the one listening on `socket`, or with `None` the
    /// one at `$SSH_AUTH_SOCK`, then `~/.ssh/id_ed25519`, `~/.ssh/id_ecdsa` and `~/.ssh/id_rsa`.
    Agent {
        socket: Option<PathBuf>,
    },
}

/// How to decide whether the server is who it claims to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// OpenSSH `known_hosts` file: unknown hosts are accepted and appended, changed keys refused.
    KnownHosts(PathBuf),
    /// Only this key is accepted (from the Clusterfile); the file is not consulted.
    Pinned(HostKeyPin),
}

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub ip: IpAddr,
    pub port: u16,
    /// The host name `ip` was resolved from, shown beside it in messages.
    pub name: Option<String>,
    pub user: String,
    pub auth: Auth,
    pub host_key_policy: HostKeyPolicy,
    /// The jump host the connection goes through (its own address, user, auth and host key
    /// check), or `None` to connect directly.
    pub jump: Option<Box<SshTarget>>,
}

impl SshTarget {
    /// `user@ip`, `user@ip:port`, `user@[v6]:port` or `user@name (ip)`, the name used in every
    /// message.
    pub fn display_name(&self) -> String {
        let address = crate::address::HostAddress {
            ip: self.ip,
            name: self.name.clone(),
            port: Some(self.port),
        };
        format!("{}@{address}", self.user)
    }
}

/// `~/.ssh/known_hosts` of the user running the installer.
pub fn default_known_hosts() -> PathBuf {
    home_dir().join(".ssh/known_hosts")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn expand_home(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home_dir().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// Time limits; nothing waits longer than these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// SSH handshake plus authentication, and each blocking step (opening or closing a channel).
    pub handshake: Duration,
    /// A host that sends nothing (not even keepalive replies) for this long is declared lost.
    pub idle: Duration,
    /// Keepalive interval while waiting on a remote command.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// What went wrong, by kind, so the engine can decide whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host}: unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("{host}: {operation} timed out after {}s; the host stopped answering", .after.as_secs())]
    Timeout {
        host: String,
        operation: String,
        after: Duration,
    },
    #[error("{host}: authentication by {method} failed: {reason}")]
    AuthFailed {
        host: String,
        method: String,
        reason: String,
    },
    #[error("{host}: host key changed: {detail}")]
    HostKeyChanged { host: String, detail: String },
    #[error("{host}: `{command}` exited with status {status}: {}", stderr_tail(.stderr))]
    Remote {
        host: String,
        command: String,
        status: i32,
        stderr: String,
    },
    #[error("{host}: SSH failure during {operation}: {message}")]
    Protocol {
        host: String,
        operation: String,
        message: String,
    },
    #[error("{host}: {what}: {source}")]
    Local {
        host: String,
        what: String,
        source: io::Error,
    },
}

fn stderr_tail(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        return "(no stderr)".to_string();
    }
    let tail: Vec<&str> = trimmed.lines().rev().take(5).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

impl SshError {
    /// Worth retrying later (network trouble), as opposed to a configuration problem.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::Unreachable { .. } | SshError::Timeout { .. } | SshError::Protocol { .. }
        )
    }
}

/// Result of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; -1 when the command was killed by a signal or the status was not sent.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The last lines of stderr (or of stdout when stderr is empty), for error messages.
    pub fn tail(&self) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stderr
        } else {
            &self.stdout
        };
        let text = String::from_utf8_lossy(text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }
}

/// An authenticated SSH connection to one host. Use one per host per thread.
pub struct Session {
    target: SshTarget,
    timeouts: Timeouts,
    sess: ManuallyDrop<ssh2::Session>,
    socket: TcpStream,
    // Declared after `sess` so that the session is freed while the watchdog can still cut it.
    watchdog: Watchdog,
    name: String,
    /// Bytes carried through the jump host, both ways (`None` for a direct connection).
    relayed: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("host", &self.name).finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Saying goodbye and freeing libssh2's state may block on a dead peer: bound it.
        let _armed = self
            .watchdog
            .arm(self.timeouts.handshake.min(Duration::from_secs(5)));
        self.sess.set_blocking(true);
        let _ = self.sess.disconnect(None, "sealer done", None);
        // SAFETY: `sess` is dropped exactly once, here, and never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.sess) };
    }
}

fn is_eagain(e: &ssh2::Error) -> bool {
    e.code() == ErrorCode::Session(LIBSSH2_EAGAIN)
}

impl Session {
    /// Connects, checks the host key and authenticates, within `timeouts`. Sessions on several
    /// threads at once are safe only because the vendored OpenSSL is built with threads
    /// (`.cargo/openssl-configure`).
    pub fn connect(target: &SshTarget, timeouts: Timeouts) -> Result<Session, SshError> {
        let name = target.display_name();
        let (socket, relayed) = match &target.jump {
            None => (Self::connect_tcp(target, &name, timeouts)?, None),
            Some(jump) => {
                let jump_name = jump.display_name();
                let through = |e: SshError| through_jump(e, &jump_name, &name);
                if jump.jump.is_some() {
                    return Err(through(SshError::Unreachable {
                        host: jump_name.clone(),
                        reason: "a jump host behind another jump host is not supported".into(),
                    }));
                }
                let session = {
                    let _slot = tunnel::handshake_slot(jump.ip, jump.port);
                    Session::connect(jump, timeouts).map_err(through)?
                };
                let relayed = Arc::new(AtomicU64::new(0));
                let socket = tunnel::open(session, target.ip, target.port, relayed.clone())
                    .map_err(through)?;
                (socket, Some(relayed))
            }
        };
        let mut session = Self::over(target, name, socket, timeouts)?;
        session.relayed = relayed;
        session.establish()?;
        Ok(session)
    }

    fn connect_tcp(
        target: &SshTarget,
        name: &str,
        timeouts: Timeouts,
    ) -> Result<TcpStream, SshError> {
        let addr = SocketAddr::new(target.ip, target.port);
        TcpStream::connect_timeout(&addr, timeouts.connect).map_err(|e| {
            let reason = match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
                    "no answer within {}s (host down, wrong address or a firewall)",
                    timeouts.connect.as_secs()
                ),
                io::ErrorKind::ConnectionRefused => {
                    format!(
                        "connection refused on port {} (is sshd running?)",
                        target.port
                    )
                }
                _ => e.to_string(),
            };
            SshError::Unreachable {
                host: name.to_string(),
                reason,
            }
        })
    }

    /// A session over a connected socket, not yet handshaken.
    fn over(
        target: &SshTarget,
        name: String,
        socket: TcpStream,
        timeouts: Timeouts,
    ) -> Result<Session, SshError> {
        let _ = socket.set_nodelay(true);
        let local = |what: &str, source: io::Error| SshError::Local {
            host: name.clone(),
            what: what.to_string(),
            source,
        };
        let watchdog = Watchdog::spawn(
            socket
                .try_clone()
                .map_err(|e| local("duplicating the socket", e))?,
        );
        let mut sess = ssh2::Session::new().map_err(|e| SshError::Protocol {
            host: name.clone(),
            operation: "session setup".into(),
            message: e.message().to_string(),
        })?;
        sess.set_tcp_stream(
            socket
                .try_clone()
                .map_err(|e| local("duplicating the socket", e))?,
        );
        sess.set_timeout(timeouts.handshake.as_millis().min(u32::MAX as u128) as u32);
        Ok(Session {
            target: target.clone(),
            timeouts,
            sess: ManuallyDrop::new(sess),
            socket,
            watchdog,
            name,
            relayed: None,
        })
    }

    /// Bytes carried through the jump host so far (0 for a direct connection).
    pub fn relayed_bytes(&self) -> u64 {
        self.relayed
            .as_ref()
            .map_or(0, |r| r.load(Ordering::Relaxed))
    }

    fn establish(&mut self) -> Result<(), SshError> {
        let _armed = self.watchdog.arm(self.timeouts.handshake);
        let host_keys = self.host_key_preference();
        for (method, prefs) in [
            (MethodType::CryptCs, CIPHER_PREFERENCE.to_string()),
            (MethodType::CryptSc, CIPHER_PREFERENCE.to_string()),
            (MethodType::HostKey, host_keys),
        ] {
            self.sess
                .method_pref(method, &prefs)
                .map_err(|e| self.protocol("method preferences", &e))?;
        }
        self.sess
            .handshake()
            .map_err(|e| self.protocol("SSH handshake", &e))?;
        self.check_host_key()?;
        self.authenticate()?;
        let interval = self.timeouts.keepalive.as_secs().clamp(1, u32::MAX as u64) as u32;
        self.sess.set_keepalive(true, interval);
        Ok(())
    }

    /// Known key types of this host first (as OpenSSH does), so a host known by its RSA key is
    /// not reported as changed because it also offers ed25519.
    fn host_key_preference(&self) -> String {
        let mut known: Vec<String> = match &self.target.host_key_policy {
            HostKeyPolicy::Pinned(HostKeyPin::PublicKey { algorithm, .. }) => {
                vec![algorithm.clone()]
            }
            HostKeyPolicy::Pinned(HostKeyPin::Sha256(_)) => Vec::new(),
            HostKeyPolicy::KnownHosts(path) => std::fs::read_to_string(path)
                .map(|text| {
                    known_hosts::plain_entries(&text, &self.host_pattern())
                        .into_iter()
                        .map(|(_, algorithm, _)| algorithm)
                        .collect()
                })
                .unwrap_or_default(),
        };
        if known.iter().any(|a| a == "ssh-rsa") {
            known.splice(
                0..0,
                ["rsa-sha2-512".to_string(), "rsa-sha2-256".to_string()],
            );
        }
        let mut prefs: Vec<String> = Vec::new();
        for a in known
            .iter()
            .map(String::as_str)
            .chain(HOST_KEY_PREFERENCE.iter().copied())
        {
            if HOST_KEY_PREFERENCE.contains(&a) && !prefs.iter().any(|p| p == a) {
                prefs.push(a.to_string());
            }
        }
        prefs.join(",")
    }

    fn host_pattern(&self) -> String {
        crate::address::known_hosts_pattern(self.target.ip, self.target.port)
    }

    fn check_host_key(&self) -> Result<(), SshError> {
        let Some((blob, _)) = self.sess.host_key() else {
            return Err(self.protocol_msg("host key check", "the server sent no host key"));
        };
        let blob = blob.to_vec();
        let fingerprint = format!(
            "SHA256:{}",
            known_hosts::base64_encode(&Sha256::digest(&blob)).trim_end_matches('=')
        );
        match &self.target.host_key_policy {
            HostKeyPolicy::Pinned(pin) => {
                if pin.matches(&blob) {
                    Ok(())
                } else {
                    Err(SshError::HostKeyChanged {
                        host: self.name.clone(),
                        detail: format!(
                            "the server presents {fingerprint}, not the key pinned in the Clusterfile; if the host was reinstalled, update its hostKey, otherwise someone may be intercepting the connection"
                        ),
                    })
                }
            }
            HostKeyPolicy::KnownHosts(path) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                    Err(e) => {
                        return Err(SshError::Local {
                            host: self.name.clone(),
                            what: format!("reading {}", path.display()),
                            source: e,
                        })
                    }
                };
                let pattern = self.host_pattern();
                let mut verdict = known_hosts::check_plain(&text, &pattern, &blob);
                if verdict == Verdict::Unknown && text.contains("|1|") {
                    verdict = self.check_hashed(path, &blob);
                }
                let remove = format!("ssh-keygen -R '{pattern}' -f {}", path.display());
                match verdict {
                    Verdict::Known => Ok(()),
                    Verdict::Unknown => {
                        known_hosts::append(path, &pattern, &blob).map_err(|e| SshError::Local {
                            host: self.name.clone(),
                            what: format!("recording the host key in {}", path.display()),
                            source: e,
                        })?;
                        // Trust on first use is only as good as someone looking: say it.
                        eprintln!(
                            "[{}] new host key {fingerprint} recorded in {} (compare it with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the host; pin it with hostKey in a Clusterfile)",
                            self.name,
                            path.display()
                        );
                        Ok(())
                    }
                    Verdict::Changed { line, algorithm } => Err(SshError::HostKeyChanged {
                        host: self.name.clone(),
                        detail: format!(
                            "{}:{line} holds a different {algorithm} key than the {fingerprint} the server presents; if the host was reinstalled, remove line {line} of {} (or run {remove}) and retry, otherwise someone may be intercepting the connection",
                            path.display(),
                            path.display()
                        ),
                    }),
                    Verdict::ChangedHashed => Err(SshError::HostKeyChanged {
                        host: self.name.clone(),
                        detail: format!(
                            "a hashed entry in {} holds a different key than the {fingerprint} the server presents; if the host was reinstalled, run {remove} and retry, otherwise someone may be intercepting the connection",
                            path.display()
                        ),
                    }),
                }
            }
        }
    }

    fn check_hashed(&self, path: &Path, blob: &[u8]) -> Verdict {
        let Ok(mut kh) = self.sess.known_hosts() else {
            return Verdict::Unknown;
        };
        if kh
            .read_file(path, ssh2::KnownHostFileKind::OpenSSH)
            .is_err()
        {
            return Verdict::Unknown;
        }
        match kh.check_port(&self.target.ip.to_string(), self.target.port, blob) {
            ssh2::CheckResult::Match => Verdict::Known,
            ssh2::CheckResult::Mismatch => Verdict::ChangedHashed,
            _ => Verdict::Unknown,
        }
    }

    fn authenticate(&self) -> Result<(), SshError> {
        let user = self.target.user.clone();
        let failed = |method: &str, reason: String| SshError::AuthFailed {
            host: self.name.clone(),
            method: method.to_string(),
            reason,
        };
        let result = match &self.target.auth {
            Auth::Password(password) => self
                .sess
                .userauth_password(&user, password.expose())
                .map_err(|e| {
                    self.timeout_or(
                        "authentication",
                        failed(
                            "password",
                            format!(
                                "the server refused the password for user {user} ({})",
                                e.message()
                            ),
                        ),
                    )
                }),
            Auth::Key { path, passphrase } => {
                let path = expand_home(path);
                if !path.is_file() {
                    return Err(failed(
                        "key",
                        format!("private key {} does not exist", path.display()),
                    ));
                }
                self.sess
                    .userauth_pubkey_file(&user, None, &path, passphrase.as_ref().map(Secret::expose))
                    .map_err(|e| {
                        self.timeout_or(
                            "authentication",
                            failed(
                                "key",
                                format!(
                                    "key {} for user {user} was not accepted ({}); check the key is authorized on the host and its passphrase",
                                    path.display(),
                                    e.message()
                                ),
                            ),
                        )
                    })
            }
            Auth::Agent { socket } => self.authenticate_agent(&user, socket.as_deref()),
        };
        result?;
        if self.sess.authenticated() {
            Ok(())
        } else {
            Err(failed(
                "ssh",
                format!("the server did not accept user {user}"),
            ))
        }
    }

    fn authenticate_agent(&self, user: &str, socket: Option<&Path>) -> Result<(), SshError> {
        let mut tried = Vec::new();
        if socket.is_some() || std::env::var_os("SSH_AUTH_SOCK").is_some() {
            if let Ok(mut agent) = self.sess.agent() {
                let located = match socket {
                    Some(path) => agent.set_identity_path(path).is_ok(),
                    None => true,
                };
                if located && agent.connect().is_ok() && agent.list_identities().is_ok() {
                    for identity in agent.identities().unwrap_or_default() {
                        if agent.userauth(user, &identity).is_ok() {
                            return Ok(());
                        }
                        tried.push(format!("agent key {}", identity.comment()));
                    }
                }
            }
        }
        let defaults: &[&str] = if socket.is_some() {
            &[]
        } else {
            &["id_ed25519", "id_ecdsa", "id_rsa"]
        };
        for name in defaults {
            let path = home_dir().join(".ssh").join(name);
            if path.is_file() {
                if self
                    .sess
                    .userauth_pubkey_file(user, None, &path, None)
                    .is_ok()
                {
                    return Ok(());
                }
                tried.push(path.display().to_string());
            }
        }
        if self.watchdog.fired() {
            return Err(self.timeout("authentication", self.timeouts.handshake));
        }
        Err(SshError::AuthFailed {
            host: self.name.clone(),
            method: "agent".into(),
            reason: if tried.is_empty() {
                "no ssh-agent and no key in ~/.ssh; give a password (-p) or a key (--pk)".into()
            } else {
                format!(
                    "no key was accepted for user {user} (tried {})",
                    tried.join(", ")
                )
            },
        })
    }

    fn timeout(&self, operation: &str, after: Duration) -> SshError {
        SshError::Timeout {
            host: self.name.clone(),
            operation: operation.to_string(),
            after,
        }
    }

    /// `error`, unless the watchdog cut the connection, which is then the real story.
    fn timeout_or(&self, operation: &str, error: SshError) -> SshError {
        if self.watchdog.fired() {
            self.timeout(operation, self.timeouts.handshake)
        } else {
            error
        }
    }

    fn protocol(&self, operation: &str, e: &ssh2::Error) -> SshError {
        let timed_out = e.code() == ErrorCode::Session(-9);
        if self.watchdog.fired() || timed_out {
            return self.timeout(operation, self.timeouts.handshake);
        }
        self.protocol_msg(operation, e.message())
    }

    fn protocol_msg(&self, operation: &str, message: &str) -> SshError {
        SshError::Protocol {
            host: self.name.clone(),
            operation: operation.to_string(),
            message: message.to_string(),
        }
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The cipher negotiated for client-to-server traffic (for reports).
    pub fn cipher(&self) -> Option<String> {
        self.sess.methods(MethodType::CryptCs).map(str::to_string)
    }

    /// The command line actually sent: env exports and `cmd` run by `sh -c`, under `sudo -n`
    /// for a non-root user (sudo must not ask for a password).
    pub fn wrap_command(&self, cmd: &str, env: &[(String, String)]) -> Result<String, SshError> {
        let exports = export_script(env).map_err(|e| SshError::Local {
            host: self.name.clone(),
            what: "preparing the command environment".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let script = format!("{exports}{cmd}");
        Ok(if self.target.user == "root" {
            format!("sh -c {}", shell_quote(&script))
        } else {
            format!("sudo -n -- sh -c {}", shell_quote(&script))
        })
    }

    /// Runs `cmd` with `env` exported, feeding it `stdin` (streamed in large chunks, then EOF),
    /// and collects its output whatever the exit status. A host that stops answering (no data
    /// and no keepalive replies for `idle`) gives [`SshError::Timeout`].
    pub fn exec(
        &mut self,
        cmd: &str,
        env: &[(String, String)],
        stdin: Option<&mut dyn Read>,
    ) -> Result<ExecOutput, SshError> {
        let line = self.wrap_command(cmd, env)?;
        let mut channel = {
            let _armed = self.watchdog.arm(self.timeouts.handshake);
            let mut channel = self
                .sess
                .channel_session()
                .map_err(|e| self.protocol("opening a channel", &e))?;
            channel
                .exec(&line)
                .map_err(|e| self.protocol("starting a command", &e))?;
            channel
        };
        let pumped = self.pump(&mut channel, stdin);
        self.sess.set_blocking(true);
        // Closing and freeing a channel can block (ssh2-rs#165): always under the watchdog.
        // The channel is freed (explicitly, below) while the watchdog is still armed: freeing it
        // after the guard was dropped would wait unbounded on a peer that vanished mid-transfer.
        let _armed = self.watchdog.arm(self.timeouts.handshake);
        let (stdout, stderr) = match pumped {
            Ok(output) => output,
            Err(e) => {
                // After a failed transfer the connection is not used again (the engine
                // reconnects). libssh2 may still hold part of an unsent packet and would retry
                // it for its whole timeout on every blocking call (channel free, disconnect,
                // session free) against a peer that is gone: cut the socket, free the channel
                // without blocking and give whatever comes later one second.
                if !matches!(e, SshError::Local { .. }) {
                    let _ = self.socket.shutdown(std::net::Shutdown::Both);
                    self.sess.set_timeout(1000);
                    self.sess.set_blocking(false);
                }
                drop(channel);
                return Err(e);
            }
        };
        let _ = channel.close();
        if let Err(e) = channel.wait_close() {
            let err = self.protocol("closing the channel", &e);
            drop(channel);
            return Err(err);
        }
        let status = match channel.exit_signal() {
            Ok(signal) if signal.exit_signal.is_some() => -1,
            _ => channel.exit_status().unwrap_or(-1),
        };
        drop(channel);
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// [`Session::exec`] that turns a non-zero exit into [`SshError::Remote`]; returns stdout.
    pub fn run(
        &mut self,
        cmd: &str,
        env: &[(String, String)],
        stdin: Option<&mut dyn Read>,
    ) -> Result<Vec<u8>, SshError> {
        let out = self.exec(cmd, env, stdin)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(SshError::Remote {
                host: self.name.clone(),
                command: summarize(cmd),
                status: out.status,
                stderr: out.stderr_text(),
            })
        }
    }

    /// Moves data both ways in non-blocking mode until the remote closes its output.
    fn pump(
        &self,
        channel: &mut ssh2::Channel,
        mut stdin: Option<&mut dyn Read>,
    ) -> Result<(Vec<u8>, Vec<u8>), SshError> {
        self.sess.set_blocking(false);
        let mut chunk = vec![0u8; if stdin.is_some() { STDIN_CHUNK } else { 0 }];
        let (mut start, mut end) = (0usize, 0usize);
        let mut stdin_done = stdin.is_none();
        let mut eof_sent = false;
        let mut stdout = KeptOutput::new(OUTPUT_HEAD, OUTPUT_TAIL);
        let mut stderr = KeptOutput::new(OUTPUT_HEAD, OUTPUT_TAIL);
        let (mut out_done, mut err_done) = (false, false);
        let mut buf = vec![0u8; 256 * 1024];
        let mut last_progress = Instant::now();
        let mut last_keepalive = Instant::now();
        let lost = |e: io::Error, what: &str| -> SshError {
            if e.kind() == io::ErrorKind::TimedOut {
                self.timeout(what, self.timeouts.idle)
            } else {
                self.protocol_msg(what, &e.to_string())
            }
        };
        loop {
            let mut progress = false;
            if !stdin_done && channel.eof() {
                stdin_done = true; // the command stopped reading; the rest is not wanted
            }
            if !stdin_done {
                if start == end {
                    if let Some(reader) = stdin.as_mut() {
                        let n = reader.read(&mut chunk).map_err(|e| SshError::Local {
                            host: self.name.clone(),
                            what: "reading the data to send".into(),
                            source: e,
                        })?;
                        if n == 0 {
                            stdin_done = true;
                        } else {
                            (start, end) = (0, n);
                        }
                    }
                }
                if start < end {
                    match channel.write(&chunk[start..end]) {
                        Ok(n) => {
                            start += n;
                            progress |= n > 0;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // The command exited without reading all of its input.
                        Err(_) if channel.eof() => stdin_done = true,
                        Err(e) => return Err(lost(e, "sending data")),
                    }
                }
            }
            if stdin_done && !eof_sent {
                match channel.send_eof() {
                    Ok(()) => {
                        eof_sent = true;
                        progress = true;
                    }
                    Err(e) if is_eagain(&e) => {}
                    Err(_) if channel.eof() => eof_sent = true,
                    Err(e) => return Err(self.protocol("sending end of input", &e)),
                }
            }
            if !out_done {
                match channel.read(&mut buf) {
                    Ok(0) => out_done = channel.eof(),
                    Ok(n) => {
                        stdout.push(&buf[..n]);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(lost(e, "reading output")),
                }
            }
            if !err_done {
                match channel.stderr().read(&mut buf) {
                    Ok(0) => err_done = channel.eof(),
                    Ok(n) => {
                        stderr.push(&buf[..n]);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(lost(e, "reading errors")),
                }
            }
            if out_done && err_done {
                return Ok((stdout.into_bytes(), stderr.into_bytes()));
            }
            let now = Instant::now();
            if progress {
                last_progress = now;
                continue;
            }
            if now.duration_since(last_progress) >= self.timeouts.idle
                && self.silent_for() >= self.timeouts.idle
            {
                let _ = self.socket.shutdown(std::net::Shutdown::Both);
                return Err(self.timeout("waiting for the remote command", self.timeouts.idle));
            }
            if now.duration_since(last_keepalive) >= self.timeouts.keepalive {
                let _ = self.sess.keepalive_send();
                last_keepalive = now;
            }
            self.wait_socket(Duration::from_millis(500));
        }
    }

    /// How long since the host last sent us anything (data or keepalive replies), from the
    /// kernel's TCP state.
    fn silent_for(&self) -> Duration {
        // SAFETY: getsockopt writes at most `len` bytes into `info`, a plain C struct.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                &mut info as *mut libc::tcp_info as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Duration::MAX;
        }
        Duration::from_millis(u64::from(info.tcpi_last_data_recv))
    }

    fn wait_socket(&self, limit: Duration) {
        let events = match self.sess.block_directions() {
            BlockDirections::Inbound => libc::POLLIN,
            BlockDirections::Outbound => libc::POLLOUT,
            BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
            BlockDirections::None => libc::POLLIN,
        };
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, bounded wait.
        unsafe {
            libc::poll(&mut pfd, 1, limit.as_millis().min(i32::MAX as u128) as i32);
        }
    }

    /// Writes `data` to `remote_path` with `mode`: streamed to a temporary file beside it,
    /// checked with the remote `sha256sum` against the digest of what was sent, then renamed
    /// into place (so the path holds the old file or the whole new one). Returns the sha256 hex.
    pub fn upload(
        &mut self,
        data: &mut dyn Read,
        remote_path: &Path,
        mode: u32,
    ) -> Result<String, SshError> {
        let path = remote_path.to_string_lossy().into_owned();
        let tmp = format!("{path}.sealer-upload");
        let dir = remote_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".into());
        let mut hashing = HashingReader::new(data);
        let receive = format!(
            "mkdir -p {dir} && cat > {tmp} && chmod {mode:o} {tmp} && sha256sum {tmp}",
            dir = shell_quote(&dir),
            tmp = shell_quote(&tmp),
        );
        let out = self.run(&receive, &[], Some(&mut hashing))?;
        let sent = hashing.hex_digest();
        let remote = String::from_utf8_lossy(&out)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        if remote != sent {
            let _ = self.exec(&format!("rm -f {}", shell_quote(&tmp)), &[], None);
            return Err(SshError::Remote {
                host: self.name.clone(),
                command: format!("upload to {path}"),
                status: 0,
                stderr: format!("checksum mismatch: sent sha256 {sent}, the host has {remote}"),
            });
        }
        self.run(
            &format!("mv -f {} {}", shell_quote(&tmp), shell_quote(&path)),
            &[],
            None,
        )?;
        Ok(sent)
    }

    /// [`Session::upload`] from memory.
    pub fn upload_bytes(
        &mut self,
        bytes: &[u8],
        remote_path: &Path,
        mode: u32,
    ) -> Result<String, SshError> {
        self.upload(&mut io::Cursor::new(bytes), remote_path, mode)
    }
}

/// `error` of the jump host, told as what kept `target` from being reached: the host becomes
/// `jump host J (for T)`, the rest (and so whether it is worth retrying) is unchanged.
fn through_jump(error: SshError, jump: &str, target: &str) -> SshError {
    let host = format!("jump host {jump} (for {target})");
    match error {
        SshError::Unreachable { reason, .. } => SshError::Unreachable { host, reason },
        SshError::Timeout {
            operation, after, ..
        } => SshError::Timeout {
            host,
            operation,
            after,
        },
        SshError::AuthFailed { method, reason, .. } => SshError::AuthFailed {
            host,
            method,
            reason,
        },
        SshError::HostKeyChanged { detail, .. } => SshError::HostKeyChanged { host, detail },
        SshError::Remote {
            command,
            status,
            stderr,
            ..
        } => SshError::Remote {
            host,
            command,
            status,
            stderr,
        },
        SshError::Protocol {
            operation, message, ..
        } => SshError::Protocol {
            host,
            operation,
            message,
        },
        SshError::Local { what, source, .. } => SshError::Local { host, what, source },
    }
}

/// The first line of a command, shortened, for messages (never the env, which may hold secrets).
fn summarize(cmd: &str) -> String {
    let first = cmd.lines().next().unwrap_or("").trim();
    let mut s: String = first.chars().take(100).collect();
    if s.len() < first.len() || cmd.trim().lines().count() > 1 {
        s.push_str(" ...");
    }
    s
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Session>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_command_summary_never_includes_the_environment() {
        assert_eq!(summarize("echo hi\nsecond line"), "echo hi ...");
        assert_eq!(summarize("true"), "true");
    }
}
