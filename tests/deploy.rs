//! End to end: `sealer build` then `sealer run` onto real OpenSSH hosts of a testbed, through the
//! real binaries (`sealer`, with `sealer-stub` as the uploaded agent). Covers the etcd fixture on
//! 3 masters + 2 nodes, the double run, v1 → v2 → v1 converging to the image asked for, a non-root sudo user with Configs, exports and the
//! `SEALER_*` env, and the fault scenarios, each followed by a rerun that completes.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set. The etcd fixture fetches Debian's etcd packages at build
//! time through apt.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::clusterfile::shell_plugin;
use support::noise;
use support::store::{self, both, fixture, Run, Sealer, SEALER};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-e2e";

/// The seed of the fault scenarios' payload.
const NOISE_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The spool under `cluster_dir` holds exactly the frames the installed tree was unpacked from
/// (its `frames` list): what an upgrade can reuse, nothing more.
fn assert_spool_holds_the_installed_frames(bed: &Testbed, host: &TestHost, cluster_dir: &str) {
    let work = bed
        .host_root(host)
        .join(format!("{cluster_dir}/.sealer").trim_start_matches('/'));
    let listed: std::collections::BTreeSet<String> = std::fs::read_to_string(work.join("frames"))
        .unwrap_or_else(|e| panic!("{host}: {cluster_dir}/.sealer/frames: {e}"))
        .lines()
        .map(str::to_string)
        .collect();
    let spooled: std::collections::BTreeSet<String> = std::fs::read_dir(work.join("spool"))
        .unwrap_or_else(|e| panic!("{host}: {cluster_dir}/.sealer/spool: {e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!listed.is_empty(), "{host}: no frames listed");
    assert_eq!(spooled, listed, "{host}: the spool holds other frames");
}

/// A sealer.io/v2 Clusterfile: `hosts` as `(address, role)`, `ssh` the spec.ssh flow mapping,
/// then extra documents (Configs, Plugins) appended as written.
fn clusterfile(name: &str, hosts: &[(&TestHost, &str)], ssh: &str, extra: &str) -> String {
    let mut text = format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  dataRoot: {DATA_ROOT}\n  ssh: {ssh}\n  hosts:\n"
    );
    for (host, role) in hosts {
        writeln!(text, "    - ips: [{}]\n      roles: [{role}]", host.ip).unwrap();
    }
    text.push_str(extra);
    text
}

fn key_ssh(bed: &Testbed) -> String {
    format!("{{user: root, pk: {}}}", bed.key_path().display())
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn rootfs(cluster: &str) -> String {
    format!("{DATA_ROOT}/{cluster}/rootfs")
}

#[test]
fn etcd_cluster_on_three_masters_and_two_nodes_is_healthy_and_a_second_run_changes_nothing() {
    let Some(bed) = Testbed::up_for_test(5) else {
        return;
    };
    let store = Sealer::new();
    store.build("etcd-cluster:v1", &fixture("etcd-cluster"));
    let hosts = bed.hosts();
    let work = tempfile::tempdir().unwrap();
    let layout: Vec<(&TestHost, &str)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h, if i < 3 { "master" } else { "node" }))
        .collect();
    // A hook on every host that counts its runs, to prove the second run repeats nothing.
    let counter = shell_plugin(
        "count-runs",
        "pre-init-host",
        "  scope: master|node\n",
        "echo ran >> /var/tmp/count-runs",
    );
    // A Config, to prove it is written again into every tree that replaces the rootfs.
    let config = "---\napiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: app-conf\nspec:\n  path: etc/app.conf\n  data: |\n    members=3\n";
    let file = write_file(
        work.path(),
        "Clusterfile",
        &clusterfile(
            "etcd",
            &layout,
            &key_ssh(&bed),
            &format!("{counter}{config}"),
        ),
    );
    let file = file.to_str().unwrap();

    let first = store.run_on(&bed, "etcd-cluster:v1", &["-f", file]);
    first.assert_ok("first install");
    for host in hosts {
        assert!(first.row(host).contains("installed"), "{}", first.row(host));
        assert!(
            bed.has_path(host, &format!("{}/usr/bin/etcd", rootfs("etcd"))),
            "{host} has no rootfs at {}",
            rootfs("etcd")
        );
        assert_eq!(bed.stdout_of(host, "cat /var/tmp/count-runs"), "ran\n");
    }
    // The plugin came from the image's plugins/etcd.yaml.
    assert!(first.text.contains("etcd member"), "{}", first.text);

    // Checked from a node, which runs no etcd of its own.
    let endpoints = hosts[..3]
        .iter()
        .map(|h| format!("http://{}:2379", h.ip))
        .collect::<Vec<_>>()
        .join(",");
    let etcdctl = format!("{}/usr/bin/etcdctl --endpoints {endpoints}", rootfs("etcd"));
    let members = bed.stdout_of(&hosts[3], &format!("{etcdctl} member list"));
    assert_eq!(
        members
            .lines()
            .filter(|l| l.contains(", started, "))
            .count(),
        3,
        "member list:\n{members}"
    );
    let health = bed.stdout_of(&hosts[4], &format!("{etcdctl} endpoint health 2>&1"));
    for h in &hosts[..3] {
        assert!(
            health.contains(&format!("http://{}:2379 is healthy", h.ip)),
            "endpoint health:\n{health}"
        );
    }
    let pid_file = format!("{DATA_ROOT}/etcd/etcd/etcd.pid");
    let pid_before = bed.stdout_of(&hosts[0], &format!("cat {pid_file}"));

    // Double run: nothing sent, nothing run, everyone up to date.
    let second = store.run_on(&bed, "etcd-cluster:v1", &["-f", file]);
    second.assert_ok("second install");
    assert!(
        second.text.contains("Everything is up to date"),
        "{}",
        second.text
    );
    for host in hosts {
        assert!(
            second.row(host).contains("up to date"),
            "{}",
            second.row(host)
        );
        assert_eq!(bed.stdout_of(host, "cat /var/tmp/count-runs"), "ran\n");
        assert_spool_holds_the_installed_frames(&bed, host, &format!("{DATA_ROOT}/etcd"));
    }
    assert!(!second.text.contains(" sent "), "{}", second.text);
    assert!(!second.text.contains("etcd member"), "{}", second.text);
    assert!(!second.text.contains(", started, "), "{}", second.text);
    assert_eq!(
        bed.stdout_of(&hosts[0], &format!("cat {pid_file}")),
        pid_before
    );

    // v1 → v2 → v1: each install converges every host to the image asked for, runs that
    // image's steps on its tree, and a rerun of the last one does nothing.
    store.build_from(
        "etcd-cluster:v2",
        "FROM etcd-cluster:v1\nCOPY version etc/version\n",
        &[("version", b"v2\n")],
    );
    let version = format!("{}/etc/version", rootfs("etcd"));
    let conf = format!("{}/etc/app.conf", rootfs("etcd"));
    // The dry run names every host and the steps v2 would run, and changes nothing: the data
    // root (names, sizes, times) and the journals are the same before and after.
    // (etcd's own data and log, which etcd writes all the time, are left out.)
    let listing = format!(
        "find {DATA_ROOT} /var/tmp/count-runs -path {DATA_ROOT}/etcd/etcd -prune -o -printf '%p %s %T@ %m\\n' | sort"
    );
    let before: Vec<String> = hosts.iter().map(|h| bed.stdout_of(h, &listing)).collect();
    let dry = store.run_on(&bed, "etcd-cluster:v2", &["-f", file, "--dry-run"]);
    dry.assert_ok("dry run of v2");
    for host in hosts {
        assert!(dry.row(host).contains("run "), "{}", dry.row(host));
    }
    assert!(dry.text.contains("run  rootfs"), "{}", dry.text);
    assert!(
        dry.text.contains("run  CMD bash scripts/check-health.sh"),
        "{}",
        dry.text
    );
    assert!(
        dry.text.contains("An install would change 5 of 5 host(s)"),
        "{}",
        dry.text
    );
    let after: Vec<String> = hosts.iter().map(|h| bed.stdout_of(h, &listing)).collect();
    assert_eq!(before, after, "the dry run changed something on a host");
    let v2 = store.run_on(&bed, "etcd-cluster:v2", &["-f", file]);
    v2.assert_ok("install of v2 over v1");
    for host in hosts {
        assert!(v2.row(host).contains("installed"), "{}", v2.row(host));
        assert_eq!(bed.stdout_of(host, &format!("cat {version}")), "v2\n");
        assert_eq!(bed.stdout_of(host, &format!("cat {conf}")), "members=3\n");
        assert_eq!(bed.stdout_of(host, "cat /var/tmp/count-runs"), "ran\nran\n");
    }
    let back = store.run_on(&bed, "etcd-cluster:v1", &["-f", file]);
    back.assert_ok("install of v1 over v2");
    assert!(
        !back.text.contains("Everything is up to date"),
        "{}",
        back.text
    );
    for host in hosts {
        assert!(back.row(host).contains("installed"), "{}", back.row(host));
        assert!(
            !bed.has_path(host, &version),
            "{host} still has v2's {version} after v1 was installed again"
        );
        assert_eq!(bed.stdout_of(host, &format!("cat {conf}")), "members=3\n");
        assert_eq!(
            bed.stdout_of(host, "cat /var/tmp/count-runs"),
            "ran\nran\nran\n"
        );
    }
    let dry = store.run_on(&bed, "etcd-cluster:v1", &["-f", file, "--dry-run"]);
    dry.assert_ok("dry run of the installed v1");
    assert!(
        dry.text.contains("an install would change nothing"),
        "{}",
        dry.text
    );
    let again = store.run_on(&bed, "etcd-cluster:v1", &["-f", file]);
    again.assert_ok("rerun of v1");
    assert!(
        again.text.contains("Everything is up to date"),
        "{}",
        again.text
    );
    let health = bed.stdout_of(&hosts[4], &format!("{etcdctl} endpoint health 2>&1"));
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    upgrades_roll_back_on_failure_roll_back_on_request_and_survive_a_killed_installer(
        &bed, &store, file, &etcdctl,
    );
    an_application_image_goes_onto_the_running_cluster_beside_its_base_image(
        &bed, &store, file, &etcdctl,
    );
}

/// An application image (`--type app-installer`) run on the etcd cluster: its tree lands on
/// the masters in its own directory, its CMD (which writes a key through etcd) runs once on
/// master0, the base image stays, status lists both, and a rerun does nothing.
fn an_application_image_goes_onto_the_running_cluster_beside_its_base_image(
    bed: &Testbed,
    store: &Sealer,
    file: &str,
    etcdctl: &str,
) {
    let hosts = bed.hosts();
    let ctx = tempfile::tempdir().unwrap();
    write_file(ctx.path(), "page", "hello from web\n");
    write_file(
        ctx.path(),
        "put.sh",
        "etcdctl=\"$SEALER_ROOTFS/../../../rootfs/usr/bin/etcdctl\"\n\"$etcdctl\" --endpoints \"http://$SEALER_MASTER0:2379\" put /apps/web \"$(cat page)\"\n",
    );
    write_file(
        ctx.path(),
        "Kubefile",
        "FROM scratch\nCOPY page page\nCOPY put.sh put.sh\nCMD bash put.sh\n",
    );
    store.ok(&[
        "build",
        "--type",
        "app-installer",
        "-t",
        "web:v1",
        ctx.path().to_str().unwrap(),
    ]);
    let run = store.run_on(bed, "web:v1", &["-f", file]);
    run.assert_ok("application image onto the running cluster");
    let app = format!("{DATA_ROOT}/etcd/apps/web/rootfs/page");
    for (i, host) in hosts.iter().enumerate() {
        assert_eq!(bed.has_path(host, &app), i < 3, "{host}: {app}");
        // The base image is still the cluster's tree.
        assert!(bed.has_path(host, &format!("{}/usr/bin/etcd", rootfs("etcd"))));
    }
    let value = bed.stdout_of(
        &hosts[4],
        &format!("{etcdctl} get /apps/web --print-value-only"),
    );
    assert_eq!(value.trim(), "hello from web");
    let status = sealer_on(store, bed, "status", &["-f", file]);
    assert!(status.ok, "{}", status.text);
    assert!(
        status.text.contains("application (apps/web)"),
        "{}",
        status.text
    );
    assert!(status.text.contains("web:v1"), "{}", status.text);
    let again = store.run_on(bed, "web:v1", &["-f", file]);
    again.assert_ok("rerun of the application");
    assert!(
        again.text.contains("Everything is up to date"),
        "{}",
        again.text
    );
}

/// On the running etcd cluster of the test above (v1 installed): an image with upgrade hooks
/// (`upgrade-host` restarts each member from the new tree; `upgrade` on master0 checks the
/// cluster's health and then fails while /var/tmp/fail-upgrade exists).
/// 1. the upgrade fails in its post-upgrade hook with --rollback-on-failure: every host is back
///    on v1 and etcd is healthy; a rerun of v1 does nothing;
/// 2. `sealer upgrade` to the same image succeeds: upgrade hooks ran, no install hook or CMD
///    ran again; a rerun does nothing;
/// 3. `sealer rollback`: every host back on v1; a rerun of v1 does nothing;
/// 4. the installer killed (-9) mid-transfer of an upgrade: every host still holds one whole
///    tree (v1), and the rerun converges every host to the new image; a rerun does nothing.
fn upgrades_roll_back_on_failure_roll_back_on_request_and_survive_a_killed_installer(
    bed: &Testbed,
    store: &Sealer,
    file: &str,
    etcdctl: &str,
) {
    let hosts = bed.hosts();
    let started = Instant::now();
    let version_file = format!("{}/etc/version", rootfs("etcd"));
    let version = |host: &TestHost| {
        bed.stdout_of(host, &format!("cat {version_file} 2>/dev/null || echo v1"))
            .trim()
            .to_string()
    };
    let assert_everywhere = |expected: &str, when: &str| {
        for host in hosts {
            assert_eq!(version(host), expected, "{when}: {host}");
        }
        let health = bed.stdout_of(&hosts[4], &format!("{etcdctl} endpoint health 2>&1"));
        assert_eq!(health.matches("is healthy").count(), 3, "{when}: {health}");
    };
    let assert_rerun_does_nothing = |image: &str, when: &str| {
        let again = store.run_on(bed, image, &["-f", file]);
        again.assert_ok(when);
        assert!(
            again.text.contains("Everything is up to date"),
            "{when}: {}",
            again.text
        );
    };
    let counted = bed.stdout_of(&hosts[0], "cat /var/tmp/count-runs");
    let home = format!("{DATA_ROOT}/etcd/etcd");
    let upgrade_host = shell_plugin(
        "restart-etcd",
        "upgrade-host",
        "  scope: master\n",
        &format!(
            "pid=$(cat {home}/etcd.pid)\nkill \"$pid\"\nfor _ in $(seq 100); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done\ncat \"$SEALER_ROOTFS/etc/version\" > {home}/upgraded-to\nbash \"$SEALER_ROOTFS/scripts/start-etcd.sh\""
        ),
    );
    let upgrade = shell_plugin(
        "check-upgrade",
        "upgrade",
        "",
        "bash \"$SEALER_ROOTFS/scripts/check-health.sh\"\nif [ -e /var/tmp/fail-upgrade ]; then echo 'post-upgrade check refused the upgrade' >&2; exit 1; fi",
    );
    store.build_from(
        "etcd-cluster:v3",
        "FROM etcd-cluster:v1\nCOPY version etc/version\nCOPY upgrade-host.yaml plugins/\nCOPY upgrade.yaml plugins/\n",
        &[
            ("version", b"v3\n"),
            ("upgrade-host.yaml", upgrade_host.as_bytes()),
            ("upgrade.yaml", upgrade.as_bytes()),
        ],
    );

    // 1. A failing post-upgrade hook, with --rollback-on-failure.
    bed.stdout_of(&hosts[0], "touch /var/tmp/fail-upgrade");
    let failed = store.run_on(
        bed,
        "etcd-cluster:v3",
        &["-f", file, "--rollback-on-failure", "--attempts", "1"],
    );
    failed.assert_failed("upgrade with a failing upgrade hook");
    assert!(failed.text.contains("upgrade on "), "{}", failed.text);
    assert!(
        failed.text.contains("post-upgrade check refused"),
        "{}",
        failed.text
    );
    assert!(
        failed
            .text
            .contains("rolled back: every host that switched"),
        "{}",
        failed.text
    );
    assert_everywhere("v1", "after the failed upgrade rolled back");
    // The upgrade-host hooks ran in the new tree before the failure.
    for master in &hosts[..3] {
        assert_eq!(
            bed.stdout_of(master, &format!("cat {home}/upgraded-to")),
            "v3\n"
        );
    }
    assert_rerun_does_nothing("etcd-cluster:v1", "rerun of v1 after the rollback");
    eprintln!(
        "[{:>5.1}s] failed upgrade rolled back",
        started.elapsed().as_secs_f64()
    );

    // 2. The same upgrade, now allowed, through `sealer upgrade`.
    bed.stdout_of(&hosts[0], "rm /var/tmp/fail-upgrade");
    let up = sealer_on(
        store,
        bed,
        "upgrade",
        &["etcd-cluster:v3", "-f", file, "--attempts", "1"],
    );
    up.assert_ok("sealer upgrade to v3");
    assert_everywhere("v3", "after the upgrade");
    for host in hosts {
        // The install route's hooks did not run again on the upgrade route.
        assert_eq!(
            bed.stdout_of(host, "cat /var/tmp/count-runs"),
            counted,
            "{host}"
        );
        assert!(bed.has_path(host, &format!("{DATA_ROOT}/etcd/rootfs.prev/usr/bin/etcd")));
    }
    assert!(!up.text.contains("CMD bash"), "{}", up.text);
    assert_rerun_does_nothing("etcd-cluster:v3", "rerun of v3");
    eprintln!(
        "[{:>5.1}s] upgrade succeeded",
        started.elapsed().as_secs_f64()
    );

    // 3. sealer rollback over SSH.
    let back = sealer_on(store, bed, "rollback", &["--cluster-name", "etcd"]);
    back.assert_ok("sealer rollback");
    assert_everywhere("v1", "after sealer rollback");
    assert_rerun_does_nothing("etcd-cluster:v1", "rerun of v1 after sealer rollback");
    eprintln!("[{:>5.1}s] rolled back", started.elapsed().as_secs_f64());

    // 4. The installer killed mid-transfer of an upgrade to v5 (v3 and 24 MiB of noise).
    let noise = noise::bytes(24 << 20, NOISE_SEED ^ 5);
    store.build_from(
        "etcd-cluster:v5",
        "FROM etcd-cluster:v3\nCOPY version etc/version\nCOPY noise.bin data/\n",
        &[("version", b"v5\n"), ("noise.bin", &noise)],
    );
    for host in hosts {
        bed.shape(host, "16mbit").unwrap();
    }
    let spool = bed
        .host_root(&hosts[4])
        .join(format!("{DATA_ROOT}/etcd/.sealer/spool").trim_start_matches('/'));
    // The host keeps the frames of the generation installed; a frame of v5 is a new name.
    let frames = || -> std::collections::HashSet<std::ffi::OsString> {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name())
                    .filter(|n| n.len() == 64)
                    .collect()
            })
            .unwrap_or_default()
    };
    let kept = frames();
    let mut child = store
        .run_command(bed, "etcd-cluster:v5", &["-f", file, "--attempts", "1"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while frames().is_subset(&kept) {
        assert!(
            Instant::now() < deadline,
            "no frame of v5 arrived within 90 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upgrade ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let killed = child.wait_with_output().unwrap();
    assert!(!killed.status.success());
    for host in hosts {
        bed.unshape(host).unwrap();
    }
    // Every host holds one whole tree, the one before the upgrade: never a mix.
    for host in hosts {
        assert_eq!(version(host), "v1", "{host} after the kill");
        assert!(!bed.has_path(host, &format!("{}/data/noise.bin", rootfs("etcd"))));
    }
    let rerun = store.run_on(bed, "etcd-cluster:v5", &["-f", file, "--attempts", "2"]);
    rerun.assert_ok("rerun of the killed upgrade");
    assert_everywhere("v5", "after the rerun of the killed upgrade");
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&noise))
    };
    for host in hosts {
        let sum = bed.stdout_of(
            host,
            &format!("sha256sum < {}/data/noise.bin", rootfs("etcd")),
        );
        assert!(sum.starts_with(&expected), "{host}: {sum}");
    }
    for master in &hosts[..3] {
        assert_eq!(
            bed.stdout_of(master, &format!("cat {home}/upgraded-to")),
            "v5\n"
        );
    }
    assert_rerun_does_nothing("etcd-cluster:v5", "rerun of v5");
    eprintln!(
        "[{:>5.1}s] killed upgrade converged",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_non_root_sudo_user_with_a_password_gets_configs_exports_and_sealer_env() {
    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let (master, node) = (&bed.hosts()[0], &bed.hosts()[1]);
    let store = Sealer::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ctx.path().join("etc")).unwrap();
    write_file(ctx.path(), "etc/app.yaml", "a: 1\nb:\n  c: 2\n");
    write_file(ctx.path(), "etc/plain.conf", "old\n");
    write_file(
        ctx.path(),
        "Kubefile",
        "FROM scratch\nCOPY etc etc\nCMD echo \"cmd sees TOKEN=$TOKEN as $(id -u)\" > \"$SEALER_ROOTFS/../cmd-token\"\n",
    );
    store.build("conf:v1", ctx.path());

    let mut extra = String::new();
    extra.push_str(
        "---\napiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: app\nspec:\n  path: etc/app.yaml\n  strategy: merge\n  data: |\n    b:\n      d: 3\n",
    );
    extra.push_str(
        "---\napiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: plain\nspec:\n  path: etc/plain.conf\n  data: |\n    new\n",
    );
    extra.push_str(&shell_plugin(
        "make-token",
        "pre-init-host",
        "  scope: master\n",
        "echo \"TOKEN=tok-$SEALER_HOST_IP\" >> \"$SEALER_EXPORT\"\nenv | grep '^SEALER_' | sort > \"$SEALER_ROOTFS/../sealer-env\"",
    ));
    extra.push_str(&shell_plugin(
        "use-token",
        "post-init-host",
        "  scope: node\n",
        "echo \"$TOKEN $(id -u)\" > \"$SEALER_ROOTFS/../token\"\nenv | grep '^SEALER_' | sort > \"$SEALER_ROOTFS/../sealer-env\"",
    ));
    let ssh = format!(
        "{{user: {}, passwd: {}}}",
        bed.deploy_user(),
        bed.deploy_password()
    );
    let work = tempfile::tempdir().unwrap();
    let file = write_file(
        work.path(),
        "Clusterfile",
        &clusterfile("conf", &[(master, "master"), (node, "node")], &ssh, &extra),
    );
    let run = store.run_on(&bed, "conf:v1", &["-f", file.to_str().unwrap()]);
    run.assert_ok("install as deploy");
    assert!(
        !run.text.contains(bed.deploy_password()),
        "the password was printed:\n{}",
        run.text
    );

    let cluster_dir = format!("{DATA_ROOT}/conf");
    for host in [master, node] {
        let merged = bed.stdout_of(host, &format!("cat {}/etc/app.yaml", rootfs("conf")));
        let value: serde_yaml::Value = serde_yaml::from_str(&merged).unwrap();
        assert_eq!(value["a"], serde_yaml::Value::from(1), "{merged}");
        assert_eq!(value["b"]["c"], serde_yaml::Value::from(2), "{merged}");
        assert_eq!(value["b"]["d"], serde_yaml::Value::from(3), "{merged}");
        assert_eq!(
            bed.stdout_of(host, &format!("cat {}/etc/plain.conf", rootfs("conf"))),
            "new\n"
        );
        // Once the rootfs is in the journal the spool keeps only the installed tree's frames.
        assert_spool_holds_the_installed_frames(&bed, host, &cluster_dir);
        let env = bed.stdout_of(host, &format!("cat {cluster_dir}/sealer-env"));
        for line in [
            "SEALER_CLUSTER=conf".to_string(),
            format!("SEALER_ROOTFS={}", rootfs("conf")),
            format!("SEALER_MASTER0={}", master.ip),
            format!("SEALER_MASTERS={}", master.ip),
            format!("SEALER_NODES={}", node.ip),
            format!("SEALER_HOST_IP={}", host.ip),
        ] {
            assert!(
                env.lines().any(|l| l == line),
                "{host}: no {line} in\n{env}"
            );
        }
    }
    // Exported on master0 by a pre-init-host hook, seen by a later hook on the node (run as
    // root through sudo) and by the CMD.
    assert_eq!(
        bed.stdout_of(node, &format!("cat {cluster_dir}/token")),
        format!("tok-{} 0\n", master.ip)
    );
    assert_eq!(
        bed.stdout_of(master, &format!("cat {cluster_dir}/cmd-token")),
        format!("cmd sees TOKEN=tok-{} as 0\n", master.ip)
    );

    // A rerun reads the exports back from the journal and still changes nothing.
    let again = store.run_on(&bed, "conf:v1", &["-f", file.to_str().unwrap()]);
    again.assert_ok("second install as deploy");
    assert!(
        again.text.contains("Everything is up to date"),
        "{}",
        again.text
    );
}

/// `12.3 MiB` → bytes.
fn parse_size(number: &str, unit: &str) -> f64 {
    let n: f64 = number.parse().unwrap();
    let scale = match unit.trim_end_matches(')').trim_end_matches(',') {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other}"),
    };
    n * scale
}

/// The compressed size from `Installing IMAGE (SIZE in N frames, ...`.
fn payload_size(run: &Run) -> f64 {
    let line = run
        .text
        .lines()
        .find(|l| l.starts_with("Installing "))
        .unwrap();
    let inner = line.split_once('(').unwrap().1;
    let words: Vec<&str> = inner.split_whitespace().collect();
    parse_size(words[0], words[1])
}

/// The bytes a table row says were sent (`..., 12.3 MiB sent)`).
fn sent_in_row(row: &str) -> f64 {
    let words: Vec<&str> = row.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.starts_with("sent"))
        .unwrap_or_else(|| panic!("no bytes sent in {row}"));
    parse_size(words[i - 2], words[i - 1])
}

#[test]
fn faults_are_reported_per_host_and_each_rerun_completes() {
    let Some(bed) = Testbed::up_for_test(3) else {
        return;
    };
    let hosts = bed.hosts();
    let (m, n1, n2) = (&hosts[0], &hosts[1], &hosts[2]);
    let all = [(m, "master"), (n1, "node"), (n2, "node")];
    let store = Sealer::new();
    store.build("hello:v1", &fixture("hello"));
    let work = tempfile::tempdir().unwrap();
    let key = bed.key_path().to_str().unwrap().to_string();
    let cf = |name: &str, layout: &[(&TestHost, &str)], extra: &str| {
        let path = write_file(
            work.path(),
            &format!("{name}.yaml"),
            &clusterfile(name, layout, &key_ssh(&bed), extra),
        );
        path.to_str().unwrap().to_string()
    };
    let started = Instant::now();

    eprintln!(
        "[{:>5.1}s] Corrupt input is refused",
        started.elapsed().as_secs_f64()
    );
    // Corrupt input is refused before any host is touched.
    let broken = write_file(
        work.path(),
        "broken.yaml",
        "apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts: [oops\n",
    );
    let run = store.run_on(&bed, "hello:v1", &["-f", broken.to_str().unwrap()]);
    run.assert_failed("malformed Clusterfile");
    assert!(run.text.contains("broken.yaml"), "{}", run.text);
    let damaged = tempfile::tempdir().unwrap();
    copy_tree(&store.root(), damaged.path());
    let blob = largest_file(&damaged.path().join("oci/blobs/sha256"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = store::command(Path::new(SEALER), damaged.path())
        .args(["run", "hello:v1", "-f", &cf("corrupt", &all, "")])
        .arg("--known-hosts")
        .arg(bed.known_hosts_path())
        .output()
        .unwrap();
    let run = Run::from(out);
    run.assert_failed("corrupt blob");
    assert!(run.text.contains("corrupt"), "{}", run.text);
    for host in hosts {
        assert!(
            !bed.has_path(host, DATA_ROOT),
            "{host} was touched by a refused install"
        );
    }
    // The same install from the intact store completes.
    store
        .run_on(&bed, "hello:v1", &["-f", &cf("corrupt", &all, "")])
        .assert_ok("install after the corrupt input");

    eprintln!(
        "[{:>5.1}s] Wrong password:",
        started.elapsed().as_secs_f64()
    );
    // Wrong password: one clear error, the password never printed; the right one completes.
    let wrong = "not-the-password-7f3a";
    let pw_args = |password: &str| {
        vec![
            "-m".to_string(),
            n1.ip.to_string(),
            "-p".to_string(),
            password.to_string(),
            "--cluster-name".to_string(),
            "pw".to_string(),
            "--data-root".to_string(),
            DATA_ROOT.to_string(),
        ]
    };
    let args = pw_args(wrong);
    let run = store.run_on(
        &bed,
        "hello:v1",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    run.assert_failed("wrong password");
    assert!(!run.text.contains(wrong), "password printed:\n{}", run.text);
    assert_eq!(run.text.matches("FAILED").count(), 1, "{}", run.text);
    assert!(run.row(n1).contains("password"), "{}", run.row(n1));
    assert!(!bed.has_path(n1, &rootfs("pw")));
    let args = pw_args(bed.root_password());
    let run = store.run_on(
        &bed,
        "hello:v1",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    run.assert_ok("right password");
    assert!(!run.text.contains(bed.root_password()), "{}", run.text);

    eprintln!(
        "[{:>5.1}s] A changed host key is refused",
        started.elapsed().as_secs_f64()
    );
    // A changed host key is refused, naming the host; nothing is installed there.
    bed.regen_hostkey(n2).unwrap();
    let file = cf("hostkey", &all, "");
    let run = store.run_on(&bed, "hello:v1", &["-f", &file]);
    run.assert_failed("changed host key");
    let row = run.row(n2);
    assert!(row.contains("FAILED") && row.contains("host key"), "{row}");
    assert!(row.contains(&n2.ip.to_string()), "{row}");
    assert!(!bed.has_path(n2, &rootfs("hostkey")));
    assert!(bed.has_path(n1, &rootfs("hostkey")));
    // The operator removes the stale key; the rerun completes only what is missing.
    let status = Command::new("ssh-keygen")
        .arg("-R")
        .arg(n2.ip.to_string())
        .arg("-f")
        .arg(bed.known_hosts_path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", both(&status));
    let run = store.run_on(&bed, "hello:v1", &["-f", &file]);
    run.assert_ok("rerun after the host key was accepted");
    assert!(run.row(n1).contains("up to date"), "{}", run.row(n1));
    assert!(run.row(n2).contains("installed"), "{}", run.row(n2));

    eprintln!(
        "[{:>5.1}s] A host whose link is down",
        started.elapsed().as_secs_f64()
    );
    // A host whose link is down: the others finish, the host is named; link up, rerun.
    bed.link_down(n2).unwrap();
    let file = cf("link", &all, "");
    let run = store.run_on(&bed, "hello:v1", &["-f", &file, "--attempts", "2"]);
    bed.link_up(n2).unwrap();
    run.assert_failed("link down");
    assert!(run.row(n2).contains("FAILED"), "{}", run.row(n2));
    assert!(run.row(n1).contains("installed"), "{}", run.row(n1));
    assert!(bed.has_path(n1, &rootfs("link")));
    assert!(!bed.has_path(n2, &rootfs("link")));
    let run = store.run_on(&bed, "hello:v1", &["-f", &file]);
    run.assert_ok("rerun after link up");
    assert!(run.row(n1).contains("up to date"), "{}", run.row(n1));
    assert!(run.row(n2).contains("installed"), "{}", run.row(n2));
    assert!(bed.has_path(n2, &rootfs("link")));

    eprintln!(
        "[{:>5.1}s] A failing hook is retried",
        started.elapsed().as_secs_f64()
    );
    // A failing hook is retried with backoff and reported; the fixed Clusterfile completes.
    let failing = shell_plugin(
        "flaky",
        "post-init-host",
        "  scope: node\n",
        "echo broken >&2\nexit 7",
    );
    let file = cf("hook", &all, &failing);
    let run = store.run_on(&bed, "hello:v1", &["-f", &file, "--attempts", "2"]);
    run.assert_failed("failing hook");
    assert!(run.text.contains("retrying in"), "{}", run.text);
    for node in [n1, n2] {
        let row = run.row(node);
        assert!(row.contains("flaky") && row.contains("status 7"), "{row}");
    }
    assert!(run.text.contains("not ready"), "{}", run.text);
    let fixed = shell_plugin("flaky", "post-init-host", "  scope: node\n", "true");
    let file = cf("hook", &all, &fixed);
    let run = store.run_on(&bed, "hello:v1", &["-f", &file]);
    run.assert_ok("rerun with the fixed hook");

    eprintln!(
        "[{:>5.1}s] sshd killed mid-transfer",
        started.elapsed().as_secs_f64()
    );
    // sshd killed mid-transfer: the rerun sends only the frames the host lacks.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("noise.bin"),
        noise::bytes(40 << 20, NOISE_SEED),
    )
    .unwrap();
    write_file(
        ctx.path(),
        "Kubefile",
        "FROM scratch\nCOPY noise.bin data/\n",
    );
    store.build("noise:v1", ctx.path());
    eprintln!("[{:>5.1}s] built noise", started.elapsed().as_secs_f64());
    bed.shape(n1, "32mbit").unwrap();
    let child = start_transfer(&store, &bed, n1, &key, "kill");
    bed.kill_sshd(n1).unwrap();
    let killed = Instant::now();
    let run = Run::from(child.wait_with_output().unwrap());
    // A lost peer is noticed from the dead connection, not after an idle timeout.
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the run took {:?} to notice sshd was gone",
        killed.elapsed()
    );
    eprintln!(
        "[{:>5.1}s] failed run returned",
        started.elapsed().as_secs_f64()
    );
    bed.start_sshd(n1).unwrap();
    bed.unshape(n1).unwrap();
    run.assert_failed("sshd killed mid-transfer");
    assert!(run.row(n1).contains("FAILED"), "{}", run.row(n1));
    let run = store.run_on(
        &bed,
        "noise:v1",
        &[
            "-m",
            &n1.ip.to_string(),
            "--pk",
            &key,
            "--cluster-name",
            "kill",
            "--data-root",
            DATA_ROOT,
        ],
    );
    run.assert_ok("rerun after sshd came back");
    eprintln!("[{:>5.1}s] rerun returned", started.elapsed().as_secs_f64());
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(noise::bytes(40 << 20, NOISE_SEED)))
    };
    assert_resumed(&bed, n1, &run, "kill", &expected);

    // The installer itself killed mid-transfer (kill -9), or stopped with Ctrl-C (SIGINT): the
    // rerun sends only the frames the host lacks and completes.
    for (signal, cluster) in [(libc::SIGKILL, "sigkill"), (libc::SIGINT, "sigint")] {
        eprintln!(
            "[{:>5.1}s] installer gets signal {signal} mid-transfer",
            started.elapsed().as_secs_f64()
        );
        bed.shape(n1, "32mbit").unwrap();
        let child = start_transfer(&store, &bed, n1, &key, cluster);
        let signalled = Instant::now();
        // SAFETY: a plain kill(2) of our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{}", both(&out));
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the installer took {:?} to stop after signal {signal}",
            signalled.elapsed()
        );
        bed.unshape(n1).unwrap();
        let args = [
            "-m",
            &n1.ip.to_string(),
            "--pk",
            &key,
            "--cluster-name",
            cluster,
            "--data-root",
            DATA_ROOT,
        ];
        let run = store.run_on(&bed, "noise:v1", &args);
        run.assert_ok(&format!("rerun after signal {signal}"));
        assert_resumed(&bed, n1, &run, cluster, &expected);
        let again = store.run_on(&bed, "noise:v1", &args);
        again.assert_ok(&format!("second rerun after signal {signal}"));
        assert!(again.row(n1).contains("up to date"), "{}", again.row(n1));
    }
    eprintln!("fault scenarios took {:?}", started.elapsed());
}

/// A rerun after an interrupted transfer sent some but not all of the payload to `host`, and
/// the host holds the noise file intact.
fn assert_resumed(bed: &Testbed, host: &TestHost, run: &Run, cluster: &str, expected: &str) {
    let total = payload_size(run);
    let resent = sent_in_row(run.row(host));
    assert!(
        resent > 0.0 && resent < total,
        "the rerun of {cluster} sent {resent} bytes of {total}:\n{}",
        run.text
    );
    let installed = bed.stdout_of(
        host,
        &format!("sha256sum < {}/data/noise.bin", rootfs(cluster)),
    );
    assert!(installed.starts_with(expected), "{installed}");
}

/// Starts `sealer run noise:v1` onto `host` as cluster `cluster` and returns once the host
/// holds at least one whole frame of it (the transfer is under way). The caller waits on it.
#[allow(clippy::zombie_processes)]
fn start_transfer(
    store: &Sealer,
    bed: &Testbed,
    host: &TestHost,
    key: &str,
    cluster: &str,
) -> std::process::Child {
    let spool = format!("{DATA_ROOT}/{cluster}/.sealer/spool");
    let mut child = store
        .command()
        .args(["run", "noise:v1", "-m", &host.ip.to_string(), "--pk", key])
        .args(["--cluster-name", cluster, "--data-root", DATA_ROOT])
        .args(["--attempts", "1", "--known-hosts"])
        .arg(bed.known_hosts_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Watched through the host's root filesystem as mounted here: no process per look.
    let spool_dir = bed.host_root(host).join(spool.trim_start_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let frames = std::fs::read_dir(&spool_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                    .count()
            })
            .unwrap_or(0);
        if frames >= 1 {
            return child;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no frame arrived within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn largest_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .unwrap()
        .path()
}

/// `sealer <command> ARGS...` with the testbed's known_hosts.
fn sealer_on(store: &Sealer, bed: &Testbed, command: &str, args: &[&str]) -> Run {
    let mut c = store.command();
    c.arg(command)
        .args(args)
        .arg("--known-hosts")
        .arg(bed.known_hosts_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Run::from(c.output().unwrap())
}

#[test]
fn join_adds_nodes_with_their_hooks_and_exports_delete_removes_one_and_delete_all_leaves_hosts_as_before(
) {
    let Some(bed) = Testbed::up_for_test(4) else {
        return;
    };
    let hosts = bed.hosts();
    // What a host looks like before anything of ours was there.
    let footprint = format!(
        "ls -a {DATA_ROOT} 2>&1; ls -a /var/lib/sealer 2>&1; ps -e -o comm= | grep -v -e '^ps$' -e '^sh$' -e '^grep$' -e '^sshd' -e '^sort$' | sort"
    );
    let pristine: Vec<String> = hosts.iter().map(|h| bed.stdout_of(h, &footprint)).collect();

    let store = Sealer::new();
    store.build_from(
        "member:v1",
        "FROM scratch\nCOPY a etc/a\nCMD echo cmd ran >> \"$SEALER_ROOTFS/../cmd-runs\"\n",
        &[("a", b"a\n")],
    );
    let work = tempfile::tempdir().unwrap();
    let mut plugins = shell_plugin(
        "make-token",
        "pre-install",
        "",
        "echo JOIN_TOKEN=token-from-master0 >> \"$SEALER_EXPORT\"",
    );
    plugins.push_str(&shell_plugin(
        "joined",
        "PostJoin",
        "  scope: node\n",
        "echo \"joined with $JOIN_TOKEN\" > /var/tmp/joined",
    ));
    plugins.push_str(&shell_plugin(
        "pre-clean",
        "PreClean",
        "  scope: master|node\n",
        "echo \"cleaning $SEALER_HOST_IP\" > /var/tmp/cleaned",
    ));
    let file = write_file(
        work.path(),
        "Clusterfile",
        &clusterfile(
            "members",
            &[(&hosts[0], "master"), (&hosts[1], "node")],
            &key_ssh(&bed),
            &plugins,
        ),
    );
    // Preflight refuses before anything is sent: a clock skew limit below what is measured
    // (the hosts share this machine's clock, so any limit of 0 is exceeded) …
    let skewed = store.run_on(
        &bed,
        "member:v1",
        &["-f", file.to_str().unwrap(), "--max-clock-skew", "0s"],
    );
    assert!(!skewed.ok, "{}", skewed.text);
    for host in &hosts[..2] {
        assert!(
            skewed
                .row(host)
                .contains("FAILED: preflight: the host's clock is"),
            "{}",
            skewed.row(host)
        );
        assert!(!bed.has_path(host, DATA_ROOT), "{host} got something");
    }
    let dry = store.run_on(
        &bed,
        "member:v1",
        &[
            "-f",
            file.to_str().unwrap(),
            "--max-clock-skew",
            "0s",
            "--dry-run",
        ],
    );
    dry.assert_ok("dry run with a clock limit of 0s");
    assert!(
        dry.text
            .contains("preflight would refuse: the host's clock is"),
        "{}",
        dry.text
    );
    assert!(
        dry.text.contains("Preflight would refuse 2 of 2 host(s)"),
        "{}",
        dry.text
    );
    // … and two hosts answering to one name.
    let name0 = bed.stdout_of(&hosts[0], "hostname").trim().to_string();
    let name1 = bed.stdout_of(&hosts[1], "hostname").trim().to_string();
    bed.stdout_of(&hosts[1], &format!("hostname {name0}"));
    let twins = store.run_on(&bed, "member:v1", &["-f", file.to_str().unwrap()]);
    bed.stdout_of(&hosts[1], &format!("hostname {name1}"));
    assert!(!twins.ok, "{}", twins.text);
    for (host, other) in [(&hosts[0], &hosts[1]), (&hosts[1], &hosts[0])] {
        let row = twins.row(host);
        assert!(
            row.contains(&format!(
                "the hostname {name0} is also the name of {}",
                other.ip
            )),
            "{row}"
        );
        assert!(!bed.has_path(host, DATA_ROOT), "{host} got something");
    }

    let first = store.run_on(&bed, "member:v1", &["-f", file.to_str().unwrap()]);
    first.assert_ok("install on two hosts");
    let cluster_dir = format!("{DATA_ROOT}/members");

    // Join two nodes: only they are worked on; their PostJoin hook sees master0's export.
    let nodes = format!("{},{}", hosts[2].ip, hosts[3].ip);
    let join = sealer_on(
        &store,
        &bed,
        "join",
        &["-n", &nodes, "--cluster-name", "members"],
    );
    join.assert_ok("join of two nodes");
    for new in &hosts[2..] {
        assert!(join.row(new).contains("joined"), "{}", join.row(new));
        assert!(bed.has_path(new, &format!("{cluster_dir}/rootfs/etc/a")));
        assert_eq!(
            bed.stdout_of(new, "cat /var/tmp/joined"),
            "joined with token-from-master0\n"
        );
    }
    for old in &hosts[..2] {
        assert!(join.row(old).contains("up to date"), "{}", join.row(old));
        assert!(!bed.has_path(old, "/var/tmp/joined"));
    }
    assert_eq!(
        bed.stdout_of(&hosts[0], &format!("cat {cluster_dir}/cmd-runs")),
        "cmd ran\n",
        "a join must not run the cluster's CMDs again"
    );
    let again = sealer_on(
        &store,
        &bed,
        "join",
        &["-n", &nodes, "--cluster-name", "members"],
    );
    again.assert_ok("second join");
    assert!(
        again.text.contains("Everything is up to date"),
        "{}",
        again.text
    );

    // Delete one node: its PreClean ran, nothing of ours is left there, the others untouched.
    let gone = &hosts[3];
    // The cluster's lock on master0 is written by every change (it names the holder), so it is
    // the one file a delete of another host may touch.
    let listing = format!(
        "find {DATA_ROOT} -not -path '{DATA_ROOT}/.agent/*.lock' -printf '%p %s %T@\\n' | sort"
    );
    let others_before: Vec<String> = hosts[..3]
        .iter()
        .map(|h| bed.stdout_of(h, &listing))
        .collect();
    let ip = gone.ip.to_string();
    let delete = sealer_on(
        &store,
        &bed,
        "delete",
        &["-n", &ip, "--cluster-name", "members"],
    );
    delete.assert_ok("delete of one node");
    assert_eq!(
        bed.stdout_of(gone, "cat /var/tmp/cleaned"),
        format!("cleaning {}\n", gone.ip)
    );
    assert!(
        !bed.has_path(gone, DATA_ROOT),
        "the data root is left on the deleted node:\n{}",
        bed.stdout_of(gone, &format!("find {DATA_ROOT}"))
    );
    let others_after: Vec<String> = hosts[..3]
        .iter()
        .map(|h| bed.stdout_of(h, &listing))
        .collect();
    assert_eq!(others_before, others_after, "delete touched another host");
    let status = sealer_on(
        &store,
        &bed,
        "status",
        &[
            "-f",
            &store
                .root()
                .join("clusters/members/Clusterfile")
                .display()
                .to_string(),
        ],
    );
    status.assert_ok("status after the delete");
    assert!(!status.text.contains(&ip), "{}", status.text);
    let refused = sealer_on(
        &store,
        &bed,
        "delete",
        &["-n", &ip, "--cluster-name", "members"],
    );
    assert!(!refused.ok, "{}", refused.text);
    assert!(
        refused.text.contains("is not a host of cluster members"),
        "{}",
        refused.text
    );

    // apply of a Clusterfile that no longer lists hosts[2]: refused without --yes (no
    // terminal), then it goes and the others converge to the file.
    let smaller = write_file(
        work.path(),
        "Clusterfile.smaller",
        &clusterfile(
            "members",
            &[(&hosts[0], "master"), (&hosts[1], "node")],
            &key_ssh(&bed),
            &plugins,
        ),
    );
    let smaller = smaller.to_str().unwrap();
    let refused = sealer_on(
        &store,
        &bed,
        "apply",
        &["-f", smaller, "--image", "member:v1"],
    );
    assert!(!refused.ok, "{}", refused.text);
    assert!(
        refused
            .text
            .contains(&format!("no longer lists {}", hosts[2].ip)),
        "{}",
        refused.text
    );
    assert!(bed.has_path(&hosts[2], &format!("{cluster_dir}/rootfs/etc/a")));
    let applied = sealer_on(
        &store,
        &bed,
        "apply",
        &["-f", smaller, "--image", "member:v1", "--yes"],
    );
    applied.assert_ok("apply of the smaller Clusterfile");
    assert!(!bed.has_path(&hosts[2], DATA_ROOT));
    for kept in &hosts[..2] {
        assert!(bed.has_path(kept, &format!("{cluster_dir}/rootfs/etc/a")));
    }

    // Delete everything: every host is as it was before the first install.
    let all = sealer_on(
        &store,
        &bed,
        "delete",
        &["--all", "--cluster-name", "members"],
    );
    all.assert_ok("delete --all");
    for (host, before) in hosts[..2].iter().zip(&pristine) {
        assert_eq!(
            &bed.stdout_of(host, &footprint),
            before,
            "{host} after delete --all"
        );
    }
}
