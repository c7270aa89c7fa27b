//! The journal as a local file: one record per line, only ever appended.
//! A batch is one `write_all` and one `sync_data` (on a blocking thread,
//! so the runtime never waits on the disk); the writer's group commit makes
//! a burst of records cost one sync. A master that died mid-write leaves a
//! torn last line: reopening warns with the file and byte offset and cuts
//! it off before appending again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use muster_core::journal::{decode, Decoded};

use crate::backend::{AppendFuture, Backend, Batch};
use crate::error::StoreError;

/// An open journal file, appended to.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    /// Shared with the blocking thread of the write in progress.
    file: Arc<File>,
    /// The bytes of the write in progress, kept between writes: a batch
    /// of a busy run is tens of KB, and a fresh buffer each time costs the
    /// allocator more than the copy.
    buffer: Vec<u8>,
}

impl FileJournal {
    /// Creates a new, empty journal at `path` (its folder must exist) and
    /// makes its name durable. An existing file is an error: a run never
    /// writes over another's journal.
    pub fn create(path: &Path) -> Result<FileJournal, StoreError> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io(path, "create the journal", e))?;
        sync_folder_of(path)?;
        Ok(FileJournal {
            path: path.to_owned(),
            file: Arc::new(file),
            buffer: Vec::new(),
        })
    }

    /// Opens an existing journal to append to it, with what it holds. A
    /// torn last record is cut off, with a warning naming the file and
    /// where; any other unreadable record, or a newer format, is an error
    /// and the file is left as it is.
    pub fn open_for_append(path: &Path) -> Result<(FileJournal, Decoded), StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| StoreError::io(path, "open the journal", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(path, "read the journal", e))?;
        let decoded = decode(&bytes, &path.display().to_string())?;
        if let Some(torn) = &decoded.torn {
            tracing::warn!(
                file = %path.display(),
                offset = torn.offset,
                len = torn.len,
                "the journal's last record was cut short (the master stopped while writing it); \
                 ignoring its {} byte(s) from byte {}",
                torn.len,
                torn.offset
            );
            file.set_len(torn.offset)
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io(path, "cut the torn record off the journal", e))?;
        }
        let journal = FileJournal {
            path: path.to_owned(),
            file: Arc::new(file),
            buffer: Vec::new(),
        };
        Ok((journal, decoded))
    }

    /// Reads a journal, for `muster status` and the like. The file may be
    /// written meanwhile: a torn tail is then a record half-written, and
    /// is returned, not cut off.
    pub fn read(path: &Path) -> Result<Decoded, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::io(path, "read the journal", e))?;
        Ok(decode(&bytes, &path.display().to_string())?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Backend for FileJournal {
    fn append<'a>(&'a mut self, batch: &'a Batch) -> AppendFuture<'a> {
        // A copy for the blocking thread: a batch is bounded (see the
        // writer), and a copy costs nothing next to a sync.
        let mut bytes = std::mem::take(&mut self.buffer);
        bytes.clear();
        bytes.extend_from_slice(batch.bytes());
        let file = Arc::clone(&self.file);
        Box::pin(async move {
            if bytes.is_empty() {
                return Ok(());
            }
            let written = tokio::task::spawn_blocking(move || {
                let written = (&*file).write_all(&bytes).and_then(|()| file.sync_data());
                (written, bytes)
            })
            .await;
            let written = match written {
                Ok((written, bytes)) => {
                    self.buffer = bytes;
                    written
                }
                Err(e) => Err(std::io::Error::other(e)),
            };
            written.map_err(|e| StoreError::io(&self.path, "append to the journal", e))
        })
    }
}

/// Makes a new name in the folder of `path` durable.
pub(crate) fn sync_folder_of(path: &Path) -> Result<(), StoreError> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_folder(folder)
}

pub(crate) fn sync_folder(folder: &Path) -> Result<(), StoreError> {
    File::open(folder)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(folder, "sync the folder", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::record;
    use muster_core::journal::{encode, JournalError};

    async fn append(journal: &mut FileJournal, seqs: std::ops::RangeInclusive<u64>) {
        let mut batch = Batch::new();
        for seq in seqs {
            batch.push(record(seq));
        }
        journal.append(&batch).await.unwrap();
    }

    #[tokio::test]
    async fn appends_are_visible_to_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = FileJournal::create(&path).unwrap();
        assert!(FileJournal::read(&path).unwrap().records.is_empty());
        append(&mut journal, 1..=3).await;
        append(&mut journal, 4..=4).await;
        let read = FileJournal::read(&path).unwrap();
        assert_eq!(read.records, (1..=4).map(record).collect::<Vec<_>>());
        assert_eq!(read.torn, None);
        // A second journal at the same path is refused.
        let error = FileJournal::create(&path).unwrap_err().to_string();
        assert!(
            error.contains("journal.jsonl: cannot create the journal"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_appended_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut bytes: Vec<u8> = (1..=2).flat_map(|s| encode(&record(s))).collect();
        let whole = bytes.len() as u64;
        let third = encode(&record(3));
        bytes.extend_from_slice(&third[..10]);
        std::fs::write(&path, &bytes).unwrap();

        let (mut journal, found) = FileJournal::open_for_append(&path).unwrap();
        assert_eq!(found.records, vec![record(1), record(2)]);
        assert_eq!(found.torn.unwrap().offset, whole);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        append(&mut journal, 3..=4).await;
        let read = FileJournal::read(&path).unwrap();
        assert_eq!(read.records, (1..=4).map(record).collect::<Vec<_>>());
        assert_eq!(read.torn, None);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut bytes = encode(&record(1));
        bytes.extend_from_slice(b"{\"v\":1,\"seq\":2,\"at\":5,\"type\":\"nonsense\"}\n");
        bytes.extend_from_slice(&encode(&record(3)));
        std::fs::write(&path, &bytes).unwrap();
        let error = FileJournal::open_for_append(&path).unwrap_err();
        assert!(
            matches!(
                &error,
                StoreError::Journal(JournalError::Corrupt { record: 2, .. })
            ),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("{}: record 2 (byte ", path.display())),
            "{text}"
        );
        // Left as it was.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_journal_in_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut bytes = encode(&record(1));
        bytes.extend_from_slice(b"{\"v\":99,\"seq\":2,\"at\":5,\"type\":\"later\"}\n");
        std::fs::write(&path, &bytes).unwrap();
        let error = FileJournal::open_for_append(&path).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Journal(JournalError::Newer { found: 99, .. })
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("upgrade muster"), "{error}");
        assert!(FileJournal::read(&path).is_err());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_full_disk_fails_the_append_naming_the_file() {
        // /dev/full answers every write with ENOSPC.
        let path = Path::new("/dev/full");
        let file = OpenOptions::new().append(true).open(path).unwrap();
        let mut journal = FileJournal {
            path: path.to_owned(),
            file: Arc::new(file),
            buffer: Vec::new(),
        };
        let mut batch = Batch::new();
        batch.push(record(1));
        let error = journal.append(&batch).await.unwrap_err().to_string();
        assert!(
            error.starts_with("/dev/full: cannot append to the journal: "),
            "{error}"
        );
        assert!(error.contains("the disk is full"), "{error}");
    }

    #[test]
    fn a_missing_journal_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("journal.jsonl");
        let error = FileJournal::open_for_append(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}: cannot open the journal", path.display())),
            "{error}"
        );
    }
}
