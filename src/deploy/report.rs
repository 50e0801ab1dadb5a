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
    pub roles: Vec<String>,
    #[serde(flatten)]
    pub outcome: HostOutcome,
    pub bytes_sent: u64,
    pub steps_run: usize,
    pub steps_skipped: usize,
    #[serde(rename = "elapsed_seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
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
                roles: vec!["master".into()],
                outcome: HostOutcome::Failed("disk full".into()),
                bytes_sent: 7,
                steps_run: 1,
                steps_skipped: 2,
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
