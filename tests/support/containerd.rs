//! Debian's containerd run inside a testbed host, as a cluster node would run it: its config at
//! `/etc/containerd/config.toml` (the file the agent's preflight reads), its root on a tmpfs
//! and its state and socket under [`DIR`], all inside the host, so it pulls through the host's
//! own network namespace. `ctr` runs inside the host too; the CRI `PullImage` call (what kubelet
//! does) is made from the test process through python3-grpcio on the socket as the host's root
//! filesystem shows it here. Nothing touches a containerd of the machine running the tests.
//!
//! Needs `containerd`, `ctr` and `python3-grpcio` (`scripts/ci-deps.sh`); the binaries are
//! copied into the host, which already has the libc they need.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::store::{both, text, write};
use super::testbed::{TestHost, Testbed};

/// Where containerd keeps its root (a tmpfs mounted inside the host), state, socket and log.
pub const DIR: &str = "/var/tmp/sealer-containerd";

/// containerd's config file on every host, and what `agent registry config-path` reads.
pub const CONFIG: &str = "/etc/containerd/config.toml";

/// The Python with grpcio (Debian's `python3-grpcio`), whatever `python3` is on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// A version 2 config: root, state and socket under [`DIR`], the CRI registry's `config_path`.
pub fn config_toml(config_path: &str) -> String {
    format!(
        "version = 2\nroot = \"{DIR}/root\"\nstate = \"{DIR}/state\"\n\
         [grpc]\n  address = \"{DIR}/containerd.sock\"\n\
         [ttrpc]\n  address = \"{DIR}/containerd.sock.ttrpc\"\n\
         [debug]\n  address = \"\"\n\
         [metrics]\n  address = \"\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{config_path}\"\n"
    )
}

/// Writes [`CONFIG`] on `host` with [`config_toml`].
pub fn write_config(bed: &Testbed, host: &TestHost, config_path: &str) {
    let file = bed.host_root(host).join(CONFIG.trim_start_matches('/'));
    write(&file, config_toml(config_path).as_bytes());
}

/// Quotes `word` for `/bin/sh`.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// containerd running inside one testbed host; killed on drop (the testbed's teardown would
/// end it too, with the host's PID namespace).
pub struct HostContainerd<'a> {
    bed: &'a Testbed,
    host: TestHost,
}

impl<'a> HostContainerd<'a> {
    /// Copies containerd and ctr into `host`, mounts a tmpfs for its root and starts it with
    /// [`CONFIG`] (written before, see [`write_config`]); returns once its socket answers.
    pub fn start(bed: &'a Testbed, host: &TestHost) -> HostContainerd<'a> {
        let bin = bed.host_root(host).join("usr/local/bin");
        for tool in ["containerd", "ctr"] {
            let from = Path::new("/usr/bin").join(tool);
            assert!(
                from.is_file(),
                "{} is missing (apt-get install -y containerd)",
                from.display()
            );
            fs::copy(&from, bin.join(tool)).unwrap();
        }
        let started = bed
            .exec(
                host,
                &format!(
                    "set -e; mkdir -p {DIR}/root {DIR}/state; \
                     mountpoint -q {DIR}/root || mount -t tmpfs -o size=512m,mode=0700 tmpfs {DIR}/root; \
                     setsid containerd --config {CONFIG} >{DIR}/containerd.log 2>&1 </dev/null & \
                     echo $! > {DIR}/containerd.pid"
                ),
            )
            .unwrap();
        assert!(
            started.status.success(),
            "starting containerd on {host}: {}",
            both(&started)
        );
        let running = HostContainerd {
            bed,
            host: host.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let version = running.ctr("default", &["version"]);
            if version.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start on {host}: {}\n{}",
                both(&version),
                running.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        running
    }

    pub fn host(&self) -> &TestHost {
        &self.host
    }

    /// The socket's path as seen from the test process (through the host's root filesystem).
    pub fn socket_here(&self) -> PathBuf {
        self.bed
            .host_root(&self.host)
            .join(DIR.trim_start_matches('/'))
            .join("containerd.sock")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(
            self.bed
                .host_root(&self.host)
                .join(DIR.trim_start_matches('/'))
                .join("containerd.log"),
        )
        .unwrap_or_default()
    }

    /// `ctr --address SOCK --namespace NAMESPACE ARGS...` run inside the host.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        let words: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
        self.bed
            .exec(
                &self.host,
                &format!(
                    "ctr --address {DIR}/containerd.sock --namespace {} {}",
                    sh_quote(namespace),
                    words.join(" ")
                ),
            )
            .unwrap()
    }

    /// The digest containerd records for image `name` in `namespace` (the manifest's).
    pub fn image_digest(&self, namespace: &str, name: &str) -> Option<String> {
        let out = self.ctr(namespace, &["images", "ls"]);
        assert!(out.status.success(), "ctr images ls: {}", both(&out));
        text(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
            .map(str::to_string)
    }

    /// The CRI `/runtime.v1.ImageService/PullImage` call kubelet makes, on containerd's socket
    /// (a hand-encoded request; python3-grpcio as the client): the image id answered, or the
    /// error's text.
    pub fn cri_pull(&self, image: &str) -> Result<String, String> {
        let script = r#"
import sys, grpc
sock, image = sys.argv[1], sys.argv[2]
def field(n, payload):
    out, size = bytes([n << 3 | 2]), len(payload)
    while size >= 0x80:
        out += bytes([size & 0x7f | 0x80]); size >>= 7
    return out + bytes([size]) + payload
request = field(1, field(1, image.encode()))
pull = grpc.insecure_channel("unix://" + sock).unary_unary("/runtime.v1.ImageService/PullImage")
try:
    answer = pull(request, timeout=120)
except grpc.RpcError as e:
    sys.stderr.write("%s: %s" % (e.code(), e.details()))
    sys.exit(3)
assert answer[0] == 0x0a, answer
sys.stdout.write(answer[2:2 + answer[1]].decode())
"#;
        let out = Command::new(PYTHON)
            .arg("-c")
            .arg(script)
            .arg(self.socket_here())
            .arg(image)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{PYTHON} (apt-get install -y python3-grpcio): {e}"));
        match out.status.code() {
            Some(0) => Ok(text(&out.stdout)),
            Some(3) => Err(text(&out.stderr)),
            _ => panic!(
                "the CRI PullImage call could not be made (apt-get install -y python3-grpcio): {}",
                both(&out)
            ),
        }
    }
}

impl Drop for HostContainerd<'_> {
    fn drop(&mut self) {
        let _ = self.bed.exec(
            &self.host,
            &format!("kill $(cat {DIR}/containerd.pid) 2>/dev/null; true"),
        );
    }
}
