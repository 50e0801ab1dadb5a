//! How the deploy engine talks to a host: run a command, optionally feeding it a stream on stdin.
//!
//! [`Remote`] is implemented over SSH (`ssh` module) and for this machine ([`LocalHost`]), so
//! the engine has one code path for both. This module must not know what the commands mean.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

/// What a finished command returned.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Exit status; `-1` when it died of a signal.
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

    /// The last lines of stderr (or stdout when stderr is empty), for error messages.
    pub fn tail(&self) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) { &self.stderr } else { &self.stdout };
        let text = String::from_utf8_lossy(text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }
}

/// Why talking to a host failed (as opposed to a command on it failing).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{host}: cannot connect: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("{host}: authentication failed for user {user}: {reason}")]
    AuthFailed { host: String, user: String, reason: String },
    #[error("{host}: {reason}")]
    HostKey { host: String, reason: String },
    #[error("{host}: {operation} timed out")]
    Timeout { host: String, operation: String },
    #[error("{host}: {reason}")]
    Transport { host: String, reason: String },
}

impl RemoteError {
    /// Errors worth retrying (the network may come back); a refused key or host key is final.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Unreachable { .. } | RemoteError::Timeout { .. } | RemoteError::Transport { .. })
    }
}

/// A host the engine can run commands on.
pub trait Remote: Send {
    /// Run `command` with `sh -c` semantics (as root: transports for non-root users add sudo),
    /// feeding `stdin` to it when given, and wait for it to finish.
    fn exec(&mut self, command: &str, stdin: Option<&mut dyn Read>) -> Result<ExecOutput, RemoteError>;

    /// True for this machine (the engine then reads payload bytes directly instead of sending them).
    fn is_local(&self) -> bool {
        false
    }
}

/// This machine, through `sh -c`.
pub struct LocalHost;

impl Remote for LocalHost {
    fn exec(&mut self, command: &str, stdin: Option<&mut dyn Read>) -> Result<ExecOutput, RemoteError> {
        let fail = |e: io::Error| RemoteError::Transport { host: "localhost".into(), reason: e.to_string() };
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(fail)?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = out {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = err {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A command that exits early closes its stdin; that is its business, not an error here.
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = input.read(&mut buf).map_err(fail)?;
                if n == 0 || pipe.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        let status = child.wait().map_err(fail)?;
        Ok(ExecOutput {
            status: status.code().unwrap_or(-1),
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        })
    }

    fn is_local(&self) -> bool {
        true
    }
}
