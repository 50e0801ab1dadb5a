//! Preflight: the one read-only probe of a host and every check made on what it prints, shared
//! by the install (which refuses to start when a check fails), the dry run and `sealer check`
//! (which list every check's result). The probe is ONE shell command per host; it asks for the
//! architecture, the OS and kernel, free space and inodes under the data root, the hostname,
//! the clock, the TCP ports listening, which of the commands the install needs are missing,
//! whether /tmp is writable, whether the agent is there intact, what the cluster's work
//! directory holds (payload, journal, spool), and, for an image that carries container images,
//! containerd's configuration (its registry `config_path` is where the mirrors go). The only trace
//! it leaves is a temporary file in /tmp, removed at once. [`twins`] is the check across hosts
//! (names must be unique).
//!
//! What an image supports and needs it declares with labels ([`LABEL_OS`], [`LABEL_KERNEL`],
//! [`LABEL_PORTS`], [`LABEL_COMMANDS`]); this module reads them, it does not build images.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::{Change, Engine, ExecOutput, Step, StepFailure};
use crate::agent::registry::containerd::{config_path_in, DEFAULT_CONFIG as CONTAINERD_CONFIG};
use crate::clusterfile::{shell_quote, Host, PluginKind};
use crate::sbom::Counts;

pub use crate::host_requirements::{LABEL_COMMANDS, LABEL_KERNEL, LABEL_OS, LABEL_PORTS};

/// Every check, by the name `--ignore-preflight` takes, in the order they are reported.
pub const PREFLIGHT_CHECKS: &[&str] = &[
    "sudo",
    "os",
    "arch",
    "disk",
    "inodes",
    "tmp",
    "clock",
    "hostname",
    "ports",
    "containerd",
    "commands",
];

/// What the installer itself runs on a host besides the agent: the agent's upload and the
/// guard before each run (`sh` runs everything and is there if the probe answers at all).
const INSTALLER_COMMANDS: &[&str] = &["sha256sum", "stat", "readlink", "mktemp"];

/// How a check ended on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Passed,
    Failed,
    /// Failed, and let through by `--ignore-preflight`.
    Ignored,
    /// Not made for this change (nothing is sent by a delete or a rollback) or not applicable.
    Skipped,
}

/// One check on one host: what it found and, when it failed, what to do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub check: &'static str,
    pub state: CheckState,
    /// What the host showed (`x86_64`, `debian 12, kernel 6.1.0`, `2.1 GiB free, needs 300 MiB`).
    pub found: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl CheckResult {
    fn passed(check: &'static str, found: impl Into<String>) -> Self {
        CheckResult {
            check,
            state: CheckState::Passed,
            found: found.into(),
            fix: None,
        }
    }

    fn skipped(check: &'static str, why: impl Into<String>) -> Self {
        CheckResult {
            check,
            state: CheckState::Skipped,
            found: why.into(),
            fix: None,
        }
    }

    /// A failed check, or an ignored one when `ignored` names it (or `all`).
    pub(super) fn failed(
        check: &'static str,
        found: impl Into<String>,
        fix: impl Into<String>,
        ignored: &[String],
    ) -> Self {
        let ignore = ignored.iter().any(|i| i == check || i == "all") && check != "sudo";
        CheckResult {
            check,
            state: if ignore {
                CheckState::Ignored
            } else {
                CheckState::Failed
            },
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    /// The sentence a failure is reported with: what was found, what to do, which check.
    pub fn message(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}; {fix} (check: {})", self.found, self.check),
            None => format!("{} (check: {})", self.found, self.check),
        }
    }
}

/// What a host's preflight found.
pub(super) struct Preflight {
    pub agent_present: bool,
    /// The host has `gzip` (asked only when the agent is missing): the agent travels compressed.
    pub gzip: bool,
    pub hostname: Option<String>,
    /// `debian 12, kernel 6.1.0-18-amd64`: recorded in the report and the cluster record.
    pub system: Option<String>,
    /// The payload the host's rootfs holds now.
    pub installed: Option<String>,
    /// Step keys in the host's journal.
    pub journal: HashSet<String>,
    /// Frames spooled on the host.
    pub spool: HashSet<String>,
    /// Every check made on the host alone (the hostname check across hosts comes later).
    pub checks: Vec<CheckResult>,
    /// containerd's registry `config_path` on the host, where the `hosts.toml` files go (an
    /// image with container images, a host whose containerd sets one).
    pub containerd_certs: Option<std::path::PathBuf>,
}

impl Preflight {
    /// The checks that refuse the host.
    pub fn refusals(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.state == CheckState::Failed)
    }
}

/// The probe's answer, line by line (`KEY VALUE`).
#[derive(Default)]
struct Answer {
    arch: String,
    kernel: String,
    os_id: String,
    os_version: String,
    os_like: Vec<String>,
    os_name: String,
    df: Option<(u64, u64)>,
    inodes: Option<(u64, u64)>,
    data_dir: String,
    agent_present: bool,
    gzip: bool,
    hostname: Option<String>,
    /// `date +%s.%N` at the probe's start and at its end.
    clock: Vec<String>,
    listening: BTreeSet<u16>,
    missing: Vec<String>,
    tmp: Option<String>,
    installed: Option<String>,
    journal: HashSet<String>,
    spool: HashSet<String>,
    /// containerd's config file, line by line, when the probe asked and the file is there.
    containerd: Option<String>,
}

fn read_answer(text: &str) -> Answer {
    let mut a = Answer::default();
    for line in text.lines() {
        // Lines of a file, kept as they are.
        if let Some(content) = line.strip_prefix("containerd ") {
            let config = a.containerd.get_or_insert_with(String::new);
            config.push_str(content);
            config.push('\n');
            continue;
        }
        if line == "containerd-config" {
            a.containerd.get_or_insert_with(String::new);
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "arch" => a.arch = value.into(),
            "kernel" => a.kernel = value.into(),
            "os-id" => a.os_id = value.into(),
            "os-version" => a.os_version = value.into(),
            "os-like" => a.os_like = value.split_whitespace().map(String::from).collect(),
            "os-name" => a.os_name = value.into(),
            // `df -P` columns: filesystem, total, used, available, …
            "df" | "dfi" => {
                let cols: Vec<&str> = value.split_whitespace().collect();
                let num = |i: usize| cols.get(i).and_then(|v| v.parse::<u64>().ok());
                let pair = num(1).zip(num(3));
                if key == "df" {
                    a.df = pair;
                } else {
                    a.inodes = pair;
                }
            }
            "dir" => a.data_dir = value.into(),
            "agent" => a.agent_present = value == "present",
            "gzip" => a.gzip = value == "yes",
            "hostname" => a.hostname = Some(value.into()),
            "clock" => a.clock.push(value.into()),
            // `/proc/net/tcp*` local address, `ADDR:PORT` in hex, of a listening socket.
            "listen" => {
                if let Some(port) = value
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    a.listening.insert(port);
                }
            }
            "missing" => a.missing.push(value.into()),
            "tmp" => a.tmp = Some(value.into()),
            "installed" if !value.is_empty() => a.installed = Some(value.into()),
            "journal" => {
                a.journal.insert(value.into());
            }
            "spool" => {
                a.spool.insert(value.into());
            }
            _ => {}
        }
    }
    a
}

impl Engine<'_> {
    /// The image's label `name`, when set and not blank.
    fn label(&self, name: &str) -> Option<&str> {
        self.payload
            .config
            .config
            .labels
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Commands every host must have: the installer's own, the interpreter named by the
    /// `#!` line of a hook or install command, `systemctl` when one of them calls it, and the
    /// image's [`LABEL_COMMANDS`].
    pub(super) fn required_commands(&self) -> Vec<String> {
        let mut scripts: Vec<&str> = self.cmds.iter().map(String::as_str).collect();
        for plugin in &self.plugins {
            if let PluginKind::Shell { script } = &plugin.kind {
                scripts.push(script);
            }
        }
        commands_needed(&scripts, self.label(LABEL_COMMANDS))
    }

    /// The TCP ports `host` must have free before the cluster's first install there: the
    /// image's [`LABEL_PORTS`], and the registry's port on a host that serves the cluster's
    /// container images. `Err` when the label is not a list of ports.
    fn required_ports(&self, host: &Host) -> Result<Vec<(u16, String)>, String> {
        let mut ports = Vec::new();
        if let Some(list) = self.label(LABEL_PORTS) {
            let declared = crate::host_requirements::parse_ports(list).map_err(|why| {
                format!("the image's label {LABEL_PORTS}={list:?} is not a list of TCP ports ({why}); rebuild the image with e.g. LABEL {LABEL_PORTS}=\"2379,2380\"")
            })?;
            for port in declared {
                ports.push((port, format!("the image ({LABEL_PORTS})")));
            }
        }
        if self.serves_images(host) {
            ports.push((
                self.cluster.registry.port,
                "the cluster's registry (spec.registry)".into(),
            ));
        }
        Ok(ports)
    }

    /// The probe's shell command, read by [`Engine::read_preflight`]. It changes nothing on
    /// the host (a temporary file in /tmp comes and goes).
    pub(super) fn preflight_command(
        &self,
        host: &Host,
        agent: &str,
    ) -> Result<String, StepFailure> {
        let work = self.work_dir().display().to_string();
        // Reading `/proc/net/tcp*` walks the kernel's whole socket table (tens of milliseconds
        // on a large machine): only when the host has ports to keep free.
        let listening = if matches!(self.required_ports(host), Ok(ports) if !ports.is_empty()) {
            "for f in /proc/net/tcp /proc/net/tcp6; do [ -r \"$f\" ] && while read -r _ l _ s _; do [ \"$s\" = 0A ] && echo \"listen $l\"; done < \"$f\"; done; "
        } else {
            ""
        };
        let commands: Vec<String> = self
            .required_commands()
            .iter()
            .map(|c| shell_quote(c))
            .collect();
        // On this machine the agent is this very program (`agent_path`): it is there, and
        // hashing it would read a whole `.run` package (its payload follows the program) once
        // more for nothing.
        let this_program =
            std::env::current_exe().is_ok_and(|exe| exe.display().to_string() == agent);
        let agent_check = if this_program {
            "echo 'agent present'; ".to_string()
        } else {
            format!(
                "if [ -f {a} ] && [ \"$(sha256sum < {a})\" = \"{sha}  -\" ]; then echo 'agent present'; else echo 'agent missing'; command -v gzip >/dev/null 2>&1 && echo 'gzip yes'; fi; ",
                a = shell_quote(agent),
                sha = self.agent_sha256()?,
            )
        };
        Ok(format!(
            concat!(
                // Few processes: each costs a fork and an exec on every host (shell
                // built-ins read the small files; `uname` prints release before machine).
                "last() {{ l=; while IFS= read -r x; do l=$x; done; printf '%s' \"$l\"; }}; ",
                "echo \"clock $(date +%s.%N)\"; set -- $(uname -r -m); echo \"arch $2\"; echo \"kernel $1\"; ",
                "( for f in /etc/os-release /usr/lib/os-release; do [ -r \"$f\" ] && {{ . \"$f\"; break; }}; done; ",
                "echo \"os-id ${{ID:-}}\"; echo \"os-version ${{VERSION_ID:-}}\"; echo \"os-like ${{ID_LIKE:-}}\"; echo \"os-name ${{PRETTY_NAME:-}}\" ) 2>/dev/null; ",
                "d={root}; while [ ! -d \"$d\" ]; do case $d in */*) d=${{d%/*}}; d=${{d:-/}} ;; *) d=. ;; esac; done; echo \"dir $d\"; ",
                "echo \"df $(df -Pk \"$d\" 2>/dev/null | last)\"; echo \"dfi $(df -Pi \"$d\" 2>/dev/null | last)\"; ",
                "{agent_check}",
                "h=; [ -r /proc/sys/kernel/hostname ] && IFS= read -r h < /proc/sys/kernel/hostname; [ -n \"$h\" ] || h=$(hostname 2>/dev/null); echo \"hostname $h\"; ",
                "{listening}",
                "for c in {commands}; do command -v \"$c\" >/dev/null 2>&1 || echo \"missing $c\"; done; ",
                "if t=$(mktemp /tmp/.sealer-preflight.XXXXXX 2>&1); then rm -f \"$t\"; echo 'tmp ok'; else echo \"tmp $t\"; fi; ",
                "w={work}; i=; [ -r \"$w/installed\" ] && IFS= read -r i < \"$w/installed\"; echo \"installed $i\"; ",
                "for k in \"$w\"/journal/*; do [ -e \"$k\" ] && echo \"journal ${{k##*/}}\"; done; ",
                "for k in \"$w\"/spool/*; do [ -e \"$k\" ] && echo \"spool ${{k##*/}}\"; done; {containerd}echo \"clock $(date +%s.%N)\"; true"
            ),
            root = shell_quote(&self.cluster.data_root.display().to_string()),
            agent_check = agent_check,
            listening = listening,
            commands = commands.join(" "),
            work = shell_quote(&work),
            containerd = if self.payload.container_images.is_empty() {
                String::new()
            } else {
                format!(
                    concat!(
                        "c={config}; if [ -f \"$c\" ] && [ -r \"$c\" ]; then echo containerd-config; ",
                        "while IFS= read -r l || [ -n \"$l\" ]; do printf 'containerd %s\\n' \"$l\"; done < \"$c\"; fi; "
                    ),
                    config = shell_quote(CONTAINERD_CONFIG),
                )
            },
        ))
    }

    /// Reads the probe's answer from `host` and makes every check on it; `asked` and
    /// `answered` bracket the probe, for the clock.
    pub(super) fn read_preflight(
        &self,
        host: &Host,
        text: &str,
        asked: SystemTime,
        answered: SystemTime,
    ) -> Preflight {
        let a = read_answer(text);
        let ignored = &self.opts.ignore_preflight;
        let sends = matches!(self.opts.change, Change::Install | Change::Join { .. });
        let nothing_sent = "nothing is sent by this change";
        let mut checks = vec![CheckResult::passed(
            "sudo",
            if host.ssh.user == "root" {
                "connected as root".to_string()
            } else {
                format!("{} runs commands as root with sudo -n", host.ssh.user)
            },
        )];

        // OS and kernel.
        let system = format!(
            "{}, kernel {}",
            if a.os_name.is_empty() {
                format!("{} {}", a.os_id, a.os_version).trim().to_string()
            } else {
                a.os_name.clone()
            },
            a.kernel
        );
        checks.push(if !sends {
            CheckResult::skipped("os", format!("{system} ({nothing_sent})"))
        } else {
            match os_mismatch(self.label(LABEL_OS), self.label(LABEL_KERNEL), &a) {
                Some((found, fix)) => CheckResult::failed("os", found, fix, ignored),
                None => CheckResult::passed("os", system.clone()),
            }
        });

        // Architecture.
        let want = match self.payload.config.architecture.as_str() {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            other => other,
        };
        checks.push(if a.arch == want {
            CheckResult::passed("arch", a.arch.clone())
        } else {
            CheckResult::failed(
                "arch",
                format!("the host is {}, the image is for {want}", a.arch),
                format!(
                    "install the image built for {} on this host, or leave the host out",
                    a.arch
                ),
                ignored,
            )
        });

        // Space and inodes, when the rootfs is still to come.
        let same_payload =
            a.installed.is_none() || a.installed.as_deref() == Some(&self.payload.id);
        let rootfs_key = self.step_key(host, &Step::Distribute);
        let rootfs_done = same_payload && a.journal.contains(rootfs_key.as_str());
        let dir = if a.data_dir.is_empty() {
            self.cluster.data_root.display().to_string()
        } else {
            a.data_dir.clone()
        };
        let needed_kb = (self.payload.compressed_len() + self.payload.uncompressed_len()) / 1024;
        let size = |kb: u64| crate::ui::human_bytes(kb.saturating_mul(1024));
        checks.push(match a.df {
            _ if !sends => CheckResult::skipped("disk", nothing_sent),
            _ if rootfs_done => CheckResult::skipped("disk", "the host holds the image already"),
            None => CheckResult::skipped("disk", format!("df did not report on {dir}")),
            Some((_, free)) if free < needed_kb => CheckResult::failed(
                "disk",
                format!(
                    "{dir} has {} free, the image needs {}",
                    size(free),
                    size(needed_kb)
                ),
                "free space there or choose another dataRoot (--data-root)",
                ignored,
            ),
            Some((_, free)) => CheckResult::passed(
                "disk",
                format!(
                    "{dir}: {} free, the image needs {}",
                    size(free),
                    size(needed_kb)
                ),
            ),
        });
        let (needed_inodes, counted) = self.needed_inodes();
        checks.push(match a.inodes {
            _ if !sends => CheckResult::skipped("inodes", nothing_sent),
            _ if rootfs_done => CheckResult::skipped("inodes", "the host holds the image already"),
            None | Some((0, _)) => CheckResult::skipped(
                "inodes",
                format!("the filesystem of {dir} does not count inodes"),
            ),
            Some((_, free)) if free < needed_inodes => CheckResult::failed(
                "inodes",
                format!("{dir} has {free} free inodes, the image needs about {needed_inodes} ({counted})"),
                "delete files there, or choose a dataRoot on a filesystem with more inodes (--data-root)",
                ignored,
            ),
            Some((_, free)) => CheckResult::passed(
                "inodes",
                format!("{dir}: {free} free inodes, the image needs about {needed_inodes} ({counted})"),
            ),
        });

        // A writable /tmp.
        checks.push(match a.tmp.as_deref() {
            Some("ok") => CheckResult::passed("tmp", "/tmp is writable"),
            other => CheckResult::failed(
                "tmp",
                format!(
                    "/tmp is not writable: {}",
                    other.filter(|t| !t.is_empty()).unwrap_or("mktemp failed")
                ),
                "make /tmp a writable directory (mode 1777, mounted read-write, with free space and inodes)",
                ignored,
            ),
        });

        // The clock.
        let skew = clock_skew(&a.clock, asked, answered);
        let limit = self.opts.max_clock_skew;
        checks.push(match skew {
            None => CheckResult::skipped("clock", "the host did not tell its time"),
            Some(skew) if skew > limit => CheckResult::failed(
                "clock",
                format!(
                    "the host's clock is {:.3}s off this machine's (the limit is {:.3}s)",
                    skew.as_secs_f64(),
                    limit.as_secs_f64()
                ),
                "synchronise the clocks (NTP) or raise --max-clock-skew",
                ignored,
            ),
            Some(skew) => CheckResult::passed(
                "clock",
                format!("{:.3}s off this machine's", skew.as_secs_f64()),
            ),
        });

        // Ports, on a host that does not run the cluster yet (once it does, the cluster's own
        // services hold them).
        checks.push(match self.required_ports(host) {
            _ if !sends => CheckResult::skipped("ports", nothing_sent),
            Ok(ports) if ports.is_empty() => CheckResult::passed("ports", "none declared"),
            _ if a.installed.is_some() => CheckResult::skipped(
                "ports",
                "the host runs the cluster already; its own services hold them",
            ),
            Err(why) => CheckResult::failed(
                "ports",
                why,
                "fix the label and build the image again",
                ignored,
            ),
            Ok(ports) => {
                let taken: Vec<String> = ports
                    .iter()
                    .filter(|(p, _)| a.listening.contains(p))
                    .map(|(p, by)| format!("{p} (for {by})"))
                    .collect();
                let all: Vec<String> = ports.iter().map(|(p, _)| p.to_string()).collect();
                if taken.is_empty() {
                    CheckResult::passed("ports", format!("{} free", all.join(", ")))
                } else {
                    CheckResult::failed(
                        "ports",
                        format!("TCP port {} already in use", taken.join(", ")),
                        "stop what listens there (`ss -ltnp` shows it) or leave the host out",
                        ignored,
                    )
                }
            }
        });

        // containerd's registry config_path, for an image that carries container images: every
        // host pulls them through the hosts.toml files written there.
        let containerd_certs = a
            .containerd
            .as_deref()
            .map(|text| config_path_in(std::path::Path::new(CONTAINERD_CONFIG), text));
        if !self.payload.container_images.is_empty() {
            let other_runtime = "or, for a host whose runtime is not containerd, --ignore-preflight containerd and point its runtime at the cluster's registry yourself (docs/container-images.md)";
            checks.push(match &containerd_certs {
                _ if !sends => CheckResult::skipped("containerd", nothing_sent),
                Some(Ok(path)) => CheckResult::passed(
                    "containerd",
                    format!("config_path {} ({CONTAINERD_CONFIG})", path.display()),
                ),
                Some(Err(e)) => CheckResult::failed(
                    "containerd",
                    format!("the image carries container images, and {e}"),
                    format!("fix {CONTAINERD_CONFIG} and restart containerd, {other_runtime}"),
                    ignored,
                ),
                None => CheckResult::failed(
                    "containerd",
                    format!("the image carries container images, and {CONTAINERD_CONFIG} does not exist or cannot be read (is containerd installed?)"),
                    format!("install containerd and set `config_path = \"{}\"` in its registry section of {CONTAINERD_CONFIG}, {other_runtime}", crate::agent::registry::containerd::DEFAULT_CONFIG_PATH),
                    ignored,
                ),
            });
        }

        // Commands.
        let commands = self.required_commands();
        checks.push(if !a.missing.is_empty() {
            CheckResult::failed(
                "commands",
                format!("missing {}", a.missing.join(", ")),
                "install them on the host (the image's hooks and install commands call them)",
                ignored,
            )
        } else {
            CheckResult::passed("commands", commands.join(", "))
        });

        if !a.agent_present && a.gzip {
            self.compress_agent_ahead();
        }
        Preflight {
            agent_present: a.agent_present,
            gzip: a.gzip,
            hostname: a.hostname,
            system: Some(system),
            installed: a.installed,
            journal: a.journal,
            spool: a.spool,
            checks,
            containerd_certs: containerd_certs.and_then(Result::ok),
        }
    }

    /// About how many inodes the image needs on a host, and how that was found: with the
    /// image's bill of materials (which lists every regular file of its tree), one per file,
    /// one per directory above them, one per frame spooled on the way, and 64 for links and
    /// the work directory; without one (an image built with `--no-sbom` or by another tool),
    /// one per 16 KiB unpacked, at least 1024.
    fn needed_inodes(&self) -> (u64, String) {
        let frames = self.payload.frame_count() as u64;
        match self.payload.config.sbom.as_ref().map(|bom| bom.counts()) {
            Some(Ok(Counts { files, dirs, .. })) => (
                files + dirs + frames + 64,
                format!("{files} files and {dirs} directories in its bill of materials, {frames} frames"),
            ),
            // An unreadable document is not trusted for a count: the estimate guards the
            // install, and the check says why it was used.
            Some(Err(why)) => (
                (self.payload.uncompressed_len() / (16 * 1024)).max(1024),
                format!("estimated at one per 16 KiB unpacked: the image's bill of materials cannot be read ({why})"),
            ),
            None => (
                (self.payload.uncompressed_len() / (16 * 1024)).max(1024),
                "estimated at one per 16 KiB unpacked: the image has no bill of materials".into(),
            ),
        }
    }
}

/// Why the host's OS or kernel (in `a`) is not one the image supports: `os` and `kernel` are
/// its [`LABEL_OS`] and [`LABEL_KERNEL`] values. What was found, and what to do.
fn os_mismatch(os: Option<&str>, kernel: Option<&str>, a: &Answer) -> Option<(String, String)> {
    let host = if a.os_version.is_empty() {
        a.os_id.clone()
    } else {
        format!("{} {}", a.os_id, a.os_version)
    };
    if let Some(list) = os {
        let supported = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .any(|entry| {
                let (id, min) = match entry.split_once(">=") {
                    Some((id, min)) => (id.trim(), Some(min.trim())),
                    None => (entry, None),
                };
                // A minimum is in the named OS's own versions: a host only like it (ID_LIKE,
                // ubuntu for debian) matches an entry without one.
                match min {
                    Some(m) => a.os_id == id && at_least(&a.os_version, m),
                    None => a.os_id == id || a.os_like.iter().any(|l| l == id),
                }
            });
        if !supported {
            return Some((
                format!("the host runs {host}, the image supports {list}"),
                format!("install on a supported OS, or rebuild the image with {LABEL_OS} naming this one"),
            ));
        }
    }
    if let Some(min) = kernel {
        if !at_least(&a.kernel, min) {
            return Some((
                format!(
                    "the host's kernel is {}, the image needs {min} or newer",
                    a.kernel
                ),
                "upgrade the host's kernel, or leave the host out".into(),
            ));
        }
    }
    None
}

/// The commands a host needs for `scripts` (hooks and install commands) and the image's
/// [`LABEL_COMMANDS`] value `declared`: the installer's own, each `#!` interpreter (`env`'s
/// program for `#!/usr/bin/env X`), `systemctl` when a script calls it, and the declared ones.
fn commands_needed(scripts: &[&str], declared: Option<&str>) -> Vec<String> {
    let mut wanted: BTreeSet<String> = INSTALLER_COMMANDS.iter().map(|c| c.to_string()).collect();
    for script in scripts {
        if let Some(shebang) = script.trim_start().strip_prefix("#!") {
            let line = shebang.lines().next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let program = words.next().unwrap_or_default();
            let name = program.rsplit('/').next().unwrap_or_default();
            let interpreter = if name == "env" {
                words.find(|w| !w.starts_with('-')).unwrap_or_default()
            } else {
                name
            };
            if !interpreter.is_empty() {
                wanted.insert(interpreter.to_string());
            }
        }
        let calls_systemctl = script
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .any(|w| w == "systemctl");
        if calls_systemctl {
            wanted.insert("systemctl".into());
        }
    }
    if let Some(list) = declared {
        wanted.extend(
            list.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|c| !c.is_empty())
                .map(String::from),
        );
    }
    wanted.into_iter().collect()
}

/// The leading numbers of a version (`6.1.0-18-amd64` → 6, 1, 0; `22.04` → 22, 4).
fn version_numbers(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+', '_'])
        .map_while(|p| p.parse().ok())
        .collect()
}

/// Whether version `have` is `min` or newer, comparing their leading numbers.
fn at_least(have: &str, min: &str) -> bool {
    let (mut h, mut m) = (version_numbers(have), version_numbers(min));
    let n = h.len().max(m.len());
    h.resize(n, 0);
    m.resize(n, 0);
    h >= m
}

/// How far the host's clock is from this machine's: the middle of the host's readings at the
/// probe's start and end (`date +%s.%N`) against the middle of the time this machine waited
/// for the answer, so the probe's own run time cancels out (as NTP does it).
fn clock_skew(host: &[String], asked: SystemTime, answered: SystemTime) -> Option<Duration> {
    let readings: Vec<f64> = host.iter().filter_map(|t| t.parse().ok()).collect();
    let (first, last) = (readings.first()?, readings.last()?);
    let host = (first + last) / 2.0;
    let since = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).ok();
    let mid = (since(asked)?.as_secs_f64() + since(answered)?.as_secs_f64()) / 2.0;
    Some(Duration::from_secs_f64((host - mid).abs()))
}

/// The check across hosts: for the host `ip` named `name`, the failed `hostname` check when
/// other hosts of `names` answer to the same name (cluster software tells its members apart
/// by name), else the passed one.
pub(super) fn twins(
    names: &[(IpAddr, Option<String>)],
    ip: IpAddr,
    name: &str,
    ignored: &[String],
) -> CheckResult {
    let others: Vec<String> = names
        .iter()
        .filter(|(other, n)| *other != ip && n.as_deref() == Some(name))
        .map(|(other, _)| other.to_string())
        .collect();
    if others.is_empty() {
        return CheckResult::passed("hostname", format!("{name}, unique in the cluster"));
    }
    CheckResult::failed(
        "hostname",
        format!(
            "the hostname {name} is also the name of {}",
            others.join(", ")
        ),
        "give every host its own name (a HOSTNAME plugin can)",
        ignored,
    )
}

/// The failed `sudo` check when the probe could not run because sudo refused a non-root user
/// (it runs under `sudo -n`, which never prompts: a password or a tty it needs is a refusal,
/// not a hang).
pub(super) fn sudo_refusal(host: &Host, out: &ExecOutput) -> Option<CheckResult> {
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said
        .lines()
        .find(|l| l.contains("sudo"))?
        .trim()
        .to_string();
    if host.ssh.user == "root" || out.success() {
        return None;
    }
    let user = &host.ssh.user;
    Some(CheckResult::failed(
        "sudo",
        format!("{user} cannot run commands as root without a password or a tty ({said})"),
        format!("allow it on the host with `{user} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/ (and no `Defaults requiretty`), or connect as root"),
        &[],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_their_leading_numbers() {
        assert!(at_least("6.1.0-18-amd64", "5.4"));
        assert!(at_least("5.4", "5.4.0"));
        assert!(!at_least("4.19.0", "5.4"));
        assert!(at_least("22.04", "20.04"));
        assert!(!at_least("11", "12"));
        assert!(!at_least("", "1"));
    }

    #[test]
    fn hooks_need_their_interpreter_and_systemctl_and_the_declared_commands() {
        let needed = commands_needed(
            &[
                "#!/bin/bash\nset -e\nsystemctl restart etcd",
                "#!/usr/bin/env -S python3\nprint(1)",
                "echo plain sh; my-systemctl-wrapper",
            ],
            Some("iptables, conntrack"),
        );
        for c in [
            "bash",
            "python3",
            "systemctl",
            "iptables",
            "conntrack",
            "sha256sum",
        ] {
            assert!(needed.contains(&c.to_string()), "{c} in {needed:?}");
        }
        let plain = commands_needed(&["echo hi; my-systemctl-wrapper"], None);
        assert_eq!(plain, ["mktemp", "readlink", "sha256sum", "stat"]);
    }

    #[test]
    fn an_os_matches_by_id_or_id_like_and_minimum_version_and_the_kernel_by_its_minimum() {
        let host = |id: &str, version: &str, like: &str, kernel: &str| Answer {
            os_id: id.into(),
            os_version: version.into(),
            os_like: like.split_whitespace().map(String::from).collect(),
            kernel: kernel.into(),
            ..Answer::default()
        };
        let debian12 = host("debian", "12", "", "6.1.0-18-amd64");
        let rhel9 = host("rhel", "9.2", "fedora", "5.14.0-284.el9.x86_64");
        let rocky9 = host(
            "rocky",
            "9.2",
            "rhel centos fedora",
            "5.14.0-284.el9.x86_64",
        );
        let ubuntu20 = host("ubuntu", "20.04", "debian", "5.4.0-150-generic");
        let supported = Some("debian>=11, ubuntu>=22.04, rhel>=8");
        assert!(os_mismatch(supported, None, &debian12).is_none());
        assert!(os_mismatch(supported, None, &rhel9).is_none());
        // A minimum version is the named OS's own: rocky 9.2 is only like rhel.
        assert!(os_mismatch(supported, None, &rocky9).is_some());
        assert!(os_mismatch(Some("rhel"), None, &rocky9).is_none());
        let (found, fix) = os_mismatch(supported, None, &ubuntu20).unwrap();
        assert!(found.contains("the host runs ubuntu 20.04"), "{found}");
        assert!(fix.contains(LABEL_OS), "{fix}");
        // ubuntu is debian-like: a bare `debian` entry takes it.
        assert!(os_mismatch(Some("debian"), None, &ubuntu20).is_none());
        assert!(os_mismatch(None, Some("5.10"), &debian12).is_none());
        let (found, _) = os_mismatch(None, Some("5.10"), &ubuntu20).unwrap();
        assert!(
            found.contains("kernel is 5.4.0-150-generic, the image needs 5.10"),
            "{found}"
        );
        assert!(os_mismatch(None, None, &ubuntu20).is_none());
    }

    #[test]
    fn the_probe_answer_is_read_line_by_line() {
        let a = read_answer(
            "arch x86_64\nkernel 6.1.0\nos-id debian\nos-version 12\nos-like \n\
             df /dev/sda1 1000 400 600 40% /\ndfi /dev/sda1 100 90 10 90% /\n\
             agent missing\nhostname h1\nclock 1.5\nlisten 00000000:0950\nlisten 00000000000000000000000000000000:1F90\n\
             missing bash\ntmp ok\ninstalled \njournal abc\n",
        );
        assert_eq!(a.arch, "x86_64");
        assert_eq!(a.df, Some((1000, 600)));
        assert_eq!(a.inodes, Some((100, 10)));
        assert_eq!(a.listening, [2384, 8080].into_iter().collect());
        assert_eq!(a.missing, vec!["bash".to_string()]);
        assert_eq!(a.installed, None);
        assert!(a.journal.contains("abc"));
        assert_eq!(a.hostname.as_deref(), Some("h1"));
        assert_eq!(a.clock, ["1.5"]);
        assert_eq!(a.containerd, None);
    }

    #[test]
    fn containerd_config_lines_are_kept_as_they_are_and_give_the_config_path() {
        let a = read_answer(
            "arch x86_64\ncontainerd-config\ncontainerd version = 2\ncontainerd \n\
             containerd [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
             containerd   config_path = \"/etc/containerd/certs.d\"\nclock 2.5\n",
        );
        let text = a.containerd.as_deref().unwrap();
        assert!(text.contains("\n  config_path = "), "{text:?}");
        assert_eq!(a.clock, ["2.5"]);
        let path = config_path_in(std::path::Path::new(CONTAINERD_CONFIG), text).unwrap();
        assert_eq!(path, std::path::Path::new("/etc/containerd/certs.d"));
        // An empty config is there, and says nothing.
        let empty = read_answer("containerd-config\n");
        let text = empty.containerd.as_deref().unwrap();
        let refused = config_path_in(std::path::Path::new(CONTAINERD_CONFIG), text).unwrap_err();
        assert!(refused.to_string().contains("config_path = "), "{refused}");
    }

    #[test]
    fn the_clock_is_read_at_the_middle_of_the_probe_on_both_sides() {
        let at = |s: f64| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s);
        // A probe that ran 2 s on a host 0.25 s ahead: asked at 100, answered at 102.2.
        let skew = clock_skew(&["100.35".into(), "102.35".into()], at(100.0), at(102.2)).unwrap();
        assert!((skew.as_secs_f64() - 0.25).abs() < 1e-6, "{skew:?}");
        assert_eq!(clock_skew(&["N".into()], at(1.0), at(2.0)), None);
    }
}
