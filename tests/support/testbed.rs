//! Real SSH hosts for integration tests: a thin, typed handle over `tests/testbed/testbed.sh`.
//!
//! `Testbed::up(n)` starts `n` Debian hosts, each a real OpenSSH server in a network namespace of
//! its own with its own address (10.244.X.0/24, X allocated so parallel testbeds never clash),
//! hostname and root filesystem; dropping the `Testbed` removes every trace (processes, mounts,
//! namespaces, links, files). Fault methods (sshd killed, link down, bandwidth shaped, host key
//! changed) act on the real hosts. This module does not speak SSH itself and mocks nothing: tests
//! drive the code under test (or the real `ssh` client via [`Testbed::ssh_command`]) against it.
//!
//! An integration test reaches it as `support::testbed` after `mod support;`.
//!
//! Needs root and the tools `scripts/ci-deps.sh` installs. Without them, [`Testbed::up`] returns
//! [`TestbedError::Unavailable`] naming exactly what is missing; [`Testbed::up_for_test`] turns
//! that into a skip, except when `CI` or `SEALER_TESTBED_REQUIRED` is set, where it fails.
//! Set `SEALER_TESTBED_KEEP=1` to keep a testbed after the test for inspection.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Tools the testbed script runs on the machine hosting the tests (`debootstrap` is checked by
/// the script itself, and only when the cached base root filesystem is missing).
const REQUIRED_TOOLS: &[&str] = &[
    "bash",
    "ip",
    "tc",
    "unshare",
    "nsenter",
    "chroot",
    "setsid",
    "flock",
    "mount",
    "umount",
    "timeout",
    "awk",
    "ssh-keygen",
    "ssh",
];

static NEXT_TESTBED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// This machine cannot run a testbed (not root, tools missing). Tests may skip on it.
    #[error("testbed unavailable: {0}")]
    Unavailable(String),
    /// The testbed script ran and failed.
    #[error("testbed `{command}` failed ({status}): {stderr}")]
    Script {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("testbed: {0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, TestbedError>;

/// One host of a testbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestHost {
    /// 1-based position in the testbed.
    pub index: usize,
    pub ip: Ipv4Addr,
    pub hostname: String,
    /// Network namespace of the host (`ip netns` name).
    pub netns: String,
    /// Root-namespace end of the host's veth pair (where link faults and shaping apply).
    pub veth: String,
}

impl fmt::Display for TestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.hostname, self.ip)
    }
}

/// A running testbed; `Drop` tears it down.
#[derive(Debug)]
pub struct Testbed {
    name: String,
    hosts: Vec<TestHost>,
    bridge: String,
    gateway: Ipv4Addr,
    key_path: PathBuf,
    encrypted_key_path: PathBuf,
    key_passphrase: String,
    root_password: String,
    deploy_password: String,
    known_hosts_path: PathBuf,
    run_dir: PathBuf,
    torn_down: bool,
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/testbed.sh")
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

/// What keeps this machine from running a testbed, or `None` when it can.
pub fn unavailable_reason() -> Option<String> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        problems
            .push("not running as root (network namespaces, overlay mounts, chroot)".to_string());
    }
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|tool| !on_path(tool))
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing tools: {}", missing.join(" ")));
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "{} (run scripts/ci-deps.sh as root)",
            problems.join("; ")
        ))
    }
}

/// Runs the testbed script; a non-zero exit becomes an error carrying its stderr.
fn run_script(args: &[OsString]) -> Result<Output> {
    let output = Command::new("bash")
        .arg(script_path())
        .args(args)
        .output()
        .map_err(|e| TestbedError::Other(format!("running {}: {e}", script_path().display())))?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if let Some(pos) = stderr.find("missing tools:") {
        return Err(TestbedError::Unavailable(stderr[pos..].to_string()));
    }
    Err(TestbedError::Script {
        command: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        status: output.status.to_string(),
        stderr,
    })
}

fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    args.into_iter().map(Into::into).collect()
}

impl Testbed {
    /// Brings up `n_hosts` hosts (the base root filesystem is built once and cached on first use).
    pub fn up(n_hosts: usize) -> Result<Testbed> {
        if let Some(reason) = unavailable_reason() {
            return Err(TestbedError::Unavailable(reason));
        }
        let name = format!(
            "t{}-{}",
            std::process::id(),
            NEXT_TESTBED.fetch_add(1, Ordering::Relaxed)
        );
        let output = run_script(&os_args([
            "up".to_string(),
            "--name".to_string(),
            name.clone(),
            "--hosts".to_string(),
            n_hosts.to_string(),
            "--owner-pid".to_string(),
            std::process::id().to_string(),
        ]))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let testbed = Testbed::parse_status(&name, &stdout);
        match testbed {
            Ok(testbed) if testbed.hosts.len() == n_hosts => Ok(testbed),
            Ok(mut testbed) => {
                let found = testbed.hosts.len();
                let _ = testbed.teardown();
                Err(TestbedError::Other(format!(
                    "testbed {name}: asked for {n_hosts} hosts, the script reported {found}"
                )))
            }
            Err(e) => {
                let _ = run_script(&os_args(["down", "--name", name.as_str()]));
                Err(e)
            }
        }
    }

    /// [`Testbed::up`] for tests: `None` (with a note on stderr) when this machine cannot run a
    /// testbed, unless `CI` or `SEALER_TESTBED_REQUIRED` is set; any other failure panics.
    pub fn up_for_test(n_hosts: usize) -> Option<Testbed> {
        match Testbed::up(n_hosts) {
            Ok(testbed) => Some(testbed),
            Err(TestbedError::Unavailable(reason))
                if std::env::var_os("CI").is_none()
                    && std::env::var_os("SEALER_TESTBED_REQUIRED").is_none() =>
            {
                eprintln!("SKIPPED: no SSH testbed on this machine: {reason}");
                None
            }
            Err(e) => panic!("bringing up a {n_hosts}-host testbed: {e}"),
        }
    }

    fn parse_status(name: &str, stdout: &str) -> Result<Testbed> {
        let bad = |line: &str| {
            TestbedError::Other(format!(
                "testbed {name}: unexpected line from testbed.sh: {line:?}"
            ))
        };
        let mut hosts = Vec::new();
        let (mut bridge, mut gateway) = (None, None);
        let (mut key, mut encrypted_key, mut passphrase) = (None, None, None);
        let (mut root_password, mut deploy_password, mut known_hosts, mut run_dir) =
            (None, None, None, None);
        for line in stdout.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["host", index, ip, hostname, netns, veth] => hosts.push(TestHost {
                    index: index.parse().map_err(|_| bad(line))?,
                    ip: ip.parse().map_err(|_| bad(line))?,
                    hostname: hostname.to_string(),
                    netns: netns.to_string(),
                    veth: veth.to_string(),
                }),
                ["bridge", name, ip] => {
                    bridge = Some(name.to_string());
                    gateway = Some(ip.parse().map_err(|_| bad(line))?);
                }
                ["key", path] => key = Some(PathBuf::from(path)),
                ["encrypted-key", path] => encrypted_key = Some(PathBuf::from(path)),
                ["passphrase", p] => passphrase = Some(p.to_string()),
                ["root-password", p] => root_password = Some(p.to_string()),
                ["deploy-password", p] => deploy_password = Some(p.to_string()),
                ["known-hosts", path] => known_hosts = Some(PathBuf::from(path)),
                ["run-dir", path] => run_dir = Some(PathBuf::from(path)),
                [] => {}
                _ => return Err(bad(line)),
            }
        }
        let missing = |what: &str| {
            TestbedError::Other(format!("testbed {name}: testbed.sh did not report {what}"))
        };
        Ok(Testbed {
            name: name.to_string(),
            hosts,
            bridge: bridge.ok_or_else(|| missing("bridge"))?,
            gateway: gateway.ok_or_else(|| missing("bridge"))?,
            key_path: key.ok_or_else(|| missing("key"))?,
            encrypted_key_path: encrypted_key.ok_or_else(|| missing("encrypted-key"))?,
            key_passphrase: passphrase.ok_or_else(|| missing("passphrase"))?,
            root_password: root_password.ok_or_else(|| missing("root-password"))?,
            deploy_password: deploy_password.ok_or_else(|| missing("deploy-password"))?,
            known_hosts_path: known_hosts.ok_or_else(|| missing("known-hosts"))?,
            run_dir: run_dir.ok_or_else(|| missing("run-dir"))?,
            torn_down: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
    }

    /// The bridge joining the hosts, and the root namespace's address on it (the `.1`): the
    /// address hosts see connections come from.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Private key (ed25519, no passphrase) authorized for `root` and `deploy` on every host.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Private key (ed25519) encrypted with [`Testbed::key_passphrase`], also authorized.
    pub fn encrypted_key_path(&self) -> &Path {
        &self.encrypted_key_path
    }

    pub fn key_passphrase(&self) -> &str {
        &self.key_passphrase
    }

    pub fn root_password(&self) -> &str {
        &self.root_password
    }

    /// Non-root user with passwordless sudo on every host.
    pub fn deploy_user(&self) -> &str {
        "deploy"
    }

    pub fn deploy_password(&self) -> &str {
        &self.deploy_password
    }

    /// An initially empty known_hosts file of this testbed; point clients at it.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts_path
    }

    /// Directory holding this testbed's state (keys, per-host upper dirs, logs).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Root filesystem of a host as seen from the test process (an overlay mount).
    pub fn host_root(&self, host: &TestHost) -> PathBuf {
        self.run_dir.join(format!("h{}", host.index)).join("root")
    }

    /// The host's current public host key of `key_type` (`ed25519`, `ecdsa`, `rsa`) as
    /// `"<algorithm> <base64>"`, for pinning or writing a known_hosts line.
    pub fn host_public_key(&self, host: &TestHost, key_type: &str) -> Result<String> {
        let path = self
            .host_root(host)
            .join(format!("etc/ssh/ssh_host_{key_type}_key.pub"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| TestbedError::Other(format!("reading {}: {e}", path.display())))?;
        let mut fields = text.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(algorithm), Some(key)) => Ok(format!("{algorithm} {key}")),
            _ => Err(TestbedError::Other(format!(
                "{}: not a public key line",
                path.display()
            ))),
        }
    }

    /// Arguments for OpenSSH's `ssh`/`scp` that use this testbed's key and known_hosts file,
    /// never prompt, and give up connecting after `connect_timeout_secs`.
    pub fn ssh_options(&self, connect_timeout_secs: u32) -> Vec<OsString> {
        let mut options = os_args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "HashKnownHosts=no",
        ]);
        options.extend(os_args([
            "-o".to_string(),
            format!("ConnectTimeout={connect_timeout_secs}"),
            "-o".to_string(),
            format!("UserKnownHostsFile={}", self.known_hosts_path.display()),
            "-i".to_string(),
        ]));
        options.push(self.key_path.clone().into_os_string());
        options
    }

    /// The real `ssh` client, ready to run a command as `user` on `host` (append the command).
    pub fn ssh_command(&self, host: &TestHost, user: &str) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(self.ssh_options(5))
            .arg(format!("{user}@{}", host.ip));
        command
    }

    fn host_op(&self, op: &str, host: &TestHost, extra: &[&str]) -> Result<Output> {
        let mut args = os_args([op, self.name.as_str(), &host.index.to_string()]);
        args.extend(os_args(extra.iter().copied()));
        run_script(&args)
    }

    /// Kills every sshd of the host (listener and sessions): new connections are refused and
    /// open ones drop.
    pub fn kill_sshd(&self, host: &TestHost) -> Result<()> {
        self.host_op("kill-sshd", host, &[]).map(drop)
    }

    /// Starts sshd again and waits until it accepts connections.
    pub fn start_sshd(&self, host: &TestHost) -> Result<()> {
        self.host_op("start-sshd", host, &[]).map(drop)
    }

    /// Takes the host's link down: packets to it vanish, a connect times out.
    pub fn link_down(&self, host: &TestHost) -> Result<()> {
        self.host_op("link-down", host, &[]).map(drop)
    }

    pub fn link_up(&self, host: &TestHost) -> Result<()> {
        self.host_op("link-up", host, &[]).map(drop)
    }

    /// Limits the host's link to `rate` in both directions (`tc` syntax: `100mbit`, `20mbps`).
    pub fn shape(&self, host: &TestHost, rate: &str) -> Result<()> {
        self.host_op("shape", host, &[rate]).map(drop)
    }

    pub fn unshape(&self, host: &TestHost) -> Result<()> {
        self.host_op("shape", host, &["off"]).map(drop)
    }

    /// Drops every packet the host sends to this machine (the installer), so a connection
    /// from here times out while the other hosts of the bridge still reach it: the host is
    /// then reachable only through a jump host. A `prohibit` route inside the host's namespace.
    pub fn block_installer(&self, host: &TestHost) -> Result<()> {
        self.installer_route(host, "replace")
    }

    /// Undoes [`Testbed::block_installer`].
    pub fn unblock_installer(&self, host: &TestHost) -> Result<()> {
        self.installer_route(host, "del")
    }

    fn installer_route(&self, host: &TestHost, verb: &str) -> Result<()> {
        let gateway = format!("{}/32", self.gateway);
        let out = Command::new("ip")
            .args([
                "-n",
                host.netns.as_str(),
                "route",
                verb,
                "prohibit",
                &gateway,
            ])
            .output()
            .map_err(|e| TestbedError::Other(format!("running ip: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestbedError::Script {
                command: format!("ip -n {} route {verb} prohibit {gateway}", host.netns),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Starts a second sshd on the host listening on `port` only (same keys and users) and
    /// waits until it accepts connections. [`Testbed::kill_sshd`] stops it too.
    pub fn start_sshd_on_port(&self, host: &TestHost, port: u16) -> Result<()> {
        let out = self.exec(
            host,
            &format!("mkdir -p /run/sshd; /usr/sbin/sshd -p {port} -o PidFile=/run/sshd-{port}.pid -E /var/log/sshd-{port}.log"),
        )?;
        if !out.status.success() {
            return Err(TestbedError::Other(format!(
                "starting sshd on port {port} of {host}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let addr = std::net::SocketAddr::from((host.ip, port));
        for _ in 0..100 {
            if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(TestbedError::Other(format!(
            "sshd on port {port} of {host} does not accept connections"
        )))
    }

    /// Gives the host new host keys and restarts its sshd (for changed-host-key tests).
    pub fn regen_hostkey(&self, host: &TestHost) -> Result<()> {
        self.host_op("regen-hostkey", host, &[]).map(drop)
    }

    /// Runs `cmd` with `/bin/sh -c` inside the host (its namespaces and root, as root, not over
    /// SSH). The output is returned whatever the exit status; only a failure to run is an error.
    pub fn exec(&self, host: &TestHost, cmd: &str) -> Result<Output> {
        let pid_file = self.run_dir.join(format!("h{}/init.pid", host.index));
        if !pid_file.exists() {
            return Err(TestbedError::Other(format!(
                "testbed {}: no host {host}",
                self.name
            )));
        }
        Command::new("bash")
            .arg(script_path())
            .args(["exec", self.name.as_str(), &host.index.to_string(), cmd])
            .output()
            .map_err(|e| TestbedError::Other(format!("running {}: {e}", script_path().display())))
    }

    /// The stdout of `cmd` run inside the host (as [`Testbed::exec`]); panics, with the
    /// command's output, when it cannot run or fails.
    pub fn stdout_of(&self, host: &TestHost, cmd: &str) -> String {
        let out = self
            .exec(host, cmd)
            .unwrap_or_else(|e| panic!("on {host}: `{cmd}`: {e}"));
        assert!(
            out.status.success(),
            "on {host}: `{cmd}` failed:\n{}",
            super::store::both(&out)
        );
        super::store::text(&out.stdout)
    }

    /// Whether `path` exists on the host.
    pub fn has_path(&self, host: &TestHost, path: &str) -> bool {
        self.exec(host, &format!("test -e '{path}'"))
            .unwrap_or_else(|e| panic!("on {host}: looking for {path}: {e}"))
            .status
            .success()
    }

    /// Tears the testbed down now, reporting failure (`Drop` does the same silently).
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        run_script(&os_args(["down", "--name", self.name.as_str()])).map(drop)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::env::var_os("SEALER_TESTBED_KEEP").is_some() {
            eprintln!(
                "SEALER_TESTBED_KEEP: testbed {} kept in {}; remove it with: tests/testbed/testbed.sh down --name {}",
                self.name,
                self.run_dir.display(),
                self.name
            );
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("tearing down testbed {}: {e}", self.name);
        }
    }
}

/// The test file's one testbed of `hosts` hosts, brought up by the first test that asks for it
/// and shared by the file's tests (`None` where testbeds cannot run here, as
/// [`Testbed::up_for_test`]). Statics are never dropped, so it is torn down when the test
/// process exits (kept with `SEALER_TESTBED_KEEP`).
pub fn shared(hosts: usize) -> Option<&'static Testbed> {
    static BED: std::sync::OnceLock<Option<Testbed>> = std::sync::OnceLock::new();
    let bed = BED
        .get_or_init(|| {
            let bed = Testbed::up_for_test(hosts)?;
            let _ = SHARED_NAME.set(bed.name().to_string());
            // SAFETY: registers a plain extern "C" function without captured state.
            unsafe { libc::atexit(tear_down_shared) };
            Some(bed)
        })
        .as_ref()?;
    assert_eq!(
        bed.hosts().len(),
        hosts,
        "the file's shared testbed has another size"
    );
    Some(bed)
}

static SHARED_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

extern "C" fn tear_down_shared() {
    if std::env::var_os("SEALER_TESTBED_KEEP").is_some() {
        return;
    }
    if let Some(name) = SHARED_NAME.get() {
        let _ = Command::new("bash")
            .arg(script_path())
            .args(["down", "--name", name])
            .output();
    }
}

/// Pids of processes whose command line (`/proc/PID/cmdline`, one string per argument)
/// satisfies `matches`. The testbed hosts' pid namespaces are children of this machine's, so
/// their processes are found here too.
pub fn pids_where(matches: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if matches(&args) {
            found.push(pid);
        }
    }
    found
}

/// Waits up to `limit` for `done`, checking every 100 ms; true when it happened.
pub fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    done()
}
