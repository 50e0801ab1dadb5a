//! Registry credentials on disk: the docker-compatible `auth.json` that `sealer login` writes and
//! `sealer logout` edits, and the read-only lookup through it and `~/.docker/config.json`.
//!
//! The file holds `{"auths": {"HOST[:PORT]": {"auth": base64(user:pass)}}}`; other keys (and other
//! hosts) are kept as they are. It is written atomically (temporary file in the same directory,
//! mode 0600, renamed into place). This module never prints a password and never talks to a
//! registry (checking credentials is `login`'s job).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value};

use super::RegistryError;
use crate::store::Store;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Where `sealer login` keeps credentials: `$REGISTRY_AUTH_FILE`, else `$SEALER_ROOT/auth.json`
/// (the store root, see [`Store::default_root`]).
pub fn default_auth_file() -> PathBuf {
    match std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => Store::default_root().join("auth.json"),
    }
}

/// `~/.docker/config.json`, read (never written) when present.
pub fn docker_config_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// The key a registry is filed under: `host[:port]`, without scheme or path, so that entries
/// docker wrote as `https://host/v1/` are found too.
pub fn registry_key(registry: &str) -> String {
    let without_scheme = registry
        .strip_prefix("https://")
        .or_else(|| registry.strip_prefix("http://"))
        .unwrap_or(registry);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

/// Credentials for `registry` from the first of `files` that has an entry for it.
pub fn lookup(files: &[PathBuf], registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let key = registry_key(registry);
    for file in files {
        let Some(doc) = read_doc(file)? else {
            continue;
        };
        let Some(auths) = doc.get("auths").and_then(Value::as_object) else {
            continue;
        };
        for (name, entry) in auths {
            if registry_key(name) != key {
                continue;
            }
            if let Some(creds) = decode_entry(file, name, entry)? {
                return Ok(Some(creds));
            }
        }
    }
    Ok(None)
}

fn decode_entry(
    file: &Path,
    name: &str,
    entry: &Value,
) -> Result<Option<Credentials>, RegistryError> {
    let bad = |reason: &str| RegistryError::AuthFile {
        path: file.to_path_buf(),
        reason: format!("the entry for {name} {reason}"),
    };
    if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
        if auth.is_empty() {
            return Ok(None);
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("is not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| bad("is not user:password"))?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    let user = entry.get("username").and_then(Value::as_str);
    let pass = entry.get("password").and_then(Value::as_str);
    Ok(match (user, pass) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }),
        _ => None,
    })
}

fn read_doc(file: &Path) -> Result<Option<Value>, RegistryError> {
    let bytes = match fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::AuthFile {
                path: file.to_path_buf(),
                reason: format!("cannot read it: {e}"),
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Value::Object(Map::new())));
    }
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| RegistryError::AuthFile {
        path: file.to_path_buf(),
        reason: format!("it is not valid JSON ({e}); fix or remove it"),
    })?;
    if !doc.is_object() {
        return Err(RegistryError::AuthFile {
            path: file.to_path_buf(),
            reason: "it is not a JSON object".into(),
        });
    }
    Ok(Some(doc))
}

/// Record `creds` for `registry` in `file` (created with mode 0600 if missing).
pub fn store(file: &Path, registry: &str, creds: &Credentials) -> Result<(), RegistryError> {
    let mut doc = read_doc(file)?.unwrap_or_else(|| Value::Object(Map::new()));
    let key = registry_key(registry);
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    let auths = auths_mut(file, &mut doc)?;
    auths.retain(|name, _| registry_key(name) != key);
    auths.insert(key, serde_json::json!({ "auth": encoded }));
    write_atomic(file, &doc)
}

/// Forget the credentials for `registry`; `Ok(false)` when there were none.
pub fn remove(file: &Path, registry: &str) -> Result<bool, RegistryError> {
    let Some(mut doc) = read_doc(file)? else {
        return Ok(false);
    };
    let key = registry_key(registry);
    let auths = auths_mut(file, &mut doc)?;
    let before = auths.len();
    auths.retain(|name, _| registry_key(name) != key);
    if auths.len() == before {
        return Ok(false);
    }
    write_atomic(file, &doc)?;
    Ok(true)
}

fn auths_mut<'a>(
    file: &Path,
    doc: &'a mut Value,
) -> Result<&'a mut Map<String, Value>, RegistryError> {
    let malformed = || RegistryError::AuthFile {
        path: file.to_path_buf(),
        reason: "its \"auths\" is not a JSON object".into(),
    };
    let obj = doc.as_object_mut().ok_or_else(malformed)?;
    obj.entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(malformed)
}

fn write_atomic(file: &Path, doc: &Value) -> Result<(), RegistryError> {
    let fail = |what: &str, e: io::Error| RegistryError::AuthFile {
        path: file.to_path_buf(),
        reason: format!("{what}: {e}"),
    };
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| fail("creating its directory", e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".auth-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| fail("creating a temporary file beside it", e))?;
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| RegistryError::AuthFile {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    tmp.write_all(&bytes).map_err(|e| fail("writing", e))?;
    // The builder's permissions are subject to the umask; make sure of 0600.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("setting mode 0600", e))?;
    tmp.as_file().sync_all().map_err(|e| fail("syncing", e))?;
    tmp.persist(file)
        .map_err(|e| fail("replacing it", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn stored_credentials_are_found_again_and_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        store(&file, "127.0.0.1:5000", &creds("alice", "s3:cret")).unwrap();
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let got = lookup(std::slice::from_ref(&file), "127.0.0.1:5000").unwrap();
        assert_eq!(got, Some(creds("alice", "s3:cret")));
        assert_eq!(lookup(&[file], "127.0.0.1:5001").unwrap(), None);
    }

    #[test]
    fn other_entries_and_keys_survive_login_and_logout() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        fs::write(
            &file,
            r#"{"auths":{"other.io":{"auth":"eDp5"}},"credHelpers":{"a":"b"}}"#,
        )
        .unwrap();
        store(&file, "reg.io", &creds("u", "p")).unwrap();
        assert!(remove(&file, "reg.io").unwrap());
        assert!(!remove(&file, "reg.io").unwrap());
        let doc: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(doc["credHelpers"]["a"], "b");
        assert_eq!(doc["auths"]["other.io"]["auth"], "eDp5");
    }

    #[test]
    fn docker_style_keys_with_scheme_match_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        fs::write(
            &file,
            format!(r#"{{"auths":{{"https://reg.example.com:8443/v1/":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(
            lookup(&[file], "reg.example.com:8443").unwrap(),
            Some(creds("bob", "pw"))
        );
    }

    #[test]
    fn corrupt_auth_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        fs::write(&file, "{not json").unwrap();
        let err = lookup(std::slice::from_ref(&file), "x.io")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}
