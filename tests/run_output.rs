//! What a run that changes hosts leaves and prints for machines: the log file under
//! `$SEALER_ROOT/logs` and the `--json` report, through the real `sealer` and `--local` installs.

mod support;

use std::path::Path;
use std::process::Command;

use support::store::{both, command, Sealer, SEALER};

/// `sealer run IMAGE --local --data-root DATA` against `store`, with `extra` flags.
fn local_run(store: &Sealer, image: &str, data: &Path, extra: &[&str]) -> Command {
    let mut c = command(Path::new(SEALER), &store.root());
    c.args([
        "run",
        image,
        "--local",
        "--data-root",
        data.to_str().unwrap(),
    ]);
    c.args(extra);
    c
}

#[test]
fn a_local_install_writes_a_timestamped_log_of_its_lines_and_table_and_prints_its_path() {
    let store = Sealer::new();
    store.build_from("logged:v1", "FROM scratch\nCOPY a a\n", &[("a", b"a\n")]);
    let data = store.path("data");
    let out = local_run(&store, "logged:v1", &data, &[]).output().unwrap();
    let text = both(&out);
    assert!(out.status.success(), "{text}");

    let logs: Vec<_> = std::fs::read_dir(store.root().join("logs"))
        .unwrap_or_else(|e| panic!("no logs directory ({e}): {text}"))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = &logs[0];
    let name = log.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with("-my-cluster-run.log"), "{name}");
    assert!(name.starts_with("20"), "{name}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("log: {}", log.display())),
        "{stdout}"
    );

    let written = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert!(
        lines[0].contains("command: ") && lines[0].contains("run logged:v1 --local"),
        "{written}"
    );
    assert!(written.contains("[127.0.0.1] "), "no host line: {written}");
    assert!(written.contains("HOST"), "no table: {written}");
    assert!(
        written.contains("127.0.0.1          "),
        "no table row: {written}"
    );
    for line in lines.iter().filter(|l| !l.is_empty()) {
        // Every line starts with its UTC time: 2026-11-30T18:00:00Z.
        let stamp = line.split(' ').next().unwrap();
        assert!(
            stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "line without a time: {line:?}"
        );
    }
}

#[test]
fn json_puts_only_the_report_on_stdout_with_each_hosts_outcome() {
    let store = Sealer::new();
    store.build_from("json:v1", "FROM scratch\nCOPY a a\n", &[("a", b"a\n")]);
    let data = store.path("data");
    let out = local_run(&store, "json:v1", &data, &["--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", both(&out)));
    assert_eq!(report["hosts"][0]["outcome"], "installed", "{report}");
    assert_eq!(report["hosts"][0]["ip"], "127.0.0.1", "{report}");
    assert!(
        report["hosts"][0]["steps_run"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["hosts"][0]["elapsed_seconds"].is_f64(), "{report}");
    assert_eq!(report["done"], "installed", "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[127.0.0.1] "),
        "progress not on stderr: {stderr}"
    );

    // Again: nothing to do, and the JSON says so.
    let again = local_run(&store, "json:v1", &data, &["--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&again.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", both(&again)));
    assert_eq!(report["hosts"][0]["outcome"], "up_to_date", "{report}");
}

#[test]
fn a_log_that_cannot_be_created_is_a_warning_and_the_install_still_succeeds() {
    let store = Sealer::new();
    store.build_from("nolog:v1", "FROM scratch\nCOPY a a\n", &[("a", b"a\n")]);
    // A file where the logs directory would be.
    std::fs::write(store.root().join("logs"), b"not a directory").unwrap();
    let data = store.path("data");
    let out = local_run(&store, "nolog:v1", &data, &[]).output().unwrap();
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: cannot write the run log"),
        "{stderr}"
    );
    assert!(!text.lines().any(|l| l.starts_with("log: ")), "{text}");
    assert!(text.contains("Installed in "), "{text}");
}
