//! A run's state folded back from its journal: what `muster status`
//! shows and what a resume starts from. Records are applied one at a
//! time, so `--follow` can keep a history current as lines arrive; a
//! record that cannot apply leaves the history as it was.

use std::collections::BTreeMap;

use serde::Serialize;

use super::digest::ModuleDigest;
use super::record::{
    CompensationRecord, Entry, GateRecord, ModuleRecord, Record, RunStart, StateName, TookOver,
};
use crate::wire::types::{Artifact, RunOutcome};

/// The run as its journal tells it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub run_id: String,
    pub pipeline: String,
    /// Unix ms of the first record, and of the last.
    pub started_at: u64,
    pub last_at: u64,
    /// Masters that worked on it (1 + resumes).
    pub stints: u32,
    /// The latest stint's epoch.
    pub epoch: u64,
    pub resumed_from: Option<String>,
    /// The latest stint's plan, in its order.
    pub modules: Vec<ModuleStatus>,
    /// Workers connected now (joined and not left), by name.
    pub workers: Vec<String>,
    pub cancelled: Option<String>,
    /// Set once the latest stint finished: the outcome and when.
    pub finished: Option<(RunOutcome, u64)>,
    pub last_seq: u64,
    /// Every module definition digest the journal named → its parts, so
    /// a resume can say which part changed since a module succeeded.
    #[serde(skip)]
    pub definitions: BTreeMap<String, BTreeMap<String, String>>,
    /// The latest decision on each gated module, by module id, across
    /// stints: a resumed run keeps one only for the same question.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub gates: BTreeMap<String, GateRecord>,
    /// How each compensated module's compensation last stood, by id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub compensations: BTreeMap<String, CompensationRecord>,
    /// CI failovers, in order: each master that took the live run over,
    /// with when (unix ms) its stint began.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub takeovers: Vec<(TookOver, u64)>,
}

/// One module as the journal last told it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    pub id: String,
    /// Its definition digest in the latest stint.
    pub digest: String,
    pub state: StateName,
    pub attempt: Option<u32>,
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub reason: Option<String>,
    pub note: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub masked: bool,
    pub artifacts: Vec<Artifact>,
    pub kept_from: Option<String>,
    /// Unix ms of its last change, and of its current attempt's start.
    pub since: u64,
    pub started_at: Option<u64>,
    /// The definition digest it had when it succeeded.
    pub succeeded_with: Option<String>,
}

/// A journal whose records cannot make a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HistoryError(pub String);

impl History {
    /// Folds every record, oldest first.
    pub fn replay(records: &[Record]) -> Result<History, HistoryError> {
        if records.is_empty() {
            return Err(HistoryError(
                "the journal is empty: it does not start with a runStarted record".to_owned(),
            ));
        }
        let mut history = History::default();
        for record in records {
            history.apply(record)?;
        }
        Ok(history)
    }

    /// Applies one more record (for `--follow`). On error the history is
    /// unchanged.
    pub fn apply(&mut self, record: &Record) -> Result<(), HistoryError> {
        match &record.entry {
            Entry::RunStarted(start) => self.start_stint(start, record)?,
            _ if self.stints == 0 => {
                return Err(HistoryError(format!(
                    "the journal does not start with a runStarted record \
                     (record {} is a {} record)",
                    record.seq,
                    entry_name(&record.entry)
                )))
            }
            Entry::Module(change) => self.change_module(change, record)?,
            Entry::WorkerJoined { name, .. } => {
                if !self.workers.contains(name) {
                    self.workers.push(name.clone());
                }
            }
            Entry::WorkerLeft { name, .. } => self.workers.retain(|w| w != name),
            // Away is not gone: it may come back and still holds modules.
            Entry::WorkerAway { .. } | Entry::WorkerBack { .. } => {}
            Entry::CancelRequested { reason } => self.cancelled = Some(reason.clone()),
            Entry::GateDecided(gate) => {
                self.gates.insert(gate.module.clone(), gate.clone());
            }
            Entry::Compensation(c) => {
                self.compensations.insert(c.module.clone(), c.clone());
            }
            Entry::RunFinished { outcome, cancelled } => {
                if self.cancelled.is_none() {
                    self.cancelled = cancelled.clone();
                }
                self.finished = Some((*outcome, record.at));
            }
        }
        self.last_at = record.at;
        self.last_seq = record.seq;
        Ok(())
    }

    /// The module called `id` in the latest stint's plan.
    pub fn module(&self, id: &str) -> Option<&ModuleStatus> {
        self.modules.iter().find(|m| m.id == id)
    }

    /// How many modules are in each state (states with none are left out).
    pub fn counts(&self) -> BTreeMap<StateName, usize> {
        let mut counts = BTreeMap::new();
        for module in &self.modules {
            *counts.entry(module.state).or_insert(0) += 1;
        }
        counts
    }

    /// True once the latest stint recorded the run's end.
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// How the run ended, once it did.
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.finished.map(|(outcome, _)| outcome)
    }

    /// The definition `module` succeeded with, when it did and the journal
    /// named that digest's parts.
    pub fn succeeded_definition(&self, module: &ModuleStatus) -> Option<ModuleDigest> {
        let digest = module.succeeded_with.as_ref()?;
        Some(ModuleDigest {
            id: module.id.clone(),
            digest: digest.clone(),
            parts: self.definitions.get(digest)?.clone(),
            needs: Vec::new(),
        })
    }

    /// A new master's stint: its plan becomes the module list. A module
    /// the journal already knows keeps what it last said (a resumed local
    /// run appends to the same journal, then re-records the modules it
    /// kept); a new one is pending; one the new plan lacks is dropped.
    fn start_stint(&mut self, start: &RunStart, record: &Record) -> Result<(), HistoryError> {
        let mut modules = Vec::with_capacity(start.modules.len());
        for definition in &start.modules {
            if modules.iter().any(|m: &ModuleStatus| m.id == definition.id) {
                return Err(HistoryError(format!(
                    "runStarted record {} lists module '{}' twice",
                    record.seq, definition.id
                )));
            }
            let mut module = self
                .module(&definition.id)
                .cloned()
                .unwrap_or(ModuleStatus {
                    id: definition.id.clone(),
                    since: record.at,
                    ..ModuleStatus::default()
                });
            module.digest = definition.digest.clone();
            modules.push(module);
        }
        if self.stints == 0 {
            self.pipeline = start.pipeline.clone();
            self.started_at = record.at;
        }
        for definition in &start.modules {
            self.definitions
                .entry(definition.digest.clone())
                .or_insert_with(|| definition.parts.clone());
        }
        self.modules = modules;
        self.run_id = start.run_id.clone();
        self.stints += 1;
        self.epoch = start.epoch;
        if let Some(took_over) = &start.took_over {
            self.takeovers.push((took_over.clone(), record.at));
        }
        self.resumed_from = start.resumed_from.clone();
        self.finished = None;
        self.cancelled = None;
        self.workers.clear();
        Ok(())
    }

    fn change_module(
        &mut self,
        change: &ModuleRecord,
        record: &Record,
    ) -> Result<(), HistoryError> {
        let Some(module) = self.modules.iter_mut().find(|m| m.id == change.module) else {
            return Err(HistoryError(format!(
                "record {} is about module '{}', which the run's plan does not have",
                record.seq, change.module
            )));
        };
        module.state = change.state;
        module.attempt = change.attempt;
        module.worker = change.worker.clone();
        module.note = change.note.clone();
        module.masked = change.masked;
        module.kept_from = change.kept_from.clone();
        module.since = record.at;
        if change.state.is_terminal() {
            module.exit_code = change.exit_code;
            module.duration_ms = change.duration_ms;
            module.reason = change.reason.clone();
            module.outputs = change.outputs.clone();
            module.artifacts = change.artifacts.clone();
        } else {
            // Results belong to an ended attempt, not to one under way.
            module.exit_code = None;
            module.duration_ms = None;
            module.reason = None;
            module.outputs.clear();
            module.artifacts.clear();
        }
        match change.state {
            StateName::Running => module.started_at = Some(record.at),
            StateName::Pending | StateName::AwaitingApproval | StateName::Ready => {
                module.started_at = None
            }
            _ => {}
        }
        module.succeeded_with = match change.state {
            StateName::Succeeded => Some(module.digest.clone()),
            _ => None,
        };
        Ok(())
    }
}

/// A record's `type`, for messages.
fn entry_name(entry: &Entry) -> &'static str {
    match entry {
        Entry::RunStarted(_) => "runStarted",
        Entry::Module(_) => "module",
        Entry::WorkerJoined { .. } => "workerJoined",
        Entry::WorkerLeft { .. } => "workerLeft",
        Entry::WorkerAway { .. } => "workerAway",
        Entry::WorkerBack { .. } => "workerBack",
        Entry::CancelRequested { .. } => "cancelRequested",
        Entry::GateDecided(_) => "gateDecided",
        Entry::Compensation(_) => "compensation",
        Entry::RunFinished { .. } => "runFinished",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{Settings, FORMAT_VERSION};

    fn record(seq: u64, at: u64, entry: Entry) -> Record {
        Record {
            v: FORMAT_VERSION,
            seq,
            at,
            entry,
        }
    }

    /// A stint of run `run_id` whose modules are `(id, command digest)`.
    fn started(run_id: &str, stint: u32, modules: &[(&str, &str)]) -> Entry {
        Entry::RunStarted(RunStart {
            run_id: run_id.to_owned(),
            pipeline: format!("pipeline-{stint}.toml"),
            muster_version: "0.1.0".to_owned(),
            stint,
            epoch: u64::from(stint) * 10,
            resumed_from: (stint > 1).then(|| run_id.to_owned()),
            took_over: None,
            plan_digest: "plan".to_owned(),
            modules: modules
                .iter()
                .map(|(id, command)| ModuleDigest {
                    id: (*id).to_owned(),
                    digest: format!("d-{command}"),
                    parts: BTreeMap::from([("command".to_owned(), (*command).to_owned())]),
                    needs: Vec::new(),
                })
                .collect(),
            settings: Settings::default(),
        })
    }

    fn moved(module: &str, state: StateName, attempt: Option<u32>) -> Entry {
        Entry::Module(ModuleRecord {
            module: module.to_owned(),
            state,
            attempt,
            ..ModuleRecord::default()
        })
    }

    fn ended(module: &str, state: StateName, attempt: u32, exit_code: i32) -> Entry {
        Entry::Module(ModuleRecord {
            module: module.to_owned(),
            state,
            attempt: Some(attempt),
            worker: Some("w1".to_owned()),
            exit_code: Some(exit_code),
            duration_ms: Some(1500),
            reason: (exit_code != 0).then(|| format!("exit code {exit_code}")),
            outputs: BTreeMap::from([("version".to_owned(), "1.2".to_owned())]),
            artifacts: vec![Artifact {
                path: "dist/app".to_owned(),
                size: 3,
                sha256: "ab".repeat(32),
                mode: 0o644,
            }],
            ..ModuleRecord::default()
        })
    }

    fn joined(name: &str) -> Entry {
        Entry::WorkerJoined {
            name: name.to_owned(),
            capabilities: Vec::new(),
            slots: 1,
        }
    }

    /// Gives each entry the next seq, at 1000, 1010, ...
    fn replay(entries: Vec<Entry>) -> Result<History, HistoryError> {
        let records: Vec<Record> = entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| record(i as u64 + 1, 1000 + 10 * i as u64, entry))
            .collect();
        History::replay(&records)
    }

    #[test]
    fn a_journal_must_start_with_a_run_started_record() {
        let error = History::replay(&[]).unwrap_err();
        assert!(
            error.0.contains("does not start with a runStarted record"),
            "{error}"
        );
        let error = replay(vec![joined("w1")]).unwrap_err();
        assert_eq!(
            error.0,
            "the journal does not start with a runStarted record \
             (record 1 is a workerJoined record)"
        );
    }

    #[test]
    fn a_run_folds_into_its_modules_workers_and_outcome() {
        let history = replay(vec![
            started("r1", 1, &[("a", "make"), ("b", "test")]),
            joined("w1"),
            joined("w2"),
            joined("w1"),
            moved("a", StateName::Ready, Some(1)),
            moved("a", StateName::Running, Some(1)),
            ended("a", StateName::Succeeded, 1, 0),
            moved("b", StateName::Ready, Some(1)),
            moved("b", StateName::Running, Some(1)),
            Entry::WorkerAway {
                name: "w2".to_owned(),
                reason: "reset".to_owned(),
                held: 1,
            },
            ended("b", StateName::Failed, 1, 2),
            Entry::WorkerLeft {
                name: "w1".to_owned(),
                reason: "done".to_owned(),
            },
            Entry::CancelRequested {
                reason: "fail-fast".to_owned(),
            },
            Entry::RunFinished {
                outcome: RunOutcome::Failed,
                cancelled: Some("fail-fast".to_owned()),
            },
        ])
        .unwrap();
        assert_eq!(history.run_id, "r1");
        assert_eq!(history.pipeline, "pipeline-1.toml");
        assert_eq!((history.stints, history.epoch), (1, 10));
        assert_eq!((history.started_at, history.last_at), (1000, 1130));
        assert_eq!(history.last_seq, 14);
        assert_eq!(history.workers, ["w2"]);
        assert_eq!(history.cancelled.as_deref(), Some("fail-fast"));
        assert_eq!(history.finished, Some((RunOutcome::Failed, 1130)));
        assert_eq!(history.outcome(), Some(RunOutcome::Failed));
        assert!(history.is_finished());
        assert_eq!(
            history.counts(),
            BTreeMap::from([(StateName::Succeeded, 1), (StateName::Failed, 1)])
        );
        let a = history.module("a").unwrap();
        assert_eq!(a.state, StateName::Succeeded);
        assert_eq!(
            (a.attempt, a.exit_code, a.duration_ms),
            (Some(1), Some(0), Some(1500))
        );
        assert_eq!((a.since, a.started_at), (1060, Some(1050)));
        assert_eq!(a.succeeded_with.as_deref(), Some("d-make"));
        assert_eq!(a.outputs["version"], "1.2");
        assert_eq!(a.artifacts.len(), 1);
        let b = history.module("b").unwrap();
        assert_eq!(b.reason.as_deref(), Some("exit code 2"));
        assert_eq!(b.succeeded_with, None);
    }

    #[test]
    fn a_module_moving_on_loses_its_last_result() {
        let history = replay(vec![
            started("r1", 1, &[("a", "make")]),
            moved("a", StateName::Running, Some(1)),
            ended("a", StateName::Succeeded, 1, 0),
            Entry::Module(ModuleRecord {
                module: "a".to_owned(),
                state: StateName::Ready,
                attempt: Some(2),
                note: Some("its command changed".to_owned()),
                ..ModuleRecord::default()
            }),
        ])
        .unwrap();
        let a = history.module("a").unwrap();
        assert_eq!(a.state, StateName::Ready);
        assert_eq!(a.attempt, Some(2));
        assert_eq!(a.note.as_deref(), Some("its command changed"));
        assert_eq!((a.exit_code, a.duration_ms, &a.reason), (None, None, &None));
        assert!(a.outputs.is_empty() && a.artifacts.is_empty());
        assert_eq!((a.worker.as_deref(), a.started_at), (None, None));
        assert_eq!(a.succeeded_with, None);
    }

    #[test]
    fn a_record_for_an_unknown_module_is_refused_and_changes_nothing() {
        let mut history = replay(vec![started("r1", 1, &[("a", "make")])]).unwrap();
        let before = history.clone();
        let error = history
            .apply(&record(2, 2000, moved("ghost", StateName::Ready, Some(1))))
            .unwrap_err();
        assert_eq!(
            error.0,
            "record 2 is about module 'ghost', which the run's plan does not have"
        );
        assert_eq!(history, before);
        let twice = record(2, 2000, started("r1", 2, &[("a", "make"), ("a", "x")]));
        assert!(history.apply(&twice).unwrap_err().0.contains("'a' twice"));
        assert_eq!(history, before);
    }

    #[test]
    fn a_resumed_stint_keeps_known_modules_and_takes_the_new_plan() {
        let history = replay(vec![
            started("r1", 1, &[("a", "make"), ("b", "test"), ("c", "lint")]),
            joined("w1"),
            ended("a", StateName::Succeeded, 1, 0),
            moved("b", StateName::Running, Some(2)),
            Entry::CancelRequested {
                reason: "ctrl-c".to_owned(),
            },
            Entry::RunFinished {
                outcome: RunOutcome::Cancelled,
                cancelled: None,
            },
            // The master resumes with a changed `a`, `b` as it was, a new
            // `d`, and no `c`.
            started("r1", 2, &[("d", "docs"), ("a", "make all"), ("b", "test")]),
        ])
        .unwrap();
        assert_eq!(history.stints, 2);
        assert_eq!(history.epoch, 20);
        assert_eq!(history.pipeline, "pipeline-1.toml");
        assert_eq!(history.resumed_from.as_deref(), Some("r1"));
        assert_eq!((history.finished, &history.cancelled), (None, &None));
        assert!(history.workers.is_empty());
        assert_eq!(history.started_at, 1000);
        let ids: Vec<_> = history.modules.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["d", "a", "b"]);
        let d = history.module("d").unwrap();
        assert_eq!(
            (d.state, d.since, &d.digest),
            (StateName::Pending, 1060, &"d-docs".to_owned())
        );
        let a = history.module("a").unwrap();
        assert_eq!(a.state, StateName::Succeeded);
        assert_eq!(a.digest, "d-make all");
        assert_eq!(a.succeeded_with.as_deref(), Some("d-make"));
        let earlier = history.succeeded_definition(a).unwrap();
        assert_eq!(earlier.parts["command"], "make");
        let b = history.module("b").unwrap();
        assert_eq!((b.state, b.attempt), (StateName::Running, Some(2)));
    }

    #[test]
    fn apply_follows_a_journal_as_it_grows() {
        let mut history = replay(vec![started("r1", 1, &[("a", "make")])]).unwrap();
        assert!(!history.is_finished());
        history
            .apply(&record(2, 1500, moved("a", StateName::Running, Some(1))))
            .unwrap();
        history
            .apply(&record(3, 1700, ended("a", StateName::Succeeded, 1, 0)))
            .unwrap();
        let finished = Entry::RunFinished {
            outcome: RunOutcome::Succeeded,
            cancelled: None,
        };
        history.apply(&record(4, 1800, finished)).unwrap();
        assert_eq!(history.outcome(), Some(RunOutcome::Succeeded));
        assert_eq!((history.last_seq, history.last_at), (4, 1800));
        assert_eq!(history.module("a").unwrap().started_at, Some(1500));
    }
}
