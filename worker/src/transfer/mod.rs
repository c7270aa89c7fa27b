//! Artifacts on the worker's side: finding the files a module produced
//! ([`find_produced`]), naming them by content ([`describe_artifact`]), and
//! moving them to and from the hub's content-addressed store
//! ([`Transfer::upload`], [`Transfer::download`]) over
//! `{hub}/artifacts/{sha256}`. This file holds the public types; the work
//! is in `produced` (glob walk, link safety), `hash`, `upload`, `download`,
//! `http` (failures, retries, URLs), `destination` (where a download may
//! write) and `cache` (the local blob cache, its locks and temp files).
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
//!   never the token;
//! - nothing is printed: progress goes to the [`WorkerObserver`].

mod cache;
mod destination;
mod download;
mod hash;
mod http;
mod produced;
mod upload;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster_core::url::redact_url;
use muster_core::wire::http::{http_url, BadHubUrl};

use crate::observer::{Silent, WorkerObserver};

pub use destination::Refusal;
pub use hash::describe_artifact;
pub use http::{describe_reqwest, Failure};
pub use produced::{find_produced, listed_bytes, Found, ProducedError, MAX_LISTED_BYTES};

/// Transfers larger than this are worth a progress bar and a log line with
/// their throughput.
pub const LARGE_TRANSFER: u64 = 4 * 1024 * 1024;

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
    /// How long a request keeps trying while the hub cannot be connected
    /// to at all, beyond `attempts`: a worker whose run moves to a new
    /// master (CI failover) waits for it rather than failing the module.
    /// Zero: connection failures count as any other.
    pub hub_away_patience: Duration,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            attempts: 3,
            first_backoff: Duration::from_millis(500),
            hub_away_patience: Duration::ZERO,
        }
    }
}

/// The worker's client of the hub's artifact store, with its cache.
/// Cheap to clone; clones share the cache's per-digest locks.
#[derive(Clone)]
pub struct Transfer {
    client: reqwest::Client,
    /// The hub's URL and how logs show it, shared by every clone: when the
    /// worker follows its run to a new master ([`Transfer::move_to`]),
    /// transfers under way go on against the new hub.
    hub: Arc<std::sync::RwLock<HubAddress>>,
    token: String,
    cache: PathBuf,
    settings: TransferSettings,
    locks: cache::DigestLocks,
    /// Told of every transfer's progress.
    observer: Arc<dyn WorkerObserver>,
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

/// Why an artifact could not be moved to or from the hub.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("artifact {path:?} from module {from} refused: {reason}")]
    UnsafePath {
        from: String,
        path: String,
        reason: Refusal,
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
    Client(reqwest::Error),
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
    ) -> Result<Transfer, TransferError> {
        let hub = HubAddress::parse(hub_url)?;
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(TransferError::Client)?;
        Ok(Transfer {
            client,
            hub: Arc::new(std::sync::RwLock::new(hub)),
            token: token.into(),
            cache: cache_dir.into(),
            settings,
            locks: cache::DigestLocks::default(),
            observer: Arc::new(Silent),
        })
    }

    /// Tells `observer` of every transfer's progress (instead of no one).
    pub fn observed_by(mut self, observer: Arc<dyn WorkerObserver>) -> Transfer {
        self.observer = observer;
        self
    }

    /// Moves every clone to the hub at `hub_url` (the run's new master).
    pub fn move_to(&self, hub_url: &str) -> Result<(), TransferError> {
        let hub = HubAddress::parse(hub_url)?;
        *self.hub.write().unwrap_or_else(|e| e.into_inner()) = hub;
        Ok(())
    }

    fn address(&self) -> std::sync::RwLockReadGuard<'_, HubAddress> {
        self.hub.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A hub's URL for transfers.
#[derive(Debug, Clone)]
struct HubAddress {
    /// http(s), without a trailing slash on its path (see
    /// [`Transfer::url`]).
    url: String,
    /// `url` as logs and errors show it ([`redact_url`]).
    shown: String,
}

impl HubAddress {
    fn parse(hub_url: &str) -> Result<HubAddress, TransferError> {
        let url = http_url(hub_url).map_err(|BadHubUrl(shown)| TransferError::BadHubUrl(shown))?;
        reqwest::Url::parse(&url).map_err(|_| TransferError::BadHubUrl(redact_url(hub_url)))?;
        let shown = redact_url(&url);
        Ok(HubAddress { url, shown })
    }
}

impl fmt::Debug for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfer")
            .field("hub", &self.address().shown)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
