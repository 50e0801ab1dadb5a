//! sealer's own Clusterfiles with hooks and Configs (the compatibility corpus kept outside the
//! project, `shared/corpus/sealer/clusterfiles/`), installed on real OpenSSH hosts of one
//! testbed with the real `sealer`: each file's Plugin and Config documents, behind a Cluster
//! document of the test's own (its two testbed hosts, a master and a node, in place of the
//! file's addresses), under a small sealer-style image. Every file either installs, with every
//! SHELL hook of an install phase run on its hosts (the run names it), every `Originally` /
//! `Manual` hook named as not run, and every Config's file on master0; or is refused, naming
//! the hook, Config or document and why (a command the hook needs missing on the host, a
//! selector that matches no host, an unsupported plugin type), or refused by preflight before
//! anything is sent when the hosts lack a command its hooks call (`systemctl`). Nothing is dropped silently.
//! Prints one row per file. Skips when the corpus or the testbed is absent.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere unless `CI` or
//! `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::path::{Path, PathBuf};

use sealer::clusterfile::{Clusterfile, Phase, PluginKind};
use support::store::Sealer;
use support::testbed::Testbed;

const DATA_ROOT: &str = "/var/lib/sealer-cfhooks";

fn corpus_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SEALER_CORPUS_DIR") {
        return Some(PathBuf::from(dir).join("sealer/clusterfiles"));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/corpus/sealer/clusterfiles"))
        .find(|p| p.is_dir())
}

/// The file's documents other than its Cluster (split at `---` lines).
fn without_cluster(text: &str) -> String {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| {
            !d.lines()
                .any(|l| l.trim_end() == "kind: Cluster" || l.trim_end() == "kind: \"Cluster\"")
        })
        .filter(|d| {
            d.lines().any(|l| {
                !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "..."
            })
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Phases an install runs (`sealer run` on a new cluster).
const INSTALL_PHASES: &[Phase] = &[
    Phase::PreInitHost,
    Phase::PostInitHost,
    Phase::PreInstall,
    Phase::PreGuest,
    Phase::PostInstall,
];

#[test]
fn sealer_clusterfiles_with_hooks_and_configs_install_on_testbed_hosts_or_are_refused_with_the_reason(
) {
    let Some(dir) = corpus_dir() else {
        eprintln!("skipped: no shared/corpus/sealer/clusterfiles (set SEALER_CORPUS_DIR)");
        return;
    };
    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let (master, node) = (&bed.hosts()[0], &bed.hosts()[1]);
    let store = Sealer::new();
    // A sealer-style image: bin/, etc/, scripts/, and nothing that needs the network.
    store.build_from(
        "hooks:v1",
        "FROM scratch\nCOPY rootfs .\nCMD true\n",
        &[
            ("rootfs/bin/hello", b"#!/bin/sh\necho hello\n"),
            ("rootfs/etc/app.yaml", b"a: 1\n"),
            ("rootfs/scripts/init.sh", b"echo init\n"),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let (mut installed, mut hooks_run, mut refused) = (0, 0, 0);
    let mut rows = Vec::new();
    let mut pinned_text = String::new();
    let mut jobs = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let documents = without_cluster(&std::fs::read_to_string(path).unwrap());
        if !documents.contains("kind: Plugin") && !documents.contains("kind: Config") {
            continue;
        }
        let cluster = format!("cf{i:02}");
        let text = format!(
            "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  dataRoot: {DATA_ROOT}\n  ssh: {{user: root, pk: {}}}\n  hosts:\n    - ips: [{}]\n      roles: [master]\n    - ips: [{}]\n      roles: [node]\n---\n{documents}",
            bed.key_path().display(),
            master.ip,
            node.ip,
        );
        let file = work.path().join(&name);
        std::fs::write(&file, &text).unwrap();
        // The file's own Cluster document is replaced, so only its hooks, Configs and other
        // documents are judged here (tests/clusterfile_corpus.rs judges the whole file).
        let cf = match Clusterfile::load(&file) {
            Ok(cf) => cf,
            Err(e) => {
                let said = e.to_string();
                assert!(
                    said.contains("document ") && said.contains(" not supported")
                        || said.contains("missing")
                        || said.contains("matches no host"),
                    "{name}: refused without a reason: {said}"
                );
                rows.push(format!("{name}: refused at load: {said}"));
                refused += 1;
                continue;
            }
        };
        if cf.plugins.is_empty() && cf.configs.is_empty() {
            continue;
        }
        jobs.push((name, file, cf, cluster));
    }
    // The first install uploads the agent to the hosts; the others find it and run four at
    // a time (each its own cluster, with its own lock).
    let install = |file: &Path| {
        store.run_on(
            &bed,
            "hooks:v1",
            &["-f", file.to_str().unwrap(), "--attempts", "1"],
        )
    };
    let mut runs = Vec::new();
    if let Some((_, file, _, _)) = jobs.first() {
        runs.push(install(file));
    }
    for batch in jobs[runs.len()..].chunks(4) {
        let done: Vec<support::store::Run> = std::thread::scope(|s| {
            let started: Vec<_> = batch
                .iter()
                .map(|(_, file, _, _)| s.spawn(|| install(file)))
                .collect();
            started.into_iter().map(|t| t.join().unwrap()).collect()
        });
        runs.extend(done);
    }
    for ((name, _, cf, cluster), run) in jobs.iter().zip(runs) {
        let name = name.as_str();
        assert!(!run.text.contains("panicked"), "{name}:\n{}", run.text);
        let named: Vec<String> = cf
            .plugins
            .iter()
            .map(|p| p.name.clone())
            .chain(cf.configs.iter().map(|c| c.name.clone()))
            .collect();
        if !run.ok {
            // Refused: the reason names a hook or Config of the file (or the document), and
            // nothing of this cluster is left half done without saying so.
            let error = run
                .text
                .lines()
                .filter(|l| l.contains("error") || l.contains("FAILED"))
                .collect::<Vec<_>>()
                .join(" | ");
            assert!(
                named.iter().any(|n| error.contains(n.as_str()))
                    || error.contains("Plugin")
                    || error.contains("Config")
                    // Preflight: a command a hook calls is missing on the hosts.
                    || error.contains("(check: commands)"),
                "{name}: refused without naming a hook or Config of the file ({named:?}):\n{}",
                run.text
            );
            rows.push(format!("{name}: refused: {error}"));
            refused += 1;
            continue;
        }
        installed += 1;
        if name == "head_pkg_cluster-runtime_test_test.yaml" {
            pinned_text = run.text.clone();
        }
        let mut ran = Vec::new();
        for plugin in &cf.plugins {
            for phase in &plugin.phases {
                let said = format!("running {} hook {}", phase.name(), plugin.name);
                if INSTALL_PHASES.contains(phase) {
                    assert!(
                        !matches!(plugin.kind, PluginKind::Shell { .. })
                            || run.text.contains(&said),
                        "{name}: hook {} ({}) did not run:\n{}",
                        plugin.name,
                        phase.name(),
                        run.text
                    );
                    if matches!(plugin.kind, PluginKind::Shell { .. }) {
                        hooks_run += 1;
                    }
                    ran.push(format!("{} ({})", plugin.name, phase.name()));
                } else if matches!(phase, Phase::Originally | Phase::Manual) {
                    let note = format!("hook {} ({}) is not run", plugin.name, phase.name());
                    assert!(
                        run.text.contains(&note),
                        "{name}: no note {note:?}:\n{}",
                        run.text
                    );
                } else {
                    // A phase of another command (delete, join, upgrade, rollback).
                    assert!(!run.text.contains(&said), "{name}: {said} at install");
                }
            }
        }
        for config in &cf.configs {
            let at = format!("{DATA_ROOT}/{cluster}/rootfs/{}", config.path.display());
            assert!(
                bed.has_path(master, &at),
                "{name}: Config {} did not write {at}:\n{}",
                config.name,
                run.text
            );
        }
        rows.push(format!(
            "{name}: installed; hooks run: [{}]; configs: {}",
            ran.join(", "),
            cf.configs.len()
        ));
    }
    for row in &rows {
        eprintln!("{row}");
    }
    eprintln!(
        "{installed} installed ({hooks_run} SHELL hook phases run), {refused} refused with a reason"
    );
    // Not vacuous: sealer's own hook examples run, and some are refused.
    assert!(
        installed >= 8 && hooks_run >= 2 && refused >= 10,
        "{}",
        rows.join("\n")
    );
    // sealer's cluster-runtime fixture: two hooks scoped to masters ran on the master only.
    let pinned = rows
        .iter()
        .find(|r| r.starts_with("head_pkg_cluster-runtime_test_test.yaml"))
        .expect("the cluster-runtime fixture");
    assert!(
        pinned.contains("pre-init-host2 (pre-init-host)")
            && pinned.contains("post-init-host2 (post-init-host)"),
        "{pinned}"
    );
    assert!(
        pinned_text.contains(&format!(
            "[{}] running pre-init-host hook pre-init-host2",
            master.ip
        )) && !pinned_text.contains(&format!("[{}] running pre-init-host hook", node.ip)),
        "scope: master:\n{pinned_text}"
    );
}
