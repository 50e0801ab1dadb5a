//! The agent's pull-only registry against real clients: an OCI layout written by the test is
//! served by `sealer-stub agent registry serve`; skopeo copies from it keeping every digest,
//! raw HTTP checks the distribution API's answers, Debian's containerd (its own config, root,
//! state and socket in a temporary directory) pulls through the `hosts.toml` that `agent
//! registry mirror` wrote, with failover, through ctr and through the CRI `PullImage` call;
//! `agent registry start/status/stop` keep the server running without systemd.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::registry::{free_port, wait_for_port};
use support::store::STUB;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One image of the test layout.
struct Image {
    manifest: String,
    manifest_len: usize,
    config: String,
    layer: String,
    layer_bytes: Vec<u8>,
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(root: &Path, bytes: &[u8]) -> String {
    let digest = sha(bytes);
    fs::write(root.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
    digest
}

/// A one-layer image (a gzipped tar of `file` holding `len` bytes of noise) in the layout.
fn write_image(root: &Path, file: &str, len: usize, seed: u64) -> Image {
    let tar = support::tar::files(&[(file, &support::noise::bytes(len, seed))]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer_bytes = gz.finish().unwrap();
    let layer = put_blob(root, &layer_bytes);
    let config_json = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/{file}"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha(&tar)
    );
    let config = put_blob(root, config_json.as_bytes());
    let manifest_json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{}}}]}}"#,
        config_json.len(),
        layer_bytes.len()
    );
    let manifest = put_blob(root, manifest_json.as_bytes());
    Image {
        manifest,
        manifest_len: manifest_json.len(),
        config,
        layer,
        layer_bytes,
    }
}

fn index_json(entries: &[(&Image, &str)]) -> String {
    let manifests: Vec<String> = entries
        .iter()
        .map(|(image, name)| {
            format!(
                r#"{{"mediaType":"{MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}"#,
                image.manifest, image.manifest_len
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        manifests.join(",")
    )
}

/// `docker.io/library/foo:1` and `quay.io/x/bar:2` in an OCI layout at `root`.
fn write_layout(root: &Path) -> (Image, Image) {
    fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let hub = write_image(root, "foo.bin", 300_000, 1);
    let quay = write_image(root, "bar.bin", 50_000, 2);
    fs::write(
        root.join("index.json"),
        index_json(&[
            (&hub, "docker.io/library/foo:1"),
            (&quay, "quay.io/x/bar:2"),
        ]),
    )
    .unwrap();
    (hub, quay)
}

/// A process killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(STUB);
    c.arg("agent").args(args).stdin(Stdio::null());
    c
}

fn serve(root: &Path) -> (Running, u16) {
    let port = free_port();
    let child = agent(&[
        "registry",
        "serve",
        "--root",
        root.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let running = Running(child);
    wait_for_port(port);
    (running, port)
}

fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One HTTP/1.1 exchange: status, headers (lowercase names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let doc: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)));
        doc["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

#[test]
fn skopeo_copies_images_from_the_served_layout_keeping_every_digest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let (hub, quay) = write_layout(&root);
    let (_server, port) = serve(&root);
    let out = dir.path().join("out");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://127.0.0.1:{port}/library/foo:1"),
        &format!("oci:{}:foo", out.display()),
    ]));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], hub.manifest.as_str());
    for blob in [&hub.manifest, &hub.config, &hub.layer] {
        let copied = fs::read(out.join("blobs/sha256").join(&blob[7..])).unwrap();
        assert_eq!(&sha(&copied), blob);
    }
    // quay.io/x/bar is the only x/bar, so a client that names no registry gets it.
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{port}/x/bar:2"),
    ]));
    assert_eq!(sha(&raw.stdout), quay.manifest);
}

#[test]
fn the_distribution_api_answers_ranges_heads_tags_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let (hub, quay) = write_layout(&root);
    let stray = put_blob(&root, b"a blob no manifest references");
    let (_server, port) = serve(&root);

    let base = http(port, "GET", "/v2/", &[]);
    assert_eq!((base.status, &base.body[..]), (200, &b"{}"[..]));

    let head = http(
        port,
        "HEAD",
        "/v2/library/foo/manifests/1?ns=docker.io",
        &[],
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(MANIFEST));
    assert_eq!(
        head.header("docker-content-digest"),
        Some(hub.manifest.as_str())
    );
    assert_eq!(
        head.header("content-length"),
        Some(hub.manifest_len.to_string().as_str())
    );
    assert!(head.body.is_empty());
    let by_digest = http(
        port,
        "GET",
        &format!("/v2/foo/manifests/{}", hub.manifest),
        &[],
    );
    assert_eq!(by_digest.status, 200);
    assert_eq!(sha(&by_digest.body), hub.manifest);

    let layer_path = format!("/v2/library/foo/blobs/{}", hub.layer);
    let part = http(port, "GET", &layer_path, &[("Range", "bytes=10-99999")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, hub.layer_bytes[10..100_000]);
    let len = hub.layer_bytes.len();
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-99999/{len}").as_str())
    );
    let whole = http(port, "GET", &layer_path, &[]);
    assert_eq!((whole.status, sha(&whole.body)), (200, hub.layer.clone()));
    let blob_head = http(port, "HEAD", &layer_path, &[]);
    assert_eq!(
        blob_head.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert!(blob_head.body.is_empty());
    let beyond = http(
        port,
        "GET",
        &layer_path,
        &[("Range", &format!("bytes={len}-"))],
    );
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    let tags = http(port, "GET", "/v2/x/bar/tags/list?ns=quay.io", &[]);
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["2"]));

    let unknown_tag = http(port, "GET", "/v2/library/foo/manifests/2?ns=docker.io", &[]);
    assert_eq!(
        (unknown_tag.status, unknown_tag.error_code()),
        (404, "MANIFEST_UNKNOWN".into())
    );
    // The ns query keeps docker.io's and quay.io's names apart.
    for path in [
        "/v2/library/foo/manifests/1?ns=quay.io",
        "/v2/x/bar/manifests/2?ns=docker.io",
        "/v2/nope/manifests/1",
    ] {
        let a = http(port, "GET", path, &[]);
        assert_eq!(
            (a.status, a.error_code()),
            (404, "NAME_UNKNOWN".into()),
            "{path}"
        );
    }
    let other_repo = http(
        port,
        "GET",
        &format!("/v2/x/bar/manifests/{}?ns=quay.io", hub.manifest),
        &[],
    );
    assert_eq!(other_repo.error_code(), "MANIFEST_UNKNOWN");
    let stray = http(port, "GET", &format!("/v2/library/foo/blobs/{stray}"), &[]);
    assert_eq!(
        (stray.status, stray.error_code()),
        (404, "BLOB_UNKNOWN".into())
    );
    let escape = http(
        port,
        "GET",
        "/v2/library/foo/blobs/sha256:..%2f..%2findex.json",
        &[],
    );
    assert_eq!(escape.status, 400);
    assert_eq!(escape.error_code(), "DIGEST_INVALID");

    for (method, path) in [
        ("PUT", "/v2/library/foo/manifests/1".to_string()),
        ("DELETE", format!("/v2/x/bar/manifests/{}", quay.manifest)),
        ("POST", "/v2/library/foo/blobs/uploads/".to_string()),
        ("PATCH", "/v2/library/foo/blobs/uploads/x".to_string()),
    ] {
        let a = http(port, method, &path, &[("Content-Length", "0")]);
        assert_eq!(
            (a.status, a.error_code()),
            (405, "UNSUPPORTED".into()),
            "{method} {path}"
        );
    }
}

#[test]
fn a_replaced_index_json_or_layout_directory_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let (hub, quay) = write_layout(&root);
    let (_server, port) = serve(&root);
    assert_eq!(
        http(port, "GET", "/v2/library/foo/manifests/1", &[]).status,
        200
    );
    let tmp = root.join("index.json.new");
    fs::write(&tmp, index_json(&[(&quay, "quay.io/x/bar:2")])).unwrap();
    fs::rename(&tmp, root.join("index.json")).unwrap();
    let gone = http(port, "GET", "/v2/library/foo/manifests/1", &[]);
    assert_eq!(gone.error_code(), "NAME_UNKNOWN");
    // Its blobs went with it.
    let blob = http(port, "GET", &format!("/v2/x/bar/blobs/{}", hub.layer), &[]);
    assert_eq!(blob.error_code(), "BLOB_UNKNOWN");

    // An upgrade swaps the whole directory (the rootfs is renamed into place).
    let next = dir.path().join("images.next");
    let (next_hub, _) = write_layout(&next);
    fs::write(
        next.join("index.json"),
        index_json(&[(&next_hub, "docker.io/library/foo:1")]),
    )
    .unwrap();
    fs::rename(&root, dir.path().join("images.old")).unwrap();
    fs::rename(&next, &root).unwrap();
    let back = http(port, "GET", "/v2/library/foo/manifests/1", &[]);
    assert_eq!(back.status, 200);
    assert_eq!(sha(&back.body), next_hub.manifest);
    let bar = http(port, "GET", "/v2/x/bar/manifests/2", &[]);
    assert_eq!(bar.error_code(), "NAME_UNKNOWN");
}

/// Debian's containerd with everything of its own under `dir`.
struct Containerd {
    _process: Running,
    socket: PathBuf,
    certs: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let certs = dir.join("certs.d");
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        fs::create_dir_all(dir).unwrap();
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"{sock}.debug\"\n\
                 [metrics]\n  address = \"\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{certs}\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
                certs = certs.display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (apt-get install -y containerd)");
        let process = Running(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        // The agent reads the same config_path containerd was given.
        let found = run_ok(&mut agent(&[
            "registry",
            "config-path",
            "--config",
            config.to_str().unwrap(),
        ]));
        assert_eq!(
            String::from_utf8_lossy(&found.stdout).trim(),
            certs.to_str().unwrap()
        );
        Containerd {
            _process: process,
            socket,
            certs,
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in("sealer-test", args)
    }

    fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The digest containerd records for `name` in `namespace`.
    fn image_digest(&self, namespace: &str, name: &str) -> String {
        let out = self.ctr_in(namespace, &["images", "ls"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
            .unwrap_or_else(|| panic!("{name} not in `ctr images ls`:\n{text}"))
            .to_string()
    }
}

fn mirror(certs: &Path, registry: &str, endpoints: &[String]) -> String {
    let mut args = vec![
        "registry".to_string(),
        "mirror".into(),
        "--config-path".into(),
        certs.display().to_string(),
        "--registry".into(),
        registry.into(),
    ];
    for e in endpoints {
        args.push("--endpoint".into());
        args.push(e.clone());
    }
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    String::from_utf8_lossy(&run_ok(&mut agent(&words)).stdout).to_string()
}

#[test]
fn containerd_pulls_through_hosts_toml_with_failover_and_finds_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let (hub, quay) = write_layout(&root);
    let (_server, port) = serve(&root);
    let containerd = Containerd::start(&dir.path().join("containerd"));
    // The first registry host is down: containerd goes on to the next.
    let endpoints = vec![
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{port}"),
    ];
    assert!(mirror(&containerd.certs, "docker.io", &endpoints).contains("written"));
    assert!(mirror(&containerd.certs, "docker.io", &endpoints).contains("unchanged"));
    mirror(&containerd.certs, "quay.io", &endpoints[1..]);
    // kubelet's way first, while containerd holds nothing: the CRI PullImage call, resolved
    // by containerd itself through the config_path of its config.
    let python = Path::new("/usr/bin/python3");
    let image_ref = cri_pull(python, &containerd.socket, "docker.io/library/foo:1");
    assert_eq!(
        image_ref, hub.config,
        "the CRI image id is the config digest"
    );
    assert_eq!(
        containerd.image_digest("k8s.io", "docker.io/library/foo:1"),
        hub.manifest
    );
    let hosts_dir = containerd.certs.to_str().unwrap();
    for name in ["docker.io/library/foo:1", "quay.io/x/bar:2"] {
        let out = containerd.ctr(&["images", "pull", "--hosts-dir", hosts_dir, name]);
        assert!(
            out.status.success(),
            "pulling {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        containerd.image_digest("sealer-test", "docker.io/library/foo:1"),
        hub.manifest
    );
    assert_eq!(
        containerd.image_digest("sealer-test", "quay.io/x/bar:2"),
        quay.manifest
    );
    let missing = containerd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts_dir,
        "docker.io/library/nope:1",
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr).to_lowercase();
    assert!(
        err.contains("statusnotfound"),
        "the live host said not found: {err}"
    );
    assert!(
        !err.contains("docker.io/v2"),
        "nothing asked docker.io: {err}"
    );
    // With every listed host up, containerd reports the image not found.
    let missing = containerd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts_dir,
        "quay.io/x/nope:1",
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("quay.io/x/nope:1: not found"), "{err}");
}

/// `/runtime.v1.ImageService/PullImage` with a hand-encoded request; the `image_ref` answered.
fn cri_pull(python: &Path, socket: &Path, image: &str) -> String {
    let script = r#"
import sys, grpc
sock, image = sys.argv[1], sys.argv[2]
def field(n, payload):
    out, size = bytes([n << 3 | 2]), len(payload)
    while size >= 0x80:
        out += bytes([size & 0x7f | 0x80]); size >>= 7
    return out + bytes([size]) + payload
request = field(1, field(1, image.encode()))
pull = grpc.insecure_channel("unix://" + sock).unary_unary("/runtime.v1.ImageService/PullImage")
answer = pull(request, timeout=120)
assert answer[0] == 0x0a, answer
sys.stdout.write(answer[2:2 + answer[1]].decode())
"#;
    let out = run_ok(
        Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(socket)
            .arg(image),
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status(work: &Path) -> serde_json::Value {
    let out = run_ok(&mut agent(&[
        "registry",
        "status",
        "--work",
        work.to_str().unwrap(),
        "--unit",
        "sealer-test-registry",
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Pids of the processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == parent {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` runs (a zombie whose parent has not reaped it does not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
        state != Some('Z')
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn registry_start_supervises_restarts_and_stops_without_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let work = dir.path().join("work");
    write_layout(&root);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        let out = run_ok(&mut agent(&[
            "registry",
            "start",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            &listen,
            "--work",
            work.to_str().unwrap(),
            "--unit",
            "sealer-test-registry",
            "--manager",
            "daemon",
        ]));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let stop = || {
        run_ok(&mut agent(&[
            "registry",
            "stop",
            "--work",
            work.to_str().unwrap(),
            "--unit",
            "sealer-test-registry",
        ]))
    };
    // Whatever happens below, no daemon outlives the test.
    struct StopOnDrop<'a>(&'a dyn Fn() -> Output);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            let _ = (self.0)();
        }
    }
    let stop_quietly = || {
        agent(&[
            "registry",
            "stop",
            "--work",
            work.to_str().unwrap(),
            "--unit",
            "sealer-test-registry",
        ])
        .output()
        .unwrap()
    };
    let _guard = StopOnDrop(&stop_quietly);
    let serves = || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/v2/library/foo/manifests/1", &[]).status == 200
    };
    // Started with a descriptor it does not know of (an SSH channel's): the daemon does not
    // keep it, so whoever reads its other end sees it close when `start` ends.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (channel_read, channel_write) = (fds[0], fds[1]);
    let mut with_channel = agent(&[
        "registry",
        "start",
        "--root",
        root.to_str().unwrap(),
        "--listen",
        &listen,
        "--work",
        work.to_str().unwrap(),
        "--unit",
        "sealer-test-registry",
        "--manager",
        "daemon",
    ]);
    // SAFETY: dup2 is async-signal-safe; fd 7 in the child is a copy without close-on-exec.
    unsafe {
        with_channel.pre_exec(move || {
            libc::dup2(channel_write, 7);
            Ok(())
        });
    }
    let out = run_ok(&mut with_channel);
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"));
    // SAFETY: closing this test's own descriptors.
    unsafe {
        libc::close(channel_write);
    }
    let mut channel = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(channel_read) };
    let mut rest = Vec::new();
    let (done, waited) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = channel.read_to_end(&mut rest);
        let _ = done.send(());
    });
    assert!(
        waited.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the daemon kept the inherited descriptor open"
    );
    assert!(serves());
    let first = status(&work);
    assert_eq!(
        (&first["running"], &first["serving"], &first["manager"]),
        (&true.into(), &true.into(), &"daemon".into())
    );
    let supervisor = first["pid"].as_u64().unwrap() as u32;
    // The supervisor has detached: it is not a child of this test.
    assert!(!children(std::process::id()).contains(&supervisor));

    // A killed server is started again by its supervisor.
    let server = children(supervisor);
    assert_eq!(server.len(), 1, "one server under the supervisor");
    Command::new("kill")
        .args(["-9", &server[0].to_string()])
        .status()
        .unwrap();
    wait_until("the supervisor starts another server", || {
        let now = children(supervisor);
        now.len() == 1 && now[0] != server[0] && serves()
    });

    // Starting it again with the same arguments leaves it alone.
    assert!(start().contains("already running"));
    assert_eq!(status(&work)["pid"].as_u64(), Some(supervisor as u64));

    // A killed supervisor (and with it its server) leaves a stale pid file; start sees it down.
    Command::new("kill")
        .args(["-9", &supervisor.to_string()])
        .status()
        .unwrap();
    wait_until("the registry is down", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    assert_eq!(status(&work)["running"], false);
    assert!(start().contains("started"));
    assert!(serves());
    let second = status(&work)["pid"].as_u64().unwrap() as u32;
    assert_ne!(second, supervisor);

    let out = stop();
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!work.join("registry/sealer-test-registry.pid").exists());
    assert!(!alive(second), "the supervisor ended");
    assert_eq!(status(&work)["running"], false);
    let again = stop();
    assert!(String::from_utf8_lossy(&again.stdout).contains("was not running"));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    use sealer::agent::registry::service::{unit_text, ServiceSpec};
    let dir = tempfile::tempdir().unwrap();
    // The unit runs the agent's copy; systemd checks that it is executable.
    let agent = dir.path().join("sealer agent");
    fs::copy(STUB, &agent).unwrap();
    let spec = ServiceSpec {
        unit: "sealer-test-registry".parse().unwrap(),
        root: PathBuf::from("/var/lib/my data/100%/$HOME/it's \"here\"/images"),
        listen: "0.0.0.0:5000".parse().unwrap(),
        work: dir.path().join("work"),
    };
    let unit = dir.path().join("sealer-test-registry.service");
    fs::write(&unit, unit_text(&spec, &agent).unwrap()).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install -y systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify refused the unit:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(&unit).unwrap()
    );
}

#[test]
fn containerd_pulls_from_an_existing_registry_under_a_path_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let (hub, _) = write_layout(&root);
    let (_server, port) = serve(&root);
    // A Harbor-style registry holding docker.io's images under the project `mirror`.
    let existing = support::registry::TestRegistry::start(None);
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://127.0.0.1:{port}/library/foo:1"),
        &format!(
            "docker://{}/mirror/docker.io/library/foo:1",
            existing.host()
        ),
    ]));
    let containerd = Containerd::start(&dir.path().join("containerd"));
    let config_path = containerd.certs.display().to_string();
    let endpoint = format!("http://{}", existing.host());
    run_ok(&mut agent(&[
        "registry",
        "mirror",
        "--config-path",
        &config_path,
        "--registry",
        "docker.io",
        "--endpoint",
        &endpoint,
        "--prefix",
        "mirror/docker.io",
    ]));
    let out = containerd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        &config_path,
        "docker.io/library/foo:1",
    ]);
    assert!(
        out.status.success(),
        "pulling through the prefix: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        containerd.image_digest("sealer-test", "docker.io/library/foo:1"),
        hub.manifest
    );
}
