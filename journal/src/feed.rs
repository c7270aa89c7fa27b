//! The journal as it becomes durable, for readers inside the master: the
//! dashboard shows a run from the same records the journal holds, and
//! only once they are durable (what a viewer sees has happened). The
//! writer publishes each committed batch's lines here and says when it
//! wrote log text; readers follow a byte offset and wake on a watch, so a
//! slow reader only falls behind, and nothing is dropped or copied per
//! reader ahead of its reading.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use muster_core::journal::{encode_into, Record};
use tokio::sync::watch;

/// The most record bytes kept for readers. A run whose journal grows past
/// this stops feeding the live page (which says so) rather than holding
/// without bound; `muster status` and the journal itself go on.
pub const MAX_FEED_BYTES: usize = 256 * 1024 * 1024;

/// Where the feed stands, watched by its readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedMark {
    /// Bytes of whole lines published so far.
    pub bytes: usize,
    /// Counts the batches of log text written to the log files.
    pub logs: u64,
    /// The journal passed [`MAX_FEED_BYTES`]: no more lines come.
    pub full: bool,
    /// The writer stopped: nothing more comes.
    pub closed: bool,
}

/// A run's durable journal lines, shared by the writer and its readers.
#[derive(Debug)]
pub struct JournalFeed {
    lines: RwLock<Vec<u8>>,
    mark: watch::Sender<FeedMark>,
    logs_dir: Option<PathBuf>,
}

impl JournalFeed {
    /// An empty feed; `logs_dir` is where the run's log files are.
    pub fn new(logs_dir: Option<PathBuf>) -> Arc<JournalFeed> {
        Arc::new(JournalFeed {
            lines: RwLock::new(Vec::new()),
            mark: watch::channel(FeedMark::default()).0,
            logs_dir,
        })
    }

    /// The folder of the run's per-module log files, if it keeps them.
    pub fn logs_dir(&self) -> Option<&Path> {
        self.logs_dir.as_deref()
    }

    /// Records of earlier stints (a resumed run), before any new one.
    pub fn seed(&self, records: &[Record]) {
        let mut bytes = Vec::new();
        for record in records {
            encode_into(record, &mut bytes);
        }
        self.publish(&bytes);
    }

    /// Durable lines, each ending in a newline.
    pub(crate) fn publish(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut kept = self.lines.write().expect("feed lock is never poisoned");
        if kept.len() + lines.len() > MAX_FEED_BYTES {
            self.mark
                .send_if_modified(|mark| !std::mem::replace(&mut mark.full, true));
            return;
        }
        kept.extend_from_slice(lines);
        let bytes = kept.len();
        drop(kept);
        self.mark.send_modify(|mark| mark.bytes = bytes);
    }

    /// Log text was written to the log files.
    pub(crate) fn logs_written(&self) {
        self.mark.send_modify(|mark| mark.logs += 1);
    }

    /// Nothing more will be published.
    pub(crate) fn close(&self) {
        self.mark.send_modify(|mark| mark.closed = true);
    }

    pub fn watch(&self) -> watch::Receiver<FeedMark> {
        self.mark.subscribe()
    }

    /// Whole lines from byte `from`, at most about `max` bytes (at least one
    /// line when one is there), and the offset after them.
    pub fn read(&self, from: usize, max: usize) -> (Vec<u8>, usize) {
        let kept = self.lines.read().expect("feed lock is never poisoned");
        let Some(rest) = kept.get(from..) else {
            return (Vec::new(), from);
        };
        let mut end = rest.len().min(max);
        if end < rest.len() {
            end = match rest[..end].iter().rposition(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                None => rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |n| n + 1),
            };
        }
        (rest[..end].to_vec(), from + end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::record;

    #[test]
    fn reads_whole_lines_from_an_offset() {
        let feed = JournalFeed::new(None);
        feed.seed(&[record(1), record(2), record(3)]);
        let mark = *feed.watch().borrow();
        let (first, next) = feed.read(0, 10);
        assert!(first.ends_with(b"\n"));
        assert_eq!(first.iter().filter(|&&b| b == b'\n').count(), 1);
        let (rest, end) = feed.read(next, usize::MAX);
        assert_eq!(rest.iter().filter(|&&b| b == b'\n').count(), 2);
        assert_eq!(end, mark.bytes);
        assert_eq!(feed.read(end, 100), (Vec::new(), end));
        assert_eq!(feed.read(end + 5, 100), (Vec::new(), end + 5));
    }

    #[test]
    fn a_reader_wakes_on_publish_and_close() {
        let feed = JournalFeed::new(None);
        let mut watch = feed.watch();
        feed.publish(b"{}\n");
        assert!(watch.has_changed().unwrap());
        assert_eq!(watch.borrow_and_update().bytes, 3);
        feed.logs_written();
        feed.close();
        let mark = *watch.borrow_and_update();
        assert_eq!((mark.logs, mark.closed), (1, true));
    }
}
