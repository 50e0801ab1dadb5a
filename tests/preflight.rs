//! Preflight on real OpenSSH hosts of one testbed, through the real binaries: every check made
//! to fail on purpose inside a host (a port bound there, sudo wanting a password, a full disk
//! and no inodes on a tiny tmpfs as the data root, a declared command missing, an OS the image
//! does not support). Each time `sealer run` refuses before sending a byte (nothing under the
//! data root afterwards, no agent uploaded), naming the host and the check; `sealer check` and
//! `./app.run check` report the same in a table and as JSON and exit non-zero; the dry run lists
//! every check; `--ignore-preflight` lets a chosen check through with a warning. The labels
//! the checks read are refused at build when malformed, with FILE:LINE.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::noise;
use support::store::{both, text, Sealer};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-preflight";

/// A port no testbed host listens on until the test binds it.
const PORT: u16 = 7101;

/// Whether `path` holds anything on `host` (it exists and, for a directory, is not empty).
fn holds_anything(bed: &Testbed, host: &TestHost, path: &str) -> bool {
    !bed.stdout_of(host, &format!("[ -e '{path}' ] && ls -A '{path}' || true"))
        .trim()
        .is_empty()
}

/// The agent is uploaded under the data root (`.agent/`); nothing there means no byte was sent.
fn nothing_sent(bed: &Testbed, host: &TestHost, root: &str) {
    assert!(
        !holds_anything(bed, host, root),
        "{host}: {root} holds something after a refused install:\n{}",
        bed.stdout_of(host, &format!("ls -laR '{root}' 2>&1 | head -40"))
    );
}

/// `sealer ARGS... --known-hosts BED`.
fn sealer(store: &Sealer, bed: &Testbed, args: &[&str]) -> Output {
    store
        .command()
        .args(args)
        .arg("--known-hosts")
        .arg(bed.known_hosts_path())
        .output()
        .unwrap()
}

/// The lines of `text` about `host` (starting with its address) that mention `check`.
fn rows<'t>(text: &'t str, host: &TestHost, check: &str) -> Vec<&'t str> {
    let ip = host.ip.to_string();
    text.lines()
        .filter(|l| l.split_whitespace().next() == Some(ip.as_str()))
        .filter(|l| l.split_whitespace().nth(1) == Some(check))
        .collect()
}

/// The result of `check` on the host `ip` in a `check --json` report.
fn json_state(report: &serde_json::Value, host: &TestHost, check: &str) -> String {
    let ip = host.ip.to_string();
    let host = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["ip"] == ip.as_str())
        .unwrap_or_else(|| panic!("no host {ip} in {report}"));
    host["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no check {check} for {ip} in {report}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn each_failing_preflight_check_refuses_the_install_before_a_byte_is_sent_naming_host_and_check() {
    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let hosts = bed.hosts();
    let (h0, h1) = (&hosts[0], &hosts[1]);
    let key = bed.key_path().to_str().unwrap().to_string();
    let both_hosts = format!("{},{}", h0.ip, h1.ip);
    let store = Sealer::new();

    // 3 MiB that do not compress: the image needs about 6 MiB on a host.
    store.build_from(
        "pf-plain:v1",
        "FROM scratch\nCOPY blob /opt/blob\n",
        &[("blob", &noise::bytes(3 << 20, 17))],
    );
    store.build_from(
        "pf-ports:v1",
        &format!("FROM pf-plain:v1\nLABEL sealer.image.ports=\"{PORT}\"\n"),
        &[],
    );
    store.build_from(
        "pf-cmd:v1",
        "FROM pf-plain:v1\nLABEL sealer.image.commands=\"etcdctl\"\n",
        &[],
    );
    store.build_from(
        "pf-os:v1",
        "FROM pf-plain:v1\nLABEL sealer.image.os=\"rhel>=8, rocky>=8\"\n",
        &[],
    );

    // --- A port the image declares, bound inside h0 (a second sshd listening there). ---
    bed.stdout_of(
        h0,
        &format!("/usr/sbin/sshd -p {PORT} -o PidFile=/run/preflight-sshd.pid"),
    );
    let listening = bed.stdout_of(h0, "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null");
    assert!(
        listening.contains(&format!(":{PORT:04X} ")),
        "nothing listens on {PORT} in {h0}:\n{listening}"
    );

    // sealer check: a table naming host, check and what to do; non-zero exit.
    let check = sealer(
        &store,
        &bed,
        &[
            "check",
            "pf-ports:v1",
            "-m",
            &both_hosts,
            "--pk",
            &key,
            "--data-root",
            DATA_ROOT,
        ],
    );
    let out = both(&check);
    assert!(!check.status.success(), "check must fail:\n{out}");
    let failed = rows(&out, h0, "ports");
    assert!(
        failed.len() == 1
            && failed[0].contains("FAILED")
            && failed[0].contains(&format!("TCP port {PORT}")),
        "{out}"
    );
    assert!(out.contains("stop what listens there"), "{out}");
    assert!(rows(&out, h1, "ports")[0].contains("ok"), "{out}");
    for check_name in [
        "sudo", "os", "arch", "disk", "inodes", "tmp", "clock", "hostname", "commands",
    ] {
        for host in [h0, h1] {
            let row = rows(&out, host, check_name);
            assert!(
                row.len() == 1 && row[0].contains(" ok "),
                "{check_name} on {host}:\n{out}"
            );
        }
    }
    assert!(
        out.contains(&format!("preflight failed: {} (ports)", h0.ip)),
        "{out}"
    );
    nothing_sent(&bed, h0, DATA_ROOT);
    nothing_sent(&bed, h1, DATA_ROOT);

    // … and as JSON.
    let json = sealer(
        &store,
        &bed,
        &[
            "check",
            "pf-ports:v1",
            "-m",
            &both_hosts,
            "--pk",
            &key,
            "--data-root",
            DATA_ROOT,
            "--json",
        ],
    );
    assert!(!json.status.success(), "{}", both(&json));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(json_state(&report, h0, "ports"), "failed");
    assert_eq!(json_state(&report, h1, "ports"), "passed");
    assert!(
        report["hosts"][0]["system"]
            .as_str()
            .is_some_and(|s| s.contains("kernel")),
        "{report}"
    );

    // ./app.run check: the same checks from the package.
    let app = store.path("ports.run");
    store.ok(&["pack", "pf-ports:v1", "-o", app.to_str().unwrap()]);
    let known_hosts = bed.known_hosts_path().to_str().unwrap().to_string();
    let packed = store.run_in(
        &app,
        &[
            "check",
            "-m",
            &h0.ip.to_string(),
            "--pk",
            &key,
            "--known-hosts",
            &known_hosts,
            "--data-root",
            DATA_ROOT,
        ],
        "store",
    );
    let out = both(&packed);
    assert!(!packed.status.success(), "{out}");
    assert!(rows(&out, h0, "ports")[0].contains("FAILED"), "{out}");

    // The dry run lists every check's result per host.
    let dry = store.run_on(
        &bed,
        "pf-ports:v1",
        &[
            "-m",
            &both_hosts,
            "--pk",
            &key,
            "--data-root",
            DATA_ROOT,
            "--dry-run",
        ],
    );
    dry.assert_ok("dry run");
    assert!(
        dry.text
            .contains(&format!("preflight would refuse: TCP port {PORT}"))
            && dry.text.contains("(check: ports)"),
        "{}",
        dry.text
    );
    assert_eq!(
        dry.text.matches("preflight arch      ok: x86_64").count(),
        2,
        "{}",
        dry.text
    );

    // The install refuses everywhere: h0 for its port, h1 because h0 was refused.
    let refused = store.run_on(
        &bed,
        "pf-ports:v1",
        &["-m", &both_hosts, "--pk", &key, "--data-root", DATA_ROOT],
    );
    refused.assert_failed("install with a declared port in use");
    let row = refused.row(h0);
    assert!(
        row.contains("FAILED: preflight: TCP port 7101") && row.contains("(check: ports)"),
        "{row}"
    );
    assert!(
        refused
            .row(h1)
            .contains(&format!("not started: preflight refused {}", h0.ip)),
        "{}",
        refused.text
    );
    nothing_sent(&bed, h0, DATA_ROOT);
    nothing_sent(&bed, h1, DATA_ROOT);

    // --ignore-preflight ports: the operator knows better; a warning, then the install.
    let ignored = store
        .run_command(
            &bed,
            "pf-ports:v1",
            &[
                "-m",
                &both_hosts,
                "--pk",
                &key,
                "--data-root",
                DATA_ROOT,
                "--ignore-preflight",
                "ports",
                "--json",
            ],
        )
        .output()
        .unwrap();
    let out = both(&ignored);
    assert!(ignored.status.success(), "{out}");
    assert!(
        out.contains("warning: preflight check ports failed and is ignored (--ignore-preflight)"),
        "{out}"
    );
    let report: serde_json::Value = serde_json::from_slice(&ignored.stdout).unwrap();
    for host in report["hosts"].as_array().unwrap() {
        assert_eq!(host["outcome"], "installed", "{report}");
        assert!(
            host["system"].as_str().unwrap().contains("kernel"),
            "{report}"
        );
    }
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.root().join("clusters/my-cluster/record.json")).unwrap(),
    )
    .unwrap();
    let recorded = &record["installs"][0]["hosts"][0]["system"];
    assert!(recorded.as_str().unwrap().contains("kernel"), "{record}");
    for host in [h0, h1] {
        assert!(holds_anything(
            &bed,
            host,
            &format!("{DATA_ROOT}/my-cluster/rootfs/opt")
        ));
    }
    // Once a host runs the cluster, its own services hold the ports: a rerun is not refused.
    let rerun = store.run_on(
        &bed,
        "pf-ports:v1",
        &["-m", &both_hosts, "--pk", &key, "--data-root", DATA_ROOT],
    );
    rerun.assert_ok("rerun over a bound port of a host that runs the cluster");
    bed.stdout_of(h0, "kill $(cat /run/preflight-sshd.pid)");
    for host in [h0, h1] {
        bed.stdout_of(host, &format!("rm -rf {DATA_ROOT}"));
    }

    // --- sudo that wants a password, with no tty to ask on: refused at once, not hung. ---
    bed.stdout_of(h0,
        "cp /etc/sudoers.d/deploy /run/deploy.sudoers && printf 'deploy ALL=(ALL) ALL\\n' > /etc/sudoers.d/deploy",
    );
    let started = Instant::now();
    let sudo = store.run_on(
        &bed,
        "pf-plain:v1",
        &[
            "-m",
            &h0.ip.to_string(),
            "-u",
            bed.deploy_user(),
            "--pk",
            &key,
            "--data-root",
            DATA_ROOT,
        ],
    );
    let took = started.elapsed();
    let check = sealer(
        &store,
        &bed,
        &[
            "check",
            "pf-plain:v1",
            "-m",
            &h0.ip.to_string(),
            "-u",
            bed.deploy_user(),
            "--pk",
            &key,
            "--data-root",
            DATA_ROOT,
        ],
    );
    bed.stdout_of(h0, "cp /run/deploy.sudoers /etc/sudoers.d/deploy");
    sudo.assert_failed("install as a user whose sudo wants a password");
    let row = sudo.row(h0);
    assert!(
        row.contains("preflight: deploy cannot run commands as root without a password or a tty")
            && row.contains("NOPASSWD")
            && row.contains("(check: sudo)"),
        "{row}"
    );
    assert!(took < Duration::from_secs(60), "sudo hung for {took:?}");
    let out = both(&check);
    assert!(!check.status.success(), "{out}");
    assert!(rows(&out, h0, "sudo")[0].contains("FAILED"), "{out}");
    nothing_sent(&bed, h0, DATA_ROOT);

    // --- A full disk, then no inodes: tiny tmpfs mounts inside h0 as the data root. ---
    bed.stdout_of(h0,
        "mkdir -p /mnt/pf-full /mnt/pf-inodes && mount -t tmpfs -o size=1m tmpfs /mnt/pf-full && mount -t tmpfs -o size=64m,nr_inodes=16 tmpfs /mnt/pf-inodes",
    );
    let full = store.run_on(
        &bed,
        "pf-plain:v1",
        &[
            "-m",
            &h0.ip.to_string(),
            "--pk",
            &key,
            "--data-root",
            "/mnt/pf-full/data",
        ],
    );
    full.assert_failed("install onto a full disk");
    let row = full.row(h0);
    assert!(
        row.contains("preflight: /mnt/pf-full has") && row.contains("(check: disk)"),
        "{row}"
    );
    nothing_sent(&bed, h0, "/mnt/pf-full");
    let inodes = store.run_on(
        &bed,
        "pf-plain:v1",
        &[
            "-m",
            &h0.ip.to_string(),
            "--pk",
            &key,
            "--data-root",
            "/mnt/pf-inodes/data",
        ],
    );
    inodes.assert_failed("install onto a filesystem without inodes");
    let row = inodes.row(h0);
    assert!(
        row.contains("free inodes")
            && row.contains("(check: inodes)")
            && !row.contains("check: disk"),
        "{row}"
    );
    nothing_sent(&bed, h0, "/mnt/pf-inodes");
    bed.stdout_of(h0, "umount /mnt/pf-full /mnt/pf-inodes");

    // --- Inodes counted from the bill of materials: 3000 small files (about 3 MiB of tar, which
    // one inode per 16 KiB would put at 1024) onto a tmpfs with 2500 inodes: refused in
    // preflight, not half unpacked. ---
    let names: Vec<String> = (0..3000)
        .map(|i| format!("many/d{}/f{i}", i % 30))
        .collect();
    let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    files.push(("Kubefile", b"FROM scratch\nCOPY many many\n"));
    let ctx = store.context("pf-many", &files);
    let built = store
        .command()
        .args(["build", "-t", "pf-many:v1"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", both(&built));
    bed.stdout_of(
        h0,
        "mkdir -p /mnt/pf-few && mount -t tmpfs -o size=64m,nr_inodes=2500 tmpfs /mnt/pf-few",
    );
    let few = store.run_on(
        &bed,
        "pf-many:v1",
        &[
            "-m",
            &h0.ip.to_string(),
            "--pk",
            &key,
            "--data-root",
            "/mnt/pf-few/data",
        ],
    );
    nothing_sent(&bed, h0, "/mnt/pf-few");
    bed.stdout_of(h0, "umount /mnt/pf-few");
    few.assert_failed("install of 3000 files onto a filesystem with 2500 inodes");
    let row = few.row(h0);
    assert!(
        row.contains("(check: inodes)")
            && row.contains("3000 files and 31 directories in its bill of materials"),
        "{row}"
    );

    // --- A command the image declares that the host lacks. ---
    let lacks = bed.exec(h0, "command -v etcdctl").unwrap();
    assert!(
        !lacks.status.success(),
        "{h0} has etcdctl: the test needs a host without it"
    );
    let missing = store.run_on(
        &bed,
        "pf-cmd:v1",
        &[
            "-m",
            &h0.ip.to_string(),
            "--pk",
            &key,
            "--data-root",
            DATA_ROOT,
        ],
    );
    missing.assert_failed("install missing a declared command");
    let row = missing.row(h0);
    assert!(
        row.contains("preflight: missing etcdctl") && row.contains("(check: commands)"),
        "{row}"
    );
    nothing_sent(&bed, h0, DATA_ROOT);

    // --- An OS the image does not support. ---
    let os = store.run_on(
        &bed,
        "pf-os:v1",
        &[
            "-m",
            &h0.ip.to_string(),
            "--pk",
            &key,
            "--data-root",
            DATA_ROOT,
        ],
    );
    os.assert_failed("install onto an unsupported OS");
    let row = os.row(h0);
    assert!(
        row.contains("preflight: the host runs debian")
            && row.contains("the image supports rhel>=8, rocky>=8")
            && row.contains("(check: os)"),
        "{row}"
    );
    nothing_sent(&bed, h0, DATA_ROOT);

    // A check name --ignore-preflight does not know is a usage error, and sudo cannot be ignored.
    for (name, said) in [
        ("nosuch", "is not a preflight check"),
        ("sudo", "sudo cannot be ignored"),
    ] {
        let out = store.run(&[
            "run",
            "pf-plain:v1",
            "-m",
            "10.0.0.1",
            "--ignore-preflight",
            name,
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", both(&out));
        assert!(both(&out).contains(said), "{}", both(&out));
    }
}

#[test]
fn check_on_this_machine_fails_on_a_missing_declared_command_and_ignore_preflight_lets_it_through()
{
    let store = Sealer::new();
    store.build_from(
        "pf-local:v1",
        "FROM scratch\nCOPY blob /opt/blob\nLABEL sealer.image.commands=\"sealer-preflight-no-such-command\"\n",
        &[("blob", b"local")],
    );
    let data = store.path("data");
    let data = data.to_str().unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "pf-local:v1", "--local", "--data-root", data];
        args.extend_from_slice(extra);
        store.run(&args)
    };
    let failed = check(&[]);
    let out = both(&failed);
    assert_eq!(failed.status.code(), Some(1), "{out}");
    let row = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("commands"))
        .unwrap_or_else(|| panic!("no commands row:\n{out}"));
    assert!(
        row.contains("FAILED") && row.contains("missing sealer-preflight-no-such-command"),
        "{out}"
    );
    assert!(out.contains("install them on the host"), "{out}");
    assert!(
        out.contains("Preflight fails on 1 of 1 host(s): an install would refuse to start."),
        "{out}"
    );

    let ignored = check(&["--ignore-preflight", "commands", "--json"]);
    assert!(ignored.status.success(), "{}", both(&ignored));
    let report: serde_json::Value = serde_json::from_slice(&ignored.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let checks = report["hosts"][0]["checks"].as_array().unwrap();
    let state = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))["state"]
            .clone()
    };
    assert_eq!(state("commands"), "ignored");
    assert_eq!(state("tmp"), "passed");
    assert_eq!(state("arch"), "passed");
    assert!(!std::path::Path::new(data).exists(), "check created {data}");
}

/// The `sealer.image.*` labels preflight reads are checked when the image is built: a malformed
/// value (or a misspelt name, which would do nothing) is refused at its LABEL line with
/// FILE:LINE, a bad `--label` by the flag, and nothing is stored. Needs no testbed.
#[test]
fn a_malformed_host_requirement_label_is_refused_at_build_with_file_and_line() {
    let store = Sealer::new();
    for (line, says) in [
        (
            "LABEL sealer.image.ports=\"2379,etcd\"",
            "\"etcd\" is not a TCP port",
        ),
        (
            "LABEL sealer.image.os=\"Debian>=11\"",
            "\"Debian\" is not an os-release ID",
        ),
        ("LABEL sealer.image.kernel=latest", "not a kernel version"),
        (
            "LABEL sealer.image.commands=\"bash;reboot\"",
            "\"bash;reboot\" is not a command name",
        ),
        (
            "LABEL sealer.image.port=2379",
            "no sealer.image label of that name is read",
        ),
    ] {
        let ctx = store.context(
            "labels",
            &[
                ("x", b"x"),
                (
                    "Kubefile",
                    format!("FROM scratch\nCOPY x x\n{line}\nCMD true\n").as_bytes(),
                ),
            ],
        );
        let out = store.run(&["build", "-t", "labelled:v1", ctx.to_str().unwrap()]);
        let said = both(&out);
        assert!(!out.status.success(), "{line}: {said}");
        assert!(
            said.contains("Kubefile:3: LABEL sealer.image.") && said.contains(says),
            "{line}: {said}"
        );
        let images = text(&store.run(&["images", "-q"]).stdout);
        assert!(images.trim().is_empty(), "{line}: stored {images}");
    }
    let ctx = store.context(
        "flag",
        &[("x", b"x"), ("Kubefile", b"FROM scratch\nCOPY x x\n")],
    );
    let out = store.run(&[
        "build",
        "-t",
        "labelled:v1",
        "--label",
        "sealer.image.ports=0",
        ctx.to_str().unwrap(),
    ]);
    let said = both(&out);
    assert!(
        !out.status.success()
            && said.contains("--label LABEL sealer.image.ports=\"0\": \"0\" is not a TCP port"),
        "{said}"
    );
    assert!(text(&store.run(&["images", "-q"]).stdout).trim().is_empty());
    // Well-formed ones build.
    store.build_from(
        "labelled:v1",
        "FROM scratch\nLABEL sealer.image.os=\"debian>=11, ubuntu\" sealer.image.kernel=5.4 sealer.image.ports=\"2379 2380\" sealer.image.commands=bash,systemctl\nCOPY x x\n",
        &[("x", b"x")],
    );
}
