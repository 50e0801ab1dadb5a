//! Reaching hosts the way data centres are wired, on real OpenSSH hosts of one testbed: a host
//! this machine cannot reach, installed through a jump host (`--bastion`), rerun, resumed after
//! the jump host's sshd is killed mid-transfer, and refused in one message when the jump host's
//! password is wrong or its host key changed, or when it accepts TCP and never answers SSH
//! (one error within the handshake timeout, no hang); a host whose sshd listens on port 2222
//! given as `ADDRESS:2222`; a host given by a name that only this run's resolver knows, whose
//! report shows the name and the address. Every install goes through the real `sealer` binary.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::noise;
use support::store::{both, fixture, Sealer};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-bastion";

/// One testbed for the file: host 1 is the jump host, host 2 sits behind it, host 3 has sshd
/// on port 2222, host 4 is given by name.
fn bed() -> Option<&'static Testbed> {
    support::testbed::shared(4)
}

/// `sealer run IMAGE --json ARGS...` with the testbed's known_hosts; (the JSON report when one
/// was printed, everything printed, success).
fn run_json(
    store: &Sealer,
    bed: &Testbed,
    image: &str,
    args: &[&str],
) -> (serde_json::Value, String, bool) {
    let out = store
        .command()
        .args([
            "run",
            image,
            "--json",
            "--data-root",
            DATA_ROOT,
            "--known-hosts",
        ])
        .arg(bed.known_hosts_path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    parsed(out)
}

fn parsed(out: Output) -> (serde_json::Value, String, bool) {
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        json,
        format!("{}[{}]", both(&out), out.status),
        out.status.success(),
    )
}

/// The report's entry for the host at `ip`.
fn host_entry<'j>(json: &'j serde_json::Value, ip: &str, text: &str) -> &'j serde_json::Value {
    json["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["ip"] == ip))
        .unwrap_or_else(|| panic!("no report entry for {ip}:\n{text}"))
}

fn reachable_from_here(host: &TestHost, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((host.ip, port)), Duration::from_secs(2)).is_ok()
}

#[test]
fn a_host_behind_a_jump_host_installs_reruns_resumes_and_a_bad_jump_host_is_refused() {
    let Some(bed) = bed() else { return };
    let (jump, inner) = (&bed.hosts()[0], &bed.hosts()[1]);
    let key = bed.key_path().to_str().unwrap().to_string();
    bed.block_installer(inner).unwrap();
    assert!(
        !reachable_from_here(inner, 22),
        "{inner} is still reachable directly"
    );
    let store = Sealer::new();
    store.build("hello:v1", &fixture("hello"));
    let bastion = format!("root@{}", jump.ip);
    let ip = inner.ip.to_string();
    let through = |image: &str, cluster: &str, extra: &[&str]| {
        let mut args = vec![
            "-m",
            &ip,
            "--pk",
            &key,
            "--cluster-name",
            cluster,
            "--bastion",
            &bastion,
            "--bastion-pk",
            &key,
        ];
        args.extend_from_slice(extra);
        run_json(&store, bed, image, &args)
    };

    // Without the jump host the host cannot be reached at all.
    let (_, text, ok) = run_json(
        &store,
        bed,
        "hello:v1",
        &[
            "-m",
            &ip,
            "--pk",
            &key,
            "--cluster-name",
            "direct",
            "--attempts",
            "1",
        ],
    );
    assert!(!ok && text.contains("unreachable"), "{text}");

    // Install through it, then rerun: nothing sent, still through the jump host.
    let (json, text, ok) = through("hello:v1", "jumped", &[]);
    assert!(ok, "install through the jump host:\n{text}");
    let host = host_entry(&json, &ip, &text);
    assert_eq!(host["outcome"], "installed", "{text}");
    assert_eq!(host["bastion"], bastion.as_str(), "{text}");
    let (sent, relayed) = (
        host["bytes_sent"].as_u64().unwrap(),
        host["bastion_bytes"].as_u64().unwrap(),
    );
    assert!(
        sent > 0 && relayed > sent,
        "sent {sent}, through the jump host {relayed}:\n{text}"
    );
    assert!(bed.has_path(inner, &format!("{DATA_ROOT}/jumped/rootfs")));
    let (json, text, ok) = through("hello:v1", "jumped", &[]);
    assert!(ok, "rerun through the jump host:\n{text}");
    let host = host_entry(&json, &ip, &text);
    assert_eq!(host["outcome"], "up_to_date", "{text}");
    assert_eq!(host["bytes_sent"], 0, "{text}");
    assert!(host["bastion_bytes"].as_u64().unwrap() > 0, "{text}");

    // A wrong password for the jump host: one error naming it, nothing sent, no retry.
    let (json, text, ok) = run_json(
        &store,
        bed,
        "hello:v1",
        &[
            "-m",
            &ip,
            "--pk",
            &key,
            "--cluster-name",
            "wrongpw",
            "--bastion",
            &bastion,
            "--bastion-passwd",
            "not-the-password",
        ],
    );
    assert!(!ok, "{text}");
    let reason = host_entry(&json, &ip, &text)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&format!("jump host {bastion}"))
            && reason.contains("authentication by password failed"),
        "{text}"
    );
    assert!(
        !reason.contains("attempts"),
        "a wrong password is not retried: {reason}"
    );
    assert!(
        !bed.has_path(inner, &format!("{DATA_ROOT}/wrongpw")),
        "something was sent"
    );

    // The jump host's sshd killed mid-transfer: the run fails, the rerun sends only what the
    // host lacks.
    let noise_bytes = noise::bytes(24 << 20, 0x5eed_b457);
    let ctx = store.context(
        "noise",
        &[
            ("noise.bin", &noise_bytes),
            ("Kubefile", b"FROM scratch\nCOPY noise.bin data/\n"),
        ],
    );
    store.build("noise:v1", &ctx);
    bed.shape(inner, "16mbit").unwrap();
    let spool = bed.host_root(inner).join(format!(
        "{}/resumed/.sealer/spool",
        DATA_ROOT.trim_start_matches('/')
    ));
    let child = store
        .command()
        .args([
            "run",
            "noise:v1",
            "--json",
            "--data-root",
            DATA_ROOT,
            "--known-hosts",
        ])
        .arg(bed.known_hosts_path())
        .args([
            "-m",
            &ip,
            "--pk",
            &key,
            "--cluster-name",
            "resumed",
            "--attempts",
            "1",
        ])
        .args(["--bastion", &bastion, "--bastion-pk", &key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while frames_in(&spool) < 1 {
        assert!(Instant::now() < deadline, "no frame arrived within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    bed.kill_sshd(jump).unwrap();
    let killed = Instant::now();
    let (_, text, ok) = parsed(child.wait_with_output().unwrap());
    assert!(!ok, "the run should fail when the jump host goes:\n{text}");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the run took {:?} to notice the jump host was gone",
        killed.elapsed()
    );
    bed.start_sshd(jump).unwrap();
    bed.unshape(inner).unwrap();
    let (json, text, ok) = through("noise:v1", "resumed", &[]);
    assert!(ok, "rerun after the jump host came back:\n{text}");
    let resent = host_entry(&json, &ip, &text)["bytes_sent"]
        .as_u64()
        .unwrap();
    assert!(
        resent > 0 && resent < noise_bytes.len() as u64,
        "the rerun sent {resent} bytes of a {} byte file:\n{text}",
        noise_bytes.len()
    );
    let sum = bed
        .exec(
            inner,
            &format!("sha256sum < {DATA_ROOT}/resumed/rootfs/data/noise.bin"),
        )
        .unwrap();
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&noise_bytes))
    };
    assert!(
        String::from_utf8_lossy(&sum.stdout).starts_with(&expected),
        "{}",
        both(&sum)
    );

    // The jump host's key changed: refused, naming the jump host and the known_hosts line.
    bed.regen_hostkey(jump).unwrap();
    let (json, text, ok) = through("hello:v1", "rekeyed", &[]);
    assert!(!ok, "{text}");
    let reason = host_entry(&json, &ip, &text)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&format!("jump host {bastion}")) && reason.contains("host key changed"),
        "{text}"
    );
    assert!(
        !bed.has_path(inner, &format!("{DATA_ROOT}/rekeyed")),
        "something was sent"
    );
    bed.unblock_installer(inner).unwrap();
}

/// Frames (64 hex digit names) in a spool directory.
fn frames_in(spool: &Path) -> usize {
    std::fs::read_dir(spool)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_host_on_port_2222_and_a_host_given_by_name_install_and_the_report_names_both() {
    let Some(bed) = bed() else { return };
    let (ported, named) = (&bed.hosts()[2], &bed.hosts()[3]);
    let key = bed.key_path().to_str().unwrap().to_string();
    bed.start_sshd_on_port(ported, 2222).unwrap();
    let store = Sealer::new();
    store.build("hello:v1", &fixture("hello"));

    // Port 2222 as ADDRESS:2222; its key is recorded as OpenSSH writes it, [ADDRESS]:2222.
    let entry = format!("{}:2222", ported.ip);
    let (json, text, ok) = run_json(
        &store,
        bed,
        "hello:v1",
        &["-m", &entry, "--pk", &key, "--cluster-name", "ported"],
    );
    assert!(ok, "{text}");
    let host = host_entry(&json, &ported.ip.to_string(), &text);
    assert_eq!(
        (host["outcome"].as_str(), host["port"].as_u64()),
        (Some("installed"), Some(2222)),
        "{text}"
    );
    let known = std::fs::read_to_string(bed.known_hosts_path()).unwrap();
    assert!(known.contains(&format!("[{}]:2222 ", ported.ip)), "{known}");
    let log = bed.exec(ported, "cat /var/log/sshd-2222.log").unwrap();
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("Accepted publickey"),
        "{}",
        both(&log)
    );

    // A name only this run's resolver knows: the installer runs in a mount namespace of its
    // own whose /etc/hosts holds it and whose /etc/nsswitch.conf consults only that file (the
    // machine's files are not touched, and no name is looked up in DNS).
    let work = tempfile::tempdir().unwrap();
    let name = format!("bastion-test-node-{}", std::process::id());
    let hosts_file = work.path().join("hosts");
    std::fs::write(
        &hosts_file,
        format!("127.0.0.1 localhost\n{} {name}\n", named.ip),
    )
    .unwrap();
    let nsswitch = work.path().join("nsswitch.conf");
    std::fs::write(&nsswitch, "hosts: files\n").unwrap();
    let with_resolver = |args: &[&str]| {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/nsswitch.conf && shift && exec \"$@\"")
            .arg(&hosts_file)
            .arg(&nsswitch)
            .arg(support::store::SEALER)
            .args(["run", "hello:v1", "--data-root", DATA_ROOT, "--known-hosts"])
            .arg(bed.known_hosts_path())
            .args(args)
            .env("SEALER_ROOT", store.root())
            .env("SEALER_STUB", support::store::STUB)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            format!("{}[{}]", both(&out), out.status),
            out.status.success(),
        )
    };
    let (text, ok) = with_resolver(&["-m", &name, "--pk", &key, "--cluster-name", "named"]);
    assert!(ok, "{text}");
    let shown = format!("{name} ({})", named.ip);
    let row = text
        .lines()
        .rev()
        .find(|l| l.starts_with(&shown))
        .unwrap_or_else(|| panic!("no table row for {shown}:\n{text}"));
    assert!(row.contains("installed"), "{row}");
    assert!(bed.has_path(named, &format!("{DATA_ROOT}/named/rootfs")));

    // A name nobody knows: one error naming it, nothing installed.
    let (text, ok) = with_resolver(&[
        "-m",
        "nameless-host",
        "--pk",
        &key,
        "--cluster-name",
        "nameless",
    ]);
    assert!(
        !ok && text.contains("`nameless-host` is not an IP address and does not resolve"),
        "{text}"
    );
    assert_eq!(
        text.matches("nameless-host").count(),
        1,
        "one message: {text}"
    );
}

/// A jump host that accepts TCP connections and never says a word of SSH (a firewall that
/// swallows the session, a hung sshd): the install stops with one error naming the jump host
/// and the timeout, within the SSH handshake timeout, and sends nothing. Needs no testbed: the
/// silent jump host is a listener of the test's own on loopback, and the host behind it is
/// never reached. That host is 127.0.0.2: behind a jump host a loopback address is the jump
/// host's own, so it is reached through it and not installed on this machine.
#[test]
fn a_silent_jump_host_fails_with_one_error_within_the_handshake_timeout() {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        // Held open and never written to, until the test process exits.
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let store = Sealer::new();
    store.build("hello:v1", &fixture("hello"));
    let bastion = format!("root@127.0.0.1:{port}");
    let known_hosts = store.path("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    let started = Instant::now();
    let out = store
        .command()
        .args(["run", "hello:v1", "--json", "--data-root", DATA_ROOT])
        .arg("--known-hosts")
        .arg(&known_hosts)
        .args([
            "-m",
            "127.0.0.2",
            "-p",
            "unused",
            "--cluster-name",
            "silent",
        ])
        .args(["--bastion", &bastion, "--bastion-passwd", "unused"])
        .args(["--attempts", "1"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let (json, text, ok) = parsed(out);
    assert!(!ok, "{text}");
    assert!(
        took < Duration::from_secs(50),
        "the run took {took:?} against a silent jump host (handshake timeout 30 s):\n{text}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 1, "never connected");
    let reason = host_entry(&json, "127.0.0.2", &text)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&format!("jump host {bastion}")) && reason.contains("timed out"),
        "{text}"
    );
    assert_eq!(
        text.matches("timed out").count(),
        1,
        "one error, in the JSON report: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        !Path::new(DATA_ROOT).join("silent").exists(),
        "installed on this machine instead of through the jump host"
    );
}
