//! Signed images through the real binaries and a real registry (Debian's `docker-registry` on
//! 127.0.0.1, which has no referrers API): `sealer sign IMAGE`, the signature pushed beside the
//! image under the tag `sha256-<hex>.sig` and pulled back, carried by `save`/`load`, and
//! required by `sealer run --trust`, `sealer pack --trust` and the site policy before anything
//! is written. `skopeo` judges what the registry holds and copies the image without its
//! signature, which is how an unsigned copy of the same bytes comes to exist.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::registry::{skopeo_digest, TestRegistry};
use support::store::{both, fixture, text, tool, Sealer, SEALER};

/// `sealer ARGS` with the store `root` (a directory name inside `env`).
fn sealer_in(env: &Sealer, root: &str, args: &[&str]) -> Output {
    env.run_in(Path::new(SEALER), args, root)
}

fn ok_in(env: &Sealer, root: &str, args: &[&str]) -> String {
    env.ok_in(Path::new(SEALER), args, root)
}

/// The one line a refused command prints; asserts it failed with exactly one line on stderr.
fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "not refused:\n{}", both(out));
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line:\n{err}");
    err
}

/// `sealer key generate -o DIR/NAME --unencrypted`: (NAME.key, NAME.pub).
fn key(env: &Sealer, name: &str) -> (PathBuf, PathBuf) {
    let base = env.path(name);
    env.ok(&[
        "key",
        "generate",
        "-o",
        base.to_str().unwrap(),
        "--unencrypted",
    ]);
    (
        env.path(&format!("{name}.key")),
        env.path(&format!("{name}.pub")),
    )
}

/// `sealer run IMAGE --local --data-root DATA [--trust PUB] [more]` in store `root`.
fn local_run(
    env: &Sealer,
    root: &str,
    image: &str,
    data: &Path,
    trust: Option<&Path>,
    more: &[&str],
) -> Output {
    let mut args = vec![
        "run",
        image,
        "--local",
        "--data-root",
        data.to_str().unwrap(),
    ];
    if let Some(t) = trust {
        args.extend(["--trust", t.to_str().unwrap()]);
    }
    args.extend(more);
    sealer_in(env, root, &args)
}

fn skopeo(args: &[&str]) -> String {
    tool("skopeo", args)
}

#[test]
fn a_signed_image_keeps_its_signature_through_push_pull_save_load_and_unsigned_copies_are_refused()
{
    let registry = TestRegistry::start(None);
    let env = Sealer::new();
    let (secret, public) = key(&env, "vendor");
    let (_, other_public) = key(&env, "other");
    let name = format!("{}/apps/hello:v1", registry.host());
    let copy = format!("{}/apps/copy:v1", registry.host());
    env.build(&name, &fixture("hello"));
    let digest = env.inspect(&name)["digest"].as_str().unwrap().to_string();
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let data = env.path("data");

    // Unsigned: refused before anything is written.
    let err = refused(&local_run(&env, "store", &name, &data, Some(&public), &[]));
    assert!(err.contains("is unsigned"), "{err}");
    assert!(!data.exists(), "a refused run wrote {}", data.display());

    let said = env.ok(&["sign", &name, "--key", secret.to_str().unwrap()]);
    assert!(said.contains(&digest), "{said}");
    let dry = local_run(&env, "store", &name, &data, Some(&public), &["--dry-run"]);
    assert!(dry.status.success(), "{}", both(&dry));
    // Signed by a key --trust does not name.
    let err = refused(&local_run(
        &env,
        "store",
        &name,
        &data,
        Some(&other_public),
        &["--dry-run"],
    ));
    assert!(err.contains("which --trust does not trust"), "{err}");

    // push: the image, then its signature under the fallback tag.
    let pushed = env.ok(&["push", "--insecure", &name]);
    assert!(pushed.contains(&sig_tag), "{pushed}");
    assert_eq!(skopeo_digest(&name).as_deref(), Some(digest.as_str()));
    let artifact: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}/apps/hello:{sig_tag}", registry.host()),
    ]))
    .unwrap();
    assert_eq!(artifact["subject"]["digest"], digest.as_str());
    assert_eq!(
        artifact["layers"][0]["mediaType"],
        "application/vnd.sealer.signature.minisign.v1"
    );

    // skopeo copies the image untouched, and without the signature.
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{name}"),
        &format!("docker://{copy}"),
    ]);
    assert_eq!(skopeo_digest(&copy).as_deref(), Some(digest.as_str()));

    // pull into a fresh store: signed, and the bill of materials in its config came along.
    ok_in(&env, "pulled", &["pull", "--insecure", &name]);
    assert_eq!(
        ok_in(&env, "pulled", &["inspect", "--sbom", &name]),
        env.ok(&["inspect", "--sbom", &name])
    );
    let dry = local_run(&env, "pulled", &name, &data, Some(&public), &["--dry-run"]);
    assert!(dry.status.success(), "{}", both(&dry));
    let run = env.path("hello.run");
    ok_in(
        &env,
        "pulled",
        &[
            "pack",
            &name,
            "-o",
            run.to_str().unwrap(),
            "--trust",
            public.to_str().unwrap(),
        ],
    );
    assert!(run.is_file());

    // The same bytes re-tagged without the signature: refused by run and pack, nothing written.
    ok_in(&env, "copied", &["pull", "--insecure", &copy]);
    let err = refused(&local_run(&env, "copied", &copy, &data, Some(&public), &[]));
    assert!(err.contains(&format!("image {copy} is unsigned")), "{err}");
    assert!(!data.exists());
    let unsigned_run = env.path("copy.run");
    let err = refused(&sealer_in(
        &env,
        "copied",
        &[
            "pack",
            &copy,
            "-o",
            unsigned_run.to_str().unwrap(),
            "--trust",
            public.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("is unsigned"), "{err}");
    assert!(!unsigned_run.exists());
    // The site policy asks the same of a run without --trust.
    let policy = env.path("policy");
    fs::create_dir_all(&policy).unwrap();
    fs::copy(&public, policy.join("vendor.pub")).unwrap();
    let out = env
        .command_in(
            Path::new(SEALER),
            &[
                "run",
                &copy,
                "--local",
                "--data-root",
                data.to_str().unwrap(),
            ],
            "copied",
        )
        .env("SEALER_TRUST_DIR", &policy)
        .output()
        .unwrap();
    let err = refused(&out);
    assert!(err.contains("the trust policy in"), "{err}");

    // save -> load keeps it; skopeo still reads the archive's image.
    let archive = env.path("hello.tar");
    ok_in(
        &env,
        "pulled",
        &["save", "-o", archive.to_str().unwrap(), &name],
    );
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}:{name}", archive.display()),
    ]))
    .unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    ok_in(&env, "loaded", &["load", "-i", archive.to_str().unwrap()]);
    let dry = local_run(&env, "loaded", &name, &data, Some(&public), &["--dry-run"]);
    assert!(dry.status.success(), "{}", both(&dry));

    // A flipped byte in the stored signature: refused with one line.
    let sig_file = env
        .path("loaded")
        .join("signatures")
        .join(format!("{}.minisig", digest.trim_start_matches("sha256:")));
    let mut lines: Vec<String> = fs::read_to_string(&sig_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Line 2 is the signature: 2 bytes of algorithm and 8 of key id, then the signature proper.
    let mut sig: Vec<char> = lines[1].chars().collect();
    sig[40] = if sig[40] == 'A' { 'B' } else { 'A' };
    lines[1] = sig.into_iter().collect();
    fs::write(&sig_file, lines.join("\n") + "\n").unwrap();
    let err = refused(&local_run(&env, "loaded", &name, &data, Some(&public), &[]));
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(!data.exists());

    // Removing the image removes its signature with its blobs.
    ok_in(&env, "loaded", &["rmi", &name]);
    assert!(!sig_file.exists(), "rmi left the signature behind");
}
