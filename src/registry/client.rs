//! The connection to one registry: the `oci-client` client configured from [`RegistryOptions`]
//! (scheme, CA roots, credentials), the tokio runtime it runs on, the translation of its errors
//! into [`RegistryError`], and retries under the shared [`RetryPolicy`]. It holds no knowledge of
//! images.

use std::future::Future;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::{Credentials, RegistryError, RegistryOptions};
use crate::retry::RetryPolicy;

/// A blocking façade over an async client for one registry.
pub(crate) struct Connection {
    pub registry: String,
    /// Talked to over plain HTTP (`--insecure`): unreachable then says so instead of
    /// suggesting the flag.
    pub plain_http: bool,
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
    pub username: Option<String>,
    pub runtime: tokio::runtime::Runtime,
    pub retry: RetryPolicy,
}

/// What an operation was doing when it failed, to word the error.
#[derive(Clone, Copy)]
pub(crate) struct Op<'a> {
    pub what: &'a str,
    pub repository: &'a str,
    /// `push` or `pull`, for "an account allowed to push it".
    pub action: &'static str,
    /// The reference named, for "registry has no image X".
    pub reference: &'a str,
}

/// A failure and whether trying again may help.
pub(crate) struct Failure {
    pub transient: bool,
    pub error: RegistryError,
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure {
            transient: false,
            error,
        }
    }
}

/// Install ring as rustls' provider once (the build uses rustls without a built-in default).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Certificates from the PEM file of `opts.ca_file`, if any.
pub(crate) fn ca_certificates(opts: &RegistryOptions) -> Result<Vec<Vec<u8>>, RegistryError> {
    let Some(path) = &opts.ca_file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path).map_err(|e| RegistryError::CaFile {
        path: path.clone(),
        reason: format!("cannot read it: {e}"),
    })?;
    const END: &str = "-----END CERTIFICATE-----";
    let certs: Vec<Vec<u8>> = text
        .split_inclusive(END)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----") && block.contains(END))
        .map(|block| block.trim_start().as_bytes().to_vec())
        .collect();
    if certs.is_empty() {
        return Err(RegistryError::CaFile {
            path: path.clone(),
            reason: "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    for cert in &certs {
        reqwest::Certificate::from_pem(cert).map_err(|e| RegistryError::CaFile {
            path: path.clone(),
            reason: format!("a certificate in it is not valid: {}", error_chain(&e)),
        })?;
    }
    Ok(certs)
}

pub(crate) fn scheme(opts: &RegistryOptions, registry: &str) -> &'static str {
    if opts.is_insecure(registry) {
        "http"
    } else {
        "https"
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, RegistryError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)
}

/// A plain reqwest client with the same TLS settings, for requests `oci-client` cannot make.
pub(crate) fn http_client(opts: &RegistryOptions) -> Result<reqwest::Client, RegistryError> {
    install_crypto_provider();
    let mut certs = Vec::new();
    for pem in ca_certificates(opts)? {
        certs.push(
            reqwest::Certificate::from_pem(&pem).map_err(|e| RegistryError::CaFile {
                path: opts.ca_file.clone().unwrap_or_default(),
                reason: error_chain(&e),
            })?,
        );
    }
    reqwest::Client::builder()
        .tls_certs_merge(certs)
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("sealer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RegistryError::Unreachable {
            registry: "(any)".into(),
            detail: format!("cannot set up the HTTP client: {}", error_chain(&e)),
        })
}

impl Connection {
    pub fn open(registry: &str, opts: &RegistryOptions) -> Result<Connection, RegistryError> {
        install_crypto_provider();
        let extra_root_certificates = ca_certificates(opts)?
            .into_iter()
            .map(|data| Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            })
            .collect();
        let config = ClientConfig {
            protocol: if opts.is_insecure(registry) {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("sealer/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client =
            oci_client::Client::try_from(config).map_err(|e| RegistryError::Unreachable {
                registry: registry.to_string(),
                detail: format!("cannot set up the HTTP client: {}", error_chain(&e)),
            })?;
        let creds = opts.credentials_for(registry)?;
        let (auth, username) = match creds {
            Some(Credentials { username, password }) => (
                RegistryAuth::Basic(username.clone(), password),
                Some(username),
            ),
            None => (RegistryAuth::Anonymous, None),
        };
        Ok(Connection {
            registry: registry.to_string(),
            plain_http: opts.is_insecure(registry),
            client,
            auth,
            username,
            runtime: runtime()?,
            retry: RetryPolicy::new(opts.attempts, opts.backoff),
        })
    }

    /// Run `attempt` until it succeeds, fails for good, or the attempts are used up; waits as
    /// [`RetryPolicy::delay`] says between attempts and tells `on_retry` each time.
    pub async fn retry<T, F, Fut>(
        &self,
        mut attempt: F,
        on_retry: &dyn Fn(u32, Duration, &RegistryError),
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut n = 1;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure { transient, error }) if self.retry.retries(transient, n) => {
                    let wait = self.retry.delay(n);
                    on_retry(n, wait, &error);
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
                Err(Failure { error, transient }) => {
                    let error = if transient && self.retry.attempts > 1 {
                        gave_up(error, self.retry.attempts)
                    } else {
                        error
                    };
                    return Err(match error {
                        RegistryError::Unreachable { registry, detail } if self.plain_http => {
                            RegistryError::UnreachablePlainHttp { registry, detail }
                        }
                        other => other,
                    });
                }
            }
        }
    }

    /// Translate an `oci-client` error met while doing `op`.
    pub fn classify(&self, op: Op<'_>, err: OciDistributionError) -> Failure {
        classify(&self.registry, self.username.as_deref(), op, err)
    }
}

/// Note the attempt count in an error that retrying did not cure.
fn gave_up(error: RegistryError, attempts: u32) -> RegistryError {
    match error {
        RegistryError::Unreachable { registry, detail } => RegistryError::Unreachable {
            registry,
            detail: format!("{detail} (gave up after {attempts} attempts)"),
        },
        RegistryError::Transfer {
            registry,
            what,
            detail,
            ..
        } => RegistryError::Transfer {
            registry,
            what,
            attempts,
            detail,
        },
        RegistryError::Corrupt {
            registry,
            what,
            source,
            ..
        } => RegistryError::Corrupt {
            registry,
            what,
            attempts,
            source,
        },
        other => other,
    }
}

/// `error: cause: root cause`, without repeats.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// A failure to connect: TLS trouble (retrying cannot help) or an unreachable registry.
pub(crate) fn connect_failure(registry: &str, detail: String) -> Failure {
    let tls = [
        "certificate",
        "UnknownIssuer",
        "InvalidContentType",
        "corrupt message",
        "handshake",
    ]
    .iter()
    .any(|needle| detail.contains(needle));
    if tls {
        let detail = if detail.contains("InvalidContentType") {
            format!("it answered without TLS, so it is probably a plain-HTTP registry ({detail})")
        } else {
            detail
        };
        return RegistryError::Tls {
            registry: registry.to_string(),
            detail,
        }
        .into();
    }
    Failure {
        transient: true,
        error: RegistryError::Unreachable {
            registry: registry.to_string(),
            detail,
        },
    }
}

fn unauthorized(registry: &str, op: Op<'_>, detail: String) -> Failure {
    RegistryError::Unauthorized {
        registry: registry.to_string(),
        repository: op.repository.to_string(),
        action: op.action,
        detail,
    }
    .into()
}

fn transfer(registry: &str, op: Op<'_>, transient: bool, detail: String) -> Failure {
    Failure {
        transient,
        error: RegistryError::Transfer {
            registry: registry.to_string(),
            what: op.what.to_string(),
            attempts: 1,
            detail,
        },
    }
}

fn not_found(registry: &str, op: Op<'_>) -> Failure {
    RegistryError::NotFound {
        registry: registry.to_string(),
        reference: op.reference.to_string(),
    }
    .into()
}

fn by_status(registry: &str, op: Op<'_>, code: u16, detail: String) -> Failure {
    match code {
        401 | 403 => unauthorized(registry, op, format!("HTTP {code}")),
        404 => not_found(registry, op),
        408 | 429 | 500..=599 => transfer(registry, op, true, detail),
        _ => transfer(registry, op, false, detail),
    }
}

pub(crate) fn classify(
    registry: &str,
    username: Option<&str>,
    op: Op<'_>,
    err: OciDistributionError,
) -> Failure {
    use OciDistributionError as E;
    match err {
        E::RequestError(e) => {
            let detail = error_chain(&e);
            if let Some(status) = e.status() {
                return by_status(registry, op, status.as_u16(), detail);
            }
            if e.is_connect() {
                return connect_failure(registry, detail);
            }
            let transient = e.is_timeout() || e.is_request() || e.is_body() || e.is_decode();
            transfer(registry, op, transient, detail)
        }
        E::ServerError { code, message, .. } => {
            let detail = if message.trim().is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {}", message.trim())
            };
            by_status(registry, op, code, detail)
        }
        E::UnauthorizedError { .. } => unauthorized(registry, op, "HTTP 401".into()),
        E::AuthenticationFailure(reason) => match username {
            Some(user) if !reason.contains("insufficient_scope") => {
                RegistryError::WrongCredentials {
                    registry: registry.to_string(),
                    username: user.to_string(),
                }
                .into()
            }
            _ => unauthorized(
                registry,
                op,
                format!("the token server said: {}", reason.trim()),
            ),
        },
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = envelope.to_string();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(registry, op, detail)
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                not_found(registry, op)
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                transfer(registry, op, true, detail)
            } else {
                transfer(registry, op, false, detail)
            }
        }
        E::ImageManifestNotFoundError(_) => not_found(registry, op),
        E::IoError(e) => transfer(registry, op, true, error_chain(&e)),
        E::DigestError(e) => transfer(registry, op, true, error_chain(&e)),
        other => transfer(registry, op, false, error_chain(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn a_corrupt_download_keeps_its_kind_and_counts_the_attempts() {
        let error = RegistryError::Corrupt {
            registry: "r.example".into(),
            what: "downloading blob sha256:aa".into(),
            attempts: 1,
            source: StoreError::BlobCorrupt {
                digest: "sha256:aa".into(),
                actual: "sha256:bb".into(),
            },
        };
        let error = gave_up(error, 4);
        assert!(
            matches!(
                &error,
                RegistryError::Corrupt {
                    attempts: 4,
                    source: StoreError::BlobCorrupt { .. },
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            crate::ui::error::one_line(&error),
            "downloading blob sha256:aa at registry r.example failed after 4 attempt(s): blob \
             sha256:aa is corrupt (its content hashes to sha256:bb); remove the image and pull or \
             build it again"
        );
    }
}
