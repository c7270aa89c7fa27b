//! Where `muster status` and `muster runs` read a run from: a local run
//! folder (its journal file, log files and lock), or a CI run's Redis
//! Stream (its journal, the failed modules' log tails, and the discovery
//! record that says whether its master still runs). Readers never write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_core::journal::{codec, Record};
use muster_discovery::lease::Seen;
use muster_discovery::record::record_key;
use muster_discovery::store::DiscoveryStore;
use muster_journal::{list_runs, FileJournal, LogFiles, RunFolder};

use clap::Args;

use crate::failure::Failure;
use crate::flags::state_root;
use crate::journaling::{first_record, pipeline_name};
use crate::run_lock;

/// Which run a reader reads, as `muster status` and `muster report` take
/// it on their command lines.
#[derive(Args)]
pub struct RunChoice {
    /// The run [default: the latest run in the state folder; a CI run's
    /// id, as `muster ci` prints it, with --redis-url].
    run_id: Option<String>,
    /// The pipeline file whose state folder (.muster beside it) holds the
    /// run.
    #[arg(long, short = 'f', default_value = "muster.toml")]
    file: PathBuf,
    /// The state folder [default: .muster beside the pipeline file].
    #[arg(long, env = "MUSTER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Read a CI run's journal from this Redis (needs RUN_ID).
    #[arg(long, env = "MUSTER_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
}

impl RunChoice {
    /// Where the chosen run's journal is.
    pub fn source(&self) -> Result<Source, Failure> {
        Source::resolve(
            self.redis_url.as_deref(),
            self.run_id.as_deref(),
            self.state_dir.as_deref(),
            &self.file,
        )
    }
}

/// How often a local journal is looked at while following it.
const FILE_POLL: Duration = Duration::from_millis(200);
/// Bound on one look at Redis.
const LOOK: Duration = Duration::from_secs(5);

pub enum Source {
    Local { folder: RunFolder },
    Redis { url: String, run_id: String },
}

/// A follower's place in the journal.
pub enum Cursor {
    /// The byte offset up to which the file was read.
    File(u64),
    /// The Redis follower, which keeps its own place.
    Redis(Box<muster_journal::Follower>),
}

impl Source {
    /// The run `muster status` and `muster report` name: `run_id` in the
    /// Redis at `redis_url` (a CI run), else `run_id` under the state folder
    /// (`state_dir`, or `.muster` beside `file`), else the latest run there
    /// of the pipeline `file`.
    pub fn resolve(
        redis_url: Option<&str>,
        run_id: Option<&str>,
        state_dir: Option<&Path>,
        file: &Path,
    ) -> Result<Source, Failure> {
        match (redis_url, run_id) {
            (Some(url), Some(run_id)) => Ok(Source::Redis {
                url: url.to_owned(),
                run_id: run_id.to_owned(),
            }),
            (Some(_), None) => Err(Failure::Usage(
                "a CI run needs its run id: pass RUN_ID (as `muster ci` printed it, e.g. \
                 github-123-1)"
                    .into(),
            )),
            (None, run_id) => {
                let root = state_root(state_dir, file);
                Source::local(&root, run_id, &pipeline_name(file))
            }
        }
    }

    /// The local run `run_id` under `root`, or the latest run there of
    /// the pipeline file named `pipeline` (of any, when it has none).
    pub fn local(root: &Path, run_id: Option<&str>, pipeline: &str) -> Result<Source, Failure> {
        let id = match run_id {
            Some(id) => id.to_owned(),
            None => {
                let runs = list_runs(root).map_err(Failure::infrastructure)?;
                let of_pipeline = runs.iter().find(|run| {
                    RunFolder::at(root, &run.id)
                        .ok()
                        .and_then(|folder| first_record(&folder.journal()))
                        .is_some_and(|start| start.pipeline == pipeline)
                });
                of_pipeline
                    .or(runs.first())
                    .map(|run| run.id.clone())
                    .ok_or_else(|| {
                    Failure::Usage(format!(
                        "there are no runs in {}: start one with `muster run` (or pass --state-dir, \
                         or --redis-url and a RUN_ID for a CI run)",
                        root.display()
                    ))
                })?
            }
        };
        let folder = RunFolder::at(root, &id).map_err(|e| Failure::Usage(e.to_string()))?;
        if !folder.journal().is_file() {
            return Err(Failure::Usage(format!(
                "there is no run {id} in {}: `muster runs` lists the runs there",
                root.display()
            )));
        }
        Ok(Source::Local { folder })
    }

    pub fn run_id(&self) -> &str {
        match self {
            Source::Local { folder } => folder.id(),
            Source::Redis { run_id, .. } => run_id,
        }
    }

    /// Every record so far.
    pub async fn read(&self) -> Result<Vec<Record>, Failure> {
        match self {
            Source::Local { folder } => {
                let decoded =
                    FileJournal::read(&folder.journal()).map_err(Failure::infrastructure)?;
                Ok(decoded.records)
            }
            Source::Redis { url, run_id } => muster_journal::read_journal(url, run_id)
                .await
                .map_err(Failure::infrastructure)?
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "Redis has no journal for run {run_id} (never started, or expired)"
                    ))
                }),
        }
    }

    /// A follower from the journal's start (callers skip the records they
    /// have by their seq).
    pub async fn follow(&self) -> Result<Cursor, Failure> {
        match self {
            Source::Local { .. } => Ok(Cursor::File(0)),
            Source::Redis { url, run_id } => {
                let follower = muster_journal::Follower::open(url, run_id, None)
                    .await
                    .map_err(Failure::infrastructure)?;
                Ok(Cursor::Redis(Box::new(follower)))
            }
        }
    }

    /// Records written after `cursor`, waiting a little for some.
    pub async fn next(&self, cursor: &mut Cursor) -> Result<Vec<Record>, Failure> {
        match (self, cursor) {
            (Source::Local { folder }, Cursor::File(offset)) => {
                tokio::time::sleep(FILE_POLL).await;
                let path = folder.journal();
                let bytes = std::fs::read(&path).map_err(|e| {
                    Failure::infrastructure(format!("cannot read {}: {e}", path.display()))
                })?;
                let start = (*offset as usize).min(bytes.len());
                let Some(last_newline) = bytes[start..].iter().rposition(|&b| b == b'\n') else {
                    return Ok(Vec::new());
                };
                let end = start + last_newline + 1;
                let mut records = Vec::new();
                let mut at = start;
                for line in bytes[start..end].split(|&b| b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    let record = codec::decode_one(line, &path.display().to_string(), 0, at as u64)
                        .map_err(Failure::infrastructure)?;
                    at += line.len() + 1;
                    records.push(record);
                }
                *offset = end as u64;
                Ok(records)
            }
            (Source::Redis { .. }, Cursor::Redis(follower)) => {
                follower.next().await.map_err(Failure::infrastructure)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A module's last log lines, when they are kept.
    pub async fn tail(&self, module: &str, lines: usize) -> Option<Vec<String>> {
        match self {
            Source::Local { folder } => {
                LogFiles::tail(&folder.logs(), module, lines).ok().flatten()
            }
            Source::Redis { url, run_id } => {
                let text = muster_journal::read_log_tail(url, run_id, module)
                    .await
                    .ok()
                    .flatten()?;
                let all: Vec<String> = text.lines().map(str::to_owned).collect();
                Some(all[all.len().saturating_sub(lines)..].to_vec())
            }
        }
    }

    /// Whether a master is working on the run now (`None`: cannot tell).
    /// In CI, the master's lease says so within its TTL; a run without one
    /// (no master ever took it) goes by its discovery record.
    pub async fn master_running(&self) -> Option<bool> {
        match self {
            Source::Local { folder } => Some(run_lock::is_running(folder.path())),
            Source::Redis { url, run_id } => {
                let store = DiscoveryStore::open(url).ok()?;
                let record = tokio::time::timeout(LOOK, store.read(run_id))
                    .await
                    .ok()?
                    .ok()?;
                if record.as_ref().is_some_and(|r| r.finished().is_some()) {
                    return Some(false);
                }
                match store.lease(run_id, LOOK).await.ok()? {
                    Seen::Held(_) => Some(true),
                    Seen::Lapsed { .. } => Some(false),
                    Seen::Never => Some(record.is_some()),
                }
            }
        }
    }

    /// After the master was seen gone: whether one is back within `limit`
    /// (in CI, another instance taking the run over).
    pub async fn master_back_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.master_running().await == Some(true) {
                return true;
            }
            if matches!(self, Source::Local { .. }) {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        false
    }

    /// Where the run is, for messages.
    /// `module`'s whole log as kept (at most its last `max` bytes): the
    /// log files of a local run; for a CI run, the tail Redis keeps of a
    /// module that failed.
    pub async fn whole_log(&self, module: &str, max: u64) -> Option<String> {
        match self {
            Source::Local { folder } => LogFiles::read_whole(&folder.logs(), module, max)
                .ok()
                .map(|(text, _)| text)
                .filter(|text| !text.is_empty()),
            Source::Redis { url, run_id } => muster_journal::read_log_tail(url, run_id, module)
                .await
                .ok()
                .flatten(),
        }
    }

    pub fn shown(&self) -> String {
        match self {
            Source::Local { folder } => folder.path().display().to_string(),
            Source::Redis { url, run_id } => format!(
                "{} in Redis at {} (discovery record {})",
                muster_journal::redis::stream_key(run_id),
                muster_core::url::redact_url(url),
                record_key(run_id)
            ),
        }
    }
}
