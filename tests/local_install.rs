//! A local install of a package (`./app.run install --local`) does the work of an extract and
//! little more: the package is read once to check it and once to unpack it, never hashed
//! whole by the preflight probe (on this machine the agent is the program itself, and a `.run`
//! file is that program followed by its whole payload).

mod support;

use std::fs;

use support::noise;
use support::store::{Sealer, SEALER};

#[test]
fn a_local_install_of_a_package_does_not_hash_the_package_to_find_its_agent() {
    let env = Sealer::new();
    let payload = noise::bytes(4 << 20, 16);
    env.build_from(
        "local:v1",
        "FROM scratch\nCOPY payload.bin /opt/payload.bin\n",
        &[("payload.bin", &payload)],
    );
    let run = env.path("local.run");
    env.ok(&["pack", "local:v1", "-o", run.to_str().unwrap()]);

    // `sha256sum` first on PATH records every call, then does what the real one does.
    let bin = env.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = env.path("sha256sum.calls");
    let wrapper = bin.join("sha256sum");
    support::write_program(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"sha256sum $*\" >> '{}'\nexec /usr/bin/sha256sum \"$@\"\n",
            calls.display()
        )
        .as_bytes(),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // The wrapper is what the probe's shell finds.
    let probe = std::process::Command::new("sh")
        .args(["-c", "echo x | sha256sum >/dev/null"])
        .env("PATH", &path)
        .status()
        .unwrap();
    assert!(probe.success());
    assert!(calls.exists(), "the sha256sum wrapper is not found first");
    fs::remove_file(&calls).unwrap();

    let data = env.path("data");
    let out = env
        .command_in(
            &run,
            &["install", "--local", "--data-root", data.to_str().unwrap()],
            "unused",
        )
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install --local failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = fs::read(data.join("my-cluster/rootfs/opt/payload.bin")).unwrap();
    assert!(installed == payload, "the installed file differs");
    let hashed = fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        hashed.is_empty(),
        "a local install ran sha256sum (the package is read once more):\n{hashed}"
    );

    // `sealer run --local` from the store: the same probe, the same answer.
    let data = env.path("data-run");
    let out = env
        .command_in(
            std::path::Path::new(SEALER),
            &[
                "run",
                "local:v1",
                "--local",
                "--data-root",
                data.to_str().unwrap(),
            ],
            support::store::STORE,
        )
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sealer run --local failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("my-cluster/rootfs/opt/payload.bin").exists());
    let hashed = fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        hashed.is_empty(),
        "sealer run --local ran sha256sum:\n{hashed}"
    );
}
