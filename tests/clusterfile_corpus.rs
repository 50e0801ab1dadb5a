//! Every Clusterfile of sealer's own repository and documentation (the compatibility corpus kept
//! outside the project, `shared/corpus/sealer/clusterfiles/`, see its SOURCES.md) either loads
//! or is refused with a reason that names the document and the unsupported feature or the bad
//! field. Prints one table row per file. Skips (with a message) when the corpus is absent.

use std::path::{Path, PathBuf};

use sealer::clusterfile::{Clusterfile, ClusterfileError};

fn corpus_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SEALER_CORPUS_DIR") {
        return Some(PathBuf::from(dir).join("sealer/clusterfiles"));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/corpus/sealer/clusterfiles"))
        .find(|p| p.is_dir())
}

enum Outcome {
    Loaded(String),
    Refused(ClusterfileError),
}

fn outcome(path: &Path) -> Outcome {
    match Clusterfile::load(path) {
        Ok(cf) => {
            let what = match &cf.cluster {
                Some(c) => format!(
                    "cluster {} ({} masters, {} nodes)",
                    c.name,
                    c.masters().len(),
                    c.nodes().len()
                ),
                None => "no Cluster".to_string(),
            };
            Outcome::Loaded(format!(
                "{what}, {} configs, {} plugins, {} opaque, {} notes",
                cf.configs.len(),
                cf.plugins.len(),
                cf.opaque.len(),
                cf.notes.len()
            ))
        }
        Err(e) => Outcome::Refused(e),
    }
}

/// Files whose outcome is pinned: (file, expected substring of the row).
const EXPECTED: &[(&str, &str)] = &[
    (
        "head_pkg_cluster-runtime_test_test.yaml",
        "loads: no Cluster, 0 configs, 2 plugins",
    ),
    (
        "head_utils_test_file_Clusterfile.yaml",
        "provider: ALI_CLOUD is not supported",
    ),
    (
        "head_utils_test_file_v1Clusterfile.yaml",
        "invalid YAML at line",
    ),
    ("v0.8.6_cmd_sealer_test_Clusterfile.yaml", "quote it"),
    (
        "head_test_suites_apply_fixtures_cluster_file_for_test.yaml",
        "provider: CONTAINER is not supported",
    ),
    (
        "v0.8.6_pkg_plugin_test_test_clusterfile.yaml",
        "Plugin type LABEL is not supported",
    ),
    (
        "head_docs_site_concept_clusterfile_06.yaml",
        "Config spec.process is not supported",
    ),
    (
        "head_docs_design_clusterfile-v2_05.yaml",
        "is not supported",
    ),
    (
        "head_docs_site_concept_clusterfile_01.yaml",
        "loads: cluster",
    ),
    (
        "head_docs_design_plugin_01.yaml",
        "loads: no Cluster, 0 configs, 1 plugins",
    ),
    ("head_docs_design_clusterfile-v2_02.yaml", "5 opaque"),
];

#[test]
fn every_corpus_clusterfile_loads_or_is_refused_with_a_named_reason() {
    let Some(dir) = corpus_dir() else {
        eprintln!(
            "shared/corpus/sealer/clusterfiles not found above {}; skipping",
            env!("CARGO_MANIFEST_DIR")
        );
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 70,
        "corpus at {} holds {} files",
        dir.display(),
        files.len()
    );
    // Corpus files name hosts with placeholders (`x.x.x.x`) that load as host names and are
    // resolved: this thread gets a network namespace of its own, so a lookup can only read
    // /etc/hosts and never becomes a DNS query leaving the machine.
    // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the calling thread.
    let isolated = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
    if !isolated {
        eprintln!("cannot give this test its own network namespace (not root?); skipping");
        return;
    }

    let (mut loaded, mut refused) = (0, 0);
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let row = match outcome(path) {
            Outcome::Loaded(summary) => {
                loaded += 1;
                format!("loads: {summary}")
            }
            Outcome::Refused(e) => {
                refused += 1;
                let text = e.to_string();
                // A clear reason names the file, then a document or a YAML line.
                let inner = match &e {
                    ClusterfileError::InFile { inner, .. } => inner.as_ref(),
                    other => other,
                };
                let clear = match inner {
                    ClusterfileError::Yaml { line, .. } => line.is_some(),
                    ClusterfileError::Field { field, .. } => !field.is_empty(),
                    ClusterfileError::Unsupported { feature, .. } => !feature.is_empty(),
                    _ => false,
                };
                if !clear || !text.contains(&name) {
                    problems.push(format!("{name}: unclear refusal: {text}"));
                }
                let prefix = format!("Clusterfile {}: ", path.display());
                format!("refused: {}", text.strip_prefix(&prefix).unwrap_or(&text))
            }
        };
        rows.push((name, row));
    }

    println!("\n| file | outcome |\n|---|---|");
    for (name, row) in &rows {
        println!("| {name} | {row} |");
    }
    println!("\n{loaded} load, {refused} refused, {} files", files.len());

    for (file, want) in EXPECTED {
        match rows.iter().find(|(name, _)| name == file) {
            Some((_, row)) if row.contains(want) => {}
            Some((_, row)) => problems.push(format!("{file}: expected `{want}`, got `{row}`")),
            None => problems.push(format!("{file}: missing from the corpus")),
        }
    }
    assert!(loaded >= 30, "only {loaded} files load");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
