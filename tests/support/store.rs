//! A private image store and the real binaries run against it: `sealer` (and any `.run` file,
//! whose stub reads the same variables) with `SEALER_ROOT` in a temporary directory of the test's
//! own and `sealer-stub` as the stub and agent.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use super::testbed::{TestHost, Testbed};

pub const SEALER: &str = env!("CARGO_BIN_EXE_sealer");
pub const STUB: &str = env!("CARGO_BIN_EXE_sealer-stub");

/// The name of a [`Sealer`]'s own store inside its directory.
pub const STORE: &str = "store";

/// `program` with the image store at `root` and the real stub; stdin is empty and
/// `SOURCE_DATE_EPOCH` unset, so the caller's environment does not leak into what is built.
pub fn command(program: &Path, root: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("SEALER_ROOT", root)
        .env("SEALER_STUB", STUB)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null());
    c
}

/// A temporary directory holding a store (`store/`) and whatever else a test writes there.
pub struct Sealer {
    dir: tempfile::TempDir,
}

impl Default for Sealer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sealer {
    pub fn new() -> Sealer {
        Sealer {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `p` inside the directory.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The store's root (`SEALER_ROOT`).
    pub fn root(&self) -> PathBuf {
        self.path(STORE)
    }

    /// `program ARGS` with the store `root` (a name inside the directory).
    pub fn command_in(&self, program: &Path, args: &[&str], root: &str) -> Command {
        let mut c = command(program, &self.path(root));
        c.args(args);
        c
    }

    pub fn run_in(&self, program: &Path, args: &[&str], root: &str) -> Output {
        self.command_in(program, args, root).output().unwrap()
    }

    /// Runs `program ARGS` with the store `root`; its stdout, or a panic showing both streams.
    pub fn ok_in(&self, program: &Path, args: &[&str], root: &str) -> String {
        let out = self.run_in(program, args, root);
        assert!(
            out.status.success(),
            "{} {args:?} failed:\n{}\n{}",
            program.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `sealer` with this store, no arguments yet.
    pub fn command(&self) -> Command {
        command(Path::new(SEALER), &self.root())
    }

    /// `sealer ARGS` with this store.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(Path::new(SEALER), args, STORE)
    }

    /// `sealer ARGS` with this store; its stdout, or a panic showing both streams.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_in(Path::new(SEALER), args, STORE)
    }

    /// `sealer build -t TAG CONTEXT`, which must succeed.
    pub fn build(&self, tag: &str, context: &Path) {
        let out = self
            .command()
            .args(["build", "-t", tag])
            .arg(context)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sealer build {tag} failed:\n{}",
            both(&out)
        );
    }

    /// Builds `tag` from a fresh context holding `files` and the `kubefile`.
    pub fn build_from(&self, tag: &str, kubefile: &str, files: &[(&str, &[u8])]) {
        let ctx = tempfile::tempdir_in(self.dir()).unwrap();
        for (name, body) in files {
            write(&ctx.path().join(name), body);
        }
        write(&ctx.path().join("Kubefile"), kubefile.as_bytes());
        self.build(tag, ctx.path());
    }

    /// Builds the `fixtures/hello` image as `hello:v1`.
    pub fn hello(&self) {
        self.build("hello:v1", &fixture("hello"));
    }

    /// A directory `name` holding `files` (`(path, content)`), for a build context.
    pub fn context(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        for (file, content) in files {
            write(&dir.join(file), content);
        }
        dir
    }

    /// The file of blob `digest` in this store.
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.root()
            .join("oci/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The names of every blob file of the store `root` (a name inside the directory), sorted.
    pub fn blobs(&self, root: &str) -> Vec<String> {
        let dir = self.path(root).join("oci/blobs/sha256");
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// `sealer inspect IMAGE` as JSON.
    pub fn inspect(&self, image: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", image])).unwrap()
    }

    /// `sealer run IMAGE --known-hosts BED ARGS...`, its output piped, ready to spawn.
    pub fn run_command(&self, bed: &Testbed, image: &str, args: &[&str]) -> Command {
        let mut c = self.command();
        c.arg("run")
            .arg(image)
            .arg("--known-hosts")
            .arg(bed.known_hosts_path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `sealer run IMAGE ARGS...` onto the testbed's hosts.
    pub fn run_on(&self, bed: &Testbed, image: &str, args: &[&str]) -> Run {
        Run::from(self.run_command(bed, image, args).output().unwrap())
    }
}

/// What one `sealer run` did.
pub struct Run {
    pub ok: bool,
    /// Stdout, stderr and the exit status (so a failure shows a crash or kill, signal N).
    pub text: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            ok: out.status.success(),
            text: format!("{}[{}]\n", both(&out), out.status),
        }
    }

    /// The table row of `host` (the line starting with its address).
    pub fn row(&self, host: &TestHost) -> &str {
        let ip = host.ip.to_string();
        self.text
            .lines()
            .rev()
            .find(|l| l.split_whitespace().next() == Some(ip.as_str()))
            .unwrap_or_else(|| panic!("no table row for {ip} in:\n{}", self.text))
    }

    pub fn assert_ok(&self, what: &str) {
        assert!(self.ok, "{what}: sealer run failed:\n{}", self.text);
    }

    pub fn assert_failed(&self, what: &str) {
        assert!(
            !self.ok,
            "{what}: sealer run should have failed:\n{}",
            self.text
        );
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A process's stdout then stderr.
pub fn both(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// `fixtures/NAME` of this repository.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Writes `content` to `path`, making its parent directories.
pub fn write(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// Writes `text` to `dir/name`; that path.
pub fn write_in(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    write(&path, text.as_bytes());
    path
}

/// Runs the tool `cmd ARGS`, which must succeed; its stdout.
pub fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed for this test: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
