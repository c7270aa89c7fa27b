//! The report model: one run, as its journal tells it, in the shape every
//! format renders. Built by a pure function from the run's records (folded
//! by [`History`]); the caller adds the last log lines of the modules that
//! did not succeed, from wherever the run keeps them. Its JSON form (`serde`) is the documented `muster-report/1`
//! schema (docs/report.md, docs/report.schema.json): field order is the
//! order below, maps are sorted.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::journal::{Entry, History, HistoryError, ModuleStatus, Record, StateName};
use crate::wire::types::RunOutcome;
use crate::CACHE_HIT_NOTE;

/// The schema name and version every JSON report carries. Bumped when a
/// field changes meaning or goes away; added fields keep it.
pub const SCHEMA: &str = "muster-report/1";

/// A run after (or while) it ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub schema: &'static str,
    pub run_id: String,
    /// The pipeline file's name, as the journal recorded it.
    pub pipeline: String,
    pub outcome: Outcome,
    /// Why the run was cancelled, when it was.
    pub cancelled: Option<String>,
    /// Unix ms of the first record, and of the end (`None` while running).
    #[serde(serialize_with = "rfc3339")]
    pub started_at: Option<u64>,
    #[serde(serialize_with = "rfc3339")]
    pub finished_at: Option<u64>,
    pub duration_ms: Option<u64>,
    /// Masters that worked on it: 1, plus one per resume.
    pub stints: u32,
    pub resumed_from: Option<String>,
    /// Modules in each state (`StateName` words in camelCase), states with
    /// none left out.
    pub counts: BTreeMap<StateName, usize>,
    /// In plan order (a topological order of the DAG).
    pub modules: Vec<ModuleReport>,
    /// In the order they first joined.
    pub workers: Vec<WorkerReport>,
    /// CI failovers: masters that took the live run over, in order.
    pub failovers: Vec<FailoverReport>,
}

/// One CI failover.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverReport {
    /// The master that stopped renewing its lease (`instance 0 at epoch
    /// 1`), if known.
    pub lost: Option<String>,
    /// When its lease was first seen lapsed.
    #[serde(serialize_with = "rfc3339")]
    pub lost_at: Option<u64>,
    /// The instance that took over (`instance 2`), when, and its epoch.
    pub by: String,
    #[serde(serialize_with = "rfc3339")]
    pub took_over_at: Option<u64>,
    pub epoch: u64,
}

/// How the run ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// Still running, or its master stopped before the end.
    Unfinished,
}

/// One module of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleReport {
    pub id: String,
    pub state: StateName,
    /// The attempt it is at or ended with (0: never started).
    pub attempts: u32,
    /// The worker that holds it or ran its last attempt.
    pub worker: Option<String>,
    /// Unix ms when its last attempt started, and when it ended.
    #[serde(serialize_with = "rfc3339")]
    pub started_at: Option<u64>,
    #[serde(serialize_with = "rfc3339")]
    pub finished_at: Option<u64>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    /// Why it failed, timed out, was cancelled or skipped (masked).
    pub reason: Option<String>,
    /// The names of its outputs; values stay out of reports.
    pub outputs: Vec<String>,
    pub artifacts: Vec<ArtifactReport>,
    /// Its result came from the result cache.
    pub cached: bool,
    /// Kept from this earlier run by a resume.
    pub kept_from: Option<String>,
    /// How its approval gate was decided, when it has one that was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateReport>,
    /// How its compensation went, when the failed run compensated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationReport>,
    /// The last lines of its (masked) log, for a module that did not
    /// succeed and whose log is kept; not part of the JSON.
    #[serde(skip)]
    pub log_tail: Vec<String>,
}

/// A gate's decision: `approved`, `rejected` or `expired`, by whom, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateReport {
    pub decision: String,
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// A compensation's last word: `started`, `succeeded` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompensationReport {
    pub state: String,
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactReport {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A worker that joined the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerReport {
    pub name: String,
    pub capabilities: Vec<String>,
    pub slots: u32,
    /// Unix ms when it first joined, and when it last left (`None`: still
    /// connected when the journal ends).
    #[serde(serialize_with = "rfc3339")]
    pub joined_at: Option<u64>,
    #[serde(serialize_with = "rfc3339")]
    pub left_at: Option<u64>,
    pub left_reason: Option<String>,
    /// Modules whose last attempt it holds or ran.
    pub modules: usize,
}

impl Report {
    /// The report of the run `records` tell, without log tails (the
    /// caller adds those of the modules that [did not
    /// succeed](ModuleReport::did_not_succeed)).
    pub fn build(records: &[Record]) -> Result<Report, HistoryError> {
        let history = History::replay(records)?;
        let modules: Vec<ModuleReport> = history
            .modules
            .iter()
            .map(|m| module_report(m, &history))
            .collect();
        let workers = worker_reports(records, &modules);
        let finished_at = history.finished.map(|(_, at)| at);
        Ok(Report {
            schema: SCHEMA,
            run_id: history.run_id.clone(),
            pipeline: history.pipeline.clone(),
            outcome: match history.outcome() {
                Some(RunOutcome::Succeeded) => Outcome::Succeeded,
                Some(RunOutcome::Failed) => Outcome::Failed,
                Some(RunOutcome::Cancelled) => Outcome::Cancelled,
                None => Outcome::Unfinished,
            },
            cancelled: history.cancelled.clone(),
            started_at: Some(history.started_at),
            finished_at,
            duration_ms: finished_at.map(|end| end.saturating_sub(history.started_at)),
            stints: history.stints,
            resumed_from: history.resumed_from.clone(),
            counts: history.counts(),
            modules,
            workers,
            failovers: history
                .takeovers
                .iter()
                .map(|(took, at)| FailoverReport {
                    lost: took.from.clone(),
                    lost_at: Some(took.lost_at),
                    by: took.by.clone(),
                    took_over_at: Some(*at),
                    epoch: took.epoch,
                })
                .collect(),
        })
    }

    /// The module called `id`.
    pub fn module(&self, id: &str) -> Option<&ModuleReport> {
        self.modules.iter().find(|m| m.id == id)
    }

    /// How many modules are in `state`.
    pub fn count(&self, state: StateName) -> usize {
        self.counts.get(&state).copied().unwrap_or(0)
    }
}

impl Outcome {
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Unfinished => "unfinished",
        }
    }
}

impl ModuleReport {
    /// Ended without succeeding: failed, timed out or cancelled.
    pub fn did_not_succeed(&self) -> bool {
        matches!(
            self.state,
            StateName::Failed | StateName::TimedOut | StateName::Cancelled
        )
    }
}

fn module_report(status: &ModuleStatus, history: &History) -> ModuleReport {
    let terminal = status.state.is_terminal();
    // A kept module ran in an earlier run: its times here would be when
    // this one kept it.
    let kept = status.kept_from.is_some();
    let ran = status.started_at.is_some() || status.duration_ms.is_some();
    ModuleReport {
        id: status.id.clone(),
        state: status.state,
        attempts: status.attempt.unwrap_or(0),
        worker: status.worker.clone(),
        started_at: status.started_at.filter(|_| !kept),
        finished_at: (terminal && ran && !kept).then_some(status.since),
        duration_ms: status.duration_ms,
        exit_code: status.exit_code,
        reason: status.reason.clone(),
        outputs: status.outputs.keys().cloned().collect(),
        artifacts: status
            .artifacts
            .iter()
            .map(|a| ArtifactReport {
                path: a.path.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect(),
        cached: is_cache_hit(status),
        kept_from: status.kept_from.clone(),
        gate: history.gates.get(&status.id).map(|g| GateReport {
            decision: g.decision.clone(),
            by: g.by.clone(),
            reason: g.reason.clone(),
        }),
        compensation: history
            .compensations
            .get(&status.id)
            .map(|c| CompensationReport {
                state: c.state.clone(),
                worker: c.worker.clone(),
                exit_code: c.exit_code,
                reason: c.reason.clone(),
            }),
        log_tail: Vec::new(),
    }
}

/// A cache hit's success carries a note saying so: the hub's
/// `cached (key …, saved …)`, or the run's own [`CACHE_HIT_NOTE`].
fn is_cache_hit(status: &ModuleStatus) -> bool {
    status.state == StateName::Succeeded
        && status
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("cached (") || n == CACHE_HIT_NOTE)
}

/// Every worker the records name, with what it last said and how many
/// modules it holds or ran last.
fn worker_reports(records: &[Record], modules: &[ModuleReport]) -> Vec<WorkerReport> {
    let mut workers: Vec<WorkerReport> = Vec::new();
    for record in records {
        match &record.entry {
            Entry::WorkerJoined {
                name,
                capabilities,
                slots,
            } => match workers.iter_mut().find(|w| &w.name == name) {
                Some(worker) => {
                    worker.capabilities.clone_from(capabilities);
                    worker.slots = *slots;
                    worker.left_at = None;
                    worker.left_reason = None;
                }
                None => workers.push(WorkerReport {
                    name: name.clone(),
                    capabilities: capabilities.clone(),
                    slots: *slots,
                    joined_at: Some(record.at),
                    left_at: None,
                    left_reason: None,
                    modules: 0,
                }),
            },
            Entry::WorkerLeft { name, reason } => {
                if let Some(worker) = workers.iter_mut().find(|w| &w.name == name) {
                    worker.left_at = Some(record.at);
                    worker.left_reason = Some(reason.clone());
                }
            }
            _ => {}
        }
    }
    for worker in &mut workers {
        worker.modules = modules
            .iter()
            .filter(|m| m.worker.as_deref() == Some(worker.name.as_str()))
            .count();
    }
    workers
}

/// Unix ms as RFC 3339 UTC with milliseconds: `2026-12-01T10:22:05.123Z`.
pub fn rfc3339_text(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

fn rfc3339<S: Serializer>(at: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(ms) => serializer.serialize_str(&rfc3339_text(*ms)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::journal::{ModuleDigest, ModuleRecord, RunStart, Settings, FORMAT_VERSION};
    use crate::wire::types::Artifact;

    /// A finished run of `build` (succeeded, outputs and an artifact),
    /// `test` (failed on attempt 2), `deploy` (skipped), `lint` (cached)
    /// and `docs` (kept from an earlier run), on workers w1 and w2.
    pub(crate) fn sample_records() -> Vec<Record> {
        let ids = ["build", "test", "deploy", "lint", "docs"];
        let start = Entry::RunStarted(RunStart {
            run_id: "r1".to_owned(),
            pipeline: "muster.toml".to_owned(),
            muster_version: "0.1.0".to_owned(),
            stint: 1,
            epoch: 1,
            resumed_from: None,
            took_over: None,
            plan_digest: "p".to_owned(),
            modules: ids
                .iter()
                .map(|id| ModuleDigest {
                    id: (*id).to_owned(),
                    digest: format!("d-{id}"),
                    parts: BTreeMap::new(),
                    needs: Vec::new(),
                })
                .collect(),
            settings: Settings::default(),
        });
        let module = |id: &str, state: StateName, attempt: u32| ModuleRecord {
            module: id.to_owned(),
            state,
            attempt: Some(attempt),
            worker: Some("w1".to_owned()),
            ..ModuleRecord::default()
        };
        let entries = vec![
            start,
            Entry::WorkerJoined {
                name: "w1".to_owned(),
                capabilities: vec!["os:linux".to_owned()],
                slots: 2,
            },
            Entry::WorkerJoined {
                name: "w2".to_owned(),
                capabilities: vec![],
                slots: 1,
            },
            Entry::Module(module("build", StateName::Running, 1)),
            Entry::Module(ModuleRecord {
                exit_code: Some(0),
                duration_ms: Some(2000),
                outputs: BTreeMap::from([("version".to_owned(), "s3cr3t-ish".to_owned())]),
                artifacts: vec![Artifact {
                    path: "dist/app".to_owned(),
                    size: 3,
                    sha256: "ab".repeat(32),
                    mode: 0o755,
                }],
                ..module("build", StateName::Succeeded, 1)
            }),
            Entry::Module(module("test", StateName::Running, 1)),
            Entry::Module(ModuleRecord {
                worker: Some("w2".to_owned()),
                ..module("test", StateName::Running, 2)
            }),
            Entry::Module(ModuleRecord {
                worker: Some("w2".to_owned()),
                exit_code: Some(3),
                duration_ms: Some(1000),
                reason: Some("exit code 3".to_owned()),
                ..module("test", StateName::Failed, 2)
            }),
            Entry::Module(ModuleRecord {
                worker: None,
                attempt: None,
                reason: Some("need 'test' failed".to_owned()),
                ..module("deploy", StateName::Skipped, 0)
            }),
            Entry::Module(ModuleRecord {
                worker: None,
                duration_ms: Some(500),
                note: Some("cached (key 3f9a0b1c…, saved 0.5s)".to_owned()),
                ..module("lint", StateName::Succeeded, 1)
            }),
            Entry::Module(ModuleRecord {
                worker: None,
                kept_from: Some("r0".to_owned()),
                note: Some("kept from run r0".to_owned()),
                ..module("docs", StateName::Succeeded, 1)
            }),
            Entry::WorkerLeft {
                name: "w2".to_owned(),
                reason: "shut down".to_owned(),
            },
            Entry::RunFinished {
                outcome: RunOutcome::Failed,
                cancelled: None,
            },
        ];
        entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| Record {
                v: FORMAT_VERSION,
                seq: i as u64 + 1,
                at: 1_700_000_000_000 + 1000 * i as u64,
                entry,
            })
            .collect()
    }

    pub(crate) fn sample() -> Report {
        let mut report = Report::build(&sample_records()).unwrap();
        for module in report.modules.iter_mut().filter(|m| m.did_not_succeed()) {
            module.log_tail = vec!["compiling".to_owned(), "error: boom".to_owned()];
        }
        report
    }

    #[test]
    fn a_failover_is_reported_with_who_lost_and_who_took_over() {
        let mut records = sample_records();
        let Entry::RunStarted(first) = records[0].entry.clone() else {
            panic!("the sample starts with its run");
        };
        let took_over = crate::journal::TookOver {
            from: Some("instance 0 at epoch 1".to_owned()),
            lost_at: 1_700_000_003_500,
            by: "instance 2".to_owned(),
            epoch: 2,
        };
        let second = RunStart {
            stint: 2,
            epoch: 2,
            resumed_from: Some("r1".to_owned()),
            took_over: Some(took_over),
            ..first
        };
        let end = records.pop().unwrap();
        records.push(Record {
            v: FORMAT_VERSION,
            seq: end.seq,
            at: 1_700_000_009_000,
            entry: Entry::RunStarted(second),
        });
        records.push(Record {
            seq: end.seq + 1,
            ..end
        });
        let report = Report::build(&records).unwrap();
        assert_eq!(report.failovers.len(), 1);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["failovers"][0]["lost"], "instance 0 at epoch 1");
        assert_eq!(json["failovers"][0]["lostAt"], "2023-11-14T22:13:23.500Z");
        assert_eq!(
            json["failovers"][0]["tookOverAt"],
            "2023-11-14T22:13:29.000Z"
        );
        assert_eq!(json["failovers"][0]["epoch"], 2);
        let md = crate::report::markdown::markdown(&report);
        assert!(
            md.contains("Failover: instance 0 at epoch 1 lost at 2023-11-14T22:13:23.500Z; instance 2 took over at 2023-11-14T22:13:29.000Z, epoch 2"),
            "{md}"
        );
        assert!(Report::build(&sample_records())
            .unwrap()
            .failovers
            .is_empty());
    }

    #[test]
    fn a_run_becomes_its_report() {
        let report = sample();
        assert_eq!(report.schema, "muster-report/1");
        assert_eq!(
            (report.run_id.as_str(), report.outcome),
            ("r1", Outcome::Failed)
        );
        assert_eq!(report.started_at, Some(1_700_000_000_000));
        assert_eq!(report.finished_at, Some(1_700_000_012_000));
        assert_eq!(report.duration_ms, Some(12_000));
        assert_eq!(report.count(StateName::Succeeded), 3);
        assert_eq!(report.count(StateName::Failed), 1);
        assert_eq!(report.count(StateName::Skipped), 1);

        let build = report.module("build").unwrap();
        assert_eq!(build.outputs, ["version"]);
        assert_eq!(build.artifacts[0].path, "dist/app");
        assert_eq!(
            (build.started_at, build.finished_at),
            (Some(1_700_000_003_000), Some(1_700_000_004_000))
        );
        assert!(build.log_tail.is_empty() && !build.cached);

        let test = report.module("test").unwrap();
        assert_eq!((test.attempts, test.worker.as_deref()), (2, Some("w2")));
        assert_eq!(
            (test.exit_code, test.reason.as_deref()),
            (Some(3), Some("exit code 3"))
        );
        assert_eq!(test.log_tail, ["compiling", "error: boom"]);

        let deploy = report.module("deploy").unwrap();
        assert_eq!(
            (deploy.attempts, deploy.started_at, deploy.finished_at),
            (0, None, None)
        );
        assert!(report.module("lint").unwrap().cached);
        let docs = report.module("docs").unwrap();
        assert_eq!(
            (docs.cached, docs.kept_from.as_deref()),
            (false, Some("r0"))
        );
        assert_eq!((docs.started_at, docs.finished_at), (None, None));

        let names: Vec<&str> = report.workers.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["w1", "w2"]);
        assert_eq!((report.workers[0].slots, report.workers[0].modules), (2, 1));
        assert_eq!(report.workers[0].left_at, None);
        assert_eq!(report.workers[1].left_reason.as_deref(), Some("shut down"));
    }

    #[test]
    fn output_values_never_reach_the_json() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(json.contains("\"outputs\":[\"version\"]"), "{json}");
        assert!(!json.contains("s3cr3t-ish"), "{json}");
        assert!(!json.contains("error: boom"), "log tails stay out: {json}");
        assert!(
            json.contains("\"startedAt\":\"2023-11-14T22:13:20.000Z\""),
            "{json}"
        );
    }
}
