//! A remote cache speaking the Turborepo remote cache API, so a team can
//! point muster at a server it already runs (turborepo-remote-cache, or
//! any other implementation of the API):
//!
//! - `HEAD /v8/artifacts/{hash}`: is it there (200) or not (404);
//! - `GET /v8/artifacts/{hash}`: the artifact, with its signature in the
//!   `x-artifact-tag` header;
//! - `PUT /v8/artifacts/{hash}`: `Content-Type: application/octet-stream`,
//!   `x-artifact-tag`, and `x-artifact-duration` (milliseconds).
//!
//! Each request carries `Authorization: Bearer TOKEN` and the team as
//! `teamId` and/or `slug` query parameters (turborepo-remote-cache needs
//! one of them). 401/403 is [`CacheError::Unauthorized`]; a server that
//! refuses the connection, does not connect within 10 s or makes no
//! progress for the stall timeout (60 s) is [`CacheError::Unreachable`],
//! which the caller reports once before going on without the cache.
//!
//! Uploads stream from the archive file and downloads stream to a
//! temporary file, capped ([`DEFAULT_MAX_DOWNLOAD`]), so an entry never
//! sits in memory whole. turborepo-remote-cache keeps a tag only when it
//! has `TURBO_REMOTE_CACHE_SIGNATURE_KEY` set (to any value), and then
//! also answers 404 for artifacts stored without one.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use muster_core::url::redact_url;
use reqwest::{header, Method, StatusCode, Url};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::digest::BUFFER_BYTES;
use crate::store::{check_key, Fetched, Store, StoreFuture};
use crate::CacheError;

/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may go without progress (no connection, no
/// response, no bytes either way) before it is given up.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest entry a download accepts: muster writes none this large.
pub const DEFAULT_MAX_DOWNLOAD: u64 = 4 * 1024 * 1024 * 1024;

/// At most this much of an error body goes into a message.
const MAX_ERROR_BODY: usize = 512;

const TAG_HEADER: &str = "x-artifact-tag";
const DURATION_HEADER: &str = "x-artifact-duration";

/// A Turborepo remote cache. Cheap to clone (the client is shared).
#[derive(Debug, Clone)]
pub struct TurboStore {
    client: reqwest::Client,
    base: Url,
    /// `base`, redacted, for messages.
    shown: String,
    token: Option<String>,
    query: Vec<(&'static str, String)>,
    stall: Duration,
    max_download: u64,
    temp_dir: Option<PathBuf>,
}

impl TurboStore {
    /// A store at `url` (the server's root, as `TURBO_API` would be:
    /// `/v8/artifacts/...` is added to its path, and its query, if any,
    /// is replaced by the team's). `token` is sent as a bearer token;
    /// `team` as `teamId`, `slug` as `slug`.
    pub fn new(
        url: &str,
        token: Option<String>,
        team: Option<String>,
        slug: Option<String>,
    ) -> Result<TurboStore, CacheError> {
        let shown = redact_url(url);
        let bad = |reason: &str| CacheError::BadUrl {
            url: shown.clone(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad("it must be an http:// or https:// URL with a host"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("muster/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let mut query = Vec::new();
        query.extend(team.filter(|t| !t.is_empty()).map(|t| ("teamId", t)));
        query.extend(slug.filter(|s| !s.is_empty()).map(|s| ("slug", s)));
        Ok(TurboStore {
            client,
            base,
            shown,
            token: token.filter(|t| !t.is_empty()),
            query,
            stall: DEFAULT_STALL_TIMEOUT,
            max_download: DEFAULT_MAX_DOWNLOAD,
            temp_dir: None,
        })
    }

    /// Gives up a request after `stall` without progress (default 60 s).
    pub fn with_stall_timeout(mut self, stall: Duration) -> TurboStore {
        self.stall = stall;
        self
    }

    /// Refuses downloads over `bytes` (default 4 GiB).
    pub fn with_max_download(mut self, bytes: u64) -> TurboStore {
        self.max_download = bytes;
        self
    }

    /// Downloads into `dir` (default: the system's temporary folder).
    /// Put it on the disk the entries are restored to, so blobs move by
    /// rename rather than copy.
    pub fn with_temp_dir(mut self, dir: impl Into<PathBuf>) -> TurboStore {
        self.temp_dir = Some(dir.into());
        self
    }

    fn request(&self, method: Method, key: &str) -> reqwest::RequestBuilder {
        let mut url = self.base.clone();
        let path = format!(
            "{}/v8/artifacts/{key}",
            self.base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        url.set_query(None);
        let mut request = self.client.request(method, url).query(&self.query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn head(&self, key: &str) -> Result<bool, CacheError> {
        check_key(key)?;
        let doing = format!("HEAD {key}");
        let progress = Progress::new();
        self.bounded(&doing, &progress, async {
            let response = self.send(self.request(Method::HEAD, key), &doing).await?;
            match response.status() {
                status if status.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(self.refusal(response, &doing, &progress).await),
            }
        })
        .await
    }

    async fn download(&self, key: &str) -> Result<Option<Fetched>, CacheError> {
        check_key(key)?;
        let doing = format!("GET {key}");
        let progress = Progress::new();
        self.bounded(&doing, &progress, async {
            let mut response = self.send(self.request(Method::GET, key), &doing).await?;
            progress.bump();
            match response.status() {
                StatusCode::NOT_FOUND => return Ok(None),
                status if status.is_success() => {}
                _ => return Err(self.refusal(response, &doing, &progress).await),
            }
            let tag = response
                .headers()
                .get(TAG_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let too_large = || CacheError::TooLarge {
                url: self.shown.clone(),
                key: key.to_owned(),
                limit: self.max_download,
            };
            if response
                .content_length()
                .is_some_and(|n| n > self.max_download)
            {
                return Err(too_large());
            }
            let (file, archive) = self.temp_file()?.into_parts();
            let mut out =
                tokio::io::BufWriter::with_capacity(BUFFER_BYTES, tokio::fs::File::from_std(file));
            let write_error = |e| CacheError::io(&*archive, "write the downloaded entry", e);
            let mut received = 0u64;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| self.unreachable(&doing, e))?
            {
                progress.bump();
                received += chunk.len() as u64;
                if received > self.max_download {
                    return Err(too_large());
                }
                out.write_all(&chunk).await.map_err(write_error)?;
            }
            out.flush().await.map_err(write_error)?;
            tracing::debug!(key, bytes = received, cache = %self.shown, "remote cache hit");
            Ok(Some(Fetched { archive, tag }))
        })
        .await
    }

    async fn upload(
        &self,
        key: &str,
        archive: &Path,
        tag: Option<&str>,
        duration_ms: u64,
    ) -> Result<(), CacheError> {
        check_key(key)?;
        let doing = format!("PUT {key}");
        let read_error = |e| CacheError::io(archive, "read the entry to upload it", e);
        let file = tokio::fs::File::open(archive).await.map_err(read_error)?;
        let size = file.metadata().await.map_err(read_error)?.len();
        let progress = Progress::new();
        let body_progress = Arc::clone(&progress);
        let body = tokio_util::io::ReaderStream::with_capacity(file, BUFFER_BYTES)
            .inspect(move |_| body_progress.bump());
        let mut request = self
            .request(Method::PUT, key)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .header(DURATION_HEADER, duration_ms)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(tag) = tag {
            request = request.header(TAG_HEADER, tag);
        }
        self.bounded(&doing, &progress, async {
            let response = self.send(request, &doing).await?;
            if response.status().is_success() {
                tracing::debug!(key, bytes = size, cache = %self.shown, "stored in the remote cache");
                return Ok(());
            }
            let mut error = self.refusal(response, &doing, &progress).await;
            if let CacheError::Http { status: 413, body, .. } = &mut error {
                body.push_str(&format!(
                    " (the entry is {size} bytes: raise the server's upload limit, \
                     BODY_LIMIT on turborepo-remote-cache)"
                ));
            }
            Err(error)
        })
        .await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        doing: &str,
    ) -> Result<reqwest::Response, CacheError> {
        request.send().await.map_err(|e| self.unreachable(doing, e))
    }

    /// Runs `work`, giving up once `progress` has not moved for the stall
    /// timeout.
    async fn bounded<T>(
        &self,
        doing: &str,
        progress: &Progress,
        work: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        tokio::pin!(work);
        loop {
            let deadline = progress.last() + self.stall;
            tokio::select! {
                result = &mut work => return result,
                () = tokio::time::sleep_until(deadline) => {
                    if progress.last() + self.stall <= Instant::now() {
                        return Err(CacheError::Unreachable {
                            url: self.shown.clone(),
                            doing: doing.to_owned(),
                            reason: format!("no progress for {} s", self.stall.as_secs_f32()),
                        });
                    }
                }
            }
        }
    }

    /// The error for a status that is neither success nor 404.
    async fn refusal(
        &self,
        mut response: reqwest::Response,
        doing: &str,
        progress: &Progress,
    ) -> CacheError {
        let status = response.status().as_u16();
        if matches!(status, 401 | 403) {
            return CacheError::Unauthorized {
                url: self.shown.clone(),
                doing: doing.to_owned(),
                status,
            };
        }
        let mut body = Vec::with_capacity(MAX_ERROR_BODY);
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    progress.bump();
                    body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY - body.len())]);
                }
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        CacheError::Http {
            url: self.shown.clone(),
            doing: doing.to_owned(),
            status,
            body: if text.is_empty() {
                "(no body)".to_owned()
            } else {
                text
            },
        }
    }

    fn unreachable(&self, doing: &str, error: reqwest::Error) -> CacheError {
        // Without the request's URL: it would repeat the base unredacted.
        let error = error.without_url();
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        CacheError::Unreachable {
            url: self.shown.clone(),
            doing: doing.to_owned(),
            reason,
        }
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile, CacheError> {
        let dir = self.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix(".muster-download-")
            .tempfile_in(&dir)
            .map_err(|e| CacheError::io(&dir, "create a file to download the entry into", e))
    }
}

impl Store for TurboStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Fetched>> {
        Box::pin(self.download(key))
    }

    fn contains<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(self.head(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        archive: &'a Path,
        tag: Option<&'a str>,
        duration_ms: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.upload(key, archive, tag, duration_ms))
    }

    fn describe(&self) -> String {
        format!("the remote cache at {}", self.shown)
    }
}

/// When a transfer last moved, shared with the upload body's stream.
struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last progress.
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn bump(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}
