//! The one small trait both stores implement: a local folder
//! ([`crate::LocalStore`]) and a Turborepo remote cache
//! ([`crate::TurboStore`]). A store moves whole entries (archive files)
//! and their tags; it never reads inside them, so checking an entry
//! (signature, digests) is the caller's, the same for every store.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use tempfile::TempPath;

use crate::CacheError;

/// What a [`Store`] call returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CacheError>> + Send + 'a>>;

/// Where entries are kept.
pub trait Store: Send + Sync {
    /// The entry for `key` as a temporary file of this caller's own (so
    /// eviction or a concurrent put cannot change it under the reader),
    /// with the tag stored beside it; `None` on a miss.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Fetched>>;

    /// True when the store holds an entry for `key`, without fetching it:
    /// a caller can skip uploading what is already there.
    fn contains<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;

    /// Stores the archive at `archive` as the entry for `key`, replacing
    /// any, with `tag` (its signature) beside it. `duration_ms` is how
    /// long the module ran, for stores that report time saved.
    fn put<'a>(
        &'a self,
        key: &'a str,
        archive: &'a Path,
        tag: Option<&'a str>,
        duration_ms: u64,
    ) -> StoreFuture<'a, ()>;

    /// For messages: `the local cache at .muster/cache`, `the remote
    /// cache at https://cache.example` (redacted).
    fn describe(&self) -> String;
}

/// An entry fetched from a store.
#[derive(Debug)]
pub struct Fetched {
    /// The archive; removed when this is dropped.
    pub archive: TempPath,
    /// The signature stored with it, if any.
    pub tag: Option<String>,
}

impl Fetched {
    pub fn path(&self) -> &Path {
        &self.archive
    }
}

/// Keys are 1 to 128 lowercase hex digits (a SHA-256 is 64): safe as a
/// file name and a URL path segment, with nothing to escape.
pub fn check_key(key: &str) -> Result<(), CacheError> {
    let hex = key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hex && (1..=128).contains(&key.len()) {
        Ok(())
    } else {
        Err(CacheError::BadKey {
            key: key.chars().take(140).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lowercase_hex() {
        for key in ["0", "ab12", &"f".repeat(128)] {
            check_key(key).unwrap();
        }
        for key in ["", "AB12", "../x", "ab/12", "ab12 ", &"f".repeat(129)] {
            let error = check_key(key).unwrap_err();
            assert!(
                error.to_string().contains("lowercase hex"),
                "{key}: {error}"
            );
        }
    }
}
