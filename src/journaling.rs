//! The master's journal: a new run's folder and journal under the state
//! folder, or an earlier run continued (`--resume`): its journal read back,
//! what it keeps decided (`core::journal::resume`) and said, and the
//! journal opened again for appending. The hub then writes every change
//! through it (`muster_hub::Journaling`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use muster_core::journal::{
    decide, module_digests, plan_digest, History, Record, Resumption, RunStart, Settings,
};
use muster_core::mask::Masker;
use muster_core::wire::types::{Artifact, RunOutcome};
use muster_core::Plan;
use muster_hub::Journaling;
use muster_journal::{
    list_runs, new_run_id, prune, FileJournal, JournalWriter, LogFiles, RunFolder,
};

use crate::failure::Failure;
use crate::flags::LATEST;
use crate::run_lock::RunLock;

/// Each module's log files hold at most this much (the older half rotated
/// out).
pub const LOG_CAP_BYTES: u64 = 16 << 20;

/// A local run's journal, opened.
pub struct LocalJournal {
    pub folder: RunFolder,
    pub journaling: Journaling,
    /// Held while the master runs.
    pub lock: RunLock,
    /// What to tell the user: the run, and what a resume kept.
    pub said: Vec<String>,
}

/// What the master needs to know to journal: the pipeline as the user
/// named it, the run's settings, and the secrets to mask.
pub struct JournalInputs<'a> {
    pub pipeline: &'a Path,
    pub plan: &'a Plan,
    pub settings: Settings,
    pub masker: Masker,
}

/// Opens a new run's journal under `root`, or continues the run `resume`
/// names (`latest`: the latest run of this pipeline). Old runs beyond
/// `keep_runs` are removed.
pub fn open_local(
    root: &Path,
    inputs: &JournalInputs<'_>,
    resume: Option<&str>,
    keep_runs: usize,
) -> Result<LocalJournal, Failure> {
    let opened = match resume {
        None => new_local(root, inputs)?,
        Some(which) => resume_local(root, inputs, which)?,
    };
    prune_runs(root, keep_runs, opened.folder.id());
    Ok(opened)
}

/// Removes the oldest runs under `root` beyond `keep`, never `current`.
pub fn prune_runs(root: &Path, keep: usize, current: &str) {
    match prune(root, keep, current) {
        Ok(removed) if !removed.is_empty() => tracing::info!(
            "removed {} old run(s) from {} (--keep-runs {keep})",
            removed.len(),
            root.display()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("muster: warning: cannot remove old runs: {e}"),
    }
}

fn new_local(root: &Path, inputs: &JournalInputs<'_>) -> Result<LocalJournal, Failure> {
    let id = new_run_id(SystemTime::now());
    let folder = RunFolder::create(root, &id).map_err(Failure::infrastructure)?;
    let lock = RunLock::take(folder.path(), &id)?;
    let backend = FileJournal::create(&folder.journal()).map_err(Failure::infrastructure)?;
    let said = vec![run_line(&folder)];
    let writer = start_writer(&folder, inputs, backend, 1)?;
    let start = run_start(&id, inputs, 1, None);
    Ok(local_journal(
        folder, lock, said, inputs, writer, start, None,
    ))
}

fn resume_local(
    root: &Path,
    inputs: &JournalInputs<'_>,
    which: &str,
) -> Result<LocalJournal, Failure> {
    let id = match which {
        LATEST => latest_run(root, inputs.pipeline)?,
        id => id.to_owned(),
    };
    let folder = RunFolder::at(root, &id).map_err(|e| Failure::Usage(e.to_string()))?;
    if !folder.journal().is_file() {
        return Err(Failure::Usage(format!(
            "there is no run {id} in {}: `muster runs` lists the runs there",
            root.display()
        )));
    }
    let lock = RunLock::take(folder.path(), &id)?;
    let mut said = vec![run_line(&folder)];
    let (backend, decoded) = FileJournal::open_for_append(&folder.journal())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if decoded.records.is_empty() {
        // Its master stopped before its first record: nothing to keep.
        said.push(format!(
            "run {id} had journaled nothing yet: starting it afresh"
        ));
        let writer = start_writer(&folder, inputs, backend, 1)?;
        let start = run_start(&id, inputs, 1, None);
        return Ok(local_journal(
            folder, lock, said, inputs, writer, start, None,
        ));
    }
    let history = History::replay(&decoded.records)
        .map_err(|e| Failure::Usage(format!("{}: {e}", folder.journal().display())))?;
    refuse_succeeded(&history)?;
    let artifacts = folder.artifacts();
    let resumption = resumption(&history, inputs.plan, &mut said, &|a| {
        muster_hub::stored_artifact(&artifacts, &a.sha256).is_file()
    });
    let writer = start_writer(&folder, inputs, backend, history.last_seq + 1)?;
    // The dashboard shows the whole run, earlier stints included.
    writer.feed().seed(&decoded.records);
    let start = run_start(&id, inputs, history.stints + 1, Some(id.clone()));
    let resume = Some(resumption);
    Ok(local_journal(
        folder, lock, said, inputs, writer, start, resume,
    ))
}

/// The writer of a local run's journal, with the modules' log files
/// beside it; its first record is `next_seq`.
fn start_writer(
    folder: &RunFolder,
    inputs: &JournalInputs<'_>,
    backend: FileJournal,
    next_seq: u64,
) -> Result<JournalWriter, Failure> {
    let logs = LogFiles::new(&folder.logs(), inputs.masker.clone(), LOG_CAP_BYTES)
        .map_err(Failure::infrastructure)?;
    Ok(JournalWriter::start(
        Box::new(backend),
        Some(logs),
        next_seq,
    ))
}

fn local_journal(
    folder: RunFolder,
    lock: RunLock,
    said: Vec<String>,
    inputs: &JournalInputs<'_>,
    writer: JournalWriter,
    start: RunStart,
    resume: Option<Resumption>,
) -> LocalJournal {
    LocalJournal {
        folder,
        journaling: Journaling {
            writer,
            start,
            masker: inputs.masker.clone(),
            resume,
        },
        lock,
        said,
    }
}

fn run_line(folder: &RunFolder) -> String {
    format!("run {} (state in {})", folder.id(), folder.path().display())
}

/// A run that succeeded has nothing left to do.
pub fn refuse_succeeded(history: &History) -> Result<(), Failure> {
    if let Some((RunOutcome::Succeeded, _)) = history.finished {
        return Err(Failure::Usage(format!(
            "run {} succeeded: there is nothing to resume (start a new run without --resume)",
            history.run_id
        )));
    }
    Ok(())
}

/// Decides what `plan` keeps from `history`, and says so in `said`: one
/// line, then one per module run again.
pub fn resumption(
    history: &History,
    plan: &Plan,
    said: &mut Vec<String>,
    available: &dyn Fn(&Artifact) -> bool,
) -> Resumption {
    let digests = module_digests(plan);
    let resumption = decide(history, plan, &digests, available);
    said.push(resumption.summary(plan));
    said.extend(
        resumption
            .lines(plan)
            .into_iter()
            .map(|line| format!("  {line}")),
    );
    resumption
}

/// The latest run of `pipeline` under `root`.
fn latest_run(root: &Path, pipeline: &Path) -> Result<String, Failure> {
    let name = pipeline_name(pipeline);
    let runs = list_runs(root).map_err(Failure::infrastructure)?;
    for run in runs {
        let folder = RunFolder::at(root, &run.id).map_err(Failure::infrastructure)?;
        if first_record(&folder.journal()).is_some_and(|start| start.pipeline == name) {
            return Ok(run.id);
        }
    }
    Err(Failure::Usage(format!(
        "there is no run of {name} to resume in {}: run it without --resume first",
        root.display()
    )))
}

/// The run's first record, if its journal starts as one should.
pub fn first_record(journal: &Path) -> Option<RunStart> {
    use std::io::{BufRead as _, Read as _};
    let file = std::fs::File::open(journal).ok()?;
    let mut line = Vec::new();
    std::io::BufReader::new(file)
        .take(1 << 20)
        .read_until(b'\n', &mut line)
        .ok()?;
    let record: Record = serde_json::from_slice(&line).ok()?;
    match record.entry {
        muster_core::journal::Entry::RunStarted(start) => Some(start),
        _ => None,
    }
}

/// The pipeline file's name as journals record it.
pub fn pipeline_name(pipeline: &Path) -> String {
    pipeline.file_name().map_or_else(
        || pipeline.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The first record of a stint.
pub fn run_start(
    run_id: &str,
    inputs: &JournalInputs<'_>,
    stint: u32,
    resumed_from: Option<String>,
) -> RunStart {
    let modules = module_digests(inputs.plan);
    RunStart {
        run_id: run_id.to_owned(),
        pipeline: pipeline_name(inputs.pipeline),
        muster_version: env!("CARGO_PKG_VERSION").to_owned(),
        stint,
        epoch: unix_ms(),
        resumed_from,
        took_over: None,
        plan_digest: plan_digest(&modules),
        modules,
        settings: inputs.settings.clone(),
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A CI run's journal, in Redis, with its artifacts and logs in a local
/// run folder.
pub struct CiJournal {
    pub folder: RunFolder,
    pub journaling: Journaling,
    /// What to tell the user: where it resumed from and what it kept.
    pub said: Vec<String>,
}

/// Where a CI run's journal goes and what it resumes from.
pub struct CiJournalPlace<'a> {
    pub redis_url: &'a str,
    pub run_id: &'a str,
    /// The attempt this one may resume from (a re-run's previous one).
    pub previous: Option<&'a str>,
    /// `--no-resume`: start afresh whatever Redis holds.
    pub no_resume: bool,
    pub epoch: u64,
    pub ttl: std::time::Duration,
    /// Set when this master takes a live run over (CI failover).
    pub took_over: Option<muster_core::journal::TookOver>,
    /// The worker names that died with the lost master's runner (its own
    /// local workers): their in-flight attempts run again at once rather
    /// than wait for a worker that cannot come back.
    pub gone_workers: Option<&'a dyn Fn(&str) -> bool>,
}

/// Opens run `place.run_id`'s journal in Redis. When Redis already holds a
/// journal for this run id (a job retried under the same id), the run goes
/// on from it; else, when the previous attempt's journal is there and that
/// attempt did not succeed, this one keeps what it can from it. Artifacts
/// of kept modules are looked for in this machine's state folder (the
/// previous attempt's run folder, when the same runner ran it); a module
/// whose artifacts are gone and needed runs again.
pub async fn open_redis(
    root: &Path,
    inputs: &JournalInputs<'_>,
    place: &CiJournalPlace<'_>,
) -> Result<CiJournal, Failure> {
    use muster_journal::{read_journal, RedisJournal};

    let folder = RunFolder::at(root, place.run_id).map_err(|e| Failure::Usage(e.to_string()))?;
    for dir in [folder.logs(), folder.artifacts()] {
        std::fs::create_dir_all(&dir).map_err(|e| {
            Failure::infrastructure(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let read = |run_id: String| async move {
        read_journal(place.redis_url, &run_id)
            .await
            .map_err(|e| Failure::infrastructure(format!("cannot read the journal to resume: {e}")))
    };
    let mut said = Vec::new();
    let mut resume = None;
    let mut stint = 1;
    let mut next_seq = 1;
    let mut resumed_from = None;
    let mut earlier_records = Vec::new();
    if !place.no_resume {
        if let Some(records) = read(place.run_id.to_owned()).await? {
            let history = replayed(&records, place.run_id)?;
            earlier_records = records;
            said.push(format!(
                "Redis holds a journal for run {} already: going on from it",
                place.run_id
            ));
            let artifacts = folder.artifacts();
            let mut kept = resumption(&history, inputs.plan, &mut said, &|a| {
                muster_hub::stored_artifact(&artifacts, &a.sha256).is_file()
            });
            if let Some(gone) = place.gone_workers {
                kept.in_flight.retain(|attempt| {
                    let waits = !gone(&attempt.worker);
                    if !waits {
                        said.push(format!(
                            "  {} runs again at once: {} went with the lost master's runner",
                            inputs.plan.modules[attempt.module].id, attempt.worker
                        ));
                    }
                    waits
                });
            }
            resume = Some(kept);
            stint = history.stints + 1;
            next_seq = history.last_seq + 1;
            resumed_from = Some(place.run_id.to_owned());
        } else if let Some(previous) = place.previous {
            match read(previous.to_owned()).await? {
                None => said.push(format!(
                    "no journal of the previous attempt ({previous}) in Redis: starting afresh"
                )),
                Some(records) => {
                    let history = replayed(&records, previous)?;
                    if let Some((RunOutcome::Succeeded, _)) = history.finished {
                        said.push(format!(
                            "the previous attempt ({previous}) succeeded: starting afresh"
                        ));
                    } else {
                        let earlier = RunFolder::at(root, previous)
                            .map_err(|e| Failure::Usage(e.to_string()))?
                            .artifacts();
                        let artifacts = folder.artifacts();
                        resume = Some(resumption(&history, inputs.plan, &mut said, &|a| {
                            adopt_blob(&earlier, &artifacts, &a.sha256)
                        }));
                        resumed_from = Some(previous.to_owned());
                    }
                }
            }
        }
    }
    let backend = RedisJournal::connect(place.redis_url, place.run_id, place.epoch, place.ttl)
        .await
        .map_err(|e| Failure::infrastructure(format!("cannot open the run's journal: {e}")))?
        .keep_log_tails(inputs.masker.clone());
    let logs = LogFiles::new(&folder.logs(), inputs.masker.clone(), LOG_CAP_BYTES)
        .map_err(Failure::infrastructure)?;
    let writer = JournalWriter::start(Box::new(backend), Some(logs), next_seq);
    writer.feed().seed(&earlier_records);
    let mut start = run_start(place.run_id, inputs, stint, resumed_from);
    start.epoch = place.epoch;
    start.took_over = place.took_over.clone();
    Ok(CiJournal {
        folder,
        journaling: Journaling {
            writer,
            start,
            masker: inputs.masker.clone(),
            resume,
        },
        said,
    })
}

fn replayed(records: &[Record], run_id: &str) -> Result<History, Failure> {
    History::replay(records)
        .map_err(|e| Failure::infrastructure(format!("the journal of run {run_id} in Redis: {e}")))
}

/// True when the blob `sha256` is in the store `to`, or was in `from` and
/// is now linked (or copied) into `to`.
fn adopt_blob(from: &Path, to: &Path, sha256: &str) -> bool {
    let target = muster_hub::stored_artifact(to, sha256);
    if target.is_file() {
        return true;
    }
    let source = muster_hub::stored_artifact(from, sha256);
    if !source.is_file() {
        return false;
    }
    let Some(parent) = target.parent() else {
        return false;
    };
    if std::fs::create_dir_all(parent).is_err() {
        return false;
    }
    // A temporary name, then a rename: the store never shows half a blob.
    let temporary = parent.join(format!(".{sha256}.adopting"));
    let copied = std::fs::hard_link(&source, &temporary)
        .or_else(|_| std::fs::copy(&source, &temporary).map(|_| ()));
    copied.is_ok() && std::fs::rename(&temporary, &target).is_ok()
}
