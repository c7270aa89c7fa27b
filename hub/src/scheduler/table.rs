//! What the state machine keeps beside the run: the entries of its worker
//! table and the deadlines it wakes up for. Plain data, so the files that
//! act on them (`workers.rs`, `timers.rs`) and the machine that holds them
//! all depend on this file and not on each other.

use std::collections::BTreeSet;

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
}
