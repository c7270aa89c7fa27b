//! A worker instance's copy of its CI run's artifact store. The master's
//! store dies with its runner; a worker instance that takes the run over
//! resumes from the journal and keeps a succeeded module only if the
//! artifacts a pending module consumes are in its own run folder. So
//! every worker instance follows the run's journal in Redis and fetches
//! each blob a succeeded module stored, one at a time, from whichever hub
//! the discovery record names, into that folder (where the resume looks).
//!
//! Cost: each mirroring instance downloads and keeps every artifact byte
//! of the run once (through the master's tunnel, if it has one).
//! `--no-artifact-mirror` turns it off: a failover then re-runs the
//! producers of the lost artifacts that pending modules consume.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster_core::journal::{Entry, StateName};
use muster_core::wire::types::Artifact;
use muster_journal::Follower;
use muster_worker::transfer::{Transfer, TransferError, TransferSettings};
use muster_worker::HubLocator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::discover::RecordLocator;

/// Between tries while there is no hub or no journal to follow.
const PAUSE: Duration = Duration::from_secs(1);

/// How long one blob's fetch waits for a hub that went away (the run
/// moving to a new master) before it is skipped.
const HUB_AWAY: Duration = Duration::from_secs(60);

/// The mirror, running beside the instance's worker until stopped.
pub struct Mirror {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Where the mirror reads and writes.
pub struct MirrorPlace {
    pub redis_url: String,
    pub run_id: String,
    /// The run folder's artifact store, as the hub lays it out.
    pub store: PathBuf,
    /// MUSTER_TOKEN; else the one the discovery record carries.
    pub token: Option<String>,
}

impl Mirror {
    pub fn start(place: MirrorPlace, locator: Arc<RecordLocator>) -> Mirror {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = follow(place, locator) => {}
                    () = stop.cancelled() => {}
                }
            }
        });
        Mirror { stop, task }
    }

    /// Stops it; a blob being fetched is left as a temporary file, never
    /// as a partial blob.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn follow(place: MirrorPlace, locator: Arc<RecordLocator>) {
    let (hub, token) = loop {
        if let Some(url) = locator.locate().await {
            let token = match place.token.clone() {
                Some(token) => Some(token),
                None => locator.token().await,
            };
            if let Some(token) = token {
                break (url, token);
            }
        }
        tokio::time::sleep(PAUSE).await;
    };
    let settings = TransferSettings {
        hub_away_patience: HUB_AWAY,
        ..TransferSettings::default()
    };
    let transfer = match Transfer::new(&hub, token, place.store.join(".cache"), settings) {
        Ok(transfer) => transfer,
        Err(e) => {
            tracing::warn!("no artifact mirror: {e}");
            return;
        }
    };
    let mut follower = loop {
        match Follower::open(&place.redis_url, &place.run_id, None).await {
            Ok(follower) => break follower,
            Err(e) => tracing::debug!("the artifact mirror cannot follow the journal yet: {e}"),
        }
        tokio::time::sleep(PAUSE).await;
    };
    let mut warned = false;
    loop {
        let records = match follower.next().await {
            Ok(records) => records,
            Err(e) => {
                tracing::debug!("the artifact mirror lost the journal: {e}");
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        };
        for record in records {
            let Entry::Module(module) = record.entry else {
                continue;
            };
            if module.state != StateName::Succeeded {
                continue;
            }
            for artifact in &module.artifacts {
                let kept = keep(
                    &transfer,
                    locator.as_ref(),
                    &place,
                    &module.module,
                    artifact,
                );
                let Err(e) = kept.await else {
                    continue;
                };
                // Once: a hub that lost its store (a takeover without a
                // copy) answers 404 for every blob.
                let line = format!(
                    "the artifact mirror skipped {} of {}: {e}",
                    artifact.path, module.module
                );
                if warned {
                    tracing::debug!("{line}");
                } else {
                    tracing::warn!("{line} (later skips are logged at debug level)");
                    warned = true;
                }
            }
        }
    }
}

/// Fetches one blob into the store unless it is there; once more from the
/// hub the record names now if the first try failed.
async fn keep(
    transfer: &Transfer,
    locator: &dyn HubLocator,
    place: &MirrorPlace,
    module: &str,
    artifact: &Artifact,
) -> Result<(), TransferError> {
    let file = muster_hub::stored_artifact(&place.store, &artifact.sha256);
    if transfer.copy_to(&file, module, artifact).await.is_ok() {
        return Ok(());
    }
    if let Some(url) = locator.locate().await {
        let _ = transfer.move_to(&url);
    }
    transfer.copy_to(&file, module, artifact).await.map(|_| ())
}
