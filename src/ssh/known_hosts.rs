//! `known_hosts` checking in OpenSSH's file format: find the entries for a host, compare keys,
//! append new hosts, and name the line to remove when a key changed. Plain entries are read here
//! (so the line number can be given); hashed entries (`|1|...`) are checked by libssh2.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use fs2::FileExt;

/// How a server key compares with what the file knows about the host.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Known,
    Unknown,
    /// A plain entry for this host holds another key; `line` is 1-based.
    Changed {
        line: usize,
        algorithm: String,
    },
    /// A hashed entry for this host holds another key.
    ChangedHashed,
}

/// The algorithm name inside an SSH public key blob (`string` = u32 length + bytes).
pub(super) fn blob_algorithm(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4 + len)?;
    String::from_utf8(name.to_vec()).ok()
}

/// Entry `(line, algorithm, key blob)` of plain lines naming `pattern`.
pub(super) fn plain_entries(text: &str, pattern: &str) -> Vec<(usize, String, Vec<u8>)> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(hosts), Some(algorithm), Some(key)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if hosts.starts_with('|') || !hosts.split(',').any(|h| h == pattern) {
            continue;
        }
        if let Some(blob) = crate::host_key::HostKeyPin::parse(&format!("{algorithm} {key}"))
            .ok()
            .and_then(|pin| match pin {
                crate::host_key::HostKeyPin::PublicKey { blob, .. } => Some(blob),
                _ => None,
            })
        {
            entries.push((n + 1, algorithm.to_string(), blob));
        }
    }
    entries
}

/// Compares `blob` with the plain entries for `pattern`. A host known only under other key
/// types counts as changed: the key it was known by is no longer offered.
pub(super) fn check_plain(text: &str, pattern: &str, blob: &[u8]) -> Verdict {
    let entries = plain_entries(text, pattern);
    if entries.iter().any(|(_, _, known)| known == blob) {
        return Verdict::Known;
    }
    let algorithm = blob_algorithm(blob).unwrap_or_default();
    let same_type = entries.iter().find(|(_, a, _)| *a == algorithm);
    match same_type.or(entries.first()) {
        Some((line, algorithm, _)) => Verdict::Changed {
            line: *line,
            algorithm: algorithm.clone(),
        },
        None => Verdict::Unknown,
    }
}

/// Appends `pattern algorithm base64` under an exclusive lock (hosts are connected in parallel).
pub(super) fn append(path: &Path, pattern: &str, blob: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.lock_exclusive()?;
    let algorithm = blob_algorithm(blob).unwrap_or_else(|| "ssh-unknown".into());
    let result =
        file.write_all(format!("{pattern} {algorithm} {}\n", base64_encode(blob)).as_bytes());
    let _ = FileExt::unlock(&file);
    result
}

pub(super) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(algorithm: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (algorithm.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(algorithm.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn base64_round_trips_through_the_pin_parser() {
        for len in 1..10 {
            let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let text = format!("ssh-x {}", base64_encode(&bytes));
            match crate::host_key::HostKeyPin::parse(&text) {
                Ok(crate::host_key::HostKeyPin::PublicKey { blob, .. }) => {
                    assert_eq!(blob, bytes)
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
    }

    #[test]
    fn plain_entries_give_known_unknown_and_changed_with_line() {
        let k1 = blob("ssh-ed25519", b"one");
        let k2 = blob("ssh-ed25519", b"two");
        let text = format!(
            "# comment\n10.0.0.9 ssh-ed25519 {}\n[10.0.0.2]:2222,other ssh-ed25519 {}\n",
            base64_encode(&k2),
            base64_encode(&k1)
        );
        assert_eq!(check_plain(&text, "[10.0.0.2]:2222", &k1), Verdict::Known);
        assert_eq!(check_plain(&text, "10.0.0.2", &k1), Verdict::Unknown);
        assert_eq!(
            check_plain(&text, "10.0.0.9", &k1),
            Verdict::Changed {
                line: 2,
                algorithm: "ssh-ed25519".into()
            }
        );
    }
}
