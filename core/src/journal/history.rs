//! A run's state folded back from its journal: what `muster status`
//! shows and what a resume starts from. (To be written: see the API.)

use std::collections::BTreeMap;

use serde::Serialize;

use super::record::{Record, StateName};
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
        let _ = records;
        todo!("helper")
    }

    /// Applies one more record (for `--follow`).
    pub fn apply(&mut self, record: &Record) -> Result<(), HistoryError> {
        let _ = record;
        todo!("helper")
    }
}
