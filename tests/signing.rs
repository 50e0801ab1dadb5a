//! Signed packages through the real binaries: `sealer key generate`, `sealer pack --sign`,
//! `sealer sign`, `sealer verify`, the stub's `verify --trust`, the site policy
//! (`SEALER_TRUST_DIR`) on `verify`, `extract`, `install --local` and `load`, and Debian's
//! `minisign -V` as the outside judge of our signatures.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use packer::format::{Footer, Header};
use support::noise;
use support::store::{fixture, Sealer, STUB};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one line a refused command prints, and a check that it failed with exactly one line.
fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal, got success:\n{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{err}");
    lines[0].to_string()
}

/// `sealer key generate -o DIR/NAME --unencrypted`; returns (NAME.key, NAME.pub).
fn unencrypted_key(env: &Sealer, name: &str) -> (PathBuf, PathBuf) {
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

/// The key id in the comment of a `.pub` file (what minisign prints).
fn key_id(public: &Path) -> String {
    let text = fs::read_to_string(public).unwrap();
    text.lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string()
}

/// The hello fixture built and packed (signed with `key` when given) into `NAME.run`.
fn packed(env: &Sealer, name: &str, key: Option<&Path>) -> PathBuf {
    if env.run(&["inspect", "hello:v1"]).status.success() {
        // built already
    } else {
        env.build("hello:v1", &fixture("hello"));
    }
    let out = env.path(&format!("{name}.run"));
    let mut args = vec!["pack", "hello:v1", "-o", out.to_str().unwrap()];
    if let Some(key) = key {
        args.extend(["--sign", key.to_str().unwrap()]);
    }
    env.ok(&args);
    out
}

/// `./app.run ARGS` with the site policy in `trust_dir` (or none).
fn stub_run(env: &Sealer, run: &Path, args: &[&str], trust_dir: Option<&Path>) -> Output {
    let mut c = env.command_in(run, args, "stub-store");
    match trust_dir {
        Some(dir) => c.env("SEALER_TRUST_DIR", dir),
        None => c.env_remove("SEALER_TRUST_DIR"),
    };
    c.output().unwrap()
}

/// Where volume 0's header starts, and the manifest's offset and length, from the footer.
fn layout(bytes: &[u8]) -> (usize, usize, usize) {
    let footer = Footer::decode(&bytes[bytes.len() - 64..]).unwrap();
    let header = bytes.len() - footer.volume_len as usize;
    (
        header,
        header + footer.manifest_offset as usize,
        footer.manifest_len as usize,
    )
}

/// A policy directory holding copies of `keys`.
fn policy(env: &Sealer, name: &str, keys: &[&Path]) -> PathBuf {
    let dir = env.path(name);
    fs::create_dir_all(&dir).unwrap();
    for (i, key) in keys.iter().enumerate() {
        fs::copy(key, dir.join(format!("key{i}.pub"))).unwrap();
    }
    dir
}

#[test]
fn keys_are_written_unencrypted_or_under_a_password_and_never_overwritten() {
    let env = Sealer::new();
    let (secret, public) = unencrypted_key(&env, "ci");
    assert!(fs::read_to_string(&secret)
        .unwrap()
        .starts_with("untrusted comment:"));
    assert_eq!(key_id(&public).len(), 16);
    let again = env.run(&[
        "key",
        "generate",
        "-o",
        env.path("ci").to_str().unwrap(),
        "--unencrypted",
    ]);
    assert!(refused(&again).contains("already exists"));

    // An encrypted key: the password from stdin when made, from the environment when used.
    let mut child = env
        .command()
        .args([
            "key",
            "generate",
            "-o",
            env.path("vendor").to_str().unwrap(),
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let made = child.wait_with_output().unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let key = env.path("vendor.key");
    let pubkey = env.path("vendor.pub");
    env.build("hello:v1", &fixture("hello"));
    let out = env.path("enc.run");
    let pack = |password: Option<&str>| {
        let mut c = env.command();
        c.args([
            "pack",
            "hello:v1",
            "-o",
            out.to_str().unwrap(),
            "--sign",
            key.to_str().unwrap(),
        ]);
        match password {
            Some(p) => c.env("SEALER_KEY_PASSWORD", p),
            None => c.env_remove("SEALER_KEY_PASSWORD"),
        };
        c.output().unwrap()
    };
    assert!(refused(&pack(None)).contains("is encrypted"));
    assert!(refused(&pack(Some("wrong horse"))).contains("password"));
    assert!(!out.exists(), "a refused key still packed");
    let ok = pack(Some("correct horse"));
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let verified = stub_run(
        &env,
        &out,
        &["verify", "--trust", pubkey.to_str().unwrap()],
        None,
    );
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    assert!(text(&verified.stdout).contains(&key_id(&pubkey)));

    // Debian's minisign signs with our secret key files too.
    let file = env.path("note.txt");
    fs::write(&file, "note").unwrap();
    let mut sign = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&key)
        .arg("-m")
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sign.stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    assert!(sign.wait_with_output().unwrap().status.success());
    let check = Command::new("minisign")
        .args(["-V", "-p"])
        .arg(&pubkey)
        .arg("-m")
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
}

#[test]
fn a_signed_package_verifies_with_its_key_and_shows_the_signer() {
    let env = Sealer::new();
    let (secret, public) = unencrypted_key(&env, "vendor");
    let id = key_id(&public);
    let run = packed(&env, "app", Some(&secret));

    let out = stub_run(
        &env,
        &run,
        &["verify", "--trust", public.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains(&format!("signed by key {id}")), "{said}");
    assert!(said.contains("image:hello:v1"), "{said}");
    assert!(said.contains("intact"), "{said}");

    // The key line itself works as well as the file, and `sealer verify` agrees.
    let line = fs::read_to_string(&public).unwrap();
    let line = line.lines().nth(1).unwrap();
    let out = env.ok(&["verify", run.to_str().unwrap(), "--trust", line]);
    assert!(out.contains(&format!("signed by key {id}")), "{out}");

    let summary = text(&stub_run(&env, &run, &[], None).stdout);
    assert!(
        summary.contains(&format!("signer        {id}")),
        "{summary}"
    );
    let inspect = text(&stub_run(&env, &run, &["inspect"], None).stdout);
    assert!(
        inspect.contains(&format!("signer         {id}")),
        "{inspect}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&stub_run(&env, &run, &["inspect", "--json"], None).stdout).unwrap();
    assert_eq!(json["signer"]["key_id"], id.as_str());

    let unsigned = packed(&env, "plain", None);
    let summary = text(&stub_run(&env, &unsigned, &[], None).stdout);
    assert!(summary.contains("signer        unsigned"), "{summary}");
}

#[test]
fn a_package_signed_by_another_key_is_refused() {
    let env = Sealer::new();
    let (secret, _) = unencrypted_key(&env, "vendor");
    let (_, other) = unencrypted_key(&env, "other");
    let run = packed(&env, "app", Some(&secret));
    let out = stub_run(
        &env,
        &run,
        &["verify", "--trust", other.to_str().unwrap()],
        None,
    );
    let line = refused(&out);
    assert!(line.contains("which --trust does not trust"), "{line}");
    assert!(line.contains(&key_id(&other)), "{line}");
    let out = env.run(&[
        "verify",
        run.to_str().unwrap(),
        "--trust",
        other.to_str().unwrap(),
    ]);
    assert!(refused(&out).contains("does not trust"));
}

#[test]
fn debian_minisign_verifies_our_signature_over_the_manifest_bytes() {
    let env = Sealer::new();
    let (secret, public) = unencrypted_key(&env, "vendor");
    let run = packed(&env, "app", Some(&secret));
    let manifest = stub_run(&env, &run, &["inspect", "--manifest"], None);
    assert!(manifest.status.success());
    let signature = stub_run(&env, &run, &["inspect", "--signature"], None);
    assert!(signature.status.success());
    let manifest_file = env.path("manifest.json");
    let sig_file = env.path("manifest.json.minisig");
    fs::write(&manifest_file, &manifest.stdout).unwrap();
    fs::write(&sig_file, &signature.stdout).unwrap();
    let minisign = |file: &Path| {
        Command::new("minisign")
            .args(["-V", "-m"])
            .arg(file)
            .arg("-p")
            .arg(&public)
            .arg("-x")
            .arg(&sig_file)
            .output()
            .expect("minisign is installed (scripts/ci-deps.sh)")
    };
    let ok = minisign(&manifest_file);
    assert!(ok.status.success(), "minisign: {}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("payload:"),
        "{}",
        text(&ok.stdout)
    );
    // The payload id is the sha256 of exactly these bytes.
    let json: serde_json::Value =
        serde_json::from_slice(&stub_run(&env, &run, &["inspect", "--json"], None).stdout).unwrap();
    let sum = Command::new("sha256sum")
        .arg(&manifest_file)
        .output()
        .unwrap();
    assert!(text(&sum.stdout).starts_with(json["payload_id"].as_str().unwrap()));
    // And minisign refuses one changed byte.
    let mut changed = manifest.stdout.clone();
    changed[10] ^= 1;
    let changed_file = env.path("changed.json");
    fs::write(&changed_file, &changed).unwrap();
    assert!(!minisign(&changed_file).status.success());
}

#[test]
fn a_site_policy_refuses_unsigned_and_foreign_packages_before_writing_anything() {
    let env = Sealer::new();
    let (vendor_key, vendor_pub) = unencrypted_key(&env, "vendor");
    let (other_key, _) = unencrypted_key(&env, "other");
    let trust = policy(&env, "trust", &[&vendor_pub]);
    let unsigned = packed(&env, "plain", None);
    let foreign = packed(&env, "foreign", Some(&other_key));
    let signed = packed(&env, "signed", Some(&vendor_key));
    let store = env.path("stub-store");

    for (run, reason) in [(&unsigned, "is unsigned"), (&foreign, "does not trust")] {
        let line = refused(&stub_run(&env, run, &["verify"], Some(&trust)));
        assert!(line.contains(reason), "{line}");
        let dir = env.path("extracted");
        let line = refused(&stub_run(
            &env,
            run,
            &["extract", dir.to_str().unwrap()],
            Some(&trust),
        ));
        assert!(line.contains(reason), "{line}");
        assert!(!dir.exists(), "extract wrote {}", dir.display());
        let data = env.path("data");
        let line = refused(&stub_run(
            &env,
            run,
            &["install", "--local", "--data-root", data.to_str().unwrap()],
            Some(&trust),
        ));
        assert!(line.contains(reason), "{line}");
        assert!(!data.exists(), "install wrote {}", data.display());
        let line = refused(&stub_run(&env, run, &["load"], Some(&trust)));
        assert!(line.contains(reason), "{line}");
        assert!(!store.exists(), "load wrote {}", store.display());
    }

    // The vendor's package passes the same policy, and without a policy nothing changes.
    let dir = env.path("extracted");
    let out = stub_run(
        &env,
        &signed,
        &["extract", dir.to_str().unwrap()],
        Some(&trust),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("etc/hello.conf").is_file());
    let dir = env.path("extracted-unsigned");
    let out = stub_run(&env, &unsigned, &["extract", dir.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A policy directory without keys trusts nothing; a named one that is missing is an error.
    let empty = policy(&env, "empty", &[]);
    let line = refused(&stub_run(&env, &signed, &["verify"], Some(&empty)));
    assert!(line.contains("holds no *.pub key"), "{line}");
    let line = refused(&stub_run(
        &env,
        &signed,
        &["verify"],
        Some(&env.path("nowhere")),
    ));
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn a_flipped_byte_in_the_signature_manifest_or_a_frame_is_refused() {
    let env = Sealer::new();
    let (secret, public) = unencrypted_key(&env, "vendor");
    let run = packed(&env, "app", Some(&secret));
    let original = fs::read(&run).unwrap();
    let (header, manifest_at, manifest_len) = layout(&original);
    let trust = public.to_str().unwrap();
    let verify = |bytes: &[u8]| {
        support::write_program(&run, bytes);
        refused(&stub_run(&env, &run, &["verify", "--trust", trust], None))
    };

    // The signature: its record's checksum catches a flipped byte, with or without a key...
    let line = verify(&flipped_in(&original, header + 1024 + 32 + 60));
    assert!(
        line.contains("signature record") && line.contains("damaged"),
        "{line}"
    );
    let line = refused(&stub_run(&env, &run, &["verify"], None));
    assert!(line.contains("damaged"), "{line}");
    // ...and Ed25519 catches one whose record was rewritten with a valid checksum.
    let signature = text(
        &stub_run(
            &env,
            &run_of(&original, &run),
            &["inspect", "--signature"],
            None,
        )
        .stdout,
    );
    let mut lines: Vec<String> = signature.lines().map(str::to_string).collect();
    let mut sig_line = lines[1].clone().into_bytes();
    sig_line[50] = if sig_line[50] == b'A' { b'B' } else { b'A' };
    lines[1] = String::from_utf8(sig_line).unwrap();
    let forged_sig = lines.join("\n") + "\n";
    let slot = packer::signature::encode_slot(7, &forged_sig).unwrap();
    let mut resigned = original.clone();
    resigned[header + 1024..header + 1024 + slot.len()].copy_from_slice(&slot);
    let line = verify(&resigned);
    assert!(line.contains("does not match its manifest"), "{line}");

    // The manifest: its sha256 no longer matches the payload id.
    let line = verify(&flipped_in(&original, manifest_at + manifest_len / 2));
    assert!(line.contains("manifest"), "{line}");

    // A forger who also rewrites the payload id in header and footer meets the signature.
    let mut forged = original.clone();
    let manifest = &mut forged[manifest_at..manifest_at + manifest_len];
    let name = b"\"name\":\"hello:v1\"";
    let at = manifest
        .windows(name.len())
        .position(|w| w == name)
        .unwrap();
    manifest[at + name.len() - 2] = b'2';
    let id = packer::format::payload_id(&forged[manifest_at..manifest_at + manifest_len]);
    let mut h = Header::decode(&forged[header..header + 4096]).unwrap();
    h.payload_id = id;
    forged[header..header + 96].copy_from_slice(&h.encode()[..96]);
    let end = forged.len();
    let mut f = Footer::decode(&forged[end - 64..]).unwrap();
    f.payload_id_prefix.copy_from_slice(&id[..16]);
    forged[end - 64..].copy_from_slice(&f.encode());
    let line = verify(&forged);
    assert!(
        line.contains("does not match its manifest")
            && line.contains("changed after it was signed"),
        "{line}"
    );
    // Without a trusted key that forgery is a valid unsigned-looking package: the signature is
    // what catches it.
    support::write_program(&run, &forged);
    assert!(stub_run(&env, &run, &["verify"], None).status.success());

    // A frame: the signature holds, the integrity check names the frame.
    let line = verify(&flipped_in(&original, original.len() - 64 - 10));
    assert!(line.contains("frame") && line.contains("corrupt"), "{line}");
}

/// Writes `bytes` to `run` and returns its path.
fn run_of(bytes: &[u8], run: &Path) -> PathBuf {
    support::write_program(run, bytes);
    run.to_path_buf()
}

/// `bytes` with one byte flipped at `at`.
fn flipped_in(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[at] ^= 0x01;
    bytes
}

#[test]
fn sealer_sign_signs_and_re_signs_a_package_in_place() {
    let env = Sealer::new();
    let (first_key, first_pub) = unencrypted_key(&env, "first");
    let (second_key, second_pub) = unencrypted_key(&env, "second");
    let run = packed(&env, "app", None);
    let before = fs::read(&run).unwrap();
    env.ok(&[
        "sign",
        run.to_str().unwrap(),
        "--key",
        first_key.to_str().unwrap(),
    ]);
    let after = fs::read(&run).unwrap();
    // Only the signature record changed: the header's slots.
    let (header, _, _) = layout(&before);
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(!changed.is_empty());
    assert!(
        changed
            .iter()
            .all(|&i| i >= header + 1024 && i < header + 4096),
        "bytes outside the signature record changed"
    );
    env.ok(&[
        "verify",
        run.to_str().unwrap(),
        "--trust",
        first_pub.to_str().unwrap(),
    ]);

    // Signed again by another key: the new signer is the one that counts.
    let out = env.ok(&[
        "sign",
        run.to_str().unwrap(),
        "--key",
        second_key.to_str().unwrap(),
    ]);
    assert!(out.contains("replacing"), "{out}");
    env.ok(&[
        "verify",
        run.to_str().unwrap(),
        "--trust",
        second_pub.to_str().unwrap(),
    ]);
    let out = env.run(&[
        "verify",
        run.to_str().unwrap(),
        "--trust",
        first_pub.to_str().unwrap(),
    ]);
    assert!(refused(&out).contains("does not trust"));
}

#[test]
fn a_split_package_is_signed_through_its_first_file() {
    let env = Sealer::new();
    let (key, public) = unencrypted_key(&env, "vendor");
    let ctx = env.context(
        "ctx",
        &[
            ("big.bin", &noise::bytes(24 << 20, 7)),
            ("Kubefile", b"FROM scratch\nCOPY big.bin /data/\n"),
        ],
    );
    env.build("big:1", &ctx);
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
    let volume = env.path("big.run.v001");
    let volume_before = fs::read(&volume).unwrap();
    env.ok(&[
        "sign",
        run.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&volume).unwrap(), volume_before);
    let out = stub_run(
        &env,
        &run,
        &["verify", "--trust", public.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_version_1_package_is_signed_verified_and_loaded_by_this_build() {
    let env = Sealer::new();
    let (key, public) = unencrypted_key(&env, "site");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/packages/format-v1.run");
    let run = env.path("old.run");
    fs::copy(&fixture, &run).unwrap();
    env.ok(&[
        "sign",
        run.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let out = env.ok(&[
        "verify",
        run.to_str().unwrap(),
        "--trust",
        public.to_str().unwrap(),
    ]);
    assert!(out.contains("signed by"), "{out}");
    // This build's stub, driven against the old file, loads it with the digests it names.
    let loaded = env
        .command_in(Path::new(STUB), &["load"], "stub-store")
        .env("SEALER_RUN_FILE", &run)
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{}", refused(&loaded));
    let images = env.ok_in(
        Path::new(support::store::SEALER),
        &["inspect", "fixture/format-v1:1"],
        "stub-store",
    );
    assert!(
        images.contains("sha256:f81c106d29200c6843911a5308ebc5b41e97167f98936a1639b086716111cf2f"),
        "{images}"
    );
}
