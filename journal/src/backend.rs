//! The one small trait both stores (a file, a Redis Stream) implement, and
//! the batch the writer hands them. A batch is what one group commit
//! makes durable at once; its records are encoded once, here, so the file
//! writes the bytes as they are and the writer can bound a batch's size.

use std::future::Future;
use std::pin::Pin;

use muster_core::journal::{encode_into, Record};

use crate::error::StoreError;

/// What [`Backend::append`] returns: done when the batch is durable.
pub type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Where journal records are kept.
pub trait Backend: Send + 'static {
    /// Appends a batch durably and returns when it is (file: one write and
    /// one `sync_data`; Redis: one script call). An error means none or
    /// only part of the batch may be stored: the writer stops there.
    fn append<'a>(&'a mut self, batch: &'a Batch) -> AppendFuture<'a>;

    /// Log text of `module`, for a store that keeps some of it (Redis
    /// keeps a failed module's last lines). In memory only; the default
    /// keeps nothing.
    fn log(&mut self, module: &str, text: &str) {
        let _ = (module, text);
    }
}

/// Records to append together, with their lines.
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<Record>,
    /// Every record's line, newline included, one after the other.
    bytes: Vec<u8>,
    /// Where each record's line ends in `bytes` (after its newline).
    ends: Vec<usize>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a record, encoding it.
    pub fn push(&mut self, record: Record) {
        encode_into(&record, &mut self.bytes);
        self.ends.push(self.bytes.len());
        self.records.push(record);
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// All lines, each ending in a newline: what a file appends.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Each record with its line, without the newline: what a stream
    /// entry holds.
    pub fn lines(&self) -> impl Iterator<Item = (&Record, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.records
            .iter()
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|(record, (start, end))| (record, &self.bytes[start..end - 1]))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The seq of the last record, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.seq)
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
        self.ends.clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use muster_core::journal::{decode, Entry, FORMAT_VERSION};

    pub(crate) fn record(seq: u64) -> Record {
        Record {
            v: FORMAT_VERSION,
            seq,
            at: 1_764_000_000_000 + seq,
            entry: Entry::CancelRequested {
                reason: format!("test {seq}"),
            },
        }
    }

    #[test]
    fn a_batch_holds_each_line_once() {
        let mut batch = Batch::new();
        for seq in 1..=3 {
            batch.push(record(seq));
        }
        let decoded = decode(batch.bytes(), "batch").unwrap();
        assert_eq!(decoded.records, batch.records());
        let lines: Vec<_> = batch.lines().collect();
        assert_eq!(lines.len(), 3);
        for (record, line) in lines {
            assert!(!line.ends_with(b"\n"));
            assert_eq!(serde_json::from_slice::<Record>(line).unwrap(), *record);
        }
        assert_eq!(batch.last_seq(), Some(3));
        batch.clear();
        assert!(batch.is_empty() && batch.bytes().is_empty());
    }
}
