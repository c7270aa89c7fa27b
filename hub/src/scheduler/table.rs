//! What the state machine keeps beside the run: the entries of its worker
//! table, the deadlines it wakes up for, each module's standing with the
//! result cache, its open and decided gates and its compensations, and why
//! a call was refused. Plain data, so the files that
//! act on them (`workers.rs`, `timers.rs`, `cache.rs`, `calls.rs`) and the
//! machine that holds them all depend on this file and not on each other.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use muster_core::{ModuleIndex, WorkerId};

/// A worker in the table, connected or away.
pub(crate) struct Worker {
    pub name: String,
    pub capabilities: BTreeSet<String>,
    pub slots: u32,
    pub held: u32,
    pub session: u64,
    pub resume_key: String,
    /// False while the worker is away (its socket dropped).
    pub connected: bool,
    /// Calls refused so far, to keep their logging bounded.
    pub refusals: u32,
    /// Known only from an earlier master's journal (this master took the
    /// run over): it holds attempts there and may come back for them by
    /// name, not knowing this hub's resume key.
    pub adopted: bool,
}

impl Worker {
    pub fn offers(&self, requires: &[String]) -> bool {
        requires.iter().all(|r| self.capabilities.contains(r))
    }

    pub fn can_take(&self, requires: &[String]) -> bool {
        self.connected && self.held < self.slots && self.offers(requires)
    }
}

/// Deadlines the scheduler wakes up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A dropped worker has not come back in time.
    Away { worker: WorkerId, session: u64 },
    /// A ready module may have waited too long for a capable worker.
    NoWorker(ModuleIndex),
    /// Workers did not confirm a cancel in time.
    CancelGrace,
    /// A started attempt has had its timeout and the grace to report.
    Result { module: ModuleIndex, attempt: u32 },
    /// An assigned attempt has had its time to be started.
    Start { module: ModuleIndex, attempt: u32 },
    /// A gate's time for a decision is up.
    GateExpires(ModuleIndex),
    /// Say again that the run waits on a gate.
    GateReminder(ModuleIndex),
    /// The running compensation's bound (by its generation).
    Compensation(u32),
}

/// How a module stands with the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum CacheState {
    /// Not cacheable, or no cache.
    #[default]
    Off,
    /// Being looked up: not dispatched meanwhile.
    LookingUp,
    /// Missed: runs, and its success is kept under the key.
    Missed(String),
    /// Finished from the cache, with how long the original run took.
    Hit { key: String, saved: Duration },
}

/// The note a cached module's success carries: `cached (key 3f9a…, saved 4m 12s)`.
pub(crate) fn cached_note(key: &str, saved: Duration) -> String {
    let short: String = key.chars().take(8).collect();
    let saved = if saved < Duration::from_secs(1) {
        format!("{:.1}s", saved.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(saved.as_secs())).to_string()
    };
    format!("cached (key {short}…, saved {saved})")
}

/// Why a worker's call was refused; its text is the error Completion the
/// worker gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("this connection is already registered")]
    AlreadyRegistered,
    #[error("no module '{0}' in this pipeline")]
    UnknownModule(String),
    #[error("log for module '{module}' attempt {attempt}, which this worker does not hold")]
    LogNotHeld { module: String, attempt: u32 },
    /// The run's state machine refused the transition, in the worker's terms.
    #[error("module '{module}': {why}")]
    Transition { module: String, why: String },
}

/// A gate waiting for its decision.
#[derive(Debug, Clone)]
pub(crate) struct OpenGate {
    pub opened: Instant,
    pub expires: Instant,
    /// The question, with the needs' outputs filled in.
    pub prompt: String,
    /// What a decision is bound to.
    pub definition: String,
    pub needs_outputs: String,
}

/// How a gate was decided, for the summary and the command's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decided {
    /// `approved`, `rejected` or `expired`.
    pub word: &'static str,
    pub by: Option<String>,
    /// How long the gate waited.
    pub after: Duration,
    pub inputs: BTreeMap<String, String>,
}

impl Decided {
    /// "approved by alice after 3m 2s".
    pub(crate) fn describe(&self) -> String {
        let after = humantime::format_duration(Duration::from_secs(self.after.as_secs()));
        match &self.by {
            Some(by) => format!("{} by {by} after {after}", self.word),
            None => format!("{} after {after}", self.word),
        }
    }
}

/// What an accepted decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionAnswer {
    pub module: String,
    /// `approved` or `rejected`.
    pub decision: &'static str,
    pub by: String,
}

/// The compensations of a failed run, and the one running.
#[derive(Debug, Default)]
pub(crate) struct Compensations {
    /// Still to run, first next.
    pub queue: VecDeque<ModuleIndex>,
    pub current: Option<Current>,
    /// How each ended, by module: `compensated` or why not.
    pub ended: Vec<(ModuleIndex, String)>,
    /// Counts deadlines, so a stale one does nothing.
    pub generation: u32,
}

/// The compensation running, or waiting for a worker.
#[derive(Debug)]
pub(crate) struct Current {
    pub module: ModuleIndex,
    pub worker: Option<WorkerId>,
}
