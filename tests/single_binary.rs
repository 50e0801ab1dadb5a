//! One file to install: a `sealer` executable alone in a directory (no `sealer-stub` beside it,
//! no `SEALER_STUB`) builds an image, packs it with itself as the package's installer, and
//! installs it over SSH onto a testbed host with itself as the uploaded agent, both as
//! `sealer run` and as `./app.run install`. A dynamically linked executable is never taken as
//! the installer.
//!
//! Needs root and the testbed tools (`scripts/ci-deps.sh`) for the SSH part; skipped elsewhere
//! unless `CI` or `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sealer::deploy::payload::ExecutableHead;
use support::store::{both, fixture, sha256, text, SEALER, STUB};
use support::testbed::{TestHost, Testbed};

const DATA_ROOT: &str = "/var/lib/sealer-single";

/// `program ARGS` with the store at `root` and nothing telling it where a stub is.
fn alone(program: &Path, root: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("SEALER_ROOT", root)
        .env_remove("SEALER_STUB")
        .env_remove("SEALER_RUN_FILE")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(program: &Path, root: &Path, args: &[&str]) -> String {
    let out = alone(program, root, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}",
        program.display(),
        out.status,
        both(&out)
    );
    text(&out.stdout)
}

/// The agents the installs left on `host` under the data root.
fn agents_on(bed: &Testbed, host: &TestHost) -> Vec<PathBuf> {
    let dir = bed
        .host_root(host)
        .join(DATA_ROOT.trim_start_matches('/'))
        .join(".agent");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("sealer-agent-"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn a_static_sealer_is_its_own_installer_and_a_dynamic_program_is_not() {
    let stub = ExecutableHead::read(Path::new(STUB)).unwrap();
    assert_eq!(
        stub,
        ExecutableHead {
            carries_payload: false,
            dynamic: false
        }
    );
    let me = ExecutableHead::read(Path::new(SEALER)).unwrap();
    assert!(!me.carries_payload && !me.dynamic, "{me:?}");
    // Debian's coreutils are dynamically linked: never a stub for a bare host.
    let ls = ExecutableHead::read(Path::new("/bin/ls")).unwrap();
    assert!(ls.dynamic && !ls.carries_payload, "{ls:?}");
    // Bytes after the ELF image: a package.
    let mut packaged = std::fs::read(STUB).unwrap();
    let len = packaged.len();
    packaged.extend_from_slice(&[0u8; 4096]);
    let head = ExecutableHead::from_bytes(&packaged[..64 << 10], packaged.len() as u64);
    assert!(
        head.carries_payload && !head.dynamic,
        "{head:?} of {len} bytes"
    );
}

#[test]
fn sealer_alone_builds_packs_and_installs_over_ssh_with_itself_as_installer_and_agent() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let sealer = bin.join("sealer");
    support::copy_program(SEALER.as_ref(), &sealer);
    let root = dir.path().join("store");
    let package = dir.path().join("hello.run");

    ok(
        &sealer,
        &root,
        &[
            "build",
            "-t",
            "hello:v1",
            fixture("hello").to_str().unwrap(),
        ],
    );
    ok(
        &sealer,
        &root,
        &["pack", "hello:v1", "-o", package.to_str().unwrap()],
    );
    // The package starts with this sealer: its ELF image, byte for byte apart from the ident
    // bytes where the `sh app.run` notice is announced (bytes 7..16).
    let head = std::fs::read(&sealer).unwrap();
    let packed = std::fs::read(&package).unwrap();
    assert!(packed.len() > head.len());
    assert_eq!(packed[..7], head[..7]);
    assert_eq!(
        packed[16..head.len()],
        head[16..],
        "the package's head is not this sealer"
    );

    // The package is a package, not sealer: its own version line, its own commands.
    let version = ok(&package, &root, &["--version"]);
    assert_eq!(version.trim(), "app.run 0.1.0 (sealer installer)");
    let verified = ok(&package, &root, &["verify"]);
    assert!(verified.contains("are intact"), "{verified}");
    let summary = ok(&package, &root, &[]);
    assert!(
        summary.contains("sealer installer for image hello:v1"),
        "{summary}"
    );
    // And sealer stays sealer.
    assert_eq!(ok(&sealer, &root, &["--version"]).trim(), "sealer 0.1.0");

    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let key = bed.key_path().to_str().unwrap().to_string();
    let known_hosts = bed.known_hosts_path().to_str().unwrap().to_string();
    let (first, second) = (&bed.hosts()[0], &bed.hosts()[1]);
    let host_flags = |host: &TestHost| {
        vec![
            "-m".to_string(),
            host.ip.to_string(),
            "--pk".to_string(),
            key.clone(),
            "--known-hosts".to_string(),
            known_hosts.clone(),
            "--data-root".to_string(),
            DATA_ROOT.to_string(),
        ]
    };

    // `sealer run` from the store: the agent uploaded is this sealer.
    let mut args = vec!["run".to_string(), "hello:v1".to_string()];
    args.extend(host_flags(first));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = alone(&sealer, &root, &args);
    let shown = both(&out);
    assert!(out.status.success(), "sealer run failed:\n{shown}");
    assert!(shown.contains("installed"), "{shown}");
    let banner = bed
        .exec(first, &format!("cat {DATA_ROOT}/my-cluster/app/banner"))
        .unwrap();
    assert_eq!(text(&banner.stdout).trim(), "hello from sealer v1.0");
    let agents = agents_on(&bed, first);
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(
        sha256(&std::fs::read(&agents[0]).unwrap()),
        sha256(&head),
        "the agent on {first} is not this sealer"
    );

    // `./hello.run install`: the package's head is the agent.
    let mut args = vec!["install".to_string()];
    args.extend(host_flags(second));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = alone(&package, &root, &args);
    let shown = both(&out);
    assert!(out.status.success(), "hello.run install failed:\n{shown}");
    let banner = bed
        .exec(second, &format!("cat {DATA_ROOT}/my-cluster/app/banner"))
        .unwrap();
    assert_eq!(text(&banner.stdout).trim(), "hello from sealer v1.0");
    let agents = agents_on(&bed, second);
    assert_eq!(agents.len(), 1, "{agents:?}");
    let agent = std::fs::read(&agents[0]).unwrap();
    assert_eq!(
        agent.len(),
        head.len(),
        "the agent on {second} is not the package's head"
    );
    assert_eq!(agent[16..], head[16..]);
}
