//! End to end on real OpenSSH hosts of one testbed: hosts do not move in lockstep, and
//! application images reach masters joined later.
//!
//! 1. A host whose sshd (listener and sessions) is killed while it receives the tree: the
//!    healthy hosts finish their own stages without waiting for its retries (their
//!    `elapsed_seconds` end long before its own), the hook that must follow hooks on every host
//!    (a `post-init-host` hook on master0 after `pre-init-host` hooks everywhere) waits for it
//!    and the report says so, the cluster's CMD does not run; after sshd is back the rerun
//!    finishes only that host (and the CMD), and a third run does nothing.
//! 2. An application image installed on a one-master cluster, then a master joined: the new
//!    master gets the application's tree too, its CMD is not run again, and a second join does
//!    nothing.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Instant;

use support::clusterfile::shell_plugin;
use support::noise;
use support::store::{write_in, Run, Sealer};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-iso";

fn clusterfile(name: &str, hosts: &[(&TestHost, &str)], bed: &Testbed, extra: &str) -> String {
    support::clusterfile::cluster(name, DATA_ROOT, hosts, bed, extra)
}

/// `sealer run IMAGE -f FILE --json ARGS…`: the JSON report and the lines (stderr). Runs
/// `at_line` on every line as it is printed.
fn run_json(
    store: &Sealer,
    bed: &Testbed,
    image: &str,
    file: &str,
    args: &[&str],
    at_line: &dyn Fn(&str),
) -> (bool, serde_json::Value, String) {
    let mut all = vec!["-f", file, "--json"];
    all.extend_from_slice(args);
    let mut child = store.run_command(bed, image, &all).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let mut lines = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        at_line(&line);
        lines.push_str(&line);
        lines.push('\n');
    }
    let status = child.wait().unwrap();
    let text = reader.join().unwrap();
    let json_end = text.rfind('}').map_or(0, |i| i + 1);
    let report = serde_json::from_str(&text[..json_end])
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{text}\n{lines}"));
    (status.success(), report, lines)
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

fn elapsed(report: &serde_json::Value, host: &TestHost) -> f64 {
    host_of(report, host)["elapsed_seconds"].as_f64().unwrap()
}

#[test]
fn a_down_host_holds_no_healthy_host_and_apps_reach_masters_joined_later() {
    let Some(bed) = Testbed::up_for_test(4) else {
        return;
    };
    let started = Instant::now();
    let hosts = bed.hosts();
    let (m, n1, n2, n3) = (&hosts[0], &hosts[1], &hosts[2], &hosts[3]);
    let store = Sealer::new();
    let work = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("blob"), noise::bytes(2 << 20, 11)).unwrap();
    write_in(
        ctx.path(),
        "Kubefile",
        "FROM scratch\nCOPY blob blob\nCMD echo ran >> ../cmd-runs\n",
    );
    store.ok(&["build", "-t", "iso:v1", ctx.path().to_str().unwrap()]);

    // The agent on every host first (as on a cluster installed before), so that what follows
    // times the stages, not the upload of a debug build's agent.
    let layout = [(m, "master"), (n1, "node"), (n2, "node"), (n3, "node")];
    let warm = write_in(
        work.path(),
        "warm.yaml",
        &clusterfile("warm", &layout, &bed, ""),
    );
    store
        .run_on(&bed, "iso:v1", &["-f", warm.to_str().unwrap()])
        .assert_ok("the agent onto every host");

    eprintln!(
        "[{:>5.1}s] a host dies while it receives the tree",
        started.elapsed().as_secs_f64()
    );
    let hooks = shell_plugin(
        "stamp",
        "pre-init-host",
        "",
        "echo stamped > /var/tmp/stamp",
    ) + &shell_plugin(
        "after-all",
        "post-init-host",
        "  scope: master\n",
        "echo after > /var/tmp/after-all",
    );
    let file = write_in(
        work.path(),
        "iso.yaml",
        &clusterfile("iso", &layout, &bed, &hooks),
    );
    let file = file.to_str().unwrap();
    // The tree crawls onto n3 (2 MiB at 4 Mbit/s), which dies while it arrives.
    bed.shape(n3, "4mbit").unwrap();
    let marker = format!("[{}] distribute", n3.ip);
    let killed = std::sync::atomic::AtomicBool::new(false);
    let (ok, report, lines) = run_json(&store, &bed, "iso:v1", file, &["--attempts", "6"], &|l| {
        if l.contains(&marker) && !killed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            bed.kill_sshd(n3).unwrap();
        }
    });
    assert!(
        killed.into_inner(),
        "n3 never started its distribute:\n{lines}"
    );
    bed.unshape(n3).unwrap();
    assert!(!ok, "n3 is down, the run must fail:\n{lines}\n{report}");
    let dead = host_of(&report, n3);
    assert_eq!(dead["outcome"], "failed", "{report}");
    // It died while its tree arrived or right after (the kill races the last frame).
    let reason = dead["reason"].as_str().unwrap();
    assert!(
        ["distribute", "render"]
            .iter()
            .any(|s| reason.starts_with(s)),
        "{report}"
    );
    let dead_took = elapsed(&report, n3);
    // n3's retries wait 1 + 2 + 4 + 8 + 16 s (give or take a quarter): at least 23 s.
    assert!(dead_took > 23.0, "{report}");
    for healthy in [n1, n2] {
        assert_eq!(
            host_of(&report, healthy)["outcome"],
            "installed",
            "{report}"
        );
        let took = elapsed(&report, healthy);
        assert!(
            took + 8.0 < dead_took,
            "{healthy} took {took:.1}s, n3 failed after {dead_took:.1}s: the healthy host waited for it\n{lines}"
        );
        assert_eq!(bed.stdout_of(healthy, "cat /var/tmp/stamp"), "stamped\n");
        assert!(bed.has_path(healthy, &format!("{DATA_ROOT}/iso/rootfs/blob")));
    }
    // master0's post-init-host hook follows the pre-init-host hooks of every host: it waited
    // for n3 and the report names it.
    let waited = host_of(&report, m)["waited"].as_array().unwrap().clone();
    let on_n3 = waited
        .iter()
        .find(|w| {
            let what = w["waited_for"].as_str().unwrap();
            what.contains("pre-init-host hook stamp") && what.contains(&n3.ip.to_string())
        })
        .unwrap_or_else(|| panic!("master0's wait for n3 is not in the report: {report}"));
    assert!(
        on_n3["step"]
            .as_str()
            .unwrap()
            .contains("post-init-host hook after-all"),
        "{report}"
    );
    assert!(on_n3["seconds"].as_f64().unwrap() > 5.0, "{report}");
    assert!(lines.contains("waited"), "{lines}");
    assert_eq!(bed.stdout_of(m, "cat /var/tmp/after-all"), "after\n");
    assert!(
        report["cluster_stages_skipped"]
            .as_str()
            .unwrap()
            .contains(&n3.ip.to_string()),
        "{report}"
    );
    assert!(!bed.has_path(m, &format!("{DATA_ROOT}/iso/cmd-runs")));

    eprintln!(
        "[{:>5.1}s] sshd back: the rerun finishes only n3 (and the CMD)",
        started.elapsed().as_secs_f64()
    );
    bed.start_sshd(n3).unwrap();
    let (ok, report, lines) = run_json(&store, &bed, "iso:v1", file, &[], &|_| {});
    assert!(ok, "rerun:\n{lines}\n{report}");
    for healthy in [n1, n2] {
        assert_eq!(
            host_of(&report, healthy)["outcome"],
            "up_to_date",
            "{report}"
        );
    }
    assert_eq!(host_of(&report, n3)["outcome"], "installed", "{report}");
    assert_eq!(
        host_of(&report, m)["steps_run"],
        1,
        "only the CMD: {report}"
    );
    assert_eq!(
        bed.stdout_of(m, &format!("cat {DATA_ROOT}/iso/cmd-runs")),
        "ran\n"
    );
    assert_eq!(bed.stdout_of(n3, "cat /var/tmp/stamp"), "stamped\n");
    let again = Run::from(
        store
            .run_command(&bed, "iso:v1", &["-f", file])
            .output()
            .unwrap(),
    );
    again.assert_ok("third run");
    assert!(
        again.text.contains("Everything is up to date"),
        "{}",
        again.text
    );

    eprintln!(
        "[{:>5.1}s] an application reaches a master joined later",
        started.elapsed().as_secs_f64()
    );
    let app = tempfile::tempdir().unwrap();
    write_in(app.path(), "page", "hello from web\n");
    write_in(
        app.path(),
        "Kubefile",
        "FROM scratch\nCOPY page page\nCMD echo app ran >> ../../../app-runs\n",
    );
    store.ok(&[
        "build",
        "--type",
        "app-installer",
        "-t",
        "web:v1",
        app.path().to_str().unwrap(),
    ]);
    let file = write_in(
        work.path(),
        "apps.yaml",
        &clusterfile("apps", &[(n1, "master")], &bed, ""),
    );
    let file = file.to_str().unwrap();
    store
        .run_on(&bed, "iso:v1", &["-f", file])
        .assert_ok("base image on one master");
    store
        .run_on(&bed, "web:v1", &["-f", file])
        .assert_ok("application on the running cluster");
    let page = format!("{DATA_ROOT}/apps/apps/web/rootfs/page");
    assert!(bed.has_path(n1, &page));
    let join = |role: &str, host: &TestHost| {
        let mut c = store.command();
        c.args(["join", role, &host.ip.to_string(), "--cluster-name", "apps"])
            .arg("--known-hosts")
            .arg(bed.known_hosts_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Run::from(c.output().unwrap())
    };
    let joined = join("-m", n2);
    joined.assert_ok("join of a master");
    assert!(joined.row(n2).contains("joined"), "{}", joined.text);
    assert!(bed.has_path(n2, &format!("{DATA_ROOT}/apps/rootfs/blob")));
    assert_eq!(
        bed.stdout_of(n2, &format!("cat {page}")),
        "hello from web\n"
    );
    assert_eq!(
        bed.stdout_of(n1, &format!("cat {DATA_ROOT}/apps/app-runs")),
        "app ran\n",
        "the application's CMD must not run again"
    );
    let again = join("-m", n2);
    again.assert_ok("second join");
    assert!(
        again.text.contains("Everything is up to date"),
        "{}",
        again.text
    );
    // A node joined later gets no application tree (applications live on the masters).
    let node = join("-n", n3);
    node.assert_ok("join of a node");
    assert!(!bed.has_path(n3, &page));
    eprintln!("[{:>5.1}s] done", started.elapsed().as_secs_f64());
}
