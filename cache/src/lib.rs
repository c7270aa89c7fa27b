//! muster's result cache: a module whose inputs did not change is not run
//! again. This crate keeps the entries; the runner decides when to use one.
//!
//! - [`hash_inputs`] hashes the files a module reads, for its key.
//! - An entry is one byte stream per key ([`write_entry`] / [`read_entry`]):
//!   a tar of the manifest (outputs, exit code, log, artifact list) and the
//!   artifacts' blobs, so it maps onto one Turborepo artifact.
//! - [`sign`] / [`verify`] tag an entry with HMAC-SHA256, so a store that
//!   others can write to cannot hand back an entry muster did not make.
//! - A [`Store`] keeps entries: [`LocalStore`] (a folder with an LRU size
//!   cap, safe for concurrent runs) or [`TurboStore`] (any server speaking
//!   the Turborepo remote cache API).
//!
//! Nothing here prints: failures are returned, and what a caller might want
//! to know later goes to `tracing`. Every read of an entry checks what it
//! reads (sizes, digests, paths), and a failed check is a miss
//! ([`CacheError::is_miss`]), never a restored file.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

mod digest;
pub mod entry;
pub mod http;
pub mod input_files;
pub mod local;
pub mod sign;
pub mod store;

pub use entry::{cap_log, read_entry, write_entry, Artifact, Manifest, FORMAT, MAX_LOG_BYTES};
pub use http::TurboStore;
pub use input_files::{hash_inputs, MAX_INPUT_FILES};
pub use local::LocalStore;
pub use sign::{sign, verify};
pub use store::{check_key, Fetched, Store, StoreFuture};

/// Why the cache could not do something. Every message names the file,
/// key or (redacted) URL it is about and, where it helps, what to do.
/// Clone (sources behind `Arc`), so a caller can keep the first failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// A file or folder could not be read or written.
    #[error("{}: cannot {doing}: {source}{}", path.display(), io_hint(source))]
    Io {
        path: PathBuf,
        /// What was being done, e.g. `hash it`.
        doing: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// An input glob globset refuses; the message names the pattern.
    #[error("input glob: {0}")]
    Glob(#[from] muster_core::glob::GlobError),
    /// A module folder that is not a relative path inside the pipeline's.
    #[error(
        "the module folder {cwd:?} is not inside the pipeline folder {}: \
         write it relative to the pipeline folder, without '..'",
        root.display()
    )]
    BadCwd { root: PathBuf, cwd: String },
    /// Inputs never leave the pipeline folder (the repository).
    #[error(
        "{} is a symlink to {}, outside the pipeline folder {}: inputs never leave it; \
         exclude the link with a `!` glob or move its target inside",
        link.display(), target.display(), root.display()
    )]
    SymlinkOutside {
        link: PathBuf,
        target: PathBuf,
        root: PathBuf,
    },
    /// A path that cannot be written as a `/`-separated UTF-8 string.
    #[error(
        "{}: the name is not UTF-8, so no glob can name it; rename it or exclude its folder",
        path.display()
    )]
    NotUtf8 { path: PathBuf },
    /// The globs match too much to be a module's inputs.
    #[error(
        "{}: {what} exceeds {limit}; narrow the module's input globs \
         (exclude build output and dependencies with `!dir/**`)",
        folder.display()
    )]
    TooManyFiles {
        folder: PathBuf,
        /// `the number of input files` or `the number of entries walked`.
        what: &'static str,
        limit: usize,
    },
    /// An artifact's file changed between listing it and caching it.
    #[error(
        "{}: changed while it was being cached ({reason}); \
         nothing should write a module's artifacts after it ended",
        path.display()
    )]
    Changed { path: PathBuf, reason: String },
    /// A manifest too large to write (the reader refuses it too).
    #[error(
        "the cache entry of {module} would have a {bytes}-byte manifest, over {limit}: \
         it lists too many artifacts or outputs to cache"
    )]
    ManifestTooLarge {
        module: String,
        bytes: u64,
        limit: u64,
    },
    /// An archive that is not a well-formed entry (truncated, foreign,
    /// unsafe paths, a newer format). The caller treats it as a miss.
    #[error("cache entry {}: {reason}; it is not used", archive.display())]
    Corrupt { archive: PathBuf, reason: String },
    /// A blob whose size or SHA-256 is not the manifest's. The caller
    /// treats it as a miss.
    #[error("cache entry {}: blob {blob} {reason}; it is not used", archive.display())]
    Tampered {
        archive: PathBuf,
        blob: String,
        reason: String,
    },
    /// A key that cannot name an entry (keys are lowercase hex).
    #[error("{key:?} is not a cache key: keys are 1 to 128 lowercase hex digits")]
    BadKey { key: String },
    /// Another muster held the local cache's lock past the bound.
    #[error(
        "{}: still locked by another muster after {waited_ms} ms; if none runs, \
         the file system may not support locks (use a local disk for --cache-dir)",
        lock.display()
    )]
    Locked { lock: PathBuf, waited_ms: u64 },
    /// A cache URL that cannot be used.
    #[error("the cache URL {url} is not valid: {reason} (use http(s)://HOST[:PORT][/PATH])")]
    BadUrl { url: String, reason: String },
    /// The server refused the token (401) or the access (403).
    #[error("the cache at {url} refused {doing} (HTTP {status}): {}", unauthorized_hint(*status))]
    Unauthorized {
        /// Redacted.
        url: String,
        doing: String,
        status: u16,
    },
    /// No answer: refused, unresolvable, timed out or stalled. The caller
    /// says once that the run goes on without the cache.
    #[error("the cache at {url} does not answer ({doing}): {reason}")]
    Unreachable {
        /// Redacted.
        url: String,
        doing: String,
        reason: String,
    },
    /// Any other status, with the start of the body the server sent.
    #[error("the cache at {url} answered HTTP {status} to {doing}: {body}")]
    Http {
        /// Redacted.
        url: String,
        doing: String,
        status: u16,
        /// At most a few hundred bytes, for the message.
        body: String,
    },
    /// A download larger than the bound.
    #[error(
        "the cache at {url} sent more than {limit} bytes for {key}; \
         muster never writes entries that large, so it is not used"
    )]
    TooLarge {
        url: String,
        key: String,
        limit: u64,
    },
}

impl CacheError {
    /// True for an entry that must not be used but is no reason to stop:
    /// a corrupt or tampered entry. The caller warns and runs the module.
    pub fn is_miss(&self) -> bool {
        matches!(
            self,
            CacheError::Corrupt { .. } | CacheError::Tampered { .. }
        )
    }

    /// True when a remote cache does not answer: the caller says so once
    /// and goes on without it.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CacheError::Unreachable { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, doing: &'static str, source: io::Error) -> Self {
        CacheError::Io {
            path: path.into(),
            doing,
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(archive: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CacheError::Corrupt {
            archive: archive.into(),
            reason: reason.into(),
        }
    }
}

/// A word on what to do, for the failures a user can fix.
fn io_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        // ENOSPC, EDQUOT
        Some(28) | Some(122) => {
            " (the disk is full: free some space or lower the cache's size cap)"
        }
        // EROFS
        Some(30) => " (the file system is read-only)",
        _ if error.kind() == io::ErrorKind::PermissionDenied => {
            " (check the folder's owner and permissions)"
        }
        _ => "",
    }
}

fn unauthorized_hint(status: u16) -> &'static str {
    if status == 401 {
        "set MUSTER_CACHE_TOKEN to a token the server accepts"
    } else {
        "the token (MUSTER_CACHE_TOKEN) may lack access to this team \
         (--cache-team / MUSTER_CACHE_TEAM), or the server is read-only"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing_and_what_to_do() {
        let error = CacheError::io("c/ab/ab12.tar", "read it", io::Error::from_raw_os_error(28));
        let text = error.to_string();
        assert!(
            text.starts_with("c/ab/ab12.tar: cannot read it: "),
            "{text}"
        );
        assert!(text.contains("the disk is full"), "{text}");

        let error = CacheError::Unauthorized {
            url: "http://cache:3000".into(),
            doing: "GET ab12".into(),
            status: 401,
        };
        assert_eq!(
            error.to_string(),
            "the cache at http://cache:3000 refused GET ab12 (HTTP 401): \
             set MUSTER_CACHE_TOKEN to a token the server accepts"
        );
        assert!(!error.is_miss() && !error.is_unreachable());
    }

    #[test]
    fn only_bad_entries_are_misses() {
        assert!(CacheError::corrupt("x.tar", "truncated").is_miss());
        let tampered = CacheError::Tampered {
            archive: "x.tar".into(),
            blob: "ab".into(),
            reason: "has the wrong SHA-256".into(),
        };
        assert!(tampered.is_miss());
        assert!(!CacheError::BadKey { key: "x".into() }.is_miss());
    }
}
