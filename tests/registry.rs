//! Push and pull against a real registry: Debian's `docker-registry` (distribution 2.8) started on
//! 127.0.0.1 by each test, plain or with htpasswd (bcrypt) auth. `skopeo` judges what the
//! registry holds. Faults are real: the registry process is killed mid-push, and a pull goes
//! through a TCP relay that is cut in the middle of a layer.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use packer::frames::{scan_frames, FramedWriter};
use sealer::reference::Reference;
use sealer::registry::{
    self, BlobKind, Credentials, ProgressEvent, RegistryError, RegistryOptions,
};
use sealer::store::{
    Descriptor, ImageConfig, Manifest, RootFs, Store, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD, MEDIA_TYPE_MANIFEST,
};
use support::noise;
use support::registry::{
    free_port, private_ca, skopeo_digest, Auth, CuttingRelay, TestRegistry, TokenServer,
};
use support::store::{self, sha256, SEALER};
use support::tar;

// ---------------------------------------------------------------------------------------------
// Images built through the store API.

/// A framed zstd layer in the store: `(descriptor, diff_id)`.
fn zstd_layer(store: &Store, tar: &[u8]) -> (Descriptor, String) {
    let mut w = FramedWriter::new(store.blob_writer().unwrap(), 3);
    w.write_all(tar).unwrap();
    let (blob, layer) = w.finish().unwrap();
    let digest = format!("sha256:{}", layer.digest);
    let (stored, size) = blob.commit(Some(&digest)).unwrap();
    (
        Descriptor {
            media_type: MEDIA_TYPE_LAYER_ZSTD.into(),
            digest: stored,
            size,
            annotations: Default::default(),
            platform: None,
        },
        format!("sha256:{}", layer.diff_id),
    )
}

fn commit(store: &Store, name: &str, layers: Vec<(Descriptor, String)>) -> String {
    commit_for(store, name, "amd64", layers)
}

fn commit_for(store: &Store, name: &str, arch: &str, layers: Vec<(Descriptor, String)>) -> String {
    let config = ImageConfig {
        architecture: arch.into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|(_, d)| d.clone()).collect(),
        },
        ..Default::default()
    };
    let (config_digest, config_size) = store
        .put_blob(&serde_json::to_vec(&config).unwrap())
        .unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_TYPE_CONFIG.into(),
            digest: config_digest,
            size: config_size,
            annotations: Default::default(),
            platform: None,
        },
        layers: layers.into_iter().map(|(d, _)| d).collect(),
        annotations: Default::default(),
    };
    store
        .commit_image(&Reference::parse(name).unwrap(), &manifest)
        .unwrap()
}

/// An image with a multi-frame zstd layer (a 40 MiB tar of pseudo-random data) and a small one.
fn build_image(root: &Path, name: &str) -> String {
    let store = Store::open(root).unwrap();
    let big = tar::files(&[
        ("data/a.bin", &noise::bytes(24 << 20, 7)),
        ("data/b.bin", &noise::bytes(16 << 20, 11)),
    ]);
    let small = tar::files(&[("etc/motd", b"hello from sealer\n")]);
    let layers = vec![zstd_layer(&store, &big), zstd_layer(&store, &small)];
    commit(&store, name, layers)
}

fn sha256_file(path: &Path) -> String {
    sha256(&fs::read(path).unwrap())
}

/// Every file in `blobs/sha256` is complete: its content hashes to its name.
fn assert_blobs_intact(root: &Path) {
    let dir = root.join("oci/blobs/sha256");
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        assert_eq!(
            sha256_file(&entry.path()),
            format!("sha256:{name}"),
            "partial or corrupt blob {name} in the store"
        );
    }
}

fn plain_opts(home: &Path) -> RegistryOptions {
    RegistryOptions {
        insecure: true,
        auth_file: home.join("auth.json"),
        attempts: 2,
        backoff: Duration::from_millis(100),
        ..RegistryOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI.

fn sealer(root: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = store::command(Path::new(SEALER), root);
    cmd.args(args)
        .env("HOME", home)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("SEALER_REGISTRY_CA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running sealer");
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn pushed_image_has_same_digest_in_skopeo_and_pulls_identical_into_empty_store() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (root_a, root_b, home) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("home"),
    );
    fs::create_dir_all(&home).unwrap();
    let name = format!("{}/apps/demo:v1", registry.host());
    let digest = build_image(&root_a, &name);

    let out = sealer(&root_a, &home, &["push", "--insecure", &name], None);
    assert!(out.status.success(), "push failed: {}", stderr(&out));
    assert_eq!(skopeo_digest(&name).as_deref(), Some(digest.as_str()));

    let out = sealer(&root_b, &home, &["pull", "--insecure", &name], None);
    assert!(out.status.success(), "pull failed: {}", stderr(&out));

    let a = Store::open(&root_a).unwrap().image_by_name(&name).unwrap();
    let store_b = Store::open(&root_b).unwrap();
    let b = store_b.image_by_name(&name).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(a.config, b.config);
    let big = &b.manifest.layers[0];
    let frames = scan_frames(&fs::read(store_b.blob_path(&big.digest).unwrap()).unwrap()).unwrap();
    assert!(frames.len() >= 3, "the layer kept {} frames", frames.len());
    assert_blobs_intact(&root_b);
}

#[test]
fn second_push_uploads_nothing_and_another_repository_mounts_the_blobs() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let name = format!("{}/apps/demo:v1", registry.host());
    build_image(&root, &name);
    let store = Store::open(&root).unwrap();
    let opts = plain_opts(work.path());
    let reference = Reference::parse(&name).unwrap();

    let first = registry::push(&store, &reference, &opts, &|_| {}).unwrap();
    assert_eq!(first.uploaded.len(), 3);
    let second = registry::push(&store, &reference, &opts, &|_| {}).unwrap();
    assert!(second.uploaded.is_empty(), "{second:?}");
    assert_eq!(second.already_present.len(), 3);

    let other = Reference::parse(&format!("{}/other/copy:v2", registry.host())).unwrap();
    store.tag(&reference, &other).unwrap();
    let events = Mutex::new(Vec::new());
    let third = registry::push(&store, &other, &opts, &|p| events.lock().unwrap().push(p)).unwrap();
    assert!(third.uploaded.is_empty(), "{third:?}");
    assert_eq!(third.mounted.len(), 3, "{third:?}");
    assert!(events.lock().unwrap().iter().any(|p| p.event
        == ProgressEvent::Mounted {
            from: "apps/demo".into()
        }));
    assert_eq!(
        skopeo_digest(&other.store_key()),
        Some(first.digest.clone())
    );

    // Pulled by digest alone: named by the digest, no `latest` appears; a wrong digest is refused.
    let root_b = work.path().join("b");
    let store_b = Store::open(&root_b).unwrap();
    let by_digest = format!("{}/apps/demo@{}", registry.host(), first.digest);
    let image = registry::pull(
        &store_b,
        &Reference::parse(&by_digest).unwrap(),
        &opts,
        &|_| {},
    )
    .unwrap();
    assert_eq!(image.digest, first.digest);
    let names: Vec<String> = store_b
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(
        names,
        vec![format!(
            "{}/apps/demo:sha256-{}",
            registry.host(),
            first.digest.trim_start_matches("sha256:")
        )]
    );
    let wrong = format!("{}/apps/demo@sha256:{}", registry.host(), "0".repeat(64));
    let err =
        registry::pull(&store_b, &Reference::parse(&wrong).unwrap(), &opts, &|_| {}).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
}

#[test]
fn push_of_image_without_registry_says_to_tag_it() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    build_image(&root, "demo:v1");
    let out = sealer(&root, work.path(), &["push", "demo:v1"], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("names no registry") && err.contains("sealer tag"),
        "{err}"
    );
}

#[test]
fn auth_registry_refuses_anonymous_push_and_accepts_after_login() {
    let registry = TestRegistry::start(Some(("alice", "correct-horse")));
    let work = tempfile::tempdir().unwrap();
    let (root, home) = (work.path().join("root"), work.path().join("home"));
    fs::create_dir_all(&home).unwrap();
    let name = format!("{}/apps/demo:v1", registry.host());
    build_image(&root, &name);
    let auth_file = root.join("auth.json");

    let out = sealer(&root, &home, &["push", "--insecure", &name], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    eprintln!("anonymous push: {err}");
    assert!(
        err.contains("refused access")
            && err.contains(&format!("sealer login {}", registry.host())),
        "{err}"
    );

    let out = sealer(
        &root,
        &home,
        &[
            "login",
            "--insecure",
            &registry.host(),
            "-u",
            "alice",
            "--password-stdin",
        ],
        Some("wrong-password\n"),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    eprintln!("login with a wrong password: {err}");
    assert!(err.contains("rejected the user name or password"), "{err}");
    assert!(
        !err.contains("wrong-password"),
        "the password was printed: {err}"
    );
    assert!(!auth_file.exists(), "a failed login saved credentials");

    let out = sealer(
        &root,
        &home,
        &[
            "login",
            "--insecure",
            &registry.host(),
            "-u",
            "alice",
            "--password-stdin",
        ],
        Some("correct-horse\n"),
    );
    assert!(out.status.success(), "login failed: {}", stderr(&out));
    let all_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all_output.contains("correct-horse"));
    let mode = fs::metadata(&auth_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = sealer(&root, &home, &["push", "--insecure", &name], None);
    assert!(
        out.status.success(),
        "push after login failed: {}",
        stderr(&out)
    );

    // Another machine: credentials from ~/.docker/config.json work for pull.
    let other_root = work.path().join("other");
    let other_home = work.path().join("other-home");
    fs::create_dir_all(other_home.join(".docker")).unwrap();
    fs::copy(&auth_file, other_home.join(".docker/config.json")).unwrap();
    let out = sealer(
        &other_root,
        &other_home,
        &["pull", "--insecure", &name],
        None,
    );
    assert!(
        out.status.success(),
        "pull with docker config failed: {}",
        stderr(&out)
    );

    let out = sealer(&root, &home, &["logout", &registry.host()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sealer(&root, &home, &["push", "--insecure", &name], None);
    assert!(!out.status.success(), "push still works after logout");
}

#[test]
fn registry_killed_mid_push_gives_clear_error_and_no_manifest() {
    let mut registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let name = format!("{}/apps/demo:v1", registry.host());
    let digest = build_image(&root, &name);
    let store = Store::open(&root).unwrap();
    let index_before = fs::read(root.join("oci/index.json")).unwrap();
    let reg = Mutex::new(&mut registry);
    let result = registry::push(
        &store,
        &Reference::parse(&name).unwrap(),
        &plain_opts(work.path()),
        &|p| {
            if p.kind == (BlobKind::Layer { index: 0, count: 2 }) && p.event == ProgressEvent::Done
            {
                reg.lock().unwrap().kill();
            }
        },
    );
    let err = result.expect_err("push succeeded although the registry was killed");
    // The registry was talked to over plain HTTP, so the error is the plain-HTTP kind (which
    // does not suggest adding --insecure).
    assert!(
        matches!(err, RegistryError::UnreachablePlainHttp { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    eprintln!("push to the killed registry: {text}");
    assert!(
        text.contains("cannot reach registry") && text.contains("gave up after 2 attempts"),
        "{text}"
    );
    // The store is untouched and complete.
    assert_eq!(fs::read(root.join("oci/index.json")).unwrap(), index_before);
    assert_eq!(store.image_by_name(&name).unwrap().digest, digest);
    assert_blobs_intact(&root);
    assert!(fs::read_dir(root.join("tmp")).unwrap().next().is_none());
    // Back up, the registry holds no manifest for the tag.
    registry.spawn();
    assert_eq!(skopeo_digest(&name), None);
}

#[test]
fn pull_cut_mid_layer_leaves_no_image_and_no_partial_blob() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (work.path().join("a"), work.path().join("b"));
    let name = format!("{}/apps/demo:v1", registry.host());
    build_image(&root_a, &name);
    let opts = plain_opts(work.path());
    registry::push(
        &Store::open(&root_a).unwrap(),
        &Reference::parse(&name).unwrap(),
        &opts,
        &|_| {},
    )
    .unwrap();

    let relay = CuttingRelay::start(registry.port, 8 << 20, false);
    let via_relay = format!("127.0.0.1:{}/apps/demo:v1", relay.port);
    let store_b = Store::open(&root_b).unwrap();
    let err = registry::pull(
        &store_b,
        &Reference::parse(&via_relay).unwrap(),
        &opts,
        &|_| {},
    )
    .expect_err("pull succeeded through a relay cut mid-layer");
    let text = err.to_string();
    eprintln!("pull through the cut relay: {text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", relay.port)),
        "the error does not name the registry: {text}"
    );
    assert!(
        store_b.images().unwrap().is_empty(),
        "a half-pulled image got a name"
    );
    let big = Store::open(&root_a)
        .unwrap()
        .image_by_name(&name)
        .unwrap()
        .manifest
        .layers[0]
        .digest
        .clone();
    assert!(!store_b.has_blob(&big), "the cut layer entered the store");
    assert_blobs_intact(&root_b);
    assert!(
        fs::read_dir(root_b.join("tmp")).unwrap().next().is_none(),
        "temporary files left"
    );
}

#[test]
fn docker_schema2_image_with_gzip_layer_pulls_as_is() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (work.path().join("a"), work.path().join("b"));
    let store_a = Store::open(&root_a).unwrap();
    let tar = tar::files(&[("hello.txt", b"hi\n")]);
    let mut gzip = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    gzip.stdin.take().unwrap().write_all(&tar).unwrap();
    let gz = gzip.wait_with_output().unwrap().stdout;
    let (digest, size) = store_a.put_blob(&gz).unwrap();
    let diff_id = sha256(&tar);
    let layer = Descriptor {
        media_type: MEDIA_TYPE_LAYER_GZIP.into(),
        digest: digest.clone(),
        size,
        annotations: Default::default(),
        platform: None,
    };
    commit(&store_a, "local/gz:v1", vec![(layer, diff_id)]);
    let remote = format!("{}/docker/gz:v1", registry.host());
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            &format!("oci:{}:local/gz:v1", store_a.oci_dir().display()),
            &format!("docker://{remote}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote_digest = skopeo_digest(&remote).unwrap();

    let store_b = Store::open(&root_b).unwrap();
    // Plain HTTP for this registry only, as SEALER_INSECURE_REGISTRIES gives it.
    let opts = RegistryOptions {
        insecure: false,
        insecure_registries: vec![registry.host()],
        ..plain_opts(work.path())
    };
    let image = registry::pull(
        &store_b,
        &Reference::parse(&remote).unwrap(),
        &opts,
        &|_| {},
    )
    .unwrap();
    assert_eq!(image.digest, remote_digest);
    assert_eq!(
        image.manifest.media_type.as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(image.manifest.layers[0].digest, digest);
    assert_eq!(
        image.manifest.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_blobs_intact(&root_b);
}

#[test]
fn login_to_unreachable_registry_says_so_and_saves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let opts = plain_opts(work.path());
    let err = registry::login(
        &format!("127.0.0.1:{port}"),
        &Credentials {
            username: "u".into(),
            password: "p".into(),
        },
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(!opts.auth_file.exists());
}

#[test]
fn tls_registry_is_verified_and_trusted_through_ca_file() {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    fs::create_dir_all(&pki).unwrap();
    let (ca, cert, key) = private_ca(&pki);
    let registry = TestRegistry::start_with(None, Some((&cert, &key)));
    let (root_a, root_b, home) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("home"),
    );
    fs::create_dir_all(&home).unwrap();
    let name = format!("{}/apps/demo:v1", registry.host());
    let digest = build_image(&root_a, &name);
    let store_a = Store::open(&root_a).unwrap();
    let reference = Reference::parse(&name).unwrap();
    let mut opts = plain_opts(work.path());
    opts.insecure = false;

    let err = registry::push(&store_a, &reference, &opts, &|_| {}).unwrap_err();
    let text = err.to_string();
    eprintln!("push to a registry with an unknown CA: {text}");
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert!(
        text.contains("UnknownIssuer") && text.contains("--ca-file"),
        "{text}"
    );

    opts.ca_file = Some(ca.clone());
    let report = registry::push(&store_a, &reference, &opts, &|_| {}).unwrap();
    assert_eq!(report.digest, digest);

    let out = sealer(
        &root_b,
        &home,
        &["pull", "--ca-file", ca.to_str().unwrap(), &name],
        None,
    );
    assert!(
        out.status.success(),
        "pull over TLS failed: {}",
        stderr(&out)
    );
    assert_eq!(
        Store::open(&root_b)
            .unwrap()
            .image_by_name(&name)
            .unwrap()
            .digest,
        digest
    );
}

#[test]
fn push_cut_mid_layer_fails_clearly_and_registry_has_no_manifest() {
    let registry = TestRegistry::start(None);
    let relay = CuttingRelay::start(registry.port, 8 << 20, false);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let via_relay = format!("127.0.0.1:{}/apps/demo:v1", relay.port);
    build_image(&root, &via_relay);
    let index_before = fs::read(root.join("oci/index.json")).unwrap();
    let store = Store::open(&root).unwrap();
    let err = registry::push(
        &store,
        &Reference::parse(&via_relay).unwrap(),
        &plain_opts(work.path()),
        &|_| {},
    )
    .expect_err("push succeeded through a relay cut mid-layer");
    let text = err.to_string();
    eprintln!("push through the cut relay: {text}");
    assert!(
        text.contains(&format!("registry 127.0.0.1:{}", relay.port)),
        "{text}"
    );
    assert_eq!(fs::read(root.join("oci/index.json")).unwrap(), index_before);
    assert_blobs_intact(&root);
    assert_eq!(
        skopeo_digest(&format!("{}/apps/demo:v1", registry.host())),
        None
    );
}

#[test]
fn one_dropped_connection_mid_layer_is_retried_for_push_and_pull() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (work.path().join("a"), work.path().join("b"));
    let opts = plain_opts(work.path());

    let relay = CuttingRelay::start(registry.port, 8 << 20, true);
    let via_relay = format!("127.0.0.1:{}/apps/demo:v1", relay.port);
    let digest = build_image(&root_a, &via_relay);
    let retries = Mutex::new(Vec::new());
    let record = |p: sealer::registry::Progress| {
        if let ProgressEvent::Retrying { error, .. } = p.event {
            retries.lock().unwrap().push(error);
        }
    };
    registry::push(
        &Store::open(&root_a).unwrap(),
        &Reference::parse(&via_relay).unwrap(),
        &opts,
        &record,
    )
    .unwrap();
    assert_eq!(
        retries.lock().unwrap().len(),
        1,
        "{:?}",
        retries.lock().unwrap()
    );
    assert_eq!(
        skopeo_digest(&format!("{}/apps/demo:v1", registry.host())).as_deref(),
        Some(digest.as_str())
    );

    retries.lock().unwrap().clear();
    let relay = CuttingRelay::start(registry.port, 8 << 20, true);
    let via_relay = format!("127.0.0.1:{}/apps/demo:v1", relay.port);
    let image = registry::pull(
        &Store::open(&root_b).unwrap(),
        &Reference::parse(&via_relay).unwrap(),
        &opts,
        &record,
    )
    .unwrap();
    assert_eq!(
        retries.lock().unwrap().len(),
        1,
        "{:?}",
        retries.lock().unwrap()
    );
    assert_eq!(image.digest, digest);
    assert_blobs_intact(&root_b);
}

#[test]
fn token_auth_registry_works_after_login_and_refuses_wrong_password() {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    fs::create_dir_all(&pki).unwrap();
    let tokens = TokenServer::start(&pki);
    let registry = TestRegistry::launch(
        Auth::Token {
            realm: tokens.realm(),
            bundle: pki.join("token.pem"),
        },
        None,
    );
    let (root, root_b, home) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("home"),
    );
    fs::create_dir_all(&home).unwrap();
    let name = format!("{}/apps/demo:v1", registry.host());
    let digest = build_image(&root, &name);

    let out = sealer(&root, &home, &["push", "--insecure", &name], None);
    assert!(
        !out.status.success(),
        "anonymous push to a token registry succeeded"
    );
    let err = stderr(&out);
    eprintln!("anonymous push to the token registry: {err}");
    assert!(
        err.contains(&format!("sealer login {}", registry.host())),
        "{err}"
    );

    let login = |password: &str| {
        sealer(
            &root,
            &home,
            &[
                "login",
                "--insecure",
                &registry.host(),
                "-u",
                "alice",
                "--password-stdin",
            ],
            Some(password),
        )
    };
    let out = login("wrong");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rejected the user name or password"),
        "{}",
        stderr(&out)
    );
    assert!(!root.join("auth.json").exists());
    let out = login("secret");
    assert!(out.status.success(), "login failed: {}", stderr(&out));

    let out = sealer(&root, &home, &["push", "--insecure", &name], None);
    assert!(
        out.status.success(),
        "push with a token failed: {}",
        stderr(&out)
    );
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--creds",
            "alice:secret",
            &format!("docker://{name}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Digest"].as_str(), Some(digest.as_str()));

    fs::copy(root.join("auth.json"), work.path().join("auth-copy.json")).unwrap();
    let mut opts = plain_opts(work.path());
    opts.auth_file = work.path().join("auth-copy.json");
    let image = registry::pull(
        &Store::open(&root_b).unwrap(),
        &Reference::parse(&name).unwrap(),
        &opts,
        &|_| {},
    )
    .unwrap();
    assert_eq!(image.digest, digest);
}

#[test]
fn pull_of_an_index_takes_the_linux_amd64_image() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (work.path().join("a"), work.path().join("b"));
    let amd64 = build_image(&root_a, "local/multi:amd64");
    let store_a = Store::open(&root_a).unwrap();
    let small = tar::files(&[("arch", b"arm64\n")]);
    let arm64 = commit_for(
        &store_a,
        "local/multi:arm64",
        "arm64",
        vec![zstd_layer(&store_a, &small)],
    );

    // An OCI layout holding an index over both, copied to the registry by skopeo.
    let layout = work.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    for entry in fs::read_dir(store_a.oci_dir().join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(
            entry.path(),
            layout.join("blobs/sha256").join(entry.file_name()),
        )
        .unwrap();
    }
    let size_of = |d: &str| fs::metadata(store_a.blob_path(d).unwrap()).unwrap().len();
    let entry = |digest: &str, arch: &str| {
        serde_json::json!({
            "mediaType": MEDIA_TYPE_MANIFEST, "digest": digest, "size": size_of(digest),
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&arm64, "arm64"), entry(&amd64, "amd64")],
    }))
    .unwrap();
    let index_digest = sha256(&index);
    fs::write(
        layout
            .join("blobs/sha256")
            .join(index_digest.trim_start_matches("sha256:")),
        &index,
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index_digest, "size": index.len(),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    let remote = format!("{}/apps/multi:v1", registry.host());
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", layout.display()),
            &format!("docker://{remote}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{remote}"),
        ])
        .output()
        .unwrap();
    assert_eq!(raw.stdout, index, "the tag does not point at the index");

    let image = registry::pull(
        &Store::open(&root_b).unwrap(),
        &Reference::parse(&remote).unwrap(),
        &plain_opts(work.path()),
        &|_| {},
    )
    .unwrap();
    assert_eq!(image.digest, amd64);
    assert_eq!(image.config.architecture, "amd64");
    assert_blobs_intact(&root_b);
}

#[test]
fn kubefile_from_a_registry_image_pulls_the_base_when_it_is_not_in_the_store() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let image = format!("{}/base/hello:v1", registry.host());
    build_image(a.path(), &image);
    let out = sealer(a.path(), home.path(), &["push", "--insecure", &image], None);
    assert!(out.status.success(), "{}", stderr(&out));

    let b = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("app.conf"), "x=1\n").unwrap();
    fs::write(
        ctx.path().join("Kubefile"),
        format!("FROM {image}\nCOPY app.conf /etc/\n"),
    )
    .unwrap();
    let out = store::command(Path::new(SEALER), b.path())
        .args(["build", "-t", "app:1", ctx.path().to_str().unwrap()])
        .env("HOME", home.path())
        .env("SEALER_INSECURE_REGISTRIES", registry.host())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let store = Store::open(b.path()).unwrap();
    let base = store
        .image(&Reference::parse(&image).unwrap())
        .expect("the base was pulled into the store");
    let app = store.image(&Reference::parse("app:1").unwrap()).unwrap();
    assert_eq!(app.manifest.layers.len(), base.manifest.layers.len() + 1);
    assert_eq!(
        app.manifest.layers[..base.manifest.layers.len()],
        base.manifest.layers[..]
    );
}

#[test]
fn sealer_build_pulls_a_from_image_with_its_own_connection_flags() {
    // `--insecure` and `--ca-file` of `sealer build` reach the pull of a FROM image that is not in
    // the store, as they do for `sealer pull`; no environment variable is needed.
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    fs::create_dir_all(&pki).unwrap();
    let (ca, cert, key) = private_ca(&pki);
    let plain = TestRegistry::start(None);
    let tls = TestRegistry::start_with(None, Some((&cert, &key)));
    let home = work.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let ctx = work.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("app.conf"), "x=1\n").unwrap();

    for (registry, flags) in [
        (&plain, vec!["--insecure".to_string()]),
        (
            &tls,
            vec!["--ca-file".to_string(), ca.to_str().unwrap().to_string()],
        ),
    ] {
        let root_a = tempfile::tempdir().unwrap();
        let image = format!("{}/base/small:v1", registry.host());
        let store_a = Store::open(root_a.path()).unwrap();
        let layer = zstd_layer(
            &store_a,
            &tar::files(&[("etc/motd", b"hello from sealer\n")]),
        );
        commit(&store_a, &image, vec![layer]);
        let mut opts = plain_opts(&home);
        opts.insecure = flags[0] == "--insecure";
        opts.ca_file = Some(ca.clone());
        registry::push(&store_a, &Reference::parse(&image).unwrap(), &opts, &|_| {}).unwrap();

        fs::write(
            ctx.join("Kubefile"),
            format!("FROM {image}\nCOPY app.conf /etc/\n"),
        )
        .unwrap();
        let root_b = tempfile::tempdir().unwrap();
        let build = |extra: &[String]| {
            let mut args = vec!["build", "-t", "app:1"];
            args.extend(extra.iter().map(String::as_str));
            args.push(ctx.to_str().unwrap());
            sealer(root_b.path(), &home, &args, None)
        };
        let out = build(&[]);
        assert!(
            !out.status.success(),
            "{image} without {flags:?} must not be reachable"
        );
        let out = build(&flags);
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        let store_b = Store::open(root_b.path()).unwrap();
        let base = store_b.image(&Reference::parse(&image).unwrap()).unwrap();
        let app = store_b.image(&Reference::parse("app:1").unwrap()).unwrap();
        assert_eq!(app.manifest.layers[0], base.manifest.layers[0]);
        assert_eq!(app.manifest.layers.len(), 2);
    }
}
