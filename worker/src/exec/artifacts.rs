//! A module's artifacts around its run: what it consumes is downloaded
//! into its cwd before it starts, what it produced is found, hashed and
//! uploaded after it succeeded. Large transfers are noted in the module's
//! own log, so whoever reads it sees where the time went.

use std::io;
use std::path::{Path, PathBuf};

use muster_core::wire::calls::WorkerCall;
use muster_core::wire::types::{Artifact, Assignment};
use tokio::sync::mpsc;

use super::logs::note_in_log;
use crate::transfer::{
    describe_artifact, find_produced, Fetched, ProducedError, Transfer, TransferError, Uploaded,
    LARGE_TRANSFER,
};

/// Why a module's artifacts could not be fetched or stored.
#[derive(Debug, thiserror::Error)]
pub(super) enum ArtifactsError {
    #[error("could not create its folder {}: {error}", folder.display())]
    CreateFolder { folder: PathBuf, error: io::Error },
    #[error(transparent)]
    Produced(#[from] ProducedError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// The blocking search was lost (a panic, a runtime shutting down).
    #[error("{0}")]
    Lost(#[from] tokio::task::JoinError),
    #[error("cancelled while fetching its artifacts")]
    CancelledFetching,
    #[error("cancelled while uploading its artifacts")]
    CancelledUploading,
}

/// Downloads what the module consumes into its cwd before it starts, and
/// says so in its log for large files.
pub(super) async fn fetch_consumed(
    assignment: &Assignment,
    cwd: &Path,
    transfer: &Transfer,
    out: &mpsc::Sender<WorkerCall>,
) -> Result<(), ArtifactsError> {
    if assignment.consumes.is_empty() {
        return Ok(());
    }
    tokio::fs::create_dir_all(cwd)
        .await
        .map_err(|error| ArtifactsError::CreateFolder {
            folder: cwd.to_owned(),
            error,
        })?;
    for consumed in &assignment.consumes {
        let fetched = transfer.download(cwd, consumed).await?;
        let note = match fetched {
            Fetched::Downloaded(moved) if moved.bytes > LARGE_TRANSFER => Some(format!(
                "fetched {} from {}: {moved}",
                consumed.artifact.path, consumed.from
            )),
            _ => None,
        };
        if let Some(note) = note {
            note_in_log(assignment, out, note).await;
        }
    }
    Ok(())
}

/// Finds, hashes and uploads what the module produced, after it succeeded.
pub(super) async fn upload_produced(
    assignment: &Assignment,
    cwd: &Path,
    transfer: &Transfer,
    out: &mpsc::Sender<WorkerCall>,
) -> Result<Vec<Artifact>, ArtifactsError> {
    if assignment.produces.is_empty() {
        return Ok(Vec::new());
    }
    let (folder, patterns) = (cwd.to_owned(), assignment.produces.clone());
    let found = tokio::task::spawn_blocking(move || find_produced(&folder, &patterns)).await??;
    let mut artifacts = Vec::with_capacity(found.len());
    for file in &found {
        let artifact = describe_artifact(file).await?;
        let uploaded = transfer
            .upload(&assignment.module_id, cwd, &artifact)
            .await?;
        if let Uploaded::Sent(moved) = uploaded {
            if moved.bytes > LARGE_TRANSFER {
                note_in_log(
                    assignment,
                    out,
                    format!("uploaded {}: {moved}", artifact.path),
                )
                .await;
            }
        }
        artifacts.push(artifact);
    }
    Ok(artifacts)
}
