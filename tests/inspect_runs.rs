//! `./app.run inspect` shows what an install runs as root: the image's CMDs and every hook of
//! its `plugins/*.yaml` (name, phase, scope; the script with `--hooks`), in text and JSON, with
//! secret-looking env values masked everywhere.

mod support;

use std::path::PathBuf;

use support::clusterfile::shell_plugin;
use support::store::Sealer;

const SECRET: &str = "hunter2";

/// An image with one hook (`plugins/x.yaml`), `CMD echo hi` and a password in its env, packed.
fn packed(env: &Sealer) -> PathBuf {
    let hook = shell_plugin(
        "mark-masters",
        "post-init-host",
        "  scope: master\n",
        "echo marked-by-hook > /var/tmp/marker\n",
    );
    env.build_from(
        "hooks:v1",
        "FROM scratch\nCOPY plugins plugins\nENV DB_PASSWORD=hunter2\nCMD echo hi\n",
        &[("plugins/x.yaml", hook.as_bytes())],
    );
    let out = env.path("hooks.run");
    env.ok(&["pack", "hooks:v1", "-o", out.to_str().unwrap()]);
    out
}

#[test]
fn inspect_lists_the_cmd_and_image_hooks_and_masks_secret_env() {
    let env = Sealer::new();
    let run = packed(&env);

    let plain = env.ok_in(&run, &["inspect"], "stub-store");
    assert!(plain.contains("runs as root   echo hi"), "{plain}");
    assert!(
        plain.contains("hook           mark-masters SHELL phase post-init-host scope role:master"),
        "{plain}"
    );
    assert!(
        !plain.contains("marked-by-hook"),
        "script shown without --hooks:\n{plain}"
    );
    assert!(plain.contains("DB_PASSWORD=***"), "{plain}");
    // Only the image's own hook is listed.
    assert_eq!(plain.matches("hook  ").count(), 1, "{plain}");

    let with_scripts = env.ok_in(&run, &["inspect", "--hooks"], "stub-store");
    assert!(
        with_scripts.contains("    | echo marked-by-hook > /var/tmp/marker"),
        "{with_scripts}"
    );

    let json_text = env.ok_in(&run, &["inspect", "--json", "--hooks"], "stub-store");
    let doc: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(
        doc["commands"],
        serde_json::json!(["echo hi"]),
        "{json_text}"
    );
    let hooks = doc["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{json_text}");
    assert_eq!(hooks[0]["name"], "mark-masters");
    assert_eq!(hooks[0]["kind"], "SHELL");
    assert_eq!(hooks[0]["phases"], serde_json::json!(["post-init-host"]));
    assert_eq!(hooks[0]["scope"], "role:master");
    assert!(hooks[0]["script"]
        .as_str()
        .unwrap()
        .contains("echo marked-by-hook"));

    let json_plain = env.ok_in(&run, &["inspect", "--json"], "stub-store");
    let doc: serde_json::Value = serde_json::from_str(&json_plain).unwrap();
    assert!(doc["hooks"][0].get("script").is_none(), "{json_plain}");

    for out in [&plain, &with_scripts, &json_text, &json_plain] {
        assert!(!out.contains(SECRET), "a secret env value leaked:\n{out}");
    }
}

/// The lines of `inspect` text that the one description prints (between the source's own
/// header and its layers).
fn described(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            [
                "signer ",
                "env ",
                "cmd ",
                "label ",
                "container image ",
                "sbom ",
                "runs as root ",
                "hook ",
                "config ",
                "    | ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect()
}

#[test]
fn sealer_inspect_of_the_store_image_shows_what_the_package_shows() {
    let env = Sealer::new();
    let run = packed(&env);
    let stub = env.ok_in(&run, &["inspect", "--hooks"], "stub-store");
    let store = env.ok(&["inspect", "--text", "--hooks", "hooks:v1"]);
    assert!(store.contains("runs as root   echo hi"), "{store}");
    assert!(!store.contains(SECRET), "{store}");
    assert_eq!(described(&store), described(&stub));

    let store_json: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--json", "hooks:v1"])).unwrap();
    let stub_json: serde_json::Value =
        serde_json::from_str(&env.ok_in(&run, &["inspect", "--json"], "stub-store")).unwrap();
    for key in [
        "commands",
        "hooks",
        "signer",
        "env",
        "labels",
        "container_images",
        "sbom",
        "configs",
        "config",
    ] {
        assert_eq!(store_json[key], stub_json[key], "{key}");
    }
    assert_eq!(store_json["signer"], serde_json::Value::Null);
    assert!(store_json["hooks"][0].get("script").is_none());
    // The store's own fields are still there (sealer's JSON inspect).
    assert!(store_json["layers"].is_array());
    assert!(!serde_json::to_string(&store_json).unwrap().contains(SECRET));
}

#[test]
fn a_clusterfile_adds_its_hooks_its_cmd_and_the_files_its_configs_write() {
    let env = Sealer::new();
    let run = packed(&env);
    let clusterfile = env.path("Clusterfile");
    let text = format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: shop\nspec:\n  hosts:\n    - ips: [192.168.7.2]\n      roles: [master]\n  cmd: [\"echo from-clusterfile\"]\n---\napiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: shop-conf\nspec:\n  path: etc/shop.yaml\n  strategy: merge\n  data: |\n    port: 8080\n{}",
        shell_plugin("warm-cache", "pre-install", "", "echo warming\n")
    );
    std::fs::write(&clusterfile, text).unwrap();
    let cf = clusterfile.to_str().unwrap();
    for out in [
        env.ok_in(&run, &["inspect", "-f", cf], "stub-store"),
        env.ok(&["inspect", "--text", "-f", cf, "hooks:v1"]),
    ] {
        assert!(
            out.contains("runs as root   echo from-clusterfile"),
            "{out}"
        );
        assert!(!out.contains("runs as root   echo hi"), "{out}");
        assert!(
            out.contains(
                "hook           warm-cache SHELL phase pre-install scope all (from the clusterfile)"
            ),
            "{out}"
        );
        assert!(
            out.contains("config         shop-conf writes /var/lib/sealer/data/shop/rootfs/etc/shop.yaml on every host (merge, 11 bytes)"),
            "{out}"
        );
        // The image's own hook is still there, listed first.
        let hooks: Vec<&str> = out.lines().filter(|l| l.starts_with("hook ")).collect();
        assert!(hooks[0].contains("mark-masters"), "{out}");
        assert_eq!(hooks.len(), 2, "{out}");
    }
    // A Clusterfile that does not parse: one line, non-zero.
    std::fs::write(&clusterfile, "kind: Cluster\nspec: [").unwrap();
    let out = env.run(&["inspect", "--text", "-f", cf, "hooks:v1"]);
    assert!(!out.status.success());
    assert_eq!(
        support::store::text(&out.stderr).trim_end().lines().count(),
        1
    );
}

#[test]
fn inspect_hooks_of_the_etcd_fixture_shows_its_one_hook_and_the_signer_once_signed() {
    let env = Sealer::new();
    env.build("etcd-cluster:v1", &support::store::fixture("etcd-cluster"));
    let out = env.ok(&["inspect", "--text", "--hooks", "etcd-cluster:v1"]);
    let hooks: Vec<&str> = out.lines().filter(|l| l.starts_with("hook ")).collect();
    assert_eq!(
        hooks,
        ["hook           start-etcd SHELL phase post-init-host scope role:master"],
        "{out}"
    );
    let script: Vec<&str> = out.lines().filter(|l| l.starts_with("    | ")).collect();
    assert_eq!(
        script,
        ["    | bash \"$SEALER_ROOTFS/scripts/start-etcd.sh\""]
    );
    assert!(
        out.contains("runs as root   bash scripts/check-health.sh"),
        "{out}"
    );
    assert!(out.contains("signer         unsigned"), "{out}");

    let key = env.path("vendor");
    env.ok(&[
        "key",
        "generate",
        "-o",
        key.to_str().unwrap(),
        "--unencrypted",
    ]);
    let signed = env.ok(&[
        "sign",
        "etcd-cluster:v1",
        "--key",
        env.path("vendor.key").to_str().unwrap(),
    ]);
    let id = signed.split("with key ").nth(1).unwrap().trim().to_string();
    let out = env.ok(&["inspect", "--text", "etcd-cluster:v1"]);
    assert!(out.contains(&format!("signer         {id}")), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "etcd-cluster:v1"])).unwrap();
    assert_eq!(json["signer"]["key_id"], id.as_str());
}
