//! What a host must be safe from while sealer installs on it: a planted agent, Configs that
//! follow the image's symlinks out of the rootfs, secrets in command lines, exported tokens
//! readable by everyone, hooks that print without end, run without end or outlive the installer,
//! damaged spooled frames, a full disk retried in vain, and agents left waiting after a lost link.
//!
//! Each test reproduces the attack or fault against real OpenSSH hosts of one testbed shared by
//! the whole file (two hosts; the second is only for the test that takes its link down), through
//! the real `sealer` with `sealer-stub` as the agent. The testbed goes at process exit.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use support::clusterfile::shell_plugin;
use support::noise;
use support::store::{both, Sealer, STUB};
use support::testbed::{pids_where, wait_for, TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-hs";

/// The file's one testbed, brought up by the first test that needs it.
fn bed() -> Option<&'static Testbed> {
    support::testbed::shared(2)
}

/// A Clusterfile for `host` as master of cluster `name`, with extra documents appended.
fn clusterfile(
    dir: &Path,
    bed: &Testbed,
    host: &TestHost,
    name: &str,
    spec: &str,
    extra: &str,
) -> PathBuf {
    let mut doc = format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  dataRoot: {DATA_ROOT}\n  ssh: {{user: root, pk: {}}}\n  hosts:\n    - ips: [{}]\n      roles: [master]\n",
        bed.key_path().display(),
        host.ip
    );
    doc.push_str(spec);
    doc.push_str(extra);
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, doc).unwrap();
    path
}

/// Runs `cmd` inside `host` (not over SSH); its stdout, whatever the status.
fn on_host(bed: &Testbed, host: &TestHost, cmd: &str) -> String {
    let out = bed.exec(host, cmd).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `path` on `host` as seen from here (the host's root filesystem is mounted on this machine).
fn host_path(bed: &Testbed, host: &TestHost, path: &str) -> PathBuf {
    bed.host_root(host).join(path.trim_start_matches('/'))
}

/// Pids of processes (on any host) whose command line starts with `argv`.
fn processes(argv: &[&str]) -> Vec<i32> {
    pids_where(|args| args.len() >= argv.len() && argv.iter().zip(args).all(|(a, b)| a == b))
}

fn stub_sha256() -> String {
    let stub = std::fs::read(STUB).unwrap();
    hex::encode(sha2::Sha256::digest(stub))
}

const TINY_KUBEFILE: &str = "FROM scratch\nCOPY hello.txt data/\n";
const TINY_FILES: &[(&str, &[u8])] = &[("hello.txt", b"hello\n")];

/// Item 3: whoever can write to the data root (or the agent's directory) must not get a
/// program of theirs run as root, and a wrong file at the agent's path is never run.
#[test]
fn a_planted_agent_is_never_run_as_root() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from("tiny:v1", TINY_KUBEFILE, TINY_FILES);
    let agent_name = format!("sealer-agent-{}", &stub_sha256()[..16]);
    let work = tempfile::tempdir().unwrap();
    let plant = |root: &str, marker: &str, owner: &str| {
        on_host(
            bed,
            host,
            &format!(
                "rm -f {marker}; mkdir -p {root}/.agent && printf '#!/bin/sh\\ntouch {marker}\\nexit 1\\n' > {root}/.agent/{agent_name} && chmod 755 {root}/.agent/{agent_name} && chown -R {owner} {root}"
            ),
        );
    };

    // A data root owned by an ordinary user, who planted a program at the agent's path.
    plant("/srv/hs-open", "/var/tmp/hs-pwned-open", "deploy");
    let file = clusterfile(work.path(), bed, host, "planted", "", "");
    let out = store
        .run_command(bed, "tiny:v1", &["-f", file.to_str().unwrap()])
        .args(["--data-root", "/srv/hs-open"])
        .output()
        .unwrap();
    let run_text = both(&out);
    assert!(
        !host_path(bed, host, "/var/tmp/hs-pwned-open").exists(),
        "the planted program ran as root:\n{run_text}"
    );
    assert!(!out.status.success(), "{run_text}");
    assert!(run_text.contains("owned by uid"), "{run_text}");
    assert!(!run_text.contains("retrying in"), "{run_text}");

    // A root-owned data root holding a stale or foreign file at the agent's path: it is
    // replaced by the real agent, never run.
    plant("/var/lib/hs-stale", "/var/tmp/hs-pwned-stale", "root");
    let out = store
        .run_command(bed, "tiny:v1", &["-f", file.to_str().unwrap()])
        .args(["--data-root", "/var/lib/hs-stale"])
        .output()
        .unwrap();
    let run_text = both(&out);
    assert!(
        !host_path(bed, host, "/var/tmp/hs-pwned-stale").exists(),
        "the stale file ran as the agent:\n{run_text}"
    );
    assert!(out.status.success(), "{run_text}");
    let agent = std::fs::read(host_path(
        bed,
        host,
        &format!("/var/lib/hs-stale/.agent/{agent_name}"),
    ))
    .unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(agent)), stub_sha256());
}

/// Item 4: a Config whose path goes through an image symlink (absolute, as Debian's
/// `var/run -> /run`) writes inside the rootfs, never to the host's own directories.
#[test]
fn config_writes_through_image_symlinks_stay_inside_the_rootfs() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from(
        "links:v1",
        "FROM scratch\nCOPY hello.txt etc/\nRUN ln -s /hs-outside ext && ln -s /hs-outside2/f.conf etc/link.conf\n",
        TINY_FILES,
    );
    on_host(
        bed,
        host,
        "mkdir -p /hs-outside /hs-outside2 && echo original > /hs-outside2/f.conf",
    );
    let configs = "---\napiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: through-dir\nspec:\n  path: ext/evil.conf\n  data: |\n    evil\n---\napiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: through-file\nspec:\n  path: etc/link.conf\n  data: |\n    linked\n";
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(work.path(), bed, host, "links", "", configs);
    let run = store.run_on(bed, "links:v1", &["-f", file.to_str().unwrap()]);
    assert!(
        !host_path(bed, host, "/hs-outside/evil.conf").exists(),
        "a Config was written outside the rootfs:\n{}",
        run.text
    );
    assert_eq!(
        std::fs::read_to_string(host_path(bed, host, "/hs-outside2/f.conf")).unwrap(),
        "original\n",
        "a Config overwrote a host file:\n{}",
        run.text
    );
    assert!(run.ok, "{}", run.text);
    let rootfs = format!("{DATA_ROOT}/links/rootfs");
    assert_eq!(
        std::fs::read_to_string(host_path(
            bed,
            host,
            &format!("{rootfs}/hs-outside/evil.conf")
        ))
        .unwrap(),
        "evil\n"
    );
    assert_eq!(
        std::fs::read_to_string(host_path(
            bed,
            host,
            &format!("{rootfs}/hs-outside2/f.conf")
        ))
        .unwrap(),
        "linked\n"
    );
}

/// What the hooks of items 5 and 6 record: every command line on the host while they run.
const SCAN_CMDLINES: &str =
    "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null; echo; done > \"$SEALER_ROOTFS/../$1\"\n";

/// Item 5: env values (passwords) reach hooks and CMDs, but no command line on the host shows
/// them while they run.
#[test]
fn env_values_never_appear_in_a_command_line() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from(
        "scan:v1",
        "FROM scratch\nCOPY scan.sh scan.sh\nCMD sh scan.sh cmdlines-cmd\n",
        &[("scan.sh", SCAN_CMDLINES.as_bytes())],
    );
    let secret = "pw-5be2c0d1e4";
    let hook = shell_plugin(
        "scan",
        "pre-init-host",
        "",
        "sh scan.sh cmdlines-hook\nprintf '%s' \"$DB_PASSWORD\" > \"$SEALER_ROOTFS/../seen\"",
    );
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(
        work.path(),
        bed,
        host,
        "secret",
        &format!("  env: [DB_PASSWORD={secret}]\n"),
        &hook,
    );
    let run = store.run_on(bed, "scan:v1", &["-f", file.to_str().unwrap()]);
    assert!(run.ok, "{}", run.text);
    let dir = format!("{DATA_ROOT}/secret");
    assert_eq!(
        std::fs::read_to_string(host_path(bed, host, &format!("{dir}/seen"))).unwrap(),
        secret
    );
    for scan in ["cmdlines-hook", "cmdlines-cmd"] {
        let lines =
            std::fs::read_to_string(host_path(bed, host, &format!("{dir}/{scan}"))).unwrap();
        assert!(lines.lines().count() > 3, "{scan}: {lines}");
        for line in lines.lines() {
            assert!(
                !line.contains(secret),
                "{scan}: the password is in a command line: {line}"
            );
        }
    }
}

/// Item 6: values a hook exports (join tokens) are readable by root only.
#[test]
fn exported_values_are_readable_by_root_only() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from("tiny:v1", TINY_KUBEFILE, TINY_FILES);
    let hook = shell_plugin(
        "token",
        "pre-init-host",
        "",
        "echo TOKEN=tok-9c1e >> \"$SEALER_EXPORT\"",
    );
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(work.path(), bed, host, "exports", "", &hook);
    let run = store.run_on(bed, "tiny:v1", &["-f", file.to_str().unwrap()]);
    assert!(run.ok, "{}", run.text);
    let exports = host_path(bed, host, &format!("{DATA_ROOT}/exports/.sealer/exports"));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let files: Vec<PathBuf> = std::fs::read_dir(&exports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let token = files
        .iter()
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains("tok-9c1e")
        })
        .unwrap_or_else(|| panic!("no export holds the token in {}", exports.display()));
    assert_eq!(mode(token), 0o600, "{}", token.display());
    assert_eq!(mode(&exports), 0o700, "{}", exports.display());
    assert_eq!(
        mode(exports.parent().unwrap()),
        0o700,
        "{}",
        exports.parent().unwrap().display()
    );
}

/// Peak resident memory (KiB) of process `pid` so far: `VmHWM`, which starts afresh at exec
/// (unlike `ru_maxrss`, which a child spawned with vfork inherits from its parent).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for `child` (stdout and stderr piped), sampling its peak resident memory; returns its
/// output and that peak in KiB.
fn wait_measured(mut child: std::process::Child) -> (Output, u64) {
    let collect = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let err = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak.max(peak_rss_kib(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        },
        peak,
    )
}

/// Item 7: a hook that prints half a gigabyte does not make the installer hold it.
#[test]
fn a_hook_printing_half_a_gigabyte_leaves_the_installer_small() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from("tiny:v1", TINY_KUBEFILE, TINY_FILES);
    let hook = shell_plugin(
        "chatty",
        "pre-init-host",
        "",
        "yes 0123456789abcdef | head -c 512M\necho the-last-line",
    );
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(work.path(), bed, host, "chatty", "", &hook);
    let (out, max_rss_kib) = wait_measured(
        store
            .run_command(bed, "tiny:v1", &["-f", file.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        max_rss_kib < 150 * 1024,
        "the installer grew to {} MiB",
        max_rss_kib / 1024
    );
}

/// Item 7, the agent's side: `agent run` keeps a bounded head and tail of what it prints.
#[test]
fn the_agent_keeps_a_bounded_part_of_a_hooks_output() {
    let dir = tempfile::tempdir().unwrap();
    let request = serde_json::json!({
        "script": "yes 0123456789abcdef | head -c 512M\necho the-last-line\n",
        "env": [],
        "dir": dir.path(),
        "export_file": dir.path().join("work/exports/x.env"),
        "timeout_secs": 600,
    });
    let mut child = Command::new(STUB);
    child
        .args(["agent", "run", "--work"])
        .arg(dir.path().join("work"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut spawned = child.spawn().unwrap();
    spawned
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let (out, peak_kib) = wait_measured(spawned);
    assert!(out.status.success(), "{}", both(&out));
    let printed = out.stdout;
    assert!(
        printed.len() < 256 << 10,
        "{} bytes passed on",
        printed.len()
    );
    let printed = String::from_utf8_lossy(&printed);
    assert!(printed.starts_with("0123456789abcdef\n"), "{printed:.100}");
    assert!(printed.ends_with("the-last-line\n"));
    assert!(printed.contains("bytes of output left out"));
    assert!(peak_kib < 64 * 1024, "the agent grew to {peak_kib} KiB");
}

/// Item 7, the transport's side: a remote command printing 64 MiB yields a bounded output.
#[test]
fn a_remote_command_printing_64_mib_is_kept_bounded() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let target = sealer::ssh::SshTarget {
        ip: std::net::IpAddr::V4(host.ip),
        port: 22,
        name: None,
        jump: None,
        user: "root".into(),
        auth: sealer::ssh::Auth::Key {
            path: bed.key_path().to_path_buf(),
            passphrase: None,
        },
        host_key_policy: sealer::ssh::HostKeyPolicy::KnownHosts(
            bed.known_hosts_path().to_path_buf(),
        ),
    };
    let mut session =
        sealer::ssh::Session::connect(&target, sealer::ssh::Timeouts::default()).unwrap();
    let out = session
        .exec("head -c 64M /dev/zero; echo; echo end", &[], None)
        .unwrap();
    assert!(out.success());
    let limit = sealer::ssh::OUTPUT_HEAD + sealer::ssh::OUTPUT_TAIL + 100;
    assert!(out.stdout.len() < limit, "{} bytes kept", out.stdout.len());
    assert!(out.stdout.ends_with(b"\nend\n"));
}

/// Item 8: a hook past its `spec.timeout` is killed with everything it started.
#[test]
fn a_hook_past_its_timeout_is_killed_with_its_process_group() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from("tiny:v1", TINY_KUBEFILE, TINY_FILES);
    let hook = shell_plugin(
        "slow",
        "pre-init-host",
        "  timeout: 3s\n",
        "sleep 4711 &\nsleep 4712",
    );
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(work.path(), bed, host, "slow", "", &hook);
    let started = Instant::now();
    let run = store.run_on(bed, "tiny:v1", &["-f", file.to_str().unwrap()]);
    let took = started.elapsed();
    let left: Vec<i32> = [processes(&["sleep", "4711"]), processes(&["sleep", "4712"])].concat();
    for pid in &left {
        // SAFETY: cleans up after a failure; plain kill(2).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(!run.ok, "{}", run.text);
    assert!(
        run.text.contains("ran longer than its timeout of 3 s"),
        "{}",
        run.text
    );
    assert!(
        left.is_empty(),
        "still running on the host: {left:?}\n{}",
        run.text
    );
    assert!(
        took < Duration::from_secs(40),
        "took {took:?}\n{}",
        run.text
    );
}

/// Item 8: when the installer dies, the hook it started on a host dies too, instead of running
/// on with parent PID 1 (and a second copy starting on the rerun).
#[test]
fn killing_the_installer_kills_its_running_hook() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from("tiny:v1", TINY_KUBEFILE, TINY_FILES);
    let hook = shell_plugin("long", "pre-init-host", "", "sleep 4721");
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(work.path(), bed, host, "orphan", "", &hook);
    let mut child = store
        .run_command(bed, "tiny:v1", &["-f", file.to_str().unwrap()])
        .spawn()
        .unwrap();
    let started = wait_for(Duration::from_secs(60), || {
        !processes(&["sleep", "4721"]).is_empty()
    });
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(started, "the hook never started");
    let gone = wait_for(Duration::from_secs(15), || {
        processes(&["sleep", "4721"]).is_empty()
    });
    let left = processes(&["sleep", "4721"]);
    for pid in &left {
        // SAFETY: cleans up after a failure; plain kill(2).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(gone, "the hook outlived the installer by 15 s: {left:?}");
}

/// Item 13: a spooled frame whose bytes were damaged is sent again, not trusted by name.
#[test]
fn a_damaged_spooled_frame_is_sent_again() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    store.build_from("tiny:v1", TINY_KUBEFILE, TINY_FILES);
    let opened = sealer::store::Store::open(store.root()).unwrap();
    let image = opened.image_by_name("tiny:v1").unwrap();
    let payload = sealer::deploy::Payload::from_store(&opened, &image, Path::new(STUB)).unwrap();
    let spool = host_path(bed, host, &format!("{DATA_ROOT}/damaged/.sealer/spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let mut frames = 0;
    for frame in payload.layers.iter().flat_map(|l| &l.frames) {
        std::fs::write(spool.join(&frame.sha256), b"damaged on disk").unwrap();
        frames += 1;
    }
    assert!(frames > 0);
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(work.path(), bed, host, "damaged", "", "");
    let run = store.run_on(bed, "tiny:v1", &["-f", file.to_str().unwrap()]);
    assert!(run.ok, "{}", run.text);
    assert_eq!(
        std::fs::read_to_string(host_path(
            bed,
            host,
            &format!("{DATA_ROOT}/damaged/rootfs/data/hello.txt")
        ))
        .unwrap(),
        "hello\n"
    );
}

/// Item 24: a disk that fills up while frames arrive fails the host at once, without retries.
#[test]
fn a_full_disk_while_receiving_is_reported_and_not_retried() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[0];
    let store = Sealer::new();
    let noise = noise::bytes(6 << 20, 0x2545_f491_4f6c_dd1d);
    store.build_from(
        "noise:v1",
        "FROM scratch\nCOPY noise.bin data/\n",
        &[("noise.bin", &noise)],
    );
    let spool = format!("{DATA_ROOT}/full/.sealer/spool");
    on_host(
        bed,
        host,
        &format!("mkdir -p {spool} && mount -t tmpfs -o size=1m tmpfs {spool}"),
    );
    let work = tempfile::tempdir().unwrap();
    let file = clusterfile(work.path(), bed, host, "full", "", "");
    let started = Instant::now();
    let run = store.run_on(bed, "noise:v1", &["-f", file.to_str().unwrap()]);
    let took = started.elapsed();
    on_host(bed, host, &format!("umount {spool}"));
    assert!(!run.ok, "{}", run.text);
    assert!(run.text.contains("No space left on device"), "{}", run.text);
    assert!(
        !run.text.contains("retrying in"),
        "a full disk was retried:\n{}",
        run.text
    );
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}:\n{}",
        run.text
    );
}

/// Item 27: an agent whose input stops (the link to the installer is gone) exits on its own.
#[test]
fn an_agent_whose_link_is_lost_exits_on_its_own() {
    let Some(bed) = bed() else { return };
    let host = &bed.hosts()[1];
    let agent = host_path(bed, host, "/usr/local/bin/hs-agent");
    std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
    support::copy_program(STUB.as_ref(), &agent);
    let mut ssh = bed
        .ssh_command(host, "root")
        .arg("/usr/local/bin/hs-agent agent receive --work /var/lib/hs-stall --stall-timeout 4")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let argv = [
        "/usr/local/bin/hs-agent",
        "agent",
        "receive",
        "--work",
        "/var/lib/hs-stall",
    ];
    // Part of a frame record, then silence: the link goes down mid-transfer.
    let mut stdin = ssh.stdin.take().unwrap();
    stdin.write_all(&(1u64 << 20).to_le_bytes()).unwrap();
    stdin.write_all(&[7u8; 32]).unwrap();
    stdin.write_all(&[1u8; 1000]).unwrap();
    stdin.flush().unwrap();
    let running = wait_for(Duration::from_secs(20), || !processes(&argv).is_empty());
    bed.link_down(host).unwrap();
    let exited = running && wait_for(Duration::from_secs(12), || processes(&argv).is_empty());
    let left = processes(&argv);
    for pid in &left {
        // SAFETY: cleans up after a failure; plain kill(2).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    bed.link_up(host).unwrap();
    let _ = ssh.kill();
    let _ = ssh.wait();
    assert!(running, "the agent never started");
    assert!(
        exited,
        "the agent still waits 12 s after its link was lost: {left:?}"
    );
}
