//! Hard links through the real binaries: a COPY keeps a file's other names as tar hard-link
//! entries (GNU tar lists them as `h ... link to`), the content is stored once, `app.run extract`,
//! `install --local` and `load` recreate them as one inode, and a package whose layer links
//! outside its root is refused by extract.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::noise;
use support::store::{sha256, text, Sealer, SEALER, STUB};

/// Size of the multiply-linked file: incompressible, so stored bytes show how often it is kept.
const BIG: usize = 1 << 20;

/// A build context: `tree/` is copied; `big` has names a/one, a/two, a/three, b/four inside it
/// and `elsewhere/big` outside it; `tree/c/solo` has its other name outside only.
fn linked_context(env: &Sealer, name: &str) -> PathBuf {
    let ctx = env.context(
        name,
        &[
            ("Kubefile", b"FROM scratch\nCOPY tree /opt/tree\n"),
            ("elsewhere/big", &noise::bytes(BIG, 7)),
            ("elsewhere/solo", b"solo content\n"),
        ],
    );
    for dir in ["tree/a", "tree/b", "tree/c"] {
        fs::create_dir_all(ctx.join(dir)).unwrap();
    }
    for name in ["tree/a/one", "tree/a/two", "tree/a/three", "tree/b/four"] {
        fs::hard_link(ctx.join("elsewhere/big"), ctx.join(name)).unwrap();
    }
    fs::hard_link(ctx.join("elsewhere/solo"), ctx.join("tree/c/solo")).unwrap();
    ctx
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `sh -c SCRIPT`'s stdout, which must succeed.
fn sh(script: &str) -> String {
    tool("sh", &["-c", script])
}

/// The image's layer digests, from `sealer inspect` against the store `root`.
fn layers(env: &Sealer, root: &str, image: &str) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&env.ok_in(Path::new(SEALER), &["inspect", image], root)).unwrap();
    json["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no layers in {json}"))
        .iter()
        .map(|l| {
            l.as_str()
                .map(str::to_string)
                .or_else(|| l["digest"].as_str().map(str::to_string))
                .unwrap()
        })
        .collect()
}

/// `stat -c %h,%i` of each of `names` below `root`.
fn link_counts_and_inodes(root: &Path, names: &[&str]) -> Vec<(u64, u64)> {
    names
        .iter()
        .map(|n| {
            let m = fs::symlink_metadata(root.join(n))
                .unwrap_or_else(|e| panic!("{}: {e}", root.join(n).display()));
            (m.nlink(), m.ino())
        })
        .collect()
}

/// The four names of `big` share one inode with link count 4, and `solo` is a file of its own.
fn assert_linked_tree(root: &Path) {
    let stat = sh(&format!(
        "cd {} && stat -c %h,%i a/one a/two a/three b/four c/solo",
        root.display()
    ));
    let lines: Vec<&str> = stat.lines().collect();
    assert_eq!(lines.len(), 5, "{stat}");
    assert!(lines[0].starts_with("4,"), "link count of a/one: {stat}");
    assert!(lines[..4].iter().all(|l| *l == lines[0]), "{stat}");
    assert!(lines[4].starts_with("1,"), "c/solo: {stat}");
    let mine = link_counts_and_inodes(root, &["a/one", "b/four"]);
    assert_eq!(mine[0], mine[1]);
    assert_eq!(fs::read(root.join("b/four")).unwrap(), noise::bytes(BIG, 7));
    assert_eq!(fs::read(root.join("c/solo")).unwrap(), b"solo content\n");
}

/// The directory below `dir` that holds `opt/tree/a/one`.
fn find_tree(dir: &Path) -> PathBuf {
    let found = sh(&format!(
        "find {} -path '*/opt/tree/a/one' | head -n1",
        dir.display()
    ));
    let one = PathBuf::from(found.trim());
    assert!(one.is_file(), "no opt/tree/a/one below {}", dir.display());
    one.parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn copy_stores_other_names_as_tar_hard_links_and_extract_install_and_load_keep_them() {
    let env = Sealer::new();
    let ctx = linked_context(&env, "ctx");
    env.build("links:v1", &ctx);
    let digests = layers(&env, "store", "links:v1");
    assert_eq!(digests.len(), 1, "{digests:?}");
    let blob = env.blob(&digests[0]);
    let listing = sh(&format!("zstd -dc {} | tar -tvf -", blob.display()));
    let line = |name: &str| -> &str {
        listing
            .lines()
            .find(|l| l.contains(&format!("opt/tree/{name}")) && !l.ends_with('/'))
            .unwrap_or_else(|| panic!("{name} not in\n{listing}"))
    };
    assert!(line("a/one").starts_with('-'), "{listing}");
    for name in ["a/three", "a/two", "b/four"] {
        let l = line(name);
        assert!(
            l.starts_with('h') && l.ends_with("link to opt/tree/a/one"),
            "{name}: {l}"
        );
    }
    assert!(
        line("c/solo").starts_with('-'),
        "a name whose other names are not copied is a file: {listing}"
    );

    // The content is stored once: the blob and the tar are about one copy of it.
    let blob_size = fs::metadata(&blob).unwrap().len();
    assert!(
        blob_size < (BIG as u64) * 3 / 2,
        "blob holds {blob_size} bytes for one {BIG}-byte file"
    );
    let tar_size: u64 = sh(&format!("zstd -dc {} | wc -c", blob.display()))
        .trim()
        .parse()
        .unwrap();
    assert!(tar_size < (BIG as u64) * 3 / 2, "tar of {tar_size} bytes");

    // GNU tar recreates them as one inode too.
    let by_tar = env.path("by-tar");
    fs::create_dir_all(&by_tar).unwrap();
    sh(&format!(
        "zstd -dc {} | tar -xf - -C {}",
        blob.display(),
        by_tar.display()
    ));
    assert_linked_tree(&by_tar.join("opt/tree"));

    // Reproducible: the same tree (copied with its links, so other inode numbers) in another
    // store gives the same layer.
    let copy = env.path("ctx-copy");
    tool("cp", &["-a", ctx.to_str().unwrap(), copy.to_str().unwrap()]);
    let out = env
        .command_in(
            Path::new(SEALER),
            &["build", "-t", "links:v1", copy.to_str().unwrap()],
            "again",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(layers(&env, "again", "links:v1"), digests);

    // pack → extract and install --local.
    let run = env.path("links.run");
    env.ok(&["pack", "links:v1", "-o", run.to_str().unwrap()]);
    let extracted = env.path("extracted");
    env.ok_in(&run, &["extract", extracted.to_str().unwrap()], "unused");
    assert_linked_tree(&find_tree(&extracted));
    let data = env.path("data");
    env.ok_in(
        &run,
        &["install", "--local", "--data-root", data.to_str().unwrap()],
        "unused",
    );
    assert_linked_tree(&find_tree(&data));

    // save → load into another store, and the package's own load: the same layer.
    let archive = env.path("links.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "links:v1"]);
    env.ok_in(
        Path::new(SEALER),
        &["load", "-i", archive.to_str().unwrap()],
        "loaded",
    );
    assert_eq!(layers(&env, "loaded", "links:v1"), digests);
    env.ok_in(&run, &["load"], "from-package");
    assert_eq!(layers(&env, "from-package", "links:v1"), digests);
}

/// A one-layer image whose layer is `tar` (uncompressed), packed with the real stub.
fn package_with_layer(env: &Sealer, name: &str, tar: &[u8]) -> PathBuf {
    let layer = env.path(&format!("{name}.layer"));
    fs::write(&layer, zstd::encode_all(tar, 3).unwrap()).unwrap();
    let digest = sha256(&fs::read(&layer).unwrap());
    let diff_id = sha256(tar);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config_json = config.to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_json.as_bytes()),
            "size": config_json.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            "digest": digest,
            "size": fs::metadata(&layer).unwrap().len(),
        }],
    });
    let manifest_json = manifest.to_string();
    let output = env.path(&format!("{name}.run"));
    packer::write(
        &packer::PackSpec {
            stub: PathBuf::from(STUB),
            image_name: format!("{name}:v1"),
            manifest_digest: sha256(manifest_json.as_bytes()),
            manifest_json,
            config_digest: sha256(config_json.as_bytes()),
            config_json,
            layers: vec![packer::LayerBlob {
                path: layer,
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
                digest,
                diff_id,
                frames: None,
                keep_frames: false,
            }],
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

/// A GNU tar holding `etc/hosts` and a hard link `evil` to `target`.
fn tar_with_hard_link(target: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "etc/hosts", &b"host"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Link);
    // append_link refuses nothing, so the hostile target goes in as written.
    b.append_link(&mut h, "evil", target).unwrap();
    b.into_inner().unwrap()
}

/// The extractor's own cases (`..`, through a symlink) are in packer/tests/unpack.rs; this one
/// goes through a real package and `app.run extract`, with a climbing and an absolute target.
#[test]
fn extract_refuses_a_layer_whose_hard_link_points_outside_the_root() {
    let env = Sealer::new();
    for (name, target) in [
        ("climbing", "../../etc/passwd"),
        ("absolute", "/etc/passwd"),
    ] {
        let run = package_with_layer(&env, name, &tar_with_hard_link(target));
        let dest = env.path(&format!("{name}-out"));
        let out = env.run_in(&run, &["extract", dest.to_str().unwrap()], "unused");
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: a link to {target} was extracted"
        );
        assert!(
            err.contains("evil") && err.contains(target),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let linked = sh(&format!(
            "find {} -name evil 2>/dev/null || true",
            dest.display()
        ));
        assert!(linked.trim().is_empty(), "{name}: {linked}");
    }
}

/// `sealer build` of `kubefile` with `files` in the context of `name`; its output.
fn build_in(env: &Sealer, name: &str, files: &[(&str, &[u8])]) -> std::process::Output {
    let ctx = env.context(name, files);
    env.run(&["build", "-t", &format!("{name}:v1"), ctx.to_str().unwrap()])
}

#[test]
fn add_of_an_archive_keeps_its_hard_links_and_refuses_links_to_names_it_does_not_hold() {
    let env = Sealer::new();
    // GNU tar's own archive of a linked tree.
    let src = env.path("src");
    fs::create_dir_all(src.join("tree/a")).unwrap();
    fs::create_dir_all(src.join("tree/b")).unwrap();
    fs::write(src.join("tree/a/one"), noise::bytes(BIG, 7)).unwrap();
    for name in ["tree/a/two", "tree/a/three", "tree/b/four"] {
        fs::hard_link(src.join("tree/a/one"), src.join(name)).unwrap();
    }
    fs::create_dir_all(src.join("tree/c")).unwrap();
    fs::write(src.join("tree/c/solo"), b"solo content\n").unwrap();
    let ctx = env.context(
        "added",
        &[("Kubefile", b"FROM scratch\nADD tree.tar /opt/\n")],
    );
    tool(
        "tar",
        &[
            "-C",
            src.to_str().unwrap(),
            "--sort=name",
            "-cf",
            ctx.join("tree.tar").to_str().unwrap(),
            "tree",
        ],
    );
    let out = env.run(&["build", "-t", "added:v1", ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digests = layers(&env, "store", "added:v1");
    let blob = env.blob(&digests[0]);
    let listing = sh(&format!("zstd -dc {} | tar -tvf -", blob.display()));
    let links = listing
        .lines()
        .filter(|l| l.starts_with('h') && l.ends_with("link to opt/tree/a/one"))
        .count();
    assert_eq!(links, 3, "{listing}");
    assert!(fs::metadata(&blob).unwrap().len() < (BIG as u64) * 3 / 2);
    let by_tar = env.path("added-out");
    fs::create_dir_all(&by_tar).unwrap();
    sh(&format!(
        "zstd -dc {} | tar -xf - -C {}",
        blob.display(),
        by_tar.display()
    ));
    let stat = sh(&format!(
        "cd {}/opt/tree && stat -c %h,%i a/one a/two a/three b/four",
        by_tar.display()
    ));
    let lines: Vec<&str> = stat.lines().collect();
    assert!(
        lines[0].starts_with("4,") && lines.iter().all(|l| *l == lines[0]),
        "{stat}"
    );

    for (name, target) in [
        ("climbing", "../../etc/passwd"),
        ("absolute", "/etc/passwd"),
        ("missing", "not/here"),
    ] {
        let out = build_in(
            &env,
            name,
            &[
                ("Kubefile", b"FROM scratch\nADD evil.tar /opt/\n"),
                ("evil.tar", &tar_with_hard_link(target)),
            ],
        );
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: a link to {target} was added"
        );
        assert!(
            err.contains("evil.tar") && err.contains("evil"),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn run_sees_copied_hard_links_as_one_inode_and_its_own_links_become_hard_link_entries() {
    let env = Sealer::new();
    let ctx = linked_context(&env, "run-ctx");
    fs::write(
        ctx.join("Kubefile"),
        "FROM scratch\nCOPY tree /opt/tree\n\
         RUN test \"$(stat -c %h,%i opt/tree/a/one)\" = \"$(stat -c %h,%i opt/tree/b/four)\" \
         && test \"$(stat -c %h opt/tree/a/one)\" = 4\n\
         RUN mkdir made && head -c 65536 opt/tree/a/one > made/first && ln made/first made/second\n",
    )
    .unwrap();
    env.build("run:v1", &ctx);
    let digests = layers(&env, "store", "run:v1");
    let last = env.blob(digests.last().unwrap());
    let listing = sh(&format!("zstd -dc {} | tar -tvf -", last.display()));
    let second = listing
        .lines()
        .find(|l| l.contains("made/second"))
        .unwrap_or_else(|| panic!("made/second not in\n{listing}"));
    assert!(
        second.starts_with('h') && second.ends_with("link to made/first"),
        "{listing}"
    );
}
