//! Artifacts on the worker's side: finding the files a module produced
//! ([`find_produced`]), naming them by content ([`describe`]), and moving
//! them to and from the hub's content-addressed store
//! ([`Transfer::upload`], [`Transfer::download`]) over
//! `{hub}/artifacts/{sha256}`.
//!
//! Invariants:
//! - only regular files inside the module's cwd are artifacts; a link is
//!   followed only to a regular file inside the cwd, links to folders never;
//! - a download writes only below the cwd, through real folders (never
//!   through a link), and never leaves anything half-written at its
//!   destination: bytes go to a temp file beside it, are checked against the
//!   artifact's size and SHA-256, and only then renamed over it;
//! - one digest is fetched from the hub once per worker: a verified copy is
//!   kept in the cache folder (`<cache>/<sha256>`), and a per-digest lock
//!   makes modules that want the same file at the same time wait for the
//!   first download instead of repeating it;
//! - no transfer waits without a bound: a body that moves no byte for the
//!   stall timeout fails, and transient failures are retried a bounded
//!   number of times;
//! - every transfer error names the artifact's path, its module and the URL,
//!   never the token.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use globset::{GlobBuilder, GlobMatcher};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use muster_core::protocol::{Artifact, Consumed};
use muster_core::url::{self, redact_url};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::{timeout, Instant};

/// Bytes read, hashed and written at a time.
const CHUNK: usize = 64 * 1024;
/// Transfers larger than this show a progress bar (when stderr is a
/// terminal) and log their throughput.
pub const LARGE_TRANSFER: u64 = 4 * 1024 * 1024;

/// How much of a `Complete` record the artifact list may take, and what
/// one artifact adds to it: sizes the hub and the worker share.
pub use muster_core::wire::limits::{listed_bytes, MAX_LISTED_BYTES};

/// A file a module produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Relative to the module's cwd, `/`-separated, normalised: the
    /// artifact's name for its consumers.
    pub path: String,
    /// The file to read: the path itself, or for a link the file it leads
    /// to (inside the cwd).
    pub file: PathBuf,
}

/// How transfers behave.
#[derive(Debug, Clone)]
pub struct TransferSettings {
    /// Bound on opening a connection to the hub.
    pub connect_timeout: Duration,
    /// A transfer that moves no byte for this long fails (and may be
    /// retried).
    pub stall_timeout: Duration,
    /// Tries per request, the first included; only transient failures
    /// (no connection, 5xx, 408, 429, a stall, a cut body) are tried again.
    pub attempts: u32,
    /// The wait before the first retry, doubled before each next one.
    pub first_backoff: Duration,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            attempts: 3,
            first_backoff: Duration::from_millis(500),
        }
    }
}

/// The worker's client of the hub's artifact store, with its cache.
/// Cheap to clone; clones share the cache's per-digest locks.
#[derive(Clone)]
pub struct Transfer {
    client: reqwest::Client,
    /// The hub's URL, http(s), without a trailing slash on its path (see
    /// [`Transfer::url`]).
    hub: String,
    /// `hub` as logs and errors show it ([`redact_url`]).
    shown_hub: String,
    token: String,
    cache: PathBuf,
    settings: TransferSettings,
    /// One lock per digest being fetched; dead entries are pruned.
    locks: Arc<StdMutex<HashMap<String, Weak<AsyncMutex<()>>>>>,
}

/// Bytes moved over the network and how long it took, for the module's
/// log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub bytes: u64,
    pub elapsed: Duration,
}

/// What [`Transfer::upload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// The hub already had this content (it answered HEAD with 200).
    AlreadyStored,
    Sent(Moved),
}

/// What [`Transfer::download`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// The destination already held the right content.
    AlreadyThere,
    /// Copied from this worker's cache: another module fetched it before.
    FromCache(Moved),
    /// Fetched from the hub (and kept in the cache).
    Downloaded(Moved),
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "its artifact patterns matched {files} files, too many for one report (listing them takes \
         {listed} KiB of the {allowed} KiB allowed): pack them into one archive in the command \
         (e.g. `tar czf out.tar.gz out/`) and produce that"
    )]
    TooMany {
        files: usize,
        listed: usize,
        allowed: usize,
    },
    #[error("artifact pattern {pattern:?} {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error(
        "artifact pattern {pattern:?} matched no file in {} (a folder is not an artifact: \
         `dir/**` names its files; links to folders are not followed; a pattern that may \
         match nothing starts with `?`)",
        cwd.display()
    )]
    NoMatch { pattern: String, cwd: PathBuf },
    #[error("artifact {path} points outside the module's folder (to {})", target.display())]
    OutsideCwd { path: String, target: PathBuf },
    #[error("artifact {path} is a link to {what}; only regular files are artifacts")]
    NotAFile { path: String, what: &'static str },
    #[error("artifact {path:?} from module {from} refused: {reason}")]
    UnsafePath {
        from: String,
        path: String,
        reason: String,
    },
    /// A local file operation failed; `doing` says on what and why.
    #[error("{doing} {}: {error}", file.display())]
    Io {
        doing: String,
        file: PathBuf,
        error: io::Error,
    },
    #[error(
        "artifact {path} of module {module}: {failure} ({method} {url}{})",
        if *attempts > 1 { format!(", {attempts} attempts") } else { String::new() }
    )]
    Transfer {
        path: String,
        module: String,
        method: &'static str,
        url: String,
        attempts: u32,
        failure: Box<Failure>,
    },
    /// The hub URL, redacted.
    #[error("hub URL {0:?} must start with http://, https://, ws:// or wss://")]
    BadHubUrl(String),
    #[error("could not set up the HTTP client: {0}")]
    Client(String),
}

/// Why one transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the hub answered {status}{hint}")]
    Status {
        status: StatusCode,
        hint: &'static str,
    },
    #[error("could not reach the hub: {0}")]
    Network(String),
    #[error("stalled: no byte moved for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error("truncated: the body ended after {got} of {expected} bytes{}", cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Truncated {
        got: u64,
        expected: u64,
        cause: Option<String>,
    },
    #[error("digest mismatch: expected {expected}, got {got}")]
    DigestMismatch { expected: String, got: String },
    #[error("size mismatch: expected {expected} bytes, the hub sent {sent}")]
    SizeMismatch { expected: u64, sent: String },
    #[error("the file changed since it was hashed (now {now} bytes, was {expected}); the module must not change its artifacts after it ended")]
    Changed { expected: u64, now: u64 },
    #[error("could not {doing} {}: {error}", file.display())]
    Disk {
        doing: &'static str,
        file: PathBuf,
        error: io::Error,
    },
}

impl Failure {
    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Network(_) | Failure::Stalled(_) | Failure::Truncated { .. } => true,
            Failure::DigestMismatch { .. }
            | Failure::SizeMismatch { .. }
            | Failure::Changed { .. }
            | Failure::Disk { .. } => false,
        }
    }
}

/// Finds the regular files under `cwd` that `patterns` name, each its own
/// artifact at its own relative path, sorted by path. Patterns are relative
/// globs (`target/release/app`, `dist/**/*.tar.gz`, `*` not crossing `/`);
/// one starting with `?` may match nothing. Blocking: call it from
/// `spawn_blocking`.
pub fn find_produced(cwd: &Path, patterns: &[String]) -> Result<Vec<Found>, ArtifactError> {
    let real_cwd = cwd.canonicalize().map_err(|error| ArtifactError::Io {
        doing: "could not look for artifacts in".into(),
        file: cwd.to_owned(),
        error,
    })?;
    let mut found = BTreeMap::new();
    for raw in patterns {
        let pattern = Pattern::parse(raw)?;
        let mut matched = 0;
        for (path, file) in pattern.walk(cwd)? {
            matched += 1;
            let file = match file {
                Entry::File(file) => file,
                Entry::Link(link) => follow(&real_cwd, &link, &path)?,
            };
            found.insert(path.clone(), Found { path, file });
        }
        if matched == 0 && !pattern.optional {
            return Err(ArtifactError::NoMatch {
                pattern: raw.clone(),
                cwd: cwd.to_owned(),
            });
        }
    }
    let listed: usize = found.keys().map(|path| listed_bytes(path)).sum();
    if listed > MAX_LISTED_BYTES {
        return Err(ArtifactError::TooMany {
            files: found.len(),
            listed: listed.div_ceil(1024),
            allowed: MAX_LISTED_BYTES / 1024,
        });
    }
    Ok(found.into_values().collect())
}

/// Size, SHA-256 and mode bits of a found file, read in [`CHUNK`]s.
pub async fn describe(found: &Found) -> Result<Artifact, ArtifactError> {
    let file = found.file.clone();
    let hashed = tokio::task::spawn_blocking(move || -> io::Result<(u64, String, u32)> {
        let mut input = std::fs::File::open(&file)?;
        let mode = input.metadata()?.permissions().mode() & 0o7777;
        let (size, sha256) = hash_reader(&mut input, None)?;
        Ok((size, sha256, mode))
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)));
    let (size, sha256, mode) = hashed.map_err(|error| ArtifactError::Io {
        doing: format!("artifact {}: could not read", found.path),
        file: found.file.clone(),
        error,
    })?;
    Ok(Artifact {
        path: found.path.clone(),
        size,
        sha256,
        mode,
    })
}

impl Transfer {
    /// A client of the store of the hub at `hub_url` (`http(s)://…/hub`, or
    /// its `ws(s)://` form), caching downloads in `cache_dir` (created when
    /// first needed).
    pub fn new(
        hub_url: &str,
        token: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
        settings: TransferSettings,
    ) -> Result<Transfer, ArtifactError> {
        let mapped = [
            ("http://", "http://"),
            ("https://", "https://"),
            ("ws://", "http://"),
            ("wss://", "https://"),
        ]
        .iter()
        .find_map(|(from, to)| hub_url.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .ok_or_else(|| ArtifactError::BadHubUrl(redact_url(hub_url)))?;
        reqwest::Url::parse(&mapped).map_err(|_| ArtifactError::BadHubUrl(redact_url(hub_url)))?;
        let hub = url::join(&mapped, "");
        let shown_hub = redact_url(&hub);
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(|e| ArtifactError::Client(e.to_string()))?;
        Ok(Transfer {
            client,
            hub,
            shown_hub,
            token: token.into(),
            cache: cache_dir.into(),
            settings,
            locks: Arc::default(),
        })
    }

    /// Stores a described artifact of `module`, read from `cwd`, on the hub:
    /// HEAD first, and a streamed PUT only if the hub lacks the content.
    pub async fn upload(
        &self,
        module: &str,
        cwd: &Path,
        artifact: &Artifact,
    ) -> Result<Uploaded, ArtifactError> {
        let refuse = |reason: String| ArtifactError::UnsafePath {
            from: module.to_owned(),
            path: artifact.path.clone(),
            reason,
        };
        check_digest(&artifact.sha256).map_err(refuse)?;
        safe_parts(&artifact.path).map_err(refuse)?;
        let file = cwd.join(&artifact.path);
        let failed = |method| self.failed(module, &artifact.path, &artifact.sha256, method);
        let stored = self
            .retrying(|| self.head(&artifact.sha256))
            .await
            .map_err(failed("HEAD"))?;
        if stored {
            return Ok(Uploaded::AlreadyStored);
        }
        let begun = Instant::now();
        self.retrying(|| self.put(&file, artifact))
            .await
            .map_err(failed("PUT"))?;
        let moved = Moved {
            bytes: artifact.size,
            elapsed: begun.elapsed(),
        };
        moved.log("uploaded", &artifact.path, module);
        Ok(Uploaded::Sent(moved))
    }

    /// Puts a consumed artifact at its path under `cwd`, with its mode:
    /// checked for safety first, skipped if the right content is already
    /// there, copied from the cache if this worker fetched it before, else
    /// fetched from the hub into the cache and copied from there.
    pub async fn download(
        &self,
        cwd: &Path,
        consumed: &Consumed,
    ) -> Result<Fetched, ArtifactError> {
        let artifact = &consumed.artifact;
        let from = consumed.from.as_str();
        let Some(destination) = destination(cwd, consumed).await? else {
            return Ok(Fetched::AlreadyThere);
        };
        let begun = Instant::now();
        let cached = self.cache.join(&artifact.sha256);
        // The cache is only ever written under this lock, and only by a
        // rename of a verified file, so what is there is whole.
        let lock = self.lock_for(&artifact.sha256);
        let mut fetched = {
            let _held = lock.lock().await;
            let cached_already = cache_holds(&cached, artifact.size).await;
            if !cached_already {
                self.fetch(&cached, consumed).await?;
            }
            !cached_already
        };
        match place(&cached, &destination, artifact).await {
            Ok(()) => {}
            // The cached copy was damaged on disk since it was verified:
            // drop it and fetch again, once.
            Err(Placed::Corrupt(_)) if !fetched => {
                let _held = lock.lock().await;
                let _ = tokio::fs::remove_file(&cached).await;
                self.fetch(&cached, consumed).await?;
                fetched = true;
                place(&cached, &destination, artifact)
                    .await
                    .map_err(|e| e.into_error(self, from, artifact))?;
            }
            Err(e) => return Err(e.into_error(self, from, artifact)),
        }
        let moved = Moved {
            bytes: artifact.size,
            elapsed: begun.elapsed(),
        };
        if fetched {
            moved.log("downloaded", &artifact.path, from);
            Ok(Fetched::Downloaded(moved))
        } else {
            Ok(Fetched::FromCache(moved))
        }
    }

    /// GETs the content into the cache, retrying transient failures.
    async fn fetch(&self, cached: &Path, consumed: &Consumed) -> Result<(), ArtifactError> {
        let artifact = &consumed.artifact;
        self.retrying(|| self.get(cached, artifact, &consumed.from))
            .await
            .map_err(self.failed(&consumed.from, &artifact.path, &artifact.sha256, "GET"))
    }

    /// `{hub}/artifacts/{sha256}`, with the hub URL's query (if any) after
    /// it; one slash between the parts whether or not the hub URL ended
    /// with one.
    fn url(&self, sha256: &str) -> String {
        artifact_url(&self.hub, sha256)
    }

    /// [`Transfer::url`] as logs and errors show it.
    fn shown_url(&self, sha256: &str) -> String {
        artifact_url(&self.shown_hub, sha256)
    }

    fn failed<'a>(
        &'a self,
        module: &'a str,
        path: &'a str,
        sha256: &'a str,
        method: &'static str,
    ) -> impl FnOnce((Failure, u32)) -> ArtifactError + 'a {
        move |(failure, attempts)| ArtifactError::Transfer {
            path: path.to_owned(),
            module: module.to_owned(),
            method,
            url: self.shown_url(sha256),
            attempts,
            failure: Box::new(failure),
        }
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried
    /// `attempts` times, with doubling waits between tries. The error comes
    /// with the number of tries made.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, (Failure, u32)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut wait = self.settings.first_backoff;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(failure) if failure.is_transient() && attempt < self.settings.attempts => {
                    tracing::warn!(
                        attempt,
                        "artifact transfer failed: {failure}; trying again in {}",
                        humantime::format_duration(wait)
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(failure) => return Err((failure, attempt)),
            }
        }
    }

    /// Whether the hub has the content.
    async fn head(&self, sha256: &str) -> Result<bool, Failure> {
        let request = self
            .client
            .head(self.url(sha256))
            .bearer_auth(&self.token)
            .send();
        let response = self.bounded(request).await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(status_failure(status)),
        }
    }

    /// Streams the file to the hub, failing if no byte moves (or no answer
    /// comes after the last one) for the stall timeout.
    async fn put(&self, file: &Path, artifact: &Artifact) -> Result<(), Failure> {
        let disk = |doing| {
            move |error| Failure::Disk {
                doing,
                file: file.to_owned(),
                error,
            }
        };
        let input = tokio::fs::File::open(file).await.map_err(disk("open"))?;
        let now = input.metadata().await.map_err(disk("read"))?.len();
        if now != artifact.size {
            return Err(Failure::Changed {
                expected: artifact.size,
                now,
            });
        }
        let bar = progress_bar(artifact.size, &format!("↑ {}", artifact.path));
        let last_progress = Arc::new(StdMutex::new(Instant::now()));
        let body = {
            let (bar, last_progress) = (bar.0.clone(), last_progress.clone());
            let chunks =
                tokio_util::io::ReaderStream::with_capacity(input.take(artifact.size), CHUNK);
            chunks.inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    bar.inc(chunk.len() as u64);
                    *last_progress.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                }
            })
        };
        let request = self
            .client
            .put(self.url(&artifact.sha256))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_LENGTH, artifact.size)
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let response = tokio::select! {
            response = request => response.map_err(network),
            () = stalled(&last_progress, self.settings.stall_timeout) => {
                Err(Failure::Stalled(self.settings.stall_timeout))
            }
        };
        match response?.status() {
            StatusCode::OK | StatusCode::CREATED => Ok(()),
            status => Err(status_failure(status)),
        }
    }

    /// Fetches the content into the cache: a temp file beside `cached`,
    /// hashed while written, renamed into place once size and digest match.
    async fn get(&self, cached: &Path, artifact: &Artifact, from: &str) -> Result<(), Failure> {
        let request = self
            .client
            .get(self.url(&artifact.sha256))
            .bearer_auth(&self.token)
            .send();
        let mut response = self.bounded(request).await?;
        if response.status() != StatusCode::OK {
            return Err(status_failure(response.status()));
        }
        if let Some(announced) = response.content_length() {
            if announced != artifact.size {
                return Err(Failure::SizeMismatch {
                    expected: artifact.size,
                    sent: format!("Content-Length {announced}"),
                });
            }
        }
        let disk = |doing, file: &Path| {
            let file = file.to_owned();
            move |error| Failure::Disk { doing, file, error }
        };
        tokio::fs::create_dir_all(&self.cache)
            .await
            .map_err(disk("create the cache folder", &self.cache))?;
        let (part, output) = Part::create(cached).map_err(disk("create a file in", &self.cache))?;
        let mut output = tokio::fs::File::from_std(output);
        let bar = progress_bar(artifact.size, &format!("↓ {} ({from})", artifact.path));
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let stall = self.settings.stall_timeout;
        loop {
            let chunk = match timeout(stall, response.chunk()).await {
                Err(_) => return Err(Failure::Stalled(stall)),
                Ok(Err(e)) => {
                    return Err(Failure::Truncated {
                        got,
                        expected: artifact.size,
                        cause: Some(describe_reqwest(e)),
                    })
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            got += chunk.len() as u64;
            if got > artifact.size {
                return Err(Failure::SizeMismatch {
                    expected: artifact.size,
                    sent: "more".into(),
                });
            }
            hasher.update(&chunk);
            output
                .write_all(&chunk)
                .await
                .map_err(disk("write", &part.path))?;
            bar.0.inc(chunk.len() as u64);
        }
        if got < artifact.size {
            return Err(Failure::Truncated {
                got,
                expected: artifact.size,
                cause: None,
            });
        }
        let digest = hex(hasher);
        if digest != artifact.sha256 {
            return Err(Failure::DigestMismatch {
                expected: artifact.sha256.clone(),
                got: digest,
            });
        }
        output.flush().await.map_err(disk("write", &part.path))?;
        drop(output);
        part.persist(cached).map_err(disk("rename into", cached))
    }

    /// A request's answer (headers), failing after the stall timeout.
    async fn bounded(
        &self,
        request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    ) -> Result<reqwest::Response, Failure> {
        match timeout(self.settings.stall_timeout, request).await {
            Err(_) => Err(Failure::Stalled(self.settings.stall_timeout)),
            Ok(response) => response.map_err(network),
        }
    }

    /// The lock of one digest, shared by everyone fetching it now.
    fn lock_for(&self, sha256: &str) -> Arc<AsyncMutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(sha256).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(AsyncMutex::new(()));
        locks.insert(sha256.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

impl fmt::Debug for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfer")
            .field("hub", &self.shown_hub)
            .field("token", &"***")
            .field("cache", &self.cache)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Moved {
    /// Megabytes (10⁶ bytes) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-6)
    }

    /// Logs a large transfer's size and throughput.
    fn log(&self, what: &str, path: &str, module: &str) {
        if self.bytes > LARGE_TRANSFER {
            tracing::info!(
                artifact = path,
                module,
                bytes = self.bytes,
                seconds = self.elapsed.as_secs_f64(),
                mb_per_s = self.megabytes_per_second(),
                "{what} {self}"
            );
        }
    }
}

impl fmt::Display for Moved {
    /// `12.3 MB in 1.2s (10.2 MB/s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} MB in {:.1}s ({:.1} MB/s)",
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.megabytes_per_second()
        )
    }
}

/// A parsed artifact pattern.
struct Pattern {
    raw: String,
    optional: bool,
    matcher: GlobMatcher,
    /// The leading folders without glob characters: the walk starts there.
    base: Vec<String>,
    /// How many levels below `base` a match can be; `None` with `**`.
    depth: Option<usize>,
}

/// A walked path that matched: a regular file, or a link to resolve.
enum Entry {
    File(PathBuf),
    Link(PathBuf),
}

impl Pattern {
    fn parse(raw: &str) -> Result<Pattern, ArtifactError> {
        let bad = |reason: &str| ArtifactError::BadPattern {
            pattern: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let (optional, glob) = match raw.strip_prefix('?') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if glob.starts_with('/') {
            return Err(bad("is absolute: name files relative to the module's cwd"));
        }
        let parts: Vec<&str> = glob
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        if parts.contains(&"..") {
            return Err(bad("leaves the module's cwd with `..`"));
        }
        if parts.is_empty() {
            return Err(bad("names no file"));
        }
        let normalised = parts.join("/");
        let matcher = GlobBuilder::new(&normalised)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| bad(&format!("is not a valid glob: {}", e.kind())))?
            .compile_matcher();
        let is_literal = |part: &&&str| !part.contains(['*', '?', '[', ']', '{', '}', '\\']);
        let base: Vec<String> = parts[..parts.len() - 1]
            .iter()
            .take_while(is_literal)
            .map(|part| part.to_string())
            .collect();
        let rest = &parts[base.len()..];
        let depth = (!rest.iter().any(|part| part.contains("**"))).then_some(rest.len());
        Ok(Pattern {
            raw: raw.to_owned(),
            optional,
            matcher,
            base,
            depth,
        })
    }

    /// The matching files and links below the pattern's base, walked
    /// without recursion and without entering links.
    fn walk(&self, cwd: &Path) -> Result<Vec<(String, Entry)>, ArtifactError> {
        let unreadable = |file: &Path, error| ArtifactError::Io {
            doing: format!("artifact pattern {:?}: could not read", self.raw),
            file: file.to_owned(),
            error,
        };
        let mut start = cwd.to_owned();
        for part in &self.base {
            start.push(part);
            match std::fs::symlink_metadata(&start) {
                Ok(meta) if meta.is_dir() => {}
                // Missing, a file, or a link: nothing below it to match.
                Ok(_) => return Ok(Vec::new()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(unreadable(&start, e)),
            }
        }
        let mut matches = Vec::new();
        let mut folders = vec![(start, self.base.join("/"), 0usize)];
        while let Some((folder, relative, level)) = folders.pop() {
            let entries = std::fs::read_dir(&folder).map_err(|e| unreadable(&folder, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| unreadable(&folder, e))?;
                let kind = entry
                    .file_type()
                    .map_err(|e| unreadable(&entry.path(), e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let path = if relative.is_empty() {
                    name.into_owned()
                } else {
                    format!("{relative}/{name}")
                };
                if kind.is_dir() {
                    let deeper = match self.depth {
                        Some(depth) => level + 1 < depth,
                        None => true,
                    };
                    if deeper {
                        folders.push((entry.path(), path, level + 1));
                    }
                    continue;
                }
                if !(kind.is_file() || kind.is_symlink()) || !self.matcher.is_match(&path) {
                    continue;
                }
                if entry.file_name().to_str().is_none() {
                    return Err(ArtifactError::BadPattern {
                        pattern: self.raw.clone(),
                        reason: format!("matched {path:?}, whose name is not UTF-8"),
                    });
                }
                let entry = if kind.is_file() {
                    Entry::File(entry.path())
                } else {
                    Entry::Link(entry.path())
                };
                matches.push((path, entry));
            }
        }
        Ok(matches)
    }
}

/// Where a matched link leads, if that is a regular file inside the cwd.
fn follow(real_cwd: &Path, link: &Path, path: &str) -> Result<PathBuf, ArtifactError> {
    let target = std::fs::canonicalize(link).map_err(|_| ArtifactError::NotAFile {
        path: path.to_owned(),
        what: "nothing (it is broken)",
    })?;
    if !target.starts_with(real_cwd) {
        return Err(ArtifactError::OutsideCwd {
            path: path.to_owned(),
            target,
        });
    }
    match std::fs::metadata(&target) {
        Ok(meta) if meta.is_file() => Ok(target),
        Ok(meta) if meta.is_dir() => Err(ArtifactError::NotAFile {
            path: path.to_owned(),
            what: "a folder",
        }),
        _ => Err(ArtifactError::NotAFile {
            path: path.to_owned(),
            what: "something that is not a regular file",
        }),
    }
}

/// Where a consumed artifact goes under `cwd`, once its path is found safe
/// and its folders are made; `None` if the right content is already there.
async fn destination(cwd: &Path, consumed: &Consumed) -> Result<Option<PathBuf>, ArtifactError> {
    let artifact = &consumed.artifact;
    let from = consumed.from.as_str();
    let refuse = |reason: String| ArtifactError::UnsafePath {
        from: from.to_owned(),
        path: artifact.path.clone(),
        reason,
    };
    let local = |doing: &str, file: PathBuf, error| ArtifactError::Io {
        doing: format!(
            "artifact {} from module {from}: could not {doing}",
            artifact.path
        ),
        file,
        error,
    };
    check_digest(&artifact.sha256).map_err(refuse)?;
    let parts: Vec<String> = safe_parts(&artifact.path)
        .map_err(refuse)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (cwd, wanted) = (cwd.to_owned(), artifact.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let destination = prepare_parents(&cwd, &parts)?;
        let there = already_there(&destination, &wanted)
            .map_err(|e| Prepared::Io(destination.clone(), e))?;
        Ok((destination, there))
    })
    .await
    .unwrap_or_else(|e| Err(Prepared::Io(PathBuf::new(), io::Error::other(e))));
    match checked {
        Ok((_, There::Yes)) => Ok(None),
        Ok((destination, There::No)) => Ok(Some(destination)),
        Ok((_, There::Folder)) => Err(refuse("a folder is in its place".into())),
        Err(Prepared::Unsafe(reason)) => Err(refuse(reason)),
        Err(Prepared::Io(file, error)) => Err(local("prepare", file, error)),
    }
}

/// The parts of an artifact path that is relative, normalised and stays
/// below its folder; why not otherwise.
fn safe_parts(path: &str) -> Result<Vec<&str>, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.starts_with('/') {
        return Err("the path is absolute".into());
    }
    if path.contains('\0') {
        return Err("the path holds a NUL byte".into());
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err("the path has an empty part".into()),
            "." => return Err("the path has a `.` part".into()),
            ".." => return Err("the path climbs out with `..`".into()),
            _ => {}
        }
    }
    Ok(parts)
}

/// Refuses anything but 64 lower-case hex digits, before it goes into a URL
/// or a file name.
fn check_digest(sha256: &str) -> Result<(), String> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(format!("{sha256:?} is not a SHA-256 digest"))
    }
}

/// Why a destination's folders could not be made.
enum Prepared {
    Unsafe(String),
    Io(PathBuf, io::Error),
}

/// Makes the folders above `cwd/parts…`, each a real folder (a link, even
/// one that stays inside the cwd, is refused: nothing is written through
/// links), and returns the destination.
fn prepare_parents(cwd: &Path, parts: &[String]) -> Result<PathBuf, Prepared> {
    let (name, folders) = parts
        .split_last()
        .expect("safe_parts gives at least one part");
    std::fs::create_dir_all(cwd).map_err(|e| Prepared::Io(cwd.to_owned(), e))?;
    let mut folder = cwd.to_owned();
    for (i, part) in folders.iter().enumerate() {
        folder.push(part);
        let shown = || parts[..=i].join("/");
        let mut created = false;
        loop {
            match std::fs::symlink_metadata(&folder) {
                Ok(meta) if meta.is_dir() => break,
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Prepared::Unsafe(format!(
                        "{} is a link; artifacts are only written through real folders",
                        shown()
                    )))
                }
                Ok(_) => {
                    return Err(Prepared::Unsafe(format!(
                        "{} is a file, not a folder",
                        shown()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created => {
                    // Someone else may make it meanwhile: look again.
                    match std::fs::create_dir(&folder) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => created = true,
                        Err(e) => return Err(Prepared::Io(folder, e)),
                    }
                }
                Err(e) => return Err(Prepared::Io(folder, e)),
            }
        }
    }
    Ok(folder.join(name))
}

/// What is at a download's destination.
enum There {
    /// A regular file (not a link) with the artifact's content; its mode
    /// has been made the artifact's.
    Yes,
    /// Nothing, or something to replace.
    No,
    /// A folder, which a download does not replace.
    Folder,
}

fn already_there(destination: &Path, artifact: &Artifact) -> io::Result<There> {
    let meta = match std::fs::symlink_metadata(destination) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(There::No),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        return Ok(There::Folder);
    }
    if !meta.is_file() || meta.len() != artifact.size {
        return Ok(There::No);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(destination)?;
    let (_, sha256) = hash_reader(&mut file, None)?;
    if sha256 != artifact.sha256 {
        return Ok(There::No);
    }
    let mode = artifact.mode & 0o7777;
    if meta.permissions().mode() & 0o7777 != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(There::Yes)
}

/// Whether the cache holds a file of this size under the digest.
async fn cache_holds(cached: &Path, size: u64) -> bool {
    tokio::fs::symlink_metadata(cached)
        .await
        .is_ok_and(|meta| meta.is_file() && meta.len() == size)
}

/// Why a copy from the cache failed.
enum Placed {
    /// The cached file does not have the artifact's content.
    Corrupt(Failure),
    Io(&'static str, PathBuf, io::Error),
}

impl Placed {
    fn into_error(self, transfer: &Transfer, from: &str, artifact: &Artifact) -> ArtifactError {
        match self {
            Placed::Corrupt(failure) => ArtifactError::Transfer {
                path: artifact.path.clone(),
                module: from.to_owned(),
                method: "GET",
                url: transfer.shown_url(&artifact.sha256),
                attempts: 1,
                failure: Box::new(failure),
            },
            Placed::Io(doing, file, error) => ArtifactError::Io {
                doing: format!(
                    "artifact {} from module {from}: could not {doing}",
                    artifact.path
                ),
                file,
                error,
            },
        }
    }
}

/// Copies the cached content to a temp file beside `destination`, checking
/// size and digest on the way, sets the mode and renames it over the
/// destination. A copy, not a hard link: a module that changes the file it
/// consumed (or its mode) must not change the cache under other modules.
async fn place(cached: &Path, destination: &Path, artifact: &Artifact) -> Result<(), Placed> {
    let (cached, destination, artifact) =
        (cached.to_owned(), destination.to_owned(), artifact.clone());
    tokio::task::spawn_blocking(move || {
        let mut input = std::fs::File::open(&cached)
            .map_err(|e| Placed::Io("read the cached copy", cached.clone(), e))?;
        let (part, mut output) = Part::create(&destination)
            .map_err(|e| Placed::Io("create a file beside", destination.clone(), e))?;
        let written = hash_reader(&mut input, Some(&mut output))
            .map_err(|e| Placed::Io("copy to", part.path.clone(), e))?;
        let (size, sha256) = written;
        if size != artifact.size {
            return Err(Placed::Corrupt(Failure::SizeMismatch {
                expected: artifact.size,
                sent: format!("{size} bytes from the cache"),
            }));
        }
        if sha256 != artifact.sha256 {
            return Err(Placed::Corrupt(Failure::DigestMismatch {
                expected: artifact.sha256.clone(),
                got: sha256,
            }));
        }
        let mode = std::fs::Permissions::from_mode(artifact.mode & 0o7777);
        output
            .set_permissions(mode)
            .map_err(|e| Placed::Io("set the mode of", part.path.clone(), e))?;
        drop(output);
        part.persist(&destination)
            .map_err(|e| Placed::Io("rename into", destination.clone(), e))
    })
    .await
    .unwrap_or_else(|e| Err(Placed::Io("copy to", PathBuf::new(), io::Error::other(e))))
}

/// Reads `input` to its end in [`CHUNK`]s, hashing and, if given, writing
/// each chunk: the size and the lower-case hex SHA-256.
fn hash_reader(
    input: &mut impl Read,
    mut output: Option<&mut std::fs::File>,
) -> io::Result<(u64, String)> {
    let mut buffer = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        if let Some(output) = output.as_mut() {
            output.write_all(&buffer[..n])?;
        }
        size += n as u64;
    }
    Ok((size, hex(hasher)))
}

fn hex(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

/// A temp file beside a destination, removed when dropped unless renamed
/// over it: nothing half-written outlives a failure, a panic or a cancel.
struct Part {
    path: PathBuf,
    kept: bool,
}

impl Part {
    /// Creates `.<name>.muster-<random>.part` beside `destination`, new
    /// (never through an existing file or link), readable only by the
    /// worker until its mode is set.
    fn create(destination: &Path) -> io::Result<(Part, std::fs::File)> {
        let folder = destination.parent().unwrap_or(Path::new("."));
        let name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Keeps the temp name within the usual 255-byte limit.
        let mut cut = name.len().min(200);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        loop {
            let path = folder.join(format!(
                ".{}.muster-{:016x}.part",
                &name[..cut],
                rand::random::<u64>()
            ));
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match created {
                Ok(file) => return Ok((Part { path, kept: false }, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames the file over `destination` (atomically: readers see the
    /// old file or the whole new one).
    fn persist(mut self, destination: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, destination)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Resolves once no byte has moved for `stall` since the last progress.
async fn stalled(last_progress: &StdMutex<Instant>, stall: Duration) {
    loop {
        let due = *last_progress.lock().unwrap_or_else(PoisonError::into_inner) + stall;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// A progress bar, cleared from the terminal however the transfer ends.
struct Bar(ProgressBar);

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar on stderr for a large transfer when stderr is a
/// terminal; a hidden one otherwise.
fn progress_bar(size: u64, message: &str) -> Bar {
    if size <= LARGE_TRANSFER || !io::stderr().is_terminal() {
        return Bar(ProgressBar::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    Bar(bar)
}

/// The URL of one blob in the store of the hub at `hub`.
fn artifact_url(hub: &str, sha256: &str) -> String {
    url::join(hub, &format!("artifacts/{sha256}"))
}

fn status_failure(status: StatusCode) -> Failure {
    let hint = match status {
        StatusCode::UNAUTHORIZED => ": the hub refused the token",
        StatusCode::NOT_FOUND => ": the hub does not have this content",
        StatusCode::BAD_REQUEST => ": the hub refused the digest",
        StatusCode::PAYLOAD_TOO_LARGE => ": the file is larger than the hub accepts",
        StatusCode::UNPROCESSABLE_ENTITY => ": the bytes it got do not match the digest",
        StatusCode::REQUEST_TIMEOUT => ": it waited too long for the bytes",
        _ => "",
    };
    Failure::Status { status, hint }
}

fn network(error: reqwest::Error) -> Failure {
    Failure::Network(describe_reqwest(error))
}

/// A reqwest error with its causes, without the URL (the caller names it,
/// redacted).
pub fn describe_reqwest(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_pattern(raw: &str, base: &[&str], depth: Option<usize>) {
        let pattern = Pattern::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(pattern.base, base, "{raw}");
        assert_eq!(pattern.depth, depth, "{raw}");
    }

    #[test]
    fn artifact_urls_sit_below_the_hub_with_one_slash() {
        let settings = TransferSettings::default;
        let cases = [
            ("http://h:1/hub", "http://h:1/hub/artifacts/ab"),
            ("http://h:1/hub/", "http://h:1/hub/artifacts/ab"),
            ("ws://h:1/hub/", "http://h:1/hub/artifacts/ab"),
            ("wss://h/x/hub", "https://h/x/hub/artifacts/ab"),
            (
                "https://h/hub/?access_token=t",
                "https://h/hub/artifacts/ab?access_token=t",
            ),
        ];
        for (hub, expected) in cases {
            let transfer = Transfer::new(hub, "t", "/nonexistent", settings()).unwrap();
            assert_eq!(transfer.url("ab"), expected, "{hub}");
            let url = transfer.url("ab");
            let (_, after_scheme) = url.split_once("://").unwrap();
            assert!(!after_scheme.contains("//"), "{hub}");
        }
        // What errors and logs show hides the token and the password.
        let transfer = Transfer::new(
            "http://u:pw-s3cret@h/hub/?access_token=tok-s3cret",
            "t",
            "/nonexistent",
            settings(),
        )
        .unwrap();
        assert_eq!(
            transfer.shown_url("ab"),
            "http://u:***@h/hub/artifacts/ab?access_token=***"
        );
        assert!(!format!("{transfer:?}").contains("s3cret"));
        let bad = Transfer::new("ftp://h/hub?token=s3cret", "t", "/x", settings())
            .err()
            .unwrap()
            .to_string();
        assert!(
            bad.contains("ftp://h/hub?token=***") && !bad.contains("s3cret"),
            "{bad}"
        );
    }

    #[test]
    fn patterns_walk_from_their_literal_folders() {
        check_pattern("target/release/app", &["target", "release"], Some(1));
        check_pattern("./dist//*.tar.gz", &["dist"], Some(1));
        check_pattern("dist/**/*.tar.gz", &["dist"], None);
        check_pattern("?out/*/x", &["out"], Some(2));
        check_pattern("*.txt", &[], Some(1));
    }

    #[test]
    fn artifact_paths_must_stay_below_their_folder() {
        for good in ["a", "a/b.txt", ".hidden", "a/..b"] {
            assert!(safe_parts(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/",
            "a/.",
        ] {
            assert!(safe_parts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_64_lower_case_hex_digits() {
        assert!(check_digest(&"ab".repeat(32)).is_ok());
        for bad in ["", "AB", "../x", &"AB".repeat(32), &"ab".repeat(33)] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_part_file_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("out.bin");
        let (part, _) = Part::create(&destination).unwrap();
        let name = part.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with(".out.bin.muster-") && name.ends_with(".part"));
        drop(part);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let (part, mut file) = Part::create(&destination).unwrap();
        file.write_all(b"x").unwrap();
        part.persist(&destination).unwrap();
        assert_eq!(std::fs::read(&destination).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
