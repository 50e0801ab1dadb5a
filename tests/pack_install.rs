//! `sealer pack` → `app.run install --local` / `load`, through the real binaries.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::noise;
use support::store::{fixture, Sealer, SEALER, STUB};

/// Builds the hello fixture and packs it with extra pack arguments; returns the .run path.
fn packed(env: &Sealer, extra: &[&str]) -> PathBuf {
    env.build("hello:v1", &fixture("hello"));
    let out = env.path("hello.run");
    let mut args = vec!["pack", "hello:v1", "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.ok(&args);
    out
}

#[test]
fn packed_image_installs_locally_and_a_second_run_changes_nothing() {
    let env = Sealer::new();
    let run = packed(&env, &[]);
    let data = env.path("data");
    let args = ["install", "--local", "--data-root", data.to_str().unwrap()];
    let first = env.ok_in(&run, &args, "unused");
    assert!(first.contains("installed"), "{first}");
    assert_eq!(
        fs::read_to_string(data.join("my-cluster/app/banner")).unwrap(),
        "hello from sealer v1.0\n"
    );
    assert!(data.join("my-cluster/rootfs/etc/hello.conf").is_file());
    assert!(
        !data.join("my-cluster/rootfs/etc/obsolete.conf").exists(),
        "whiteout not applied"
    );
    // Mark the installed file: a second run must not run the install command again.
    fs::write(data.join("my-cluster/app/banner"), "touched").unwrap();
    let second = env.ok_in(&run, &args, "unused");
    assert!(second.contains("up to date"), "{second}");
    assert_eq!(
        fs::read_to_string(data.join("my-cluster/app/banner")).unwrap(),
        "touched"
    );
}

#[test]
fn load_from_a_package_keeps_every_digest() {
    let env = Sealer::new();
    let run = packed(&env, &[]);
    let original = env.inspect("hello:v1");
    env.ok_in(&run, &["load"], "other");
    let loaded: serde_json::Value =
        serde_json::from_str(&env.ok_in(Path::new(SEALER), &["inspect", "hello:v1"], "other"))
            .unwrap();
    assert_eq!(loaded["digest"], original["digest"]);
    assert_eq!(loaded["layers"], original["layers"]);
}

#[test]
fn xz_package_extracts_the_same_tree_and_loads_with_the_same_diff_ids() {
    let env = Sealer::new();
    let zstd_run = packed(&env, &[]);
    let xz_run = env.path("hello-xz.run");
    env.ok(&[
        "pack",
        "hello:v1",
        "-o",
        xz_run.to_str().unwrap(),
        "--compression",
        "xz",
    ]);
    env.ok_in(
        &zstd_run,
        &["extract", env.path("a").to_str().unwrap()],
        "unused",
    );
    env.ok_in(
        &xz_run,
        &["extract", env.path("b").to_str().unwrap()],
        "unused",
    );
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(env.path("a"))
        .arg(env.path("b"))
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    env.ok_in(&xz_run, &["load"], "other");
    let original = env.inspect("hello:v1");
    let loaded: serde_json::Value =
        serde_json::from_str(&env.ok_in(Path::new(SEALER), &["inspect", "hello:v1"], "other"))
            .unwrap();
    assert_eq!(
        loaded["config"]["rootfs"]["diff_ids"],
        original["config"]["rootfs"]["diff_ids"]
    );
}

#[test]
fn corrupt_package_is_refused_before_anything_is_installed() {
    let env = Sealer::new();
    let run = packed(&env, &[]);
    let mut bytes = fs::read(&run).unwrap();
    // The last frame ends just before the footer; flip a byte inside the payload's tail.
    let at = bytes.len() - 64 - 10;
    bytes[at] ^= 0x55;
    support::write_program(&run, &bytes);
    let data = env.path("data");
    let out = env.run_in(
        &run,
        &["install", "--local", "--data-root", data.to_str().unwrap()],
        "unused",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt"), "{err}");
    assert!(!data.exists(), "a corrupt package touched the target");
}

#[test]
fn split_package_installs_from_its_volumes() {
    let env = Sealer::new();
    let ctx = env.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let data = noise::bytes(24 << 20, 7);
    fs::write(ctx.join("big.bin"), &data).unwrap();
    fs::write(
        ctx.join("Kubefile"),
        "FROM scratch\nCOPY big.bin /data/\nCMD sha256sum data/big.bin > ../sum\n",
    )
    .unwrap();
    env.ok(&["build", "-t", "big:1", ctx.to_str().unwrap()]);
    // Volume 0 holds the stub and a little payload; the rest goes to volumes.
    let split = fs::metadata(STUB).unwrap().len() + (12 << 20);
    let run = env.path("big.run");
    env.ok(&[
        "pack",
        "big:1",
        "-o",
        run.to_str().unwrap(),
        "--split-size",
        &split.to_string(),
    ]);
    let volumes = fs::read_dir(env.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("big.run."))
        .count();
    assert!(volumes >= 1, "expected volumes beside the package");
    let target = env.path("data");
    env.ok_in(
        &run,
        &[
            "install",
            "--local",
            "--data-root",
            target.to_str().unwrap(),
        ],
        "unused",
    );
    let sum = fs::read_to_string(target.join("my-cluster/sum")).unwrap();
    let expected = Command::new("sha256sum")
        .arg(ctx.join("big.bin"))
        .output()
        .unwrap();
    assert_eq!(
        sum.split_whitespace().next(),
        String::from_utf8_lossy(&expected.stdout)
            .split_whitespace()
            .next()
    );
}

#[test]
fn packing_an_unknown_image_says_so() {
    let env = Sealer::new();
    let out = env.run_in(
        Path::new(SEALER),
        &["pack", "nope:1", "-o", env.path("x.run").to_str().unwrap()],
        "store",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the local store"));
    assert!(!env.path("x.run").exists());
}

/// Words from a fixed generator: text that zstd -19 packs clearly smaller than zstd -3.
fn wordy_text(len: usize) -> String {
    let mut state = 0x853c49e6748fea9bu64;
    let mut text = String::with_capacity(len + 16);
    while text.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let word = (state >> 33) % 5000;
        text.push_str(&format!("w{} ", word * word % 7919));
        if word % 11 == 0 {
            text.push('\n');
        }
    }
    text
}

fn payload_layers(run: &Path, env: &Sealer) -> Vec<serde_json::Value> {
    let json: serde_json::Value =
        serde_json::from_str(&env.ok_in(run, &["inspect", "--json"], "unused")).unwrap();
    json["manifest"]["layers"].as_array().unwrap().clone()
}

#[test]
fn an_explicit_zstd_level_recompresses_every_frame_and_loads_with_the_same_diff_ids() {
    let env = Sealer::new();
    let ctx = env.path("ctx");
    fs::create_dir_all(ctx.join("data")).unwrap();
    fs::write(ctx.join("data/words.txt"), wordy_text(6 << 20)).unwrap();
    fs::write(ctx.join("Kubefile"), "FROM scratch\nCOPY data /data\n").unwrap();
    env.ok(&["build", "-t", "words:v1", ctx.to_str().unwrap()]);
    let (plain, dense) = (env.path("plain.run"), env.path("dense.run"));
    env.ok(&["pack", "words:v1", "-o", plain.to_str().unwrap()]);
    let said = env.ok(&[
        "pack",
        "words:v1",
        "-o",
        dense.to_str().unwrap(),
        "--level",
        "19",
    ]);
    assert!(said.contains("0 of 1 layer copied"), "{said}");

    let (a, b) = (payload_layers(&plain, &env), payload_layers(&dense, &env));
    let size = |l: &serde_json::Value| l["compressed_len"].as_u64().unwrap();
    assert!(
        (size(&b[0]) as f64) < size(&a[0]) as f64 * 0.97,
        "level 19 ({}) is not smaller than the store's default level ({})",
        size(&b[0]),
        size(&a[0])
    );
    assert_ne!(a[0]["digest"], b[0]["digest"]);
    assert_eq!(a[0]["diff_id"], b[0]["diff_id"]);
    assert!(b[0]["frames"].as_array().unwrap().len() >= a[0]["frames"].as_array().unwrap().len());

    env.ok_in(&dense, &["verify"], "unused");
    env.ok_in(
        &dense,
        &["extract", env.path("x").to_str().unwrap()],
        "unused",
    );
    assert_eq!(
        fs::read(env.path("x/data/words.txt")).unwrap(),
        fs::read(ctx.join("data/words.txt")).unwrap()
    );
    // Independent judge: the store blob that `load` writes decodes with the zstd CLI to the
    // same tar as the original layer.
    env.ok_in(&dense, &["load"], "other");
    let inspect = |root: &str| -> serde_json::Value {
        serde_json::from_str(&env.ok_in(Path::new(SEALER), &["inspect", "words:v1"], root)).unwrap()
    };
    let (original, loaded) = (inspect("store"), inspect("other"));
    assert_eq!(
        loaded["config"]["rootfs"]["diff_ids"],
        original["config"]["rootfs"]["diff_ids"]
    );
    assert_eq!(loaded["layers"][0]["digest"], b[0]["digest"]);
    let blob = |root: &str, digest: &serde_json::Value| {
        let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
        env.path(root).join("oci/blobs/sha256").join(hex)
    };
    let decode = |path: PathBuf| {
        let out = Command::new("zstd")
            .args(["-d", "-c"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(
        decode(blob("other", &loaded["layers"][0]["digest"])),
        decode(blob("store", &original["layers"][0]["digest"]))
    );
}
