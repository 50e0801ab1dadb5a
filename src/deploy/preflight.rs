//! Preflight: the one read-only probe of a host and what it finds wrong, shared by the install
//! (which refuses the host) and the dry run (which lists the problems). The probe asks for the
//! architecture, the free space under the data root, whether the agent is there intact, the
//! hostname and the clock; [`twins`] is the check across hosts (names must be unique).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::Engine;
use crate::clusterfile::shell_quote;

/// What a host's preflight found.
pub(super) struct Preflight {
    pub free_kb: u64,
    pub agent_present: bool,
    pub hostname: Option<String>,
    /// What preflight refuses the host for (wrong architecture, clock too far off), each one
    /// sentence saying what to do.
    pub problems: Vec<String>,
}

impl Engine<'_> {
    /// The probe's shell command; it prints five lines, which [`Engine::read_preflight`] reads
    /// (the dry run appends more of its own after them).
    pub(super) fn preflight_command(&self, agent: &str) -> String {
        format!(
            "uname -m; d={}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; df -Pk \"$d\" | tail -n 1; if [ -f {a} ] && [ \"$(sha256sum < {a})\" = \"{sha}  -\" ]; then echo agent-present; else echo agent-missing; fi; hostname; date +%s.%N",
            shell_quote(&self.cluster.data_root.display().to_string()),
            a = shell_quote(agent),
            sha = self.payload.agent_sha256
        )
    }

    /// Reads the probe's first five lines; `asked` and `answered` bracket the probe, for the
    /// clock.
    pub(super) fn read_preflight(
        &self,
        text: &str,
        asked: SystemTime,
        answered: SystemTime,
    ) -> Preflight {
        let mut lines = text.lines();
        let mut problems = Vec::new();
        let arch = lines.next().unwrap_or_default().trim();
        let want = match self.payload.config.architecture.as_str() {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            other => other,
        };
        if arch != want {
            problems.push(format!("the host is {arch}, the image is for {want}"));
        }
        let free_kb = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let agent_present = lines.next().map(str::trim) == Some("agent-present");
        let hostname = lines.next().map(|l| l.trim().to_string());
        let skew = lines
            .next()
            .and_then(|l| clock_skew(l.trim(), asked, answered));
        if let Some(skew) = skew.filter(|s| *s > self.opts.max_clock_skew) {
            problems.push(format!(
                "the host's clock is {:.3}s off this machine's (the limit is {:.3}s); synchronise the clocks (NTP) or raise --max-clock-skew",
                skew.as_secs_f64(),
                self.opts.max_clock_skew.as_secs_f64()
            ));
        }
        Preflight {
            free_kb,
            agent_present,
            hostname,
            problems,
        }
    }
}

/// How far the host's clock (`date +%s.%N` as it printed it) is from this machine's, taking
/// the middle of the time the answer took as this machine's reading.
fn clock_skew(host: &str, asked: SystemTime, answered: SystemTime) -> Option<Duration> {
    let host: f64 = host.parse().ok()?;
    let since = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).ok();
    let mid = (since(asked)?.as_secs_f64() + since(answered)?.as_secs_f64()) / 2.0;
    Some(Duration::from_secs_f64((host - mid).abs()))
}

/// The check across hosts: for the host `ip` named `name`, why it is refused when other hosts
/// of `names` answer to the same name (cluster software tells its members apart by name).
pub(super) fn twins(names: &[(IpAddr, Option<String>)], ip: IpAddr, name: &str) -> Option<String> {
    let others: Vec<String> = names
        .iter()
        .filter(|(other, n)| *other != ip && n.as_deref() == Some(name))
        .map(|(other, _)| other.to_string())
        .collect();
    (!others.is_empty()).then(|| {
        format!(
            "the hostname {name} is also the name of {}; give every host its own name (a HOSTNAME plugin can)",
            others.join(", ")
        )
    })
}
