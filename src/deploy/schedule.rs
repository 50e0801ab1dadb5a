//! How hosts move through an install's stages without lockstep. Every host walks its own
//! stages (preflight, agent, rootfs, Configs, per-host hooks) on a thread of its own, so a
//! host that is down and retrying with backoff holds no healthy host at any stage. What needs
//! more than one host waits, and only it: the start (every host's first preflight answer, and
//! the cluster's lock on master0), a hook or render pass after hooks that ran on other hosts
//! (it may read their exports, and sealer's phases promise that order), and the cluster stages
//! (master0's CMDs and install hooks), which run once every host is ready. Each wait is
//! recorded for the report as what waited, for what, and how long.
//!
//! This module owns that order and the bound on hosts working at once ([`Permits`]); the
//! stages themselves, their steps and retries belong to the engine (`mod.rs`).

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::host_lock::HeldLock;
use super::journal::Step;
use super::preflight;
use super::HostWait;
use super::{CheckState, Engine, HostSlot, InstallError, InstallEvent, Stage, StepFailure};
use crate::retry::RetryPolicy;

/// A wait shorter than this is not worth a line in the report.
const NOTED_WAIT: Duration = Duration::from_secs(1);

/// At most `parallel` hosts connect or run a step attempt at once; a host that waits (its
/// backoff, another host's hook, the cluster's lock) holds no permit.
pub(super) struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

/// One host's permit to work, given back when dropped.
pub(super) struct Permit<'a>(&'a Permits);

impl Permits {
    pub(super) fn new(parallel: usize) -> Self {
        Permits {
            free: Mutex::new(parallel.max(1)),
            freed: Condvar::new(),
        }
    }

    pub(super) fn take(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}

/// Whether hosts may start changing things: pending until master0 holds the cluster's lock,
/// then open, or closed with the reason nothing may start.
enum Start {
    Pending,
    Open,
    Closed(String),
}

/// Where a host's first preflight attempt is.
enum First {
    /// Connecting (and logging in) since then.
    Connecting(Instant),
    /// Connected after `connect`; the probe runs.
    Probing { connect: Duration },
    /// The probe passed, `connect` after it began.
    Answered { connect: Duration },
    /// Failed in a way a retry may help: it is retried on its own.
    Late,
    /// Failed for good; `refused` when a preflight check refused it.
    Failed { refused: bool },
}

/// The start as decided: per host, why it does not start (if it does not), and whether its
/// first answer was part of the decision (a host that was not is checked on its own later).
struct Checked {
    verdicts: Vec<Option<String>>,
    counted: Vec<bool>,
}

/// How long the start waits for a host still connecting: three times the slowest connection
/// of the hosts that answered, and at least 2 s (a host that is down takes the TCP connect
/// timeout to say so, 10 s).
fn connect_grace(first: &[First]) -> Duration {
    let slowest = first
        .iter()
        .filter_map(|f| match f {
            First::Probing { connect } | First::Answered { connect } => Some(*connect),
            _ => None,
        })
        .max()
        .unwrap_or_default();
    (slowest * 3).max(Duration::from_secs(2))
}

/// What every host's walk shares: the first preflight answers and the start decided on them,
/// the cluster's lock, how far each host got, the host names preflight found (for a host
/// checked late), and the cluster's lock once taken.
struct Walk<'s> {
    stages: &'s [Stage],
    ips: Vec<IpAddr>,
    first: Mutex<Vec<First>>,
    answered: Condvar,
    checked: Mutex<Option<Checked>>,
    checked_cv: Condvar,
    start: Mutex<Start>,
    started: Condvar,
    /// Per host, the index of the first stage it has not settled yet (`usize::MAX` once it
    /// has ended, finished or failed).
    next: Mutex<Vec<usize>>,
    moved: Condvar,
    names: Mutex<Vec<(IpAddr, Option<String>)>>,
    lock: Mutex<Option<HeldLock>>,
    upgrade_noted: AtomicBool,
}

impl Walk<'_> {
    fn set_first(&self, host: usize, state: First, hostname: Option<String>) {
        if hostname.is_some() {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = names.get_mut(host) {
                entry.1 = hostname;
            }
        }
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = first.get_mut(host) {
            *entry = state;
        }
        self.answered.notify_all();
    }

    /// Waits until the start is decided: why `host` does not start (if it does not), and
    /// whether its first answer was part of the decision.
    fn verdict(&self, host: usize) -> (Option<String>, bool) {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = &*checked {
                return (
                    c.verdicts.get(host).cloned().flatten(),
                    c.counted.get(host).copied().unwrap_or(false),
                );
            }
            checked = self
                .checked_cv
                .wait(checked)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn open(&self, start: Start) {
        let mut s = self.start.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*s, Start::Pending) {
            *s = start;
        }
        self.started.notify_all();
    }

    /// Waits until the start is decided; the reason when it is closed.
    fn wait_start(&self) -> Result<(), String> {
        let mut s = self.start.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*s {
                Start::Pending => s = self.started.wait(s).unwrap_or_else(|p| p.into_inner()),
                Start::Open => return Ok(()),
                Start::Closed(why) => return Err(why.clone()),
            }
        }
    }

    fn advance(&self, host: usize, to: usize) {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        next[host] = next[host].max(to);
        self.moved.notify_all();
    }

    /// What stage `index` on host `me` must see settled first: every earlier hook stage on the
    /// other hosts it runs on. Returns those still unsettled as (stage, host) pairs.
    fn unsettled(&self, next: &[usize], me: usize, index: usize) -> Vec<(usize, usize)> {
        let mut pending = Vec::new();
        for (t, stage) in self.stages.iter().enumerate().take(index) {
            if !matches!(stage.step, Step::Hook { .. } | Step::Cmd { .. }) {
                continue;
            }
            for (j, ip) in self.ips.iter().enumerate() {
                if j != me && stage.hosts.contains(ip) && next[j] <= t {
                    pending.push((t, j));
                }
            }
        }
        pending
    }
}

/// Whether a step reads what earlier hooks exported (their env), or must follow them.
fn follows_hooks(step: &Step) -> bool {
    matches!(step, Step::Hook { .. } | Step::Cmd { .. } | Step::Render)
}

impl Engine<'_> {
    /// One attempt of `work` on a host (connecting first when it is not connected), under a
    /// permit; a failure that loses the connection drops it.
    pub(super) fn attempt(
        &self,
        slot: &mut HostSlot,
        work: &(dyn Fn(&Self, &mut HostSlot) -> Result<(), StepFailure> + Sync),
    ) -> Result<(), StepFailure> {
        let _permit = self.permits.take();
        let result = if slot.remote.is_none() {
            self.connect(slot).and_then(|_| work(self, slot))
        } else {
            work(self, slot)
        };
        if let Err(failure) = &result {
            if failure.drop_connection {
                if let Some(remote) = slot.remote.take() {
                    slot.bastion_bytes += remote.relayed_bytes();
                }
            }
        }
        result
    }

    /// Every host that has not failed walks `stages` (the host stages) on its own thread:
    /// its first preflight attempt, the start ([`Engine::decide_start`], on this thread), a
    /// late preflight, the agent and journal, the cluster's lock (master0 takes it), then each
    /// stage it takes part in, waiting only where [`Walk::unsettled`] says. Returns the
    /// cluster's lock, held until the caller drops it.
    pub(super) fn walk(
        &self,
        slots: &[Mutex<HostSlot>],
        stages: &[Stage],
    ) -> Result<Option<HeldLock>, InstallError> {
        let names: Vec<(IpAddr, Option<String>)> = slots
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| (s.host.ip, s.hostname.clone())))
            .collect();
        let ips: Vec<IpAddr> = names.iter().map(|(ip, _)| *ip).collect();
        let next: Vec<usize> = slots
            .iter()
            .map(|s| match s.lock() {
                Ok(s) if s.failed.is_none() => 0,
                _ => usize::MAX,
            })
            .collect();
        let first = next
            .iter()
            .map(|n| match n {
                0 => First::Connecting(Instant::now()),
                _ => First::Failed { refused: false },
            })
            .collect();
        let walk = Walk {
            stages,
            ips,
            first: Mutex::new(first),
            answered: Condvar::new(),
            checked: Mutex::new(None),
            checked_cv: Condvar::new(),
            start: Mutex::new(if self.opts.holder.is_none() {
                Start::Open
            } else {
                Start::Pending
            }),
            started: Condvar::new(),
            next: Mutex::new(next.clone()),
            moved: Condvar::new(),
            names: Mutex::new(names),
            lock: Mutex::new(None),
            upgrade_noted: AtomicBool::new(false),
        };
        let master0 = self.cluster.master0().ip;
        let not_ready = || {
            Start::Closed(format!(
                "the cluster's lock lives on master0 ({master0}), which is not ready"
            ))
        };
        let mut pushed = Ok(());
        std::thread::scope(|scope| {
            for (index, slot) in slots.iter().enumerate() {
                if next[index] == usize::MAX {
                    continue;
                }
                let walk = &walk;
                scope.spawn(move || {
                    let Ok(mut slot) = slot.lock() else {
                        walk.set_first(index, First::Failed { refused: false }, None);
                        walk.advance(index, usize::MAX);
                        return;
                    };
                    self.walk_host(walk, index, &mut slot);
                    slot.ended = Some(Instant::now());
                    if slot.host.ip == master0 && slot.failed.is_some() {
                        walk.open(not_ready());
                    }
                    walk.advance(index, usize::MAX);
                });
            }
            pushed = self.decide_start(&walk);
        });
        pushed?;
        let master0_walked = slots.iter().any(|s| {
            s.lock()
                .is_ok_and(|s| s.host.ip == master0 && s.ended.is_some())
        });
        if !master0_walked {
            walk.open(not_ready());
        }
        Ok(walk.lock.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// The start, decided once every host has answered its first preflight, or has been
    /// connecting for longer than the others needed ([`connect_grace`]), and the package's
    /// check has ended: a damaged package stops the start everywhere; hosts that share a
    /// name are refused; a refused host stops the start everywhere (nothing is sent to any
    /// host); an external registry gets the images. Hosts that had not answered are checked
    /// when they do, on their own.
    fn decide_start(&self, walk: &Walk) -> Result<(), InstallError> {
        let mut first = walk.first.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let grace = connect_grace(&first);
            let waiting = first.iter().any(|f| match f {
                First::Connecting(since) => since.elapsed() < grace,
                First::Probing { .. } => true,
                _ => false,
            });
            if !waiting {
                break;
            }
            first = walk
                .answered
                .wait_timeout(first, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let counted: Vec<bool> = first
            .iter()
            .map(|f| matches!(f, First::Answered { .. } | First::Failed { .. }))
            .collect();
        let mut refused: Vec<IpAddr> = first
            .iter()
            .zip(&walk.ips)
            .filter(|(f, _)| matches!(f, First::Failed { refused: true }))
            .map(|(_, ip)| *ip)
            .collect();
        drop(first);
        let mut verdicts: Vec<Option<String>> = vec![None; walk.ips.len()];
        // Two hosts that answer to the same name are both refused, naming each other (cluster
        // software tells its members apart by name).
        let names: Vec<(IpAddr, Option<String>)> =
            walk.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (i, (ip, name)) in names.iter().enumerate() {
            let Some(name) = name else { continue };
            if !counted[i] {
                continue;
            }
            let check = preflight::twins(&names, *ip, name, &self.opts.ignore_preflight);
            match check.state {
                CheckState::Failed => {
                    verdicts[i] = Some(format!("preflight: {}", check.message()));
                    refused.push(*ip);
                }
                CheckState::Ignored => (self.events)(InstallEvent::Note {
                    host: Some(*ip),
                    text: format!(
                        "warning: preflight check hostname failed and is ignored (--ignore-preflight): {}",
                        check.message()
                    ),
                }),
                _ => {}
            }
        }
        let mut pushed = Ok(());
        let package = match &self.opts.package_check {
            Some(check) => check.wait(),
            None => Ok(()),
        };
        if let Err(why) = package {
            for verdict in verdicts.iter_mut().filter(|v| v.is_none()) {
                *verdict = Some(format!("not started: {why}"));
            }
            pushed = Err(InstallError::Package(why));
        } else if !refused.is_empty() {
            let refused: Vec<String> = refused.iter().map(IpAddr::to_string).collect();
            for verdict in verdicts.iter_mut().filter(|v| v.is_none()) {
                *verdict = Some(format!(
                    "not started: preflight refused {}; nothing was sent to any host",
                    refused.join(", ")
                ));
            }
        } else if let Err(why) = self.push_to_external() {
            // An external registry gets the images before any host is changed.
            for verdict in verdicts.iter_mut().filter(|v| v.is_none()) {
                *verdict = Some(format!("not started: {why}"));
            }
            pushed = Err(InstallError::ExternalRegistry(why));
        }
        *walk.checked.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Checked { verdicts, counted });
        walk.checked_cv.notify_all();
        pushed
    }

    /// A host's first preflight attempt; marks it late when a retry may help.
    fn first_preflight(&self, walk: &Walk, index: usize, slot: &mut HostSlot) {
        let policy = RetryPolicy::new(self.opts.attempts, self.opts.backoff);
        (self.events)(InstallEvent::Stage {
            host: slot.host.ip,
            stage: "preflight".into(),
        });
        let connecting = Instant::now();
        let connected = {
            let _permit = self.permits.take();
            self.connect(slot)
        };
        let result = connected.and_then(|_| {
            walk.set_first(
                index,
                First::Probing {
                    connect: connecting.elapsed(),
                },
                None,
            );
            self.attempt(slot, &|engine, slot| engine.preflight(slot))
        });
        let state = match result {
            Ok(()) => First::Answered {
                connect: connecting.elapsed(),
            },
            Err(failure) if policy.retries(failure.retry, 1) => {
                (self.events)(InstallEvent::Note {
                    host: Some(slot.host.ip),
                    text: format!(
                        "preflight failed ({}); retrying on its own while the other hosts go on",
                        failure.message
                    ),
                });
                slot.late = Some(Instant::now());
                First::Late
            }
            Err(failure) => {
                slot.failed = Some(format!("preflight: {}", failure.message));
                First::Failed {
                    refused: slot.refused,
                }
            }
        };
        walk.set_first(index, state, slot.hostname.clone());
    }

    fn walk_host(&self, walk: &Walk, index: usize, slot: &mut HostSlot) {
        let policy = RetryPolicy::new(self.opts.attempts, self.opts.backoff);
        self.first_preflight(walk, index, slot);
        let (verdict, counted) = walk.verdict(index);
        if slot.failed.is_some() {
            return;
        }
        if let Some(why) = verdict {
            slot.failed = Some(why);
            return;
        }
        if slot.late.is_some() {
            let delay = policy.delay(1);
            std::thread::sleep(delay);
            self.retry_from(slot, "preflight", &|e, s| e.preflight(s), 2);
            if slot.failed.is_some() {
                return;
            }
        }
        if !counted {
            // Checked after the start: its name against the others' now.
            let mut names = walk.names.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = names.iter_mut().find(|(ip, _)| *ip == slot.host.ip) {
                entry.1 = slot.hostname.clone();
            }
            if let Some(name) = slot.hostname.clone() {
                let check =
                    preflight::twins(&names, slot.host.ip, &name, &self.opts.ignore_preflight);
                if check.state == CheckState::Failed {
                    slot.failed = Some(format!("preflight: {}", check.message()));
                    return;
                }
            }
        }
        (self.events)(InstallEvent::Stage {
            host: slot.host.ip,
            stage: "prepare".into(),
        });
        self.with_retries(slot, "prepare", &|engine, slot| engine.prepare(slot));
        if slot.failed.is_some() {
            return;
        }
        if let Some(note) = self.upgrade_note(slot, &walk.upgrade_noted) {
            (self.events)(InstallEvent::Note {
                host: None,
                text: note,
            });
        }
        if slot.host.ip == self.cluster.master0().ip {
            if let Some(holder) = self.opts.holder.as_deref() {
                match self.take_cluster_lock(slot, holder) {
                    Ok(held) => {
                        *walk.lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
                        walk.open(Start::Open);
                    }
                    Err(why) => walk.open(Start::Closed(why)),
                }
            }
        }
        let asked = Instant::now();
        let blocked = {
            let s = walk.start.lock().unwrap_or_else(|p| p.into_inner());
            matches!(*s, Start::Pending)
        };
        if let Err(why) = walk.wait_start() {
            slot.failed = Some(format!("not started: {why}"));
            return;
        }
        if blocked {
            self.note_wait(
                slot,
                "its changes",
                format!(
                    "the cluster's lock on master0 {}",
                    self.cluster.master0().ip
                ),
                asked.elapsed(),
            );
        }
        for (s, stage) in walk.stages.iter().enumerate() {
            let takes = stage.hosts.contains(&slot.host.ip)
                && stage.route.takes(slot.upgrading_from.is_some());
            if takes && follows_hooks(&stage.step) {
                self.wait_for_hooks(walk, index, s, slot);
            }
            if takes {
                (self.events)(InstallEvent::Stage {
                    host: slot.host.ip,
                    stage: stage.label.clone(),
                });
                self.with_retries(slot, &stage.label, &|engine, slot| {
                    engine.run_step(slot, &stage.step)
                });
                if slot.failed.is_some() {
                    return;
                }
            }
            walk.advance(index, s + 1);
        }
    }

    /// Waits until every earlier hook stage has settled on the other hosts it runs on, and
    /// records the wait when there was one.
    fn wait_for_hooks(&self, walk: &Walk, me: usize, index: usize, slot: &mut HostSlot) {
        let asked = Instant::now();
        let mut next = walk.next.lock().unwrap_or_else(|p| p.into_inner());
        let first = walk.unsettled(&next, me, index);
        if first.is_empty() {
            return;
        }
        while !walk.unsettled(&next, me, index).is_empty() {
            next = walk.moved.wait(next).unwrap_or_else(|p| p.into_inner());
        }
        drop(next);
        let mut hooks: Vec<String> = Vec::new();
        let mut hosts: Vec<String> = Vec::new();
        for (t, j) in first {
            let name = self.step_name(&walk.stages[t].step);
            if !hooks.contains(&name) {
                hooks.push(name);
            }
            let ip = walk.ips[j].to_string();
            if !hosts.contains(&ip) {
                hosts.push(ip);
            }
        }
        let step = self.step_name(&walk.stages[index].step);
        self.note_wait(
            slot,
            &step,
            format!(
                "{} on {} (their exports, and sealer's phase order)",
                hooks.join(", "),
                hosts.join(", ")
            ),
            asked.elapsed(),
        );
    }

    /// Records that `step` on the host waited `took` for `what`, and says so when it is long
    /// enough to matter.
    pub(super) fn note_wait(&self, slot: &mut HostSlot, step: &str, what: String, took: Duration) {
        if took < NOTED_WAIT {
            return;
        }
        (self.events)(InstallEvent::Note {
            host: Some(slot.host.ip),
            text: format!("{step} waited {:.1}s for {what}", took.as_secs_f64()),
        });
        slot.waits.push(HostWait {
            step: step.to_string(),
            waited_for: what,
            seconds: took.as_secs_f64(),
        });
    }

    /// After every host's walk, before the cluster stages: master0 records how long they
    /// waited for the last host to be ready.
    pub(super) fn note_cluster_wait(&self, slots: &[Mutex<HostSlot>], stages: &[Stage]) {
        let ended: Vec<(IpAddr, Instant)> = slots
            .iter()
            .filter_map(|s| s.lock().ok())
            .filter_map(|s| s.ended.map(|e| (s.host.ip, e)))
            .collect();
        let Some((last, last_ended)) = ended.iter().max_by_key(|(_, e)| *e).copied() else {
            return;
        };
        let master0 = self.cluster.master0().ip;
        for slot in slots {
            let Ok(mut slot) = slot.lock() else { continue };
            if slot.host.ip != master0 || last == master0 {
                continue;
            }
            let Some(own) = slot.ended else { continue };
            // The first cluster step master0 itself runs: an upgraded master0 skips the
            // install route's CMDs, so naming one of those would tell of a step never run.
            let upgrading = slot.upgrading_from.is_some();
            let Some(first) = stages
                .iter()
                .find(|s| s.hosts.contains(&master0) && s.route.takes(upgrading))
            else {
                continue;
            };
            let step = format!("the cluster steps ({} first)", self.step_name(&first.step));
            self.note_wait(
                &mut slot,
                &step,
                format!("every host to be ready (the last: {last})"),
                last_ended.saturating_duration_since(own),
            );
        }
    }

    /// The retries of `work` on a host from attempt number `attempt` on; a host that runs out
    /// of them is failed with the last reason.
    pub(super) fn retry_from(
        &self,
        slot: &mut HostSlot,
        stage: &str,
        work: &(dyn Fn(&Self, &mut HostSlot) -> Result<(), StepFailure> + Sync),
        mut attempt: u32,
    ) {
        let policy = RetryPolicy::new(self.opts.attempts, self.opts.backoff);
        loop {
            let Err(failure) = self.attempt(slot, work) else {
                return;
            };
            if !policy.retries(failure.retry, attempt) {
                let attempts = if attempt > 1 {
                    format!(" (after {attempt} attempts)")
                } else {
                    String::new()
                };
                slot.failed = Some(format!("{stage}: {}{attempts}", failure.message));
                return;
            }
            let delay = policy.delay(attempt);
            (self.events)(InstallEvent::Note {
                host: Some(slot.host.ip),
                text: format!(
                    "{stage} failed ({}); retrying in {:.1}s",
                    failure.message,
                    delay.as_secs_f64()
                ),
            });
            std::thread::sleep(delay);
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn permits_bound_the_hosts_working_at_once() {
        let permits = Permits::new(2);
        let busy = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    let _p = permits.take();
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
