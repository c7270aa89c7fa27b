//! What one journal record says. Every change of run state is one
//! [`Record`]: a sequence number, the wall-clock time, and an [`Entry`].
//! Names, not the hub's worker ids (which mean nothing to another master),
//! and module ids, not plan indexes (a resumed plan may differ).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::ModuleState;
use crate::wire::types::{Artifact, RunOutcome};

/// The journal format this muster writes and the newest it reads. Bumped
/// when a record changes in a way an older reader would misread: 2 added
/// approval gates (the `awaitingApproval` state, `gateDecided` records)
/// and `compensation` records.
pub const FORMAT_VERSION: u32 = 2;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The journal format the record was written in.
    pub v: u32,
    /// 1, 2, 3, ... in the order written; a resumed run continues the count.
    pub seq: u64,
    /// Unix time in milliseconds when the master wrote it.
    pub at: u64,
    #[serde(flatten)]
    pub entry: Entry,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Entry {
    /// A master started (or resumed) the run: the first record of each
    /// master's stint.
    RunStarted(RunStart),
    /// A module moved to a new state.
    Module(ModuleRecord),
    #[serde(rename_all = "camelCase")]
    WorkerJoined {
        name: String,
        capabilities: Vec<String>,
        slots: u32,
    },
    #[serde(rename_all = "camelCase")]
    WorkerLeft { name: String, reason: String },
    /// A worker's connection dropped while it held modules.
    #[serde(rename_all = "camelCase")]
    WorkerAway {
        name: String,
        reason: String,
        held: usize,
    },
    #[serde(rename_all = "camelCase")]
    WorkerBack { name: String, kept: usize },
    /// A gate was decided (or expired). Bound to what was asked: the
    /// module's definition digest and a digest of its needs' outputs when
    /// it opened, so a resumed run keeps the decision only for the same
    /// question.
    GateDecided(GateRecord),
    /// A compensation of a succeeded module started or ended, after the
    /// run failed.
    Compensation(CompensationRecord),
    /// Someone asked to cancel the run (Ctrl-C, `muster cancel`,
    /// `--fail-fast`).
    #[serde(rename_all = "camelCase")]
    CancelRequested { reason: String },
    /// Every module has ended.
    #[serde(rename_all = "camelCase")]
    RunFinished {
        outcome: RunOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancelled: Option<String>,
    },
}

/// The first record of a master's stint on a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStart {
    pub run_id: String,
    /// The pipeline file as the user named it (for `muster runs`).
    pub pipeline: String,
    pub muster_version: String,
    /// 1 for the run's first master, then one more per resume.
    pub stint: u32,
    /// Orders masters of one run: a journal refuses appends with a lower
    /// epoch than one it has seen (Redis checks it in its script).
    pub epoch: u64,
    /// The run whose succeeded modules this one kept, when resumed (the
    /// same id when a local run is continued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// Set when this master took a live CI run over from another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over: Option<TookOver>,
    pub plan_digest: String,
    /// Every module of the plan, in plan order, with its definition digest.
    pub modules: Vec<ModuleDigest>,
    pub settings: Settings,
}

/// A CI failover: which master was lost, and who took the run over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TookOver {
    /// The master that stopped renewing its lease (`instance 0 at epoch
    /// 1`), if it was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Unix ms when its lease was first seen lapsed.
    pub lost_at: u64,
    /// The instance that took over (`instance 2`) and its epoch.
    pub by: String,
    pub epoch: u64,
}

/// The run settings that shape what happens, as the master had them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub fail_fast: bool,
    pub max_worker_losses: u32,
}

pub use super::digest::ModuleDigest;

/// A decision on a module's approval gate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateRecord {
    pub module: String,
    /// `approved`, `rejected`, or `expired`.
    pub decision: String,
    /// The approver's name, or `the run token`; absent when it expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The approver's inputs (masked as outputs are).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// The module's definition digest when the gate opened.
    pub definition: String,
    /// A digest of its needs' outputs when the gate opened.
    pub needs_outputs: String,
}

/// A compensation's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompensationRecord {
    pub module: String,
    /// `started`, `succeeded` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed (masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A module's new state and what came with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRecord {
    pub module: String,
    pub state: StateName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The worker holding it, or that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed, timed out, was cancelled or skipped (masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it moved, when the state does not say (a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Its outputs, secret values masked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// True when masking changed an output: the journal does not hold the
    /// value a dependent would need, so a resume runs the module again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub masked: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Set on a module a resumed run kept: the run it succeeded in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_from: Option<String>,
    /// While it awaits approval: the inputs an approval must give.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval_inputs: Vec<String>,
}

/// A module state's name on the journal.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum StateName {
    #[default]
    Pending,
    AwaitingApproval,
    Ready,
    Assigned,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Skipped,
}

impl StateName {
    pub fn of(state: &ModuleState) -> StateName {
        match state {
            ModuleState::Pending => StateName::Pending,
            ModuleState::AwaitingApproval { .. } => StateName::AwaitingApproval,
            ModuleState::Ready { .. } => StateName::Ready,
            ModuleState::Assigned { .. } => StateName::Assigned,
            ModuleState::Running { .. } => StateName::Running,
            ModuleState::Succeeded(_) => StateName::Succeeded,
            ModuleState::Failed(_) => StateName::Failed,
            ModuleState::TimedOut(_) => StateName::TimedOut,
            ModuleState::Cancelled(_) => StateName::Cancelled,
            ModuleState::Skipped { .. } => StateName::Skipped,
        }
    }

    /// The word tables and logs use (as `ModuleState::name`).
    pub fn word(self) -> &'static str {
        match self {
            StateName::Pending => "pending",
            StateName::AwaitingApproval => "awaiting approval",
            StateName::Ready => "ready",
            StateName::Assigned => "assigned",
            StateName::Running => "running",
            StateName::Succeeded => "succeeded",
            StateName::Failed => "failed",
            StateName::TimedOut => "timed out",
            StateName::Cancelled => "cancelled",
            StateName::Skipped => "skipped",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateName::Succeeded
                | StateName::Failed
                | StateName::TimedOut
                | StateName::Cancelled
                | StateName::Skipped
        )
    }

    /// A worker holds the module.
    pub fn is_in_flight(self) -> bool {
        matches!(self, StateName::Assigned | StateName::Running)
    }
}

impl ModuleRecord {
    /// The record of `state` for module `module`, worker named `worker`;
    /// outputs and the reason are passed through `mask` (which says
    /// whether it changed anything).
    pub fn of(
        module: &str,
        state: &ModuleState,
        worker: Option<String>,
        note: Option<String>,
        mask: &dyn Fn(&str) -> Option<String>,
    ) -> ModuleRecord {
        let mut record = ModuleRecord {
            module: module.to_owned(),
            state: StateName::of(state),
            attempt: state.attempt(),
            worker,
            note: note.map(|n| mask(&n).unwrap_or(n)),
            ..ModuleRecord::default()
        };
        if let ModuleState::Skipped { reason } = state {
            record.reason = Some(mask(reason).unwrap_or_else(|| reason.clone()));
        }
        if let Some(ended) = state.ended() {
            record.exit_code = ended.exit_code;
            record.duration_ms = ended.duration.map(|d| d.as_millis() as u64);
            record.reason = ended
                .reason
                .as_ref()
                .map(|r| mask(r).unwrap_or_else(|| r.clone()));
            for (key, value) in &ended.outputs {
                let value = match mask(value) {
                    Some(masked) => {
                        record.masked = true;
                        masked
                    }
                    None => value.clone(),
                };
                record.outputs.insert(key.clone(), value);
            }
            record.artifacts = ended.artifacts.clone();
        }
        record
    }
}
