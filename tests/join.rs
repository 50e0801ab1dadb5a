//! `sealer join` end to end on real OpenSSH hosts of one testbed:
//!
//! 1. The dry run of a join lists, per host, the steps the join then runs: the new master's
//!    tree, render, `PreJoin`/`post-init-host`/`PostJoin` hooks (the last with master0's
//!    export), the application on the cluster's masters, and the render again on the members
//!    whose templates name the members. What the join ran is judged by the hosts' journals
//!    (one file per finished step, holding its name) and by `join --json`'s report
//!    (`steps_run` per host); after it, a dry run, a second join and an install of the grown
//!    cluster's recorded Clusterfile do nothing (no install hook or CMD runs again).
//! 2. Templates that name no member are not rendered again on the other hosts when one joins:
//!    their rendered file keeps its inode, and those hosts are up to date.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;

use support::clusterfile::shell_plugin;
use support::store::{write_in, Run, Sealer};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-join";

fn clusterfile(name: &str, hosts: &[(&TestHost, &str)], bed: &Testbed, extra: &str) -> String {
    support::clusterfile::cluster(name, DATA_ROOT, hosts, bed, extra)
}

/// `sealer ARGS… --known-hosts BED`.
fn sealer(store: &Sealer, bed: &Testbed, args: &[&str]) -> Run {
    let mut c = store.command();
    c.args(args)
        .arg("--known-hosts")
        .arg(bed.known_hosts_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Run::from(c.output().unwrap())
}

/// A dry run's steps per host address: `(would run, step name)` in the order listed.
fn planned(dry: &Run) -> BTreeMap<String, Vec<(bool, String)>> {
    let mut plans: BTreeMap<String, Vec<(bool, String)>> = BTreeMap::new();
    let mut host: Option<String> = None;
    for line in dry.text.lines() {
        if let Some(first) = line.split_whitespace().next() {
            if !line.starts_with(' ') && first.parse::<std::net::IpAddr>().is_ok() {
                host = Some(first.to_string());
                plans.entry(first.to_string()).or_default();
                continue;
            }
        }
        let (Some(host), Some(step)) = (&host, line.strip_prefix(&" ".repeat(34))) else {
            continue;
        };
        let step = match (step.strip_prefix("run  "), step.strip_prefix("skip ")) {
            (Some(name), _) => (true, name.to_string()),
            (_, Some(name)) => (false, name.to_string()),
            _ => continue,
        };
        plans.get_mut(host).unwrap().push(step);
    }
    plans
}

/// Every journal entry of the cluster's base image and of its applications on `host`:
/// `(file, the step's name)`, the applications' steps named as the dry run names them.
fn journal(bed: &Testbed, host: &TestHost, cluster: &str) -> Vec<(String, String)> {
    let dir = format!("{DATA_ROOT}/{cluster}");
    let text = bed.stdout_of(host,
        &format!(
            "for f in {dir}/.sealer/journal/* {dir}/apps/*/.sealer/journal/*; do [ -f \"$f\" ] && printf '%s\\t%s\\n' \"$f\" \"$(cat \"$f\")\"; done; true"
        ),
    );
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(file, _)| !file.ends_with("/upgraded-from"))
        .map(|(file, name)| {
            let name = match file.split("/apps/").nth(1) {
                Some(app) => format!(
                    "{name} (application {}:v1)",
                    app.split('/').next().unwrap_or_default()
                ),
                None => name.to_string(),
            };
            (file.to_string(), name)
        })
        .collect()
}

fn host_of<'a>(report: &'a serde_json::Value, host: &TestHost) -> &'a serde_json::Value {
    let ip = host.ip.to_string();
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["ip"] == ip.as_str())
        .unwrap_or_else(|| panic!("{ip} not in {report}"))
}

/// `sealer join ARGS… --json`: whether it succeeded, and its report.
fn join_json(store: &Sealer, bed: &Testbed, args: &[&str]) -> (bool, serde_json::Value, String) {
    let mut c = store.command();
    c.arg("join")
        .args(args)
        .arg("--json")
        .arg("--known-hosts")
        .arg(bed.known_hosts_path());
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("join --json printed no JSON report ({e}):\n{stdout}\n{stderr}")
    });
    (out.status.success(), report, stderr)
}

#[test]
fn a_join_runs_what_its_dry_run_lists_and_renders_the_others_again_only_for_templates_naming_the_members(
) {
    let Some(bed) = Testbed::up_for_test(3) else {
        return;
    };
    let hosts = bed.hosts();
    let (m, n1, x) = (&hosts[0], &hosts[1], &hosts[2]);
    let store = Sealer::new();
    let work = tempfile::tempdir().unwrap();
    store.build_from(
        "named:v1",
        "FROM scratch\nCOPY members.conf.tmpl etc/members.conf.tmpl\nCOPY host.conf.tmpl etc/host.conf.tmpl\nCMD echo cmd ran >> \"$SEALER_ROOTFS/../cmd-runs\"\n",
        &[
            (
                "members.conf.tmpl",
                b"masters={{ .SEALER_MASTERS }}\n{{ range .SEALER_NODES }}node={{ . }}\n{{ end }}",
            ),
            ("host.conf.tmpl", b"host={{ .SEALER_HOST_IP }}\n"),
        ],
    );
    store.build_from(
        "plain:v1",
        "FROM scratch\nCOPY host.conf.tmpl etc/host.conf.tmpl\n",
        &[("host.conf.tmpl", b"host={{ .SEALER_HOST_IP }}\n")],
    );
    let app = store.context("web", &[("page", b"hello from web\n")]);
    write_in(
        &app,
        "Kubefile",
        "FROM scratch\nCOPY page page\nCMD echo app ran >> ../../../app-runs\n",
    );
    store.ok(&[
        "build",
        "--type",
        "app-installer",
        "-t",
        "web:v1",
        app.to_str().unwrap(),
    ]);

    // 1. A cluster whose templates name the members, with join hooks and an application.
    let hooks = shell_plugin(
        "make-token",
        "pre-install",
        "",
        "echo JOIN_TOKEN=token-from-master0 >> \"$SEALER_EXPORT\"",
    ) + &shell_plugin("before", "PreJoin", "", "echo before > /var/tmp/prejoin")
        + &shell_plugin("init", "post-init-host", "", "echo init >> /var/tmp/init")
        + &shell_plugin(
            "joined",
            "PostJoin",
            "",
            "echo \"joined with $JOIN_TOKEN\" > /var/tmp/postjoin",
        );
    let file = write_in(
        work.path(),
        "named.yaml",
        &clusterfile("named", &[(m, "master"), (n1, "node")], &bed, &hooks),
    );
    let file = file.to_str().unwrap();
    store
        .run_on(&bed, "named:v1", &["-f", file])
        .assert_ok("install of named:v1");
    store
        .run_on(&bed, "web:v1", &["-f", file])
        .assert_ok("the application");
    let conf = format!("{DATA_ROOT}/named/rootfs/etc/members.conf");
    assert_eq!(
        bed.stdout_of(n1, &format!("cat {conf}")),
        format!("masters={}\nnode={}\n", m.ip, n1.ip)
    );

    let xs = x.ip.to_string();
    let join_args = ["-m", xs.as_str(), "--cluster-name", "named"];
    let dry = sealer(
        &store,
        &bed,
        &[&["join"][..], &join_args, &["--dry-run"]].concat(),
    );
    dry.assert_ok("dry run of the join");
    let plans = planned(&dry);
    let would = |host: &TestHost| -> Vec<String> {
        plans
            .get(&host.ip.to_string())
            .unwrap_or_else(|| panic!("{host} not in the dry run:\n{}", dry.text))
            .iter()
            .filter(|(run, _)| *run)
            .map(|(_, name)| name.clone())
            .collect()
    };
    assert_eq!(
        would(x),
        [
            "rootfs",
            "render *.tmpl",
            "PreJoin hook before",
            "post-init-host hook init",
            "PostJoin hook joined",
            "rootfs (application web:v1)",
        ],
        "{}",
        dry.text
    );
    for old in [m, n1] {
        assert_eq!(would(old), ["render *.tmpl"], "{}", dry.text);
    }
    let before: Vec<Vec<(String, String)>> =
        hosts.iter().map(|h| journal(&bed, h, "named")).collect();

    let (ok, report, lines) = join_json(&store, &bed, &join_args);
    assert!(ok, "join:\n{lines}\n{report}");
    assert_eq!(report["done"], "joined", "{report}");
    for (host, before) in hosts.iter().zip(&before) {
        let after = journal(&bed, host, "named");
        let mut recorded: Vec<String> = after
            .iter()
            .filter(|entry| !before.contains(entry))
            .map(|(_, name)| name.clone())
            .collect();
        let mut listed = would(host);
        recorded.sort();
        listed.sort();
        assert_eq!(
            recorded, listed,
            "{host}: the join recorded other steps than its dry run listed:\n{}\n{lines}",
            dry.text
        );
        assert_eq!(
            host_of(&report, host)["steps_run"],
            would(host).len(),
            "{host}: {report}"
        );
    }
    let members = format!("masters={} {}\nnode={}\n", m.ip, x.ip, n1.ip);
    for host in hosts {
        assert_eq!(
            bed.stdout_of(host, &format!("cat {conf}")),
            members,
            "{host}"
        );
    }
    assert_eq!(
        bed.stdout_of(x, "cat /var/tmp/postjoin"),
        "joined with token-from-master0\n"
    );
    assert_eq!(
        bed.stdout_of(x, &format!("cat {DATA_ROOT}/named/apps/web/rootfs/page")),
        "hello from web\n"
    );
    assert_eq!(
        bed.stdout_of(m, &format!("cat {DATA_ROOT}/named/cmd-runs")),
        "cmd ran\n"
    );
    let dry = sealer(
        &store,
        &bed,
        &[&["join"][..], &join_args, &["--dry-run"]].concat(),
    );
    dry.assert_ok("dry run after the join");
    assert!(
        dry.text
            .contains("Everything is up to date; an install would change nothing."),
        "{}",
        dry.text
    );
    let (ok, report, lines) = join_json(&store, &bed, &join_args);
    assert!(ok, "second join:\n{lines}\n{report}");
    for host in hosts {
        assert_eq!(host_of(&report, host)["outcome"], "up_to_date", "{report}");
    }
    // An install of the grown cluster (the Clusterfile this machine recorded) finds every step
    // done: the install hooks and the CMD are not run again because the members changed.
    let grown = store.root().join("clusters/named/Clusterfile");
    let rerun = store.run_on(&bed, "named:v1", &["-f", grown.to_str().unwrap()]);
    rerun.assert_ok("install of the grown cluster");
    assert!(
        rerun.text.contains("Everything is up to date"),
        "{}",
        rerun.text
    );
    assert_eq!(
        bed.stdout_of(m, &format!("cat {DATA_ROOT}/named/cmd-runs")),
        "cmd ran\n"
    );
    assert_eq!(bed.stdout_of(n1, "cat /var/tmp/init"), "init\n");

    // 2. Templates that name no member: the other hosts are not rendered again.
    let file = write_in(
        work.path(),
        "plain.yaml",
        &clusterfile("plain", &[(m, "master"), (n1, "node")], &bed, ""),
    );
    store
        .run_on(&bed, "plain:v1", &["-f", file.to_str().unwrap()])
        .assert_ok("install of plain:v1");
    let host_conf = format!("{DATA_ROOT}/plain/rootfs/etc/host.conf");
    let inode = |host: &TestHost| bed.stdout_of(host, &format!("stat -c %i {host_conf}"));
    let inodes = [inode(m), inode(n1)];
    let join_args = ["-n", xs.as_str(), "--cluster-name", "plain"];
    let dry = sealer(
        &store,
        &bed,
        &[&["join"][..], &join_args, &["--dry-run"]].concat(),
    );
    dry.assert_ok("dry run of the plain join");
    let plans = planned(&dry);
    for old in [m, n1] {
        assert_eq!(
            plans[&old.ip.to_string()],
            [(false, "render *.tmpl".to_string())],
            "{}",
            dry.text
        );
    }
    let (ok, report, lines) = join_json(&store, &bed, &join_args);
    assert!(ok, "plain join:\n{lines}\n{report}");
    assert_eq!(host_of(&report, x)["outcome"], "installed", "{report}");
    for (old, inode_before) in [m, n1].into_iter().zip(&inodes) {
        assert_eq!(host_of(&report, old)["outcome"], "up_to_date", "{report}");
        assert_eq!(
            &inode(old),
            inode_before,
            "{old}: host.conf was rendered again"
        );
    }
    assert_eq!(
        bed.stdout_of(x, &format!("cat {host_conf}")),
        format!("host={}\n", x.ip)
    );
}

#[test]
fn join_json_with_dry_run_is_a_usage_error() {
    let store = Sealer::new();
    let out = store.run(&["join", "-n", "10.0.0.9", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::store::both(&out));
    assert!(
        support::store::both(&out).contains("--json"),
        "{}",
        support::store::both(&out)
    );
}
