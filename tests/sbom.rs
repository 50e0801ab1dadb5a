//! The bill of materials every build writes: CycloneDX 1.5 JSON in the image config, judged by
//! the CycloneDX JSON schema validator of `cyclonedx-python-lib` (installed by
//! `scripts/ci-deps.sh` in its own venv); its file hashes are checked against `sha256sum` of what
//! `./app.run extract` writes. It travels with save/load and inside the `.run`, whose manifest
//! (the signed bytes) carries it.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;
use support::store::{both, fixture, text, tool, Sealer};

/// The venv `scripts/ci-deps.sh` installs `cyclonedx-python-lib` into.
fn validator_python() -> PathBuf {
    let venv = std::env::var_os("SEALER_CYCLONEDX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sealer-ci/cyclonedx"));
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/ci-deps.sh (it installs cyclonedx-python-lib there)",
        python.display()
    );
    python
}

const VALIDATE: &str = r#"
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
if error is not None:
    print(str(error).splitlines()[0])
    sys.exit(1)
"#;

/// Whether the CycloneDX 1.5 JSON schema accepts `doc`; the validator's first line when not.
fn schema_check(dir: &Path, doc: &str) -> Result<(), String> {
    let file = dir.join("bom-under-test.json");
    std::fs::write(&file, doc).unwrap();
    let out = Command::new(validator_python())
        .args(["-c", VALIDATE])
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(both(&out))
    }
}

fn file_component<'a>(bom: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "file" && c["name"] == name)
}

fn sha256sum(path: &Path) -> String {
    tool("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_etcd_fixture_sbom_lists_its_binaries_with_sha256_and_validates_as_cyclonedx_1_5() {
    let env = Sealer::new();
    env.build("etcd-cluster:v1", &fixture("etcd-cluster"));
    let text_doc = env.ok(&["inspect", "--sbom", "etcd-cluster:v1"]);
    let bom: serde_json::Value = serde_json::from_str(&text_doc).unwrap();
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");
    schema_check(env.dir(), &text_doc).unwrap_or_else(|e| panic!("schema refused it: {e}"));

    // The validator is a real judge: a document it must refuse is refused.
    let mut broken = bom.clone();
    broken["components"][0]["type"] = "binary".into();
    assert!(schema_check(env.dir(), &broken.to_string()).is_err());

    // Every file's hash and size agree with what the package unpacks.
    let run = env.path("etcd.run");
    env.ok(&["pack", "etcd-cluster:v1", "-o", run.to_str().unwrap()]);
    let root = env.path("extracted");
    env.ok_in(&run, &["extract", root.to_str().unwrap()], "stub-store");
    for binary in ["/usr/bin/etcd", "/usr/bin/etcdctl"] {
        let c = file_component(&bom, binary).unwrap_or_else(|| panic!("{binary} not listed"));
        let on_disk = root.join(binary.trim_start_matches('/'));
        assert_eq!(c["hashes"][0]["alg"], "SHA-256");
        assert_eq!(c["hashes"][0]["content"], sha256sum(&on_disk), "{binary}");
        let size = std::fs::metadata(&on_disk).unwrap().len().to_string();
        let listed = c["properties"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "sealer:file:size")
            .unwrap();
        assert_eq!(listed["value"], size.as_str(), "{binary}");
    }
    let files = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "file")
        .count();
    let on_disk = tool("find", &[root.to_str().unwrap(), "-type", "f"])
        .lines()
        .count();
    assert_eq!(files, on_disk, "one component per file of the root");

    // The package carries the same document, in the image config beside the manifest; the
    // manifest (what its signature signs) holds the sha256 of the config as stored.
    let from_run = env.ok_in(&run, &["inspect", "--sbom"], "stub-store");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&from_run).unwrap(),
        bom
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&env.ok_in(&run, &["inspect", "--manifest"], "stub-store")).unwrap();
    let documents = &manifest["image"]["documents"];
    let file = fs::read(&run).unwrap();
    let header_at = file.len() - manifest["volumes"][0]["len"].as_u64().unwrap() as usize;
    let start = header_at + documents["offset"].as_u64().unwrap() as usize;
    let len =
        documents["manifest_len"].as_u64().unwrap() + documents["config_len"].as_u64().unwrap();
    let stored = &file[start..start + len as usize];
    assert_eq!(
        hex::encode(sha2::Sha256::digest(stored)),
        documents["sha256"].as_str().unwrap()
    );
    let etcd_hash = file_component(&bom, "/usr/bin/etcd").unwrap()["hashes"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(String::from_utf8_lossy(stored).contains(&etcd_hash));

    // save -> load into another store keeps it.
    let archive = env.path("etcd.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "etcd-cluster:v1"]);
    env.ok_in(
        Path::new(support::store::SEALER),
        &["load", "-i", archive.to_str().unwrap()],
        "other-store",
    );
    let loaded = env.ok_in(
        Path::new(support::store::SEALER),
        &["inspect", "--sbom", "etcd-cluster:v1"],
        "other-store",
    );
    assert_eq!(loaded, text_doc);
}

const DPKG_STATUS: &str = "Package: bash\nStatus: install ok installed\nPriority: required\nArchitecture: amd64\nVersion: 5.2.15-2+b2\nDescription: GNU Bourne Again SHell\n more text\n\nPackage: removed-tool\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\n";

#[test]
fn dpkg_packages_deleted_files_and_the_base_image_are_what_the_sbom_says() {
    let env = Sealer::new();
    env.build_from(
        "base:v1",
        "FROM scratch\nCOPY var var\nCOPY opt opt\n",
        &[
            ("var/lib/dpkg/status", DPKG_STATUS.as_bytes()),
            ("opt/app/keep", b"keep"),
            ("opt/app/drop", b"drop"),
        ],
    );
    env.build_from(
        "app:v1",
        "FROM base:v1\nRUN rm opt/app/drop\nCOPY new opt/app/new\n",
        &[("new", b"new")],
    );
    let base_digest = env.inspect("base:v1")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = env.ok(&["inspect", "--sbom", "app:v1"]);
    schema_check(env.dir(), &doc).unwrap_or_else(|e| panic!("schema refused it: {e}"));
    let bom: serde_json::Value = serde_json::from_str(&doc).unwrap();

    let packages: Vec<(&str, &str)> = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "library")
        .map(|c| (c["name"].as_str().unwrap(), c["purl"].as_str().unwrap()))
        .collect();
    assert_eq!(
        packages,
        [
            ("bash", "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64"),
            ("libc6", "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64"),
        ]
    );
    assert!(file_component(&bom, "/opt/app/keep").is_some());
    assert!(file_component(&bom, "/opt/app/new").is_some());
    assert!(
        file_component(&bom, "/opt/app/drop").is_none(),
        "a file RUN deleted is still listed"
    );
    let ancestor = &bom["metadata"]["component"]["pedigree"]["ancestors"][0];
    assert_eq!(ancestor["name"], "base:v1");
    assert_eq!(ancestor["version"], base_digest.as_str());
    assert_eq!(bom["metadata"]["component"]["name"], "app:v1");
}

#[test]
fn an_image_built_without_sbom_says_so_in_one_line() {
    let env = Sealer::new();
    let ctx = env.context(
        "ctx",
        &[("Kubefile", b"FROM scratch\nCOPY a a\n"), ("a", b"a")],
    );
    let out = env
        .command()
        .args(["build", "--no-sbom", "-t", "bare:v1"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert!(!text(&out.stdout).contains("SBOM:"));
    let out = env.run(&["inspect", "--sbom", "bare:v1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("carries no bill of materials"), "{err}");
}

#[test]
fn container_images_are_listed_with_their_digests_and_their_blobs_as_files() {
    let registry = support::registry::TestRegistry::start(None);
    let env = Sealer::new();
    let image = support::oci::push(env.dir(), &registry.host(), "web", "1", 100_000, 7);
    let ctx = env.context(
        "ctx",
        &[
            ("Kubefile", b"FROM scratch\nCOPY a a\n" as &[u8]),
            ("a", b"a"),
            (
                "manifests/imageList",
                format!("{}\n", image.reference).as_bytes(),
            ),
        ],
    );
    let out = env
        .command()
        .args(["build", "-t", "web-app:v1"])
        .arg(&ctx)
        .env("SEALER_INSECURE_REGISTRIES", registry.host())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let doc = env.ok(&["inspect", "--sbom", "web-app:v1"]);
    schema_check(env.dir(), &doc).unwrap_or_else(|e| panic!("schema refused it: {e}"));
    let bom: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let containers: Vec<&serde_json::Value> = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "container")
        .collect();
    assert_eq!(containers.len(), 1, "{doc}");
    assert_eq!(containers[0]["name"], image.reference.as_str());
    assert_eq!(containers[0]["version"], image.manifest.as_str());
    // Every blob of the image is a file of the images layer, its hash the digest it is named by
    // (and, checked here, the sha256 of what the package extracts).
    let run = env.path("web.run");
    env.ok(&["pack", "web-app:v1", "-o", run.to_str().unwrap()]);
    let root = env.path("extracted");
    env.ok_in(&run, &["extract", root.to_str().unwrap()], "stub-store");
    for digest in image.blobs() {
        let hex = digest.trim_start_matches("sha256:");
        let name = format!("/images/blobs/sha256/{hex}");
        let c = file_component(&bom, &name).unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(c["hashes"][0]["content"], hex);
        assert_eq!(sha256sum(&root.join(&name[1..])), hex);
    }
}
