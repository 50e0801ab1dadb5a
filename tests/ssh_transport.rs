//! The SSH transport against real OpenSSH servers of the testbed (network namespaces, real
//! sshd): every authentication method, sudo for non-root users, host key checking, the time
//! limits that keep a dead host from hanging the installer, and bulk stdin streaming.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sealer::clusterfile::{HostKeyPin, Secret};
use sealer::ssh::{Auth, HostKeyPolicy, Session, SshError, SshTarget, Timeouts};
use sha2::{Digest, Sha256};
use support::noise;
use support::testbed::{TestHost, Testbed};

fn target(tb: &Testbed, host: &TestHost, user: &str, auth: Auth) -> SshTarget {
    SshTarget {
        ip: IpAddr::V4(host.ip),
        port: 22,
        name: None,
        jump: None,
        user: user.to_string(),
        auth,
        host_key_policy: HostKeyPolicy::KnownHosts(tb.known_hosts_path().to_path_buf()),
    }
}

fn key(tb: &Testbed) -> Auth {
    Auth::Key {
        path: tb.key_path().to_path_buf(),
        passphrase: None,
    }
}

fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(3),
        handshake: Duration::from_secs(15),
        idle: Duration::from_secs(5),
        keepalive: Duration::from_secs(1),
    }
}

fn connect(t: &SshTarget) -> Session {
    Session::connect(t, quick()).unwrap_or_else(|e| panic!("connecting {}: {e}", t.display_name()))
}

/// `len` bytes of [`noise::bytes`] and their sha256 in hex.
fn noise_with_sha256(seed: u64, len: u64) -> (Vec<u8>, String) {
    let payload = noise::bytes(len as usize, seed);
    let sha256 = hex::encode(Sha256::digest(&payload));
    (payload, sha256)
}

#[test]
fn key_auth_runs_commands_with_env_quoted_and_reports_exit_status() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = &tb.hosts()[0];
    let mut s = connect(&target(&tb, host, "root", key(&tb)));
    assert_eq!(s.cipher().as_deref(), Some("aes128-gcm@openssh.com"));
    let tricky = "it's \"$HOME\" `id` $(id)\nline2 \\ ; #";
    let env = vec![("TRICKY".to_string(), tricky.to_string())];
    let out = s.exec("printf %s \"$TRICKY\"", &env, None).unwrap();
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), tricky);
    let name = s.run("hostname", &[], None).unwrap();
    assert_eq!(String::from_utf8_lossy(&name).trim(), host.hostname);
    let out = s.exec("echo oops >&2; exit 3", &[], None).unwrap();
    assert_eq!((out.status, out.stderr_text().trim()), (3, "oops"));
    match s.run("echo bad >&2; exit 4", &[], None) {
        Err(SshError::Remote {
            status: 4, stderr, ..
        }) => assert_eq!(stderr.trim(), "bad"),
        other => panic!("expected Remote, got {other:?}"),
    }
    // The host key was recorded on first contact.
    let known = std::fs::read_to_string(tb.known_hosts_path()).unwrap();
    assert!(known.contains(&host.ip.to_string()), "{known}");
}

#[test]
fn encrypted_key_needs_its_passphrase() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = &tb.hosts()[0];
    let with = |passphrase: Option<&str>| Auth::Key {
        path: tb.encrypted_key_path().to_path_buf(),
        passphrase: passphrase.map(Secret::new),
    };
    let mut s = connect(&target(&tb, host, "root", with(Some(tb.key_passphrase()))));
    assert_eq!(s.run("id -u", &[], None).unwrap(), b"0\n");
    let wrong = "not-the-passphrase-42";
    match Session::connect(&target(&tb, host, "root", with(Some(wrong))), quick()) {
        Err(e @ SshError::AuthFailed { .. }) => {
            let msg = e.to_string();
            assert!(!msg.contains(wrong), "{msg}");
            assert!(msg.contains("passphrase"), "{msg}");
        }
        other => panic!("expected AuthFailed, got {other:?}"),
    }
}

#[test]
fn password_auth_works_and_a_wrong_password_is_refused_without_echoing_it() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = &tb.hosts()[0];
    let good = Auth::Password(Secret::new(tb.root_password()));
    let mut s = connect(&target(&tb, host, "root", good));
    assert_eq!(s.run("id -un", &[], None).unwrap(), b"root\n");
    let wrong = "Wr0ng-$ecret-pw";
    let started = Instant::now();
    match Session::connect(
        &target(&tb, host, "root", Auth::Password(Secret::new(wrong))),
        quick(),
    ) {
        Err(e @ SshError::AuthFailed { .. }) => {
            let msg = e.to_string();
            eprintln!("wrong password: {msg}");
            assert!(!msg.contains(wrong), "{msg}");
            assert!(!format!("{e:?}").contains(wrong));
            assert!(
                msg.contains("password") && msg.contains(&host.ip.to_string()),
                "{msg}"
            );
        }
        other => panic!("expected AuthFailed, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn agent_auth_uses_the_keys_the_agent_holds() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = &tb.hosts()[0];
    let socket = tb.run_dir().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting ssh-agent");
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent_target = target(
        &tb,
        host,
        "root",
        Auth::Agent {
            socket: Some(socket.clone()),
        },
    );
    // An empty agent: refused, with a message saying so.
    let refused = Session::connect(&agent_target, quick());
    let added = std::process::Command::new("ssh-add")
        .arg(tb.key_path())
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .expect("running ssh-add");
    let accepted = Session::connect(&agent_target, quick()).map(|mut s| s.run("id -u", &[], None));
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        added.status.success(),
        "ssh-add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    match refused {
        Err(SshError::AuthFailed { method, .. }) => assert_eq!(method, "agent"),
        other => panic!("expected AuthFailed from an empty agent, got {other:?}"),
    }
    assert_eq!(accepted.unwrap().unwrap(), b"0\n");
}

#[test]
fn non_root_user_runs_commands_through_sudo_with_env() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = &tb.hosts()[0];
    let user = tb.deploy_user().to_string();
    for auth in [key(&tb), Auth::Password(Secret::new(tb.deploy_password()))] {
        let mut s = connect(&target(&tb, host, &user, auth));
        let env = vec![("V".to_string(), "a'b $c".to_string())];
        let out = s
            .run("echo \"$(id -u) $SUDO_USER $V\"", &env, None)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out).trim(),
            format!("0 {user} a'b $c")
        );
        // stdin passes through sudo too.
        let out = s
            .run(
                "cat > /root/from-deploy && cat /root/from-deploy",
                &[],
                Some(&mut &b"via sudo"[..]),
            )
            .unwrap();
        assert_eq!(out, b"via sudo");
    }
}

#[test]
fn changed_host_key_is_refused_naming_file_and_line_and_pins_are_enforced() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = &tb.hosts()[0];
    let t = target(&tb, host, "root", key(&tb));
    drop(connect(&t)); // first contact records the key
    let old_key = tb.host_public_key(host, "ed25519").unwrap();
    tb.regen_hostkey(host).unwrap();
    match Session::connect(&t, quick()) {
        Err(e @ SshError::HostKeyChanged { .. }) => {
            let msg = e.to_string();
            eprintln!("changed key: {msg}");
            let kh = tb.known_hosts_path().display().to_string();
            assert!(msg.contains(&format!("{kh}:1")), "{msg}");
            assert!(msg.contains("remove line 1"), "{msg}");
            assert!(msg.contains(&host.ip.to_string()), "{msg}");
        }
        other => panic!("expected HostKeyChanged, got {other:?}"),
    }
    // Pinned: the old key is refused, the new key (or its fingerprint) accepted.
    let pinned = |pin: &str| SshTarget {
        host_key_policy: HostKeyPolicy::Pinned(HostKeyPin::parse(pin).unwrap()),
        ..t.clone()
    };
    assert!(matches!(
        Session::connect(&pinned(&old_key), quick()),
        Err(SshError::HostKeyChanged { .. })
    ));
    let new_key = tb.host_public_key(host, "ed25519").unwrap();
    let mut s = connect(&pinned(&new_key));
    assert_eq!(s.run("echo ok", &[], None).unwrap(), b"ok\n");
    let blob = match HostKeyPin::parse(&new_key).unwrap() {
        HostKeyPin::PublicKey { blob, .. } => blob,
        other => panic!("{other:?}"),
    };
    drop(connect(&SshTarget {
        host_key_policy: HostKeyPolicy::Pinned(HostKeyPin::Sha256(Sha256::digest(&blob).into())),
        ..t.clone()
    }));
}

#[test]
fn unreachable_hosts_fail_within_the_timeout() {
    let Some(tb) = Testbed::up_for_test(2) else {
        return;
    };
    let (down, dead) = (&tb.hosts()[0], &tb.hosts()[1]);
    tb.link_down(down).unwrap();
    let started = Instant::now();
    match Session::connect(&target(&tb, down, "root", key(&tb)), quick()) {
        Err(e @ SshError::Unreachable { .. }) => eprintln!("link down: {e}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    tb.kill_sshd(dead).unwrap();
    match Session::connect(&target(&tb, dead, "root", key(&tb)), quick()) {
        Err(e @ SshError::Unreachable { .. }) => {
            assert!(e.to_string().contains("refused"), "{e}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[test]
fn host_lost_during_a_command_is_detected_within_the_idle_limit() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = tb.hosts()[0].clone();
    let mut s = connect(&target(&tb, &host, "root", key(&tb)));
    // A quiet command that outlives the idle limit is fine while the host answers keepalives.
    let out = s.exec("sleep 7; echo done", &[], None).unwrap();
    assert_eq!(out.stdout_text().trim(), "done");
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(1));
            tb.link_down(&host).unwrap();
        });
        match s.exec("sleep 120", &[], None) {
            Err(e @ SshError::Timeout { .. }) => eprintln!("lost host: {e}"),
            other => panic!("expected Timeout, got {other:?}"),
        }
    });
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn streams_64_mib_of_stdin_verified_remotely_and_uploads_atomically() {
    let Some(tb) = Testbed::up_for_test(1) else {
        return;
    };
    let host = &tb.hosts()[0];
    let mut s = connect(&target(&tb, host, "root", key(&tb)));
    const SIZE: u64 = 64 << 20;
    // Generated up front so the measurement is the transport, not the generator.
    let (payload, want) = noise_with_sha256(0x9e3779b97f4a7c15, SIZE);
    let started = Instant::now();
    let out = s.run("sha256sum", &[], Some(&mut &payload[..])).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let remote = String::from_utf8_lossy(&out);
    assert_eq!(remote.split_whitespace().next(), Some(want.as_str()));
    // Baseline in the same run: OpenSSH's own client piping the same bytes.
    let file = tb.run_dir().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let started = Instant::now();
    let baseline = tb
        .ssh_command(host, "root")
        .args(["-c", "aes128-gcm@openssh.com", "sha256sum"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    let base_secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    assert!(String::from_utf8_lossy(&baseline.stdout).starts_with(&want));
    let mib = (SIZE >> 20) as f64;
    println!(
        "stdin streaming: {mib} MiB in {secs:.2}s = {:.0} MiB/s ({}); OpenSSH ssh client: {:.0} MiB/s; ratio {:.2}",
        mib / secs,
        s.cipher().unwrap_or_default(),
        mib / base_secs,
        base_secs / secs,
    );

    // A command that exits without reading its input reports its status; nothing hangs.
    let out = s
        .exec("exit 5", &[], Some(&mut &payload[..8 << 20]))
        .unwrap();
    assert_eq!(out.status, 5);

    let path = Path::new("/opt/sealer test/agent");
    let digest = s
        .upload_bytes(b"#!/bin/sh\necho agent\n", path, 0o755)
        .unwrap();
    assert_eq!(
        digest,
        hex::encode(Sha256::digest(b"#!/bin/sh\necho agent\n"))
    );
    let out = s
        .run(
            "'/opt/sealer test/agent'; stat -c %a '/opt/sealer test/agent'; ls '/opt/sealer test'",
            &[],
            None,
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "agent\n755\nagent\n");
}

/// libssh2 computes an HMAC for every packet with AES-CTR, through libcrypto; sessions on
/// several threads share libcrypto's objects. An OpenSSL built without threads (what `-static`
/// in its Configure arguments gives) corrupted the heap here within a few megabytes.
#[test]
fn parallel_sessions_with_aes_ctr_and_hmac_stream_intact() {
    let Some(tb) = Testbed::up_for_test(2) else {
        return;
    };
    for host in tb.hosts() {
        let conf = tb
            .host_root(host)
            .join("etc/ssh/sshd_config.d/10-ctr-only.conf");
        std::fs::write(&conf, "Ciphers aes128-ctr\nMACs hmac-sha2-256\n").unwrap();
        tb.kill_sshd(host).unwrap();
        tb.start_sshd(host).unwrap();
    }
    let (payload, want) = noise_with_sha256(0x2545f4914f6cdd1d, 24 << 20);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6)
            .map(|i| {
                let host = &tb.hosts()[i % 2];
                let (tb, payload) = (&tb, &payload);
                scope.spawn(move || {
                    let mut s = connect(&target(tb, host, "root", key(tb)));
                    assert_eq!(s.cipher().as_deref(), Some("aes128-ctr"));
                    let out = s.run("sha256sum", &[], Some(&mut &payload[..])).unwrap();
                    String::from_utf8_lossy(&out)
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
            })
            .collect();
        for worker in workers {
            assert_eq!(worker.join().unwrap(), want);
        }
    });
}
