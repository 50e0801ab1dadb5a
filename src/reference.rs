//! Image references: the one parser of `registry/repo/name:tag[@sha256:…]` in the project.
//!
//! A reference names an image in the local store and, when it carries a registry, where it lives
//! remotely. This module only parses and prints; it never touches the store or the network.

use std::fmt;
use std::str::FromStr;

/// Default tag when a reference names none.
pub const DEFAULT_TAG: &str = "latest";

/// Longest name (`registry/repository`, without tag or digest), as the OCI distribution spec lets
/// registries limit it.
pub const MAX_NAME_LEN: usize = 255;

/// Longest tag, as the OCI distribution spec defines it.
pub const MAX_TAG_LEN: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host (with port), when the first path component names one.
    pub registry: Option<String>,
    /// Repository path below the registry, e.g. `library/etcd`.
    pub repository: String,
    pub tag: String,
    /// Content digest `sha256:<hex>` when the reference pins one.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(fail("it is empty"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("it contains white space"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| fail("the digest must start with sha256:"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(fail(
                        "the digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), remainder)
            }
            _ => (None, rest),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) => {
                if tag.is_empty() || tag.len() > MAX_TAG_LEN {
                    return Err(fail(&format!(
                        "the tag must be 1 to {MAX_TAG_LEN} characters (it has {})",
                        tag.len()
                    )));
                }
                if !tag
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    || !tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    return Err(fail(
                        "the tag may hold only letters, digits, '_', '.' and '-'",
                    ));
                }
                (repo, tag.to_string())
            }
            None => (path, DEFAULT_TAG.to_string()),
        };
        if repository.is_empty() {
            return Err(fail("the name is empty"));
        }
        let name_len = registry.as_ref().map_or(0, |r| r.len() + 1) + repository.len();
        if name_len > MAX_NAME_LEN {
            return Err(fail(&format!(
                "the name (registry and repository) has {name_len} characters, more than the \
                 {MAX_NAME_LEN} allowed"
            )));
        }
        for component in repository.split('/') {
            let valid = !component.is_empty()
                && component
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && component
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                && component
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_ascii_alphanumeric());
            if !valid {
                return Err(fail(
                    "name components must be lowercase letters, digits and '.', '_', '-' (not at either end)",
                ));
            }
        }
        if let Some(reg) = &registry {
            let (host, port) = match reg.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (reg.as_str(), None),
            };
            if host.is_empty()
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
            {
                return Err(fail(
                    "the registry host is not a valid host name or address",
                ));
            }
            if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
                return Err(fail("the registry port must be a number"));
            }
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// `registry/repository` (or just `repository`): the name without tag.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// The key under which the store records this image: `name:tag`.
    pub fn store_key(&self) -> String {
        format!("{}:{}", self.name(), self.tag)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.store_key())?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_name_gets_latest_tag_and_no_registry() {
        let r = Reference::parse("etcd").unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.repository, "etcd");
        assert_eq!(r.tag, "latest");
        assert_eq!(r.store_key(), "etcd:latest");
    }

    #[test]
    fn registry_with_port_is_told_apart_from_tag() {
        let r = Reference::parse("127.0.0.1:5000/apps/etcd:v3.5").unwrap();
        assert_eq!(r.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.repository, "apps/etcd");
        assert_eq!(r.tag, "v3.5");
        let r = Reference::parse("localhost/etcd").unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost"));
        let r = Reference::parse("library/etcd:1").unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.repository, "library/etcd");
    }

    #[test]
    fn digest_is_kept() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("reg.io/x:1@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("reg.io/x:1@{d}"));
    }

    #[test]
    fn bad_references_say_why() {
        for bad in [
            "",
            "Etcd",
            "etcd:",
            "etcd:bad/tag",
            "a//b",
            "x@sha256:12",
            "-x",
            "a b",
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(!err.reason.is_empty(), "{bad}");
        }
    }

    #[test]
    fn names_over_255_characters_and_tags_over_128_are_refused() {
        let longest = format!("reg.io/{}", "a".repeat(MAX_NAME_LEN - "reg.io/".len()));
        assert!(Reference::parse(&format!("{longest}:v1")).is_ok());
        let err = Reference::parse(&format!("{longest}b:v1")).unwrap_err();
        assert!(err.reason.contains("256 characters"), "{err}");
        assert!(err.reason.contains("255"), "{err}");
        let err = Reference::parse("x/".repeat(200).trim_end_matches('/')).unwrap_err();
        assert!(err.reason.contains("255"), "{err}");
        assert!(Reference::parse(&format!("x:{}", "t".repeat(MAX_TAG_LEN))).is_ok());
        let err = Reference::parse(&format!("x:{}", "t".repeat(MAX_TAG_LEN + 1))).unwrap_err();
        assert!(err.reason.contains("128"), "{err}");
    }
}
