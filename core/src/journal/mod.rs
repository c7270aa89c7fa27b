//! The run's journal, without I/O: what a record says (`record.rs`), how
//! records are written and read as lines of JSON (`codec.rs`), the digests
//! that tell whether a module's definition changed (`digest.rs`), the fold
//! of records back into a run's state (`history.rs`), and what a resume
//! keeps and re-runs (`resume.rs`). The backends that store the lines (a
//! file, a Redis Stream) live in the `muster-journal` crate.

pub mod codec;
pub mod digest;
pub mod history;
pub mod record;
pub mod resume;

pub use codec::{decode, encode, encode_into, Decoded, JournalError, TornTail};
pub use digest::{module_digests, plan_digest, ModuleDigest};
pub use history::{History, HistoryError, ModuleStatus};
pub use record::{
    CompensationRecord, Entry, GateRecord, ModuleRecord, Record, RunStart, Settings, StateName,
    TookOver, FORMAT_VERSION,
};
pub use resume::{decide, InFlight, Rerun, Resumption, Why};

/// The Redis key holding a CI run's epoch: the counter the master's lease
/// increments each time a master takes the run over, and the fence the
/// journal's append script and the discovery record's write script check
/// (a writer with a lower epoch is refused). One key, so taking the lease
/// fences the old master's writes at once.
pub fn epoch_key(run_id: &str) -> String {
    format!("muster:journal:{run_id}:epoch")
}
