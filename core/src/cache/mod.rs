//! The result cache, sans I/O: which files are a module's inputs
//! ([`InputGlobs`]), the key that says "this module would do the same work
//! again" ([`KeyInputs::key`]), and in words what changed since an earlier
//! key ([`explain_change`]). Walking the files, hashing them and storing
//! results are the callers' part; everything here takes values in.
//!
//! A module is cached when [`PlannedModule::cached`] says so: it has
//! `inputs` and does not set `cache = false`. A result found under its key
//! finishes it without a worker ([`Run::cache_hit`]).
//!
//! [`PlannedModule::cached`]: crate::plan::PlannedModule::cached
//! [`Run::cache_hit`]: crate::run::Run::cache_hit

mod explain;
mod inputs;
mod key;

pub use explain::{explain_change, Component};
pub use inputs::InputGlobs;
pub use key::{plan_key_inputs, CacheKey, KeyInputs, NeedKey, CACHE_FORMAT};
