//! How the deploy engine talks to a host: run a command, optionally feeding it a stream on stdin.
//!
//! [`Remote`] is implemented over SSH (`ssh` module) and for this machine ([`LocalHost`]), so
//! the engine has one code path for both. This module must not know what the commands mean.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::clusterfile::Host;
use crate::ssh::{
    Auth, HostKeyPolicy, KeptOutput, Session, SshTarget, Timeouts, OUTPUT_HEAD, OUTPUT_TAIL,
};
pub use crate::ssh::{ExecOutput, SshError as RemoteError};

/// A host the engine can run commands on.
pub trait Remote: Send {
    /// Run `command` with `sh -c` semantics (as root: transports for non-root users add sudo),
    /// feeding `stdin` to it when given, and wait for it to finish.
    fn exec(
        &mut self,
        command: &str,
        stdin: Option<&mut dyn Read>,
    ) -> Result<ExecOutput, RemoteError>;

    /// True for this machine (the engine then reads payload bytes directly instead of sending them).
    fn is_local(&self) -> bool {
        false
    }

    /// Bytes this connection carried through a jump host, both ways (0 when direct).
    fn relayed_bytes(&self) -> u64 {
        0
    }
}

/// This machine, through `sh -c`.
pub struct LocalHost;

impl Remote for LocalHost {
    fn exec(
        &mut self,
        command: &str,
        stdin: Option<&mut dyn Read>,
    ) -> Result<ExecOutput, RemoteError> {
        let fail = |e: io::Error| RemoteError::Local {
            host: "localhost".into(),
            what: "running a local command".into(),
            source: e,
        };
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(fail)?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let out_reader = std::thread::spawn(move || keep_output(out));
        let err_reader = std::thread::spawn(move || keep_output(err));
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A command that exits early closes its stdin; that is its business, not an error here.
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = input.read(&mut buf).map_err(fail)?;
                if n == 0 || pipe.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        let status = child.wait().map_err(fail)?;
        Ok(ExecOutput {
            status: status.code().unwrap_or(-1),
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        })
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// What a local command printed on one pipe, within the same bound as over SSH.
fn keep_output(pipe: Option<impl Read>) -> Vec<u8> {
    let mut kept = KeptOutput::new(OUTPUT_HEAD, OUTPUT_TAIL);
    if let Some(mut pipe) = pipe {
        let mut buf = vec![0u8; 256 << 10];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.push(&buf[..n]);
        }
    }
    kept.into_bytes()
}

/// A host reached over SSH.
pub struct SshHost {
    session: Session,
}

impl Remote for SshHost {
    fn exec(
        &mut self,
        command: &str,
        stdin: Option<&mut dyn Read>,
    ) -> Result<ExecOutput, RemoteError> {
        self.session.exec(command, &[], stdin)
    }

    fn relayed_bytes(&self) -> u64 {
        self.session.relayed_bytes()
    }
}

/// How to reach a Clusterfile host over SSH: its pinned key if it has one, else `known_hosts`;
/// key auth when a key is given, else password, else the agent. Through its bastion, when it
/// has one: the bastion's own auth, its key checked against the same `known_hosts`.
pub fn ssh_target(host: &Host, known_hosts: &Path) -> SshTarget {
    let ssh = &host.ssh;
    let host_key_policy = match &host.host_key {
        Some(pin) => HostKeyPolicy::Pinned(pin.clone()),
        None => HostKeyPolicy::KnownHosts(known_hosts.to_path_buf()),
    };
    let jump = ssh.bastion.as_ref().map(|b| {
        Box::new(SshTarget {
            ip: b.address.ip,
            port: b.port(),
            name: b.address.name.clone(),
            user: b.user.clone(),
            auth: auth_of(&b.private_key, &b.password, &b.key_passphrase),
            host_key_policy: HostKeyPolicy::KnownHosts(known_hosts.to_path_buf()),
            jump: None,
        })
    });
    SshTarget {
        ip: host.ip,
        port: ssh.port,
        name: host.name.clone(),
        user: ssh.user.clone(),
        auth: auth_of(&ssh.private_key, &ssh.password, &ssh.key_passphrase),
        host_key_policy,
        jump,
    }
}

/// A key when one is given, else the password, else the agent.
fn auth_of(
    key: &Option<PathBuf>,
    password: &Option<crate::secret::Secret>,
    passphrase: &Option<crate::secret::Secret>,
) -> Auth {
    match (key, password) {
        (Some(path), _) => Auth::Key {
            path: path.clone(),
            passphrase: passphrase.clone(),
        },
        (None, Some(password)) => Auth::Password(password.clone()),
        (None, None) => Auth::Agent { socket: None },
    }
}

/// Connects to hosts over SSH, checking host keys against `known_hosts` (or a host's pin).
pub fn ssh_connector(known_hosts: PathBuf, timeouts: Timeouts) -> Arc<super::Connector> {
    Arc::new(move |host: &Host| {
        let target = ssh_target(host, &known_hosts);
        let session = Session::connect(&target, timeouts)?;
        Ok(Box::new(SshHost { session }) as Box<dyn Remote>)
    })
}

/// Runs everything on this machine.
pub fn local_connector() -> Arc<super::Connector> {
    Arc::new(|_: &Host| Ok(Box::new(LocalHost) as Box<dyn Remote>))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusterfile::Clusterfile;
    use crate::secret::Secret;

    #[test]
    fn ssh_target_prefers_key_then_password_then_agent_and_uses_pins() {
        let text = r#"
apiVersion: sealer.io/v2
kind: Cluster
spec:
  ssh: {passwd: pw}
  hostKeys: {10.0.0.3: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"}
  hosts:
    - {ips: [10.0.0.2], roles: [master], ssh: {pk: /k, pkPasswd: pp, port: 2222, user: ops}}
    - {ips: [10.0.0.3], roles: [node]}
"#;
        let cluster = Clusterfile::parse(text).unwrap().into_cluster().unwrap();
        let kh = Path::new("/kh");
        let keyed = ssh_target(&cluster.hosts[0], kh);
        assert_eq!(
            keyed.auth,
            Auth::Key {
                path: "/k".into(),
                passphrase: Some(Secret::new("pp"))
            }
        );
        assert_eq!(keyed.host_key_policy, HostKeyPolicy::KnownHosts(kh.into()));
        assert_eq!(keyed.display_name(), "ops@10.0.0.2:2222");
        let pw = ssh_target(&cluster.hosts[1], kh);
        assert_eq!(pw.auth, Auth::Password(Secret::new("pw")));
        assert!(matches!(pw.host_key_policy, HostKeyPolicy::Pinned(_)));
        assert!(
            !format!("{keyed:?}{pw:?}").contains("pp\"") && !format!("{pw:?}").contains("\"pw\"")
        );
        let mut bare = cluster.hosts[1].clone();
        bare.ssh.password = None;
        assert_eq!(ssh_target(&bare, kh).auth, Auth::Agent { socket: None });
    }

    #[test]
    fn bastions_per_cluster_and_per_host_ports_and_names_reach_the_ssh_target() {
        let text = r#"
apiVersion: sealer.io/v2
kind: Cluster
spec:
  ssh: {passwd: pw, bastion: {address: "jump@10.0.0.1", passwd: jpw}}
  hosts:
    - {ips: ["10.0.0.2:2222", "[fd00::9]:22"], roles: [master]}
    - {ips: [localhost], roles: [node], ssh: {port: 2200, bastion: {address: "[fd00::1]", port: 2022, user: ops, pk: /jk}}}
    - {ips: [10.0.0.4], roles: [node], ssh: {port: 2201}}
"#;
        let err = Clusterfile::parse(text)
            .and_then(|c| c.into_cluster())
            .unwrap_err();
        assert!(err.to_string().contains("same address family"), "{err}");
        let text = text.replace(", \"[fd00::9]:22\"", "");
        let cluster = Clusterfile::parse(&text).unwrap().into_cluster().unwrap();
        let kh = Path::new("/kh");
        let first = ssh_target(&cluster.hosts[0], kh);
        assert_eq!(first.display_name(), "root@10.0.0.2:2222");
        let jump = first.jump.expect("spec.ssh.bastion applies to every host");
        assert_eq!(jump.display_name(), "jump@10.0.0.1");
        assert_eq!(jump.auth, Auth::Password(Secret::new("jpw")));
        assert_eq!(jump.host_key_policy, HostKeyPolicy::KnownHosts(kh.into()));
        let named = ssh_target(&cluster.hosts[1], kh);
        assert_eq!(named.name.as_deref(), Some("localhost"));
        assert!(
            named.display_name().starts_with("root@localhost ("),
            "{}",
            named.display_name()
        );
        let own = named.jump.expect("the host's own bastion");
        assert_eq!(own.display_name(), "ops@[fd00::1]:2022");
        assert!(matches!(own.auth, Auth::Key { .. }));
        assert_eq!(ssh_target(&cluster.hosts[2], kh).port, 2201);
        let bad = text.replace("jump@10.0.0.1", "jump@10.0.0.1:0");
        let err = Clusterfile::parse(&bad)
            .and_then(|c| c.into_cluster())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.ssh.bastion.address") && err.contains("not a port"),
            "{err}"
        );
    }

    #[test]
    fn a_local_command_printing_64_mib_is_kept_bounded() {
        let out = LocalHost
            .exec("head -c 64M /dev/zero; echo; echo end", None)
            .unwrap();
        assert!(out.success());
        assert!(
            out.stdout.len() < OUTPUT_HEAD + OUTPUT_TAIL + 100,
            "{} bytes kept",
            out.stdout.len()
        );
        assert!(out.stdout.ends_with(b"\nend\n"));
    }
}
