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
use std::sync::Arc;

use packer::{ReadError, RunFile};

use crate::clusters::{self, ClusterRecord, ClusterStateError, HostRecord, InstallRecord};
use crate::deploy::payload::PayloadError;
use crate::deploy::target::{
    resolve, ClusterArgs, DeleteArgs, JoinArgs, Target, TargetError, TargetSpec,
};
use crate::deploy::HostOutcome;
use crate::deploy::{find_stub, install, InstallError, InstallEvent, InstallOptions, PackageCheck};
use crate::deploy::{Change, HostPlan, HostStatus, InstallReport, Payload};
use crate::store::{Store, StoreError};
use crate::trust::{Trust, TrustError};

/// Where the bytes to install come from.
pub enum Source<'a> {
    /// An image of the store at `root`; `None` takes the Clusterfile's `spec.image`. Every blob is
    /// checked before any host is touched: its frames against the index the store keeps, or
    /// its digest while a blob without one is indexed.
    Store {
        root: PathBuf,
        image: Option<String>,
        /// Keys the image must be signed by (`--trust`); `None`: the site policy, if any.
        trust: Option<Trust>,
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
        masters: Vec<crate::address::HostAddress>,
        nodes: Vec<crate::address::HostAddress>,
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
    /// The image is not signed as `--trust` or the site policy requires.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The package is damaged or unreadable.
    #[error(transparent)]
    Package(#[from] ReadError),
    /// The payload could not be assembled (agent, layers, config).
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The install's variables: an env file, a `--cmd-args` item, a required variable unset.
    #[error(transparent)]
    Variables(#[from] crate::variables::VariableError),
    /// Another command holds the cluster's lock, or its record is unreadable.
    #[error(transparent)]
    ClusterState(#[from] ClusterStateError),
    #[error("this machine has no record of cluster {0}; give its Clusterfile with -f (and the image with --image)")]
    NoRecord(String),
    #[error("{0} is an application image (app-installer): it installs into a running cluster, and this machine has no install of a cluster image on cluster {1}; install the cluster image first (sealer run CLUSTER_IMAGE ...), then {0}")]
    NoBaseImage(String, String),
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
    /// `sealer check` found a failed check or a host it could not ask.
    #[error("preflight failed: {0}; the table says what to do")]
    PreflightFailed(String),
}

/// Install as `request` says, reporting through `report`. The report comes back whether or not
/// every host finished; [`finished`] tells.
pub fn run(request: &Request<'_>, report: &(dyn Fn(Event) + Sync)) -> Result<InstallReport, Error> {
    let mut target = resolve(&request.target)?;
    report_notes(&target, report);
    let change = membership_change(&mut target, &request.membership)?;
    check_trust(request, &target)?;
    let name = target.cluster.name.clone();
    let (lock, stale) = clusters::lock(&request.state_root, &name, &request.command)?;
    if let Some(gone) = &stale {
        report(Event::Host(InstallEvent::Note {
            host: None,
            text: format!(
                "the last change to cluster {name}, {gone}, did not finish; taking over its lock"
            ),
        }));
    }
    let mut record = ClusterRecord::load(&request.state_root, &name)?;
    let started = clusters::timestamp();
    let (payload, unchecked) = payload(request, &target)?;
    // An application image goes onto a running cluster, beside its base image.
    let app = crate::deploy::app_name(&payload)
        .filter(|_| matches!(request.membership, Membership::Keep));
    if app.is_some() && record.current().is_none() {
        return Err(Error::NoBaseImage(payload.image.clone(), name));
    }
    settle_variables(request, &mut target, &payload)?;
    let mut opts = InstallOptions::new(target.connect.clone());
    opts.holder = Some(lock.holder().to_string());
    opts.dead_holder = stale.as_ref().map(|gone| gone.to_string());
    opts.parallel = request.parallel;
    opts.attempts = request.attempts.max(1);
    opts.change = change;
    if let Some(limit) = request.target.max_clock_skew {
        opts.max_clock_skew = limit;
    }
    opts.ignore_preflight = request.target.ignore_preflight.clone();
    opts.package_check = unchecked
        .as_ref()
        .map(|_| Arc::new(PackageCheck::default()));
    report(Event::Starting(Summary::of(&payload, &target)));
    // The package's frames are hashed while the hosts are probed; the engine waits for the
    // result before it changes anything.
    let mut outcome = std::thread::scope(|scope| {
        if let (Some(volumes), Some(check)) = (&unchecked, &opts.package_check) {
            scope.spawn(move || {
                check.finish(check_package(volumes, report).map_err(|e| e.to_string()))
            });
        }
        install(&target.cluster, &payload, &opts, &|event| {
            report(Event::Host(event))
        })
    })?;
    if let Change::Join { hosts } = &opts.change {
        if outcome.success() {
            let apps = apps_onto_joined_masters(request, &target, &record, hosts, &opts, report)?;
            apps.into_iter()
                .for_each(|more| merge_reports(&mut outcome, more));
        }
    }
    if request.rollback_on_failure
        && !outcome.success()
        && matches!(request.membership, Membership::Keep)
    {
        report(Event::Host(InstallEvent::Note {
            host: None,
            text: "the install did not finish on every host; rolling back the hosts that switched (--rollback-on-failure)".into(),
        }));
        let mut back = InstallOptions::new(target.connect.clone());
        back.holder = Some(lock.holder().to_string());
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
            Membership::Keep if app.is_some() => clusters::APP_INSTALL,
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
                system: h.system.clone(),
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

/// After a join that added masters: every application image the record says is on the
/// cluster (installed since its last `delete --all`, the latest of each repository) is
/// joined too, from this machine's store: its tree goes onto the new masters; its CMDs and
/// install hooks ran on master0 when it was installed and are not run again. An application this store no longer holds (or holds another
/// build of) is named in a note with the command that puts it on the new masters.
fn apps_onto_joined_masters(
    request: &Request<'_>,
    target: &Target,
    record: &ClusterRecord,
    joined: &[IpAddr],
    opts: &InstallOptions,
    report: &(dyn Fn(Event) + Sync),
) -> Result<Vec<InstallReport>, Error> {
    let mut reports = Vec::new();
    for payload in joined_apps(request, target, record, joined, report) {
        report(Event::Host(InstallEvent::Note {
            host: None,
            text: format!(
                "application {} onto the new masters (the others have it)",
                payload.image
            ),
        }));
        reports.push(install(
            &target.cluster,
            &payload,
            &app_join_options(target, joined, opts),
            &|event| report(Event::Host(event)),
        )?);
    }
    Ok(reports)
}

/// How an application joins the new masters: as the join itself does (`opts`), on `joined`.
fn app_join_options(target: &Target, joined: &[IpAddr], opts: &InstallOptions) -> InstallOptions {
    let mut app_opts = InstallOptions::new(target.connect.clone());
    app_opts.holder = opts.holder.clone();
    app_opts.dead_holder = opts.dead_holder.clone();
    app_opts.parallel = opts.parallel;
    app_opts.attempts = opts.attempts;
    app_opts.max_clock_skew = opts.max_clock_skew;
    app_opts.ignore_preflight = opts.ignore_preflight.clone();
    app_opts.change = Change::Join {
        hosts: joined.to_vec(),
    };
    app_opts
}

/// The applications a join that adds masters puts on them (see [`apps_onto_joined_masters`]),
/// loaded from this machine's store; one it cannot load is named in a note instead.
fn joined_apps(
    request: &Request<'_>,
    target: &Target,
    record: &ClusterRecord,
    joined: &[IpAddr],
    report: &(dyn Fn(Event) + Sync),
) -> Vec<Payload> {
    let new_master = target
        .cluster
        .hosts
        .iter()
        .any(|h| joined.contains(&h.ip) && h.roles.iter().any(|r| r == "master"));
    if !new_master {
        return Vec::new();
    }
    let since = record
        .installs
        .iter()
        .rposition(|i| i.ok && i.action == "delete --all")
        .map_or(0, |i| i + 1);
    // The latest finished install of each application repository, in install order.
    let mut apps: Vec<&InstallRecord> = Vec::new();
    for install in &record.installs[since..] {
        if !install.ok || install.action != clusters::APP_INSTALL {
            continue;
        }
        let repository = |image: &str| {
            crate::reference::Reference::parse(image)
                .map(|r| r.repository)
                .unwrap_or_else(|_| image.to_string())
        };
        apps.retain(|a| repository(&a.image) != repository(&install.image));
        apps.push(install);
    }
    let mut payloads = Vec::new();
    for app in apps {
        let loaded = Store::open(&request.state_root)
            .map_err(|e| e.to_string())
            .and_then(|store| {
                let image = store.image_by_name(&app.image).map_err(|e| e.to_string())?;
                let stub = find_stub().map_err(|e| e.to_string())?;
                Payload::from_store(&store, &image, &stub).map_err(|e| e.to_string())
            })
            .and_then(|payload| {
                if payload.id == app.payload {
                    Ok(payload)
                } else {
                    Err(format!(
                        "{} in this machine's store is another build than the one installed",
                        app.image
                    ))
                }
            });
        let payload = match loaded {
            Ok(payload) => payload,
            Err(why) => {
                report(Event::Host(InstallEvent::Note {
                    host: None,
                    text: format!(
                        "note: application {} is on the cluster's masters but the new masters do not get it ({why}); run `sealer run {} --cluster-name {}` with that image to put it there",
                        app.image, app.image, target.cluster.name
                    ),
                }));
                continue;
            }
        };
        payloads.push(payload);
    }
    payloads
}

/// `more` (an application installed after a join) folded into the join's report `into`: a
/// host that failed either stays failed, one that changed in either changed.
fn merge_reports(into: &mut InstallReport, more: InstallReport) {
    for extra in more.hosts {
        let Some(host) = into.hosts.iter_mut().find(|h| h.ip == extra.ip) else {
            continue;
        };
        host.outcome = match (&host.outcome, extra.outcome) {
            (HostOutcome::Failed(why), _) => HostOutcome::Failed(why.clone()),
            (_, HostOutcome::Failed(why)) => HostOutcome::Failed(why),
            (HostOutcome::Installed, _) | (_, HostOutcome::Installed) => HostOutcome::Installed,
            _ => HostOutcome::UpToDate,
        };
        host.bytes_sent += extra.bytes_sent;
        if let Some(agent) = extra.agent_bytes_sent {
            host.agent_bytes_sent = Some(host.agent_bytes_sent.unwrap_or(0) + agent);
        }
        host.steps_run += extra.steps_run;
        host.steps_skipped += extra.steps_skipped;
        host.waited.extend(extra.waited);
        host.elapsed += extra.elapsed;
    }
    if into.cluster_stages_skipped.is_none() {
        into.cluster_stages_skipped = more.cluster_stages_skipped;
    }
    into.elapsed += more.elapsed;
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
            trust: None,
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
            bastion: args.work.bastion.bastion(),
            max_clock_skew: None,
            ignore_preflight: Vec::new(),
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
    let ips = |list: &Option<String>| -> Result<Vec<crate::address::HostAddress>, Error> {
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
            hosts: crate::clusterfile::parse_host_list(list)?
                .into_iter()
                .map(|a| a.ip)
                .collect(),
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
                for address in ips {
                    joining.push(address.ip);
                    if cluster.hosts.iter().any(|h| h.ip == address.ip) {
                        continue;
                    }
                    let mut host = template.clone();
                    host.ip = address.ip;
                    host.name = address.name.clone();
                    if let Some(port) = address.port {
                        host.ssh.port = port;
                    }
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

/// The signature an install or join from the store needs: by `--trust` keys, else by the site
/// policy, else none. Checked before the cluster is locked or anything is written. A delete or
/// rollback installs nothing new, so it needs none.
fn check_trust(request: &Request<'_>, target: &Target) -> Result<(), Error> {
    let Source::Store { root, image, trust } = &request.source else {
        return Ok(());
    };
    if !matches!(
        request.membership,
        Membership::Keep | Membership::Join { .. }
    ) {
        return Ok(());
    }
    let Some(name) = image.as_ref().or(target.cluster.image.as_ref()) else {
        return Ok(());
    };
    let store = Store::open(root)?;
    let image = store.image_by_name(name)?;
    crate::trust::enforce_image_trust(&store, &image, trust.as_ref())?;
    Ok(())
}

/// The image's ARG defaults and required variables with the user's `--env-file`, `-e`,
/// `--cmd-args`, `--cmds` and `--apps`, folded into the cluster ([`crate::variables`]); a
/// required variable without value is asked for on a terminal, else refused before any host
/// is touched.
fn settle_variables(
    request: &Request<'_>,
    target: &mut Target,
    payload: &Payload,
) -> Result<(), Error> {
    crate::variables::settle_env(
        &mut target.cluster,
        &payload.config,
        &crate::variables::VariableFlags::from(&request.target.flags),
        request.target.clusterfile.is_some(),
    )?;
    if matches!(
        request.membership,
        Membership::Keep | Membership::Join { .. }
    ) {
        let ask = |name: &str| crate::variables::ask_on_terminal(name);
        crate::variables::check_required(&mut target.cluster, &payload.config, Some(&ask))?;
    }
    Ok(())
}

/// The payload `request` names. A package's frames are yet to be checked: the volumes to check
/// come with it ([`check_package`]), before any host is touched.
fn payload(
    request: &Request<'_>,
    target: &Target,
) -> Result<(Payload, Option<Arc<packer::Volumes>>), Error> {
    match &request.source {
        Source::Store { root, image, .. } => {
            let name = image
                .as_ref()
                .or(target.cluster.image.as_ref())
                .ok_or(Error::NoImage)?;
            let store = Store::open(root)?;
            let image = store.image_by_name(name)?;
            let stub = find_stub()?;
            Ok((Payload::from_store(&store, &image, &stub)?, None))
        }
        Source::Package(run) => {
            let volumes = Arc::new(run.payload()?);
            let payload = Payload::from_package(run, Arc::clone(&volumes))?;
            Ok((payload, Some(volumes)))
        }
    }
}

/// Every frame of the package checked ([`packer::Volumes::verify_digests`]), with progress.
fn check_package(
    volumes: &packer::Volumes,
    report: &(dyn Fn(Event) + Sync),
) -> Result<(), ReadError> {
    let total = volumes.compressed_len();
    report(Event::Checking { done: 0, total });
    volumes.verify_digests(Some(&|done| report(Event::Checking { done, total })))?;
    report(Event::Checked);
    Ok(())
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
    check_trust(request, &target)?;
    let (payload, unchecked) = payload(request, &target)?;
    if let Some(volumes) = &unchecked {
        check_package(volumes, report)?;
    }
    settle_variables(request, &mut target, &payload)?;
    let mut opts = InstallOptions::new(target.connect.clone());
    opts.parallel = request.parallel;
    opts.change = change;
    if let Some(limit) = request.target.max_clock_skew {
        opts.max_clock_skew = limit;
    }
    opts.ignore_preflight = request.target.ignore_preflight.clone();
    let summary = Summary::of(&payload, &target);
    let mut plans = crate::deploy::dry_run(&target.cluster, &payload, &opts)?;
    // A join that adds masters gives them the applications too: their steps are the join's.
    if let Change::Join { hosts } = &opts.change {
        let record = ClusterRecord::load(&request.state_root, &target.cluster.name)?;
        for app in joined_apps(request, &target, &record, hosts, report) {
            let app_opts = app_join_options(&target, hosts, &opts);
            let app_plans = crate::deploy::dry_run(&target.cluster, &app, &app_opts)?;
            for (plan, more) in plans.iter_mut().zip(app_plans) {
                plan.add_application(&app.image, more);
            }
        }
    }
    Ok((summary, plans))
}

/// `sealer check`: every preflight check on every host, found without changing anything.
#[derive(Debug, serde::Serialize)]
pub struct PreflightReport {
    pub image: String,
    pub cluster: String,
    /// No check failed and every host answered.
    pub ok: bool,
    pub hosts: Vec<HostChecks>,
}

/// One host in [`PreflightReport`].
#[derive(Debug, serde::Serialize)]
pub struct HostChecks {
    pub ip: IpAddr,
    /// The host name the address was resolved from, when the host was given by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The SSH port.
    pub port: u16,
    pub roles: Vec<String>,
    pub hostname: Option<String>,
    /// OS and kernel.
    pub system: Option<String>,
    /// Why the host could not be asked; then no check was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    pub checks: Vec<crate::deploy::CheckResult>,
}

/// Runs every preflight check of an install as `request` on every host, through the dry run's
/// probe: nothing is changed on the hosts or here.
pub fn check(
    request: &Request<'_>,
    report: &(dyn Fn(Event) + Sync),
) -> Result<PreflightReport, Error> {
    let (summary, plans) = dry_run(request, report)?;
    let hosts: Vec<HostChecks> = plans
        .into_iter()
        .map(|p| HostChecks {
            ip: p.ip,
            name: p.name,
            port: p.port,
            roles: p.roles,
            hostname: p.hostname,
            system: p.system,
            unreachable: p.unreachable,
            checks: p.checks,
        })
        .collect();
    let ok = hosts.iter().all(|h| {
        h.unreachable.is_none()
            && h.checks
                .iter()
                .all(|c| c.state != crate::deploy::CheckState::Failed)
    });
    Ok(PreflightReport {
        image: summary.image,
        cluster: summary.cluster,
        ok,
        hosts,
    })
}

/// `Ok` when no check failed and every host answered; else which hosts failed which checks.
pub fn preflight_passed(report: &PreflightReport) -> Result<(), Error> {
    if report.ok {
        return Ok(());
    }
    let failed: Vec<String> = report
        .hosts
        .iter()
        .filter_map(|h| {
            if h.unreachable.is_some() {
                return Some(format!("{} unreachable", h.ip));
            }
            let checks: Vec<&str> = h
                .checks
                .iter()
                .filter(|c| c.state == crate::deploy::CheckState::Failed)
                .map(|c| c.check)
                .collect();
            (!checks.is_empty()).then(|| format!("{} ({})", h.ip, checks.join(", ")))
        })
        .collect();
    Err(Error::PreflightFailed(failed.join(", ")))
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
    /// The application images installed beside the base image.
    pub apps: Vec<AppState>,
}

/// One application image on a host, in [`HostState`].
#[derive(Debug, serde::Serialize)]
pub struct AppState {
    /// Its directory under `<dataRoot>/<cluster>/apps/`.
    pub app: String,
    /// The image, when this machine's record names the payload.
    pub image: Option<String>,
    pub payload: String,
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
            let apps = host
                .apps
                .iter()
                .map(|(app, id)| AppState {
                    app: app.clone(),
                    image: record
                        .installs
                        .iter()
                        .rev()
                        .find(|i| &i.payload == id)
                        .map(|i| i.image.clone()),
                    payload: id.clone(),
                })
                .collect();
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
                apps,
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
