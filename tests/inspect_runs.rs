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
