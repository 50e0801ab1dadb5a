//! Registry servers of a test's own, all on 127.0.0.1: Debian's `docker-registry`
//! (distribution 2.8) plain, over TLS with a private CA, with htpasswd (bcrypt) or token auth; a
//! minimal docker token server; a TCP relay that cuts connections mid-transfer; and `skopeo` as
//! the judge of what a registry holds.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub enum Auth {
    None,
    Htpasswd(String, String),
    /// Bearer tokens from the token server at `realm`, signed by the key of the cert in `bundle`.
    Token {
        realm: String,
        bundle: PathBuf,
    },
}

impl From<Option<(&str, &str)>> for Auth {
    fn from(user: Option<(&str, &str)>) -> Self {
        match user {
            Some((u, p)) => Auth::Htpasswd(u.into(), p.into()),
            None => Auth::None,
        }
    }
}

pub const TOKEN_SERVICE: &str = "sealer-test-registry";
pub const TOKEN_ISSUER: &str = "sealer-test-issuer";

pub struct TestRegistry {
    child: Option<Child>,
    /// The address it listens on (127.0.0.1 unless launched with [`TestRegistry::launch_at`]).
    pub ip: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address").port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after 20 s");
}

impl TestRegistry {
    /// A registry on a free port; with `user` it demands htpasswd (bcrypt) basic auth.
    pub fn start(user: Option<(&str, &str)>) -> TestRegistry {
        Self::start_with(user, None)
    }

    /// With `tls`, serve HTTPS with that `(certificate, key)` pair.
    pub fn start_with(user: Option<(&str, &str)>, tls: Option<(&Path, &Path)>) -> TestRegistry {
        Self::launch(Auth::from(user), tls)
    }

    pub fn launch(auth: Auth, tls: Option<(&Path, &Path)>) -> TestRegistry {
        Self::launch_at(auth, tls, "127.0.0.1")
    }

    /// Listening on `ip` (e.g. a testbed's bridge address, which its hosts reach).
    pub fn launch_at(auth: Auth, tls: Option<(&Path, &Path)>, ip: &str) -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {ip}:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Auth::Token { realm, bundle } = &auth {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                bundle.display()
            ));
        }
        if let Auth::Htpasswd(user, pass) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user.as_str(), pass.as_str()])
                .output()
                .expect("htpasswd (apt-get install apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: sealer-test\n    path: {}\n",
                file.display()
            ));
        }
        fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = TestRegistry {
            child: None,
            ip: ip.to_string(),
            port,
            dir,
        };
        registry.spawn();
        registry
    }

    pub fn spawn(&mut self) {
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        self.child = Some(child);
        let address = format!("{}:{}", self.ip, self.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {address} after 20 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Where the registry keeps a blob (`docker/registry/v2/blobs/sha256/XX/HEX/data`), for tests
    /// that remove or damage what it serves.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay to `upstream` that cuts its connections once `limit` bytes have flowed through it
/// (both directions counted): the registry "goes away" in the middle of a layer. With `once`, it
/// relays later connections without limit (a dropped connection); otherwise it stops accepting.
pub struct CuttingRelay {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Budget {
    used: Arc<AtomicU64>,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl CuttingRelay {
    pub fn start(upstream: u16, limit: u64, once: bool) -> CuttingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Budget {
            used: Arc::new(AtomicU64::new(0)),
            limit,
            tripped: Arc::new(AtomicBool::new(false)),
        };
        let stop_flag = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let tripped = budget.tripped.load(Ordering::SeqCst);
                if stop_flag.load(Ordering::SeqCst) || (tripped && !once) {
                    return; // the listener drops: later connections are refused
                }
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let limited = (!tripped).then(|| budget.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let limited2 = limited.clone();
                thread::spawn(move || pump(client, server, limited));
                thread::spawn(move || pump(s2, c2, limited2));
            }
        });
        CuttingRelay { port, stop }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, budget: Option<Budget>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(b) = &budget {
            if b.used.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > b.limit {
                b.tripped.store(true, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for CuttingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for 127.0.0.1 signed by it: `(ca.pem, server.pem, server.key)`.
pub fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sealer test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A minimal token server (docker token auth): it issues RS256 JWTs, signed with `openssl`, for
/// the user `alice` with password `secret`, and answers 401 to anyone else.
pub struct TokenServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.pem",
                "-days",
                "2",
                "-subj",
                "/CN=sealer token issuer",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token.pem",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
        );
        let der = fs::read(dir.join("token.der")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let dir = dir.to_path_buf();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { return };
                let _ = Self::answer(&mut conn, &dir, &der);
            }
        });
        TokenServer { port, stop }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn answer(conn: &mut TcpStream, dir: &Path, der: &[u8]) -> std::io::Result<()> {
        use base64::Engine;
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            request.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&request).to_string();
        let target = text.split_whitespace().nth(1).unwrap_or("/");
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let expected = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:secret")
        );
        let authorized = text.lines().any(|l| {
            l.to_ascii_lowercase().trim()
                == format!("authorization: {}", expected.to_ascii_lowercase())
        });
        if !authorized {
            conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{\"details\":\"bad account\"}",
            )?;
            return Ok(());
        }
        let mut access = Vec::new();
        for pair in query.split('&') {
            let Some(scope) = pair.strip_prefix("scope=") else {
                continue;
            };
            let scope = scope
                .replace("%3A", ":")
                .replace("%2C", ",")
                .replace("%2F", "/");
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            if parts.len() == 3 {
                access.push(serde_json::json!({
                    "type": parts[0], "name": parts[1],
                    "actions": parts[2].split(',').collect::<Vec<_>>(),
                }));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({
            "alg": "RS256", "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(der)],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": "alice", "aud": TOKEN_SERVICE,
            "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sign = Command::new("openssl")
            .current_dir(dir)
            .args(["dgst", "-sha256", "-sign", "token.key"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        sign.stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())?;
        let signature = sign.wait_with_output()?.stdout;
        let token = format!("{signing_input}.{}", b64url(&signature));
        let body = serde_json::json!({ "token": token, "expires_in": 600 }).to_string();
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The digest `skopeo` reads for `image` (over plain HTTP or unverified TLS), if it finds one.
pub fn skopeo_digest(image: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .expect("skopeo");
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().map(str::to_string)
}
