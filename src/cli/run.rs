//! `sealer run`: install an image from the local store onto hosts.

use anyhow::Result;
use clap::Args;

use sealer::deploy::target::TargetArgs;
pub use sealer::deploy::target::{ApplyArgs, DeleteArgs, JoinArgs, RollbackArgs, StatusArgs};
use sealer::install::{self, ChangeSource, Membership, Request, Source};
use sealer::store::Store;
use sealer::ui::install::{print_plan, print_status, InstallView};
use sealer::ui::log::RunLog;

#[derive(Args)]
pub struct RunArgs {
    /// Image to install (NAME:TAG); a Clusterfile's spec.image when omitted.
    image: Option<String>,
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

/// `sealer status`: what every host holds now; changes nothing.
pub fn status(args: StatusArgs) -> Result<()> {
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
    change(request, args.cluster.work.dry_run, "join", false)
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
            known_hosts: args.work.known_hosts,
            max_clock_skew: None,
        },
        source: Source::Store {
            root: Store::default_root(),
            image: args.image,
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
