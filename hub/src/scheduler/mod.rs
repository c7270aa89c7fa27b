//! The scheduler: one owner for the run's state and the table of workers.
//!
//! It is two parts. The state machine ([`Machine`], `machine.rs` and the
//! files beside it) does no I/O: it takes an [`Input`] (a registration, a
//! worker's call, a disconnect, a cancel, the passing of time) and the
//! current time, and returns [`Effect`]s (answers, hub calls to send, run
//! events, the end of the run). Time only comes in as an argument, so every
//! decision is unit-tested with a fake clock (`tests.rs`), and every change
//! of state leaves it as an explicit effect. The actor (`actor.rs`) is the
//! thin loop around it: commands in over mpsc, each worker's outbox, the
//! sleep until the next deadline, and the bounded event stream to the
//! hub's owner.

mod actor;
mod cache;
mod calls;
mod compensate;
mod dispatch;
mod gates;
mod held;
mod journal;
mod machine;
mod placement;
mod table;
#[cfg(test)]
mod tests;
mod timers;
mod workers;

use std::time::Duration;

use muster_core::journal::Resumption;
use muster_core::wire::calls::WorkerCall;
use muster_core::wire::types::Registration;
use muster_core::{Limits, WorkerId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::outbox::Outbox;

pub(crate) use actor::{DecideAnswer, Scheduler};
pub(crate) use journal::JournalSettings;

/// The most slots one worker may claim; more is taken as this many.
pub(crate) const MAX_SLOTS: u32 = 1024;

/// What connections and the hub's owner ask of the scheduler.
pub(crate) enum Command {
    /// A connection finished its handshake and sent `Register`.
    /// The scheduler answers through the outbox itself, so the Welcome
    /// always reaches the worker before its first Assign.
    Register {
        registration: Registration,
        invocation_id: Option<String>,
        outbox: Outbox,
        reply: oneshot::Sender<Registered>,
    },
    /// `Started`, `Log` or `Complete` from a registered worker. With
    /// `answer`, the scheduler sends the Completion for that invocation id
    /// on that outbox before any message that follows from the call.
    Call {
        worker: WorkerId,
        call: WorkerCall,
        answer: Option<(String, Outbox)>,
    },
    /// A registered worker's connection ended. With `return_by`, the
    /// socket dropped without a goodbye and the worker may reconnect until
    /// then; without it, the worker left or was silent too long.
    Disconnected {
        worker: WorkerId,
        session: u64,
        reason: String,
        return_by: Option<Instant>,
    },
    /// Cancel the whole run (Ctrl-C on the master, `muster cancel`).
    Cancel {
        reason: String,
        reply: Option<oneshot::Sender<CancelAnswer>>,
    },
    /// Give the run up where it stands (a newer master took it over):
    /// nothing more is journaled or sent, every worker is closed with the
    /// reason, and the hub ends with [`crate::HubError::Abandoned`].
    Abandon { reason: String },
    /// A decision on a module's approval gate; answered once journaled.
    Decide {
        module: String,
        decider: muster_core::gate::Decider,
        decision: muster_core::gate::Decision,
        reply: oneshot::Sender<DecideAnswer>,
    },
    /// The worker table as the dashboard shows it.
    Workers {
        reply: oneshot::Sender<Vec<WorkerView>>,
    },
}

/// One worker as the dashboard's table shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkerView {
    pub name: String,
    pub capabilities: Vec<String>,
    pub slots: u32,
    /// The modules it holds, by id.
    pub running: Vec<String>,
    /// Since its connection last heard from it; absent while it is away.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heard_ms_ago: Option<u64>,
    pub connected: bool,
}

/// Which registration a connection speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registered {
    pub worker: WorkerId,
    /// Tells this connection apart from an earlier one of the same worker.
    pub session: u64,
}

/// What a cancel request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelAnswer {
    /// The run is being cancelled now.
    Cancelling,
    /// It already was, for this reason.
    AlreadyCancelled(String),
    /// The run had already finished.
    Finished,
}

/// The scheduler's bounds and policies.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerSettings {
    pub fail_fast: bool,
    pub ping_interval: Duration,
    /// How long a ready module waits for a worker that can take it.
    pub capability_timeout: Duration,
    /// How long workers have to confirm a cancel.
    pub cancel_grace: Duration,
    /// How long past a module's timeout its result may take.
    pub result_grace: Duration,
    /// How long an assigned module waits for its worker's `Started`.
    pub start_timeout: Duration,
    pub limits: Limits,
    /// Journal the run (`None`: it is not journaled).
    pub journal: Option<JournalSettings>,
    /// Start from what an earlier run kept.
    pub resume: Option<Resumption>,
    /// Taking a live run over from another master: the resume's in-flight
    /// attempts are held this long for their workers to come back with
    /// them, instead of running again at once.
    pub adopt_within: Option<Duration>,
    /// Look cacheable modules up before dispatching them.
    pub cache: bool,
    /// Run the compensations a failed run owes (`--no-compensate` turns
    /// this off).
    pub compensate: bool,
    /// The master's environment variables that gates' `not` lists name.
    pub gate_env: std::collections::BTreeMap<String, String>,
}
