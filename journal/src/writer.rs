//! The handle the hub's scheduler writes the journal through. Appending
//! only enqueues (the scheduler never waits on a disk or on Redis); one
//! task takes everything queued as one batch and makes it durable at once
//! (group commit: a burst of events costs one fsync or one script call),
//! then says how far the journal is durable. The hub holds some effects
//! until their records are durable, and stops taking work when too much
//! waits.
//!
//! A sync costs CPU as well as time, so the writer gathers: a batch is
//! committed when something is blocked on it ([`JournalWriter::expedite`]:
//! a module waits to be assigned), when it is full, when the queue
//! closes, or at the latest [`GATHER_LIMIT`] after its first record. A
//! busy run then pays one sync per 20 ms instead of one per handful of
//! modules, and a chain of modules still pays no wait at all. While it
//! gathers the task sleeps, and is woken only by an expedite or the queue
//! closing, not by every record appended.
//!
//! After a failure nothing more is written and durability never advances:
//! the first error is kept for the hub, which ends the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use muster_core::journal::{Entry, Record, FORMAT_VERSION};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::backend::{Backend, Batch};
use crate::error::StoreError;
use crate::feed::JournalFeed;
use crate::logs::LogFiles;

/// A batch holds at most this many records...
pub const MAX_BATCH_RECORDS: usize = 4096;
/// ...and at most about this many bytes of records (and as many of log
/// text).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Log text waiting to be written beyond this is dropped (and the drop is
/// said in the module's log): the scheduler must never wait on log files,
/// and the queue must not grow without end when they are slow.
pub const MAX_QUEUED_LOG_BYTES: usize = 16 * 1024 * 1024;
/// The longest a record waits for its group commit to start when nothing
/// is blocked on it (a `Complete`'s answer, a worker joining or leaving).
/// Readers of the durable journal (the dashboard, `muster status`) lag by
/// at most this; a shorter limit costs the master a sync's CPU more often
/// (5 ms kept 0.92 of the throughput without a journal, 20 ms 0.96-0.97;
/// `docs/benchmarks.md`).
pub const GATHER_LIMIT: Duration = Duration::from_millis(20);

/// How long [`JournalWriter::close`] waits for the rest to be durable.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(60);

/// Writes one run's journal (and its log files) from one task.
#[derive(Debug)]
pub struct JournalWriter {
    queue: mpsc::UnboundedSender<Item>,
    /// Wakes the writing task from its gathering: something is blocked on
    /// what is queued, or the queue closed.
    wake: Arc<Notify>,
    next_seq: u64,
    durable: watch::Receiver<u64>,
    failure: watch::Receiver<Option<StoreError>>,
    /// Bytes of log text queued and not yet written.
    log_queued: Arc<AtomicUsize>,
    /// Bytes of log text dropped per module, said with its next text.
    dropped: HashMap<String, usize>,
    /// What is durable, for readers inside the master (the dashboard).
    feed: Arc<JournalFeed>,
    task: JoinHandle<()>,
}

// Records are nearly every item: boxing them would cost an allocation per
// record for the sake of the rare `Log` and `Expedite`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Item {
    Record(Record),
    Log {
        module: String,
        text: String,
    },
    /// Commit what is queued now: something is blocked until it is durable.
    Expedite,
}

impl JournalWriter {
    /// Starts the writing task (call from within a tokio runtime). The
    /// first record appended gets `next_seq` (at least 1); the journal is
    /// taken as durable up to the one before.
    pub fn start(
        backend: Box<dyn Backend>,
        logs: Option<LogFiles>,
        next_seq: u64,
    ) -> JournalWriter {
        let next_seq = next_seq.max(1);
        let (queue, queued) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(next_seq - 1);
        let (failure_tx, failure) = watch::channel(None);
        let log_queued = Arc::new(AtomicUsize::new(0));
        let feed = JournalFeed::new(logs.as_ref().map(|l| l.dir().to_owned()));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(write(
            backend,
            logs,
            queued,
            Arc::clone(&wake),
            Published {
                durable: durable_tx,
                failure: failure_tx,
                feed: Arc::clone(&feed),
            },
            Arc::clone(&log_queued),
        ));
        JournalWriter {
            queue,
            wake,
            next_seq,
            durable,
            failure,
            log_queued,
            dropped: HashMap::new(),
            feed,
            task,
        }
    }

    /// Enqueues a record and returns its seq. Never waits; the record is
    /// durable when [`JournalWriter::durable`] reaches the seq. The queue
    /// is bounded by the caller: see [`JournalWriter::outstanding`].
    pub fn append(&mut self, at_unix_ms: u64, entry: Entry) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let record = Record {
            v: FORMAT_VERSION,
            seq,
            at: at_unix_ms,
            entry,
        };
        // A closed queue means the task stopped; `failed` says why.
        let _ = self.queue.send(Item::Record(record));
        seq
    }

    /// Asks for everything appended so far to be made durable without
    /// gathering more: the caller holds back work until it is.
    pub fn expedite(&mut self) {
        let _ = self.queue.send(Item::Expedite);
        self.wake.notify_one();
    }

    /// Enqueues log text of `module` for its log file. Never waits, and
    /// nothing waits for it to be written; when too much is queued the
    /// text is dropped, and the module's next text says how much was.
    pub fn log(&mut self, module: &str, text: &str) {
        if text.is_empty() {
            return;
        }
        let queued = self.log_queued.load(Ordering::Relaxed);
        if queued + text.len() > MAX_QUEUED_LOG_BYTES {
            let dropped = self.dropped.entry(module.to_owned()).or_default();
            if *dropped == 0 {
                tracing::warn!(
                    module,
                    "the log files fall behind; dropping log text until they catch up"
                );
            }
            *dropped += text.len();
            return;
        }
        let mut text = match self.dropped.remove(module) {
            Some(bytes) => format!(
                "[muster: {bytes} bytes of this log were dropped here: the log files fell behind]\n{text}"
            ),
            None => text.to_owned(),
        };
        // A worker's batch of lines has no newline after its last one; the
        // files keep lines, so the next batch starts a line of its own.
        if !text.ends_with('\n') {
            text.push('\n');
        }
        self.log_queued.fetch_add(text.len(), Ordering::Relaxed);
        let _ = self.queue.send(Item::Log {
            module: module.to_owned(),
            text,
        });
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest seq durable, watched.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Records appended and not yet durable.
    pub fn outstanding(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(*self.durable.borrow())
    }

    /// The failure that stopped the writer, if it stopped.
    pub fn failed(&self) -> Option<StoreError> {
        if let Some(error) = self.failure.borrow().clone() {
            return Some(error);
        }
        // The task only ends early by failing, which it says first.
        self.queue.is_closed().then_some(StoreError::Closed)
    }

    /// The durable records as lines, and word of log text written: what
    /// the dashboard reads.
    pub fn feed(&self) -> Arc<JournalFeed> {
        Arc::clone(&self.feed)
    }

    /// The failure, watched: it changes once, from `None`.
    pub fn failure(&self) -> watch::Receiver<Option<StoreError>> {
        self.failure.clone()
    }

    /// Writes everything queued and stops, waiting up to [`CLOSE_LIMIT`].
    pub async fn close(self) -> Result<(), StoreError> {
        self.close_within(CLOSE_LIMIT).await
    }

    /// [`JournalWriter::close`], waiting up to `limit`.
    pub async fn close_within(self, limit: Duration) -> Result<(), StoreError> {
        let JournalWriter {
            queue,
            wake,
            next_seq,
            durable,
            failure,
            mut task,
            ..
        } = self;
        drop(queue);
        wake.notify_one();
        let ended = tokio::time::timeout(limit, &mut task).await;
        if let Some(error) = failure.borrow().clone() {
            return Err(error);
        }
        match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => {
                task.abort();
                Err(StoreError::NotFlushed {
                    pending: (next_seq - 1).saturating_sub(*durable.borrow()),
                    waited: humantime::format_duration(limit).to_string(),
                })
            }
        }
    }
}

/// Where the writing task says what it made durable.
struct Published {
    durable: watch::Sender<u64>,
    failure: watch::Sender<Option<StoreError>>,
    feed: Arc<JournalFeed>,
}

/// The writing task: takes what is queued as one batch, writes its log
/// text and makes its records durable, until the queue closes or a write
/// fails.
async fn write(
    mut backend: Box<dyn Backend>,
    mut logs: Option<LogFiles>,
    mut queued: mpsc::UnboundedReceiver<Item>,
    wake: Arc<Notify>,
    published: Published,
    log_queued: Arc<AtomicUsize>,
) {
    let Published {
        durable,
        failure,
        feed,
    } = published;
    let _closed = ClosedOnPanic(&failure);
    let _feed_closed = FeedClosed(&feed);
    let mut batch = Batch::new();
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut said_log_trouble = false;
    while let Some(first) = queued.recv().await {
        let commit_by = tokio::time::Instant::now() + GATHER_LIMIT;
        let mut gathered = Gathered::default();
        gathered.take(first, &mut batch, &mut texts);
        // Nothing blocked: sleep until the limit (or until something is)
        // and take what came meanwhile at once, rather than waking for
        // every record appended.
        if !gathered.expedite && !gathered.full(&batch) {
            tokio::select! {
                () = tokio::time::sleep_until(commit_by) => {}
                () = wake.notified() => {}
            }
        }
        while !gathered.full(&batch) {
            match queued.try_recv() {
                Ok(item) => gathered.take(item, &mut batch, &mut texts),
                Err(_) => break,
            }
        }
        let text_bytes = gathered.text_bytes;

        for (module, text) in &texts {
            backend.log(module, text);
        }
        // Log files are written on a blocking thread while the records
        // are made durable.
        let writing_logs = match logs.take() {
            Some(mut files) if !texts.is_empty() => {
                let texts = std::mem::take(&mut texts);
                Some(tokio::task::spawn_blocking(move || {
                    let written = write_logs(&mut files, &texts);
                    (files, written)
                }))
            }
            files => {
                logs = files;
                None
            }
        };
        texts.clear();
        let appended = if batch.is_empty() {
            Ok(())
        } else {
            backend.append(&batch).await
        };
        if let Some(job) = writing_logs {
            match job.await {
                Ok((files, written)) => {
                    logs = Some(files);
                    feed.logs_written();
                    if let Err(e) = written {
                        if !std::mem::replace(&mut said_log_trouble, true) {
                            tracing::warn!("log text is being lost: {e}");
                        }
                    }
                }
                Err(e) => tracing::warn!("the log files are closed after an error: {e}"),
            }
        }
        log_queued.fetch_sub(text_bytes, Ordering::Relaxed);

        match appended {
            Ok(()) => {
                if let Some(seq) = batch.last_seq() {
                    feed.publish(batch.bytes());
                    durable.send_replace(seq);
                }
            }
            Err(e) => {
                tracing::error!("the journal cannot be written: {e}");
                failure.send_replace(Some(e));
                break;
            }
        }
        batch.clear();
    }
    if let Some(mut files) = logs {
        match tokio::task::spawn_blocking(move || files.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("log text may be lost: {e}"),
            Err(e) => tracing::warn!("log text may be lost: {e}"),
        }
    }
}

/// What one batch took from the queue so far.
#[derive(Default)]
struct Gathered {
    text_bytes: usize,
    expedite: bool,
}

impl Gathered {
    fn take(&mut self, item: Item, batch: &mut Batch, texts: &mut Vec<(String, String)>) {
        match item {
            Item::Record(record) => batch.push(record),
            Item::Log { module, text } => {
                self.text_bytes += text.len();
                texts.push((module, text));
            }
            Item::Expedite => self.expedite = true,
        }
    }

    /// Whether the batch holds all a commit may.
    fn full(&self, batch: &Batch) -> bool {
        batch.len() >= MAX_BATCH_RECORDS
            || batch.bytes().len() >= MAX_BATCH_BYTES
            || self.text_bytes >= MAX_BATCH_BYTES
    }
}

/// Writes every text, going on past a failing file; the first error is
/// returned.
fn write_logs(files: &mut LogFiles, texts: &[(String, String)]) -> Result<(), StoreError> {
    let mut first = Ok(());
    for (module, text) in texts {
        first = first.and(files.write(module, text));
    }
    first.and(files.flush())
}

/// Tells the feed's readers nothing more comes, however the task ends.
struct FeedClosed<'a>(&'a JournalFeed);

impl Drop for FeedClosed<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Says [`StoreError::Closed`] if the task panics before saying anything.
struct ClosedOnPanic<'a>(&'a watch::Sender<Option<StoreError>>);

impl Drop for ClosedOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.send_if_modified(|failure| {
                let unset = failure.is_none();
                if unset {
                    *failure = Some(StoreError::Closed);
                }
                unset
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::AppendFuture;
    use muster_core::mask::Masker;
    use tokio::sync::Semaphore;

    /// Keeps every batch; each append takes `pause`, like a sync; fails
    /// the `fail_at`-th append (1-based); waits for a permit if `gate` is
    /// set.
    #[derive(Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<Record>>>>,
        pause: Duration,
        fail_at: Option<usize>,
        gate: Option<Arc<Semaphore>>,
        attempts: Arc<AtomicUsize>,
    }

    impl Backend for Recorder {
        fn append<'a>(&'a mut self, batch: &'a Batch) -> AppendFuture<'a> {
            Box::pin(async move {
                let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(gate) = &self.gate {
                    gate.acquire().await.unwrap().forget();
                }
                tokio::time::sleep(self.pause).await;
                if self.fail_at == Some(attempt) {
                    return Err(StoreError::Stale { epoch: 1, newer: 2 });
                }
                self.batches.lock().unwrap().push(batch.records().to_vec());
                Ok(())
            })
        }
    }

    fn entry(n: u64) -> Entry {
        Entry::CancelRequested {
            reason: format!("r{n}"),
        }
    }

    async fn durable_reaches(writer: &JournalWriter, seq: u64) {
        let mut durable = writer.durable();
        tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|&d| d >= seq))
            .await
            .expect("durable in time")
            .expect("writer running");
    }

    #[tokio::test]
    async fn a_burst_of_appends_costs_few_syncs() {
        let backend = Recorder {
            pause: Duration::from_millis(2),
            ..Recorder::default()
        };
        let batches = Arc::clone(&backend.batches);
        let mut writer = JournalWriter::start(Box::new(backend), None, 41);
        for n in 0..1000 {
            assert_eq!(writer.append(n, entry(n)), 41 + n);
            if n % 10 == 0 {
                // Let the task run between appends, as a busy hub would.
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(writer.next_seq(), 1041);
        durable_reaches(&writer, 1040).await;
        assert_eq!(writer.outstanding(), 0);
        writer.close().await.unwrap();
        let batches = batches.lock().unwrap();
        let seqs: Vec<u64> = batches.iter().flatten().map(|r| r.seq).collect();
        assert_eq!(seqs, (41..1041).collect::<Vec<_>>());
        assert!(
            batches.len() < 50,
            "{} syncs for 1000 records",
            batches.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn records_nobody_waits_for_are_gathered_for_a_bounded_time() {
        let backend = Recorder::default();
        let batches = Arc::clone(&backend.batches);
        let mut writer = JournalWriter::start(Box::new(backend), None, 1);
        let began = tokio::time::Instant::now();
        writer.append(0, entry(0));
        tokio::time::sleep(GATHER_LIMIT / 5).await;
        writer.append(1, entry(1));
        tokio::time::sleep(GATHER_LIMIT / 5).await;
        assert_eq!(*writer.durable().borrow(), 0, "committed before the limit");
        durable_reaches(&writer, 2).await;
        let waited = began.elapsed();
        assert!(
            waited >= GATHER_LIMIT && waited < GATHER_LIMIT * 2,
            "{waited:?}"
        );
        let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [2], "one group commit for both");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expedited_record_is_committed_without_gathering() {
        let backend = Recorder::default();
        let mut writer = JournalWriter::start(Box::new(backend), None, 1);
        let began = tokio::time::Instant::now();
        writer.append(0, entry(0));
        writer.expedite();
        durable_reaches(&writer, 1).await;
        assert!(began.elapsed() < GATHER_LIMIT, "{:?}", began.elapsed());
        // Closing commits what is queued at once, too.
        writer.append(1, entry(1));
        writer.close().await.unwrap();
        assert!(began.elapsed() < GATHER_LIMIT, "{:?}", began.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expedite_while_gathering_commits_at_once() {
        let backend = Recorder::default();
        let batches = Arc::clone(&backend.batches);
        let mut writer = JournalWriter::start(Box::new(backend), None, 1);
        let began = tokio::time::Instant::now();
        writer.append(0, entry(0));
        tokio::time::sleep(GATHER_LIMIT / 4).await;
        writer.append(1, entry(1));
        writer.expedite();
        durable_reaches(&writer, 2).await;
        assert!(began.elapsed() < GATHER_LIMIT / 2, "{:?}", began.elapsed());
        let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [2], "one group commit for both");
    }

    #[tokio::test]
    async fn after_a_failure_nothing_more_is_written() {
        let backend = Recorder {
            fail_at: Some(2),
            ..Recorder::default()
        };
        let batches = Arc::clone(&backend.batches);
        let mut writer = JournalWriter::start(Box::new(backend), None, 1);
        assert!(writer.failed().is_none());
        writer.append(1, entry(1));
        durable_reaches(&writer, 1).await;
        writer.append(2, entry(2));
        let mut failure = writer.failure();
        tokio::time::timeout(Duration::from_secs(10), failure.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            writer.failed(),
            Some(StoreError::Stale { newer: 2, .. })
        ));
        writer.append(3, entry(3));
        assert_eq!(*writer.durable().borrow(), 1);
        assert_eq!(writer.outstanding(), 2);
        let error = writer.close().await.unwrap_err();
        assert!(error.to_string().contains("epoch 2"), "{error}");
        assert_eq!(batches.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn closing_is_bounded() {
        let gate = Arc::new(Semaphore::new(0));
        let backend = Recorder {
            gate: Some(Arc::clone(&gate)),
            ..Recorder::default()
        };
        let mut writer = JournalWriter::start(Box::new(backend), None, 1);
        writer.append(1, entry(1));
        writer.append(2, entry(2));
        let error = writer
            .close_within(Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::NotFlushed { pending: 2, .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn log_text_goes_to_the_log_files_masked() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::new(dir.path(), Masker::new(["s3cret-value"]), 1 << 20).unwrap();
        let mut writer = JournalWriter::start(Box::new(Recorder::default()), Some(logs), 1);
        // Workers send lines without a newline after the last one: each
        // batch still starts a line of its own in the file.
        writer.log("build", "token s3cret-value");
        writer.append(1, entry(1));
        writer.log("build", "done");
        writer.close().await.unwrap();
        assert_eq!(
            LogFiles::tail(dir.path(), "build", 10).unwrap().unwrap(),
            ["token ***", "done"]
        );
    }

    #[tokio::test]
    async fn log_text_is_dropped_and_said_when_too_much_waits() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::new(dir.path(), Masker::default(), 1 << 30).unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let backend = Recorder {
            gate: Some(Arc::clone(&gate)),
            ..Recorder::default()
        };
        let attempts = Arc::clone(&backend.attempts);
        let mut writer = JournalWriter::start(Box::new(backend), Some(logs), 1);
        writer.append(1, entry(1));
        writer.expedite();
        // The task takes the record and waits in the backend.
        for _ in 0..1000 {
            if attempts.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        let chunk = format!("{}\n", "z".repeat(1 << 20));
        for _ in 0..20 {
            writer.log("m", &chunk);
        }
        gate.add_permits(10);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while writer.log_queued.load(Ordering::Relaxed) > 0 {
            assert!(tokio::time::Instant::now() < deadline, "logs never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writer.log("m", "after\n");
        writer.close().await.unwrap();
        let tail = LogFiles::tail(dir.path(), "m", 2).unwrap().unwrap();
        assert!(
            tail[0].starts_with("[muster: ") && tail[0].contains("bytes of this log were dropped"),
            "{tail:?}"
        );
        assert_eq!(tail[1], "after");
    }
}
