//! What an install tells its caller: the events it emits while it works and the outcome of
//! every host. It does not format them for people: `ui::install` prints the events and the
//! table. Only the duration words of the engine's own messages (`timed out after 30 min`) are here.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// What the engine reports while it works.
#[derive(Debug, Clone)]
pub enum InstallEvent {
    /// A host starts a stage.
    Stage { host: IpAddr, stage: String },
    /// Bytes of frames sent to a host so far, of `total` it needs.
    Sent { host: IpAddr, sent: u64, total: u64 },
    /// Bytes of the agent's upload sent to a host so far, of `total` (compressed when the
    /// host can undo it).
    AgentSent { host: IpAddr, sent: u64, total: u64 },
    /// A step was skipped because the host's journal has it.
    Skipped { host: IpAddr, step: String },
    /// Something worth a line (a retry, a finished hook).
    Note { host: Option<IpAddr>, text: String },
}

/// How a host ended. In JSON: `"outcome": "installed" | "up_to_date" | "failed"`, and
/// `"reason"` beside a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum HostOutcome {
    /// Steps ran and all succeeded.
    Installed,
    /// Every step was already done.
    UpToDate,
    /// It failed; the message says where and why.
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub ip: IpAddr,
    /// The host name the address was resolved from, when the host was given by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The SSH port.
    pub port: u16,
    /// The jump host the host was reached through (`user@address`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bastion: Option<String>,
    /// Bytes carried through the jump host, both ways (SSH traffic, so more than `bytes_sent`).
    pub bastion_bytes: u64,
    pub roles: Vec<String>,
    #[serde(flatten)]
    pub outcome: HostOutcome,
    /// The host's OS and kernel as preflight read them (`Debian GNU/Linux 12 (bookworm),
    /// kernel 6.1.0-18-amd64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Every byte sent to the host: the agent's upload and the frames.
    pub bytes_sent: u64,
    /// Of `bytes_sent`, the agent's upload: 0 when the host had this very agent, absent on
    /// this machine (where the agent is the installer itself) and for a host never reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_bytes_sent: Option<u64>,
    /// Compressed bytes of the frames the host's new tree is unpacked from (0 when it got none).
    pub bytes_needed: u64,
    /// Of `bytes_needed`, the bytes of frames the host already kept (from the generation an
    /// upgrade replaces, or a run cut off earlier) and that were not sent.
    pub bytes_reused: u64,
    /// On a registry host, the container images whose journal step was done before this run
    /// (their files found there); 0 elsewhere.
    pub images_served: usize,
    /// On a registry host, the container images this run checked (every file hashed) or
    /// repaired, each then recorded as its own step; 0 elsewhere.
    pub images_checked: usize,
    pub steps_run: usize,
    pub steps_skipped: usize,
    /// What the host's steps waited for: another host's hooks, the cluster's lock on master0,
    /// or (on master0, before the cluster steps) every host to be ready. Waits under 1 s are
    /// left out.
    pub waited: Vec<HostWait>,
    /// From the start of the run to the end of the host's last step (a healthy host that
    /// finished early is not charged for another host's retries).
    #[serde(rename = "elapsed_seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
}

/// One wait of a host's step on something outside the host.
#[derive(Debug, Clone, Serialize)]
pub struct HostWait {
    /// What waited (`post-init-host hook b`, `its changes`, `the cluster steps (…)`).
    pub step: String,
    /// What it waited for (`pre-init-host hook a on 10.0.0.5 (…)`).
    pub waited_for: String,
    pub seconds: f64,
}

impl HostReport {
    /// How reports name the host: `10.0.0.2`, `10.0.0.2:2222`, `node1 (10.0.0.2)`.
    pub fn address(&self) -> crate::address::HostAddress {
        crate::address::HostAddress {
            ip: self.ip,
            name: self.name.clone(),
            port: Some(self.port),
        }
    }
}

/// `sealer run --json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// What was done to a host that changed: `installed`, `joined`, `removed`, `rolled back`.
    pub done: &'static str,
    pub hosts: Vec<HostReport>,
    /// Why cluster stages did not run, when they did not.
    pub cluster_stages_skipped: Option<String>,
    #[serde(rename = "elapsed_seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
}

/// A duration as fractional seconds.
fn seconds<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(d.as_secs_f64())
}

impl InstallReport {
    pub fn success(&self) -> bool {
        self.cluster_stages_skipped.is_none()
            && self
                .hosts
                .iter()
                .all(|h| !matches!(h.outcome, HostOutcome::Failed(_)))
    }

    /// True when nothing had to be done anywhere.
    pub fn up_to_date(&self) -> bool {
        self.success()
            && self
                .hosts
                .iter()
                .all(|h| h.outcome == HostOutcome::UpToDate)
    }
}

/// `90 s`, `30 min`, `1 h 30 min`.
pub(super) fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (h, 0, 0) => format!("{h} h"),
        (h, m, 0) => format!("{h} h {m} min"),
        _ => format!("{secs} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_host_serializes_as_outcome_failed_with_its_reason_beside_it() {
        let report = InstallReport {
            done: "installed",
            hosts: vec![HostReport {
                ip: "10.0.0.1".parse().unwrap(),
                name: None,
                port: 22,
                bastion: None,
                bastion_bytes: 0,
                roles: vec!["master".into()],
                outcome: HostOutcome::Failed("disk full".into()),
                system: None,
                bytes_sent: 7,
                agent_bytes_sent: None,
                bytes_needed: 7,
                bytes_reused: 0,
                images_served: 0,
                images_checked: 0,
                steps_run: 1,
                steps_skipped: 2,
                waited: Vec::new(),
                elapsed: Duration::from_millis(1500),
            }],
            cluster_stages_skipped: Some("a host failed".into()),
            elapsed: Duration::from_secs(2),
        };
        let json = serde_json::to_value(&report).unwrap();
        let host = &json["hosts"][0];
        assert_eq!(host["outcome"], "failed", "{json}");
        assert_eq!(host["reason"], "disk full", "{json}");
        assert_eq!(host["ip"], "10.0.0.1", "{json}");
        assert_eq!(host["elapsed_seconds"], 1.5, "{json}");
        assert_eq!(json["cluster_stages_skipped"], "a host failed", "{json}");
    }
}
