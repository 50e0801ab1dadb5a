//! End to end, an upgrade sends only what changed (issue 10 item 7, issue 11's upgrade case):
//! hosts keep the frames of their installed and previous generation, so the engine sends only
//! the frames a host lacks and the report says how much it reused.
//!
//! One testbed of a master (which serves the container images) and a node. Three CloudImages
//! share a data layer of ten frames of noise (one file per frame) and a list of container images
//! (made offline, pushed with skopeo to Debian's docker-registry on 127.0.0.1): v1 lists two
//! images, v2 adds a third, v3 changes one data file (10 % of the layer's frames). The frames
//! each image is made of are read from the store, independently of the install. Each container
//! image is a journal step of its own on the master: the first install checks both, the dry
//! run of v2 lists foo's and bar's steps done and baz's to do, and v1 → v2 runs only baz's,
//! sends the master the added image's frames and the node nearly nothing, and the master
//! serves all three images; a rerun sends 0 B and finds every image served; a layer deleted
//! from the master's served store is put back by the next rerun from the kept frames (0 B
//! sent), and with those frames deleted too, from the images layer's frames sent again (and
//! only those); v2 → v3 sends each host at most 1.1× the changed frames;
//! each host's spool holds the frames of exactly the two generations it keeps; a rollback
//! brings v2 back, and upgrading to v3 again sends the master no frame at all, and the node only
//! the kept frame the test damaged on its disk; `delete --all` leaves no data root.
//!
//! Needs root, the testbed tools, skopeo and docker-registry (`scripts/ci-deps.sh`); skipped
//! elsewhere unless `CI` or `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde_json::Value;
use support::registry::{skopeo_digest, TestRegistry};
use support::store::{both, sha256, Sealer, STUB};
use support::testbed::{TestHost, Testbed};
use support::{containerd, noise, oci};

const DATA_ROOT: &str = "/var/lib/sealer-e2e";
const CLUSTER: &str = "upg";
const CERTS: &str = "/etc/containerd/certs.d";
/// The registry port when the Clusterfile names none.
const PORT: u16 = 5000;
/// Files of the data layer, each large enough to close a frame of its own.
const DATA_FILES: usize = 10;
const DATA_FILE_LEN: usize = 9 << 20;
/// The data file v3 changes.
const CHANGED_FILE: usize = 3;

/// One frame of an image as the store holds it.
#[derive(Debug, Clone)]
struct StoredFrame {
    sha256: String,
    len: u64,
    /// In the images layer (sent to registry hosts only).
    images: bool,
}

/// The frames of `image` in the store, read through the library's own payload reader.
fn frames_of(store: &Sealer, image: &str) -> Vec<StoredFrame> {
    let opened = sealer::store::Store::open(store.root()).unwrap();
    let found = opened.image_by_name(image).unwrap();
    let payload = sealer::deploy::Payload::from_store(&opened, &found, Path::new(STUB)).unwrap();
    payload
        .layers
        .iter()
        .flat_map(|l| {
            l.frames.iter().map(|f| StoredFrame {
                sha256: f.sha256.clone(),
                len: f.compressed_len,
                images: l.container_images,
            })
        })
        .collect()
}

/// The frames a host gets: all on the master, all but the images layer's on the node.
fn for_host(frames: &[StoredFrame], master: bool) -> Vec<StoredFrame> {
    frames
        .iter()
        .filter(|f| master || !f.images)
        .cloned()
        .collect()
}

fn shas(frames: &[StoredFrame]) -> HashSet<String> {
    frames.iter().map(|f| f.sha256.clone()).collect()
}

/// Bytes of the frames of `new` that are not among `old`'s.
fn changed_bytes(new: &[StoredFrame], old: &[StoredFrame]) -> u64 {
    let old = shas(old);
    let mut seen = HashSet::new();
    new.iter()
        .filter(|f| !old.contains(&f.sha256) && seen.insert(f.sha256.clone()))
        .map(|f| f.len)
        .sum()
}

/// The frames in `host`'s spool, read through its root filesystem as mounted here.
fn spooled(bed: &Testbed, host: &TestHost) -> HashSet<String> {
    let dir = bed
        .host_root(host)
        .join(format!("{DATA_ROOT}/{CLUSTER}/.sealer/spool").trim_start_matches('/'));
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn host_file(bed: &Testbed, host: &TestHost, path: &str) -> PathBuf {
    bed.host_root(host).join(path.trim_start_matches('/'))
}

/// `sealer ARGS... --known-hosts BED`: (the `--json` report when asked for, all output, ok).
fn sealer(store: &Sealer, bed: &Testbed, args: &[&str]) -> (Value, String, bool) {
    let out = store
        .command()
        .args(args)
        .arg("--known-hosts")
        .arg(bed.known_hosts_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        json,
        format!("{}[{}]", both(&out), out.status),
        out.status.success(),
    )
}

/// A host's entry in a `--json` report.
fn entry<'j>(json: &'j Value, host: &TestHost, text: &str) -> &'j Value {
    let ip = host.ip.to_string();
    json["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["ip"] == ip.as_str()))
        .unwrap_or_else(|| panic!("no report entry for {ip}:\n{text}"))
}

fn number(entry: &Value, field: &str) -> u64 {
    entry[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {entry}"))
}

#[test]
fn an_upgrade_sends_only_the_frames_a_host_lacks_and_rollback_rerun_and_delete_still_work() {
    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    let hosts = bed.hosts();
    let (master, node) = (&hosts[0], &hosts[1]);

    step("container images pushed, CloudImages v1, v2 (one image more), v3 (one data file changed) built");
    let store = Sealer::new();
    let source = TestRegistry::start(None);
    let registry = source.host();
    let foo = oci::push(store.dir(), &registry, "foo", "1", 1_500_000, 11);
    let bar = oci::push(store.dir(), &registry, "bar", "2", 1_000_000, 12);
    let baz = oci::push(store.dir(), &registry, "baz", "3", 2_000_000, 13);
    let data: Vec<Vec<u8>> = (0..DATA_FILES)
        .map(|i| noise::bytes(DATA_FILE_LEN, 100 + i as u64))
        .collect();
    let changed = noise::bytes(DATA_FILE_LEN, 999);
    let build = |tag: &str, images: &[&oci::TestImage], change: bool| {
        let names: Vec<String> = (0..DATA_FILES).map(|i| format!("data/f{i:02}")).collect();
        let list: String = images.iter().fold(String::new(), |mut s, i| {
            writeln!(s, "{}", i.reference).unwrap();
            s
        });
        let mut files: Vec<(&str, &[u8])> = vec![
            (
                "Kubefile",
                b"FROM scratch\nCOPY data data\nCOPY manifests manifests\n",
            ),
            ("manifests/imageList", list.as_bytes()),
        ];
        for (i, name) in names.iter().enumerate() {
            let body = if change && i == CHANGED_FILE {
                &changed
            } else {
                &data[i]
            };
            files.push((name, body));
        }
        let ctx = store.context(&tag.replace(':', "-"), &files);
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
    };
    build("upg:v1", &[&foo, &bar], false);
    build("upg:v2", &[&foo, &bar, &baz], false);
    build("upg:v3", &[&foo, &bar, &baz], true);
    let (v1, v2, v3) = (
        frames_of(&store, "upg:v1"),
        frames_of(&store, "upg:v2"),
        frames_of(&store, "upg:v3"),
    );
    // The test's premise: v3 changes one of the data layer's ten frames and nothing else.
    let data_frames = v3.iter().filter(|f| f.len > 8 << 20).count();
    assert_eq!(data_frames, DATA_FILES, "one data file per frame: {v3:?}");
    let v3_new: Vec<&StoredFrame> = v3
        .iter()
        .filter(|f| !shas(&v2).contains(&f.sha256))
        .collect();
    assert_eq!(v3_new.len(), 1, "v3 changes exactly one frame: {v3_new:?}");
    let baz_bytes: u64 = baz
        .blobs()
        .iter()
        .map(|d| {
            std::fs::metadata(
                store
                    .dir()
                    .join(format!("oci-baz-3/blobs/sha256/{}", &d[7..])),
            )
            .unwrap()
            .len()
        })
        .sum();

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("Clusterfile");
    std::fs::write(
        &file,
        format!(
            "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: {CLUSTER}\nspec:\n  dataRoot: {DATA_ROOT}\n  ssh: {{user: root, pk: {}}}\n  hosts:\n    - ips: [{}]\n      roles: [master]\n    - ips: [{}]\n      roles: [node]\n",
            bed.key_path().display(),
            master.ip,
            node.ip
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for host in hosts {
        containerd::write_config(&bed, host, CERTS);
    }
    let run = |image: &str| sealer(&store, &bed, &["run", image, "-f", file, "--json"]);
    let mut problems: Vec<String> = Vec::new();

    step("install v1");
    let (_, text, ok) = run("upg:v1");
    assert!(ok, "install v1:\n{text}");
    let images_line =
        |host: &TestHost, line: &str| format!("[{}] container images: {line}", host.ip);
    assert!(
        text.contains(&images_line(
            master,
            &format!(
                "0 already served, 2 checked ({}, {})",
                bar.reference, foo.reference
            )
        )) || text.contains(&images_line(
            master,
            &format!(
                "0 already served, 2 checked ({}, {})",
                foo.reference, bar.reference
            )
        )),
        "the master's image steps on the first install:\n{text}"
    );
    assert!(
        !text.contains(&format!("[{}] container images", node.ip)),
        "the node serves no images and has no image steps:\n{text}"
    );
    for (host, is_master) in [(master, true), (node, false)] {
        assert_eq!(
            spooled(&bed, host),
            shas(&for_host(&v1, is_master)),
            "{host}: the spool after the first install holds the installed frames"
        );
    }

    step("dry run of v1 -> v2: the master's steps of foo and bar done, baz's to do");
    let (_, text, ok) = sealer(&store, &bed, &["run", "upg:v2", "-f", file, "--dry-run"]);
    assert!(ok, "dry run of v2:\n{text}");
    for (image, what) in [(&foo, "skip"), (&bar, "skip"), (&baz, "run ")] {
        let line = format!("{what} image {} {}", image.manifest, image.reference);
        assert_eq!(
            text.matches(&line).count(),
            1,
            "the dry run lists {line:?} once (on the master only):\n{text}"
        );
    }

    step("upgrade v1 -> v2 (one more container image)");
    let (json, text, ok) = run("upg:v2");
    assert!(ok, "upgrade to v2:\n{text}");
    eprintln!("{text}");
    assert!(
        text.contains(&images_line(
            master,
            &format!("2 already served, 1 checked ({})", baz.reference)
        )),
        "only the added image's step runs on the master:\n{text}"
    );
    let images = |json: &Value, host: &TestHost, text: &str| {
        let e = entry(json, host, text);
        (number(e, "images_served"), number(e, "images_checked"))
    };
    assert_eq!(images(&json, master, &text), (2, 1), "{text}");
    assert_eq!(images(&json, node, &text), (0, 0), "{text}");
    let m = entry(&json, master, &text);
    let (sent, needed, reused) = (
        number(m, "bytes_sent"),
        number(m, "bytes_needed"),
        number(m, "bytes_reused"),
    );
    let new_on_master = changed_bytes(&for_host(&v2, true), &for_host(&v1, true));
    assert!(
        sent >= baz_bytes && sent <= new_on_master + new_on_master / 10 + 4096,
        "the master was sent {sent} B; the added image's blobs are {baz_bytes} B and v2's frames it lacked {new_on_master} B:\n{text}"
    );
    // The added image's blobs are nearly all of it (the rest: the image index and the list).
    assert!(
        new_on_master <= baz_bytes + 64 * 1024,
        "the master lacked {new_on_master} B of frames for a {baz_bytes} B image"
    );
    let v2_master: u64 = {
        let mut seen = HashSet::new();
        for_host(&v2, true)
            .iter()
            .filter(|f| seen.insert(f.sha256.clone()))
            .map(|f| f.len)
            .sum()
    };
    assert_eq!(needed, v2_master, "{text}");
    assert_eq!(reused, needed - new_on_master, "{text}");
    assert!(
        text.contains(&format!("[{}] frames: sending", master.ip)) && text.contains("reusing"),
        "the run does not say what was reused:\n{text}"
    );
    let n = entry(&json, node, &text);
    let new_on_node = changed_bytes(&for_host(&v2, false), &for_host(&v1, false));
    assert!(
        number(n, "bytes_sent") <= new_on_node + 4096 && new_on_node < 4096,
        "the node was sent {} B (it lacked {new_on_node} B):\n{text}",
        number(n, "bytes_sent")
    );
    for image in [&foo, &bar, &baz] {
        let name = image.reference.split_once('/').unwrap().1;
        let served = skopeo_digest(&format!("{}:{PORT}/{name}", master.ip));
        if served.as_deref() != Some(image.manifest.as_str()) {
            problems.push(format!(
                "after the upgrade the master serves {name} as {served:?}, not {}",
                image.manifest
            ));
        }
    }
    for (host, is_master) in [(master, true), (node, false)] {
        let want: HashSet<String> = shas(&for_host(&v2, is_master))
            .union(&shas(&for_host(&v1, is_master)))
            .cloned()
            .collect();
        assert_eq!(spooled(&bed, host), want, "{host}: v1 and v2's frames");
    }

    step("rerun v2: 0 B sent, every image step already done");
    let (json, text, ok) = run("upg:v2");
    assert!(ok, "rerun of v2:\n{text}");
    for host in hosts {
        let e = entry(&json, host, &text);
        assert_eq!(e["outcome"], "up_to_date", "{text}");
        assert_eq!(number(e, "bytes_sent"), 0, "{text}");
    }
    assert!(
        text.contains(&images_line(master, "3 already served, none checked")),
        "the rerun finds every image served:\n{text}"
    );
    assert_eq!(images(&json, master, &text), (3, 0), "{text}");

    step("a layer of bar deleted from the master's served store: the rerun puts it back from the kept frames, 0 B sent");
    let served_blob = |digest: &str| {
        host_file(
            &bed,
            master,
            &format!(
                "{DATA_ROOT}/{CLUSTER}/rootfs/images/blobs/sha256/{}",
                &digest[7..]
            ),
        )
    };
    let layer_bytes = std::fs::read(served_blob(&bar.layer)).unwrap();
    std::fs::remove_file(served_blob(&bar.layer)).unwrap();
    let (json, text, ok) = run("upg:v2");
    assert!(ok, "rerun of v2 with a blob gone:\n{text}");
    let m = entry(&json, master, &text);
    assert_eq!(m["outcome"], "installed", "{text}");
    assert_eq!(number(m, "bytes_sent"), 0, "{text}");
    assert_eq!(images(&json, master, &text), (2, 1), "{text}");
    let hex = &bar.layer[7..];
    assert!(
        text.contains(&format!(
            "[{}] image {} {}: the registry's store lacks blobs/sha256/{hex}; putting it back",
            master.ip, bar.manifest, bar.reference
        )) && text.contains(&images_line(
            master,
            &format!(
                "2 already served, 1 checked ({}), 1 of them repaired",
                bar.reference
            )
        )),
        "the rerun names the image and repairs it:\n{text}"
    );
    assert_eq!(
        std::fs::read(served_blob(&bar.layer)).unwrap(),
        layer_bytes,
        "the repaired layer"
    );

    step(
        "the same with the images layer's kept frames gone too: they are sent again, and only they",
    );
    std::fs::remove_file(served_blob(&bar.layer)).unwrap();
    let images_frames: Vec<&StoredFrame> = {
        let mut seen = HashSet::new();
        v2.iter()
            .filter(|f| f.images && seen.insert(f.sha256.clone()))
            .collect()
    };
    for f in &images_frames {
        std::fs::remove_file(host_file(
            &bed,
            master,
            &format!("{DATA_ROOT}/{CLUSTER}/.sealer/spool/{}", f.sha256),
        ))
        .unwrap();
    }
    let images_bytes: u64 = images_frames.iter().map(|f| f.len).sum();
    let (json, text, ok) = run("upg:v2");
    assert!(ok, "rerun of v2 with a blob and the frames gone:\n{text}");
    let sent = number(entry(&json, master, &text), "bytes_sent");
    assert!(
        sent >= images_bytes && sent <= images_bytes + 4096,
        "the master was sent {sent} B; the images layer's frames are {images_bytes} B:\n{text}"
    );
    assert_eq!(
        std::fs::read(served_blob(&bar.layer)).unwrap(),
        layer_bytes,
        "the layer repaired from frames sent again"
    );
    assert_eq!(
        number(entry(&json, node, &text), "bytes_sent"),
        0,
        "the node:\n{text}"
    );
    for image in [&foo, &bar, &baz] {
        let name = image.reference.split_once('/').unwrap().1;
        let served = skopeo_digest(&format!("{}:{PORT}/{name}", master.ip));
        if served.as_deref() != Some(image.manifest.as_str()) {
            problems.push(format!(
                "after the repair the master serves {name} as {served:?}, not {}",
                image.manifest
            ));
        }
    }
    let (json, text, ok) = run("upg:v2");
    assert!(ok, "rerun of v2 after the repairs:\n{text}");
    for host in hosts {
        let e = entry(&json, host, &text);
        assert_eq!(e["outcome"], "up_to_date", "{text}");
        assert_eq!(number(e, "bytes_sent"), 0, "{text}");
    }

    step("upgrade v2 -> v3 (10 % of the data layer's frames changed)");
    let (json, text, ok) = run("upg:v3");
    assert!(ok, "upgrade to v3:\n{text}");
    eprintln!("{text}");
    for (host, is_master) in [(master, true), (node, false)] {
        let e = entry(&json, host, &text);
        let lacked = changed_bytes(&for_host(&v3, is_master), &for_host(&v2, is_master));
        let sent = number(e, "bytes_sent");
        assert!(
            sent >= lacked && sent as f64 <= 1.1 * lacked as f64,
            "{host} was sent {sent} B for {lacked} B of changed frames:\n{text}"
        );
        assert_eq!(
            number(e, "bytes_reused"),
            number(e, "bytes_needed") - lacked,
            "{text}"
        );
        // Bounded: the frames of the two generations the host keeps, v1's own are gone.
        let want: HashSet<String> = shas(&for_host(&v3, is_master))
            .union(&shas(&for_host(&v2, is_master)))
            .cloned()
            .collect();
        let held = spooled(&bed, host);
        assert_eq!(held, want, "{host}: the spool after the upgrade to v3");
        let only_v1: Vec<String> = shas(&for_host(&v1, is_master))
            .difference(&want)
            .cloned()
            .collect();
        assert!(
            !only_v1.is_empty() || !is_master,
            "v1 has frames of its own"
        );
        let changed_path = format!("{DATA_ROOT}/{CLUSTER}/rootfs/data/f{CHANGED_FILE:02}");
        assert_eq!(
            sha256(&std::fs::read(host_file(&bed, host, &changed_path)).unwrap()),
            sha256(&changed),
            "{host}: v3's file"
        );
    }

    step("rollback to v2");
    let (_, text, ok) = sealer(&store, &bed, &["rollback", "--cluster-name", CLUSTER]);
    assert!(ok, "rollback:\n{text}");
    let changed_path = format!("{DATA_ROOT}/{CLUSTER}/rootfs/data/f{CHANGED_FILE:02}");
    for (host, is_master) in [(master, true), (node, false)] {
        assert_eq!(
            sha256(&std::fs::read(host_file(&bed, host, &changed_path)).unwrap()),
            sha256(&data[CHANGED_FILE]),
            "{host}: v2's file after the rollback"
        );
        let want: HashSet<String> = shas(&for_host(&v3, is_master))
            .union(&shas(&for_host(&v2, is_master)))
            .cloned()
            .collect();
        assert_eq!(
            spooled(&bed, host),
            want,
            "{host}: the spool after the rollback"
        );
    }
    if skopeo_digest(&format!("{}:{PORT}/library/baz:3", master.ip)).as_deref()
        != Some(baz.manifest.as_str())
    {
        problems.push("after the rollback the master does not serve baz:3".into());
    }

    step("upgrade to v3 again: the master is sent no frame; the node, one kept frame damaged on its disk, that frame only");
    // A kept frame is not hashed when the engine asks what the host lacks; the unpack, which
    // hashes every frame, finds it damaged, removes it, and the retry sends it.
    let damaged = v3_new[0];
    let damaged_path = host_file(
        &bed,
        node,
        &format!("{DATA_ROOT}/{CLUSTER}/.sealer/spool/{}", damaged.sha256),
    );
    let mut bytes = std::fs::read(&damaged_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&damaged_path, bytes).unwrap();
    let (json, text, ok) = run("upg:v3");
    assert!(ok, "upgrade to v3 again:\n{text}");
    for host in hosts {
        let e = entry(&json, host, &text);
        assert_eq!(e["outcome"], "installed", "{text}");
        let sent = number(e, "bytes_sent");
        if host == master {
            assert_eq!(sent, 0, "{text}");
            assert_eq!(
                number(e, "bytes_reused"),
                number(e, "bytes_needed"),
                "{text}"
            );
        } else {
            assert!(
                sent >= damaged.len && sent as f64 <= 1.1 * damaged.len as f64,
                "{host} was sent {sent} B for one damaged {} B frame:\n{text}",
                damaged.len
            );
        }
        assert_eq!(
            sha256(&std::fs::read(host_file(&bed, host, &changed_path)).unwrap()),
            sha256(&changed),
            "{host}: v3's file again"
        );
    }
    let (json, text, ok) = run("upg:v3");
    assert!(ok, "rerun of v3:\n{text}");
    for host in hosts {
        assert_eq!(number(entry(&json, host, &text), "bytes_sent"), 0, "{text}");
    }

    step("delete --all leaves nothing of ours");
    let (_, text, ok) = sealer(
        &store,
        &bed,
        &["delete", "--all", "--cluster-name", CLUSTER],
    );
    assert!(ok, "delete --all:\n{text}");
    for host in hosts {
        assert!(
            !host_file(&bed, host, DATA_ROOT).exists(),
            "{host}: the data root is left"
        );
    }

    step("done");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
