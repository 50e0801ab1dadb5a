//! Checking a private key file before any host is contacted: it exists, it is a private key
//! (not the `.pub` beside it, not some other file), and whether it is encrypted, so that a bad
//! `--pk` is one message naming the file and the fix instead of an authentication failure per
//! host after connecting. It reads the file's armour and, for OpenSSH keys, the cipher name at
//! the head of the key blob; it never decrypts anything.

use std::path::{Path, PathBuf};

use base64::Engine;

/// What a readable private key file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    /// A private key that can be used as it is.
    Plain,
    /// A private key encrypted with a passphrase.
    Encrypted,
}

/// Why a key file cannot be used; the text names the file and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyFileError(pub String);

/// Check the private key at `path` (`~/` expanded), given as `flag` (e.g. `--pk`).
pub fn check(path: &Path, flag: &str) -> Result<KeyFile, KeyFileError> {
    let full = super::expand_home(path);
    let shown = path.display();
    let bytes = match std::fs::read(&full) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyFileError(format!(
                "private key {shown} ({flag}) does not exist; give the path of the private key \
                 that the hosts accept (often ~/.ssh/id_ed25519 or ~/.ssh/id_rsa)"
            )))
        }
        Err(e) => {
            return Err(KeyFileError(format!(
                "cannot read private key {shown} ({flag}): {e}; check the path and that this user may read it"
            )))
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let first = text.trim_start();
    if ["ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-"]
        .iter()
        .any(|p| first.starts_with(p))
        || first.starts_with("-----BEGIN PUBLIC KEY-----")
        || first.starts_with("---- BEGIN SSH2 PUBLIC KEY ----")
    {
        return Err(KeyFileError(format!(
            "{shown} ({flag}) is a public key; give the private key{} (the public key belongs in \
             ~/.ssh/authorized_keys on the hosts)",
            without_pub(path)
                .map(|p| format!(", {}", p.display()))
                .unwrap_or_default()
        )));
    }
    let Some(kind) = armour(first) else {
        return Err(KeyFileError(format!(
            "{shown} ({flag}) is not a private key (no `-----BEGIN ... PRIVATE KEY-----` line); \
             give an OpenSSH or PEM private key file, such as one `ssh-keygen` writes"
        )));
    };
    let encrypted = match kind {
        "OPENSSH" => openssh_encrypted(first).ok_or_else(|| {
            KeyFileError(format!(
                "{shown} ({flag}) is damaged: its OpenSSH key data cannot be read; make a new key with ssh-keygen or restore the file"
            ))
        })?,
        "ENCRYPTED" => true,
        _ => first.contains("Proc-Type: 4,ENCRYPTED"),
    };
    Ok(if encrypted {
        KeyFile::Encrypted
    } else {
        KeyFile::Plain
    })
}

/// The message for an encrypted key given without its passphrase.
pub fn needs_passphrase(
    path: &Path,
    flag: &str,
    passphrase_flag: &str,
    env: Option<&str>,
) -> String {
    let how = match env {
        Some(env) => format!(
            "in ${env} ({passphrase_flag} works too, but other users can see it in the process list)"
        ),
        None => format!("with {passphrase_flag}"),
    };
    format!(
        "private key {} ({flag}) is encrypted and no passphrase was given: run on a terminal to be \
         asked for it, or give it {how}",
        path.display()
    )
}

/// `X` of `-----BEGIN X PRIVATE KEY-----` (`OPENSSH`, `RSA`, `EC`, `ENCRYPTED`, or empty for
/// PKCS#8), if the text starts with such a line.
fn armour(text: &str) -> Option<&str> {
    let line = text.lines().next()?.trim_end();
    let inner = line
        .strip_prefix("-----BEGIN ")?
        .strip_suffix("PRIVATE KEY-----")?;
    Some(inner.trim_end())
}

/// Whether an OpenSSH private key is encrypted: the blob starts `openssh-key-v1\0` and a
/// length-prefixed cipher name, `none` when it is not. `None` when the blob is unreadable.
fn openssh_encrypted(text: &str) -> Option<bool> {
    let body: String = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    let rest = blob.strip_prefix(b"openssh-key-v1\0")?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let cipher = rest.get(4..4 + len)?;
    Some(cipher != b"none")
}

fn without_pub(path: &Path) -> Option<PathBuf> {
    let name = path.to_str()?.strip_suffix(".pub")?;
    Some(PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armour_names_the_kind() {
        assert_eq!(
            armour("-----BEGIN OPENSSH PRIVATE KEY-----\nabc"),
            Some("OPENSSH")
        );
        assert_eq!(armour("-----BEGIN PRIVATE KEY-----\n"), Some(""));
        assert_eq!(armour("hello"), None);
    }

    #[test]
    fn a_pub_file_names_the_private_key_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519.pub");
        std::fs::write(&path, "ssh-ed25519 AAAAC3Nza alice@host\n").unwrap();
        let err = check(&path, "--pk").unwrap_err().0;
        assert!(err.contains("is a public key"), "{err}");
        assert!(
            err.contains(&format!("{}", dir.path().join("id_ed25519").display())),
            "{err}"
        );
    }
}
