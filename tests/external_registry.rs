//! End to end, an external registry (issue 10, item 6): a CloudImage carrying two container
//! images (made offline, pushed with skopeo to a source docker-registry on 127.0.0.1, collected
//! by `sealer build`) is installed with `sealer run -f Clusterfile` whose
//! `spec.registry.externalRegistry` names Debian's docker-registry with htpasswd (bcrypt) auth
//! on the testbed's bridge address, over plain HTTP (`insecure: true`), under a path prefix.
//! Wrong credentials stop the install with one error naming the registry, nothing on any host
//! and nothing in the registry. With the right ones, the installer pushes the images there
//! (the source digests kept), no host gets the images layer or runs a registry, every host's
//! `hosts.toml` points the source registry at `EXTERNAL/v2/PREFIX/REGISTRY` with
//! `override_path`, and containerd inside the node pulls through it with the source digest. The
//! dry run says exactly which blobs the registry holds (asked with `HEAD`): none before the
//! install, all but the added image's two before the upgrade. A
//! rerun sends nothing, to the hosts or the registry; an image whose list gained one image
//! sends only that image's blobs; `sealer delete --all` removes the `hosts.toml`.
//!
//! Needs root, the testbed tools, skopeo, docker-registry, apache2-utils and containerd
//! (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::fmt::Write as _;
use std::time::Instant;

use support::containerd::{self, HostContainerd};
use support::oci;
use support::registry::{Auth, TestRegistry};
use support::store::{both, Sealer};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-ext";
const CLUSTER: &str = "ext";
const CERTS: &str = "/etc/containerd/certs.d";
const USER: &str = "pusher";
const PASSWORD: &str = "right-password";
const PREFIX: &str = "team/mirror";

/// The Clusterfile: one master, one node, the external registry with `password`.
fn clusterfile(
    bed: &Testbed,
    master: &TestHost,
    node: &TestHost,
    ext: &TestRegistry,
    password: &str,
) -> String {
    let mut text = format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: {CLUSTER}\nspec:\n  dataRoot: {DATA_ROOT}\n  ssh: {{user: root, pk: {}}}\n  registry:\n    externalRegistry:\n      domain: {}\n      port: {}\n      prefix: {PREFIX}\n      username: {USER}\n      password: {password}\n      insecure: true\n  hosts:\n",
        bed.key_path().display(),
        ext.ip,
        ext.port
    );
    for (host, role) in [(master, "master"), (node, "node")] {
        writeln!(text, "    - ips: [{}]\n      roles: [{role}]", host.ip).unwrap();
    }
    text
}

/// The manifest digest the external registry serves for `repository:tag`, or skopeo's error.
fn served_digest(ext: &TestRegistry, repository: &str, tag: &str) -> Result<String, String> {
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("docker://{}/{repository}:{tag}", ext.host()),
        ])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(support::store::sha256(&out.stdout))
    } else {
        Err(both(&out))
    }
}

/// The line of the run's output saying what the push sent.
fn push_line(output: &str) -> String {
    output
        .lines()
        .find(|l| l.contains("blob(s) sent"))
        .unwrap_or_else(|| panic!("no line says what was pushed:\n{output}"))
        .to_string()
}

#[test]
fn an_external_registry_gets_the_images_and_hosts_pull_from_it_through_hosts_toml() {
    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    let hosts = bed.hosts();
    let (master, node) = (&hosts[0], &hosts[1]);

    step("images pushed to the source registry, CloudImages built");
    let store = Sealer::new();
    let source = TestRegistry::start(None);
    let src = source.host();
    let foo = oci::push(store.dir(), &src, "foo", "1", 300_000, 11);
    let bar = oci::push(store.dir(), &src, "bar", "2", 200_000, 12);
    let baz = oci::push(store.dir(), &src, "baz", "3", 250_000, 13);
    for (tag, images) in [
        ("ext:v1", vec![&foo, &bar]),
        ("ext:v2", vec![&foo, &bar, &baz]),
    ] {
        let list: String = images
            .iter()
            .map(|i| format!("{}\n", i.reference))
            .collect();
        let ctx = store.context(
            tag,
            &[
                ("Kubefile", b"FROM scratch\nCOPY manifests manifests\n"),
                ("manifests/imageList", list.as_bytes()),
            ],
        );
        let built = store
            .command()
            .args(["build", "-t", tag, "--insecure"])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "sealer build {tag}:\n{}",
            both(&built)
        );
    }
    for host in [master, node] {
        containerd::write_config(&bed, host, CERTS);
    }
    let ext = TestRegistry::launch_at(
        Auth::Htpasswd(USER.into(), PASSWORD.into()),
        None,
        &bed.gateway_ip().to_string(),
    );
    let address = ext.host();
    // Where the source registry's images live in the external one.
    let path = format!("{PREFIX}/{}", src.replace(':', "_"));
    let work = tempfile::tempdir().unwrap();
    let wrong = work.path().join("Clusterfile.wrong");
    std::fs::write(
        &wrong,
        clusterfile(&bed, master, node, &ext, "wrong-password"),
    )
    .unwrap();
    let file = work.path().join("Clusterfile");
    std::fs::write(&file, clusterfile(&bed, master, node, &ext, PASSWORD)).unwrap();
    let file = file.to_str().unwrap();

    step("wrong credentials: one error naming the registry, nothing installed");
    let refused = store.run_on(&bed, "ext:v1", &["-f", wrong.to_str().unwrap()]);
    eprintln!("{}", refused.text);
    refused.assert_failed("install with a wrong registry password");
    assert!(
        refused
            .text
            .contains(&format!("external registry {address}"))
            && refused
                .text
                .contains("rejected the user name or password for pusher")
            && refused.text.contains("nothing was pushed or installed"),
        "the error does not name the registry and the credentials:\n{}",
        refused.text
    );
    assert_eq!(refused.text.matches("panicked").count(), 0);
    for host in [master, node] {
        assert!(
            !bed.has_path(host, DATA_ROOT),
            "{host}: the refused install left {DATA_ROOT}"
        );
        assert!(!bed.has_path(host, &format!("{CERTS}/{src}")), "{host}");
    }
    assert!(
        served_digest(&ext, &format!("{path}/library/foo"), "1").is_err(),
        "the registry received an image from the refused install"
    );

    step("dry run: says the push would happen and what it holds, pushes nothing");
    let dry = store.run_on(&bed, "ext:v1", &["-f", file, "--dry-run"]);
    eprintln!("{}", dry.text);
    dry.assert_ok("dry run with an external registry");
    // The registry is asked which blobs it holds: none yet.
    let said = format!(
        "push 2 container image(s) to the external registry {address} from this machine: 4 blob(s), "
    );
    assert_eq!(dry.text.matches(&said).count(), 1, "{}", dry.text);
    assert!(
        dry.text
            .contains(" to send; 0 blob(s), 0 B it holds already, 0 to mount"),
        "{}",
        dry.text
    );
    assert!(
        served_digest(&ext, &format!("{path}/library/foo"), "1").is_err(),
        "the dry run pushed an image"
    );
    for host in [master, node] {
        assert!(
            !bed.has_path(host, DATA_ROOT),
            "{host}: the dry run left {DATA_ROOT}"
        );
    }

    step("install: the installer pushes, the hosts get hosts.toml and no images layer");
    let first = store.run_on(&bed, "ext:v1", &["-f", file]);
    eprintln!("{}", first.text);
    first.assert_ok("install with an external registry");
    let pushed = push_line(&first.text);
    assert!(pushed.contains("4 blob(s) sent"), "{pushed}");
    for image in [&foo, &bar] {
        let name = image.reference.rsplit_once('/').unwrap().1;
        let (repo, tag) = name.split_once(':').unwrap();
        assert_eq!(
            served_digest(&ext, &format!("{path}/library/{repo}"), tag),
            Ok(image.manifest.clone()),
            "{} in the external registry",
            image.reference
        );
    }
    let rootfs = format!("{DATA_ROOT}/{CLUSTER}/rootfs");
    for host in [master, node] {
        assert!(bed.has_path(host, &format!("{rootfs}/manifests/imageList")));
        assert!(
            !bed.has_path(host, &format!("{rootfs}/images")),
            "{host} received the images layer"
        );
        let procs = bed.stdout_of(host, "ps -e -o args=");
        assert!(
            !procs.contains("registry serve") && !procs.contains("registry supervise"),
            "{host} runs a registry:\n{procs}"
        );
        let written = bed.stdout_of(host, &format!("cat '{CERTS}/{src}/hosts.toml'"));
        let want = format!("[host.\"http://{address}/v2/{path}\"]");
        assert!(
            written.contains(&want) && written.contains("override_path = true"),
            "{host}: hosts.toml does not send {src} to {want}:\n{written}"
        );
    }

    step("containerd on the node pulls through hosts.toml");
    let ctrd = HostContainerd::start(&bed, node);
    let pulled = ctrd.ctr(
        "sealer-test",
        &[
            "images",
            "pull",
            "--hosts-dir",
            CERTS,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            &foo.reference,
        ],
    );
    assert!(
        pulled.status.success(),
        "ctr pull of {}: {}",
        foo.reference,
        both(&pulled)
    );
    assert_eq!(
        ctrd.image_digest("sealer-test", &foo.reference).as_deref(),
        Some(foo.manifest.as_str()),
        "the pulled digest is the source's"
    );
    drop(ctrd);

    step("a rerun sends nothing");
    let second = store.run_on(&bed, "ext:v1", &["-f", file]);
    second.assert_ok("second install");
    let pushed = push_line(&second.text);
    assert!(pushed.contains("0 blob(s) sent (0 bytes)"), "{pushed}");
    for host in [master, node] {
        assert!(
            second.row(host).contains("up to date") && !second.row(host).contains("sent"),
            "the second run was not a no-op:\n{}",
            second.text
        );
    }

    step("dry run of an image whose list gained one image: the registry holds 4 of its 6 blobs");
    let dry = store.run_on(&bed, "ext:v2", &["-f", file, "--dry-run"]);
    dry.assert_ok("dry run of ext:v2");
    let said = format!(
        "push 3 container image(s) to the external registry {address} from this machine: 2 blob(s), "
    );
    assert!(
        dry.text.contains(&said) && dry.text.contains(" to send; 4 blob(s), "),
        "the dry run does not say exactly which blobs the registry holds:\n{}",
        dry.text
    );

    step("an image whose list gained one image: only that image's blobs are pushed");
    let upgrade = store.run_on(&bed, "ext:v2", &["-f", file]);
    eprintln!("{}", upgrade.text);
    upgrade.assert_ok("install of ext:v2");
    let pushed = push_line(&upgrade.text);
    assert!(pushed.contains("2 blob(s) sent"), "{pushed}");
    assert_eq!(
        served_digest(&ext, &format!("{path}/library/baz"), "3"),
        Ok(baz.manifest.clone())
    );

    step("delete --all removes the hosts.toml");
    let mut c = store.command();
    c.args([
        "delete",
        "--all",
        "--cluster-name",
        CLUSTER,
        "--known-hosts",
    ])
    .arg(bed.known_hosts_path());
    let deleted = c.output().unwrap();
    assert!(
        deleted.status.success(),
        "delete --all:\n{}",
        both(&deleted)
    );
    for host in [master, node] {
        assert!(!bed.has_path(host, &format!("{CERTS}/{src}")), "{host}");
        assert!(!bed.has_path(host, DATA_ROOT), "{host}");
    }
    step("done");
}
