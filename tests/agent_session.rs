//! The agent on a testbed host, from its upload to its end: the upload travels gzip-compressed
//! (as it is when the host has no gzip), shows as a counter of its own and is counted in the
//! report's bytes sent (0 B when the host has that agent); and a remote agent does not outlive
//! the installer that started it. `sealer run` is killed (`kill -9`) while it sends frames at
//! 8 Mbit/s, and the host's `agent receive` must be gone within seconds (sshd closes the
//! session, the agent's stdin ends); the host's link is cut while it receives, where nothing
//! closes the session, and the agent must be gone within 20 s (its stall timeout for streams).
//!
//! One testbed host is shared by the tests, which take turns (the link is shaped and cut).
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::noise;
use support::store::{Run, Sealer, STUB};
use support::testbed::{pids_where, wait_for, TestHost, Testbed};

/// The tests take turns on the one host.
static TURN: Mutex<()> = Mutex::new(());

fn bed() -> Option<&'static Testbed> {
    support::testbed::shared(1)
}

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// `-m HOST --pk KEY --data-root DATA_ROOT`.
fn flags(bed: &Testbed, host: &TestHost, data_root: &str) -> Vec<String> {
    vec![
        "-m".to_string(),
        host.ip.to_string(),
        "--pk".to_string(),
        bed.key_path().display().to_string(),
        "--data-root".to_string(),
        data_root.to_string(),
    ]
}

/// The pids of `agent receive` processes working under `data_root` (the testbed's hosts share
/// this machine's process table).
fn receiving_agents(data_root: &str) -> Vec<i32> {
    pids_where(|args| {
        args.get(1).map(String::as_str) == Some("agent")
            && args.iter().any(|a| a == "receive")
            && args.iter().any(|a| a.starts_with(data_root))
    })
}

/// A store with `noisy:v1` (24 MiB that do not compress: about 25 s at 8 Mbit/s) and `tiny:v1`.
fn store_with_images() -> Sealer {
    let store = Sealer::new();
    let noise = noise::bytes(24 << 20, 0x5e55_1011_dead_0001);
    store.build_from(
        "noisy:v1",
        "FROM scratch\nCOPY noise.bin data/\n",
        &[("noise.bin", &noise)],
    );
    store.build_from("tiny:v1", "FROM scratch\nCOPY a a\n", &[("a", b"a\n")]);
    store
}

/// `sealer run IMAGE FLAGS --json`: the host's entry of the report, and everything printed.
fn run_json(
    store: &Sealer,
    bed: &Testbed,
    image: &str,
    flags: &[String],
) -> (serde_json::Value, String) {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--json");
    let out = store.run_command(bed, image, &args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sealer run {image} failed:\n{text}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{text}"));
    (report["hosts"][0].clone(), text)
}

#[test]
fn the_agent_travels_compressed_shows_its_bytes_and_is_counted_in_bytes_sent() {
    let Some(bed) = bed() else { return };
    let _turn = turn();
    let host = &bed.hosts()[0];
    let store = store_with_images();
    let agent_len = std::fs::metadata(STUB).unwrap().len();

    // A host with gzip: the agent travels compressed and is part of the bytes sent.
    let flags = flags(bed, host, "/var/lib/sealer-upload");
    let (entry, text) = run_json(&store, bed, "tiny:v1", &flags);
    let agent = entry["agent_bytes_sent"]
        .as_u64()
        .unwrap_or_else(|| panic!("no agent_bytes_sent:\n{text}"));
    let sent = entry["bytes_sent"].as_u64().unwrap();
    assert!(
        agent > 0 && agent < agent_len * 2 / 3,
        "the agent ({agent_len} B) was sent as {agent} B:\n{text}"
    );
    assert!(
        sent > agent,
        "bytes sent {sent} leave out the agent's {agent}:\n{text}"
    );
    // Without a terminal its counter is a line when it starts and one when it ends.
    let label = format!("[{}] agent", host.ip);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{label}: ")) && l.ends_with("MiB")),
        "no line for the agent's upload:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{label}: done in "))),
        "no end of the agent's upload:\n{text}"
    );

    // The table says it too.
    let run = Run::from(
        store
            .run_command(
                bed,
                "noisy:v1",
                &flags.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .output()
            .unwrap(),
    );
    run.assert_ok("noisy:v1 onto a host that has the agent");
    assert!(
        run.row(host).contains(", agent 0 B)"),
        "the agent was not reported as already there: {}",
        run.row(host)
    );
    assert!(
        !run.text.contains(&format!("{label}: ")),
        "an agent the host has was sent again:\n{}",
        run.text
    );

    // A host without gzip: the agent travels as it is, and is still checked and used.
    let hidden = bed
        .exec(
            host,
            "g=$(command -v gzip) && mv \"$g\" \"$g.hidden\" && echo \"$g\"",
        )
        .unwrap();
    let gzip = String::from_utf8_lossy(&hidden.stdout).trim().to_string();
    assert!(!gzip.is_empty(), "gzip could not be hidden on {host}");
    let flags = self::flags(bed, host, "/var/lib/sealer-upload-plain");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_json(&store, bed, "tiny:v1", &flags)
    }));
    bed.exec(host, &format!("mv '{gzip}.hidden' '{gzip}'"))
        .unwrap();
    let (entry, text) = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(
        entry["agent_bytes_sent"].as_u64(),
        Some(agent_len),
        "a host without gzip:\n{text}"
    );
    assert_eq!(entry["outcome"], "installed", "{text}");
}

#[test]
fn an_agent_receiving_frames_exits_within_seconds_when_its_installer_is_killed() {
    let Some(bed) = bed() else { return };
    let _turn = turn();
    let host = &bed.hosts()[0];
    let data_root = "/var/lib/sealer-session";
    let store = store_with_images();
    let flags = flags(bed, host, data_root);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // A first install at full speed leaves the agent on the host (its upload is not what is
    // measured here), then the link is slowed for the frames.
    store
        .run_on(bed, "tiny:v1", &flags)
        .assert_ok("the first install");
    bed.shape(host, "8mbit").unwrap();
    let log_path = store.path("installer.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut installer = store
        .run_command(bed, "noisy:v1", &flags)
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .unwrap();
    let receiving = wait_for(Duration::from_secs(90), || {
        !receiving_agents(data_root).is_empty()
    });
    // Mid-transfer: 24 MiB at 8 Mbit/s takes about 25 s.
    std::thread::sleep(Duration::from_secs(2));
    let _ = installer.kill();
    let _ = installer.wait();
    let killed = Instant::now();
    let gone = receiving
        && wait_for(Duration::from_secs(10), || {
            receiving_agents(data_root).is_empty()
        });
    let took = killed.elapsed();
    let left = receiving_agents(data_root);
    for pid in &left {
        // SAFETY: cleans up after a failure; plain kill(2) of a pid just read from /proc.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    bed.unshape(host).unwrap();
    assert!(
        receiving,
        "no agent was ever receiving on {host}; the installer said:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(
        gone,
        "the agent still receives {took:?} after its installer was killed: {left:?}"
    );
    eprintln!("the agent was gone {took:?} after its installer was killed");
}

#[test]
fn an_agent_receiving_frames_exits_within_20_s_when_its_link_is_cut() {
    let Some(bed) = bed() else { return };
    let _turn = turn();
    let host = &bed.hosts()[0];
    let data_root = "/var/lib/sealer-cut";
    let store = store_with_images();
    let flags = flags(bed, host, data_root);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    store
        .run_on(bed, "tiny:v1", &flags)
        .assert_ok("the first install");
    bed.shape(host, "8mbit").unwrap();
    let log_path = store.path("installer.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut installer = store
        .run_command(
            bed,
            "noisy:v1",
            &[&flags[..], &["--attempts", "1"]].concat(),
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .unwrap();
    let receiving = wait_for(Duration::from_secs(90), || {
        !receiving_agents(data_root).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    // Nothing closes the session now: sshd on the host keeps it, and the agent's stdin stays
    // open without a byte.
    bed.link_down(host).unwrap();
    let cut = Instant::now();
    let gone = receiving
        && wait_for(Duration::from_secs(40), || {
            receiving_agents(data_root).is_empty()
        });
    let took = cut.elapsed();
    let left = receiving_agents(data_root);
    for pid in &left {
        // SAFETY: cleans up after a failure; plain kill(2) of a pid just read from /proc.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let _ = installer.kill();
    let _ = installer.wait();
    bed.link_up(host).unwrap();
    bed.unshape(host).unwrap();
    assert!(
        receiving,
        "no agent was ever receiving on {host}; the installer said:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(
        gone,
        "the agent still receives {took:?} after its link was cut: {left:?}"
    );
    assert!(
        took <= Duration::from_secs(20),
        "the agent outlived its cut link by {took:?} (at most 20 s)"
    );
    eprintln!("the agent was gone {took:?} after its link was cut");
}
