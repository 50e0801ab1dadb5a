//! End to end, the install side of container images (issue 10): a CloudImage carrying three
//! container images (made offline by the test, pushed with skopeo to two Debian docker-registry
//! instances, one named with its port `127.0.0.1:PORT` and one without, `127.0.0.2`, collected by
//! `sealer build`) is installed with `sealer run -f Clusterfile` onto 2 masters and a node of a
//! testbed. A node whose containerd has no `config_path` is refused. The masters serve the
//! images; Debian's containerd running inside the node pulls them through the `hosts.toml` the
//! install wrote, through the CRI `PullImage` call and `ctr`, with the source digests, failing
//! over to the second master when the first one's registry is killed; an image not in the
//! package is not found; skopeo copies from a master keeping every digest; a rerun sends
//! nothing, a rerun after the registry was killed starts it again, and `sealer delete --all`
//! leaves no registry, no `hosts.toml` and no data root. Then `ha: false` with another port:
//! master0 alone holds and serves the images.
//!
//! Needs root, the testbed tools, skopeo, docker-registry, containerd and python3-grpcio
//! (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::containerd::{self, HostContainerd, CONFIG};
use support::oci::{self, TestImage};
use support::registry::TestRegistry;
use support::store::{both, sha256, tool, Run, Sealer};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-e2e";
const CLUSTER: &str = "apps";
/// The `config_path` every host's containerd config names.
const CERTS: &str = "/etc/containerd/certs.d";
/// The registry port when the Clusterfile names none (sealer's default).
const PORT: u16 = 5000;

/// The Clusterfile: `masters` then `nodes`, the testbed's key; `registry` is the
/// `spec.registry` mapping's lines (indented two spaces) or empty for the defaults.
fn clusterfile(
    bed: &Testbed,
    masters: &[&TestHost],
    nodes: &[&TestHost],
    registry: &str,
) -> String {
    let mut text = format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: {CLUSTER}\nspec:\n  dataRoot: {DATA_ROOT}\n  ssh: {{user: root, pk: {}}}\n{registry}  hosts:\n",
        bed.key_path().display()
    );
    for (hosts, role) in [(masters, "master"), (nodes, "node")] {
        for host in hosts {
            writeln!(text, "    - ips: [{}]\n      roles: [{role}]", host.ip).unwrap();
        }
    }
    text
}

/// The bytes of frames a table row says were sent (`..., 12.3 KiB sent, agent 5.1 MiB)`: the
/// bytes sent less the agent's upload), 0 when none.
fn sent_bytes(row: &str) -> f64 {
    let words: Vec<&str> = row.split_whitespace().collect();
    let size = |at: usize| {
        let n: f64 = words[at].trim_end_matches(&[',', ')'][..]).parse().unwrap();
        n * match words[at + 1].trim_end_matches(&[',', ')'][..]) {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            other => panic!("unit {other} in {row}"),
        }
    };
    let Some(at) = words.iter().position(|w| w.starts_with("sent")) else {
        return 0.0;
    };
    let agent = words
        .iter()
        .position(|w| *w == "agent")
        .map_or(0.0, |a| size(a + 1));
    size(at - 2) - agent
}

/// `sealer <command> ARGS... --known-hosts BED`.
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

/// Whether `ip:port` answers `GET /v2/` with 200 (the distribution API's base).
fn serves(ip: Ipv4Addr, port: u16) -> bool {
    let address = SocketAddr::from((ip, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

fn refuses(ip: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2)).is_err()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster's work directory on a host.
fn work_dir() -> String {
    format!("{DATA_ROOT}/{CLUSTER}/.sealer")
}

/// The registry's pid file on `host` (the one `*.pid` under the work dir's `registry/`).
fn registry_pid_file(bed: &Testbed, host: &TestHost) -> String {
    let found = bed.stdout_of(
        host,
        &format!("find {} -path '*registry*' -name '*.pid'", work_dir()),
    );
    let files: Vec<&str> = found.lines().collect();
    assert_eq!(
        files.len(),
        1,
        "{host}: one registry pid file under {}, found:\n{found}\nthe work dir holds:\n{}",
        work_dir(),
        bed.stdout_of(host, &format!("find {} -maxdepth 2", work_dir()))
    );
    files[0].to_string()
}

/// The supervisor's pid on `host` (in the host's PID namespace), checked to be running.
fn supervisor_pid(bed: &Testbed, host: &TestHost) -> u32 {
    let file = registry_pid_file(bed, host);
    let pid: u32 = bed
        .stdout_of(host, &format!("cat {file}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{host}: {file} does not hold a pid"));
    bed.stdout_of(host, &format!("kill -0 {pid}"));
    pid
}

/// The `[host."…"]` endpoints of a hosts.toml, in order, and its `server`.
fn mirror_endpoints(hosts_toml: &str) -> (Option<String>, Vec<String>) {
    let server = hosts_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("server = "))
        .map(|s| s.trim_matches('"').to_string());
    let hosts = hosts_toml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[host.\""))
        .filter_map(|l| l.strip_suffix("\"]"))
        .map(str::to_string)
        .collect();
    (server, hosts)
}

/// Processes of the registry service running inside `host` (their command lines).
fn registry_processes(bed: &Testbed, host: &TestHost) -> Vec<String> {
    bed.stdout_of(host, "ps -e -o args=")
        .lines()
        .filter(|l| l.contains("registry serve") || l.contains("registry supervise"))
        .map(str::to_string)
        .collect()
}

/// `skopeo copy` of `name` from a registry host into an OCI directory: every digest kept.
fn assert_skopeo_copy_keeps_digests(
    master: &TestHost,
    port: u16,
    name: &str,
    image: &TestImage,
    dir: &Path,
) {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join(name.replace([':', '/'], "-"));
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{}:{port}/{name}", master.ip),
            &format!("oci:{}:copy", out.display()),
        ],
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(image.manifest.as_str()),
        "skopeo copy of {name} from {master}"
    );
    for blob in image.blobs() {
        let bytes = std::fs::read(out.join("blobs/sha256").join(&blob[7..]))
            .unwrap_or_else(|e| panic!("{name} from {master}: blob {blob}: {e}"));
        assert_eq!(sha256(&bytes), blob, "{name} from {master}");
    }
}

/// Debian's docker-registry on `127.0.0.2:80`: its images are named `127.0.0.2/library/NAME:TAG`,
/// a registry name without a port, like `docker.io` (containerd then asks the mirror with
/// `?ns=127.0.0.2`; a name with a port goes as `?ns=127.0.0.1%3APORT`).
struct PortlessRegistry {
    child: Child,
    _dir: tempfile::TempDir,
}

const PORTLESS: &str = "127.0.0.2";

impl PortlessRegistry {
    fn start() -> PortlessRegistry {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {PORTLESS}:80\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install -y docker-registry)");
        let registry = PortlessRegistry { child, _dir: dir };
        let address: SocketAddr = format!("{PORTLESS}:80").parse().unwrap();
        wait_until(&format!("docker-registry listens on {address}"), || {
            TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
        });
        registry
    }
}

impl Drop for PortlessRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `image` pulled on the node through the CRI `PullImage` call (namespace k8s.io: containerd
/// resolves it through the config_path of its own config) and then by `ctr` (given the same
/// hosts directory, no endpoint and no --plain-http): each with the source's digests. What
/// went wrong otherwise.
fn pull_on_node(ctrd: &HostContainerd, image: &TestImage) -> Result<(), String> {
    let name = &image.reference;
    let log_tail = || {
        let log = ctrd.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    };
    match ctrd.cri_pull(name) {
        Ok(id) if id == image.config => {}
        other => {
            return Err(format!(
                "CRI PullImage of {name}: {other:?}, expected the config digest {}; containerd log:\n{}",
                image.config,
                log_tail()
            ))
        }
    }
    let digest = ctrd.image_digest("k8s.io", name);
    if digest.as_deref() != Some(image.manifest.as_str()) {
        return Err(format!(
            "CRI PullImage of {name}: containerd records {digest:?}, the source has {}",
            image.manifest
        ));
    }
    let pulled = ctrd.ctr(
        "sealer-test",
        &["images", "pull", "--hosts-dir", CERTS, name],
    );
    if !pulled.status.success() {
        return Err(format!("ctr pull of {name}: {}", both(&pulled)));
    }
    let digest = ctrd.image_digest("sealer-test", name);
    if digest.as_deref() != Some(image.manifest.as_str()) {
        return Err(format!(
            "ctr pull of {name}: containerd records {digest:?}, the source has {}",
            image.manifest
        ));
    }
    Ok(())
}

#[test]
fn masters_serve_the_packaged_images_a_node_pulls_them_through_hosts_toml_with_failover_and_delete_removes_it_all(
) {
    let Some(bed) = Testbed::up_for_test(3) else {
        return;
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    let hosts = bed.hosts();
    let (m0, m1, node) = (&hosts[0], &hosts[1], &hosts[2]);
    let masters = [m0, m1];
    // Checks whose failure should not hide what the rest of the test finds; asserted at the end.
    let mut problems: Vec<String> = Vec::new();

    step("images pushed to the source registries, CloudImage built");
    let store = Sealer::new();
    let source = TestRegistry::start(None);
    let with_port = source.host();
    let _portless = PortlessRegistry::start();
    // One image from a registry named with its port, two from one named without.
    let foo = oci::push(store.dir(), &with_port, "foo", "1", 300_000, 1);
    let bar = oci::push(store.dir(), PORTLESS, "bar", "2", 200_000, 2);
    let baz = oci::push(store.dir(), PORTLESS, "baz", "3", 100_000, 3);
    // In the source registry, not in the package: the cluster must not find it.
    let absent = oci::push(store.dir(), PORTLESS, "absent", "4", 10_000, 4);
    let ctx = store.context(
        "ctx",
        &[
            ("Kubefile", b"FROM scratch\nCOPY manifests manifests\n"),
            (
                "manifests/imageList",
                format!("{}\n{}\n{}\n", foo.reference, bar.reference, baz.reference).as_bytes(),
            ),
        ],
    );
    let built = store
        .command()
        .args(["build", "-t", "apps:v1", "--insecure"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(built.status.success(), "sealer build:\n{}", both(&built));
    let mut listed: Vec<String> = store.inspect("apps:v1")["container_images"]
        .as_array()
        .expect("sealer inspect lists container_images")
        .iter()
        .map(|i| {
            format!(
                "{} {}",
                i["image"].as_str().unwrap(),
                i["digest"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    let mut expected: Vec<String> = [&foo, &bar, &baz]
        .iter()
        .map(|i| format!("{} {}", i.reference, i.manifest))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("Clusterfile");
    std::fs::write(&file, clusterfile(&bed, &masters, &[node], "")).unwrap();
    let file = file.to_str().unwrap();

    step("preflight: a host whose containerd has no config_path is refused");
    for master in masters {
        containerd::write_config(&bed, master, CERTS);
    }
    let refused = store.run_on(&bed, "apps:v1", &["-f", file]);
    eprintln!("{}", refused.text);
    refused.assert_failed("install onto a node without a containerd config");
    let row = refused.row(node);
    assert!(
        row.contains("FAILED") && row.contains(CONFIG),
        "the node's failure does not name {CONFIG}: {row}"
    );
    assert!(row.contains("(check: containerd)"), "{row}");
    // Refused in preflight, before anything is sent: no host got the agent or a rootfs, and
    // the masters, which passed their own checks, did not start.
    let cluster_dir = format!("{DATA_ROOT}/{CLUSTER}");
    for host in [node, masters[0], masters[1]] {
        for path in [
            format!("{cluster_dir}/rootfs"),
            format!("{DATA_ROOT}/.agent"),
        ] {
            assert!(
                !bed.has_path(host, &path),
                "{path} on {host} after the refusal"
            );
        }
    }
    for master in masters {
        assert!(
            refused.row(master).contains("nothing was sent to any host"),
            "{}",
            refused.row(master)
        );
    }

    step("sealer check names the containerd check; --ignore-preflight containerd lets it by");
    let containerd_row = |run: &Run| {
        let ip = node.ip.to_string();
        run.text
            .lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(ip.as_str()) && words.next() == Some("containerd")
            })
            .unwrap_or_default()
            .to_string()
    };
    let check = sealer_on(&store, &bed, "check", &["apps:v1", "-f", file]);
    check.assert_failed("sealer check with a node without containerd's config");
    let row = containerd_row(&check);
    assert!(
        row.contains("FAILED") && row.contains(CONFIG),
        "{}",
        check.text
    );
    let ignored = sealer_on(
        &store,
        &bed,
        "check",
        &["apps:v1", "-f", file, "--ignore-preflight", "containerd"],
    );
    ignored.assert_ok("sealer check --ignore-preflight containerd");
    assert!(
        containerd_row(&ignored).contains("ignored"),
        "{}",
        ignored.text
    );

    step("install, the node's containerd config fixed");
    containerd::write_config(&bed, node, CERTS);
    let first = store.run_on(&bed, "apps:v1", &["-f", file]);
    eprintln!("{}", first.text);
    first.assert_ok("install");
    for master in masters {
        assert!(
            first.row(master).contains("installed"),
            "{}",
            first.row(master)
        );
    }
    let row = first.row(node);
    assert!(row.contains("installed"), "{row}");
    // The node got the rootfs but not the images layer (over half a megabyte of noise).
    assert!(
        sent_bytes(row) < 16.0 * 1024.0,
        "the node was sent the images layer: {row}"
    );
    let rootfs = format!("{cluster_dir}/rootfs");
    for host in hosts {
        assert!(bed.has_path(host, &format!("{rootfs}/manifests/imageList")));
    }
    // The images layer went to the registry hosts only.
    for master in masters {
        let index = bed.stdout_of(master, &format!("cat {rootfs}/images/index.json"));
        for image in [&foo, &bar, &baz] {
            assert!(
                index.contains(&image.manifest),
                "{master}: {} is not in rootfs/images/index.json:\n{index}",
                image.reference
            );
        }
    }
    assert!(
        !bed.has_path(node, &format!("{rootfs}/images")),
        "the node received the images layer"
    );

    // Each master runs the registry (supervised, pid file in the work dir) on 0.0.0.0:PORT.
    let mut supervisors = Vec::new();
    for master in masters {
        assert!(serves(master.ip, PORT), "{master} does not serve /v2/");
        supervisors.push(supervisor_pid(&bed, master));
        let listening = bed.stdout_of(master, &format!("ss -ltnH 'sport = :{PORT}'"));
        assert!(
            listening.contains(&format!("0.0.0.0:{PORT}")),
            "{master}: not listening on 0.0.0.0:{PORT}:\n{listening}"
        );
    }
    assert!(refuses(node.ip, PORT), "the node serves a registry");
    assert!(registry_processes(&bed, node).is_empty());

    // Every host points containerd at every master, in master order, for each registry the
    // images are named by.
    let endpoints: Vec<String> = masters
        .iter()
        .map(|m| format!("http://{}:{PORT}", m.ip))
        .collect();
    let registries = [with_port.as_str(), PORTLESS];
    for host in hosts {
        let dirs = bed.stdout_of(host, &format!("ls {CERTS}"));
        let mut want: Vec<&str> = registries.to_vec();
        want.sort();
        assert_eq!(dirs.lines().collect::<Vec<_>>(), want, "{host}: {CERTS}");
        for registry in registries {
            let hosts_toml = format!("{CERTS}/{registry}/hosts.toml");
            let written = bed.stdout_of(host, &format!("cat '{hosts_toml}'"));
            assert_eq!(
                mirror_endpoints(&written),
                (Some(endpoints[0].clone()), endpoints.clone()),
                "{host}: {hosts_toml}:\n{written}"
            );
        }
    }

    step("skopeo copies from the first master keeping every digest");
    for (name, image) in [
        ("library/foo:1", &foo),
        ("library/bar:2", &bar),
        ("library/baz:3", &baz),
    ] {
        assert_skopeo_copy_keeps_digests(m0, PORT, name, image, work.path());
    }

    step("a second run sends nothing");
    let second = store.run_on(&bed, "apps:v1", &["-f", file]);
    second.assert_ok("second install");
    if !second.text.contains("Everything is up to date") || second.text.contains(" sent ") {
        problems.push(format!("the second run was not a no-op:\n{}", second.text));
    }
    for (master, before) in masters.iter().zip(&supervisors) {
        let now = supervisor_pid(&bed, master);
        if now != *before {
            problems.push(format!(
                "{master}: the registry was restarted (supervisor {before} -> {now}) by a run that had nothing to do"
            ));
        }
    }
    let supervisors: Vec<u32> = masters.iter().map(|m| supervisor_pid(&bed, m)).collect();

    step("containerd on the node pulls through hosts.toml");
    let ctrd = HostContainerd::start(&bed, node);
    pull_on_node(&ctrd, &baz).unwrap();
    if let Err(e) = pull_on_node(&ctrd, &foo) {
        problems.push(format!("an image of a registry named with a port: {e}"));
    }
    // An image the package does not carry is not found, though its source registry has it.
    let missing = ctrd.ctr(
        "sealer-test",
        &["images", "pull", "--hosts-dir", CERTS, &absent.reference],
    );
    assert!(!missing.status.success(), "{}", both(&missing));
    assert!(
        both(&missing).contains("not found"),
        "ctr pull of an image not in the package: {}",
        both(&missing)
    );
    let cri_missing = ctrd.cri_pull(&absent.reference);
    assert!(
        cri_missing.as_ref().is_err_and(|e| e.contains("not found")),
        "CRI pull of an image not in the package: {cri_missing:?}"
    );

    step("the first master's registry killed (server and supervisor): pulls go to the second");
    let killed = supervisors[0];
    bed.stdout_of(
        m0,
        &format!("kill -9 {killed} $(pgrep -P {killed}) 2>/dev/null; true"),
    );
    wait_until(&format!("{m0} stops serving"), || refuses(m0.ip, PORT));
    pull_on_node(&ctrd, &bar).unwrap();

    step("a rerun starts the killed registry again");
    let rerun = store.run_on(&bed, "apps:v1", &["-f", file]);
    eprintln!("{}", rerun.text);
    rerun.assert_ok("rerun after the registry was killed");
    for host in hosts {
        if sent_bytes(rerun.row(host)) > 0.0 {
            problems.push(format!(
                "{host}: the rerun that restarted the registry sent bytes: {}",
                rerun.row(host)
            ));
        }
    }
    assert!(serves(m0.ip, PORT), "{m0} does not serve after the rerun");
    assert_ne!(supervisor_pid(&bed, m0), killed);
    assert_eq!(supervisor_pid(&bed, m1), supervisors[1]);
    assert_skopeo_copy_keeps_digests(m0, PORT, "library/bar:2", &bar, &work.path().join("again"));
    drop(ctrd);

    step("delete --all");
    let deleted = sealer_on(
        &store,
        &bed,
        "delete",
        &["--all", "--cluster-name", CLUSTER],
    );
    eprintln!("{}", deleted.text);
    deleted.assert_ok("delete --all");
    for host in hosts {
        assert!(
            registry_processes(&bed, host).is_empty(),
            "{host}: a registry still runs: {:?}",
            registry_processes(&bed, host)
        );
        for registry in registries {
            assert!(
                !bed.has_path(host, &format!("{CERTS}/{registry}")),
                "{host}: {CERTS}/{registry}/hosts.toml is left behind"
            );
        }
        assert!(
            !bed.has_path(host, DATA_ROOT),
            "{host}: the data root is left:\n{}",
            bed.stdout_of(host, &format!("find {DATA_ROOT} -maxdepth 3"))
        );
        assert!(bed.has_path(host, CONFIG), "{host}: {CONFIG} was removed");
    }
    for master in masters {
        assert!(refuses(master.ip, PORT), "{master} still serves");
    }

    step("ha: false and another port: master0 alone serves");
    let single_port: u16 = 5001;
    let single = work.path().join("Clusterfile.single");
    std::fs::write(
        &single,
        clusterfile(
            &bed,
            &masters,
            &[node],
            &format!(
                "  registry:\n    localRegistry:\n      port: {single_port}\n      ha: false\n"
            ),
        ),
    )
    .unwrap();
    let single = single.to_str().unwrap();
    let run = store.run_on(&bed, "apps:v1", &["-f", single]);
    eprintln!("{}", run.text);
    run.assert_ok("install with ha: false");
    assert!(bed.has_path(m0, &format!("{rootfs}/images/index.json")));
    for host in [m1, node] {
        assert!(
            !bed.has_path(host, &format!("{rootfs}/images")),
            "{host} received the images layer with ha: false"
        );
        assert!(refuses(host.ip, single_port), "{host} serves a registry");
    }
    assert!(
        serves(m0.ip, single_port),
        "{m0} does not serve on {single_port}"
    );
    assert!(refuses(m0.ip, PORT), "{m0} still serves on {PORT}");
    let only = format!("http://{}:{single_port}", m0.ip);
    for host in hosts {
        for registry in registries {
            let hosts_toml = format!("{CERTS}/{registry}/hosts.toml");
            let written = bed.stdout_of(host, &format!("cat '{hosts_toml}'"));
            assert_eq!(
                mirror_endpoints(&written),
                (Some(only.clone()), vec![only.clone()]),
                "{host}: {hosts_toml}:\n{written}"
            );
        }
    }
    assert_skopeo_copy_keeps_digests(
        m0,
        single_port,
        "library/baz:3",
        &baz,
        &work.path().join("single"),
    );
    let deleted = sealer_on(
        &store,
        &bed,
        "delete",
        &["--all", "--cluster-name", CLUSTER],
    );
    deleted.assert_ok("delete --all of the ha: false cluster");
    for host in hosts {
        assert!(registry_processes(&bed, host).is_empty(), "{host}");
        assert!(!bed.has_path(host, DATA_ROOT), "{host}");
        for registry in registries {
            assert!(
                !bed.has_path(host, &format!("{CERTS}/{registry}")),
                "{host}"
            );
        }
    }

    step("done");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}
