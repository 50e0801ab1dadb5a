//! `sealer run`: install an image from the local store onto hosts.

use anyhow::Result;
use clap::Args;

use std::path::PathBuf;

use sealer::clusters::ClusterRecord;
use sealer::deploy::target::{TargetArgs, TargetSpec};
use sealer::install::{self, Membership, Request, Source};
use sealer::store::Store;
use sealer::ui::install::{print_plan, print_status, InstallView};

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
        parallel: args.target.parallel,
        attempts: args.target.attempts,
        state_root: Store::default_root(),
        command,
        membership: Membership::Keep,
        rollback_on_failure: args.target.rollback_on_failure,
    };
    change(request, args.target.dry_run)
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    flags: sealer::clusterfile::ClusterFlags,
    /// Clusterfile describing the hosts.
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    clusterfile: Option<PathBuf>,
    /// This machine, without SSH.
    #[arg(long)]
    local: bool,
    /// Where rootfs and journal live on every host (default /var/lib/sealer/data).
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// `sealer status`: what every host holds now; changes nothing.
pub fn status(args: StatusArgs) -> Result<()> {
    let spec = TargetSpec {
        flags: args.flags,
        clusterfile: args.clusterfile,
        local: args.local,
        data_root: args.data_root,
        known_hosts: args.known_hosts,
    };
    let status = install::status(&spec, &Store::default_root())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}

/// The cluster a join or delete changes: a Clusterfile, or the one this machine recorded.
#[derive(Args)]
pub struct ClusterArgs {
    /// Clusterfile describing the cluster as it runs now (default: the one recorded under
    /// $SEALER_ROOT/clusters/NAME/ by the last command that changed it from here).
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    clusterfile: Option<PathBuf>,
    /// The cluster's name, to find its record when no Clusterfile is given.
    #[arg(
        long = "cluster-name",
        value_name = "NAME",
        default_value = "my-cluster"
    )]
    cluster_name: String,
    /// The image the cluster runs (default: the last one installed from here).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Attempts per host before it is reported failed.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Show per host what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct JoinArgs {
    /// Masters to add: comma list or range.
    #[arg(short = 'm', long = "masters", value_name = "IPS")]
    masters: Option<String>,
    /// Nodes to add: comma list or range.
    #[arg(short = 'n', long = "nodes", value_name = "IPS")]
    nodes: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Hosts to remove: comma list or range.
    #[arg(
        short = 'n',
        long = "nodes",
        visible_alias = "masters",
        short_alias = 'm',
        value_name = "IPS",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    hosts: Option<String>,
    /// Remove the whole cluster from every host.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn ips(list: &Option<String>) -> Result<Vec<std::net::IpAddr>> {
    Ok(match list {
        Some(list) => sealer::clusterfile::parse_host_list(list)?,
        None => Vec::new(),
    })
}

/// A request against the cluster `args` names, from the store's copy of its image.
fn change_request(
    args: ClusterArgs,
    command: String,
    membership: Membership,
) -> Result<Request<'static>> {
    let root = Store::default_root();
    let clusterfile = match args.clusterfile {
        Some(file) => file,
        None => ClusterRecord::clusterfile_path(&root, &args.cluster_name).ok_or_else(|| {
            anyhow::anyhow!(
                "this machine has no record of cluster {}; give its Clusterfile with -f",
                args.cluster_name
            )
        })?,
    };
    let image = match args.image {
        Some(image) => Some(image),
        None => ClusterRecord::load(&root, &args.cluster_name)?
            .current()
            .map(|i| i.image.clone()),
    };
    Ok(Request {
        target: TargetSpec {
            flags: Default::default(),
            clusterfile: Some(clusterfile),
            local: false,
            data_root: None,
            known_hosts: args.known_hosts,
        },
        source: Source::Store {
            root: root.clone(),
            image,
        },
        parallel: args.parallel,
        attempts: args.attempts,
        state_root: root,
        command,
        membership,
        rollback_on_failure: false,
    })
}

/// Runs `request` (or its dry run) and prints its progress and outcome.
fn change(request: Request<'_>, dry_run: bool) -> Result<()> {
    if dry_run {
        let view = InstallView::new();
        let (summary, plans) = install::dry_run(&request, &|event| view.show(event))?;
        print_plan(&summary, &plans);
        return Ok(());
    }
    let view = InstallView::new();
    let report = install::run(&request, &|event| view.show(event))?;
    view.finish(&report);
    Ok(install::finished(&report)?)
}

/// `sealer join`: add hosts to a running cluster.
pub fn join(args: JoinArgs) -> Result<()> {
    let membership = Membership::Join {
        masters: ips(&args.masters)?,
        nodes: ips(&args.nodes)?,
    };
    if matches!(&membership, Membership::Join { masters, nodes } if masters.is_empty() && nodes.is_empty())
    {
        anyhow::bail!("name the hosts to add: sealer join -m MASTERS and/or -n NODES");
    }
    let dry_run = args.cluster.dry_run;
    change(
        change_request(args.cluster, "sealer join".into(), membership)?,
        dry_run,
    )
}

/// `sealer delete`: remove hosts, or the whole cluster, from the hosts.
pub fn delete(args: DeleteArgs) -> Result<()> {
    let membership = if args.all {
        Membership::DeleteAll
    } else {
        Membership::Delete {
            hosts: ips(&args.hosts)?,
        }
    };
    let dry_run = args.cluster.dry_run;
    change(
        change_request(args.cluster, "sealer delete".into(), membership)?,
        dry_run,
    )
}

#[derive(Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `sealer rollback`: every host back on the image installed before the current one.
pub fn rollback(args: RollbackArgs) -> Result<()> {
    let root = Store::default_root();
    let record = ClusterRecord::load(&root, &args.cluster.cluster_name)?;
    let (current, previous) = record.rollback_target().ok_or_else(|| {
        anyhow::anyhow!(
            "this machine's record of cluster {} has no earlier image to roll back to",
            args.cluster.cluster_name
        )
    })?;
    let undo = current.payload.clone();
    let mut cluster = args.cluster;
    cluster.image.get_or_insert(previous.image.clone());
    let dry_run = cluster.dry_run;
    let command = format!("sealer rollback to {}", previous.image);
    change(
        change_request(cluster, command, Membership::Rollback { undo })?,
        dry_run,
    )
}
