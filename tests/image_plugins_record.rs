//! An image's `plugins/*.yaml` recorded in its config at build (`io.sealer.image.plugins`), so
//! that a run does not decode every layer to find them: what the layers leave (a later layer's
//! file replaces a lower one, files that are not `*.yaml`/`*.yml` are not plugins), kept through
//! `FROM`, the same when every step comes from the cache, and read back from the layers when a
//! cache entry predates the record. The run side (record first, layers for images without one)
//! is proven by `deploy::image_plugins`'s unit tests and by `tests/inspect_runs.rs`.

mod support;

use std::fs;

use serde_json::{json, Value};
use support::clusterfile::shell_plugin;
use support::store::{sha256, Sealer};

fn config(sealer: &Sealer, name: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&fs::read(sealer.root().join("oci/index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in the store"));
    let manifest: Value =
        serde_json::from_slice(&fs::read(sealer.blob(entry["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    serde_json::from_slice(
        &fs::read(sealer.blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap()
}

fn recorded(sealer: &Sealer, name: &str) -> Value {
    config(sealer, name)["io.sealer.image"]["plugins"].clone()
}

#[test]
fn plugins_are_recorded_in_the_config_at_build() {
    let env = Sealer::new();
    let a1 = shell_plugin("a", "pre-init-host", "", "echo a1\n");
    let a2 = shell_plugin("a", "pre-init-host", "", "echo a2\n");
    let b = shell_plugin("b", "post-install", "", "echo b\n");
    let c = shell_plugin("c", "post-init-host", "", "echo c\n");

    // No plugins: an empty record (a run has nothing to decode either).
    env.build_from(
        "none:v1",
        "FROM scratch\nCOPY etc etc\n",
        &[("etc/x.conf", b"x")],
    );
    assert_eq!(recorded(&env, "none:v1"), json!({}));

    let base_files: &[(&str, &[u8])] = &[
        ("plugins/a.yaml", a1.as_bytes()),
        ("plugins/b.yaml", b.as_bytes()),
        ("plugins/readme.txt", b"not a plugin"),
        ("plugins/deeper/d.yaml", b"not directly under plugins/"),
    ];
    env.build_from(
        "base:v1",
        "FROM scratch\nCOPY plugins plugins\n",
        base_files,
    );
    assert_eq!(
        recorded(&env, "base:v1"),
        json!({"a.yaml": a1, "b.yaml": b})
    );

    // A child replaces a.yaml and adds c.yml in a later layer; the base's record carries over.
    let child_files: &[(&str, &[u8])] =
        &[("more/a.yaml", a2.as_bytes()), ("more/c.yml", c.as_bytes())];
    let child = "FROM base:v1\nCOPY more plugins\n";
    env.build_from("child:v1", child, child_files);
    let want = json!({"a.yaml": a2, "b.yaml": b, "c.yml": c});
    assert_eq!(recorded(&env, "child:v1"), want);

    // Every step from the cache: the same record.
    env.build_from("child:v2", child, child_files);
    assert_eq!(recorded(&env, "child:v2"), want);

    // Cache entries written before the record existed: the layers are read instead.
    for entry in fs::read_dir(env.root().join("cache/steps")).unwrap() {
        let path = entry.unwrap().path();
        let mut step: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        if let Some(step) = step.as_object_mut() {
            step.remove("plugins");
        }
        fs::write(&path, serde_json::to_vec(&step).unwrap()).unwrap();
    }
    env.build_from(
        "base:v2",
        "FROM scratch\nCOPY plugins plugins\n",
        base_files,
    );
    assert_eq!(recorded(&env, "base:v2"), recorded(&env, "base:v1"));

    // A base built before the record (its config has none): its layers are read.
    old_image(&env, "base:v1", "old:v1");
    assert_eq!(recorded(&env, "old:v1"), Value::Null);
    env.build_from(
        "child:v3",
        "FROM old:v1
COPY more plugins
",
        child_files,
    );
    assert_eq!(recorded(&env, "child:v3"), want);
}

/// `name` again as `old`, its config without the plugins record (as a build before it wrote).
fn old_image(sealer: &Sealer, name: &str, old: &str) {
    let mut cfg = config(sealer, name);
    cfg["io.sealer.image"]
        .as_object_mut()
        .unwrap()
        .remove("plugins");
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        fs::write(sealer.blob(&digest), bytes).unwrap();
        (digest, bytes.len())
    };
    let (config_digest, config_size) = put(&serde_json::to_vec(&cfg).unwrap());
    let index_path = sealer.root().join("oci/index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap()
        .clone();
    let mut manifest: Value =
        serde_json::from_slice(&fs::read(sealer.blob(entry["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_size);
    let (digest, size) = put(&serde_json::to_vec(&manifest).unwrap());
    let mut entry = entry;
    entry["digest"] = json!(digest);
    entry["size"] = json!(size);
    entry["annotations"]["org.opencontainers.image.ref.name"] = json!(old);
    index["manifests"].as_array_mut().unwrap().push(entry);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}
