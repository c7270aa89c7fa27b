//! Where a run's journal is kept. The records and their line format are
//! muster-core's (`muster_core::journal`, no I/O); this crate stores them:
//! [`JournalWriter`] takes records from the hub without ever making it
//! wait and makes them durable in batches (group commit) through a
//! [`Backend`]: a local file under the state folder ([`FileJournal`],
//! [`RunFolder`]) or, in CI, a Redis Stream that outlives the runner
//! ([`RedisJournal`]), whose script refuses a stale master's writes.
//! Module log text goes beside the journal, never into it ([`LogFiles`]).

pub mod backend;
pub mod error;
pub mod feed;
pub mod file;
pub mod folder;
pub mod logs;
pub mod redis;
pub mod writer;

pub use backend::{AppendFuture, Backend, Batch};
pub use error::StoreError;
pub use feed::{FeedMark, JournalFeed, MAX_FEED_BYTES};
pub use file::FileJournal;
pub use folder::{list_runs, new_run_id, prune, state_root, RunEntry, RunFolder};
pub use logs::{LogCursor, LogFiles, LogRead};
pub use redis::{read_journal, read_log_tail, Follower, RedisJournal};
pub use writer::JournalWriter;
