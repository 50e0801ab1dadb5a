//! The CLI's self-description: `sealer completion` scripts judged by the real shells (bash
//! completes a word, zsh and fish parse the script, fish completes too), `sealer man` pages
//! rendered by man and groff without a warning and naming every command `sealer --help` lists,
//! `--version` on `sealer`, `sealer-stub` and a packed `.run` file, and the exit statuses
//! docs/cli.md promises.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::store::{both, text, Sealer, SEALER, STUB};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn sealer(args: &[&str]) -> Output {
    Command::new(SEALER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `sealer ARGS`' stdout, or a panic showing both streams.
fn sealer_ok(args: &[&str]) -> String {
    let out = sealer(args);
    assert!(
        out.status.success(),
        "sealer {args:?} failed:\n{}",
        both(&out)
    );
    text(&out.stdout)
}

/// `sh -c SCRIPT` with `sealer`'s directory first on PATH; (exit code, stdout, stderr).
fn shell(shell: &str, script: &str) -> (i32, String, String) {
    let bin = Path::new(SEALER).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(shell)
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The commands `sealer --help` lists (without `help`), the list the other outputs must match.
fn listed_commands() -> Vec<String> {
    let help = sealer_ok(&["--help"]);
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(
        commands.len() > 15 && commands.iter().any(|c| c == "run"),
        "could not read the command list of `sealer --help`:\n{help}"
    );
    commands
}

/// What bash's programmable completion offers for the words of `line` (the last one is being
/// completed), with the script `sealer completion bash` prints.
fn bash_completes(line: &str) -> Vec<String> {
    let script = format!(
        r#"source <(sealer completion bash) || exit 9
f=$(complete -p sealer | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$f" ] || {{ echo "no completion function registered for sealer" >&2; exit 9; }}
COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<<"$COMP_LINE"
case "$COMP_LINE" in *' ') COMP_WORDS+=('');; esac
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
"$f" sealer "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let (code, out, err) = shell("bash", &script);
    assert_eq!(code, 0, "completing `{line}` in bash failed:\n{out}\n{err}");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_bash_completion_script_parses_and_completes_commands_and_options() {
    let script = sealer_ok(&["completion", "bash"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &script).unwrap();
    let (code, _, err) = shell("bash", &format!("bash -n '{}'", file.path().display()));
    assert_eq!(code, 0, "bash -n rejects the completion script: {err}");

    assert_eq!(bash_completes("sealer ru"), ["run"]);
    assert_eq!(bash_completes("sealer pack --le"), ["--level"]);
    let all = bash_completes("sealer ");
    for command in listed_commands() {
        assert!(
            all.contains(&command),
            "`sealer <TAB>` does not offer {command}: {all:?}"
        );
    }
    // The agent is hidden: it is not for operators and must not be offered.
    assert!(bash_completes("sealer ag").is_empty());
    assert!(!all.iter().any(|c| c == "agent"), "{all:?}");
}

#[test]
fn the_zsh_and_fish_scripts_parse_and_fish_completes_a_command() {
    for (sh, check) in [("zsh", "zsh -n"), ("fish", "fish -n")] {
        let script = sealer_ok(&["completion", sh]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &script).unwrap();
        let (code, _, err) = shell("sh", &format!("{check} '{}'", file.path().display()));
        assert_eq!(code, 0, "{check} rejects the completion script: {err}");
        for command in listed_commands() {
            assert!(script.contains(&command), "the {sh} script lacks {command}");
        }
    }
    let (code, out, err) = shell(
        "fish",
        "sealer completion fish | source; complete -C 'sealer ru'",
    );
    assert_eq!(code, 0, "{err}");
    let offered: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(offered, ["run"], "{out}");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = sealer(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(text(&out.stderr).contains("bash"), "{}", both(&out));
}

/// `sealer man ARGS | man -l -`, which must succeed quietly; the page as text.
fn man_page(args: &[&str]) -> String {
    let words = args.join(" ");
    let (code, out, err) = shell(
        "bash",
        &format!("set -o pipefail; sealer man {words} | MANWIDTH=200 man -l -"),
    );
    assert_eq!(code, 0, "`sealer man {words} | man -l -` failed:\n{err}");
    assert!(
        err.is_empty(),
        "man warns about `sealer man {words}`:\n{err}"
    );
    let (code, _, err) = shell(
        "bash",
        &format!("set -o pipefail; sealer man {words} | groff -man -Tutf8 -ww -z"),
    );
    assert_eq!(code, 0, "groff fails on `sealer man {words}`:\n{err}");
    assert!(
        err.is_empty(),
        "groff warns about `sealer man {words}`:\n{err}"
    );
    out
}

#[test]
fn the_man_page_renders_and_names_every_command_and_exit_status() {
    let page = man_page(&[]);
    assert!(page.contains("SYNOPSIS"), "{page}");
    for command in listed_commands() {
        assert!(
            page.contains(&format!("sealer-{command}(1)")),
            "sealer(1) does not name {command}:\n{page}"
        );
    }
    assert!(!page.contains("sealer-agent"), "{page}");
    assert!(!page.contains("sealer-help"), "{page}");
    let status = page
        .split("EXIT STATUS")
        .nth(1)
        .unwrap_or_else(|| panic!("no EXIT STATUS section:\n{page}"));
    for code in ["0", "1", "2"] {
        assert!(
            status.lines().any(|l| l.trim_start().starts_with(code)),
            "exit status {code} is not described:\n{status}"
        );
    }
    assert!(page.contains(VERSION), "{page}");
}

#[test]
fn every_command_has_a_page_with_its_own_options() {
    for command in listed_commands() {
        let page = man_page(&[&command]);
        assert!(
            page.contains(&format!("sealer-{command}")) && page.contains("--help"),
            "the page of {command}:\n{page}"
        );
    }
    let pack = man_page(&["pack"]);
    assert!(pack.contains("--level"), "{pack}");
    let generate = man_page(&["key", "generate"]);
    assert!(generate.contains("sealer-key-generate"), "{generate}");
}

#[test]
fn a_man_page_for_a_command_that_does_not_exist_is_refused_with_the_way_out() {
    for args in [
        &["man", "frobnicate"][..],
        &["man", "agent"],
        &["man", "key", "x"],
    ] {
        let out = sealer(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", both(&out));
        let err = text(&out.stderr);
        assert!(
            err.contains("has no command") && err.contains("--help"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a page anyway");
    }
}

#[test]
fn sealer_and_the_stub_print_their_version() {
    assert_eq!(
        sealer_ok(&["--version"]).trim(),
        format!("sealer {VERSION}")
    );
    let out = Command::new(STUB).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("app.run {VERSION} (sealer installer)")
    );
}

#[test]
fn a_packed_run_file_prints_its_version() {
    let env = Sealer::new();
    env.hello();
    let run = env.path("hello.run");
    env.ok(&["pack", "hello:v1", "-o", run.to_str().unwrap()]);
    for flag in ["--version", "-V"] {
        let out = Command::new(&run).arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}: {}", both(&out));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("app.run {VERSION} (sealer installer)")
        );
    }
}

#[test]
fn a_usage_error_exits_2_and_a_failure_exits_1() {
    let out = sealer(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let out = sealer(&["pack", "--level", "nine", "x:1", "-o", "/nonexistent/x.run"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let env = Sealer::new();
    let out = env.run(&["inspect", "no-such-image:v1"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(text(&out.stderr).starts_with("error: "), "{}", both(&out));
}

#[test]
fn docs_cli_md_explains_every_exit_status_the_agent_defines() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    for (name, code) in [
        ("EXIT_DISK_FULL", sealer::agent::EXIT_DISK_FULL),
        ("EXIT_TIMED_OUT", sealer::agent::EXIT_TIMED_OUT),
        ("EXIT_AGENT_UNSAFE", sealer::deploy::EXIT_AGENT_UNSAFE),
    ] {
        assert!(
            doc.contains(&format!("\n| {code} |")),
            "docs/cli.md has no row for {name} ({code})"
        );
    }
    for code in [0, 1, 2] {
        assert!(doc.contains(&format!("\n| {code} |")), "no row for {code}");
    }
}

#[test]
fn quiet_says_only_results_and_quiet_with_verbose_is_a_usage_error() {
    let store = Sealer::new();
    let context = store.context(
        "quiet",
        &[("Kubefile", b"FROM scratch\nCOPY a a\n"), ("a", b"a\n")],
    );
    let out = store.run(&["-q", "build", "-t", "quiet:v1", context.to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    let said = text(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(lines[0].starts_with("Built quiet:v1 ("), "{said}");
    assert!(lines[1].starts_with("sha256:"), "{said}");
    assert_eq!(text(&out.stderr), "", "{}", both(&out));

    let run = store.path("quiet.run");
    let out = store.run(&["-q", "pack", "quiet:v1", "-o", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        text(&out.stdout).starts_with("Packed quiet:v1 into"),
        "{}",
        both(&out)
    );
    assert_eq!(
        text(&out.stderr),
        "",
        "no progress with -q:\n{}",
        both(&out)
    );
    // Without -q the same pack says how it went on stderr.
    let out = store.run(&["pack", "quiet:v1", "-o", run.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("packing: done in "),
        "{}",
        both(&out)
    );

    // After the command as well as before it.
    let out = store.run_in(&run, &["verify", "-q"], "store");
    assert!(out.status.success(), "{}", both(&out));
    assert!(text(&out.stdout).contains("are intact"), "{}", both(&out));
    assert_eq!(text(&out.stderr), "", "{}", both(&out));
    let out = store.run_in(&run, &["verify"], "store");
    assert!(
        text(&out.stderr).contains("verifying: done in "),
        "{}",
        both(&out)
    );

    // `images -q` keeps its meaning (IDs only), before or after the command.
    let ids = store.ok(&["images", "-q"]);
    assert!(ids.trim().starts_with("sha256:"), "{ids}");
    assert_eq!(store.ok(&["-q", "images"]), ids);

    for (program, verb) in [(Path::new(SEALER), "images"), (run.as_path(), "inspect")] {
        let out = store.run_in(program, &["-q", "-v", verb], "store");
        assert_eq!(out.status.code(), Some(2), "{}", both(&out));
        assert!(
            text(&out.stderr).contains("cannot be used with"),
            "{}",
            both(&out)
        );
    }
}

#[test]
fn build_and_pack_print_their_result_as_json_on_stdout_alone() {
    let store = Sealer::new();
    let context = store.context(
        "json",
        &[
            (
                "Kubefile",
                b"FROM scratch\nCOPY a a\nRUN echo said-by-run\n",
            ),
            ("a", b"a\n"),
        ],
    );
    let out = store.run(&[
        "build",
        "--json",
        "-t",
        "json:v1",
        context.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", both(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", both(&out)));
    let digest = store.inspect("json:v1")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(built["image"], "json:v1");
    assert_eq!(built["digest"], digest.as_str());
    assert_eq!(built["steps"], 3);
    assert_eq!(built["layers"], 2);
    assert_eq!(built["cached_steps"], 0);
    // The steps and what RUN printed are on stderr.
    let steps = text(&out.stderr);
    assert!(steps.contains("STEP 3/3: RUN echo said-by-run"), "{steps}");
    assert!(steps.contains("said-by-run\n"), "{steps}");

    let run = store.path("json.run");
    let out = store.run(&[
        "pack",
        "json:v1",
        "-o",
        run.to_str().unwrap(),
        "--level",
        "19",
        "--json",
    ]);
    assert!(out.status.success(), "{}", both(&out));
    let packed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", both(&out)));
    assert_eq!(packed["image"], "json:v1");
    assert_eq!(packed["image_digest"], digest.as_str());
    assert_eq!(packed["files"][0], run.to_str().unwrap());
    assert_eq!(packed["size"], std::fs::metadata(&run).unwrap().len());
    assert_eq!(packed["layers"], 2);
    assert_eq!(packed["copied_layers"], 0);
    assert!(packed["signed_by"].is_null());
    // The digest it announces is the one the package's own inspect names, and load stores.
    let inspected: serde_json::Value =
        serde_json::from_str(&store.ok_in(&run, &["inspect", "--json"], "store")).unwrap();
    assert_eq!(packed["payload_id"], inspected["payload_id"]);
    assert_eq!(packed["load_digest"], inspected["load_digest"]);
    assert_ne!(packed["load_digest"], packed["image_digest"]);
    let loaded = store.ok_in(&run, &["load"], "other-store");
    let load_digest = packed["load_digest"].as_str().unwrap();
    assert!(loaded.contains(&format!("({load_digest})")), "{loaded}");
}

#[test]
fn an_install_with_q_prints_the_table_only_and_with_v_how_long_each_stage_took() {
    // `-q` before the command, `-v` after it: both are global flags.
    let store = Sealer::new();
    let context = store.context(
        "stages",
        &[
            (
                "Kubefile",
                b"FROM scratch\nCOPY a a\nCMD echo from-the-cmd\n",
            ),
            ("a", b"a\n"),
        ],
    );
    store.build("stages:v1", &context);
    let data = store.path("data");
    let install = |args: &[&str]| {
        let out = store.run(args);
        assert!(out.status.success(), "{}", both(&out));
        out
    };
    let out = install(&[
        "-q",
        "run",
        "stages:v1",
        "--local",
        "--data-root",
        data.join("q").to_str().unwrap(),
    ]);
    let said = text(&out.stdout);
    assert!(!said.contains("[127.0.0.1] preflight"), "{said}");
    assert!(!said.contains("from-the-cmd"), "{said}");
    assert!(!said.starts_with("Installing"), "{said}");
    assert!(
        said.contains("HOST ") && said.contains("installed ("),
        "{said}"
    );
    assert_eq!(text(&out.stderr), "", "{}", both(&out));
    // The log keeps every line the quiet run did not print.
    let log = said
        .lines()
        .find_map(|l| l.strip_prefix("log: "))
        .unwrap_or_else(|| panic!("no log line:\n{said}"));
    let logged = std::fs::read_to_string(log).unwrap();
    assert!(logged.contains("[127.0.0.1] preflight"), "{logged}");
    assert!(logged.contains("[127.0.0.1] from-the-cmd"), "{logged}");

    let out = install(&[
        "run",
        "-v",
        "stages:v1",
        "--local",
        "--data-root",
        data.join("v").to_str().unwrap(),
    ]);
    let said = text(&out.stdout);
    for stage in ["preflight", "distribute", "install"] {
        let timed = said.lines().any(|l| {
            l.strip_prefix(&format!("[127.0.0.1] {stage}: "))
                .and_then(|t| t.strip_suffix(" s"))
                .is_some_and(|t| t.parse::<f64>().is_ok())
        });
        assert!(timed, "no time for {stage}:\n{said}");
    }
    assert!(said.contains("[127.0.0.1] from-the-cmd"), "{said}");
}
