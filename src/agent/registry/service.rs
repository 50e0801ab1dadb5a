//! The registry as a service that outlives the SSH session that started it: a systemd unit
//! where systemd is PID 1, otherwise a supervised daemon (setsid, double fork, output to a log
//! file, a pid file locked for the supervisor's lifetime, a supervisor loop that restarts the
//! server with backoff). `start` is idempotent: a service running with the same arguments is
//! left alone, one that is down (a stale pid file, a process gone) is started again, one with
//! other arguments is replaced. `stop` stops it and removes the unit or pid file.
//!
//! Its files live in `WORK/registry/` (`WORK` is the cluster's work directory): `UNIT.pid`,
//! `UNIT.json` (what was started), `UNIT.log`, `UNIT.lock` (taken by `start` and `stop`), and
//! `sealer-agent-<sha256 prefix>`, the copy of the agent the service runs, so that the service
//! does not depend on where the installer put the agent this time. systemd's unit is
//! `/etc/systemd/system/UNIT.service`.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fs2::FileExt;
use sha2::{Digest, Sha256};

use crate::agent::protocol::{
    AgentCommand, RegistryCommand, ServiceManager, ServiceStatus, UnitName,
};

/// Where systemd's unit files written by the agent go.
const SYSTEMD_UNIT_DIR: &str = "/etc/systemd/system";
/// How long `start` waits for the registry to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `stop` waits for the supervisor to end after SIGTERM, and again after SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The supervisor's first and longest wait before restarting the server.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server that ran this long before it ended is restarted after the first wait again.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Why a service could not be started, stopped or asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("`systemctl {args}` failed ({status}): {stderr}")]
    Systemctl {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("the registry {unit} does not accept connections on {listen} after {secs} s; its log ({log}) ends: {tail}")]
    NotServing {
        unit: UnitName,
        listen: SocketAddr,
        secs: u64,
        log: String,
        tail: String,
    },
    #[error("the registry {unit}'s supervisor (pid {pid}) did not end after SIGTERM and SIGKILL")]
    Unkillable { unit: UnitName, pid: u32 },
    #[error("{0} holds a character systemd cannot take in a unit file (a control character)")]
    UnitText(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Io { what, source }
}

/// What to start: the layout at `root` served on `listen`, under `unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub unit: UnitName,
    pub root: PathBuf,
    pub listen: SocketAddr,
    pub work: PathBuf,
}

/// What `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// It ran with other arguments and was replaced.
    Restarted,
    /// It runs with these arguments already.
    Unchanged,
}

/// What `UNIT.json` records: what the running service was started with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Recorded {
    manager: ServiceManager,
    root: PathBuf,
    listen: SocketAddr,
    agent: PathBuf,
}

struct Files {
    dir: PathBuf,
    unit: UnitName,
}

impl Files {
    fn new(work: &Path, unit: &UnitName) -> Files {
        Files {
            dir: work.join("registry"),
            unit: unit.clone(),
        }
    }

    fn named(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.unit))
    }

    fn pid(&self) -> PathBuf {
        self.named("pid")
    }

    fn record(&self) -> PathBuf {
        self.named("json")
    }

    fn log(&self) -> PathBuf {
        self.named("log")
    }

    fn systemd_unit(&self) -> PathBuf {
        Path::new(SYSTEMD_UNIT_DIR).join(format!("{}.service", self.unit))
    }

    fn create_dir(&self) -> Result<(), ServiceError> {
        fs::create_dir_all(&self.dir)
            .map_err(io_err(format!("creating {}", self.dir.display())))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("making {} private", self.dir.display())))
    }

    /// Held while `start` or `stop` works on the unit, so that two never interleave.
    fn lock(&self) -> Result<fs::File, ServiceError> {
        self.create_dir()?;
        let path = self.named("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        FileExt::lock_exclusive(&file).map_err(io_err(format!("locking {}", path.display())))?;
        Ok(file)
    }

    fn read_record(&self) -> Option<Recorded> {
        let text = fs::read(self.record()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write_record(&self, record: &Recorded) -> Result<(), ServiceError> {
        let text = serde_json::to_vec_pretty(record).map_err(|e| ServiceError::Io {
            what: "encoding the service record".into(),
            source: io::Error::other(e),
        })?;
        write_atomic(&self.record(), &text, 0o600)
    }

    /// The supervisor's pid while it runs: it holds a lock on the pid file for its whole life,
    /// so a stale file (a killed supervisor, a reused pid) is never taken for a running one.
    fn daemon_pid(&self) -> Option<u32> {
        let mut file = fs::File::open(self.pid()).ok()?;
        if FileExt::try_lock_shared(&file).is_ok() {
            let _ = FileExt::unlock(&file);
            return None;
        }
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        text.trim().parse().ok()
    }

    /// The last line of the log, for an error message.
    fn log_tail(&self) -> String {
        let Ok(mut file) = fs::File::open(self.log()) else {
            return "(no log)".into();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(2048)));
        let mut text = String::new();
        let _ = file.take(2048).read_to_string(&mut text);
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(empty)")
            .to_string()
    }
}

/// systemd when it is PID 1 (`/run/systemd/system` exists), else the supervised daemon.
pub fn resolve_manager(choice: ServiceManager) -> ServiceManager {
    match choice {
        ServiceManager::Auto if Path::new("/run/systemd/system").is_dir() => {
            ServiceManager::Systemd
        }
        ServiceManager::Auto => ServiceManager::Daemon,
        chosen => chosen,
    }
}

/// Starts the registry `spec` describes under `manager` (see the module's doc) and waits until
/// it accepts connections.
pub fn start(spec: &ServiceSpec, manager: ServiceManager) -> Result<StartOutcome, ServiceError> {
    let files = Files::new(&spec.work, &spec.unit);
    let _lock = files.lock()?;
    let manager = resolve_manager(manager);
    let record = Recorded {
        manager,
        root: spec.root.clone(),
        listen: spec.listen,
        agent: stable_agent(&files.dir)?,
    };
    let outcome = match manager {
        ServiceManager::Systemd => start_systemd(spec, &files, &record)?,
        _ => start_daemon(spec, &files, &record)?,
    };
    if outcome != StartOutcome::Unchanged {
        wait_serving(spec, &files, manager)?;
    }
    Ok(outcome)
}

fn start_daemon(
    spec: &ServiceSpec,
    files: &Files,
    record: &Recorded,
) -> Result<StartOutcome, ServiceError> {
    let mut outcome = StartOutcome::Started;
    if files.daemon_pid().is_some() {
        if files.read_record().as_ref() == Some(record) {
            return Ok(StartOutcome::Unchanged);
        }
        stop_daemon(files)?;
        outcome = StartOutcome::Restarted;
    }
    files.write_record(record)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(files.log())
        .map_err(io_err(format!("opening {}", files.log().display())))?;
    let log2 = log
        .try_clone()
        .map_err(io_err(format!("opening {}", files.log().display())))?;
    let supervise = AgentCommand::Registry {
        command: RegistryCommand::Supervise {
            root: spec.root.clone(),
            listen: spec.listen,
            work: spec.work.clone(),
            unit: spec.unit.clone(),
        },
    };
    let mut command = Command::new(&record.agent);
    command
        .arg("agent")
        .args(supervise.to_args())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: between fork and exec only async-signal-safe calls: syscall, setsid, fork, _exit.
    unsafe {
        command.pre_exec(|| {
            // Descriptors this agent inherited (an SSH session's, a sudo's) must not live on in
            // the daemon, or whoever waits for them to close waits for ever. Marked
            // close-on-exec rather than closed, so a failed exec is still reported; a kernel
            // older than 5.11 lacks close_range and keeps them.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => Err(io::Error::last_os_error()),
                // The first child ends at once; the grandchild, in a session of its own and not
                // its leader, becomes the supervisor and can never regain a terminal.
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    let mut first = command.spawn().map_err(io_err(format!(
        "starting the registry supervisor {}",
        record.agent.display()
    )))?;
    first
        .wait()
        .map_err(io_err("waiting for the registry supervisor to detach"))?;
    Ok(outcome)
}

fn start_systemd(
    spec: &ServiceSpec,
    files: &Files,
    record: &Recorded,
) -> Result<StartOutcome, ServiceError> {
    let unit_file = files.systemd_unit();
    let text = unit_text(spec, &record.agent)?;
    let service = format!("{}.service", spec.unit);
    let same = fs::read(&unit_file).is_ok_and(|old| old == text.as_bytes());
    if same && systemctl_ok(&["is-active", "--quiet", &service]) {
        files.write_record(record)?;
        return Ok(StartOutcome::Unchanged);
    }
    let existed = unit_file.exists();
    write_atomic(&unit_file, text.as_bytes(), 0o644)?;
    files.write_record(record)?;
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", &service])?;
    systemctl(&["restart", &service])?;
    Ok(if existed && !same {
        StartOutcome::Restarted
    } else {
        StartOutcome::Started
    })
}

/// The unit: the agent's stable copy serving `root` on `listen`, restarted whenever it ends.
pub fn unit_text(spec: &ServiceSpec, agent: &Path) -> Result<String, ServiceError> {
    let serve = AgentCommand::Registry {
        command: RegistryCommand::Serve {
            root: spec.root.clone(),
            listen: spec.listen,
        },
    };
    let mut words = vec![agent.display().to_string(), "agent".to_string()];
    words.extend(serve.to_args());
    let exec = words
        .iter()
        .map(|w| systemd_word(w))
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    Ok(format!(
        "# Written by sealer: the cluster's pull-only image registry.\n\
         [Unit]\n\
         Description=sealer image registry {unit} ({listen})\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={exec}\n\
         Restart=always\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        unit = spec.unit,
        listen = spec.listen,
    ))
}

/// One word of an `ExecStart=` line: double-quoted, with systemd's escapes for `\`, `"`, and
/// its specifiers (`%`) and variables (`$`) doubled.
fn systemd_word(word: &str) -> Result<String, ServiceError> {
    if word.chars().any(char::is_control) {
        return Err(ServiceError::UnitText(format!("{word:?}")));
    }
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn systemctl_ok(args: &[&str]) -> bool {
    Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn systemctl(args: &[&str]) -> Result<String, ServiceError> {
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running systemctl {}", args.join(" "))))?;
    if !out.status.success() {
        return Err(ServiceError::Systemctl {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until the service's address accepts connections while (as a daemon) its supervisor
/// holds the pid file.
fn wait_serving(
    spec: &ServiceSpec,
    files: &Files,
    manager: ServiceManager,
) -> Result<(), ServiceError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        let supervised = manager == ServiceManager::Systemd || files.daemon_pid().is_some();
        if supervised && accepts(spec.listen) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ServiceError::NotServing {
        unit: spec.unit.clone(),
        listen: spec.listen,
        secs: START_TIMEOUT.as_secs(),
        log: match manager {
            ServiceManager::Systemd => format!("journalctl -u {}.service", spec.unit),
            _ => files.log().display().to_string(),
        },
        tail: match manager {
            ServiceManager::Systemd => "(in the journal)".to_string(),
            _ => files.log_tail(),
        },
    })
}

/// Whether `listen` (its loopback twin for a wildcard address) accepts a connection.
pub fn accepts(listen: SocketAddr) -> bool {
    let mut probe = listen;
    if probe.ip().is_unspecified() {
        probe.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    TcpStream::connect_timeout(&probe, Duration::from_millis(500)).is_ok()
}

/// What runs now under `unit`.
pub fn status(work: &Path, unit: &UnitName) -> Result<ServiceStatus, ServiceError> {
    let files = Files::new(work, unit);
    let record = files.read_record();
    let manager = record.as_ref().map(|r| r.manager).or_else(|| {
        files
            .systemd_unit()
            .exists()
            .then_some(ServiceManager::Systemd)
    });
    let (running, pid) = match manager {
        Some(ServiceManager::Systemd) => {
            let service = format!("{unit}.service");
            let running = systemctl_ok(&["is-active", "--quiet", &service]);
            let pid = systemctl(&["show", "--property=MainPID", "--value", &service])
                .ok()
                .and_then(|p| p.parse().ok())
                .filter(|p| *p != 0);
            (running, pid)
        }
        _ => {
            let pid = files.daemon_pid();
            (pid.is_some(), pid)
        }
    };
    let serving = running && record.as_ref().is_some_and(|r| accepts(r.listen));
    Ok(ServiceStatus {
        unit: unit.clone(),
        manager: manager.filter(|_| record.is_some() || running),
        running,
        serving,
        pid,
        root: record.as_ref().map(|r| r.root.clone()),
        listen: record.as_ref().map(|r| r.listen),
    })
}

/// Stops `unit` and removes its unit or pid file and record. Returns whether it was running.
pub fn stop(work: &Path, unit: &UnitName) -> Result<bool, ServiceError> {
    let files = Files::new(work, unit);
    let _lock = files.lock()?;
    let systemd_file = files.systemd_unit();
    let was_running = if systemd_file.exists()
        || files
            .read_record()
            .is_some_and(|r| r.manager == ServiceManager::Systemd)
    {
        let service = format!("{unit}.service");
        let running = systemctl_ok(&["is-active", "--quiet", &service]);
        if systemd_file.exists() {
            systemctl(&["disable", "--now", &service])?;
            remove(&systemd_file)?;
            systemctl(&["daemon-reload"])?;
        }
        running
    } else {
        stop_daemon(&files)?
    };
    remove(&files.record())?;
    Ok(was_running)
}

/// Ends the supervisor (SIGTERM, which ends its server; SIGKILL to its process group after
/// [`STOP_TIMEOUT`]) and removes the pid file.
fn stop_daemon(files: &Files) -> Result<bool, ServiceError> {
    let Some(pid) = files.daemon_pid() else {
        remove(&files.pid())?;
        return Ok(false);
    };
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let target = if signal == libc::SIGKILL {
            // The supervisor leads its own process group; its server is in it.
            -(pid as i32)
        } else {
            pid as i32
        };
        // SAFETY: kill has no memory effects; pid is the supervisor's (its pid file is locked).
        unsafe {
            libc::kill(target, signal);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if files.daemon_pid().is_none() {
                remove(&files.pid())?;
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Err(ServiceError::Unkillable {
        unit: files.unit.clone(),
        pid,
    })
}

/// `close_range`'s flag that marks the descriptors close-on-exec instead of closing them.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The daemon's supervisor: holds the pid file's lock, runs `agent registry serve` and starts
/// it again (after a growing wait) whenever it ends, until SIGTERM, SIGINT or SIGHUP. A second
/// supervisor for the same unit ends at once.
pub fn supervise(spec: &ServiceSpec) -> Result<(), ServiceError> {
    let files = Files::new(&spec.work, &spec.unit);
    files.create_dir()?;
    let pid_path = files.pid();
    let mut pid_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o644)
        .open(&pid_path)
        .map_err(io_err(format!("opening {}", pid_path.display())))?;
    // A `status` probing the lock holds it for an instant; a supervisor holds it for good.
    let deadline = Instant::now() + Duration::from_secs(1);
    while FileExt::try_lock_exclusive(&pid_file).is_err() {
        if Instant::now() >= deadline {
            eprintln!("sealer registry {}: already supervised", spec.unit);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pid_file
        .set_len(0)
        .and_then(|()| pid_file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(io_err(format!("writing {}", pid_path.display())))?;
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    let agent = std::env::current_exe().map_err(io_err("finding the agent's own path"))?;
    let serve = AgentCommand::Registry {
        command: RegistryCommand::Serve {
            root: spec.root.clone(),
            listen: spec.listen,
        },
    };
    let me = std::process::id() as libc::pid_t;
    let mut backoff = BACKOFF_FIRST;
    eprintln!("sealer registry {}: supervisor {me} started", spec.unit);
    while !STOP.load(Ordering::SeqCst) {
        let mut command = Command::new(&agent);
        command
            .arg("agent")
            .args(serve.to_args())
            .stdin(Stdio::null());
        // SAFETY: prctl and getppid are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                // The server ends with its supervisor, however the supervisor ends.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != me {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let status = match command.spawn() {
            Ok(mut child) => loop {
                if STOP.load(Ordering::SeqCst) {
                    end_child(&mut child);
                    break None;
                }
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status.to_string()),
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                    Err(e) => break Some(format!("unknown status ({e})")),
                }
            },
            Err(e) => Some(format!("not started: {e}")),
        };
        let Some(status) = status else { break };
        if started.elapsed() >= BACKOFF_RESET {
            backoff = BACKOFF_FIRST;
        }
        eprintln!(
            "sealer registry {}: the server ended ({status}); starting it again in {:.1} s",
            spec.unit,
            backoff.as_secs_f64()
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until && !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let _ = fs::remove_file(&pid_path);
    eprintln!("sealer registry {}: supervisor {me} stopped", spec.unit);
    Ok(())
}

/// SIGTERM, then SIGKILL after a few seconds.
fn end_child(child: &mut std::process::Child) {
    // SAFETY: kill has no memory effects; the child has not been reaped, so its pid is its own.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The agent's copy in `dir`, named by its content, made once.
fn stable_agent(dir: &Path) -> Result<PathBuf, ServiceError> {
    let exe = std::env::current_exe().map_err(io_err("finding the agent's own path"))?;
    let mut file =
        fs::File::open(&exe).map_err(io_err(format!("reading the agent {}", exe.display())))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)
        .map_err(io_err(format!("reading the agent {}", exe.display())))?;
    let sha = hex::encode(hasher.finalize());
    let target = dir.join(format!("sealer-agent-{}", &sha[..16]));
    if target.is_file() {
        return Ok(target);
    }
    let bytes = fs::read(&exe).map_err(io_err(format!("reading the agent {}", exe.display())))?;
    write_atomic(&target, &bytes, 0o755)?;
    Ok(target)
}

/// `bytes` into `path` through a temporary file in its directory renamed into place.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServiceError> {
    let what = || format!("writing {}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(what()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".sealer.")
        .tempfile_in(dir)
        .map_err(io_err(what()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .and_then(|()| fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)))
        .map_err(io_err(what()))?;
    tmp.persist(path).map_err(|e| ServiceError::Io {
        what: what(),
        source: e.error,
    })?;
    Ok(())
}

fn remove(path: &Path) -> Result<(), ServiceError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ServiceError::Io {
            what: format!("removing {}", path.display()),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_agent_copy_with_its_words_quoted_for_systemd() {
        let spec = ServiceSpec {
            unit: "sealer-registry".parse().unwrap(),
            root: PathBuf::from("/var/lib/my data/100%/$HOME/images"),
            listen: "0.0.0.0:5000".parse().unwrap(),
            work: PathBuf::from("/w"),
        };
        let text = unit_text(&spec, Path::new("/w/registry/sealer-agent-x")).unwrap();
        assert!(text.contains(
            "ExecStart=\"/w/registry/sealer-agent-x\" \"agent\" \"registry\" \"serve\" \"--root\" \"/var/lib/my data/100%%/$$HOME/images\" \"--listen\" \"0.0.0.0:5000\"\n"
        ), "{text}");
        assert!(text.contains("Restart=always\n"));
        let bad = ServiceSpec {
            root: PathBuf::from("/x\ny"),
            ..spec
        };
        assert!(unit_text(&bad, Path::new("/a")).is_err());
    }
}
