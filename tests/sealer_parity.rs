//! Images written the way sealer's users write them behave as sealer's files say: a sealer-style
//! base image (`bin/`, `etc/`, `scripts/`) and an app image built on it with `COPY FILE DIR`,
//! `.tmpl` files, ARG defaults for CMD and required variables (refused, or asked for on a
//! terminal); installed with the real `sealer` on this machine (`--local` into a data root of
//! the test's own).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::store::{both, command, write, Sealer, SEALER};

/// `sealer run IMAGE --local --data-root DATA EXTRA...`.
fn local_run(store: &Sealer, image: &str, data: &Path, extra: &[&str]) -> Output {
    let mut c: Command = command(Path::new(SEALER), &store.root());
    c.args(["run", image, "--local", "--data-root"])
        .arg(data)
        .args(extra);
    c.output().unwrap()
}

fn rootfs(data: &Path) -> PathBuf {
    data.join("my-cluster/rootfs")
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The base image every test starts from: sealer's rootfs layout.
fn base(store: &Sealer) {
    store.build_from(
        "base:v1",
        "FROM scratch\nCOPY rootfs .\n",
        &[
            ("rootfs/bin/kubeadm", b"#!/bin/sh\necho kubeadm\n"),
            ("rootfs/bin/kubectl", b"#!/bin/sh\necho kubectl\n"),
            ("rootfs/etc/kubelet.service", b"[Unit]\n"),
            ("rootfs/scripts/init.sh", b"echo init\n"),
        ],
    );
}

#[test]
fn copy_of_a_file_onto_a_base_directory_goes_into_it_and_directories_merge() {
    let store = Sealer::new();
    base(&store);
    store.build_from(
        "app:v1",
        "FROM base:v1\nCOPY kubeadm.yml etc\nCOPY extra.sh scripts\nCOPY more bin\nCOPY new.conf conf\n",
        &[
            ("kubeadm.yml", b"kind: ClusterConfiguration\n"),
            ("extra.sh", b"echo extra\n"),
            ("more/helm", b"#!/bin/sh\necho helm\n"),
            ("new.conf", b"x=1\n"),
        ],
    );
    let data = store.path("data");
    let out = local_run(&store, "app:v1", &data, &[]);
    assert!(out.status.success(), "{}", both(&out));
    let root = rootfs(&data);
    // A file onto an existing directory: into it; the base's files stay.
    assert_eq!(
        read(root.join("etc/kubeadm.yml")),
        "kind: ClusterConfiguration\n"
    );
    assert_eq!(read(root.join("etc/kubelet.service")), "[Unit]\n");
    assert_eq!(read(root.join("scripts/extra.sh")), "echo extra\n");
    assert_eq!(read(root.join("scripts/init.sh")), "echo init\n");
    // A directory onto a directory merges.
    assert!(root.join("bin/helm").is_file());
    assert!(root.join("bin/kubeadm").is_file());
    // A file onto a path the image does not have: that path is the file (Docker's rule).
    assert_eq!(read(root.join("conf")), "x=1\n");
    // The history says where the file went.
    let info = store.inspect("app:v1");
    let text = info.to_string();
    assert!(text.contains("COPY kubeadm.yml etc/"), "{text}");
}

#[test]
fn templates_render_at_install_with_the_cluster_env_and_again_when_it_changes() {
    let store = Sealer::new();
    base(&store);
    let tmpl = "port: {{ .Port }}\nmode: {{ .Mode | default \"single\" }}\n{{- if .Tls }}\ntls: on\n{{- end }}\n";
    store.build_from(
        "tmpl:v1",
        "FROM base:v1\nENV Port=80\nCOPY app.conf.tmpl etc\n",
        &[("app.conf.tmpl", tmpl.as_bytes())],
    );
    let data = store.path("data");
    let out = local_run(&store, "tmpl:v1", &data, &[]);
    assert!(out.status.success(), "{}", both(&out));
    let conf = rootfs(&data).join("etc/app.conf");
    assert_eq!(read(conf.clone()), "port: 80\nmode: single\n");
    assert!(rootfs(&data).join("etc/app.conf.tmpl").is_file());

    // Same env: nothing to do.
    let out = local_run(&store, "tmpl:v1", &data, &[]);
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("rendered etc/app.conf"), "{text}");

    // A changed env renders again: -e beats the image's ENV.
    let out = local_run(
        &store,
        "tmpl:v1",
        &data,
        &["-e", "Port=8443", "-e", "Tls=yes"],
    );
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rendered etc/app.conf"), "{text}");
    assert_eq!(read(conf), "port: 8443\nmode: single\ntls: on\n");
}

/// The image's bill of materials lists no `*.tmpl`, so rendering does not walk its tree; a Config
/// that writes one still gets it rendered, and an image built without a bill of materials is
/// walked as before.
#[test]
fn a_template_written_by_a_config_renders_though_the_image_lists_none() {
    let store = Sealer::new();
    base(&store);
    let data = store.path("data");
    let clusterfile = store.path("Clusterfile");
    fs::write(
        &clusterfile,
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: my-cluster\nspec:\n  image: base:v1\n  hosts:\n    - ips: [127.0.0.1]\n      roles: [master]\n---\napiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: site\nspec:\n  path: etc/site.conf.tmpl\n  data: |\n    port={{ .Port }}\n",
    )
    .unwrap();
    let out = local_run(
        &store,
        "base:v1",
        &data,
        &["-f", clusterfile.to_str().unwrap(), "-e", "Port=81"],
    );
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(read(rootfs(&data).join("etc/site.conf")), "port=81\n");

    // Without a bill of materials the tree is walked: a template the image carries renders.
    let mut build: Command = command(Path::new(SEALER), &store.root());
    let context = store.path("nosbom");
    write(&context.join("app.conf.tmpl"), b"port={{ .Port }}\n");
    write(
        &context.join("Kubefile"),
        b"FROM base:v1\nCOPY app.conf.tmpl etc\n",
    );
    let built = build
        .args(["build", "--no-sbom", "-t", "nosbom:v1"])
        .arg(&context)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", both(&built));
    let data = store.path("data-nosbom");
    let out = local_run(&store, "nosbom:v1", &data, &["-e", "Port=82"]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(read(rootfs(&data).join("etc/app.conf")), "port=82\n");
}

#[test]
fn a_template_with_an_unknown_function_is_refused_at_build_with_its_line() {
    let store = Sealer::new();
    let ctx = store.context(
        "bad-tmpl",
        &[
            ("Kubefile", b"FROM scratch\nCOPY etc etc\n"),
            ("etc/ok.conf", b"x\n"),
            ("etc/app.conf.tmpl", b"a: 1\nb: {{ .B | upper }}\n"),
        ],
    );
    let out = store.run(&["build", "-t", "bad:v1", ctx.to_str().unwrap()]);
    let text = both(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Kubefile:2: ")
            && text.contains("etc/app.conf.tmpl:2: unknown function `upper`"),
        "{text}"
    );
    assert!(
        !store.ok(&["images"]).contains("bad"),
        "nothing may be stored"
    );
}

#[test]
fn arg_defaults_reach_cmd_and_cmd_args_env_files_and_dash_e_override_them_in_order() {
    let store = Sealer::new();
    let kubefile = "FROM scratch\nARG Version=4.0.0\nARG Tier=gold\nARG Zone=a\nCOPY x x\nCMD echo \"v=${Version} t=${Tier} z=${Zone} r=$(REGION)\" > cmd.out\n";
    store.build_from("args:v1", kubefile, &[("x", b"x")]);
    let data = store.path("data");
    let out = local_run(&store, "args:v1", &data, &[]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(
        read(rootfs(&data).join("cmd.out")),
        "v=4.0.0 t=gold z=a r=\n"
    );

    let env_file = store.path("site.env");
    write(
        &env_file,
        b"# site values\nTier=silver\nexport Zone=\"b\"\nREGION=eu\n",
    );
    let out = local_run(
        &store,
        "args:v1",
        &data,
        &[
            "--cmd-args",
            "Version=5.0,Tier=bronze",
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "Zone=c",
        ],
    );
    assert!(out.status.success(), "{}", both(&out));
    // --cmd-args beats the ARG default, the env file beats --cmd-args, -e beats the env file;
    // $(REGION) was read as the variable, not run as a command.
    assert_eq!(
        read(rootfs(&data).join("cmd.out")),
        "v=5.0 t=silver z=c r=eu\n"
    );
}

#[test]
fn a_required_variable_without_value_refuses_the_install_naming_it_and_installs_nothing() {
    let store = Sealer::new();
    store.build_from(
        "req:v1",
        "FROM scratch\nLABEL sealer.io/required-vars=\"DB_PASSWORD ADMIN\"\nCOPY x x\nCMD echo \"$DB_PASSWORD\" > pw\n",
        &[("x", b"x")],
    );
    let data = store.path("data");
    let out = local_run(&store, "req:v1", &data, &["-e", "ADMIN=root"]);
    let text = both(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("requires DB_PASSWORD"), "{text}");
    assert!(!text.contains("ADMIN="), "{text}");
    assert!(!rootfs(&data).exists(), "nothing may be installed: {text}");

    let out = local_run(
        &store,
        "req:v1",
        &data,
        &["-e", "ADMIN=root", "-e", "DB_PASSWORD=s3cret"],
    );
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(read(rootfs(&data).join("pw")), "s3cret\n");
}

/// `sealer run IMAGE --local --data-root DATA EXTRA...` on a terminal (a pty from `script`):
/// each time the screen shows the next of `prompts`, the matching line of `typed` is written.
/// What the terminal showed, and whether sealer succeeded.
fn local_run_on_a_terminal(
    store: &Sealer,
    image: &str,
    data: &Path,
    extra: &[&str],
    answers: &[(&str, &str)],
) -> (String, bool) {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let line = [SEALER, "run", image, "--local", "--data-root"]
        .into_iter()
        .chain(data.to_str())
        .chain(extra.iter().copied())
        .map(support::containerd::sh_quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = command(Path::new("script"), &store.root())
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let shown = Arc::clone(&screen);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = 0;
    for (prompt, typed) in answers {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = screen.lock().unwrap().clone();
            if let Some(at) = now[seen..].find(prompt) {
                seen += at + prompt.len();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no prompt {prompt:?} within 60 s:\n{now}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stdin.write_all(typed.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    // script ends when sealer does; keep its stdin open until then.
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).unwrap();
    }
    let text = format!("{}{stderr}[{status}]", screen.lock().unwrap());
    (text, status.success())
}

#[test]
fn on_a_terminal_a_required_variable_without_value_is_asked_for_and_an_empty_answer_refuses() {
    let store = Sealer::new();
    store.build_from(
        "req:v1",
        "FROM scratch\nLABEL sealer.io/required-vars=\"DB_PASSWORD ADMIN\"\nCOPY x x\nCMD echo \"$DB_PASSWORD by $ADMIN\" > pw\n",
        &[("x", b"x")],
    );
    let data = store.path("data");
    let prompt = "the image requires DB_PASSWORD; value: ";

    // Nothing typed (Enter): refused naming the variable, nothing installed.
    let (screen, ok) = local_run_on_a_terminal(
        &store,
        "req:v1",
        &data,
        &["-e", "ADMIN=root"],
        &[(prompt, "\n")],
    );
    assert!(!ok, "{screen}");
    assert!(screen.contains("requires DB_PASSWORD"), "{screen}");
    assert!(
        !screen.contains("requires ADMIN"),
        "ADMIN has a value (-e), it is not asked for: {screen}"
    );
    assert!(
        !rootfs(&data).exists(),
        "nothing may be installed: {screen}"
    );

    // A value typed at the prompt: asked once, for the variable without a value, and used by
    // the install's CMD like a value given with -e.
    let (screen, ok) = local_run_on_a_terminal(
        &store,
        "req:v1",
        &data,
        &["-e", "ADMIN=root"],
        &[(prompt, "s3cret\n")],
    );
    assert!(ok, "{screen}");
    assert_eq!(screen.matches(prompt).count(), 1, "{screen}");
    assert_eq!(read(rootfs(&data).join("pw")), "s3cret by root\n");
}

/// Writes a sealer-built image as sealer pushes it: an OCI layout whose one layer is gzip and
/// whose manifest carries the `sealer.image.extension` annotation (a shell app `web` in the
/// launch list, env, the hook under v0.5-v0.7's `plugin/`), then pushes it with skopeo to
/// `registry`; its reference.
fn push_sealer_image(work: &Path, registry: &str) -> String {
    use std::io::Write as _;
    let layout = work.join("sealer-layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let put = |bytes: &[u8]| {
        let digest = support::store::sha256(bytes);
        write(
            &layout.join("blobs/sha256").join(&digest["sha256:".len()..]),
            bytes,
        );
        (digest, bytes.len())
    };
    let tar = support::tar::files(&[
        (
            "application/apps/web/web.sh",
            b"echo \"$GREETING from $Site\" > launched.txt\n",
        ),
        ("etc/sealer.conf", b"from sealer\n"),
        (
            "plugin/hook.yaml",
            b"apiVersion: sealer.io/v2\nkind: Plugin\nmetadata:\n  name: old-style\nspec:\n  type: SHELL\n  action: PreInstall\n  data: |\n    echo hooked > hooked.txt\n",
        ),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let (layer, layer_size) = put(&gz.finish().unwrap());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"io.sealer.version": "v0.9.3"}},
        "rootfs": {"type": "layers", "diff_ids": [support::store::sha256(&tar)]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let extension = serde_json::json!({
        "buildClient": {"sealerVersion": "v0.9.3", "buildahVersion": "v1.27.1"},
        "schemaVersion": "v1alpha1",
        "type": "kube-installer",
        "applications": [{"name": "web", "type": "shell", "files": ["web.sh"], "version": "v1",
                          "env": {"GREETING": "hello"}}],
        "launch": {"app_names": ["web"]},
        "env": {"Site": "sealer"},
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer, "size": layer_size}],
        "annotations": {"sealer.image.extension": extension.to_string()},
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    write(&layout.join("index.json"), index.to_string().as_bytes());
    let reference = format!("{registry}/sealerio/web-cluster:v1");
    support::store::tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{reference}"),
        ],
    );
    reference
}

#[test]
fn an_image_sealer_built_installs_with_its_gzip_layer_and_is_a_base_for_launch() {
    let registry = support::registry::TestRegistry::start(None);
    let store = Sealer::new();
    let reference = push_sealer_image(store.dir(), &registry.host());
    store.ok(&["pull", "--insecure", &reference]);

    // sealer run of the pulled image: its gzip layer is installed, its launch list runs the
    // app with the extension's env, its plugin/ hook runs.
    let data = store.path("data");
    let out = local_run(&store, &reference, &data, &[]);
    assert!(out.status.success(), "{}", both(&out));
    let root = rootfs(&data);
    assert_eq!(read(root.join("launched.txt")), "hello from sealer\n");
    assert_eq!(read(root.join("hooked.txt")), "hooked\n");

    // FROM the sealer image + LAUNCH its app (sealer's README pattern), one file into etc/.
    store.build_from(
        "on-sealer:v1",
        &format!("FROM {reference}\nCOPY extra.conf etc\nLAUNCH [\"web\"]\n"),
        &[("extra.conf", b"extra\n")],
    );
    let data = store.path("data2");
    let out = local_run(&store, "on-sealer:v1", &data, &["-e", "Site=here"]);
    assert!(out.status.success(), "{}", both(&out));
    let root = rootfs(&data);
    assert_eq!(read(root.join("launched.txt")), "hello from here\n");
    assert_eq!(read(root.join("etc/extra.conf")), "extra\n");
    assert_eq!(read(root.join("etc/sealer.conf")), "from sealer\n");
}

#[test]
fn sealers_spellings_images_q_digests_rmi_f_and_prune_build_label_and_annotation() {
    let store = Sealer::new();
    let ctx = store.context(
        "spell",
        &[("Kubefile", b"FROM scratch\nCOPY x x\n"), ("x", b"x")],
    );
    store.ok(&[
        "build",
        "-t",
        "spell:v1",
        "--label",
        "team=infra",
        "--annotation",
        "org.example/owner=ops",
        ctx.to_str().unwrap(),
    ]);
    store.ok(&["tag", "spell:v1", "spell:v2"]);
    let text = store.inspect("spell:v1").to_string();
    assert!(text.contains("\"team\":\"infra\""), "{text}");
    assert!(text.contains("\"org.example/owner\":\"ops\""), "{text}");

    // -q: each image once (two names, one image); --digests: the whole digest.
    let ids = store.ok(&["images", "-q"]);
    assert_eq!(ids.lines().count(), 1, "{ids}");
    let listed: serde_json::Value = serde_json::from_str(&store.ok(&["images", "--json"])).unwrap();
    let digest = listed[0]["digest"].as_str().unwrap().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let full = store.ok(&["images", "--digests"]);
    assert!(full.contains(&digest), "{full}");
    assert!(!store.ok(&["images"]).contains(&digest));
    assert!(
        digest.contains(ids.trim().trim_start_matches("sha256:")),
        "{ids}"
    );

    // rmi -f: a name not in the store is skipped; without -f it is an error.
    let out = store.run(&["rmi", "absent:v9"]);
    assert!(!out.status.success(), "{}", both(&out));
    store.ok(&["rmi", "-f", "absent:v9", "spell:v2"]);
    assert!(!store.ok(&["images"]).contains("spell:v2"));
    // --prune alone collects what no image references.
    let stray = store.blob(&format!("sha256:{}", "0".repeat(64)));
    fs::write(&stray, b"left by an interrupted pull").unwrap();
    let out = store.ok(&["rmi", "--prune"]);
    assert!(out.contains("Freed"), "{out}");
    assert!(!stray.exists());
    assert!(store.ok(&["images"]).contains("spell:v1"));
}

#[test]
fn status_refuses_the_flags_only_an_install_uses() {
    let store = Sealer::new();
    for flag in [
        ["--cmds", "true"],
        ["--apps", "web"],
        ["--cmd-args", "A=1"],
        ["--env-file", "x.env"],
    ] {
        let out = store.run(&["status", "--local", flag[0], flag[1]]);
        assert_eq!(out.status.code(), Some(2), "{}", both(&out));
        assert!(both(&out).contains(flag[0]), "{}", both(&out));
    }
}
