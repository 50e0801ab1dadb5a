//! `sealer login` / `sealer logout`: check credentials against a registry, then record or forget
//! them in the credentials file.
//!
//! The check is what `docker login` does: `GET /v2/`; when the registry challenges with `Basic`,
//! the same request with the credentials must succeed; when it challenges with `Bearer`, its token
//! server must issue a token for them. Nothing is written unless the check passed.

use std::time::Duration;

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::client::{connect_failure, error_chain, http_client, runtime, scheme};
use super::{auth, Credentials, RegistryError, RegistryOptions};

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
    None,
}

fn parse_challenge(headers: &HeaderMap) -> Challenge {
    let Some(value) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
        return Challenge::None;
    };
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::None;
    }
    let mut realm = None;
    let mut service = None;
    for (key, val) in auth_params(params) {
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(val),
            "service" => service = Some(val),
            _ => {}
        }
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, service },
        None => Challenge::None,
    }
}

/// `key="value", key2=value2` pairs (quoted values may hold commas).
fn auth_params(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

fn unreachable(registry: &str, e: &reqwest::Error) -> RegistryError {
    connect_failure(registry, error_chain(e)).error
}

/// Check `creds` against `registry` without saving anything.
pub fn verify_credentials(
    registry: &str,
    creds: &Credentials,
    opts: &RegistryOptions,
) -> Result<(), RegistryError> {
    let registry = auth::registry_key(registry);
    let client = http_client(opts)?;
    let url = format!("{}://{registry}/v2/", scheme(opts, &registry));
    let rt = runtime()?;
    rt.block_on(async {
        let anonymous = client
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| unreachable(&registry, &e))?;
        let status = anonymous.status();
        if status.is_success() {
            // The registry asks for no credentials; any will do.
            return Ok(());
        }
        if status != StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Transfer {
                registry: registry.clone(),
                what: format!("GET {url}"),
                attempts: 1,
                detail: format!("HTTP {status} (is this an OCI registry?)"),
            });
        }
        let wrong = || RegistryError::WrongCredentials {
            registry: registry.clone(),
            username: creds.username.clone(),
        };
        let response = match parse_challenge(anonymous.headers()) {
            Challenge::Basic | Challenge::None => client
                .get(&url)
                .basic_auth(&creds.username, Some(&creds.password))
                .send()
                .await
                .map_err(|e| unreachable(&registry, &e))?,
            Challenge::Bearer { realm, service } => {
                let mut query = vec![("account", creds.username.as_str())];
                if let Some(service) = &service {
                    query.push(("service", service.as_str()));
                }
                client
                    .get(&realm)
                    .query(&query)
                    .basic_auth(&creds.username, Some(&creds.password))
                    .send()
                    .await
                    .map_err(|e| unreachable(&format!("{registry} (token server {realm})"), &e))?
            }
        };
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(wrong()),
            s => Err(RegistryError::Transfer {
                registry: registry.clone(),
                what: "checking the credentials".into(),
                attempts: 1,
                detail: format!("HTTP {s}"),
            }),
        }
    })
}

/// Check `creds` against `registry`, then record them in `opts.auth_file`.
pub fn login(
    registry: &str,
    creds: &Credentials,
    opts: &RegistryOptions,
) -> Result<(), RegistryError> {
    verify_credentials(registry, creds, opts)?;
    auth::store(&opts.auth_file, registry, creds)
}

/// Forget the credentials for `registry` in `opts.auth_file`.
pub fn logout(registry: &str, opts: &RegistryOptions) -> Result<(), RegistryError> {
    if auth::remove(&opts.auth_file, registry)? {
        Ok(())
    } else {
        Err(RegistryError::NotLoggedIn {
            registry: auth::registry_key(registry),
            path: opts.auth_file.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn challenge(value: &str) -> Challenge {
        let mut h = HeaderMap::new();
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_str(value).unwrap());
        parse_challenge(&h)
    }

    #[test]
    fn bearer_challenge_gives_realm_and_service() {
        assert_eq!(
            challenge(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="a,b""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into())
            }
        );
    }

    #[test]
    fn basic_challenge_is_recognised() {
        assert_eq!(challenge(r#"Basic realm="sealer""#), Challenge::Basic);
    }
}
