//! `run`: one hook or CMD under supervision. The script arrives on stdin with its env (never in
//! a command line), is written to a private file, runs in a process group of its own that is
//! killed when it outlives its timeout or the session that started it, and only a bounded head
//! and tail of its output is passed on.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::input::Input;
use super::io_context;
use super::protocol::{HookRequest, EXIT_TIMED_OUT};
use crate::ssh::KeptOutput;

/// Bytes of a hook's stdout and of its stderr kept from the start, and from the end.
const HOOK_OUTPUT_HEAD: usize = 64 << 10;
const HOOK_OUTPUT_TAIL: usize = 64 << 10;

/// Creates `dir` (and its parents) and makes it readable by root alone.
fn private_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(io_context(format!("creating {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_context(format!("making {} private", dir.display())))
}

/// `run`: runs the [`HookRequest`] on stdin and returns the exit status to report:
/// the script's, [`EXIT_TIMED_OUT`] when it outlived its timeout. Its stdout and stderr are
/// passed on after it ends, each cut to a bounded head and tail.
pub(super) fn run_hook(work: &Path) -> Result<i32, String> {
    let mut text = Vec::new();
    Input::stdin()
        .take(64 << 20)
        .read_to_end(&mut text)
        .map_err(io_context("reading the hook request"))?;
    let request: HookRequest =
        serde_json::from_slice(&text).map_err(|e| format!("the hook request is malformed: {e}"))?;
    drop(text);
    private_dir(work)?;
    let export_file = std::path::PathBuf::from(&request.export_file);
    if let Some(dir) = export_file.parent() {
        private_dir(dir)?;
    }
    let _ = fs::remove_file(&export_file);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&export_file)
        .map_err(io_context(format!("creating {}", export_file.display())))?;
    // The script goes to a private file, not into a command line.
    let scripts = work.join("run");
    private_dir(&scripts)?;
    let script = scripts.join(format!("hook-{}.sh", std::process::id()));
    let _ = fs::remove_file(&script);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&script)
        .and_then(|mut f| f.write_all(request.script.as_bytes()))
        .map_err(io_context(format!("writing {}", script.display())))?;
    let result = supervise(&request, &script);
    let _ = fs::remove_file(&script);
    // A script that replaced the file must not make it readable to others.
    if fs::symlink_metadata(&export_file).is_ok_and(|m| m.is_file()) {
        let _ = fs::set_permissions(&export_file, fs::Permissions::from_mode(0o600));
    }
    result
}

fn spawn_shell(
    shell: &str,
    request: &HookRequest,
    script: &Path,
) -> io::Result<std::process::Child> {
    let mut command = std::process::Command::new(shell);
    command
        .arg(script)
        .current_dir(&request.dir)
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    command.spawn()
}

/// Runs the script in a process group of its own and waits for it, killing the group when the
/// timeout passes or the session that started the agent is gone.
fn supervise(request: &HookRequest, script: &Path) -> Result<i32, String> {
    let mut child = match spawn_shell("bash", request, script) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => spawn_shell("sh", request, script),
        other => other,
    }
    .map_err(io_context(format!(
        "starting the script in {}",
        request.dir
    )))?;
    let group = child.id() as libc::pid_t;
    let keep = |pipe: Option<Box<dyn Read + Send>>| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut kept = KeptOutput::new(HOOK_OUTPUT_HEAD, HOOK_OUTPUT_TAIL);
            if let Some(mut pipe) = pipe {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.push(&buf[..n]);
                }
            }
            let _ = sender.send(kept.into_bytes());
        });
        receiver
    };
    let stdout = keep(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = keep(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let session = Session::watch();
    let started = Instant::now();
    let timeout = Duration::from_secs(request.timeout_secs.max(1));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the script: {e}")),
        }
        if started.elapsed() >= timeout {
            kill_group(group, &mut child);
            let mut err = stderr
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            let _ = io::stdout().write_all(
                &stdout
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or_default(),
            );
            err.extend_from_slice(
                format!(
                    "\nsealer agent: the script ran longer than its timeout of {}s; it was killed with its process group\n",
                    timeout.as_secs()
                )
                .as_bytes(),
            );
            let _ = io::stderr().write_all(&err);
            return Ok(EXIT_TIMED_OUT);
        }
        if session.gone() {
            kill_group(group, &mut child);
            return Err("the session that started the script is gone; the script was killed with its process group".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Background processes the script started may keep its pipes open: wait a moment, not forever.
    let out = stdout
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    let err = stderr
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    let _ = io::stdout().write_all(&out);
    let _ = io::stderr().write_all(&err);
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// SIGTERM to the whole group, SIGKILL to what is left after 5 s.
fn kill_group(group: libc::pid_t, child: &mut std::process::Child) {
    // SAFETY: signals a process group this agent created (the child's own).
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; members that ignored SIGTERM, and the child if it is still there.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}

/// Whether the session that started the agent (sshd's channel, or the local installer) still
/// exists: the agent's parent is replaced when it dies, and the reading end of its stdout
/// closes when the channel or the installer goes.
struct Session {
    parent: libc::pid_t,
}

impl Session {
    fn watch() -> Self {
        // SAFETY: getppid has no preconditions.
        Session {
            parent: unsafe { libc::getppid() },
        }
    }

    fn gone(&self) -> bool {
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: io::stdout().as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
}
