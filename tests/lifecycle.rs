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
    assert_eq!(status["hosts"][0]["steps_done"], 2, "{status}");
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
            plugin("later", "upgrade", "echo never"),
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
        assert!(
            text.contains("note: hook later (upgrade) is not run"),
            "{attempt}: {text}"
        );
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

    // delete --all from the package, with the cluster this machine recorded: nothing is left.
    let deleted = store.ok_in(&run, &["delete", "--all"], "store");
    assert!(!deleted.contains("FAILED"), "{deleted}");
    assert!(
        !data.exists(),
        "the data root is left: {:?}",
        std::fs::read_dir(&data).map(|d| d.count())
    );
}
