//! What the hub tells its owner (the CLI): a stream of [`RunEvent`]s while
//! the run goes, and one [`Summary`] at the end.

use muster_core::wire::types::{LogStream, RunOutcome};
use muster_core::ModuleState;

#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    WorkerJoined {
        name: String,
        capabilities: Vec<String>,
        slots: u32,
    },
    WorkerLeft {
        name: String,
        reason: String,
    },
    /// A worker's connection dropped while it held modules: the hub keeps
    /// them for it until `within` has passed.
    WorkerAway {
        name: String,
        reason: String,
        held: usize,
        within: std::time::Duration,
    },
    /// A worker reconnected in time and kept `kept` of its modules.
    WorkerBack {
        name: String,
        kept: usize,
    },
    /// A module changed state; `worker` names the worker holding or having
    /// run it, `note` says why when the state does not (a retry).
    Module {
        module: String,
        state: ModuleState,
        worker: Option<String>,
        note: Option<String>,
    },
    /// A line about a module that is not a change of its state (a gate
    /// still waits, an earlier approval no longer stands, a compensation
    /// ran): said to the owner, not journaled as a module record.
    Note {
        module: String,
        text: String,
    },
    /// A batch of log lines from a module's current attempt.
    Log {
        module: String,
        attempt: u32,
        stream: LogStream,
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSummary {
    pub id: String,
    pub state: ModuleState,
    /// The worker that ran the last attempt.
    pub worker: Option<String>,
    /// Finished from the result cache: how long its original run took.
    pub cached: Option<std::time::Duration>,
    /// How its approval gate was decided: "approved by alice after 3m 2s".
    pub gate: Option<String>,
    /// How its compensation ended, when the failed run compensated it:
    /// "compensated" or "compensation failed: ...".
    pub compensated: Option<String>,
}

/// The run's outcome, in plan order.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub modules: Vec<ModuleSummary>,
    /// The run was cancelled (Ctrl-C, `muster cancel` or `--fail-fast`),
    /// and why.
    pub cancelled: Option<String>,
}

impl Summary {
    pub fn succeeded(&self) -> bool {
        self.modules
            .iter()
            .all(|m| matches!(m.state, ModuleState::Succeeded(_)))
    }

    /// The run's verdict: a module that did not succeed fails the run even
    /// when it was also cancelled; a cancel with nothing failed is a cancel.
    pub fn outcome(&self) -> RunOutcome {
        if self.succeeded() {
            RunOutcome::Succeeded
        } else if self.cancelled.is_some() && !self.modules.iter().any(|m| failed(&m.state)) {
            RunOutcome::Cancelled
        } else {
            RunOutcome::Failed
        }
    }
}

fn failed(state: &ModuleState) -> bool {
    matches!(state, ModuleState::Failed(_) | ModuleState::TimedOut(_))
}
