//! `sealer run`: install an image from the local store onto hosts.

use anyhow::Result;
use clap::Args;

pub use sealer::deploy::target::{
    ApplyArgs, DeleteArgs, JoinArgs, RollbackArgs, StatusArgs, UpgradeArgs,
};
use sealer::deploy::target::{CheckArgs, TargetArgs};
use sealer::install::{self, ChangeSource, Membership, Request, Source};
use sealer::store::Store;
use sealer::ui::install::{print_checks, print_plan, print_status, InstallView};
use sealer::ui::log::RunLog;

#[derive(Args)]
pub struct RunArgs {
    /// Image to install (NAME:TAG); a Clusterfile's spec.image when omitted.
    image: Option<String>,
    /// A public key the image must be signed by (`sealer sign IMAGE`): a minisign .pub file or
    /// its key line (repeatable). Without it the site policy ($SEALER_TRUST_DIR or
    /// /etc/sealer/trust) applies, if there is one.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let command = match &args.image {
        Some(image) => format!("sealer run {image}"),
        None => "sealer run".to_string(),
    };
    let request = Request {
        target: args.target.spec(),
        source: Source::Store {
            root: Store::default_root(),
            image: args.image,
            trust: sealer::trust::Trust::from_args(&args.trust)?,
        },
        parallel: args.target.work.parallel,
        attempts: args.target.work.attempts,
        state_root: Store::default_root(),
        command,
        membership: Membership::Keep,
        rollback_on_failure: args.target.rollback_on_failure,
    };
    change(request, args.target.work.dry_run, "run", args.target.json)
}

#[derive(Args)]
pub struct CheckCmd {
    /// Image whose needs are checked (NAME:TAG); a Clusterfile's spec.image when omitted.
    image: Option<String>,
    #[command(flatten)]
    check: CheckArgs,
}

/// `sealer check`: every preflight check on every host, as a table or JSON; changes nothing
/// and fails when a check fails.
pub fn check(args: CheckCmd) -> Result<()> {
    let request = Request {
        target: args.check.spec(),
        source: Source::Store {
            root: Store::default_root(),
            image: args.image,
            trust: None,
        },
        parallel: 8,
        attempts: 1,
        state_root: Store::default_root(),
        command: "sealer check".into(),
        membership: Membership::Keep,
        rollback_on_failure: false,
    };
    let view = InstallView::new();
    let report = install::check(&request, &|event| view.show(event))?;
    if args.check.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_checks(&report);
    }
    Ok(install::preflight_passed(&report)?)
}

/// `sealer status`: what every host holds now; changes nothing.
pub fn status(args: StatusArgs) -> Result<()> {
    if !args.flags.env.is_empty() {
        super::usage_error(
            "status",
            "-e/--env sets the env of install steps; status runs none and only reads: leave it out",
        );
    }
    if let Some(flag) = args.flags.install_only_given().first() {
        super::usage_error(
            "status",
            &format!("{flag} sets what an install runs; status runs nothing and only reads: leave it out"),
        );
    }
    let status = install::status(&args.spec(), &Store::default_root())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}

/// Runs `request` (or its dry run) and prints its progress and outcome; a run that changes
/// hosts is also written to a log under `$SEALER_ROOT/logs` named for `verb`.
fn change(request: Request<'_>, dry_run: bool, verb: &str, json: bool) -> Result<()> {
    if dry_run {
        let view = InstallView::new();
        let (summary, plans) = install::dry_run(&request, &|event| view.show(event))?;
        print_plan(&summary, &plans);
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let view = InstallView::logged(RunLog::new(&Store::default_root(), verb, &args), json);
    let report = install::run(&request, &|event| view.show(event))?;
    view.finish(&report);
    Ok(install::finished(&report)?)
}

/// `sealer join`: add hosts to a running cluster.
pub fn join(args: JoinArgs) -> Result<()> {
    let membership = install::join_membership(&args)?;
    let request = install::change_request(
        &args.cluster,
        ChangeSource::Store,
        "sealer join".into(),
        membership,
    )?;
    change(request, args.cluster.work.dry_run, "join", args.json)
}

/// `sealer delete`: remove hosts, or the whole cluster, from the hosts.
pub fn delete(args: DeleteArgs) -> Result<()> {
    let membership = install::delete_membership(&args)?;
    let request = install::change_request(
        &args.cluster,
        ChangeSource::Store,
        "sealer delete".into(),
        membership,
    )?;
    change(request, args.cluster.work.dry_run, "delete", false)
}

/// `sealer rollback`: every host back on the image installed before the current one.
pub fn rollback(mut args: RollbackArgs) -> Result<()> {
    let (membership, previous) = install::rollback_membership(&args.cluster)?;
    args.cluster.image.get_or_insert(previous.clone());
    let command = format!("sealer rollback to {previous}");
    let request = install::change_request(&args.cluster, ChangeSource::Store, command, membership)?;
    change(request, args.cluster.work.dry_run, "rollback", false)
}

/// `sealer upgrade IMAGE`: the image installed on the cluster this machine recorded (or `-f`),
/// through the same recipe as `sealer run`: upgraded hosts run the upgrade hooks.
pub fn upgrade(mut args: UpgradeArgs) -> Result<()> {
    if let (Some(to), Some(image)) = (&args.to, &args.cluster.image) {
        if to != image {
            super::usage_error(
                "upgrade",
                &format!("two images named: {to} and --image {image}; name one"),
            );
        }
    }
    let Some(to) = args.to.take().or(args.cluster.image.take()) else {
        super::usage_error(
            "upgrade",
            "name the image to upgrade to: sealer upgrade IMAGE",
        );
    };
    args.cluster.image = Some(to.clone());
    let mut request = install::change_request(
        &args.cluster,
        ChangeSource::Store,
        format!("sealer upgrade {to}"),
        Membership::Keep,
    )?;
    request.rollback_on_failure = args.rollback_on_failure;
    change(request, args.cluster.work.dry_run, "upgrade", false)
}

/// `sealer apply -f Clusterfile`: hosts the file no longer lists are deleted (with --yes, or
/// after a yes on a terminal), then every host of the file converges to it.
pub fn apply(args: ApplyArgs) -> Result<()> {
    use std::io::IsTerminal;
    let (name, leaving) = install::hosts_leaving(&args.clusterfile)?;
    if !leaving.is_empty() {
        let list = leaving
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if !args.yes && !args.work.dry_run {
            if !std::io::stdin().is_terminal() {
                anyhow::bail!(
                    "the Clusterfile no longer lists {list} of cluster {name}: applying it deletes them; pass --yes to go ahead"
                );
            }
            eprint!("Delete {list} from cluster {name}? [y/N] ");
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                anyhow::bail!("nothing was changed");
            }
        }
        let cluster = sealer::deploy::target::ClusterArgs {
            clusterfile: None,
            cluster_name: name.clone(),
            image: None,
            work: args.work.clone(),
        };
        let request = install::change_request(
            &cluster,
            ChangeSource::Store,
            "sealer apply (delete)".into(),
            Membership::Delete { hosts: leaving },
        )?;
        change(request, args.work.dry_run, "apply", false)?;
    }
    let command = format!("sealer apply -f {}", args.clusterfile.display());
    let request = Request {
        target: sealer::deploy::target::TargetSpec {
            flags: Default::default(),
            clusterfile: Some(args.clusterfile),
            local: false,
            data_root: None,
            bastion: args.work.bastion.bastion(),
            known_hosts: args.work.known_hosts,
            max_clock_skew: None,
            ignore_preflight: Vec::new(),
        },
        source: Source::Store {
            root: Store::default_root(),
            image: args.image,
            trust: None,
        },
        parallel: args.work.parallel,
        attempts: args.work.attempts,
        state_root: Store::default_root(),
        command,
        membership: Membership::Keep,
        rollback_on_failure: args.rollback_on_failure,
    };
    change(request, args.work.dry_run, "apply", false)
}
