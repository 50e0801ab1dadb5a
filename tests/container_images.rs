//! Container images collected at build (issue 10, build side), with real parts: test images
//! written here as OCI layouts, pushed with `skopeo` to Debian's `docker-registry` on 127.0.0.1,
//! collected by `sealer build` from `manifests/imageList`, `--image-list` and a Deployment, and
//! judged by `skopeo` (on the store, a `sealer save` archive and the layout an `app.run extract`
//! writes), by the packer's frame index, and by the registry's own storage (a rebuild whose
//! registry lost every layer still succeeds: it pulled nothing).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::registry::TestRegistry;
use support::store::{both, sha256, text, tool, write, Sealer};

/// A blob of an OCI layout written by [`oci_image`].
fn put_blob(layout: &Path, bytes: &[u8]) -> (String, u64) {
    let digest = sha256(bytes);
    write(
        &layout.join("blobs/sha256").join(&digest["sha256:".len()..]),
        bytes,
    );
    (digest, bytes.len() as u64)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One image manifest for `arch` (two gzip layers, one of them incompressible noise) in
/// `layout`; its descriptor.
fn image_manifest(layout: &Path, arch: &str, seed: u64) -> Value {
    let hello = format!("hello from {arch} {seed}\n");
    let noise = support::noise::bytes(300_000, seed);
    let tars = [
        support::tar::files(&[("hello.txt", hello.as_bytes())]),
        support::tar::files(&[("noise.bin", &noise)]),
    ];
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in &tars {
        let (digest, size) = put_blob(layout, &gzip(tar));
        layers.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
        diff_ids.push(sha256(tar));
    }
    let config = json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = put_blob(layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size,
        },
        "layers": layers,
    });
    let (digest, size) = put_blob(layout, manifest.to_string().as_bytes());
    json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest, "size": size,
        "platform": {"architecture": arch, "os": "linux"},
    })
}

/// An OCI layout at `dir` holding `tag`: one manifest, or an index over `archs`.
fn oci_image(dir: &Path, tag: &str, archs: &[&str], seed: u64) {
    write(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let manifests: Vec<Value> = archs
        .iter()
        .enumerate()
        .map(|(i, arch)| image_manifest(dir, arch, seed * 10 + i as u64))
        .collect();
    let mut top = if manifests.len() == 1 {
        manifests[0].clone()
    } else {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let (digest, size) = put_blob(dir, index.to_string().as_bytes());
        json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest, "size": size,
        })
    };
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "manifests": [top]});
    write(&dir.join("index.json"), index.to_string().as_bytes());
}

/// Make `NAME:TAG` offline and push it to `registry` as `library/NAME:TAG` with skopeo.
fn push_image(
    work: &Path,
    registry: &TestRegistry,
    name: &str,
    tag: &str,
    archs: &[&str],
    seed: u64,
) {
    let layout = work.join(format!("src-{name}-{tag}"));
    oci_image(&layout, tag, archs, seed);
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/library/{name}:{tag}", registry.host()),
        ],
    );
}

/// The raw manifest a registry serves for `reference` (skopeo, plain HTTP).
fn served_manifest(reference: &str) -> Value {
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    serde_json::from_str(&raw).unwrap()
}

/// The digest of the amd64 image manifest `reference` names at its registry, and that manifest.
fn source_digest(reference: &str) -> (String, Value) {
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    let doc: Value = serde_json::from_str(&raw).unwrap();
    match doc["manifests"].as_array() {
        Some(list) => {
            let entry = list
                .iter()
                .find(|m| m["platform"]["architecture"] == "amd64")
                .unwrap();
            let digest = entry["digest"].as_str().unwrap().to_string();
            let name = reference.rsplit_once(':').unwrap().0;
            let manifest = served_manifest(&format!("{name}@{digest}"));
            (digest, manifest)
        }
        None => (sha256(raw.as_bytes()), doc),
    }
}

/// Every file below `dir`, as relative paths (to compare a store before and after).
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out
}

/// The image manifest the store holds for `name`.
fn store_manifest(sealer: &Sealer, name: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&fs::read(sealer.root().join("oci/index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in the store"));
    serde_json::from_slice(&fs::read(sealer.blob(entry["digest"].as_str().unwrap())).unwrap())
        .unwrap()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: HOST/library/multi:2
      containers:
        - name: web
          image: \"HOST/library/bar:3\"
";

/// A build context using the three test images: `foo:1` in `manifests/imageList`, `multi:2`
/// (amd64 + arm64) and `bar:3` in a Deployment; `extra:4` goes in an `--image-list` file.
fn context(sealer: &Sealer, name: &str, host: &str) -> (PathBuf, PathBuf) {
    let ctx = sealer.context(
        name,
        &[
            (
                "Kubefile",
                b"FROM scratch\nCOPY manifests manifests\nCMD kubectl apply -f manifests/\n",
            ),
            (
                "manifests/imageList",
                format!("# images of this app\n\n{host}/library/foo:1\n").as_bytes(),
            ),
            (
                "manifests/web.yaml",
                DEPLOYMENT.replace("HOST", host).as_bytes(),
            ),
        ],
    );
    let list = sealer.path(&format!("{name}-extra-images"));
    write(&list, format!("{host}/library/extra:4 # more\n").as_bytes());
    (ctx, list)
}

#[test]
fn build_collects_declared_images_into_one_images_layer_that_skopeo_and_the_package_read() {
    let sealer = Sealer::new();
    let mut registry = TestRegistry::start(None);
    let host = registry.host();
    push_image(sealer.dir(), &registry, "foo", "1", &[arch()], 1);
    push_image(sealer.dir(), &registry, "multi", "2", &[arch(), "s390x"], 2);
    push_image(sealer.dir(), &registry, "bar", "3", &[arch()], 3);
    push_image(sealer.dir(), &registry, "extra", "4", &[arch()], 4);
    let (ctx, list) = context(&sealer, "ctx", &host);
    let ctx_arg = ctx.display().to_string();
    let list_arg = list.display().to_string();

    // --list-images: every reference and where it was declared; nothing built.
    let listed = sealer.ok(&[
        "build",
        "-t",
        "app:v1",
        "--list-images",
        "--image-list",
        &list_arg,
        &ctx_arg,
    ]);
    let expect = [
        format!("{host}/library/bar:3\tmanifests/web.yaml:13"),
        format!("{host}/library/extra:4\t{list_arg}:1"),
        format!("{host}/library/foo:1\tmanifests/imageList:3"),
        format!("{host}/library/multi:2\tmanifests/web.yaml:10"),
    ];
    assert_eq!(listed.lines().collect::<Vec<_>>(), expect, "{listed}");
    assert!(
        !sealer.root().join("oci").exists(),
        "--list-images touched the store"
    );

    let build = |tag: &str| {
        let out = sealer
            .command()
            .args([
                "build",
                "-t",
                tag,
                "--insecure",
                "--image-list",
                &list_arg,
                &ctx_arg,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "sealer build failed:\n{}", both(&out));
        text(&out.stdout)
    };
    let first = build("app:v1");
    assert!(first.contains("fetched"), "{first}");

    // The store: the images layer is the last layer, annotated, and skopeo reads the CloudImage.
    let manifest = store_manifest(&sealer, "app:v1");
    let layers = manifest["layers"].as_array().unwrap();
    let images_layer = layers.last().unwrap().clone();
    assert_eq!(
        images_layer["annotations"]["io.sealer.layer.content"], "container-images",
        "{manifest}"
    );
    assert_eq!(
        layers
            .iter()
            .filter(|l| l["annotations"]["io.sealer.layer.content"] == "container-images")
            .count(),
        1
    );
    let root = sealer.root().display().to_string();
    let seen: Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", &format!("oci:{root}/oci:app:v1")],
    ))
    .unwrap();
    assert_eq!(seen["Layers"].as_array().unwrap().len(), layers.len());
    let listed_label = seen["Labels"]["sealer.image.container.images"]
        .as_str()
        .unwrap();
    assert_eq!(
        manifest["annotations"]["sealer.image.container.images"].as_str(),
        Some(listed_label)
    );

    // `sealer inspect` lists each container image with the digest its registry serves.
    let inspect: Value = serde_json::from_str(&sealer.ok(&["inspect", "app:v1"])).unwrap();
    let images = inspect["container_images"].as_array().unwrap();
    let names: Vec<&str> = images
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            format!("{host}/library/bar:3"),
            format!("{host}/library/extra:4"),
            format!("{host}/library/foo:1"),
            format!("{host}/library/multi:2"),
        ]
    );
    let mut sources = Vec::new();
    for image in images {
        let reference = image["image"].as_str().unwrap();
        let (digest, source) = source_digest(reference);
        assert_eq!(image["digest"], digest.as_str(), "{reference}");
        assert_eq!(
            image["platform"],
            json!({"architecture": arch(), "os": "linux"})
        );
        let size: u64 = source["layers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(std::iter::once(&source["config"]))
            .map(|l| l["size"].as_u64().unwrap())
            .sum();
        assert!(image["size"].as_u64().unwrap() > size, "{image}");
        sources.push((reference.to_string(), digest, source));
    }

    // `sealer save`: skopeo reads the archive.
    let archive = sealer.path("app.tar");
    sealer.ok(&["save", "-o", &archive.display().to_string(), "app:v1"]);
    tool(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", archive.display())],
    );

    // Frames: each blob of the images layer starts a frame; gzip layers are stored frames.
    let blob_path = sealer.blob(images_layer["digest"].as_str().unwrap());
    // The zstd tool reads the stored frames like any other.
    tool("zstd", &["-t", "-q", &blob_path.display().to_string()]);
    let blob = fs::read(&blob_path).unwrap();
    let frames = packer::frames::scan_frames(&blob).unwrap();
    let mut starts = BTreeSet::new();
    let mut at = 0u64;
    for f in &frames {
        starts.insert(at);
        at += f.uncompressed_len;
    }
    let plain = zstd::decode_all(&blob[..]).unwrap();
    let mut archive = tar::Archive::new(&plain[..]);
    let mut blob_entries = 0;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        assert!(path.starts_with("images/"), "{path}");
        if path.starts_with("images/blobs/sha256/") && entry.header().entry_type().is_file() {
            blob_entries += 1;
            let header_at = entry.raw_header_position();
            assert!(starts.contains(&header_at), "{path} does not start a frame");
        }
    }
    // 4 images: manifests, configs and 2 layers each.
    assert_eq!(blob_entries, 16);
    let stored = frames
        .iter()
        .filter(|f| f.compressed_len >= f.uncompressed_len)
        .count();
    assert!(
        stored >= 8,
        "gzip layers go into stored frames ({stored} of {})",
        frames.len()
    );

    // Packed and extracted: the layout holds every image with the digests of its registry.
    let run = sealer.path("app.run");
    let run_arg = run.display().to_string();
    sealer.ok(&["pack", "app:v1", "-o", &run_arg]);
    let out = sealer.dir().join("out");
    sealer.ok_in(&run, &["extract", &out.display().to_string()], "store");
    let layout = out.join("images");
    for (reference, digest, _) in &sources {
        let raw = tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                &format!("oci:{}:{reference}", layout.display()),
            ],
        );
        assert_eq!(&sha256(raw.as_bytes()), digest, "{reference}");
        let copy = sealer
            .dir()
            .join(format!("copy-{}", digest.trim_start_matches("sha256:")));
        tool(
            "skopeo",
            &[
                "copy",
                "--quiet",
                &format!("oci:{}:{reference}", layout.display()),
                &format!("oci:{}:x", copy.display()),
            ],
        );
    }
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    for entry in index["manifests"].as_array().unwrap() {
        let name = entry["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap();
        let digest = entry["digest"].as_str().unwrap();
        let (repo, _) = name.rsplit_once(':').unwrap();
        assert_eq!(
            entry["annotations"]["io.sealer.image.digest-pinned"],
            format!("{repo}@{digest}")
        );
    }
    let inspected: Value =
        serde_json::from_str(&sealer.ok_in(&run, &["inspect", "--json"], "store")).unwrap();
    assert_eq!(&inspected["container_images"], &inspect["container_images"]);

    // `pack --level 19` leaves the images layer's frames as they are (other layers change).
    let run19 = sealer.path("app19.run");
    sealer.ok(&[
        "pack",
        "app:v1",
        "-o",
        &run19.display().to_string(),
        "--level",
        "19",
    ]);
    let inspected19: Value =
        serde_json::from_str(&sealer.ok_in(&run19, &["inspect", "--json"], "store")).unwrap();
    let frames_of = |doc: &Value, i: usize| doc["manifest"]["layers"][i]["frames"].clone();
    let last = layers.len() - 1;
    assert_eq!(frames_of(&inspected, last), frames_of(&inspected19, last));
    assert_eq!(
        inspected["manifest"]["layers"][last]["digest"],
        inspected19["manifest"]["layers"][last]["digest"]
    );

    // An xz package keeps them too, and `app.run load` brings the image back whole.
    let run_xz = sealer.path("app-xz.run");
    sealer.ok(&[
        "pack",
        "app:v1",
        "-o",
        &run_xz.display().to_string(),
        "--compression",
        "xz",
    ]);
    let inspected_xz: Value =
        serde_json::from_str(&sealer.ok_in(&run_xz, &["inspect", "--json"], "store")).unwrap();
    assert_eq!(frames_of(&inspected, last), frames_of(&inspected_xz, last));
    sealer.ok_in(&run_xz, &["load"], "other-store");
    let loaded: Value = serde_json::from_str(&sealer.ok_in(
        Path::new(support::store::SEALER),
        &["inspect", "app:v1"],
        "other-store",
    ))
    .unwrap();
    assert_eq!(loaded["container_images"], inspect["container_images"]);
    assert_eq!(loaded["layers"][last]["digest"], images_layer["digest"]);

    // A rebuild pulls nothing: the registry loses every config and layer, and the build still
    // gives the same images layer (it only asks what the tags name).
    for (_, _, source) in &sources {
        for blob in source["layers"]
            .as_array()
            .unwrap()
            .iter()
            .chain([&source["config"]])
        {
            let file = registry.blob_file(blob["digest"].as_str().unwrap());
            let _ = fs::remove_file(file);
        }
    }
    let second = build("app:v2");
    assert!(!second.contains(" fetched)"), "{second}");
    let manifest2 = store_manifest(&sealer, "app:v2");
    assert_eq!(manifest2["layers"], manifest["layers"]);
    registry.kill();
}

/// `sealer build` with `args` in a fresh store; it must fail, naming `expect`, and leave the
/// store's files exactly as they were.
fn refused(sealer: &Sealer, args: &[&str], expect: &[&str]) {
    let before = tree(&sealer.root());
    let out = sealer.command().arg("build").args(args).output().unwrap();
    let all = both(&out);
    assert!(!out.status.success(), "build succeeded: {all}");
    for e in expect {
        assert!(all.contains(e), "expected {e:?} in:\n{all}");
    }
    assert_eq!(all.matches("panicked").count(), 0, "{all}");
    let after = tree(&sealer.root());
    let added: Vec<&String> = after
        .difference(&before)
        .filter(|p| !p.ends_with(".lock") && !p.starts_with("tmp") && !p.starts_with("cache"))
        .collect();
    assert!(added.is_empty(), "the refused build wrote {added:?}");
    let blobs: Vec<_> = fs::read_dir(sealer.root().join("oci/blobs/sha256"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(blobs.is_empty(), "blobs were stored: {blobs:?}");
}

#[test]
fn bad_declarations_and_unusable_images_are_refused_before_the_store_is_written() {
    let sealer = Sealer::new();
    let registry = TestRegistry::start(None);
    let host = registry.host();
    push_image(sealer.dir(), &registry, "foo", "1", &[arch()], 1);
    push_image(sealer.dir(), &registry, "arm", "1", &["s390x"], 5);
    push_image(sealer.dir(), &registry, "bar", "2", &[arch()], 6);
    sealer.ok(&["images"]); // the store exists, empty
    let kubefile: &[u8] = b"FROM scratch\nCOPY manifests manifests\n";

    // A list line that is not a reference: FILE:LINE.
    let ctx = sealer.context(
        "bad-list",
        &[
            ("Kubefile", kubefile),
            (
                "manifests/imageList",
                format!("{host}/library/foo:1\nNot A Reference\n").as_bytes(),
            ),
        ],
    );
    refused(
        &sealer,
        &["-t", "x:1", "--insecure", &ctx.display().to_string()],
        &["manifests/imageList:2:"],
    );

    // A container image in a manifest that is not a reference: FILE:LINE.
    let ctx = sealer.context(
        "bad-yaml",
        &[
            ("Kubefile", kubefile),
            (
                "manifests/pod.yaml",
                b"kind: Pod\nspec:\n  containers:\n    - name: x\n      image: Bad_Name:1\n",
            ),
        ],
    );
    refused(
        &sealer,
        &["-t", "x:1", "--insecure", &ctx.display().to_string()],
        &["manifests/pod.yaml:5:"],
    );

    // An image the registry does not have: the reference and the registry are named.
    let missing = format!("{host}/library/nothing:1");
    let ctx = sealer.context(
        "missing",
        &[
            ("Kubefile", kubefile),
            ("manifests/imageList", missing.as_bytes()),
        ],
    );
    refused(
        &sealer,
        &["-t", "x:1", "--insecure", &ctx.display().to_string()],
        &[
            &missing,
            &format!("registry {host}"),
            "manifests/imageList:1",
        ],
    );

    // An image only for another platform.
    let ctx = sealer.context(
        "platform",
        &[
            ("Kubefile", kubefile),
            (
                "manifests/imageList",
                format!("{host}/library/arm:1").as_bytes(),
            ),
        ],
    );
    refused(
        &sealer,
        &["-t", "x:1", "--insecure", &ctx.display().to_string()],
        &["linux/s390x", &format!("linux/{}", arch())],
    );

    // A layer the registry serves damaged: its digest does not match; refused.
    let (_, source) = source_digest(&format!("{host}/library/foo:1"));
    let layer = source["layers"][1]["digest"].as_str().unwrap();
    let file = registry.blob_file(layer);
    let mut bytes = fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&file, &bytes).unwrap();
    let ctx = sealer.context(
        "damaged",
        &[
            ("Kubefile", kubefile),
            (
                "manifests/imageList",
                format!("{host}/library/foo:1").as_bytes(),
            ),
        ],
    );
    refused(
        &sealer,
        &["-t", "x:1", "--insecure", &ctx.display().to_string()],
        &[layer, "hashes to", "manifests/imageList:1"],
    );

    // A manifest the registry serves damaged: refused too.
    let (digest, _) = source_digest(&format!("{host}/library/bar:2"));
    let file = registry.blob_file(&digest);
    let damaged = fs::read_to_string(&file).unwrap().replace("gzip", "gzap");
    fs::write(&file, damaged).unwrap();
    let ctx = sealer.context(
        "damaged-manifest",
        &[
            ("Kubefile", kubefile),
            (
                "manifests/imageList",
                format!("{host}/library/bar:2").as_bytes(),
            ),
        ],
    );
    refused(
        &sealer,
        &["-t", "x:1", "--insecure", &ctx.display().to_string()],
        &["digest", &format!("{host}/library/bar:2")],
    );

    // The same damaged manifest asked for by its digest: what the registry sends does not hash
    // to the digest the reference pins; refused, naming the reference.
    let pinned = format!("{host}/library/bar@{digest}");
    let ctx = sealer.context(
        "damaged-pinned",
        &[
            ("Kubefile", kubefile),
            ("manifests/imageList", pinned.as_bytes()),
        ],
    );
    refused(
        &sealer,
        &["-t", "x:1", "--insecure", &ctx.display().to_string()],
        &["digest", &pinned, "manifests/imageList:1"],
    );
}

#[test]
fn a_registry_with_other_credentials_is_refused_before_the_store_is_written() {
    let sealer = Sealer::new();
    let registry = TestRegistry::start(Some(("builder", "right-password")));
    let host = registry.host();
    let ctx = sealer.context(
        "ctx",
        &[
            ("Kubefile", b"FROM scratch\nCOPY manifests manifests\n"),
            (
                "manifests/imageList",
                format!("{host}/library/foo:1").as_bytes(),
            ),
        ],
    );
    sealer.ok(&["images"]);
    let auth = sealer.path("auth.json");
    let token = base64_of("builder:wrong-password");
    write(
        &auth,
        json!({"auths": {host.clone(): {"auth": token}}})
            .to_string()
            .as_bytes(),
    );
    let before = tree(&sealer.root());
    let out = sealer
        .command()
        .env("REGISTRY_AUTH_FILE", &auth)
        .args([
            "build",
            "-t",
            "x:1",
            "--insecure",
            &ctx.display().to_string(),
        ])
        .output()
        .unwrap();
    let all = both(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains(&format!("registry {host} refused access to library/foo")),
        "{all}"
    );
    assert!(all.contains("manifests/imageList:1"), "{all}");
    let after = tree(&sealer.root());
    assert!(after
        .difference(&before)
        .all(|p| p.starts_with("tmp") || p.ends_with(".lock")));
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn list_images_reads_apps_and_lists_and_honours_the_ignored_list() {
    let sealer = Sealer::new();
    let ctx = sealer.context(
        "ctx",
        &[
            (
                "Kubefile",
                b"FROM scratch\nAPP web local://web\nAPP chart local://chart\nLAUNCH [\"web\"]\n",
            ),
            (
                "web/deploy.yaml",
                b"kind: StatefulSet\nspec:\n  template:\n    spec:\n      containers:\n      - image: quay.io/coreos/etcd:v3.5\n",
            ),
            (
                "web/job.yml",
                b"kind: Job\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx:1.25\n---\nkind: DaemonSet\nspec:\n  template:\n    spec:\n      containers:\n      - image: busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
            ),
            ("chart/Chart.yaml", b"name: chart\n"),
            ("chart/values.yaml", b"image: ignored:1\n"),
            (
                "chart/templates/d.yaml",
                b"kind: Pod\nspec:\n  containers:\n  - image: {{ .Values.image }}\n",
            ),
            (
                "application/apps/other/pod.yaml",
                b"kind: Pod\nspec:\n  containers:\n  - image: redis:7\n",
            ),
        ],
    );
    let ignored = sealer.path("ignored");
    write(&ignored, b"docker.io/library/nginx:1.25\n");
    let out = sealer.ok(&[
        "build",
        "--list-images",
        "--ignored-image-list",
        &ignored.display().to_string(),
        &ctx.display().to_string(),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "docker.io/library/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000\tweb/job.yml:13",
            "docker.io/library/redis:7\tapplication/apps/other/pod.yaml:4",
            "quay.io/coreos/etcd:v3.5\tweb/deploy.yaml:6",
        ],
        "{out}"
    );
}

#[test]
fn an_image_built_from_a_base_with_images_carries_them_in_its_own_last_layer_offline() {
    let sealer = Sealer::new();
    let mut registry = TestRegistry::start(None);
    let host = registry.host();
    push_image(sealer.dir(), &registry, "foo", "1", &[arch()], 1);
    push_image(sealer.dir(), &registry, "bar", "3", &[arch()], 3);
    let base = sealer.context(
        "base",
        &[
            ("Kubefile", b"FROM scratch\nCOPY manifests manifests\n"),
            (
                "manifests/imageList",
                format!("{host}/library/foo:1\n").as_bytes(),
            ),
        ],
    );
    let out = sealer
        .command()
        .args([
            "build",
            "-t",
            "base:v1",
            "--insecure",
            &base.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let base_manifest = store_manifest(&sealer, "base:v1");
    let base_layers = base_manifest["layers"].as_array().unwrap().clone();

    // With the registry gone, an app FROM the base still builds: its images come from the base.
    registry.kill();
    let app = sealer.context(
        "app",
        &[
            ("Kubefile", b"FROM base:v1\nCOPY app.yaml app.yaml\n"),
            ("app.yaml", b"a: 1\n"),
        ],
    );
    let out = sealer
        .command()
        .args([
            "build",
            "-t",
            "app:v1",
            "--insecure",
            &app.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let manifest = store_manifest(&sealer, "app:v1");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{manifest}");
    assert_eq!(layers[0], base_layers[0], "the base's own layer is kept");
    assert_eq!(
        layers[2], base_layers[1],
        "the same images give the same images layer, now last"
    );
    let inspect: Value = serde_json::from_str(&sealer.ok(&["inspect", "app:v1"])).unwrap();
    assert_eq!(
        inspect["container_images"][0]["image"],
        format!("{host}/library/foo:1")
    );
    let history: Vec<&str> = inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["created_by"].as_str().unwrap_or(""))
        .collect();
    assert!(history[1].starts_with("COPY app.yaml"), "{history:?}");
    assert!(history[2].starts_with("CONTAINER-IMAGES"), "{history:?}");

    // Declaring one more image adds it next to the inherited one.
    registry.spawn();
    let more = sealer.context(
        "more",
        &[
            ("Kubefile", b"FROM base:v1\nCOPY manifests manifests\n"),
            (
                "manifests/imageList",
                format!("{host}/library/bar:3\n").as_bytes(),
            ),
        ],
    );
    let out = sealer
        .command()
        .args([
            "build",
            "-t",
            "more:v1",
            "--insecure",
            &more.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let inspect: Value = serde_json::from_str(&sealer.ok(&["inspect", "more:v1"])).unwrap();
    let names: Vec<&str> = inspect["container_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            format!("{host}/library/bar:3"),
            format!("{host}/library/foo:1")
        ]
    );
}

#[test]
fn a_reference_pinned_by_digest_is_named_by_it_and_rebuilds_without_its_registry() {
    let sealer = Sealer::new();
    let mut registry = TestRegistry::start(None);
    let host = registry.host();
    push_image(sealer.dir(), &registry, "multi", "2", &[arch(), "s390x"], 2);
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/library/multi:2"),
        ],
    );
    let index_digest = sha256(raw.as_bytes());
    let (platform_digest, _) = source_digest(&format!("{host}/library/multi:2"));
    let pinned = format!("{host}/library/multi@{index_digest}");
    let ctx = sealer.context(
        "ctx",
        &[
            ("Kubefile", b"FROM scratch\nCOPY manifests manifests\n"),
            ("manifests/imageList", pinned.as_bytes()),
        ],
    );
    let build = |tag: &str| {
        let out = sealer
            .command()
            .args(["build", "-t", tag, "--insecure", &ctx.display().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", both(&out));
    };
    build("x:1");
    registry.kill();
    build("x:2");
    let inspect: Value = serde_json::from_str(&sealer.ok(&["inspect", "x:2"])).unwrap();
    assert_eq!(inspect["container_images"][0]["image"], pinned.as_str());
    assert_eq!(
        inspect["container_images"][0]["digest"],
        platform_digest.as_str()
    );
    assert_eq!(
        store_manifest(&sealer, "x:1")["layers"],
        store_manifest(&sealer, "x:2")["layers"]
    );
    // The index the digest names is in the layout byte for byte (a pull by that digest can be
    // served), beside the platform manifest that index.json names.
    let manifest = store_manifest(&sealer, "x:2");
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let plain =
        zstd::decode_all(&fs::read(sealer.blob(layer["digest"].as_str().unwrap())).unwrap()[..])
            .unwrap();
    let mut archive = tar::Archive::new(&plain[..]);
    let mut found = None;
    let mut index_json = Value::Null;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if path == format!("images/blobs/sha256/{}", &index_digest["sha256:".len()..]) {
            found = Some(sha256(&bytes));
        }
        if path == "images/index.json" {
            index_json = serde_json::from_slice(&bytes).unwrap();
        }
    }
    assert_eq!(found.as_deref(), Some(index_digest.as_str()));
    assert_eq!(
        index_json["manifests"][0]["digest"],
        platform_digest.as_str()
    );
    assert_eq!(
        index_json["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        pinned.as_str()
    );
}
