use super::*;

fn ok(text: &str) -> Vec<Instruction> {
    match parse(text, "Kubefile") {
        Ok(k) => k.instructions,
        Err(e) => panic!("expected success, got: {e}"),
    }
}

fn kinds(text: &str) -> Vec<InstructionKind> {
    ok(text).into_iter().map(|i| i.kind).collect()
}

/// Parse, expect failure, return (line, Display of the error).
fn err(text: &str) -> (usize, String) {
    match parse(text, "Kubefile") {
        Ok(k) => panic!("expected an error, got {:?}", k.instructions),
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("Kubefile:{}: ", e.line())),
                "error does not start with FILE:LINE: {shown}"
            );
            (e.line(), shown)
        }
    }
}

fn assert_err(text: &str, line: usize, needle: &str) {
    let (got_line, shown) = err(text);
    assert_eq!(got_line, line, "wrong line in: {shown}");
    assert!(shown.contains(needle), "`{needle}` not in: {shown}");
}

fn s(v: &str) -> String {
    v.to_string()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, v)| (s(k), s(v))).collect()
}

fn from_scratch() -> InstructionKind {
    InstructionKind::From {
        image: s("scratch"),
        platform: None,
    }
}

// ---- good input -----------------------------------------------------------------------------

#[test]
fn full_kubefile_parses_into_typed_instructions_with_start_lines() {
    let text = "\
# syntax=docker/dockerfile:1
ARG BASE=scratch
FROM --platform=linux/amd64 docker.io/sealerio/kubernetes:v1.22.15
# a comment
MAINTAINER ops@example.com

COPY --chown=0:0 --chmod=0644 etc/a.yaml etc/b.yaml etc/
ADD charts.tar.gz charts
RUN wget https://example.com/x && \\
    tar xf x
ENV A=1 B=\"two words\"
LABEL \"cluster.alpha.sealer.io/cluster-runtime-type\"=\"kubernetes\"
KUBEVERSION >=1.20 <1.26
APP nginx local://nginx.yaml https://example.com/x.tgz
CNI calico local://calico.sh
CSI openebs local://openebs
APPCMDS nginx [\"kubectl apply -f nginx.yaml\"]
APPENV nginx replicas=3
LAUNCH [\"calico\", \"nginx\"]
";
    let got = ok(text);
    let lines: Vec<usize> = got.iter().map(|i| i.line).collect();
    assert_eq!(
        lines,
        vec![2, 3, 5, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    );
    let kinds: Vec<InstructionKind> = got.into_iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        vec![
            InstructionKind::Arg {
                name: s("BASE"),
                default: Some(s("scratch"))
            },
            InstructionKind::From {
                image: s("docker.io/sealerio/kubernetes:v1.22.15"),
                platform: Some(s("linux/amd64"))
            },
            InstructionKind::Maintainer(s("ops@example.com")),
            InstructionKind::Copy {
                sources: vec![s("etc/a.yaml"), s("etc/b.yaml")],
                dest: s("etc/"),
                chown: Some(s("0:0")),
                chmod: Some(s("0644"))
            },
            InstructionKind::Add {
                sources: vec![s("charts.tar.gz")],
                dest: s("charts"),
                chown: None,
                chmod: None
            },
            InstructionKind::Run {
                command: Command::Shell(s("wget https://example.com/x &&     tar xf x"))
            },
            InstructionKind::Env(pairs(&[("A", "1"), ("B", "\"two words\"")])),
            InstructionKind::Label(pairs(&[(
                "\"cluster.alpha.sealer.io/cluster-runtime-type\"",
                "\"kubernetes\""
            )])),
            InstructionKind::KubeVersion(s(">=1.20 <1.26")),
            InstructionKind::App {
                name: s("nginx"),
                sources: vec![
                    AppSource::Local(s("nginx.yaml")),
                    AppSource::Remote(s("https://example.com/x.tgz"))
                ]
            },
            InstructionKind::Cni {
                name: s("calico"),
                sources: vec![AppSource::Local(s("calico.sh"))]
            },
            InstructionKind::Csi {
                name: s("openebs"),
                sources: vec![AppSource::Local(s("openebs"))]
            },
            InstructionKind::AppCmds {
                name: s("nginx"),
                cmds: vec![s("kubectl apply -f nginx.yaml")]
            },
            InstructionKind::AppEnv {
                name: s("nginx"),
                env: pairs(&[("replicas", "3")])
            },
            InstructionKind::Launch(vec![s("calico"), s("nginx")]),
        ]
    );
}

#[test]
fn instruction_names_are_case_insensitive() {
    assert_eq!(
        kinds("from scratch\nCoPy a b\napp x local://x\nlaunch x\n"),
        vec![
            from_scratch(),
            InstructionKind::Copy {
                sources: vec![s("a")],
                dest: s("b"),
                chown: None,
                chmod: None
            },
            InstructionKind::App {
                name: s("x"),
                sources: vec![AppSource::Local(s("x"))]
            },
            InstructionKind::Launch(vec![s("x")]),
        ]
    );
}

#[test]
fn comments_blank_lines_bom_crlf_and_indentation_are_ignored() {
    let text =
        "\u{feff}#Kubefile\r\n\r\n   # indented comment\r\n  FROM scratch  \r\n\t\r\nCOPY a b\r\n";
    let got = ok(text);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].line, 4);
    assert_eq!(got[1].line, 6);
    assert_eq!(got[0].kind, from_scratch());
}

#[test]
fn file_without_final_newline_parses() {
    assert_eq!(
        kinds("FROM scratch\nCOPY . ."),
        kinds("FROM scratch\nCOPY . .\n")
    );
}

#[test]
fn continuation_joins_lines_and_the_instruction_keeps_its_first_line() {
    let text = "FROM scratch\nRUN a \\\n  b \\\n\n  # comment inside\n  c\nCOPY x y\n";
    let got = ok(text);
    assert_eq!(got[1].line, 2);
    assert_eq!(
        got[1].kind,
        InstructionKind::Run {
            command: Command::Shell(s("a   b   c"))
        }
    );
    assert_eq!(got[2].line, 7);
}

#[test]
fn instruction_text_is_the_whole_instruction_on_one_line_from_the_same_joiner() {
    // The parser reads the pieces as Docker joins them; `text` shows the same pieces trimmed and
    // separated by one space. Blank and comment lines inside a continuation belong to neither.
    let text = "\u{feff}FROM scratch\nLABEL a=\"x y\" \\\n\n  # comment inside\n      b=2 \\  \n\tc=3\nRUN a \\\n  b\nARG P Q=1\n";
    let got = ok(text);
    let shown: Vec<&str> = got.iter().map(|i| i.text.as_str()).collect();
    assert_eq!(
        shown,
        [
            "FROM scratch",
            "LABEL a=\"x y\" b=2 c=3",
            "RUN a b",
            "ARG P Q=1",
            "ARG P Q=1"
        ]
    );
    assert_eq!(
        got[1].kind,
        InstructionKind::Label(vec![
            (s("a"), s("\"x y\"")),
            (s("b"), s("2")),
            (s("c"), s("3"))
        ])
    );
    let vars = |_: &str| None;
    assert_eq!(
        got[1].expanded("Kubefile", &vars).unwrap().text,
        got[1].text
    );
}

#[test]
fn continuation_with_trailing_spaces_after_backslash_still_continues() {
    let got = kinds("FROM scratch\nCOPY a \\  \n b\n");
    assert_eq!(
        got[1],
        InstructionKind::Copy {
            sources: vec![s("a")],
            dest: s("b"),
            chown: None,
            chmod: None
        }
    );
}

#[test]
fn backslash_on_last_line_ends_the_instruction() {
    let got = kinds("FROM scratch\nRUN echo hi \\");
    assert_eq!(
        got[1],
        InstructionKind::Run {
            command: Command::Shell(s("echo hi"))
        }
    );
}

#[test]
fn error_inside_a_continuation_reports_the_first_line() {
    assert_err(
        "FROM scratch\n\nCOPY \\\n  onlyone\n",
        3,
        "COPY needs at least a source and a destination",
    );
}

#[test]
fn run_json_form_is_exec_and_shell_test_bracket_stays_shell() {
    let got = kinds(
        "FROM scratch\nRUN [\"/bin/sh\", \"-c\", \"echo $HOME\"]\nRUN [ -f x ] && echo yes\n",
    );
    assert_eq!(
        got[1],
        InstructionKind::Run {
            command: Command::Exec(vec![s("/bin/sh"), s("-c"), s("echo $HOME")])
        }
    );
    assert_eq!(
        got[2],
        InstructionKind::Run {
            command: Command::Shell(s("[ -f x ] && echo yes"))
        }
    );
}

#[test]
fn cmd_accumulates_and_json_form_is_a_list_of_command_lines() {
    let got = kinds(
        "FROM k8s:v1\nCMD [\"kubectl apply -f a.yaml\", \"kubectl apply -f b.yaml\"]\nCMD kubectl patch sc x -p '{\"a\": {\"b\":\"c\"}}'\n",
    );
    assert_eq!(
        got[1],
        InstructionKind::Cmd(vec![
            s("kubectl apply -f a.yaml"),
            s("kubectl apply -f b.yaml")
        ])
    );
    assert_eq!(
        got[2],
        InstructionKind::Cmd(vec![s("kubectl patch sc x -p '{\"a\": {\"b\":\"c\"}}'")])
    );
}

#[test]
fn cmd_shell_form_keeps_a_trailing_hash_for_the_shell() {
    let got = kinds("FROM k8s:v1\nCMD helm list # multi CMD is valid\n");
    assert_eq!(
        got[1],
        InstructionKind::Cmd(vec![s("helm list # multi CMD is valid")])
    );
}

#[test]
fn cmds_json_array_is_last_instruction() {
    let got = kinds("FROM scratch\nCOPY a b\nCMDS [\"kubectl apply -f a\", \"bash x.sh\"]");
    assert_eq!(
        got[2],
        InstructionKind::Cmds(vec![s("kubectl apply -f a"), s("bash x.sh")])
    );
}

#[test]
fn copy_json_form_allows_spaces_in_paths() {
    let got = kinds("FROM scratch\nCOPY --chown=1:1 [\"my dir/a b.txt\", \"dest dir/\"]\n");
    assert_eq!(
        got[1],
        InstructionKind::Copy {
            sources: vec![s("my dir/a b.txt")],
            dest: s("dest dir/"),
            chown: Some(s("1:1")),
            chmod: None
        }
    );
}

#[test]
fn copy_keeps_variables_and_globs_raw_for_the_builder() {
    let got = kinds("FROM scratch\nCOPY ${ARCH}/* rootfs/* . \n");
    assert_eq!(
        got[1],
        InstructionKind::Copy {
            sources: vec![s("${ARCH}/*"), s("rootfs/*")],
            dest: s("."),
            chown: None,
            chmod: None
        }
    );
}

#[test]
fn env_legacy_form_takes_the_rest_of_the_line_as_value() {
    let got = kinds("FROM scratch\nENV DOMAIN  aliyun.com and more\n");
    assert_eq!(
        got[1],
        InstructionKind::Env(pairs(&[("DOMAIN", "aliyun.com and more")]))
    );
}

#[test]
fn env_pairs_keep_quotes_and_escapes_raw() {
    let got = kinds("FROM scratch\nENV a=1 b=\"v 2\" c='x y' d=e\\ f empty=\n");
    assert_eq!(
        got[1],
        InstructionKind::Env(pairs(&[
            ("a", "1"),
            ("b", "\"v 2\""),
            ("c", "'x y'"),
            ("d", "e\\ f"),
            ("empty", "")
        ]))
    );
    // What the builder gets after expansion:
    let none = |_: &str| None;
    let values: Vec<String> = match &got[1] {
        InstructionKind::Env(p) => p.iter().map(|(_, v)| expand(v, &none).unwrap()).collect(),
        _ => unreachable!(),
    };
    assert_eq!(values, vec!["1", "v 2", "x y", "e f", ""]);
}

#[test]
fn label_legacy_and_pair_forms() {
    let got = kinds("FROM scratch\nLABEL version 1.0\nLABEL a=b \"c d\"=\"e\"\n");
    assert_eq!(got[1], InstructionKind::Label(pairs(&[("version", "1.0")])));
    assert_eq!(
        got[2],
        InstructionKind::Label(pairs(&[("a", "b"), ("\"c d\"", "\"e\"")]))
    );
}

#[test]
fn arg_declares_one_instruction_per_name_and_may_precede_from() {
    let got = ok("ARG A\nARG B=2 C=\"x y\"\nFROM scratch\n");
    let lines: Vec<usize> = got.iter().map(|i| i.line).collect();
    assert_eq!(lines, vec![1, 2, 2, 3]);
    assert_eq!(
        got[2].kind,
        InstructionKind::Arg {
            name: s("C"),
            default: Some(s("\"x y\""))
        }
    );
    assert_eq!(
        got[0].kind,
        InstructionKind::Arg {
            name: s("A"),
            default: None
        }
    );
}

#[test]
fn launch_bare_words_form() {
    let got = kinds("FROM scratch\nAPP a local://a\nAPP b local://b\nLAUNCH a b");
    assert_eq!(got[3], InstructionKind::Launch(vec![s("a"), s("b")]));
}

#[test]
fn apps_from_a_non_scratch_base_are_checked_by_the_builder() {
    let text = "FROM kubernetes:v1\nAPP nginx local://nginx.yaml\nAPPCMDS kyverno [\"sh x.sh\"]\nLAUNCH [\"calico\", \"nginx\"]\n";
    let kubefile = parse(text, "Kubefile").unwrap();
    kubefile
        .check_apps(&|app| app == "calico" || app == "kyverno")
        .unwrap();
    let e = kubefile.check_apps(&|app| app == "calico").unwrap_err();
    assert_eq!(e.line(), 3);
    assert!(e.to_string().contains("APPCMDS names app `kyverno`"), "{e}");
}

#[test]
fn escape_directive_with_backslash_is_accepted() {
    assert_eq!(kinds("# escape=\\\nFROM scratch\n"), vec![from_scratch()]);
}

// ---- bad input: every error names FILE:LINE and says what is wrong -------------------------

#[test]
fn unknown_instruction_is_named() {
    assert_err(
        "FROM scratch\nCOPY a b\n...\n",
        3,
        "unknown instruction `...`",
    );
    assert_err("FROM scratch\n\nFOO bar\n", 3, "unknown instruction `FOO`");
}

#[test]
fn dockerfile_only_instructions_explain_why() {
    assert_err(
        "FROM scratch\nWORKDIR /x\n",
        2,
        "WORKDIR is a Dockerfile instruction that Kubefiles do not support",
    );
    assert_err("FROM scratch\nentrypoint [\"x\"]\n", 2, "ENTRYPOINT");
}

#[test]
fn missing_arguments() {
    assert_err("FROM\n", 1, "FROM needs an image");
    assert_err(
        "FROM scratch\nCOPY onlyone\n",
        2,
        "COPY needs at least a source and a destination",
    );
    assert_err(
        "FROM scratch\nADD\n",
        2,
        "ADD needs at least a source and a destination",
    );
    assert_err("FROM scratch\nRUN\n", 2, "RUN needs a command");
    assert_err("FROM scratch\nCMD\n", 2, "CMD needs a command");
    assert_err("FROM scratch\nENV\n", 2, "ENV needs at least one KEY=VALUE");
    assert_err(
        "FROM scratch\nENV ONLYKEY\n",
        2,
        "ENV ONLYKEY needs a value",
    );
    assert_err(
        "FROM scratch\nLABEL\n",
        2,
        "LABEL needs at least one KEY=VALUE",
    );
    assert_err("FROM scratch\nARG\n", 2, "ARG needs a name");
    assert_err("FROM scratch\nMAINTAINER\n", 2, "MAINTAINER needs a name");
    assert_err(
        "FROM scratch\nAPP\n",
        2,
        "APP needs an app name and sources",
    );
    assert_err(
        "FROM scratch\nAPP x\n",
        2,
        "APP x needs at least one source",
    );
    assert_err("FROM scratch\nAPPCMDS\n", 2, "APPCMDS needs an app name");
    assert_err(
        "FROM scratch\nAPP x local://x\nAPPCMDS x\n",
        3,
        "APPCMDS x needs a JSON array",
    );
    assert_err(
        "FROM scratch\nAPPENV x\n",
        2,
        "APPENV needs an app name and KEY=VALUE pairs",
    );
    assert_err("FROM scratch\nLAUNCH\n", 2, "LAUNCH needs at least one app");
    assert_err(
        "FROM scratch\nLAUNCH []\n",
        2,
        "LAUNCH needs at least one app",
    );
    assert_err(
        "FROM scratch\nKUBEVERSION\n",
        2,
        "KUBEVERSION needs a version range",
    );
    assert_err(
        "FROM scratch\nCMDS []\n",
        2,
        "CMDS needs at least one command",
    );
}

#[test]
fn extra_arguments() {
    assert_err("FROM a b\n", 1, "FROM takes one image, got 2 arguments");
    assert_err("FROM a AS b\n", 1, "build stages are not supported");
}

#[test]
fn malformed_json_arrays() {
    assert_err(
        "FROM scratch\nCMD [kubectl apply -f mysql, kubectl apply -f redis]\n",
        2,
        "CMD: malformed JSON array",
    );
    assert_err(
        "FROM scratch\nRUN [\"a\", 1]\n",
        2,
        "JSON array must hold only strings",
    );
    assert_err(
        "FROM scratch\nRUN [\"a\"] trailing\n",
        2,
        "RUN: malformed JSON array",
    );
    assert_err(
        "FROM scratch\nCMDS kubectl apply -f x\n",
        2,
        "CMDS takes a JSON array",
    );
    assert_err(
        "FROM scratch\nCOPY [\"a\", \"b\"\n",
        2,
        "COPY: malformed JSON array",
    );
    assert_err(
        "FROM scratch\nCOPY [\"a\" \"b\"]\n",
        2,
        "COPY: malformed JSON array",
    );
    assert_err(
        "FROM scratch\nLAUNCH [\"a\",]\n",
        2,
        "LAUNCH: malformed JSON array",
    );
}

#[test]
fn bad_key_value_pairs() {
    assert_err("FROM scratch\nENV a=1 b\n", 2, "ENV: `b` is not KEY=VALUE");
    assert_err(
        "FROM scratch\nLABEL =v\n",
        2,
        "LABEL: `=v` has an empty name",
    );
    assert_err(
        "FROM scratch\nAPP x local://x\nAPPENV x k\n",
        3,
        "APPENV: `k` is not KEY=VALUE",
    );
    assert_err(
        "FROM scratch\nENV a=\"open\n",
        2,
        "ENV: unterminated double quote",
    );
    assert_err("FROM scratch\nARG 1abc=2\n", 2, "ARG name `1abc`");
}

#[test]
fn instructions_before_from_are_rejected_but_arg_is_allowed() {
    assert_err(
        "ARG X\nCOPY a b\nFROM scratch\n",
        2,
        "COPY comes before FROM",
    );
    assert_err(
        "CNI flannel https://x/y.yml\nLAUNCH [\"flannel\"]\n",
        1,
        "CNI comes before FROM",
    );
    assert_err("", 1, "no FROM instruction");
    assert_err("# only a comment\nARG X\n", 2, "no FROM instruction");
}

#[test]
fn second_from_is_rejected() {
    assert_err(
        "FROM scratch\nCOPY a b\nFROM other\n",
        3,
        "second FROM (the first is at line 1)",
    );
}

#[test]
fn launch_rules() {
    assert_err(
        "FROM scratch\nAPP a local://a\nLAUNCH a\nCOPY x y\n",
        3,
        "LAUNCH must be the last instruction, but COPY follows it at line 4",
    );
    assert_err(
        "FROM scratch\nAPP a local://a\nLAUNCH a\nLAUNCH a\n",
        4,
        "second LAUNCH (the first is at line 3)",
    );
    assert_err(
        "FROM scratch\nAPP a local://a\nCMD echo hi\nLAUNCH a\n",
        4,
        "LAUNCH and CMD (line 3) are mutually exclusive",
    );
    assert_err(
        "FROM scratch\nAPP a local://a\nCMDS [\"x\"]\nLAUNCH a\n",
        4,
        "LAUNCH (line 4) and CMDS (line 3) are mutually exclusive",
    );
    assert_err(
        "FROM scratch\nLAUNCH [\"ghost\"]\n",
        2,
        "LAUNCH names app `ghost`",
    );
    assert_err(
        "FROM scratch\nAPP a local://a\nLAUNCH a a\n",
        3,
        "LAUNCH names app `a` twice",
    );
}

#[test]
fn cmds_rules() {
    assert_err(
        "FROM scratch\nCMDS [\"a\"]\nCOPY x y\n",
        2,
        "CMDS must be the last instruction, but COPY follows it at line 3",
    );
    assert_err(
        "FROM scratch\nCMDS [\"a\"]\nCMDS [\"b\"]\n",
        3,
        "second CMDS",
    );
}

#[test]
fn apps_must_be_declared_before_use_on_scratch() {
    assert_err(
        "FROM scratch\nAPPCMDS x [\"a\"]\nAPP x local://x\n",
        2,
        "APPCMDS names app `x`, which is not declared before it",
    );
    assert_err("FROM scratch\nAPPENV y k=v\n", 2, "APPENV names app `y`");
    assert_err(
        "FROM scratch\nAPP x local://x\nCNI x local://y\n",
        3,
        "CNI: app `x` is already declared at line 2",
    );
}

#[test]
fn app_sources_need_a_scheme_and_names_must_be_directory_safe() {
    assert_err(
        "FROM scratch\nAPP es https://charts/ es.tgz\n",
        2,
        "APP es: source `es.tgz` must start with local://, http:// or https://",
    );
    assert_err(
        "FROM scratch\nAPP x local://\n",
        2,
        "`local://` needs a path",
    );
    assert_err("FROM scratch\nAPP ../x local://x\n", 2, "app name `../x`");
}

#[test]
fn trailing_comments_are_rejected_with_the_comment_quoted() {
    assert_err(
        "FROM k8s:1.18 # Base Image\n",
        1,
        "FROM: trailing comments are not supported: `# Base Image`",
    );
    assert_err(
        "FROM scratch\nCOPY a . # copy files\n",
        2,
        "COPY: trailing comments",
    );
    assert_err(
        "FROM scratch\nENV DOMAIN aliyun.com # global\n",
        2,
        "ENV: trailing comments",
    );
    assert_err(
        "FROM scratch\nAPP a local://a # x\n",
        2,
        "APP: trailing comments",
    );
}

#[test]
fn heredocs_are_rejected() {
    assert_err(
        "FROM scratch\nRUN cat <<EOF > /x\nhello\nEOF\n",
        2,
        "RUN with a heredoc (`<<EOF`) is not supported",
    );
    assert_err("FROM scratch\nCOPY <<-'EOF' /x\n", 2, "COPY with a heredoc");
}

#[test]
fn unsupported_flags_are_named() {
    assert_err(
        "FROM scratch\nRUN --mount=type=cache,target=/x make\n",
        2,
        "RUN --mount=type=cache,target=/x is not supported",
    );
    assert_err(
        "FROM scratch\nCOPY --from=builder a b\n",
        2,
        "COPY --from=builder: copying from another stage",
    );
    assert_err(
        "FROM scratch\nADD --link a b\n",
        2,
        "ADD --link is not supported",
    );
    assert_err(
        "FROM --foo=bar scratch\n",
        1,
        "FROM --foo=bar is not supported",
    );
    assert_err(
        "FROM scratch\nCOPY --chown a b\n",
        2,
        "COPY --chown needs a value",
    );
}

#[test]
fn escape_directive_other_than_backslash_is_rejected() {
    assert_err(
        "# escape=`\nFROM scratch\n",
        1,
        "`# escape=`` is not supported",
    );
}

#[test]
fn directive_after_an_instruction_is_just_a_comment() {
    assert_eq!(kinds("FROM scratch\n# escape=`\n"), vec![from_scratch()]);
}

#[test]
fn error_display_matches_the_documented_shape() {
    let e = parse("FROM scratch\nCOPY x\n", "Kubefile").unwrap_err();
    assert_eq!(
        e.to_string(),
        "Kubefile:2: COPY needs at least a source and a destination"
    );
    assert_eq!(e.file(), "Kubefile");
}

// ---- expansion ------------------------------------------------------------------------------

fn vars(name: &str) -> Option<String> {
    match name {
        "ARCH" => Some(s("amd64")),
        "EMPTY" => Some(s("")),
        "V" => Some(s("4.0.0")),
        _ => None,
    }
}

fn x(word: &str) -> String {
    match expand(word, &vars) {
        Ok(v) => v,
        Err(e) => panic!("expand({word}) failed: {e}"),
    }
}

#[test]
fn expands_plain_and_braced_variables() {
    assert_eq!(x("$ARCH/bin"), "amd64/bin");
    assert_eq!(x("${ARCH}/bin"), "amd64/bin");
    assert_eq!(x("mongo-${V}.yaml"), "mongo-4.0.0.yaml");
    assert_eq!(x("$ARCHx"), "");
    assert_eq!(x("a${UNSET}b"), "ab");
    assert_eq!(x("$1x"), "x");
}

#[test]
fn expands_default_and_alternative_forms() {
    assert_eq!(x("${UNSET:-def}"), "def");
    assert_eq!(x("${EMPTY:-def}"), "def");
    assert_eq!(x("${EMPTY-def}"), "");
    assert_eq!(x("${UNSET-def}"), "def");
    assert_eq!(x("${ARCH:-def}"), "amd64");
    assert_eq!(x("${ARCH:+alt}"), "alt");
    assert_eq!(x("${EMPTY:+alt}"), "");
    assert_eq!(x("${EMPTY+alt}"), "alt");
    assert_eq!(x("${UNSET:+alt}"), "");
    assert_eq!(x("${UNSET:-${ARCH}-x}"), "amd64-x");
    assert_eq!(x("${UNSET:-\"a}b\"}"), "a}b");
}

#[test]
fn required_variable_reports_its_message() {
    assert_eq!(
        expand("${UNSET:?set UNSET please}", &vars),
        Err(ExpandError::Required {
            name: s("UNSET"),
            message: s("set UNSET please")
        })
    );
    assert!(expand("${EMPTY?m}", &vars).is_ok());
    assert!(expand("${EMPTY:?m}", &vars).is_err());
}

#[test]
fn quotes_and_escapes_follow_docker() {
    assert_eq!(x("\\$ARCH"), "$ARCH");
    assert_eq!(x("'$ARCH'"), "$ARCH");
    assert_eq!(x("\"$ARCH x\""), "amd64 x");
    assert_eq!(x("\"a\\\"b\\$c\\\\d\\e\""), "a\"b$c\\d\\e");
    assert_eq!(x("a\\ b"), "a b");
    assert_eq!(x("cost: $ 5 $"), "cost: $ 5 $");
    assert_eq!(x("two words kept"), "two words kept");
    assert_eq!(x("\"\""), "");
}

#[test]
fn malformed_expansions_are_errors() {
    assert!(matches!(
        expand("'open", &vars),
        Err(ExpandError::UnterminatedQuote {
            quote: "single",
            ..
        })
    ));
    assert!(matches!(
        expand("\"open", &vars),
        Err(ExpandError::UnterminatedQuote {
            quote: "double",
            ..
        })
    ));
    assert!(matches!(
        expand("${ARCH", &vars),
        Err(ExpandError::UnterminatedBrace { .. })
    ));
    assert!(matches!(
        expand("${ARCH:-x", &vars),
        Err(ExpandError::UnterminatedBrace { .. })
    ));
    let e = expand("${ARCH#x}", &vars).unwrap_err();
    assert!(matches!(e, ExpandError::BadSubstitution { .. }));
    assert!(e.to_string().contains("`${ARCH#`"), "{e}");
    assert!(matches!(
        expand("${}", &vars),
        Err(ExpandError::BadSubstitution { .. })
    ));
    assert!(matches!(
        expand("${:-x}", &vars),
        Err(ExpandError::BadSubstitution { .. })
    ));
}

#[test]
fn instructions_serialise_to_a_stable_json_shape() {
    let got = ok("FROM scratch\nENV a=1\n");
    let json = serde_json::to_string(&got).unwrap();
    assert_eq!(
        json,
        r#"[{"line":1,"kind":{"From":{"image":"scratch","platform":null}}},{"line":2,"kind":{"Env":[["a","1"]]}}]"#
    );
}

#[test]
fn expanded_instruction_substitutes_only_the_documented_fields() {
    let text = "ARG TAG=v1\nFROM k8s:${TAG}\nCOPY --chown=${U:-0}:0 ${ARCH}/bin \"dir with space/\"\nENV A=$ARCH B='$ARCH'\nRUN echo $ARCH\nAPP a local://${ARCH}/a https://x/$ARCH\nCMD echo ${ARCH}\n";
    let kubefile = parse(text, "Kubefile").unwrap();
    let vars = |n: &str| match n {
        "TAG" => Some(s("v1")),
        "ARCH" => Some(s("arm64")),
        _ => None,
    };
    let got: Vec<InstructionKind> = kubefile
        .instructions
        .iter()
        .map(|i| i.expanded("Kubefile", &vars).unwrap().kind)
        .collect();
    assert_eq!(
        got[1],
        InstructionKind::From {
            image: s("k8s:v1"),
            platform: None
        }
    );
    assert_eq!(
        got[2],
        InstructionKind::Copy {
            sources: vec![s("arm64/bin")],
            dest: s("dir with space/"),
            chown: Some(s("0:0")),
            chmod: None
        }
    );
    assert_eq!(
        got[3],
        InstructionKind::Env(pairs(&[("A", "arm64"), ("B", "$ARCH")]))
    );
    assert_eq!(
        got[4],
        InstructionKind::Run {
            command: Command::Shell(s("echo $ARCH"))
        }
    );
    assert_eq!(
        got[5],
        InstructionKind::App {
            name: s("a"),
            sources: vec![
                AppSource::Local(s("arm64/a")),
                AppSource::Remote(s("https://x/$ARCH"))
            ]
        }
    );
    assert_eq!(got[6], InstructionKind::Cmd(vec![s("echo ${ARCH}")]));
}

#[test]
fn expansion_error_names_file_line_and_instruction() {
    let kubefile = parse(
        "FROM scratch\n\nCOPY ${SRC:?\"pass --build-arg SRC=...\"} .\n",
        "Kubefile",
    )
    .unwrap();
    let e = kubefile.instructions[1]
        .expanded("Kubefile", &|_: &str| None)
        .unwrap_err();
    assert_eq!(e.line(), 3);
    assert_eq!(
        e.to_string(),
        "Kubefile:3: COPY: SRC: pass --build-arg SRC=..."
    );
}

#[test]
fn parser_and_expansion_never_panic_on_arbitrary_text() {
    const PIECES: &[&str] = &[
        "FROM ", "scratch", "COPY ", "RUN ", "CMD ", "CMDS ", "APP ", "LAUNCH ", "ENV ", "ARG ",
        "APPCMDS ", "APPENV ", "LABEL ", "[", "]", "\"", "'", "\\", "\n", " ", "\t", "#", "=", "$",
        "{", "}", ":-", ":+", ":?", "local://", "https://", "a", "é", "<<EOF", "--chown=", ",",
        "\r\n", "\u{feff}", "${", "x y",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5000 {
        let len = (next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        if let Ok(kubefile) = parse(&text, "Kubefile") {
            for instruction in &kubefile.instructions {
                let _ = instruction.expanded("Kubefile", &|_: &str| Some(s("v")));
            }
        }
        let _ = expand(&text, &|_: &str| None);
    }
}
