//! The messages of common mistakes, through the real binaries: each says what is wrong, where,
//! and what to do next, and fails before anything is changed or any host is contacted. A test
//! holds each message's text, so a reworded message is a deliberate change here too.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::store::{both, Sealer};

/// A store holding one small image, `msg:v1`.
fn image() -> Sealer {
    let store = Sealer::new();
    store.build_from("msg:v1", "FROM scratch\nCOPY a a\n", &[("a", b"a\n")]);
    store
}

/// [`image`] packed into `app.run` in the store's directory.
fn packed() -> (Sealer, PathBuf) {
    let store = image();
    let run = store.path("app.run");
    store.ok(&["pack", "msg:v1", "-o", run.to_str().unwrap()]);
    (store, run)
}

/// `program ARGS` failed, and its stderr (both streams on a panic).
fn failed(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure:\n{}", both(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_has(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "missing {w:?} in:\n{text}");
    }
}

/// `sh FILE` run in `dir`.
fn sh(dir: &Path, file: &str) -> Output {
    Command::new("sh")
        .arg(file)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn sh_app_run_says_it_is_a_program_and_how_to_run_it() {
    let (store, run) = packed();
    let dir = store.path("plain");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&run, dir.join("app.run")).unwrap();
    let out = sh(&dir, "app.run");
    assert_eq!(out.status.code(), Some(126), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_has(
        &err,
        &["app.run is a sealer installer: a program, not a shell script; sh and bash cannot run it. Run it as ./app.run"],
    );
    assert!(!err.contains("Syntax error"), "{err}");
    assert!(!err.contains("noexec"), "{err}");

    // Not executable (a copy that lost its mode): chmod +x first.
    let file = dir.join("app.run");
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&file, perms).unwrap();
    let err = failed(sh(&dir, "app.run"));
    assert_has(
        &err,
        &["it is not executable yet: chmod +x app.run && ./app.run"],
    );

    // The package still runs and verifies itself: the notice changed nothing it reads.
    let out = Command::new(&run).arg("verify").output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
}

/// A tmpfs mounted noexec, unmounted when dropped.
struct NoexecMount(PathBuf);

impl Drop for NoexecMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn sh_app_run_on_a_noexec_mount_says_to_copy_it_to_an_exec_mount() {
    let (store, run) = packed();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a noexec tmpfs needs root");
        return;
    }
    let dir = store.path("usb");
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "noexec,size=256m", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let _mount = NoexecMount(dir.clone());
    std::fs::copy(&run, dir.join("app.run")).unwrap();

    // What the operator saw first: the kernel refuses to run it.
    let direct = Command::new(dir.join("app.run")).arg("--version").output();
    assert!(direct.is_err(), "a noexec mount ran a program");

    let out = sh(&dir, "app.run");
    assert_eq!(out.status.code(), Some(126), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_has(
        &err,
        &[
            &format!("it lies on {}, mounted noexec", dir.display()),
            "copy it to a directory on an exec mount and run it there (cp app.run /root/ && chmod +x /root/app.run && /root/app.run)",
            &format!("mount -o remount,exec {}", dir.display()),
        ],
    );
    assert!(!err.contains("chmod +x app.run &&"), "{err}");
}

#[test]
fn sealer_load_of_a_run_package_says_to_run_its_load() {
    let (store, run) = packed();
    let err = failed(store.run(&["load", "-i", run.to_str().unwrap()]));
    assert_has(
        &err,
        &[
            "is a .run package (an installer), not an OCI archive: import its image with",
            &format!("`{} load`", run.display()),
            "`sealer load -i` takes archives written by `sealer save`",
        ],
    );
    assert!(!err.contains("cksum"), "{err}");
}

#[test]
fn a_failing_run_that_printed_nothing_says_so_and_names_the_step() {
    let store = Sealer::new();
    let ctx = store.context("ctx", &[("Kubefile", b"FROM scratch\nRUN false\n")]);
    let err = failed(
        store
            .command()
            .args(["build", "-t", "f:1"])
            .arg(&ctx)
            .output()
            .unwrap(),
    );
    assert_has(
        &err,
        &[
            "Kubefile:2: RUN false failed with exit code 1; the store is unchanged. It printed nothing",
            "make the command report its failure",
        ],
    );

    let ctx = store.context(
        "ctx2",
        &[(
            "Kubefile",
            b"FROM scratch\nRUN echo compiling; echo 'missing header' >&2; exit 3\n",
        )],
    );
    let err = failed(
        store
            .command()
            .args(["build", "-t", "f:2"])
            .arg(&ctx)
            .output()
            .unwrap(),
    );
    assert_has(
        &err,
        // stdout and stderr are read apart, so their lines may come in either order.
        &[
            "failed with exit code 3; the store is unchanged. Last output:\n",
            "\ncompiling",
            "\nmissing header",
        ],
    );
}

#[test]
fn an_exec_form_run_of_a_missing_program_names_the_line_and_the_shell_form() {
    let store = Sealer::new();
    let ctx = store.context(
        "ctx",
        &[("Kubefile", b"FROM scratch\n\nRUN [\"no-such-program-x\"]\n")],
    );
    let err = failed(
        store
            .command()
            .args(["build", "-t", "x:1"])
            .arg(&ctx)
            .output()
            .unwrap(),
    );
    assert_has(
        &err,
        &[
            "Kubefile:3: RUN [\"no-such-program-x\"]: starting no-such-program-x: No such file or directory",
            "the exec form runs the program as written, without a shell",
            "write the shell form RUN no-such-program-x",
        ],
    );
}

/// `sealer run` on two loopback addresses where nothing listens for SSH: any attempt to
/// connect would report the hosts, so a message without them was given before connecting.
fn run_on_two_hosts(store: &Sealer, extra: &[&str]) -> Command {
    let mut c = store.command();
    c.args(["run", "msg:v1", "-m", "127.0.0.2", "-n", "127.0.0.3"])
        .args(extra);
    c
}

fn refused_before_connecting(err: &str) {
    assert!(
        !err.contains("127.0.0.2") && !err.contains("127.0.0.3"),
        "a host was contacted:\n{err}"
    );
}

#[test]
fn a_missing_private_key_is_refused_before_any_host_is_contacted() {
    let store = image();
    let err = failed(
        run_on_two_hosts(&store, &["--pk", "/nonexistent/id_ed25519"])
            .output()
            .unwrap(),
    );
    assert_has(
        &err,
        &["private key /nonexistent/id_ed25519 (--pk) does not exist; give the path of the private key that the hosts accept"],
    );
    refused_before_connecting(&err);
}

fn keygen(path: &Path, passphrase: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_public_key_given_as_the_private_key_names_the_private_one() {
    let store = image();
    let key = store.path("pubtest_key");
    keygen(&key, "");
    let public = format!("{}.pub", key.display());
    let err = failed(
        run_on_two_hosts(&store, &["--pk", &public])
            .output()
            .unwrap(),
    );
    assert_has(
        &err,
        &[&format!(
            "{public} (--pk) is a public key; give the private key, {} (the public key belongs in ~/.ssh/authorized_keys on the hosts)",
            key.display()
        )],
    );
    refused_before_connecting(&err);
}

#[test]
fn an_encrypted_key_without_a_passphrase_says_how_to_give_it() {
    let store = image();
    let key = store.path("enc_key");
    keygen(&key, "correct horse");
    let err = failed(
        run_on_two_hosts(&store, &["--pk", key.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_has(
        &err,
        &[&format!(
            "private key {} (--pk) is encrypted and no passphrase was given: run on a terminal to be asked for it, or give it in $SEALER_SSH_KEY_PASSPHRASE (--pk-passwd works too, but other users can see it in the process list)",
            key.display()
        )],
    );
    refused_before_connecting(&err);
}

#[test]
fn a_password_on_the_command_line_is_warned_about_and_masked_nowhere_else() {
    let store = image();
    let out = run_on_two_hosts(&store, &["-p", "hunter2", "--pk", "/nonexistent/key"])
        .output()
        .unwrap();
    let err = failed(out);
    assert_has(
        &err,
        &["warning: -p on the command line: other users of this machine can read it in the process list; use $SEALER_SSH_PASSWORD"],
    );
    assert!(!err.contains("hunter2"), "{err}");

    // From the environment: no warning.
    let out = run_on_two_hosts(&store, &["--pk", "/nonexistent/key"])
        .env("SEALER_SSH_PASSWORD", "hunter2")
        .output()
        .unwrap();
    let err = failed(out);
    assert!(!err.contains("warning: "), "{err}");
}

#[test]
fn counts_of_one_are_singular_in_build_and_pack() {
    let store = Sealer::new();
    let ctx = store.context(
        "ctx",
        &[("Kubefile", b"FROM scratch\nCOPY a a\n"), ("a", b"a\n")],
    );
    let built = store.ok(&["build", "-t", "one:1", ctx.to_str().unwrap()]);
    assert!(
        built.contains("Built one:1 (1 layer, 0/2 steps from cache)"),
        "{built}"
    );
    let run = store.path("one.run");
    let packed = store.ok(&["pack", "one:1", "-o", run.to_str().unwrap()]);
    assert!(
        packed.contains("1 of 1 layer copied without recompression"),
        "{packed}"
    );
}

#[test]
fn logout_when_not_logged_in_says_so_and_succeeds() {
    let store = Sealer::new();
    let auth = store.path("auth.json");
    let out = store
        .command()
        .args(["logout", "registry.example:5000"])
        .env("REGISTRY_AUTH_FILE", &auth)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Not logged in to registry.example:5000: ")
            && said.contains("holds no credentials for it"),
        "{said}"
    );
}

#[test]
fn a_local_install_by_a_user_who_cannot_write_the_data_root_is_refused_before_it_starts() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching to another user needs root");
        return;
    }
    let (store, run) = packed();
    // A directory anyone may read, holding the package.
    let dir = store.path("shared");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("app.run");
    support::copy_program(&run, &file);
    for path in [store.dir(), dir.as_path()] {
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(path, perms).unwrap();
    }
    let data = store.path("root-only/data");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&file)
        .args(["install", "--local", "--data-root"])
        .arg(&data)
        .env("SEALER_ROOT", store.path("nobody-store"))
        .output()
        .unwrap();
    let err = failed(out);
    assert_has(
        &err,
        &[&format!(
            "--local as a user other than root: {} (where the data root {} goes) is not writable by this user, so the install would fail part way; run it as root (sudo), or give a --data-root this user can write",
            data.parent().unwrap().display(),
            data.display()
        )],
    );
    assert!(!data.exists(), "something was written");
}

#[test]
fn a_load_that_moves_a_tag_to_another_image_warns_naming_both_digests() {
    let (store, run) = packed();
    let before = store.inspect("msg:v1");
    let old = before["digest"].as_str().unwrap().to_string();
    // The same name now for other content: loading the package moves it back.
    store.build_from("msg:v1", "FROM scratch\nCOPY b b\n", &[("b", b"b\n")]);
    let rebuilt = store.inspect("msg:v1")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rebuilt, old);
    let out = support::store::command(&run, &store.root())
        .arg("load")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_has(
        &err,
        &[&format!(
            "warning: msg:v1 named {rebuilt} before this load and now names {old}; the image it named is no longer tagged"
        )],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("Loaded image: msg:v1 ({old})")),
        "{said}"
    );

    // Loading it again moves nothing: no warning.
    let out = support::store::command(&run, &store.root())
        .arg("load")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

/// The digest a package's `load` stores, from `./app.run load`'s own line.
fn loaded_digest(store_dir: &Path, run: &Path) -> String {
    let out = support::store::command(run, store_dir)
        .arg("load")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.split_once("Loaded image: msg:v1 (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(digest, _)| digest.to_string())
        .unwrap_or_else(|| panic!("no digest in {said}"))
}

#[test]
fn a_package_packed_at_another_level_says_which_digest_load_gives() {
    let store = image();
    let packed_from = store.inspect("msg:v1")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let say = |args: &[&str], file: &str| {
        let run = store.path(file);
        let mut all = vec!["pack", "msg:v1", "-o", run.to_str().unwrap()];
        all.extend_from_slice(args);
        (store.ok(&all), run)
    };

    // Frames copied as built: the same digest, and nothing said about it.
    let (said, copied) = say(&[], "copied.run");
    assert!(!said.contains("load gives"), "{said}");
    assert_eq!(
        loaded_digest(&store.path("copied-store"), &copied),
        packed_from
    );
    let shown = store.ok_in(&copied, &["inspect", "--json"], "copied-store");
    let doc: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(doc["load_digest"], packed_from.as_str());

    // Recompressed at --level 19: pack, the summary, inspect and inspect --json all name the
    // digest that load then stores.
    let (said, level) = say(&["--level", "19"], "level.run");
    let loaded = loaded_digest(&store.path("level-store"), &level);
    assert_ne!(loaded, packed_from);
    assert_has(
        &said,
        &[&format!(
            "Image {packed_from}; load gives {loaded}: its layers were recompressed at another level"
        )],
    );
    let summary = store.ok_in(&level, &[], "level-store");
    assert_has(&summary, &[&format!("load          load gives {loaded}")]);
    let inspect = store.ok_in(&level, &["inspect"], "level-store");
    assert_has(&inspect, &[&format!("load           load gives {loaded}")]);
    let shown = store.ok_in(&level, &["inspect", "--json"], "level-store");
    let doc: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(doc["load_digest"], loaded.as_str());

    // xz: load recompresses, so the package says the digest will differ and that load prints it.
    let (said, xz) = say(&["--compression", "xz"], "xz.run");
    assert_has(
        &said,
        &[&format!(
            "Image {packed_from}; load gives another digest than {packed_from}: it recompresses the xz layers"
        )],
    );
    let shown = store.ok_in(&xz, &["inspect", "--json"], "xz-store");
    let doc: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert!(doc["load_digest"].is_null(), "{shown}");
    assert_ne!(loaded_digest(&store.path("xz-store"), &xz), packed_from);
}

#[test]
fn a_hook_and_a_cmd_are_named_when_they_run_and_their_stderr_is_shown_on_success() {
    let store = Sealer::new();
    let plugin = b"apiVersion: sealer.io/v2\nkind: Plugin\nmetadata:\n  name: setup-kernel\nspec:\n  type: SHELL\n  action: pre-install\n  data: |\n    echo to-stdout-from-hook\n    echo a-warning-from-the-hook >&2\n";
    store.build_from(
        "hook:v1",
        "FROM scratch\nCOPY setup.yaml plugins/\nCMD echo cmd-out; echo cmd-err >&2\n",
        &[("setup.yaml", plugin)],
    );
    let data = store.path("data");
    let out = store.run(&[
        "run",
        "hook:v1",
        "--local",
        "--data-root",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", both(&out));
    let said = both(&out);
    let lines: Vec<&str> = said.lines().collect();
    let at = |wanted: &str| {
        lines
            .iter()
            .position(|l| *l == wanted)
            .unwrap_or_else(|| panic!("missing {wanted:?} in:\n{said}"))
    };
    let stage = at("[127.0.0.1] pre-install");
    let named = at("[127.0.0.1] running pre-install hook setup-kernel");
    let stdout = at("[127.0.0.1] to-stdout-from-hook");
    let stderr = at("[127.0.0.1] (stderr) a-warning-from-the-hook");
    assert!(stage < named && named < stdout && stdout < stderr, "{said}");
    let cmd = at("[127.0.0.1] running CMD echo cmd-out; echo cmd-err >&2");
    assert!(cmd < at("[127.0.0.1] (stderr) cmd-err"), "{said}");
}

#[test]
fn a_new_host_key_is_printed_with_its_fingerprint_when_it_is_recorded() {
    let Some(bed) = support::testbed::Testbed::up_for_test(1) else {
        return;
    };
    let host = &bed.hosts()[0];
    let store = image();
    let known = store.path("known_hosts");
    let check = |known: &Path| {
        store
            .command()
            .args(["check", "msg:v1", "-m", &host.ip.to_string(), "--pk"])
            .arg(bed.key_path())
            .arg("--known-hosts")
            .arg(known)
            .output()
            .unwrap()
    };
    let out = check(&known);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let recorded = std::fs::read_to_string(&known).unwrap_or_default();
    assert!(recorded.contains(&host.ip.to_string()), "{err}");
    // The fingerprint ssh-keygen gives for the key recorded.
    let listed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&known)
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{listed:?}");
    assert_has(
        &err,
        &[&format!(
            "[root@{}] new host key {fingerprint} recorded in {}",
            host.ip,
            known.display()
        )],
    );
    // Known now: not printed again.
    let again = check(&known);
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("new host key"),
        "{}",
        both(&again)
    );
}

/// `sealer ARGS` on a terminal (a pty from `script`), `typed` written to it, HOME empty and no
/// ssh-agent; what the terminal showed.
fn on_a_terminal(store: &Sealer, args: &[&str], typed: &str) -> String {
    use std::io::Write;
    let home = store.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let line = std::iter::once(support::store::SEALER)
        .chain(args.iter().copied())
        .map(support::containerd::sh_quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("SEALER_ROOT", store.root())
        .env("HOME", &home)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stdin.write_all(typed.as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    both(&out)
}

#[test]
fn on_a_terminal_the_ssh_password_and_the_registry_password_are_asked_for() {
    let store = image();
    let screen = on_a_terminal(
        &store,
        &["run", "msg:v1", "-m", "127.0.0.2", "-n", "127.0.0.3"],
        "not-the-password\n",
    );
    assert_has(&screen, &["SSH password for root@127.0.0.2 and 1 more: "]);
    assert!(!screen.contains("not-the-password"), "echoed: {screen}");

    let screen = on_a_terminal(
        &store,
        &["login", "127.0.0.1:1", "-u", "alice", "--insecure"],
        "not-the-password\n",
    );
    assert_has(&screen, &["Password for alice at 127.0.0.1:1: "]);
    assert!(!screen.contains("not-the-password"), "echoed: {screen}");
}

#[test]
fn sealer_images_aligns_its_columns_to_the_longest_name() {
    let store = image();
    let long = "registry.example.com:5000/a/very/long/repository/path/for-the-app:v1.2.3";
    store.ok(&["tag", "msg:v1", long]);
    let table = store.ok(&["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    // Every row's DIGEST column starts where the header's does.
    let at = lines[0].find("DIGEST").unwrap();
    for row in &lines[1..] {
        assert_eq!(&row[at..at + 7], "sha256:", "{table}");
        assert_eq!(row.as_bytes()[at - 1], b' ', "{table}");
    }
}

#[test]
fn an_unreachable_registry_given_with_insecure_does_not_suggest_insecure() {
    let store = Sealer::new();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let err = failed(store.run(&["pull", "127.0.0.1:1/app:1", "--insecure"]));
    assert_has(
        &err,
        &[
            "cannot reach registry 127.0.0.1:1 over plain HTTP (--insecure): ",
            "check the address and port, that it is running, and whether it wants HTTPS (then leave --insecure out)",
        ],
    );
    assert!(!err.contains("add --insecure"), "{err}");
}
