//! muster's core: the pipeline file and its validation, the expanded DAG
//! (`Plan`) and the part of it a run selects, the module state machine and
//! the run it drives, and the wire types with their SignalR JSON framing.
//!
//! Invariant: this crate does no I/O. It takes text and instants in and
//! gives values and errors back, so both roles (hub and worker) and every
//! test can use it without a runtime.

pub mod cache;
/// Fuzz drivers for `fuzz/` and `tests/fuzz_regressions.rs`; not part of
/// release builds.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gate;
pub mod glob;
pub mod graph;
pub mod journal;
pub mod mask;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod run;
pub mod select;
pub mod state;
pub mod text;
pub mod url;
pub mod wire;

pub use pipeline::{parse_pipeline, PipelineError};
pub use plan::{Consume, ModuleIndex, Plan, PlannedModule};
pub use run::{Change, Limits, Run, CACHE_HIT_NOTE};
pub use select::SelectError;
pub use state::{Ended, Event, ModuleState, Outcome, Step, TransitionError, WorkerId};
