//! muster's core: the pipeline file and its validation, the expanded DAG
//! (`Plan`), the module state machine and the run it drives, and the wire
//! types with their SignalR JSON framing.
//!
//! Invariant: this crate does no I/O. It takes text and instants in and
//! gives values and errors back, so both roles (hub and worker) and every
//! test can use it without a runtime.

/// Fuzz drivers for `fuzz/` and `tests/fuzz_regressions.rs`; not part of
/// release builds.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod glob;
pub mod mask;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod run;
pub mod state;
pub mod text;
pub mod url;
pub mod wire;

// Old paths, kept so that the other crates build unchanged until they
// import from `wire` (to be switched over at merge time, then removed):
// - `muster_core::signalr::*` is `muster_core::wire::signalr::*`;
// - `muster_core::protocol::*` is `muster_core::wire::types::*` and
//   `muster_core::wire::calls::*`, and `protocol::MAX_RECORD_BYTES` is
//   `muster_core::wire::limits::MAX_RECORD_BYTES`;
// - `muster_core::url::join` (re-exported in `url.rs`) is
//   `muster_core::wire::http::join`.
pub use wire::signalr;

/// Old path of [`wire::types`], [`wire::calls`] and
/// [`wire::limits::MAX_RECORD_BYTES`]; see above.
pub mod protocol {
    pub use crate::wire::calls::*;
    pub use crate::wire::limits::MAX_RECORD_BYTES;
    pub use crate::wire::types::*;
}

pub use pipeline::{parse_pipeline, PipelineError};
pub use plan::{Consume, ModuleIndex, Plan, PlannedModule};
pub use run::{Change, Limits, Run};
pub use state::{Ended, Event, ModuleState, Outcome, Step, TransitionError, WorkerId};
