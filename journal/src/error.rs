//! Why a journal could not be written or read. Every message names the
//! file, key or (redacted) URL it is about and, where it helps, what to do.
//! Errors are `Clone` (their sources behind `Arc`): the writer keeps its
//! first failure and hands a copy to whoever asks.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use muster_core::journal::JournalError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A file or folder could not be read, written or made durable.
    #[error("{}: cannot {doing}: {source}{}", path.display(), io_hint(source))]
    Io {
        path: PathBuf,
        /// What was being done, e.g. `append to the journal`.
        doing: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(
        "the Redis URL {url} is not valid: {reason} \
         (use redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// for TLS)"
    )]
    BadUrl { url: String, reason: String },
    /// Redis did not answer in time, dropped the connection, or refused.
    #[error("Redis at {url}: cannot {doing}: {reason}")]
    Redis {
        /// Redacted: never holds a password.
        url: String,
        /// What was being done, naming the key.
        doing: String,
        reason: String,
    },
    /// The journal holds a higher epoch than this master's: a newer master
    /// took over the run, and this one must stop.
    #[error(
        "a newer master (epoch {newer}) owns this run's journal; \
         this master (epoch {epoch}) stops writing it"
    )]
    Stale { epoch: u64, newer: u64 },
    /// A record of a file (or a newer format) that cannot be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// An entry of a Redis Stream that is not a journal record.
    #[error(
        "Redis stream {key} at {url}: entry {entry} (record {record}) \
         is not a journal record: {why}"
    )]
    CorruptEntry {
        url: String,
        key: String,
        /// The stream entry id, e.g. `1764000000000-0`.
        entry: String,
        /// 1-based.
        record: usize,
        why: String,
    },
    #[error(
        "the run id {id:?} cannot name a folder: use letters, digits, '.', '_' and '-' \
         (not starting with '.')"
    )]
    BadRunId { id: String },
    /// The writer's task ended without a recorded failure (it panicked).
    #[error("the journal writer stopped unexpectedly; see the log above for why")]
    Closed,
    /// Closing waited its limit and records were still not durable.
    #[error(
        "the journal was not flushed within {waited}: {pending} record(s) may be missing \
         from it (is the disk or Redis very slow?)"
    )]
    NotFlushed { pending: u64, waited: String },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, doing: &'static str, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            doing,
            source: Arc::new(source),
        }
    }
}

/// A word on what to do, for the failures a user can fix.
fn io_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        // ENOSPC, EDQUOT
        Some(28) | Some(122) => " (the disk is full: free some space, then run again)",
        // EROFS
        Some(30) => " (the file system is read-only)",
        _ if error.kind() == io::ErrorKind::PermissionDenied => {
            " (check the folder's owner and permissions)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_so_and_names_the_file() {
        let error = StoreError::io(
            ".muster/runs/r/journal.jsonl",
            "append to the journal",
            io::Error::from_raw_os_error(28),
        );
        let text = error.to_string();
        assert!(
            text.starts_with(".muster/runs/r/journal.jsonl: cannot append to the journal: "),
            "{text}"
        );
        assert!(text.ends_with("(the disk is full: free some space, then run again)"));
        assert!(std::error::Error::source(&error).is_some());
    }
}
