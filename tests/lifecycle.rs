//! The cluster's lifecycle on this machine, through the real binaries and `--local` installs:
//! one command at a time per cluster (the lock, its holder named, a killed holder's lock taken
//! over), the record of every install, and images installed in turn converging the rootfs.
//! The same engine runs over SSH; tests/deploy.rs covers that on testbed hosts.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::store::{both, command, Sealer, SEALER};

/// `sealer run IMAGE --local --data-root DATA` against `store`.
fn local_run(store: &Sealer, image: &str, data: &Path) -> Command {
    let mut c = command(Path::new(SEALER), &store.root());
    c.args([
        "run",
        image,
        "--local",
        "--data-root",
        data.to_str().unwrap(),
    ]);
    c
}

/// Waits until `path` exists (the slow CMD has started), at most 60 s.
fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the first install ended ({status}) before its CMD started");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_install_of_a_cluster_being_changed_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(
) {
    let store = Sealer::new();
    let marker = store.path("cmd-started");
    store.build_from(
        "slow:v1",
        &format!(
            "FROM scratch\nCOPY a a\nCMD touch {} && sleep 600\n",
            marker.display()
        ),
        &[("a", b"a\n")],
    );
    let data = store.path("data");
    let mut first = local_run(&store, "slow:v1", &data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&marker, &mut first);

    let second = local_run(&store, "slow:v1", &data).output().unwrap();
    let text = both(&second);
    assert!(!second.status.success(), "{text}");
    assert!(
        text.contains("cluster my-cluster is being changed by `sealer run slow:v1`"),
        "{text}"
    );
    assert!(text.contains(&format!("pid {}", first.id())), "{text}");
    let status = command(Path::new(SEALER), &store.root())
        .args(["status", "--local", "--data-root", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        both(&status).contains("Being changed now by `sealer run slow:v1`"),
        "{}",
        both(&status)
    );
    // Another installer, with its own $SEALER_ROOT (as on another machine: its own lock here),
    // is kept out by the cluster's lock on master0, which names the holder.
    let other = Sealer::new();
    other.build_from(
        "slow:v1",
        &format!(
            "FROM scratch\nCOPY a a\nCMD touch {} && sleep 600\n",
            marker.display()
        ),
        &[("a", b"a\n")],
    );
    let elsewhere = local_run(&other, "slow:v1", &data).output().unwrap();
    let text = both(&elsewhere);
    assert!(!elsewhere.status.success(), "{text}");
    assert!(
        text.contains("is being changed by `sealer run slow:v1`")
            && text.contains("lock on master0"),
        "{text}"
    );
    assert!(text.contains(&format!("pid {}", first.id())), "{text}");

    // A dry run reads and changes nothing, so it does not need the lock.
    let dry = local_run(&store, "slow:v1", &data)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", both(&dry));

    // kill -9: the holder cannot clean up; the next run takes the lock over and says so.
    first.kill().unwrap();
    first.wait().unwrap();
    // The killed run's CMD (its own process group) is still sleeping; the rerun runs it again.
    std::fs::remove_file(&marker).unwrap();
    let mut third = local_run(&store, "slow:v1", &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&marker, &mut third);
    third.kill().unwrap();
    let out = third.wait_with_output().unwrap();
    let text = both(&out);
    assert!(
        text.contains("did not finish; taking over its lock"),
        "{text}"
    );
    assert!(
        text.contains("did not finish; taking over its lock on master0"),
        "{text}"
    );
    let _ = Command::new("pkill").args(["-f", "sleep 600"]).status();
}

#[test]
fn every_install_is_recorded_and_the_rootfs_follows_the_image_asked_for() {
    let store = Sealer::new();
    store.build_from(
        "app:v1",
        "FROM scratch\nCOPY v1 etc/only-in-v1\nCMD echo v1 >> \"$SEALER_ROOTFS/../cmd-runs\"\n",
        &[("v1", b"1\n")],
    );
    store.build_from(
        "app:v2",
        "FROM scratch\nCOPY v2 etc/only-in-v2\nCMD echo v2 >> \"$SEALER_ROOTFS/../cmd-runs\"\n",
        &[("v2", b"2\n")],
    );
    let data = store.path("data");
    let rootfs = data.join("my-cluster/rootfs");
    let runs = data.join("my-cluster/cmd-runs");
    for (image, present, absent, cmds) in [
        ("app:v1", "only-in-v1", "only-in-v2", "v1\n"),
        ("app:v2", "only-in-v2", "only-in-v1", "v1\nv2\n"),
        ("app:v1", "only-in-v1", "only-in-v2", "v1\nv2\nv1\n"),
    ] {
        let out = local_run(&store, image, &data).output().unwrap();
        assert!(out.status.success(), "{image}: {}", both(&out));
        assert!(rootfs.join("etc").join(present).exists(), "{image}");
        assert!(!rootfs.join("etc").join(absent).exists(), "{image}");
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), cmds, "{image}");
    }
    let again = local_run(&store, "app:v1", &data).output().unwrap();
    assert!(
        both(&again).contains("Everything is up to date"),
        "{}",
        both(&again)
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "v1\nv2\nv1\n");

    let status = command(Path::new(SEALER), &store.root())
        .args([
            "status",
            "--local",
            "--data-root",
            data.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", both(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["hosts"][0]["image"], "app:v1", "{status}");
    // rootfs, render (the *.tmpl pass), the CMD.
    assert_eq!(status["hosts"][0]["steps_done"], 3, "{status}");
    assert!(status["changing"].is_null(), "{status}");

    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.root().join("clusters/my-cluster/record.json")).unwrap(),
    )
    .unwrap();
    let images: Vec<&str> = record["installs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, ["app:v1", "app:v2", "app:v1", "app:v1"]);
    assert!(record["installs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["ok"] == true && i["hosts"][0]["ip"] == "127.0.0.1"));
}

#[test]
fn every_hook_phase_runs_or_is_named_and_clusterfile_notes_are_printed_on_every_run() {
    let store = Sealer::new();
    store.build_from(
        "phases:v1",
        "FROM scratch\nCOPY a a\nCMD echo cmd >> \"$SEALER_ROOTFS/../order\"\n",
        &[("a", b"a\n")],
    );
    let data = store.path("data");
    let plugin = |name: &str, action: &str, script: &str| {
        format!(
            "---\napiVersion: sealer.io/v1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  type: SHELL\n  action: {action}\n  data: |\n    {script}\n"
        )
    };
    let file = store.path("Clusterfile");
    std::fs::write(
        &file,
        format!(
            "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: phases\nspec:\n  dataRoot: {}\n  containerRuntime: {{type: containerd}}\n  hosts:\n    - {{ips: [127.0.0.1], roles: [master]}}\n{}{}{}",
            data.display(),
            plugin("guest", "PreGuest", "echo pre-guest >> \"$SEALER_ROOTFS/../order\""),
            plugin("post", "post-install", "echo post-install >> \"$SEALER_ROOTFS/../order\""),
            plugin("later", "upgrade", "echo upgrade >> \"$SEALER_ROOTFS/../order\""),
        ),
    )
    .unwrap();
    let run = || {
        command(Path::new(SEALER), &store.root())
            .args(["run", "phases:v1", "-f", file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    for attempt in ["first", "second"] {
        let out = run();
        let text = both(&out);
        assert!(out.status.success(), "{attempt}: {text}");
        assert!(
            text.contains("note: ") && text.contains("spec.containerRuntime is ignored"),
            "{attempt}: {text}"
        );
        // An upgrade hook runs only when a host moves from another image to this one.
        assert!(!text.contains("hook later"), "{attempt}: {text}");
    }
    assert_eq!(
        std::fs::read_to_string(data.join("phases/order")).unwrap(),
        "pre-guest\ncmd\npost-install\n"
    );
}

#[test]
fn rollback_brings_back_the_previous_tree_and_journal_and_a_failed_upgrade_rolls_back_by_itself() {
    let store = Sealer::new();
    let cmd = "CMD echo $(cat \"$SEALER_ROOTFS/version\") >> \"$SEALER_ROOTFS/../cmd-runs\"";
    store.build_from(
        "up:v1",
        &format!("FROM scratch\nCOPY version version\n{cmd}\n"),
        &[("version", b"v1\n")],
    );
    store.build_from(
        "up:v2",
        &format!("FROM scratch\nCOPY version version\n{cmd}\n"),
        &[("version", b"v2\n")],
    );
    store.build_from(
        "up:v3",
        "FROM scratch\nCOPY version version\nCMD exit 3\n",
        &[("version", b"v3\n")],
    );
    let data = store.path("data");
    let version = || std::fs::read_to_string(data.join("my-cluster/rootfs/version")).unwrap();
    let runs = || std::fs::read_to_string(data.join("my-cluster/cmd-runs")).unwrap();
    let sealer = |args: &[&str]| {
        command(Path::new(SEALER), &store.root())
            .args(args)
            .output()
            .unwrap()
    };
    for image in ["up:v1", "up:v2"] {
        let out = local_run(&store, image, &data).output().unwrap();
        assert!(out.status.success(), "{image}: {}", both(&out));
    }
    assert_eq!(version(), "v2\n");

    let back = sealer(&["rollback"]);
    assert!(back.status.success(), "{}", both(&back));
    assert_eq!(version(), "v1\n");
    assert_eq!(runs(), "v1\nv2\n", "a rollback runs no CMD");
    // v1's journal came back with its tree: installing v1 now changes nothing.
    let again = local_run(&store, "up:v1", &data).output().unwrap();
    assert!(
        both(&again).contains("Everything is up to date"),
        "{}",
        both(&again)
    );
    // And forward again.
    let forward = sealer(&["rollback"]);
    assert!(forward.status.success(), "{}", both(&forward));
    assert_eq!(version(), "v2\n");

    // An upgrade whose CMD fails, with --rollback-on-failure: back on v2, non-zero exit.
    let failed = local_run(&store, "up:v3", &data)
        .args(["--rollback-on-failure", "--attempts", "1"])
        .output()
        .unwrap();
    let text = both(&failed);
    assert!(!failed.status.success(), "{text}");
    assert!(
        text.contains("rolled back: every host that switched"),
        "{text}"
    );
    assert_eq!(version(), "v2\n");
    let status = sealer(&[
        "status",
        "--local",
        "--data-root",
        data.to_str().unwrap(),
        "--json",
    ]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["hosts"][0]["image"], "up:v2", "{status}");

    // Nothing to roll back to on a fresh cluster.
    let fresh = Sealer::new();
    let none = command(Path::new(SEALER), &fresh.root())
        .arg("rollback")
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        both(&none).contains("no earlier image to roll back to"),
        "{}",
        both(&none)
    );
}

#[test]
fn an_image_with_upgrade_hooks_upgrades_a_host_that_held_another_image_instead_of_installing_it() {
    let store = Sealer::new();
    let log = "\"$SEALER_ROOTFS/../order\"";
    for version in ["v1", "v2"] {
        store.build_from(
            &format!("hooks:{version}"),
            &format!("FROM scratch\nCOPY version version\nCMD echo cmd $(cat version) >> {log}\n"),
            &[("version", version.as_bytes())],
        );
    }
    let data = store.path("data");
    let plugin = |name: &str, action: &str| {
        format!(
            "---\napiVersion: sealer.io/v1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  type: SHELL\n  action: {action}\n  data: |\n    echo {action} $(cat version) >> {log}\n"
        )
    };
    let file = store.path("Clusterfile");
    std::fs::write(
        &file,
        format!(
            "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: hooks\nspec:\n  dataRoot: {}\n  hosts:\n    - {{ips: [127.0.0.1], roles: [master]}}\n{}{}{}",
            data.display(),
            plugin("init", "pre-init-host"),
            plugin("each-host", "upgrade-host"),
            plugin("cluster", "upgrade"),
        ),
    )
    .unwrap();
    let order = || std::fs::read_to_string(data.join("hooks/order")).unwrap();
    let sealer = |args: &[&str]| {
        let out = command(Path::new(SEALER), &store.root())
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), both(&out))
    };
    let run = |image: &str| sealer(&["run", image, "-f", file.to_str().unwrap()]);

    let (ok, text) = run("hooks:v1");
    assert!(ok, "{text}");
    assert_eq!(
        order(),
        "pre-init-host v1\ncmd v1\n",
        "a first install is no upgrade"
    );

    // The dry run of v2 names the upgrade route: upgrade hooks, no install hooks or CMD.
    let (ok, dry) = sealer(&["run", "hooks:v2", "-f", file.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{dry}");
    assert!(dry.contains("run  upgrade-host hook each-host"), "{dry}");
    assert!(dry.contains("run  upgrade hook cluster"), "{dry}");
    assert!(!dry.contains("CMD"), "{dry}");
    assert!(!dry.contains("pre-init-host"), "{dry}");

    let (ok, text) = run("hooks:v2");
    assert!(ok, "{text}");
    assert!(text.contains("upgrade on 127.0.0.1"), "{text}");
    assert_eq!(
        order(),
        "pre-init-host v1\ncmd v1\nupgrade-host v2\nupgrade v2\n",
        "upgrade-host, then upgrade, in the new tree; no install hook or CMD again"
    );
    assert!(
        data.join("hooks/rootfs.prev").is_dir(),
        "the previous tree is kept"
    );
    let (ok, again) = run("hooks:v2");
    assert!(ok && again.contains("Everything is up to date"), "{again}");

    // Back to v1: its own journal returns, so it is up to date, not upgraded again.
    let (ok, text) = sealer(&["rollback", "--cluster-name", "hooks"]);
    assert!(ok, "{text}");
    let (ok, again) = run("hooks:v1");
    assert!(ok && again.contains("Everything is up to date"), "{again}");
    // And v2 again is an upgrade from v1 again.
    let (ok, text) = run("hooks:v2");
    assert!(ok, "{text}");
    assert!(
        order().ends_with("upgrade-host v2\nupgrade v2\nupgrade-host v2\nupgrade v2\n"),
        "{}",
        order()
    );
}

#[test]
fn an_application_image_installs_beside_the_base_image_and_status_and_delete_cover_both() {
    let store = Sealer::new();
    let order = "\"$SEALER_ROOTFS/../../../order\"";
    store.build_from(
        "base:v1",
        "FROM scratch\nCOPY a etc/a\nCMD echo base >> \"$SEALER_ROOTFS/../order\"\n",
        &[("a", b"a\n")],
    );
    for version in ["v1", "v2"] {
        let ctx = store.path(&format!("web-{version}"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("page"), format!("page {version}\n")).unwrap();
        std::fs::write(
            ctx.join("Kubefile"),
            format!("FROM scratch\nCOPY page page\nCMD echo app $(cat page) >> {order}\n"),
        )
        .unwrap();
        store.ok(&[
            "build",
            "--type",
            "app-installer",
            "-t",
            &format!("web:{version}"),
            ctx.to_str().unwrap(),
        ]);
    }
    let config = store.inspect("web:v1");
    assert_eq!(
        config["config"]["io.sealer.image"]["type"], "app-installer",
        "{config}"
    );
    let data = store.path("data");
    let cluster = data.join("my-cluster");
    let run = |image: &str| {
        let out = local_run(&store, image, &data).output().unwrap();
        (out.status.success(), both(&out))
    };

    // An application needs a running cluster.
    let (ok, text) = run("web:v1");
    assert!(!ok, "{text}");
    assert!(text.contains("install the cluster image first"), "{text}");
    assert!(!data.join("my-cluster/apps").exists());

    let (ok, text) = run("base:v1");
    assert!(ok, "{text}");
    let (ok, text) = run("web:v1");
    assert!(ok, "{text}");
    // Its own tree, beside the base image's, which is untouched.
    assert_eq!(
        std::fs::read_to_string(cluster.join("apps/web/rootfs/page")).unwrap(),
        "page v1\n"
    );
    assert!(cluster.join("rootfs/etc/a").is_file());
    assert!(!cluster.join("rootfs/page").exists());
    assert_eq!(
        std::fs::read_to_string(cluster.join("order")).unwrap(),
        "base\napp page v1\n"
    );
    // Its own journal: both reruns do nothing.
    for image in ["web:v1", "base:v1"] {
        let (ok, text) = run(image);
        assert!(
            ok && text.contains("Everything is up to date"),
            "{image}: {text}"
        );
    }
    let status = command(Path::new(SEALER), &store.root())
        .args(["status", "--local", "--data-root", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = both(&status);
    assert!(text.contains("base:v1"), "{text}");
    assert!(
        text.contains("web:v1") && text.contains("application (apps/web)"),
        "{text}"
    );
    let json = command(Path::new(SEALER), &store.root())
        .args([
            "status",
            "--local",
            "--data-root",
            data.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["hosts"][0]["image"], "base:v1", "{json}");
    assert_eq!(json["hosts"][0]["apps"][0]["image"], "web:v1", "{json}");

    // Another version of the application replaces its tree only.
    let (ok, text) = run("web:v2");
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(cluster.join("apps/web/rootfs/page")).unwrap(),
        "page v2\n"
    );
    assert!(cluster.join("rootfs/etc/a").is_file());

    // delete --all removes both.
    let deleted = command(Path::new(SEALER), &store.root())
        .args(["delete", "--all"])
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{}", both(&deleted));
    assert!(!data.exists(), "the data root is left");
}

#[test]
fn host_flags_that_contradict_a_clusterfile_or_local_are_refused_as_usage_errors() {
    let store = Sealer::new();
    for args in [
        &["run", "x:1", "-m", "10.0.0.2", "-f", "Clusterfile"][..],
        &["run", "x:1", "--local", "-n", "10.0.0.3"][..],
        &[
            "run",
            "x:1",
            "--Clusterfile",
            "Clusterfile",
            "-n",
            "10.0.0.3",
        ][..],
    ] {
        let out = command(Path::new(SEALER), &store.root())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", both(&out));
        assert!(
            both(&out).contains("cannot be used with"),
            "{args:?}: {}",
            both(&out)
        );
    }
    // status reads only: an env it would never pass anywhere is refused, not ignored.
    let out = command(Path::new(SEALER), &store.root())
        .args(["status", "--local", "-e", "A=B"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(both(&out).contains("-e/--env"), "{}", both(&out));
}

#[test]
fn the_packed_file_has_the_same_status_and_delete_verbs_as_sealer() {
    let store = Sealer::new();
    store.build_from(
        "verbs:v1",
        "FROM scratch\nCOPY a etc/a\nCMD true\n",
        &[("a", b"a\n")],
    );
    let run = store.path("verbs.run");
    store.ok(&["pack", "verbs:v1", "-o", run.to_str().unwrap()]);
    let data = store.path("data");
    let data_arg = data.to_str().unwrap();
    store.ok_in(
        &run,
        &["install", "--local", "--data-root", data_arg],
        "store",
    );
    assert!(data.join("my-cluster/rootfs/etc/a").is_file());

    let status = store.ok_in(
        &run,
        &["status", "--local", "--data-root", data_arg],
        "store",
    );
    assert!(status.contains("verbs:v1"), "{status}");
    assert!(status.contains("127.0.0.1"), "{status}");

    // The package changes hosts only with the image it carries: --image is a usage error on
    // each verb, and status refuses -e; nothing is changed.
    for args in [
        &["join", "-n", "127.0.0.2", "--image", "other:v1"][..],
        &["delete", "--all", "--image", "other:v1"][..],
        &["rollback", "--image", "other:v1"][..],
        &["status", "--local", "-e", "A=B"][..],
    ] {
        let out = store.run_in(&run, args, "store");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", both(&out));
        assert!(
            both(&out).contains("--image other:v1") || both(&out).contains("-e/--env"),
            "{args:?}: {}",
            both(&out)
        );
    }
    assert!(data.join("my-cluster/rootfs/etc/a").is_file());

    // delete --all from the package, with the cluster this machine recorded: nothing is left.
    let deleted = store.ok_in(&run, &["delete", "--all"], "store");
    assert!(!deleted.contains("FAILED"), "{deleted}");
    assert!(
        !data.exists(),
        "the data root is left: {:?}",
        std::fs::read_dir(&data).map(|d| d.count())
    );
}
