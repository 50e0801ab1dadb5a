//! What an install tells its caller: the events it emits while it works and the outcome of
//! every host. It does not format them for people: `ui::install` prints the events and the
//! table. Only the duration words of the engine's own messages (`timed out after 30 min`) are here.

use std::net::IpAddr;
use std::time::Duration;

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

/// How a host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// Steps ran and all succeeded.
    Installed,
    /// Every step was already done.
    UpToDate,
    /// It failed; the message says where and why.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct HostReport {
    pub ip: IpAddr,
    pub roles: Vec<String>,
    pub outcome: HostOutcome,
    pub bytes_sent: u64,
    pub steps_run: usize,
    pub steps_skipped: usize,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct InstallReport {
    /// What was done to a host that changed: `installed`, `joined`, `removed`, `rolled back`.
    pub done: &'static str,
    pub hosts: Vec<HostReport>,
    /// Why cluster stages did not run, when they did not.
    pub cluster_stages_skipped: Option<String>,
    pub elapsed: Duration,
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
