//! The HTTP side of the pull-only registry: the OCI distribution API's read endpoints
//! (`/v2/`, manifests and blobs by GET and HEAD, `Range` on blobs, `tags/list`) over hyper's
//! HTTP/1 server on a current-thread tokio runtime. Every write method is refused with
//! `UNSUPPORTED`. Blobs stream from their files in bounded chunks; the catalog is reloaded
//! when `index.json` changes (an upgrade replaces the directory). It serves nothing that no
//! manifest of the layout references and reads nothing outside the layout.

use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::layout::{BlobDigest, Catalog, Lookup};

/// Bytes of a blob read and sent at a time.
const CHUNK: usize = 256 << 10;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the registry could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("starting the registry's runtime: {0}")]
    Runtime(io::Error),
    #[error("listening on {addr}: {source}; is another registry on that port?")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("accepting a connection on {addr}: {source}")]
    Accept { addr: SocketAddr, source: io::Error },
}

/// Serves the OCI layout at `root` on `listen` until the process ends.
pub fn serve(root: &Path, listen: SocketAddr) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ServeError::Runtime)?;
    let registry = Arc::new(Registry::new(root.to_path_buf()));
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
        let catalog = registry.catalog();
        if !root.join("index.json").is_file() {
            eprintln!(
                "sealer registry: {} has no index.json: serving nothing until it appears",
                root.display()
            );
        }
        eprintln!(
            "sealer registry: serving {} ({} images) on {listen}",
            root.display(),
            catalog.names().len()
        );
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before accept: wait and go on.
                Err(e) if is_transient(&e) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(source) => {
                    return Err(ServeError::Accept {
                        addr: listen,
                        source,
                    })
                }
            };
            let _ = stream.set_nodelay(true);
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let registry = Arc::clone(&registry);
                        async move { Ok::<_, Infallible>(registry.respond(&req)) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ECONNABORTED | libc::ENOBUFS | libc::ENOMEM)
    ) || e.kind() == io::ErrorKind::ConnectionAborted
}

/// What identifies one version of `index.json`: a replaced or rewritten file differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// The layout being served and its catalog, reloaded when `index.json` changes.
pub struct Registry {
    root: PathBuf,
    current: Mutex<(Option<Stamp>, Arc<Catalog>)>,
}

impl Registry {
    pub fn new(root: PathBuf) -> Registry {
        Registry {
            root,
            current: Mutex::new((None, Arc::new(Catalog::default()))),
        }
    }

    /// The catalog of the layout as it is now: one `stat` per request, a reload when
    /// `index.json` is another file or was rewritten. A layout that cannot be read serves
    /// nothing (and says why on stderr) until it changes again.
    pub fn catalog(&self) -> Arc<Catalog> {
        let index = self.root.join("index.json");
        let stamp = std::fs::metadata(&index).ok().map(|m| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        });
        let mut current = match self.current.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.0 != stamp || stamp.is_none() {
            let catalog = match Catalog::load(&self.root) {
                Ok(catalog) => {
                    for skipped in &catalog.skipped {
                        eprintln!("sealer registry: not served: {skipped}");
                    }
                    catalog
                }
                Err(e) => {
                    if stamp.is_some() {
                        eprintln!("sealer registry: serving nothing: {e}");
                    }
                    Catalog::default()
                }
            };
            *current = (stamp, Arc::new(catalog));
        }
        Arc::clone(&current.1)
    }

    /// The answer to one request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
        let mut response = self.route(req);
        put(
            response.headers_mut(),
            "docker-distribution-api-version",
            "registry/2.0",
        );
        if !response.status().is_success() && response.status() != StatusCode::PARTIAL_CONTENT {
            eprintln!(
                "sealer registry: {} {} -> {}",
                req.method(),
                req.uri(),
                response.status().as_u16()
            );
        }
        response
    }

    fn route<B>(&self, req: &Request<B>) -> Response<Body> {
        let path = req.uri().path();
        let Some(rest) = path.strip_prefix("/v2") else {
            return error(StatusCode::NOT_FOUND, "UNSUPPORTED", "only /v2/ is served");
        };
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "UNSUPPORTED",
                    "this registry is pull-only: only GET and HEAD are served",
                )
            }
        };
        if rest.is_empty() || rest == "/" {
            return json(head, Bytes::from_static(b"{}"));
        }
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let query = Query::parse(req.uri().query().unwrap_or_default());
        let catalog = self.catalog();
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return tags(&catalog, name, &query, head);
        }
        if let Some((name, reference)) = split_last(rest, "/manifests/") {
            return self.manifest(&catalog, name, reference, &query, head);
        }
        if let Some((name, digest)) = split_last(rest, "/blobs/") {
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            return self.blob(&catalog, name, digest, &query, range, head);
        }
        error(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "not an endpoint of this registry",
        )
    }

    fn manifest(
        &self,
        catalog: &Catalog,
        name: &str,
        reference: &str,
        query: &Query,
        head: bool,
    ) -> Response<Body> {
        let Some(repository) = catalog.repository(&Lookup {
            name,
            ns: query.ns.as_deref(),
        }) else {
            return name_unknown(name);
        };
        let digest = if reference.starts_with("sha256:") || reference.contains(':') {
            match BlobDigest::parse(reference) {
                Some(d) if repository.manifests.contains(&d) => Some(d),
                Some(_) => None,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        "a digest is sha256: and 64 lowercase hex digits",
                    )
                }
            }
        } else {
            repository.tags.get(reference).cloned()
        };
        let Some(manifest) = digest
            .as_ref()
            .and_then(|d| catalog.manifest(d).map(|m| (d, m)))
        else {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                &format!("{name}:{reference} is not in this registry"),
            );
        };
        let (digest, stored) = manifest;
        let len = stored.bytes.len() as u64;
        let body = if head {
            Body::empty()
        } else {
            Body::full(stored.bytes.clone())
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        put(headers, header::CONTENT_TYPE, &stored.media_type);
        put(headers, header::CONTENT_LENGTH, &len.to_string());
        put(headers, "docker-content-digest", digest.as_str());
        put(headers, header::ETAG, &format!("\"{digest}\""));
        response
    }

    fn blob(
        &self,
        catalog: &Catalog,
        name: &str,
        digest: &str,
        query: &Query,
        range: Option<&str>,
        head: bool,
    ) -> Response<Body> {
        if catalog
            .repository(&Lookup {
                name,
                ns: query.ns.as_deref(),
            })
            .is_none()
        {
            return name_unknown(name);
        }
        let Some(digest) = BlobDigest::parse(digest) else {
            return error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "a digest is sha256: and 64 lowercase hex digits",
            );
        };
        let unknown = || {
            error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                &format!("{digest} is not in this registry"),
            )
        };
        let (content, len) = if let Some(manifest) = catalog.manifest(&digest) {
            let len = manifest.bytes.len() as u64;
            (Content::Memory(manifest.bytes.clone()), len)
        } else if catalog.references_blob(&digest) {
            match open_blob(&digest.path(&self.root)) {
                Some((file, len)) => (Content::File(file), len),
                None => return unknown(),
            }
        } else {
            return unknown();
        };
        let (status, start, count) = match range.map(|r| parse_range(r, len)) {
            None | Some(RangeAnswer::Whole) => (StatusCode::OK, 0, len),
            Some(RangeAnswer::Part { start, end }) => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            Some(RangeAnswer::Unsatisfiable) => {
                let mut response = error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UNKNOWN",
                    &format!("the range is outside the blob's {len} bytes"),
                );
                put(
                    response.headers_mut(),
                    header::CONTENT_RANGE,
                    &format!("bytes */{len}"),
                );
                return response;
            }
        };
        let body = match (head, content) {
            (true, _) => Body::empty(),
            (false, Content::Memory(bytes)) => {
                Body::full(bytes.slice(start as usize..(start + count) as usize))
            }
            (false, Content::File(file)) => Body::File {
                file,
                offset: start,
                remaining: count,
            },
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        put(headers, header::CONTENT_TYPE, "application/octet-stream");
        put(headers, header::CONTENT_LENGTH, &count.to_string());
        put(headers, header::ACCEPT_RANGES, "bytes");
        put(headers, "docker-content-digest", digest.as_str());
        put(headers, header::ETAG, &format!("\"{digest}\""));
        if status == StatusCode::PARTIAL_CONTENT {
            put(
                headers,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{}/{len}", start + count - 1),
            );
        }
        response
    }
}

enum Content {
    Memory(Bytes),
    File(File),
}

/// A regular file (symlinks not followed) and its length.
fn open_blob(path: &Path) -> Option<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let len = meta.len();
    meta.is_file().then_some((file, len))
}

fn tags(catalog: &Catalog, name: &str, query: &Query, head: bool) -> Response<Body> {
    let Some(repository) = catalog.repository(&Lookup {
        name,
        ns: query.ns.as_deref(),
    }) else {
        return name_unknown(name);
    };
    let tags: Vec<&String> = repository
        .tags
        .keys()
        .filter(|t| query.last.as_ref().is_none_or(|last| *t > last))
        .take(query.n.unwrap_or(usize::MAX))
        .collect();
    let body = serde_json::json!({ "name": name, "tags": tags });
    json(head, Bytes::from(body.to_string()))
}

/// The parts of a query string this registry reads.
#[derive(Default)]
struct Query {
    /// The registry the client asked for (containerd as a mirror).
    ns: Option<String>,
    n: Option<usize>,
    last: Option<String>,
}

impl Query {
    /// Reads `text` as a URL query: keys and values are percent-decoded (containerd sends
    /// `ns=127.0.0.1%3A5000` for a registry named with a port).
    fn parse(text: &str) -> Query {
        let mut q = Query::default();
        for (key, value) in form_urlencoded::parse(text.as_bytes()) {
            match key.as_ref() {
                "ns" if !value.is_empty() => q.ns = Some(value.into_owned()),
                "n" => q.n = value.parse().ok(),
                "last" if !value.is_empty() => q.last = Some(value.into_owned()),
                _ => {}
            }
        }
        q
    }
}

/// `(before, after)` around the last `sep`, when `after` is one path component.
fn split_last<'a>(text: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let at = text.rfind(sep)?;
    let (name, rest) = (&text[..at], &text[at + sep.len()..]);
    (!name.is_empty() && !rest.is_empty() && !rest.contains('/')).then_some((name, rest))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    Whole,
    /// Inclusive byte positions.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// One `bytes=` range of a blob of `len` bytes. A header this registry does not understand
/// (another unit, several ranges) gets the whole blob, as RFC 9110 allows.
fn parse_range(header: &str, len: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part {
                    start: len.saturating_sub(suffix),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            let end = end.unwrap_or(u64::MAX);
            if end < start {
                RangeAnswer::Whole
            } else if start >= len {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        _ => RangeAnswer::Whole,
    }
}

fn put(headers: &mut hyper::HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn json(head: bool, bytes: Bytes) -> Response<Body> {
    let len = bytes.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::full(bytes)
    });
    let headers = response.headers_mut();
    put(headers, header::CONTENT_TYPE, "application/json");
    put(headers, header::CONTENT_LENGTH, &len.to_string());
    response
}

fn name_unknown(name: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        &format!("no repository {name} in this registry"),
    )
}

/// An OCI error body: `{"errors":[{"code":…,"message":…}]}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body =
        serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] });
    let mut response = json(false, Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response
}

/// A response body: bytes in memory, or a part of a file read [`CHUNK`] bytes at a time as the
/// connection takes them.
pub enum Body {
    Full(Option<Bytes>),
    File {
        file: File,
        offset: u64,
        remaining: u64,
    },
}

impl Body {
    fn empty() -> Body {
        Body::Full(None)
    }

    fn full(bytes: Bytes) -> Body {
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::File {
                file,
                offset,
                remaining,
            } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = (*remaining).min(CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                let result = match file.read_at(&mut buf, *offset) {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the blob's file became shorter while it was sent",
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        *offset += n as u64;
                        *remaining -= n as u64;
                        Ok(Frame::data(Bytes::from(buf)))
                    }
                    Err(e) => Err(e),
                };
                Poll::Ready(Some(result))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Query::parse("ns=127.0.0.1%3A5000&n=2&last=a%2Bb");
        assert_eq!(q.ns.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(q.n, Some(2));
        assert_eq!(q.last.as_deref(), Some("a+b"));
        assert_eq!(
            Query::parse("ns=docker.io").ns.as_deref(),
            Some("docker.io")
        );
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Part { start: 90, end: 99 });
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(parse_range("bytes=-10", 100), Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-500", 100), Part { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("bytes=9-1", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=x-1", 100), Whole);
    }

    #[test]
    fn a_path_splits_at_its_last_separator_into_a_name_and_one_component() {
        assert_eq!(
            split_last("a/manifests/b/manifests/1", "/manifests/"),
            Some(("a/manifests/b", "1"))
        );
        assert_eq!(split_last("x/blobs/uploads/", "/blobs/"), None);
        assert_eq!(split_last("/blobs/sha256:1", "/blobs/"), None);
    }
}
