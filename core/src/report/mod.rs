//! Reports of a run after it ran, without I/O: [`Report`] is built from
//! the run's journal records (and the last log lines of the modules that
//! did not succeed), and each format is a pure function of it: JSON
//! (`serde_json` of the model, schema `muster-report/1`, docs/report.md),
//! [`junit`] XML and [`markdown`] with a mermaid Gantt chart. The binary
//! reads the journal and writes the files.

pub mod junit;
pub mod markdown;
pub mod model;

pub use junit::junit;
pub use markdown::markdown;
pub use model::{ArtifactReport, ModuleReport, Outcome, Report, WorkerReport, SCHEMA};
