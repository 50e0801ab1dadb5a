//! A pinned SSH host key: its two written forms (a public key line or a `SHA256:` fingerprint)
//! and the check against the key a server presents.
//!
//! Shared by the Clusterfile parser (which reads pins) and the SSH transport (which checks them
//! and reads `known_hosts` lines); it knows neither and does no I/O.

/// Why a written host key was refused; each message quotes the text and says what to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyPinError {
    #[error("`{0}`: the fingerprint is not valid base64")]
    FingerprintNotBase64(String),
    #[error("`{0}`: a SHA256 fingerprint holds 32 bytes")]
    FingerprintLength(String),
    #[error("`{0}` is not a host key; give `ssh-ed25519 AAAA...` (a line of /etc/ssh/ssh_host_ed25519_key.pub) or `SHA256:...` (ssh-keygen -lf)")]
    NotAHostKey(String),
    #[error("`{0}`: the key is not valid base64")]
    KeyNotBase64(String),
}

/// A pinned host key (in the Clusterfile: `spec.hostKeys` or `hosts[].hostKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPin {
    /// The full public key as in `known_hosts` or `/etc/ssh/ssh_host_*_key.pub`:
    /// `ssh-ed25519 AAAAC3Nza...` (a trailing comment is ignored).
    PublicKey { algorithm: String, blob: Vec<u8> },
    /// A SHA-256 fingerprint as printed by `ssh-keygen -lf`: `SHA256:<base64 without padding>`.
    Sha256([u8; 32]),
}

impl HostKeyPin {
    /// Reads `ssh-ed25519 AAAA... [comment]` or `SHA256:...`.
    pub fn parse(text: &str) -> Result<Self, HostKeyPinError> {
        let text = text.trim();
        if let Some(b64) = text.strip_prefix("SHA256:") {
            let bytes = base64_decode(b64.trim_end_matches('='))
                .ok_or_else(|| HostKeyPinError::FingerprintNotBase64(text.to_string()))?;
            let digest: [u8; 32] = bytes
                .try_into()
                .map_err(|_| HostKeyPinError::FingerprintLength(text.to_string()))?;
            return Ok(HostKeyPin::Sha256(digest));
        }
        let mut words = text.split_whitespace();
        let (Some(algorithm), Some(b64)) = (words.next(), words.next()) else {
            return Err(HostKeyPinError::NotAHostKey(text.to_string()));
        };
        let blob = base64_decode(b64)
            .ok_or_else(|| HostKeyPinError::KeyNotBase64(format!("{algorithm} {b64}")))?;
        Ok(HostKeyPin::PublicKey {
            algorithm: algorithm.to_string(),
            blob,
        })
    }

    /// True when the server's raw host key blob (as sent in the SSH handshake) is this pin.
    pub fn matches(&self, server_key_blob: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        match self {
            HostKeyPin::PublicKey { blob, .. } => blob == server_key_blob,
            HostKeyPin::Sha256(digest) => Sha256::digest(server_key_blob).as_slice() == digest,
        }
    }
}

/// Standard base64 (padding optional); `None` on any other character.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits = text.trim_end_matches('=').as_bytes();
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}
