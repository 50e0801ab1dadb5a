//! Hostile or broken input to `build`, `load`, `pack` and the printing commands, through the real
//! binaries: crafted OCI archives and `.run` packages, Kubefiles that try to exhaust memory or
//! hang the build, links that leave the image root, killed processes' leftovers, closed pipes.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::store::{sha256, text, Sealer, SEALER, STUB};
use support::tar::tar_of;

/// `sealer build -t x:1 CONTEXT`, whatever its outcome.
fn build(env: &Sealer, context: &Path) -> Output {
    env.run(&["build", "-t", "x:1", context.to_str().unwrap()])
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// An OCI archive read into memory: entry name → content, in name order.
struct Archive(BTreeMap<String, Vec<u8>>);

impl Archive {
    fn read(path: &Path) -> Archive {
        let bytes = fs::read(path).unwrap();
        let mut tar = tar::Archive::new(&bytes[..]);
        let mut entries = BTreeMap::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type().is_dir() {
                continue;
            }
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            std::io::copy(&mut entry, &mut content).unwrap();
            entries.insert(name, content);
        }
        Archive(entries)
    }

    fn write(&self, path: &Path) {
        let mut b = tar::Builder::new(Vec::new());
        for (name, content) in &self.0 {
            let mut h = tar::Header::new_ustar();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, &content[..]).unwrap();
        }
        fs::write(path, b.into_inner().unwrap()).unwrap();
    }

    fn blob(&self, digest: &str) -> &[u8] {
        &self.0[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))]
    }

    fn put_blob(&mut self, bytes: Vec<u8>) -> String {
        let digest = sha256(&bytes);
        self.0.insert(
            format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
            bytes,
        );
        digest
    }

    fn index(&self) -> serde_json::Value {
        json(&self.0["index.json"])
    }

    fn manifest(&self) -> serde_json::Value {
        let digest = self.index()["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        json(self.blob(&digest))
    }

    fn config(&self) -> serde_json::Value {
        let manifest = self.manifest();
        json(self.blob(manifest["config"]["digest"].as_str().unwrap()))
    }

    /// Store `manifest` and point the index at it.
    fn set_manifest(&mut self, manifest: &serde_json::Value) {
        let bytes = to_json(manifest);
        let size = bytes.len();
        let digest = self.put_blob(bytes);
        let mut index = self.index();
        index["manifests"][0]["digest"] = digest.into();
        index["manifests"][0]["size"] = size.into();
        self.0.insert("index.json".into(), to_json(&index));
    }

    /// Store `config`, and a manifest naming it.
    fn set_config(&mut self, config: &serde_json::Value) {
        let bytes = to_json(config);
        let size = bytes.len();
        let digest = self.put_blob(bytes);
        let mut manifest = self.manifest();
        manifest["config"]["digest"] = digest.into();
        manifest["config"]["size"] = size.into();
        self.set_manifest(&manifest);
    }
}

/// The hello image saved to an archive, read back for editing.
fn saved_hello(env: &Sealer) -> Archive {
    env.hello();
    let path = env.path("hello.tar");
    env.ok(&["save", "-o", path.to_str().unwrap(), "hello:v1"]);
    Archive::read(&path)
}

/// `sealer load` of `archive` into a fresh store: must fail naming `words`, storing nothing.
fn assert_load_refused(env: &Sealer, archive: &Archive, name: &str, words: &[&str]) {
    let path = env.path(&format!("{name}.tar"));
    archive.write(&path);
    let out = env.run_in(
        Path::new(SEALER),
        &["load", "-i", path.to_str().unwrap()],
        name,
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{name} was loaded: {err}");
    for w in words {
        assert!(err.contains(w), "{name}: {w:?} not in {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        env.blobs(name),
        Vec::<String>::new(),
        "{name}: blobs stored"
    );
}

#[test]
fn load_refuses_image_names_over_255_characters() {
    let env = Sealer::new();
    let mut archive = saved_hello(&env);
    let mut index = archive.index();
    let long = format!("reg.io/{}:v1", "a".repeat(300));
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = long.into();
    archive.0.insert("index.json".into(), to_json(&index));
    assert_load_refused(&env, &archive, "long-name", &["255"]);
}

#[test]
fn load_refuses_an_archive_whose_manifest_lists_a_layer_it_lacks() {
    let env = Sealer::new();
    let mut archive = saved_hello(&env);
    let manifest = archive.manifest();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(layers.len() >= 2);
    let last = layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    archive.0.remove(&format!(
        "blobs/sha256/{}",
        last.trim_start_matches("sha256:")
    ));
    assert_load_refused(&env, &archive, "missing-layer", &[&last, "missing"]);
}

#[test]
fn load_refuses_an_archive_whose_diff_ids_or_sizes_do_not_match_its_layers() {
    let env = Sealer::new();
    let archive = saved_hello(&env);
    let first_layer = archive.manifest()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // A diff_id that is not what the first layer unpacks to.
    let mut wrong = Archive(archive.0.clone());
    let mut config = wrong.config();
    config["rootfs"]["diff_ids"][0] = format!("sha256:{}", "0".repeat(64)).into();
    wrong.set_config(&config);
    assert_load_refused(&env, &wrong, "wrong-diff-id", &["layer 1", &first_layer]);

    // One diff_id fewer than layers.
    let mut short = Archive(archive.0.clone());
    let mut config = short.config();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    short.set_config(&config);
    assert_load_refused(&env, &short, "short-diff-ids", &["diff_ids"]);

    // A layer descriptor whose size is not the blob's.
    let mut sized = Archive(archive.0.clone());
    let mut manifest = sized.manifest();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    manifest["layers"][0]["size"] = (size + 1).into();
    sized.set_manifest(&manifest);
    assert_load_refused(&env, &sized, "wrong-size", &[&first_layer, "bytes"]);

    // The untouched archive still loads.
    let path = env.path("good.tar");
    archive.write(&path);
    let out = env.run_in(
        Path::new(SEALER),
        &["load", "-i", path.to_str().unwrap()],
        "good",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Pack the store's hello:v1 with the image manifest and config edited by `edit`; returns the
/// `.run` path.
fn crafted_package(
    env: &Sealer,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) -> PathBuf {
    let store = sealer::store::Store::open(env.path("store")).unwrap();
    let image = store.image_by_name("hello:v1").unwrap();
    let mut manifest = json(&store.read_blob(&image.digest).unwrap());
    let mut config = json(&store.read_blob(&image.manifest.config.digest).unwrap());
    let layers: Vec<packer::LayerBlob> = image
        .manifest
        .layers
        .iter()
        .zip(&image.config.rootfs.diff_ids)
        .map(|(desc, diff_id)| packer::LayerBlob {
            path: store.blob_path(&desc.digest).unwrap(),
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            diff_id: diff_id.clone(),
            frames: store.frame_index(&desc.digest),
            keep_frames: false,
        })
        .collect();
    edit(&mut manifest, &mut config);
    let config_json = String::from_utf8(to_json(&config)).unwrap();
    manifest["config"]["digest"] = sha256(config_json.as_bytes()).into();
    manifest["config"]["size"] = config_json.len().into();
    let manifest_json = String::from_utf8(to_json(&manifest)).unwrap();
    let output = env.path(name);
    packer::write(
        &packer::PackSpec {
            stub: PathBuf::from(STUB),
            image_name: "hello:v1".into(),
            manifest_digest: sha256(manifest_json.as_bytes()),
            manifest_json,
            config_digest: sha256(config_json.as_bytes()),
            config_json,
            layers,
            compression: packer::Compression::Zstd,
            level: None,
            split_size: None,
            output: output.clone(),
        },
        None,
    )
    .unwrap();
    output
}

/// `app.run load` into a fresh store: must fail naming `words`, storing nothing.
fn assert_package_refused(env: &Sealer, run: &Path, words: &[&str]) {
    let root = format!("{}-store", run.file_name().unwrap().to_string_lossy());
    let out = env.run_in(run, &["load"], &root);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{} was loaded: {err}", run.display());
    for w in words {
        assert!(err.contains(w), "{}: {w:?} not in {err}", run.display());
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(env.blobs(&root), Vec::<String>::new(), "blobs stored");
}

#[test]
fn app_run_load_refuses_a_package_whose_manifest_or_config_does_not_match_its_layers() {
    let env = Sealer::new();
    env.hello();
    let absent = format!("sha256:{}", "e".repeat(64));
    let extra = crafted_package(&env, "extra-layer.run", |manifest, config| {
        let mut layer = manifest["layers"][0].clone();
        layer["digest"] = absent.clone().into();
        manifest["layers"].as_array_mut().unwrap().push(layer);
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(format!("sha256:{}", "f".repeat(64)).into());
    });
    assert_package_refused(&env, &extra, &[&absent, "does not carry"]);

    let short = crafted_package(&env, "short-diff-ids.run", |_, config| {
        config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    });
    assert_package_refused(&env, &short, &["diff_ids"]);

    // The config claims other content for layer 1 than the layer holds (and the package's own
    // record of the layer agrees with the layer).
    let wrong = format!("sha256:{}", "0".repeat(64));
    let swapped = crafted_package(&env, "wrong-diff-id.run", |_, config| {
        config["rootfs"]["diff_ids"][0] = wrong.clone().into();
    });
    assert_package_refused(&env, &swapped, &["layer 1", &wrong]);

    let sized = crafted_package(&env, "wrong-size.run", |manifest, _| {
        let size = manifest["layers"][0]["size"].as_u64().unwrap();
        manifest["layers"][0]["size"] = (size + 1).into();
    });
    assert_package_refused(&env, &sized, &["layer 1", "bytes"]);

    let good = crafted_package(&env, "good.run", |_, _| {});
    let out = env.run_in(&good, &["load"], "good-store");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A process id that was just used and is no longer running.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn killed_builds_and_loads_leave_nothing_in_the_store_tmp_after_the_next_start() {
    let env = Sealer::new();
    env.ok(&["images"]);
    let tmp = env.path("store/tmp");
    let dead = dead_pid();
    let live = std::process::id();
    fs::write(tmp.join(format!("blob-{dead}-Ab12Cd")), b"half a layer").unwrap();
    let tree = tmp.join(format!("build-{dead}-Xy34Zw"));
    fs::create_dir_all(tree.join("rootfs/usr/share")).unwrap();
    fs::write(tree.join("rootfs/usr/share/file"), b"x").unwrap();
    // A RUN may leave read-only directories.
    Command::new("chmod")
        .args(["-R", "a-w", tree.to_str().unwrap()])
        .status()
        .unwrap();
    let running = tmp.join(format!("blob-{live}-Ef56Gh"));
    fs::write(&running, b"being written").unwrap();
    env.ok(&["images"]);
    let left: Vec<String> = fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![format!("blob-{live}-Ef56Gh")]);
}

#[test]
fn pack_removes_partial_files_that_killed_packs_left_beside_its_output() {
    let env = Sealer::new();
    env.hello();
    let out_dir = env.path("out");
    fs::create_dir_all(&out_dir).unwrap();
    let dead = dead_pid();
    let live = std::process::id();
    let stale = [
        format!(".hello.run.partial-{dead}"),
        format!(".hello.run.v001.partial-{dead}"),
        format!(".sealer-pack-{dead}-0"),
    ];
    let kept = [
        format!(".hello.run.partial-{live}"),
        format!(".other.run.partial-{dead}"),
        "notes.txt".to_string(),
    ];
    for name in stale.iter().chain(&kept) {
        if name.starts_with(".sealer-pack-") {
            fs::create_dir_all(out_dir.join(name).join("layer-0")).unwrap();
        } else {
            fs::write(out_dir.join(name), b"partial").unwrap();
        }
    }
    let output = out_dir.join("hello.run");
    env.ok(&["pack", "hello:v1", "-o", output.to_str().unwrap()]);
    let mut left: Vec<String> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = kept.to_vec();
    want.push("hello.run".into());
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn an_arg_expansion_bomb_is_refused_with_file_and_line() {
    let env = Sealer::new();
    // Each line is ten copies of the one before: 100 bytes grow to 100 MB by line 8.
    let mut kubefile = format!("FROM scratch\nARG A0={}\n", "x".repeat(100));
    for i in 1..=6 {
        let p = i - 1;
        kubefile.push_str(&format!("ARG A{i}={}\n", format!("${{A{p}}}").repeat(10)));
    }
    kubefile.push_str("LABEL bomb=${A6}\n");
    let ctx = env.context("bomb", &[("Kubefile", kubefile.as_bytes())]);
    let out = build(&env, &ctx);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the bomb was built");
    // A4 is 1 MB; A5 would be 10 MB.
    assert!(
        err.contains("Kubefile:7") && err.contains("1048576 bytes"),
        "{err}"
    );
    assert!(
        err.len() < 2000,
        "the error repeats the value: {} bytes",
        err.len()
    );
}

#[test]
fn a_run_ends_when_its_shell_ends_even_with_background_processes() {
    let env = Sealer::new();
    let pids = env.path("pids");
    fs::create_dir_all(&pids).unwrap();
    let kubefile = format!(
        "FROM scratch\nRUN sleep 60 & echo $! > {dir}/group; echo started\n\
         RUN setsid sleep 60 & echo $! > {dir}/escaped; echo again\n",
        dir = pids.display()
    );
    let ctx = env.context("bg", &[("Kubefile", kubefile.as_bytes())]);
    let started = Instant::now();
    let out = build(&env, &ctx);
    let took = started.elapsed();
    let read_pid = |name: &str| -> i32 {
        fs::read_to_string(pids.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let escaped = read_pid("escaped");
    let group = read_pid("group");
    unsafe { libc::kill(escaped, libc::SIGKILL) };
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("started"));
    assert!(took < Duration::from_secs(20), "the build took {took:?}");
    // What the RUN left in its process group was killed with it.
    let alive = unsafe { libc::kill(group, 0) } == 0
        && !fs::read_to_string(format!("/proc/{group}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "the background sleep {group} still runs");
}

#[test]
fn build_refuses_nul_in_env_and_symlinks_that_leave_the_image_root() {
    let env = Sealer::new();

    let ctx = env.context("nul", &[("Kubefile", b"FROM scratch\nENV A=a\0b\n")]);
    let out = build(&env, &ctx);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "ENV with NUL was built");
    assert!(err.contains("Kubefile:2") && err.contains("NUL"), "{err}");

    let ctx = env.context(
        "copy-link",
        &[("Kubefile", b"FROM scratch\nCOPY dir /app/conf/\n")],
    );
    fs::create_dir_all(ctx.join("dir/sub")).unwrap();
    std::os::unix::fs::symlink("../../../../etc", ctx.join("dir/sub/x")).unwrap();
    let out = build(&env, &ctx);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "an escaping symlink was copied");
    assert!(
        err.contains("Kubefile:2") && err.contains("dir/sub/x") && err.contains("../../../../etc"),
        "{err}"
    );

    let ctx = env.context(
        "add-link",
        &[("Kubefile", b"FROM scratch\nADD links.tar /opt/\n")],
    );
    let links = tar_of(&[], &[("a/evil", "../../../etc/cron.d")]);
    fs::write(ctx.join("links.tar"), links).unwrap();
    let out = build(&env, &ctx);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "an escaping symlink was unpacked");
    assert!(
        err.contains("Kubefile:2") && err.contains("links.tar") && err.contains("a/evil"),
        "{err}"
    );

    // Links that stay inside, absolute ones counted from the image root, are fine.
    let ctx = env.context(
        "good-links",
        &[("Kubefile", b"FROM scratch\nCOPY dir /app/\n")],
    );
    fs::create_dir_all(ctx.join("dir/sub")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ctx.join("dir/sub/abs")).unwrap();
    std::os::unix::fs::symlink("../../x", ctx.join("dir/sub/up")).unwrap();
    let out = build(&env, &ctx);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_long_kubefile_line_is_echoed_shortened() {
    let env = Sealer::new();
    let value = "v".repeat(1 << 20);
    let ctx = env.context(
        "long",
        &[(
            "Kubefile",
            format!("FROM scratch\nLABEL big={value}\n").as_bytes(),
        )],
    );
    let out = build(&env, &ctx);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.len() < 4096, "{} bytes echoed", stdout.len());
    assert!(
        stdout.contains(&format!("({} bytes)", "LABEL big=".len() + value.len())),
        "{stdout}"
    );
}

/// Run `program args` with its stdout closed before it writes; it must end without a panic.
fn assert_quiet_on_closed_stdout(env: &Sealer, program: &Path, args: &[&str]) {
    let mut child = env
        .command_in(program, args, "store")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{args:?}: {:?} {err}",
        out.status
    );
}

#[test]
fn closed_pipes_end_printing_commands_quietly() {
    let env = Sealer::new();
    env.hello();
    let run = env.path("hello.run");
    env.ok(&["pack", "hello:v1", "-o", run.to_str().unwrap()]);
    let sealer = Path::new(SEALER);
    assert_quiet_on_closed_stdout(&env, sealer, &["inspect", "hello:v1"]);
    assert_quiet_on_closed_stdout(&env, sealer, &["images", "--json"]);
    assert_quiet_on_closed_stdout(&env, &run, &["inspect", "--json"]);
    assert_quiet_on_closed_stdout(&env, &run, &[]);
}
