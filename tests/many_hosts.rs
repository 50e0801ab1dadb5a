//! Many hosts worked on at once, on real OpenSSH hosts of one testbed: 24 hosts this machine
//! cannot reach, behind one jump host whose sshd keeps OpenSSH's default `MaxStartups
//! 10:30:100`, all worked on at once (`--parallel 24`), each reach preflight on the first
//! attempt: no jump-host handshake is dropped ("Failed getting banner") and retried. Preflight
//! refuses every host on purpose (`--max-clock-skew 0s`), so nothing is uploaded and a round
//! takes seconds; three rounds, because one round without the engine's limit on jump-host
//! handshakes at once retried 1 to 8 of the 24 connections. Every run goes through the real
//! `sealer` binary.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use support::store::{both, fixture, Sealer};
use support::testbed::Testbed;

const BEHIND: usize = 24;

#[test]
fn twenty_four_hosts_behind_one_jump_host_at_once_connect_without_a_retry() {
    let Some(bed) = Testbed::up_for_test(BEHIND + 1) else {
        return;
    };
    let (jump, hosts) = (&bed.hosts()[0], &bed.hosts()[1..]);
    for host in hosts {
        bed.block_installer(host).unwrap();
    }
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from((hosts[0].ip, 22)), Duration::from_secs(2))
            .is_err(),
        "{} is still reachable directly",
        hosts[0]
    );
    let store = Sealer::new();
    store.build("hello:v1", &fixture("hello"));
    let key = bed.key_path().to_str().unwrap().to_string();
    let bastion = format!("root@{}", jump.ip);
    let master = hosts[0].ip.to_string();
    let nodes = hosts[1..]
        .iter()
        .map(|h| h.ip.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let parallel = BEHIND.to_string();

    for round in 1..=3 {
        let out = store
            .command()
            .args(["run", "hello:v1", "--json", "--known-hosts"])
            .arg(bed.known_hosts_path())
            .args(["-m", &master, "-n", &nodes, "--pk", &key])
            .args(["--bastion", &bastion, "--bastion-pk", &key])
            .args(["--parallel", &parallel, "--max-clock-skew", "0s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let text = format!("round {round}: {}[{}]", both(&out), out.status);
        assert!(!out.status.success(), "preflight should refuse:\n{text}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("retrying"),
            "a connection through the jump host was retried:\n{text}"
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{text}"));
        let reports = json["hosts"].as_array().expect("hosts in the report");
        assert_eq!(reports.len(), BEHIND, "{text}");
        for report in reports {
            assert_eq!(report["bastion"], bastion.as_str(), "{text}");
            assert_eq!(report["outcome"], "failed", "{text}");
            let reason = report["reason"].as_str().unwrap_or_default();
            assert!(
                reason.starts_with("preflight: ") && reason.ends_with("(check: clock)"),
                "{} did not reach preflight's clock check: {reason}\n{text}",
                report["ip"]
            );
            assert_eq!(report["bytes_sent"], 0, "{text}");
        }
    }
}
