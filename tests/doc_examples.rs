//! The documentation as a test: every doc under docs/ is linked from README.md, and every code
//! block marked ```` ```sh runnable ```` in README.md and docs/*.md runs as written. A document's
//! runnable blocks run in order in one `bash -eu` session, in an empty working directory, with
//! only a copy of `sealer` on the `PATH` (no stub beside it), a store of its own, `HOME` holding
//! the testbed's key as `~/.ssh/id_ed25519` and its `known_hosts`, and `MASTER` and `NODE` set
//! to two testbed hosts: what the page's own set-up block asks a reader to provide.
//!
//! The SSH part needs root and the testbed tools (`scripts/ci-deps.sh`); skipped elsewhere
//! unless `CI` or `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::store::{both, text, SEALER};
use support::testbed::Testbed;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, sorted.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.insert(0, repo().join("README.md"));
    docs
}

/// The runnable blocks of a Markdown text: (line of the opening fence, the block's text).
fn runnable_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, bool, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None if trimmed.starts_with("```") => {
                let info: Vec<&str> = trimmed[3..].split_whitespace().collect();
                let runnable = info.first() == Some(&"sh") && info.contains(&"runnable");
                open = Some((i + 1, runnable, String::new()));
            }
            Some((start, runnable, body)) if trimmed.starts_with("```") => {
                if *runnable {
                    blocks.push((*start, std::mem::take(body)));
                }
                open = None;
            }
            Some((_, _, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    blocks
}

#[test]
fn the_block_parser_finds_only_blocks_marked_runnable() {
    let text = "a\n```sh\nnot me\n```\n```sh runnable\necho one\necho two\n```\n```text runnable\nnor me\n```\n  ```sh runnable\nindented\n  ```\n";
    assert_eq!(
        runnable_blocks(text),
        vec![
            (5, "echo one\necho two\n".to_string()),
            (12, "indented\n".to_string()),
        ]
    );
}

#[test]
fn every_doc_is_linked_from_the_readme() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let missing: Vec<String> = documents()[1..]
        .iter()
        .map(|p| format!("docs/{}", p.file_name().unwrap().to_string_lossy()))
        .filter(|name| !readme.contains(&format!("]({name})")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md links no [..]({}) (add each to its Documentation list)",
        missing.join("), (")
    );
}

#[test]
fn every_runnable_block_of_the_docs_runs_as_written() {
    let pages: Vec<(PathBuf, Vec<(usize, String)>)> = documents()
        .into_iter()
        .map(|p| {
            let blocks = runnable_blocks(&std::fs::read_to_string(&p).unwrap());
            (p, blocks)
        })
        .filter(|(_, blocks)| !blocks.is_empty())
        .collect();
    let names: Vec<String> = pages
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The walk-through is the page that must never rot; a rename must not silently drop it.
    assert!(
        names.contains(&"getting-started.md".to_string()),
        "{names:?}"
    );

    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let (master, node) = (&bed.hosts()[0], &bed.hosts()[1]);
    for (page, blocks) in &pages {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let ssh = dir.path().join("home/.ssh");
        let work = dir.path().join("work");
        for d in [&bin, &ssh, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        support::copy_program(SEALER.as_ref(), &bin.join("sealer"));
        std::fs::copy(bed.key_path(), ssh.join("id_ed25519")).unwrap();
        std::fs::copy(bed.known_hosts_path(), ssh.join("known_hosts")).unwrap();
        let mut script = String::new();
        for (line, block) in blocks {
            script.push_str(&format!(
                "echo '### {}:{line}' >&2\n{block}",
                page.display()
            ));
        }
        let out = Command::new("bash")
            .args(["-eu", "-o", "pipefail", "-c", &script])
            .current_dir(&work)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            )
            .env("HOME", dir.path().join("home"))
            .env("SEALER_ROOT", dir.path().join("store"))
            .env("MASTER", master.ip.to_string())
            .env("NODE", node.ip.to_string())
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let shown = both(&out);
        assert!(
            out.status.success(),
            "the runnable blocks of {} failed ({}):\n{shown}",
            page.display(),
            out.status
        );
        if page.ends_with("getting-started.md") {
            // What the walk-through promises: the CMD ran on master0 only, the rerun sent
            // nothing, and no stub but sealer itself was needed.
            let on = |host, cmd: &str| text(&bed.exec(host, cmd).unwrap().stdout);
            assert_eq!(
                on(master, "cat /opt/hello/message.txt").trim(),
                "hello from my first cluster image",
                "{shown}"
            );
            assert!(
                !on(node, "test -e /opt/hello && echo present").contains("present"),
                "the CMD ran on the node:\n{shown}"
            );
            assert!(shown.contains("up to date"), "{shown}");
            assert!(!bin.join("sealer-stub").exists());
        }
    }
}
