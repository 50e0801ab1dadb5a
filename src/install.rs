//! The install recipe shared by `sealer run` and `app.run install`: resolve where to install,
//! take the payload from its source — an image of the local store, or the `.run` package this
//! program heads — and check it before any host is touched, run the deploy engine, hand back its
//! report.
//!
//! One command at a time changes a cluster: the recipe takes the cluster's lock
//! ([`crate::clusters`]) before it touches anything and adds the install to the cluster's record
//! when it ends, whether it finished or not.
//!
//! It decides and prints nothing: the caller passes a reporter that turns [`Event`]s into text
//! (`ui::install` does). The engine itself lives in `deploy`; this is only the order of its parts.

use std::net::IpAddr;
use std::path::PathBuf;

use packer::{ReadError, RunFile};

use crate::clusters::{self, ClusterRecord, ClusterStateError, HostRecord, InstallRecord};
use crate::deploy::payload::PayloadError;
use crate::deploy::target::{
    resolve, ClusterArgs, DeleteArgs, JoinArgs, Target, TargetError, TargetSpec,
};
use crate::deploy::HostOutcome;
use crate::deploy::{find_stub, install, InstallError, InstallEvent, InstallOptions};
use crate::deploy::{Change, HostPlan, HostStatus, InstallReport, Payload};
use crate::store::{Store, StoreError};

/// Where the bytes to install come from.
pub enum Source<'a> {
    /// An image of the store at `root`; `None` takes the Clusterfile's `spec.image`. Every blob is
    /// checked before any host is touched: its frames against the index the store keeps, or
    /// its digest while a blob without one is indexed.
    Store {
        root: PathBuf,
        image: Option<String>,
    },
    /// A `.run` package: every frame's digest is checked first; a damaged package is refused whole.
    Package(&'a RunFile),
}

/// What to install where, and how.
pub struct Request<'a> {
    pub target: TargetSpec,
    pub source: Source<'a>,
    /// Hosts worked on at once.
    pub parallel: usize,
    /// Attempts per host before it is reported failed (at least 1).
    pub attempts: u32,
    /// Where cluster locks and records live (`$SEALER_ROOT`).
    pub state_root: PathBuf,
    /// The command line, as the lock names its holder (`sealer run etcd:v1`).
    pub command: String,
    /// Hosts joining or leaving; [`Membership::Keep`] for an install.
    pub membership: Membership,
    /// An install that does not finish on every host brings back the previous generation on
    /// the hosts that switched.
    pub rollback_on_failure: bool,
}

/// Who joins or leaves the cluster the target describes.
#[derive(Debug, Clone, Default)]
pub enum Membership {
    /// Install or converge every host of the target.
    #[default]
    Keep,
    /// Add these hosts (with the SSH settings of master0) to the running cluster.
    Join {
        masters: Vec<IpAddr>,
        nodes: Vec<IpAddr>,
    },
    /// Remove these hosts from the cluster.
    Delete { hosts: Vec<IpAddr> },
    /// Remove the whole cluster.
    DeleteAll,
    /// Bring back the previous generation on every host that holds `undo` (a payload id).
    Rollback { undo: String },
}

/// What the recipe reports while it works.
#[derive(Debug, Clone)]
pub enum Event {
    /// The package's frames are being checked: `done` of `total` compressed bytes. The first
    /// event has `done == 0`.
    Checking { done: u64, total: u64 },
    /// Every frame of the package is intact.
    Checked,
    /// The payload is ready and the engine starts.
    Starting(Summary),
    /// What the engine reports about a host or the cluster.
    Host(InstallEvent),
}

/// What is about to be installed where.
#[derive(Debug, Clone)]
pub struct Summary {
    pub image: String,
    pub compressed: u64,
    pub frames: usize,
    pub uncompressed: u64,
    pub hosts: usize,
    pub cluster: String,
}

impl Summary {
    fn of(payload: &Payload, target: &Target) -> Summary {
        Summary {
            image: payload.image.clone(),
            compressed: payload.compressed_len(),
            frames: payload.frame_count(),
            uncompressed: payload.uncompressed_len(),
            hosts: target.cluster.hosts.len(),
            cluster: target.cluster.name.clone(),
        }
    }
}

/// Why an install stopped, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hosts could not be worked out (flags, Clusterfile, `--local`).
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(
        "name the image to install (sealer run IMAGE ...) or set spec.image in the Clusterfile"
    )]
    NoImage,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The package is damaged or unreadable.
    #[error(transparent)]
    Package(#[from] ReadError),
    /// The payload could not be assembled (agent, layers, config).
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Install(#[from] InstallError),
    /// Another command holds the cluster's lock, or its record is unreadable.
    #[error(transparent)]
    ClusterState(#[from] ClusterStateError),
    #[error("this machine has no record of cluster {0}; give its Clusterfile with -f (and the image with --image)")]
    NoRecord(String),
    #[error("this machine's record of cluster {0} has no earlier image to roll back to")]
    NothingToRollBack(String),
    #[error("name the hosts to add: join -m MASTERS and/or -n NODES")]
    NoHostsToJoin,
    #[error(transparent)]
    HostList(#[from] crate::clusterfile::HostListError),
    #[error("{0} is not a host of cluster {1}; the hosts are {2}")]
    NotAMember(IpAddr, String, String),
    #[error("{0} is master0 of cluster {1}: it leaves only with the whole cluster (sealer delete --all)")]
    Master0Leaving(IpAddr, String),
    /// The engine ran, but some host or cluster stage failed; the report says which.
    #[error("the install did not finish on every host; fix the cause above and run the same command again: finished steps are not repeated")]
    Unfinished,
}

/// Install as `request` says, reporting through `report`. The report comes back whether or not
/// every host finished; [`finished`] tells.
pub fn run(request: &Request<'_>, report: &(dyn Fn(Event) + Sync)) -> Result<InstallReport, Error> {
    let mut target = resolve(&request.target)?;
    report_notes(&target, report);
    let change = membership_change(&mut target, &request.membership)?;
    let name = target.cluster.name.clone();
    let (_lock, stale) = clusters::lock(&request.state_root, &name, &request.command)?;
    if let Some(gone) = stale {
        report(Event::Host(InstallEvent::Note {
            host: None,
            text: format!(
                "the last change to cluster {name}, {gone}, did not finish; taking over its lock"
            ),
        }));
    }
    let mut record = ClusterRecord::load(&request.state_root, &name)?;
    let started = clusters::timestamp();
    let payload = payload(request, &target, report)?;
    let mut opts = InstallOptions::new(target.connect.clone());
    opts.parallel = request.parallel;
    opts.attempts = request.attempts.max(1);
    opts.change = change;
    if let Some(limit) = request.target.max_clock_skew {
        opts.max_clock_skew = limit;
    }
    report(Event::Starting(Summary::of(&payload, &target)));
    let outcome = install(&target.cluster, &payload, &opts, &|event| {
        report(Event::Host(event))
    })?;
    if request.rollback_on_failure
        && !outcome.success()
        && matches!(request.membership, Membership::Keep)
    {
        report(Event::Host(InstallEvent::Note {
            host: None,
            text: "the install did not finish on every host; rolling back the hosts that switched (--rollback-on-failure)".into(),
        }));
        let mut back = InstallOptions::new(target.connect.clone());
        back.parallel = request.parallel;
        back.attempts = request.attempts.max(1);
        back.change = Change::Rollback {
            undo: payload.id.clone(),
        };
        let undone = install(&target.cluster, &payload, &back, &|event| {
            report(Event::Host(event))
        })?;
        report(Event::Host(InstallEvent::Note {
            host: None,
            text: if undone.success() {
                "rolled back: every host that switched holds its previous tree again".into()
            } else {
                "the rollback did not finish on every host; run `sealer rollback` again".into()
            },
        }));
    }
    record.installs.push(InstallRecord {
        action: match &request.membership {
            Membership::Keep => "install",
            Membership::Join { .. } => "join",
            Membership::Delete { .. } => "delete",
            Membership::DeleteAll => "delete --all",
            Membership::Rollback { .. } => "rollback",
        }
        .to_string(),
        image: payload.image.clone(),
        payload: payload.id.clone(),
        started,
        finished: clusters::timestamp(),
        ok: outcome.success(),
        hosts: outcome
            .hosts
            .iter()
            .map(|h| HostRecord {
                ip: h.ip.to_string(),
                roles: h.roles.clone(),
                result: match &h.outcome {
                    HostOutcome::Installed => "installed".into(),
                    HostOutcome::UpToDate => "up to date".into(),
                    HostOutcome::Failed(why) => format!("failed: {why}"),
                },
            })
            .collect(),
    });
    // The record describes the cluster as it is now: the Clusterfile as applied, or (for host
    // flags, joins and deletes) one written from the hosts that are members now.
    let mut members = target.cluster.clone();
    if let Change::Delete { hosts, .. } = &opts.change {
        members.hosts.retain(|h| !hosts.contains(&h.ip));
    }
    record.clusterfile = match (&request.target.clusterfile, &request.membership) {
        (_, Membership::DeleteAll) => None,
        (Some(file), Membership::Keep) => std::fs::read_to_string(file)
            .ok()
            .map(|text| clusters::masked_clusterfile(&text)),
        (Some(file), _) => std::fs::read_to_string(file)
            .ok()
            .map(|text| clusters::with_members(&clusters::masked_clusterfile(&text), &members)),
        (None, _) => Some(clusters::clusterfile_of(&members)),
    };
    record.save(&request.state_root)?;
    Ok(outcome)
}

/// Where the payload of a join, delete or rollback comes from.
pub enum ChangeSource<'a> {
    /// The local store: the image named by `--image`, or the last one this machine installed.
    Store,
    /// The `.run` package this program heads.
    Package(&'a RunFile),
}

/// The request for a join, delete or rollback of the cluster `args` names: its Clusterfile
/// (given, or this machine's record of it) and the payload from `from`.
pub fn change_request<'a>(
    args: &ClusterArgs,
    from: ChangeSource<'a>,
    command: String,
    membership: Membership,
) -> Result<Request<'a>, Error> {
    let root = Store::default_root();
    let clusterfile = match &args.clusterfile {
        Some(file) => file.clone(),
        None => ClusterRecord::clusterfile_path(&root, &args.cluster_name)
            .ok_or_else(|| Error::NoRecord(args.cluster_name.clone()))?,
    };
    let source = match from {
        ChangeSource::Package(run) => Source::Package(run),
        ChangeSource::Store => Source::Store {
            root: root.clone(),
            image: match &args.image {
                Some(image) => Some(image.clone()),
                None => ClusterRecord::load(&root, &args.cluster_name)?
                    .current()
                    .map(|i| i.image.clone()),
            },
        },
    };
    Ok(Request {
        target: TargetSpec {
            flags: Default::default(),
            clusterfile: Some(clusterfile),
            local: false,
            data_root: None,
            known_hosts: args.work.known_hosts.clone(),
            max_clock_skew: None,
        },
        source,
        parallel: args.work.parallel,
        attempts: args.work.attempts,
        state_root: root,
        command,
        membership,
        rollback_on_failure: false,
    })
}

/// The membership change of `join -m/-n`.
pub fn join_membership(args: &JoinArgs) -> Result<Membership, Error> {
    let ips = |list: &Option<String>| -> Result<Vec<IpAddr>, Error> {
        Ok(match list {
            Some(list) => crate::clusterfile::parse_host_list(list)?,
            None => Vec::new(),
        })
    };
    let (masters, nodes) = (ips(&args.masters)?, ips(&args.nodes)?);
    if masters.is_empty() && nodes.is_empty() {
        return Err(Error::NoHostsToJoin);
    }
    Ok(Membership::Join { masters, nodes })
}

/// The membership change of `delete -n IPS | --all`.
pub fn delete_membership(args: &DeleteArgs) -> Result<Membership, Error> {
    Ok(match &args.hosts {
        _ if args.all => Membership::DeleteAll,
        Some(list) => Membership::Delete {
            hosts: crate::clusterfile::parse_host_list(list)?,
        },
        None => Membership::Delete { hosts: Vec::new() },
    })
}

/// What `rollback` undoes (the current payload) and the image it goes back to, from this
/// machine's record of the cluster.
pub fn rollback_membership(args: &ClusterArgs) -> Result<(Membership, String), Error> {
    let record = ClusterRecord::load(&Store::default_root(), &args.cluster_name)?;
    let (current, previous) = record
        .rollback_target()
        .ok_or_else(|| Error::NothingToRollBack(args.cluster_name.clone()))?;
    Ok((
        Membership::Rollback {
            undo: current.payload.clone(),
        },
        previous.image.clone(),
    ))
}

/// Hosts this machine's record of the cluster that `clusterfile` describes holds and the file
/// no longer does: what `sealer apply` deletes before it converges the rest to the file.
pub fn hosts_leaving(clusterfile: &std::path::Path) -> Result<(String, Vec<IpAddr>), Error> {
    let wanted = crate::clusterfile::load_cluster(clusterfile)
        .map_err(|e| Error::Target(TargetError::Clusterfile(e)))?;
    let root = Store::default_root();
    let Some(recorded) = ClusterRecord::clusterfile_path(&root, &wanted.name) else {
        return Ok((wanted.name, Vec::new()));
    };
    let now = crate::clusterfile::load_cluster(&recorded)
        .map_err(|e| Error::Target(TargetError::Clusterfile(e)))?;
    let leaving = now
        .hosts
        .iter()
        .map(|h| h.ip)
        .filter(|ip| !wanted.hosts.iter().any(|h| h.ip == *ip))
        .collect();
    Ok((wanted.name, leaving))
}

/// Every note the Clusterfile's loader made (what it keeps but does not act on), on every run.
fn report_notes(target: &Target, report: &(dyn Fn(Event) + Sync)) {
    for note in &target.notes {
        report(Event::Host(InstallEvent::Note {
            host: None,
            text: format!("note: {note}"),
        }));
    }
}

/// Applies `membership` to the resolved cluster: joining hosts are added (roles from the
/// request, SSH settings from master0); leaving hosts must be members, and master0 leaves only
/// with the whole cluster. Returns what the engine is to do.
fn membership_change(target: &mut Target, membership: &Membership) -> Result<Change, Error> {
    let cluster = &mut target.cluster;
    let members = || {
        cluster
            .hosts
            .iter()
            .map(|h| h.ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(match membership {
        Membership::Keep => Change::Install,
        Membership::Join { masters, nodes } => {
            let template = cluster.master0().clone();
            let mut joining = Vec::new();
            for (ips, role) in [(masters, "master"), (nodes, "node")] {
                for ip in ips {
                    joining.push(*ip);
                    if cluster.hosts.iter().any(|h| h.ip == *ip) {
                        continue;
                    }
                    let mut host = template.clone();
                    host.ip = *ip;
                    host.roles = vec![role.to_string()];
                    host.env.clear();
                    host.labels.clear();
                    host.taints.clear();
                    host.host_key = None;
                    cluster.hosts.push(host);
                }
            }
            Change::Join { hosts: joining }
        }
        Membership::Delete { hosts } => {
            for ip in hosts {
                if !cluster.hosts.iter().any(|h| h.ip == *ip) {
                    return Err(Error::NotAMember(*ip, cluster.name.clone(), members()));
                }
                if cluster.master0().ip == *ip {
                    return Err(Error::Master0Leaving(*ip, cluster.name.clone()));
                }
            }
            Change::Delete {
                hosts: hosts.clone(),
                all: false,
            }
        }
        Membership::DeleteAll => Change::Delete {
            hosts: cluster.hosts.iter().map(|h| h.ip).collect(),
            all: true,
        },
        Membership::Rollback { undo } => Change::Rollback { undo: undo.clone() },
    })
}

/// The payload `request` names, checked whole before any host is touched.
fn payload(
    request: &Request<'_>,
    target: &Target,
    report: &(dyn Fn(Event) + Sync),
) -> Result<Payload, Error> {
    Ok(match &request.source {
        Source::Store { root, image } => {
            let name = image
                .as_ref()
                .or(target.cluster.image.as_ref())
                .ok_or(Error::NoImage)?;
            let store = Store::open(root)?;
            let image = store.image_by_name(name)?;
            let stub = find_stub()?;
            Payload::from_store(&store, &image, &stub)?
        }
        Source::Package(run) => {
            let check = run.payload()?;
            let total = check.compressed_len();
            report(Event::Checking { done: 0, total });
            check.verify_digests(Some(&|done| report(Event::Checking { done, total })))?;
            report(Event::Checked);
            Payload::from_package(run, check)?
        }
    })
}

/// What installing as `request` says would do on each host, found without changing anything
/// on them or here (no lock is taken, no record written).
pub fn dry_run(
    request: &Request<'_>,
    report: &(dyn Fn(Event) + Sync),
) -> Result<(Summary, Vec<HostPlan>), Error> {
    let mut target = resolve(&request.target)?;
    report_notes(&target, report);
    let change = membership_change(&mut target, &request.membership)?;
    let payload = payload(request, &target, report)?;
    let mut opts = InstallOptions::new(target.connect.clone());
    opts.parallel = request.parallel;
    opts.change = change;
    if let Some(limit) = request.target.max_clock_skew {
        opts.max_clock_skew = limit;
    }
    let summary = Summary::of(&payload, &target);
    let plans = crate::deploy::dry_run(&target.cluster, &payload, &opts)?;
    Ok((summary, plans))
}

/// What a cluster holds now: per host the image its rootfs holds (named from this machine's
/// record when it installed it), the steps done, and who changes the cluster now, if anyone.
#[derive(Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub hosts: Vec<HostState>,
    /// Who holds the cluster's lock now.
    pub changing: Option<clusters::Holder>,
    /// This machine's last install of the cluster.
    pub last_install: Option<InstallRecord>,
}

/// One host in [`ClusterStatus`].
#[derive(Debug, serde::Serialize)]
pub struct HostState {
    #[serde(flatten)]
    pub host: HostStatus,
    /// The image whose payload the rootfs holds, when this machine's record names it.
    pub image: Option<String>,
    /// How the last install from this machine ended on the host.
    pub last_result: Option<String>,
}

/// Asks every host of `target` what it holds; changes nothing.
pub fn status(target: &TargetSpec, state_root: &std::path::Path) -> Result<ClusterStatus, Error> {
    let target = resolve(target)?;
    let name = target.cluster.name.clone();
    let record = ClusterRecord::load(state_root, &name)?;
    let hosts = crate::deploy::status(&target.cluster, target.connect.as_ref())
        .into_iter()
        .map(|host| {
            let image = host.installed.as_ref().and_then(|id| {
                record
                    .installs
                    .iter()
                    .rev()
                    .find(|i| &i.payload == id)
                    .map(|i| i.image.clone())
            });
            let ip = host.ip.to_string();
            let last_result = record
                .installs
                .last()
                .and_then(|i| i.hosts.iter().find(|h| h.ip == ip))
                .map(|h| h.result.clone());
            HostState {
                host,
                image,
                last_result,
            }
        })
        .collect();
    Ok(ClusterStatus {
        changing: clusters::holder(state_root, &name),
        last_install: record.installs.last().cloned(),
        cluster: name,
        hosts,
    })
}

/// `Ok` when every host and cluster stage finished (or nothing had to be done).
pub fn finished(report: &InstallReport) -> Result<(), Error> {
    if report.success() {
        Ok(())
    } else {
        Err(Error::Unfinished)
    }
}
