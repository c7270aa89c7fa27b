//! What a resumed run keeps from the journal of an earlier one, and what
//! it runs again and why. (To be written: see the API.)

use crate::journal::digest::ModuleDigest;
use crate::journal::history::History;
use crate::journal::record::StateName;
use crate::plan::{ModuleIndex, Plan};
use crate::state::Ended;
use crate::wire::types::Artifact;

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumption {
    /// The run the kept modules succeeded in.
    pub from_run: String,
    /// Modules that are not run again, with their result (worker `None`).
    pub kept: Vec<(ModuleIndex, Ended)>,
    /// Per module: the attempt it starts at (the journal's last + 1).
    pub first_attempt: Vec<u32>,
    /// Modules that had a result or were in flight and run again, and why.
    pub rerun: Vec<Rerun>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerun {
    pub module: ModuleIndex,
    pub why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// It was running (or assigned) when the master stopped.
    InFlight { attempt: u32 },
    /// It ended without succeeding.
    NotSucceeded(StateName),
    /// Its definition changed: these parts.
    Changed(Vec<String>),
    /// A need runs again.
    Downstream { of: String },
    /// A module that runs again consumes its artifacts, and they are gone.
    ArtifactsGone { consumer: String },
    /// Its outputs held a secret, which the journal does not keep.
    OutputsMasked,
}

/// Decides what `plan` keeps from `history`; `digests` are the plan's,
/// `available` says whether an artifact's blob can still be had.
pub fn decide(
    history: &History,
    plan: &Plan,
    digests: &[ModuleDigest],
    available: &dyn Fn(&Artifact) -> bool,
) -> Resumption {
    let _ = (history, plan, digests, available);
    todo!("helper")
}

impl Resumption {
    /// One line: "kept 37 succeeded modules from run X; re-running build
    /// (its command changed) and 4 modules downstream".
    pub fn summary(&self, plan: &Plan) -> String {
        let _ = plan;
        todo!("helper")
    }
}
