//! A local run's journal end to end: a run folder, the writer appending
//! to its file, a reader seeing the records, and a second master going on
//! from where a crashed one stopped (its torn last record cut off).

use std::io::Write;

use muster_core::journal::{encode, Entry, Record, FORMAT_VERSION};
use muster_core::mask::Masker;
use muster_journal::{new_run_id, FileJournal, JournalWriter, LogFiles, RunFolder};

fn cancel(reason: &str) -> Entry {
    Entry::CancelRequested {
        reason: reason.into(),
    }
}

#[tokio::test]
async fn a_run_is_written_read_and_continued_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".muster");
    let id = new_run_id(std::time::SystemTime::now());
    let run = RunFolder::create(&root, &id).unwrap();

    let journal = FileJournal::create(&run.journal()).unwrap();
    let logs = LogFiles::new(&run.logs(), Masker::default(), 1 << 20).unwrap();
    let mut writer = JournalWriter::start(Box::new(journal), Some(logs), 1);
    for n in 1..=3 {
        writer.append(n, cancel(&format!("first {n}")));
    }
    writer.log("build", "compiling\n");
    writer.close().await.unwrap();
    let first = FileJournal::read(&run.journal()).unwrap();
    assert_eq!(first.records.len(), 3);
    assert_eq!(
        LogFiles::tail(&run.logs(), "build", 5).unwrap().unwrap(),
        ["compiling"]
    );

    // The master died while writing record 4.
    let torn = encode(&Record {
        v: FORMAT_VERSION,
        seq: 4,
        at: 4,
        entry: cancel("lost"),
    });
    std::fs::OpenOptions::new()
        .append(true)
        .open(run.journal())
        .unwrap()
        .write_all(&torn[..torn.len() - 5])
        .unwrap();

    let (journal, found) = FileJournal::open_for_append(&run.journal()).unwrap();
    assert_eq!(found.records, first.records);
    let next = found.records.last().unwrap().seq + 1;
    let mut writer = JournalWriter::start(Box::new(journal), None, next);
    assert_eq!(writer.append(10, cancel("second")), 4);
    writer.close().await.unwrap();
    let read = FileJournal::read(&run.journal()).unwrap();
    assert_eq!(read.torn, None);
    assert_eq!(
        read.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(read.records[3].entry, cancel("second"));
}
