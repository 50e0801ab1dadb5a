//! Kubefile builds and the image store, judged by independent tools: skopeo reads the store and
//! the archives, the zstd CLI and GNU tar read the layers.

mod support;

use std::fs;
use std::path::Path;

use support::store::{fixture, text, tool, write, Sealer};

/// `tar -t` listing of a layer blob decoded by the zstd CLI.
fn layer_listing(blob: &Path) -> Vec<String> {
    let script = format!("zstd -dc '{}' | tar -tf -", blob.display());
    tool("sh", &["-c", &script])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn built_image_is_read_by_skopeo_with_the_same_digest_and_layers() {
    let env = Sealer::new();
    let out = env.ok(&[
        "build",
        "-t",
        "hello:v1",
        fixture("hello").to_str().unwrap(),
    ]);
    let digest = out.lines().last().unwrap().trim().to_string();
    let layout = format!("oci:{}:hello:v1", env.root().join("oci").display());
    let skopeo: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", &layout])).unwrap();
    assert_eq!(skopeo["Digest"], digest.as_str());
    let ours = env.inspect("hello:v1");
    let our_layers: Vec<&str> = ours["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let their_layers: Vec<&str> = skopeo["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(our_layers, their_layers);
    assert_eq!(
        ours["layers"][0]["media_type"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    // The layers decode with the zstd CLI and list with GNU tar; the RUN layer has the whiteout.
    assert!(layer_listing(&env.blob(our_layers[0])).contains(&"etc/hello.conf".to_string()));
    let run_layer = layer_listing(&env.blob(our_layers[2]));
    assert!(
        run_layer.contains(&"etc/.wh.obsolete.conf".to_string()),
        "{run_layer:?}"
    );
    assert!(
        run_layer.contains(&"opt/hello/banner".to_string()),
        "{run_layer:?}"
    );
    // Install-time meaning is in the config.
    assert_eq!(
        ours["config"]["io.sealer.image"]["cmds"][0],
        "bash scripts/install.sh"
    );
    assert_eq!(ours["config"]["config"]["Labels"]["version"], "1.0");
}

#[test]
fn same_context_builds_the_same_digest_in_two_stores_and_rebuild_hits_the_cache() {
    let a = Sealer::new();
    let b = Sealer::new();
    let ctx = fixture("hello");
    let first = a.ok(&["build", "-t", "hello:v1", ctx.to_str().unwrap()]);
    let other = b.ok(&[
        "build",
        "--no-cache",
        "-t",
        "hello:v1",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(
        first.lines().last(),
        other.lines().last(),
        "builds in two stores differ"
    );
    let again = a.ok(&["build", "-t", "hello:v1", ctx.to_str().unwrap()]);
    assert_eq!(again.lines().last(), first.lines().last());
    assert!(again.contains("3/8 steps from cache"), "{again}");
    // Another compression level makes other layer bytes: nothing comes from the cache.
    let denser = a.ok(&[
        "build",
        "--level",
        "9",
        "-t",
        "hello:v9",
        ctx.to_str().unwrap(),
    ]);
    assert!(denser.contains("0/8 steps from cache"), "{denser}");
}

#[test]
fn changing_one_copy_source_rebuilds_from_that_step_on() {
    let env = Sealer::new();
    let ctx = env.context("ctx", &[]);
    write(&ctx.join("a.txt"), b"a");
    write(&ctx.join("b.txt"), b"b");
    write(
        &ctx.join("Kubefile"),
        b"FROM scratch\nCOPY a.txt /a/\nCOPY b.txt /b/\nRUN cat b/b.txt > c.txt\n",
    );
    let first = env.ok(&["build", "-t", "x:1", ctx.to_str().unwrap()]);
    write(&ctx.join("b.txt"), b"changed");
    let second = env.ok(&["build", "-t", "x:1", ctx.to_str().unwrap()]);
    assert!(second.contains("1/4 steps from cache"), "{second}");
    assert_ne!(first.lines().last(), second.lines().last());
    let steps: Vec<&str> = second.lines().collect();
    let cached_after = |step: &str| {
        steps
            .iter()
            .position(|l| l.contains(step))
            .map(|i| steps[i + 1].contains("cached"))
            .unwrap()
    };
    assert!(cached_after("COPY a.txt"));
    assert!(!cached_after("COPY b.txt"));
    assert!(!cached_after("RUN cat"));
    let layers = env.inspect("x:1");
    let run_blob = env.blob(layers["layers"][2]["digest"].as_str().unwrap());
    let content = tool(
        "sh",
        &[
            "-c",
            &format!("zstd -dc '{}' | tar -xOf - c.txt", run_blob.display()),
        ],
    );
    assert_eq!(content, "changed");
}

#[test]
fn large_file_spans_several_independent_zstd_frames() {
    let env = Sealer::new();
    let ctx = env.context("big", &[]);
    let mut data = vec![0u8; 40 << 20];
    let mut x: u32 = 12345;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 24) as u8;
    }
    write(&ctx.join("big.bin"), &data);
    write(
        &ctx.join("Kubefile"),
        b"FROM scratch\nCOPY big.bin /data/\n",
    );
    env.ok(&["build", "-t", "big:1", ctx.to_str().unwrap()]);
    let info = env.inspect("big:1");
    let blob = env.blob(info["layers"][0]["digest"].as_str().unwrap());
    let listing = tool("zstd", &["-lv", blob.to_str().unwrap()]);
    let frames: u32 = listing
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("# Zstandard Frames:")
                .map(|n| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("zstd -lv printed no frame count:\n{listing}"));
    assert!(
        frames >= 3,
        "a 40 MiB file should span at least 3 frames, zstd says {frames}"
    );
    let out = tool(
        "sh",
        &[
            "-c",
            &format!(
                "zstd -dc '{}' | tar -xOf - data/big.bin | sha256sum",
                blob.display()
            ),
        ],
    );
    let expected = tool("sha256sum", &[ctx.join("big.bin").to_str().unwrap()]);
    assert_eq!(
        out.split_whitespace().next(),
        expected.split_whitespace().next()
    );
}

#[test]
fn failing_run_reports_exit_code_and_output_and_leaves_the_store_unchanged() {
    let env = Sealer::new();
    env.hello();
    let before = env.ok(&["images", "--json"]);
    let ctx = env.context("bad", &[]);
    write(
        &ctx.join("Kubefile"),
        b"FROM hello:v1\nRUN echo about to fail; exit 7\n",
    );
    let out = env.run(&["build", "-t", "hello:v1", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Kubefile:2") && err.contains("exit code 7") && err.contains("about to fail"),
        "{err}"
    );
    assert_eq!(env.ok(&["images", "--json"]), before);
}

#[test]
fn bad_kubefiles_name_file_and_line() {
    let env = Sealer::new();
    let ctx = env.context("ctx", &[]);
    write(&ctx.join("x"), b"x");
    for (kubefile, line, words) in [
        ("FROM scratch\nCOPY x\n", 2, "COPY"),
        ("FROM scratch\n\nBOGUS thing\n", 3, "BOGUS"),
        ("FROM scratch\nCOPY missing.txt /\n", 2, "matches nothing"),
        (
            "FROM scratch\nCOPY ../../etc/passwd /\n",
            2,
            "outside the build context",
        ),
        ("FROM not-built:1\n", 1, "not in the local store"),
    ] {
        write(&ctx.join("Kubefile"), kubefile.as_bytes());
        let out = env.run(&["build", "-t", "x:1", ctx.to_str().unwrap()]);
        assert!(!out.status.success(), "{kubefile}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("Kubefile:{line}")) && err.contains(words),
            "{kubefile:?} gave {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one clear line, got {err}");
    }
    assert!(env.ok(&["images", "--json"]).trim() == "[]");
}

#[test]
fn a_continued_instruction_is_echoed_and_recorded_whole_across_blank_and_comment_lines() {
    // The parser skips blank and comment lines inside a `\` continuation; the progress line and
    // the LABEL history show the same instruction, not its first physical lines only.
    let env = Sealer::new();
    let ctx = env.context("ctx", &[]);
    write(&ctx.join("x"), b"x");
    write(
        &ctx.join("Kubefile"),
        b"FROM scratch\nLABEL a=1 \\\n\n  # the second label\n    b=2\nCOPY x \\\n\n  y\n",
    );
    let out = env.ok(&["build", "-t", "x:1", ctx.to_str().unwrap()]);
    assert!(out.contains("STEP 2/3: LABEL a=1 b=2\n"), "{out}");
    assert!(out.contains("STEP 3/3: COPY x y\n"), "{out}");
    let info = env.inspect("x:1");
    let history = info["config"]["history"].as_array().unwrap();
    assert_eq!(history[1]["created_by"], "LABEL a=1 b=2", "{info}");
    assert_eq!(info["config"]["config"]["Labels"]["b"], "2", "{info}");
}

#[test]
fn save_and_load_round_trip_keeps_every_digest_and_skopeo_reads_the_archive() {
    let a = Sealer::new();
    a.hello();
    let archive = a.path("hello.tar");
    a.ok(&["save", "-o", archive.to_str().unwrap(), "hello:v1"]);
    let skopeo: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", archive.display())],
    ))
    .unwrap();
    let original = a.inspect("hello:v1");
    assert_eq!(skopeo["Digest"], original["digest"]);
    let b = Sealer::new();
    let out = b.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains("hello:v1"));
    let loaded = b.inspect("hello:v1");
    assert_eq!(loaded["digest"], original["digest"]);
    assert_eq!(loaded["layers"], original["layers"]);
}

#[test]
fn load_refuses_a_corrupt_archive_and_stores_nothing() {
    let a = Sealer::new();
    a.hello();
    let archive = a.path("hello.tar");
    a.ok(&["save", "-o", archive.to_str().unwrap(), "hello:v1"]);
    let mut bytes = fs::read(&archive).unwrap();
    // Flip a byte in the middle of the content of the largest blob.
    let (offset, size) = {
        let mut tar = tar::Archive::new(&bytes[..]);
        tar.entries()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().unwrap().starts_with("blobs/sha256"))
            .map(|e| (e.raw_file_position(), e.size()))
            .max_by_key(|&(_, size)| size)
            .unwrap()
    };
    assert!(size > 0);
    bytes[(offset + size / 2) as usize] ^= 0xff;
    fs::write(&archive, &bytes).unwrap();
    let b = Sealer::new();
    let out = b.run(&["load", "-i", archive.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(b.ok(&["images", "--json"]).trim(), "[]");
}

#[test]
fn tag_and_rmi_remove_only_unreferenced_blobs() {
    let env = Sealer::new();
    env.hello();
    env.ok(&["tag", "hello:v1", "registry.local:5000/apps/hello:v2"]);
    let info = env.inspect("registry.local:5000/apps/hello:v2");
    let layer = env.blob(info["layers"][0]["digest"].as_str().unwrap());
    env.ok(&["rmi", "hello:v1"]);
    assert!(
        layer.exists(),
        "blob still used by the second name was removed"
    );
    env.ok(&["rmi", "registry.local:5000/apps/hello:v2"]);
    assert!(!layer.exists(), "unreferenced blob was kept");
    let out = env.run(&["rmi", "hello:v1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not in the local store"));
}

#[test]
fn add_unpacks_local_archives_and_copy_follows_docker_destination_rules() {
    let env = Sealer::new();
    let ctx = env.context("add", &[]);
    let src = env.context("src", &[]);
    write(&src.join("pkg/bin/tool"), b"#!/bin/sh\necho tool\n");
    tool(
        "tar",
        &[
            "-C",
            src.to_str().unwrap(),
            "-czf",
            ctx.join("pkg.tar.gz").to_str().unwrap(),
            "pkg",
        ],
    );
    write(&ctx.join("one.conf"), b"1");
    write(&ctx.join("conf/a.yaml"), b"a: 1");
    write(&ctx.join("conf/b.yaml"), b"b: 2");
    write(
        &ctx.join("Kubefile"),
        b"FROM scratch\nADD pkg.tar.gz /opt/\nCOPY one.conf /etc/renamed.conf\nCOPY conf/*.yaml /etc/conf.d/\n",
    );
    env.ok(&["build", "-t", "add:1", ctx.to_str().unwrap()]);
    let info = env.inspect("add:1");
    let listing =
        |i: usize| layer_listing(&env.blob(info["layers"][i]["digest"].as_str().unwrap()));
    assert!(
        listing(0).contains(&"opt/pkg/bin/tool".to_string()),
        "{:?}",
        listing(0)
    );
    assert_eq!(listing(1), vec!["etc/renamed.conf".to_string()]);
    assert_eq!(
        listing(2),
        vec![
            "etc/conf.d/a.yaml".to_string(),
            "etc/conf.d/b.yaml".to_string()
        ]
    );
}

#[test]
fn concurrent_builds_into_one_store_leave_every_image_intact() {
    let env = Sealer::new();
    let mut children = Vec::new();
    for i in 0..4 {
        let ctx = env.context(&format!("c{i}"), &[]);
        write(&ctx.join("f.txt"), format!("content {i}").as_bytes());
        write(
            &ctx.join("Kubefile"),
            b"FROM scratch\nCOPY f.txt /\nRUN cp f.txt g.txt\n",
        );
        children.push(
            env.command()
                .args(["build", "-t", &format!("img{i}:1"), ctx.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let images: serde_json::Value = serde_json::from_str(&env.ok(&["images", "--json"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 4, "{images}");
    for i in 0..4 {
        let layout = format!("oci:{}:img{i}:1", env.root().join("oci").display());
        tool("skopeo", &["inspect", &layout]);
        let info = env.inspect(&format!("img{i}:1"));
        let blob = env.blob(info["layers"][1]["digest"].as_str().unwrap());
        let content = tool(
            "sh",
            &[
                "-c",
                &format!("zstd -dc '{}' | tar -xOf - g.txt", blob.display()),
            ],
        );
        assert_eq!(content, format!("content {i}"));
    }
}
