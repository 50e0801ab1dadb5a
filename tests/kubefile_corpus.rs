//! Runs the Kubefile parser over sealer's own Kubefiles (`../shared/corpus/sealer/kubefiles/`,
//! kept outside the repository; present in CI). Each must parse, or be rejected at the expected
//! line with a message that names the instruction and the unsupported feature or mistake.

use std::path::{Path, PathBuf};

use sealer::kubefile::{parse, Command, InstructionKind, Kubefile, KubefileError};

/// What each known corpus file must give. `Err(line, words)`: rejected at `line`, and the message
/// contains `words`. Files not listed must still parse or fail with a specific message.
/// `Ok(())`: parses. `Err((line, words))`: rejected at `line` with `words` in the message.
type Expected = Result<(), (usize, &'static str)>;

const EXPECTED: &[(&str, Expected)] = &[
    ("basefs-main_context.Kubefile", Ok(())),
    ("basefs-sealer-v0.8.6_context.Kubefile", Ok(())),
    ("basefs-sealer-v0.9.0_context.Kubefile", Ok(())),
    // LAUNCH names `calico`, an app of the base image: checked by the builder, not here.
    ("head_README_01.Kubefile", Ok(())),
    ("head_README_02.Kubefile", Ok(())),
    // Trailing `# ...` comments after instructions (sealer's docs; buildah rejected them too).
    (
        "head_docs_api_kubefile_01.Kubefile",
        Err((
            1,
            "FROM: trailing comments are not supported: `# Base Image`",
        )),
    ),
    (
        "head_docs_design_global-config_01.Kubefile",
        Err((2, "COPY: trailing comments are not supported")),
    ),
    // A literal `...` standing for omitted lines.
    (
        "head_docs_design_global-config_02.Kubefile",
        Err((2, "unknown instruction `...`")),
    ),
    (
        "head_docs_site_advanced_customize-cluster-image_01.Kubefile",
        Ok(()),
    ),
    (
        "head_docs_site_advanced_customize-cluster-image_02.Kubefile",
        Ok(()),
    ),
    (
        "head_docs_site_advanced_use-sealer-image-offline_01.Kubefile",
        Ok(()),
    ),
    (
        "head_docs_site_advanced_use-sealer-image-offline_02.Kubefile",
        Ok(()),
    ),
    ("head_docs_site_concept_clusterfile_01.Kubefile", Ok(())),
    // Documentation fragments without FROM.
    (
        "head_docs_site_concept_kubefile_01.Kubefile",
        Err((1, "CNI comes before FROM")),
    ),
    (
        "head_docs_site_concept_kubefile_02.Kubefile",
        Err((1, "APP comes before FROM")),
    ),
    (
        "head_docs_site_concept_kubefile_03.Kubefile",
        Err((1, "LABEL comes before FROM")),
    ),
    ("head_docs_site_concept_kubefile_04.Kubefile", Ok(())),
    ("head_docs_site_concept_kubefile_05.Kubefile", Ok(())),
    // A space inside a URL leaves a source without a scheme.
    (
        "head_docs_site_concept_sealer-image_01.Kubefile",
        Err((
            3,
            "APP elasticsearch: source `elasticsearch.tgz` must start with local://",
        )),
    ),
    (
        "head_test_suites_build_fixtures_build_with_appcmds.Kubefile",
        Ok(()),
    ),
    (
        "head_test_suites_build_fixtures_build_with_cmds.Kubefile",
        Ok(()),
    ),
    (
        "head_test_suites_build_fixtures_build_with_imagelist_flag.Kubefile",
        Ok(()),
    ),
    (
        "head_test_suites_build_fixtures_build_with_launch.Kubefile",
        Ok(()),
    ),
    (
        "head_test_suites_build_fixtures_build_with_multi_arch.Kubefile",
        Ok(()),
    ),
    ("v0.5.0_applications_calico_latest.Kubefile", Ok(())),
    ("v0.5.0_applications_helm_v3.6.0.Kubefile", Ok(())),
    ("v0.5.0_applications_helm_v3.6.0_README_01.Kubefile", Ok(())),
    ("v0.5.0_applications_redis_README_01.Kubefile", Ok(())),
    ("v0.5.0_build_testing_kubefile.Kubefile", Ok(())),
    (
        "v0.5.0_docs_api_kubefile_01.Kubefile",
        Err((
            1,
            "FROM: trailing comments are not supported: `# Base Image`",
        )),
    ),
    // Typo `COPY dashboard-chart.` (no space before the destination).
    (
        "v0.5.0_docs_design_global-config_01.Kubefile",
        Err((2, "COPY needs at least a source and a destination")),
    ),
    ("v0.5.0_filesystem_rootfs_rootfs.Kubefile", Ok(())),
    (
        "v0.5.0_test_suites_build_fixtures_cloud_build.Kubefile",
        Ok(()),
    ),
    ("v0.5.2_applications_flannel.Kubefile", Ok(())),
    ("v0.6.1_applications_skywalking.Kubefile", Ok(())),
    ("v0.8.4_applications_mysql-operator.Kubefile", Ok(())),
    ("v0.8.4_applications_strimzi-kafka.Kubefile", Ok(())),
    ("v0.8.6_README_01.Kubefile", Ok(())),
    (
        "v0.8.6_docs_design_mutil_arch_build_01.Kubefile",
        Err((3, "COPY: trailing comments are not supported")),
    ),
    (
        "v0.8.6_docs_site_en_getting-started_build-cloudimage_01.Kubefile",
        Ok(()),
    ),
    // `CMD [a, b]`: brackets without JSON quotes.
    (
        "v0.8.6_docs_site_en_getting-started_using-clusterfile_01.Kubefile",
        Err((2, "CMD: malformed JSON array")),
    ),
    ("v0.8.6_pkg_plugin_test.Kubefile", Ok(())),
    (
        "v0.8.6_test_suites_build_fixtures_lite_build.Kubefile",
        Ok(()),
    ),
];

/// `../shared/corpus/sealer/kubefiles` beside the repository root; from a git worktree nested one
/// level deeper (`wt/NAME/`) the same folder is found by looking further up.
fn corpus_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let beside = root.join("../shared/corpus/sealer/kubefiles");
    root.ancestors()
        .skip(1)
        .map(|a| a.join("shared/corpus/sealer/kubefiles"))
        .find(|p| p.is_dir())
        .unwrap_or(beside)
}

#[test]
fn every_sealer_kubefile_parses_or_is_rejected_with_a_specific_reason() {
    let dir = corpus_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("skipped: corpus folder {} is absent", dir.display());
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "Kubefile"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.Kubefile in {}", dir.display());

    let mut problems = Vec::new();
    println!("{:<72} outcome", "file");
    for path in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{name}: cannot read: {e}"));
                continue;
            }
        };
        let outcome = parse(&text, &name);
        match &outcome {
            Ok(k) => println!("{name:<72} ok ({} instructions)", k.instructions.len()),
            Err(e) => println!("{name:<72} rejected: {e}"),
        }
        if let Err(problem) = judge(&name, &outcome) {
            problems.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        problems.is_empty(),
        "wrong outcomes:\n{}",
        problems.join("\n")
    );
}

fn judge(name: &str, outcome: &Result<Kubefile, KubefileError>) -> Result<(), String> {
    if let Err(e) = outcome {
        specific(name, e)?;
    }
    let Some((_, expected)) = EXPECTED.iter().find(|(n, _)| *n == name) else {
        return Ok(());
    };
    match (expected, outcome) {
        (Ok(()), Ok(_)) => Ok(()),
        (Ok(()), Err(e)) => Err(format!("should parse, got: {e}")),
        (Err((line, _)), Ok(_)) => Err(format!("should be rejected at line {line}, but parsed")),
        (Err((line, words)), Err(e)) => {
            if e.line() != *line || !e.to_string().contains(words) {
                Err(format!("expected line {line} with `{words}`, got: {e}"))
            } else {
                Ok(())
            }
        }
    }
}

/// A rejection must say where (`FILE:LINE:`) and what: an instruction keyword, not a bare
/// "syntax error".
fn specific(name: &str, e: &KubefileError) -> Result<(), String> {
    let shown = e.to_string();
    if !shown.starts_with(&format!("{name}:{}: ", e.line())) {
        return Err(format!("message does not start with FILE:LINE: {shown}"));
    }
    const KEYWORDS: &[&str] = &[
        "FROM",
        "COPY",
        "ADD",
        "RUN",
        "ENV",
        "ARG",
        "LABEL",
        "MAINTAINER",
        "CMD",
        "APP",
        "LAUNCH",
        "KUBEVERSION",
        "CNI",
        "CSI",
        "unknown instruction",
    ];
    if !KEYWORDS.iter().any(|k| shown.contains(k)) {
        return Err(format!("message names no instruction: {shown}"));
    }
    Ok(())
}

fn parse_corpus_file(name: &str) -> Option<Kubefile> {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path).ok()?;
    match parse(&text, name) {
        Ok(k) => Some(k),
        Err(e) => panic!("{e}"),
    }
}

fn kinds(k: &Kubefile) -> Vec<&InstructionKind> {
    k.instructions.iter().map(|i| &i.kind).collect()
}

#[test]
fn corpus_examples_mean_what_their_authors_meant() {
    if !corpus_dir().is_dir() {
        println!(
            "skipped: corpus folder {} is absent",
            corpus_dir().display()
        );
        return;
    }
    // sealer v0.8: a JSON-array CMD is a list of command lines, not an argv.
    if let Some(k) = parse_corpus_file("v0.8.4_applications_mysql-operator.Kubefile") {
        assert_eq!(
            kinds(&k)[2],
            &InstructionKind::Cmd(vec![
                "kubectl apply -f manifests/bundle.yaml".to_string(),
                "kubectl apply -f manifests/cr.yaml".to_string()
            ])
        );
    }
    // Bare-word LAUNCH, as the HEAD e2e fixture writes it.
    if let Some(k) = parse_corpus_file("head_test_suites_build_fixtures_build_with_launch.Kubefile")
    {
        assert_eq!(
            kinds(&k)[3],
            &InstructionKind::Launch(vec!["myapp".to_string()])
        );
    }
    // Continuations join into one RUN starting at its first line.
    if let Some(k) = parse_corpus_file("v0.5.0_applications_helm_v3.6.0_README_01.Kubefile") {
        let run = &k.instructions[1];
        assert_eq!(run.line, 2);
        let InstructionKind::Run {
            command: Command::Shell(cmd),
        } = &run.kind
        else {
            panic!("expected a shell RUN, got {:?}", run.kind);
        };
        assert!(
            cmd.starts_with("helm repo add openebs") && cmd.ends_with("openebs/openebs"),
            "{cmd}"
        );
    }
    // The official base image: CNI app, four runtime labels, LAUNCH last.
    if let Some(k) = parse_corpus_file("basefs-main_context.Kubefile") {
        let kinds = kinds(&k);
        assert_eq!(
            kinds
                .iter()
                .filter(|k| matches!(k, InstructionKind::Label(_)))
                .count(),
            4
        );
        assert!(matches!(kinds[10], InstructionKind::Cni { name, .. } if name == "calico"));
        assert_eq!(
            kinds[11],
            &InstructionKind::Launch(vec!["calico".to_string()])
        );
    }
}
