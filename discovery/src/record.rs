//! The discovery record: what the master of a run publishes under a key
//! derived from the run id, so workers of the same run can find its hub.
//! JSON, so anyone can read it with `redis-cli GET`.

pub use muster_core::wire::types::RunOutcome;
use serde::{Deserialize, Serialize};

/// Whether the run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunState {
    Running,
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryRecord {
    pub run_id: String,
    /// Hub URLs (`http(s)://.../hub`) in order of preference.
    pub urls: Vec<String>,
    pub protocol_version: u32,
    pub state: RunState,
    /// Set once the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
    /// Unix time in milliseconds when this master started.
    pub started_at: u64,
    /// Orders masters of the same run id: a record is only ever replaced by
    /// one with an equal or higher epoch, so a reader never sees an older
    /// master's record over a newer one.
    pub epoch: u64,
    /// The hub's token, only with `--token-in-record`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl DiscoveryRecord {
    /// How the run ended, once it has (a finished record without an
    /// outcome counts as succeeded).
    pub fn finished(&self) -> Option<RunOutcome> {
        (self.state == RunState::Finished).then(|| self.outcome.unwrap_or(RunOutcome::Succeeded))
    }
}

/// The Redis key of a run's record.
pub fn record_key(run_id: &str) -> String {
    format!("muster:run:{run_id}")
}

/// The channel the master publishes on whenever it writes the record, so
/// waiting workers wake at once.
pub fn notify_channel(run_id: &str) -> String {
    format!("muster:run:{run_id}:notify")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_camel_case_json_without_empty_fields() {
        let record = DiscoveryRecord {
            run_id: "github-1-2".into(),
            urls: vec!["https://a.example/hub".into()],
            protocol_version: 1,
            state: RunState::Running,
            outcome: None,
            started_at: 5,
            epoch: 5,
            token: None,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["runId"], "github-1-2");
        assert_eq!(json["state"], "running");
        assert!(json.get("token").is_none() && json.get("outcome").is_none());
        let back: DiscoveryRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert_eq!(record_key("x"), "muster:run:x");
    }
}
