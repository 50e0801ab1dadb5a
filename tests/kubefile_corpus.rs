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

/// Where the corpus build test judges a file's outcome: built and installed (with what was
/// checked), or skipped with the reason (it needs the network).
#[derive(Debug)]
enum BuildOutcome {
    Built(Vec<String>),
    Skipped(&'static str),
}

/// The files a generated sealer-style base image holds (`FROM anything` in the corpus gets one
/// under that name): sealer's rootfs layout and a hook in v0.5-v0.7's `plugin/` directory.
const BASE_FILES: &[(&str, &str)] = &[
    ("bin/kubeadm", "#!/bin/sh\necho kubeadm\n"),
    ("etc/kubelet.service", "[Unit]\n"),
    // sealer's base images render etc/kubeadm.yml from this at install.
    ("etc/kubeadm.yml.tmpl", "cluster={{ .SEALER_CLUSTER }}\n"),
    ("scripts/init.sh", "echo init\n"),
    (
        "plugin/legacy.yaml",
        "apiVersion: sealer.io/v2\nkind: Plugin\nmetadata:\n  name: legacy\nspec:\n  type: SHELL\n  action: PreInstall\n  data: |\n    echo legacy > legacy-hook.txt\n",
    ),
];

/// Every generated `.yaml`: a sealer plugin document that leaves a mark when it runs.
const GENERATED_PLUGIN: &str = "apiVersion: sealer.io/v2\nkind: Plugin\nmetadata:\n  name: generated\nspec:\n  type: SHELL\n  action: PreInstall\n  data: |\n    echo generated > generated-hook.txt\n";

/// What a generated context file holds, by its name: a template for `.tmpl` (its rendering is
/// checked after the install), something that parses for the other kinds sealer images use.
fn generated_content(name: &str) -> &'static str {
    if name.ends_with(".tmpl") {
        "cluster={{ .SEALER_CLUSTER }}\n"
    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
        // A hook, in case the Kubefile puts it in plugins/ or plugin/ (it then must run).
        GENERATED_PLUGIN
    } else if name.ends_with(".sh") {
        "echo generated\n"
    } else {
        "generated\n"
    }
}

/// `source "X" matches nothing in the build context`: X.
fn missing_source(message: &str) -> Option<String> {
    let at = message.find("source \"")? + "source \"".len();
    let rest = &message[at..];
    let end = rest.find('"')?;
    rest[end..]
        .contains("matches nothing in the build context")
        .then(|| rest[..end].to_string())
}

/// Creates `source` (a build-context path, maybe a glob) in `ctx`: a file when its last part
/// has an extension, else a directory holding one file. Returns the created file.
fn create_source(ctx: &Path, source: &str) -> PathBuf {
    let rel = source
        .trim_start_matches("./")
        .trim_start_matches('/')
        .replace(['*', '?'], "x")
        .replace(['[', ']'], "");
    let rel = if rel.is_empty() {
        "root".to_string()
    } else {
        rel
    };
    let path = ctx.join(&rel);
    let last = rel.rsplit('/').next().unwrap_or_default();
    let file = if last.contains('.') && !rel.ends_with('/') {
        path
    } else {
        path.join("generated.yaml")
    };
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(&file, generated_content(&name)).unwrap();
    file
}

fn sealer_cmd(root: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sealer"));
    c.env("SEALER_ROOT", root)
        .env("SEALER_STUB", env!("CARGO_BIN_EXE_sealer-stub"))
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(std::process::Stdio::null());
    c
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds `kubefile` (named `name`) in a store under `work`: its base image generated under
/// the FROM name, its context generated from what the build says is missing; installs it on
/// this machine (`--local`, install commands replaced by `true`) and checks the tree against
/// sealer's rules.
fn build_and_check(name: &str, text: &str, work: &Path) -> Result<BuildOutcome, String> {
    let kubefile = parse(text, name).map_err(|e| e.to_string())?;
    let mut base: Option<String> = None;
    let mut declared = Vec::new();
    let mut named = Vec::new();
    let mut single_file_copies = Vec::new();
    for i in &kubefile.instructions {
        match &i.kind {
            InstructionKind::Run { .. } => {
                return Ok(BuildOutcome::Skipped("RUN needs the network or tools"))
            }
            InstructionKind::From { image, .. } if !image.eq_ignore_ascii_case("scratch") => {
                if image.contains('$') {
                    return Ok(BuildOutcome::Skipped("FROM names a variable"));
                }
                base = Some(image.clone());
            }
            InstructionKind::App { name, sources }
            | InstructionKind::Cni { name, sources }
            | InstructionKind::Csi { name, sources } => {
                if sources
                    .iter()
                    .any(|s| matches!(s, sealer::kubefile::AppSource::Remote(_)))
                {
                    return Ok(BuildOutcome::Skipped("an APP source is a URL"));
                }
                declared.push(name.clone());
            }
            InstructionKind::Launch(apps) => named.extend(apps.iter().cloned()),
            InstructionKind::AppCmds { name, .. } | InstructionKind::AppEnv { name, .. } => {
                named.push(name.clone())
            }
            InstructionKind::Copy { sources, dest, .. }
            | InstructionKind::Add { sources, dest, .. } => {
                if sources.iter().chain([dest]).any(|s| s.contains("://")) {
                    return Ok(BuildOutcome::Skipped("a COPY/ADD source is a URL"));
                }
                if sources.len() == 1 && !sources[0].contains(['$', '*', '?']) {
                    single_file_copies.push((sources[0].clone(), dest.clone()));
                }
            }
            _ => {}
        }
    }
    let root = work.join("store");
    let run = |args: &[&str], dir: &Path| -> Result<String, String> {
        let out = sealer_cmd(&root)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(output_text(&out))
        } else {
            Err(output_text(&out))
        }
    };
    if let Some(image) = &base {
        let ctx = work.join("base");
        for (file, content) in BASE_FILES {
            let path = ctx.join("rootfs").join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let mut text = "FROM scratch\nCOPY rootfs .\n".to_string();
        named.sort();
        named.dedup();
        for app in named.iter().filter(|a| !declared.contains(a)) {
            let dir = ctx.join("apps").join(app);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{app}.yaml")), "kind: ConfigMap\n").unwrap();
            text.push_str(&format!("APP {app} local://apps/{app}\n"));
        }
        std::fs::write(ctx.join("Kubefile"), text).unwrap();
        run(&["build", "-t", image, "."], &ctx).map_err(|e| format!("base {image}: {e}"))?;
    }
    let ctx = work.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Kubefile"), text).unwrap();
    let mut created = Vec::new();
    loop {
        match run(&["build", "-t", "corpus:built", "."], &ctx) {
            Ok(_) => break,
            Err(message) => match missing_source(&message) {
                Some(source) if created.len() < 40 => created.push(create_source(&ctx, &source)),
                _ => return Err(format!("build: {message}")),
            },
        }
    }
    let data = work.join("data");
    run(
        &[
            "run",
            "corpus:built",
            "--local",
            "--data-root",
            data.to_str().unwrap(),
            "--cmds",
            "true",
        ],
        work,
    )
    .map_err(|e| format!("install: {e}"))?;
    let rootfs = data.join("my-cluster/rootfs");
    let mut checked = Vec::new();
    if base.is_some() {
        for (file, _) in BASE_FILES {
            if !rootfs.join(file).exists() {
                return Err(format!(
                    "the base image's {file} is gone from the installed tree"
                ));
            }
        }
        if !rootfs.join("legacy-hook.txt").is_file() {
            return Err("the base image's plugin/legacy.yaml hook did not run".into());
        }
        checked.push("base files kept, plugin/ hook ran".to_string());
        // A single file copied onto a directory of the base lands inside it.
        for (source, dest) in &single_file_copies {
            let dest = dest
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/');
            let is_base_dir = BASE_FILES
                .iter()
                .any(|(f, _)| f.starts_with(&format!("{dest}/")));
            let src = ctx.join(source.trim_start_matches("./"));
            if is_base_dir && src.is_file() {
                let name = src.file_name().unwrap();
                if !rootfs.join(dest).join(name).is_file() {
                    return Err(format!(
                        "COPY {source} {dest}: {dest}/{} is missing",
                        name.to_string_lossy()
                    ));
                }
                checked.push(format!("COPY {source} {dest} went into {dest}/"));
            }
        }
    }
    // A generated hook copied into plugin/ or plugins/ ran.
    for (source, dest) in &single_file_copies {
        let dest = dest
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/');
        if (dest == "plugin" || dest == "plugins") && source.ends_with(".yaml") {
            if !rootfs.join("generated-hook.txt").is_file() {
                return Err(format!("COPY {source} {dest}: the hook did not run"));
            }
            checked.push(format!("hook copied into {dest}/ ran"));
        }
    }
    // Every generated template was rendered beside itself.
    let mut stack = vec![rootfs.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "tmpl")
                && std::fs::read_to_string(&path).ok().as_deref()
                    == Some(generated_content("x.tmpl"))
            {
                let rendered = path.with_extension("");
                if std::fs::read_to_string(&rendered).ok().as_deref()
                    != Some("cluster=my-cluster\n")
                {
                    return Err(format!("{} was not rendered", path.display()));
                }
                let shown = rendered.strip_prefix(&rootfs).unwrap_or(&rendered);
                checked.push(format!("{} rendered", shown.display()));
            }
        }
    }
    Ok(BuildOutcome::Built(checked))
}

#[test]
fn every_corpus_kubefile_that_needs_no_network_builds_and_installs_as_sealer_would() {
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
    let mut problems = Vec::new();
    let mut built = 0;
    let mut into_dirs = 0;
    let mut rendered = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        if parse(&text, &name).is_err() {
            continue; // judged by the parse test above
        }
        let work = tempfile::tempdir().unwrap();
        match build_and_check(&name, &text, work.path()) {
            Ok(BuildOutcome::Built(checked)) => {
                built += 1;
                into_dirs += checked.iter().filter(|c| c.contains("went into")).count();
                rendered += checked.iter().filter(|c| c.ends_with("rendered")).count();
                println!("{name:<72} built: {}", checked.join("; "));
            }
            Ok(BuildOutcome::Skipped(why)) => println!("{name:<72} skipped: {why}"),
            Err(e) => {
                println!("{name:<72} FAILED: {e}");
                problems.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "corpus builds failed:\n{}",
        problems.join("\n")
    );
    assert!(built >= 10, "only {built} corpus Kubefiles were built");
    assert!(
        into_dirs >= 1,
        "no corpus COPY of a file onto a base directory was checked"
    );
    assert!(rendered >= 1, "no template of a corpus image was rendered");
}
