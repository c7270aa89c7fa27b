//! Uploading a produced artifact: `HEAD` asks whether the hub already has
//! the content, and only if not is the file streamed with `PUT`, checked
//! against the size it was hashed at and bounded by the stall timeout.

use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use muster_core::wire::types::Artifact;
use reqwest::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::destination::{check_digest, safe_parts, Refusal};
use super::hash::CHUNK;
use super::http::{network, status_failure, Failure};
use super::{Moved, Transfer, TransferError, Uploaded};
use crate::observer::{Metered, TransferStarted};

impl Transfer {
    /// Stores a described artifact of `module`, read from `cwd`, on the hub:
    /// HEAD first, and a streamed PUT only if the hub lacks the content.
    pub async fn upload(
        &self,
        module: &str,
        cwd: &Path,
        artifact: &Artifact,
    ) -> Result<Uploaded, TransferError> {
        let refuse = |reason: Refusal| TransferError::UnsafePath {
            from: module.to_owned(),
            path: artifact.path.clone(),
            reason,
        };
        check_digest(&artifact.sha256).map_err(refuse)?;
        safe_parts(&artifact.path).map_err(refuse)?;
        let file = cwd.join(&artifact.path);
        let failed = |method| self.failed(module, &artifact.path, &artifact.sha256, method);
        let stored = self
            .retrying(|| self.head(&artifact.sha256))
            .await
            .map_err(failed("HEAD"))?;
        if stored {
            return Ok(Uploaded::AlreadyStored);
        }
        let begun = Instant::now();
        self.retrying(|| self.put(&file, artifact))
            .await
            .map_err(failed("PUT"))?;
        let moved = Moved {
            bytes: artifact.size,
            elapsed: begun.elapsed(),
        };
        moved.log("uploaded", &artifact.path, module);
        Ok(Uploaded::Sent(moved))
    }

    /// Whether the hub has the content.
    async fn head(&self, sha256: &str) -> Result<bool, Failure> {
        let request = self
            .client
            .head(self.url(sha256))
            .bearer_auth(&self.token)
            .send();
        let response = self.bounded(request).await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(status_failure(status)),
        }
    }

    /// Streams the file to the hub, failing if no byte moves (or no answer
    /// comes after the last one) for the stall timeout.
    async fn put(&self, file: &Path, artifact: &Artifact) -> Result<(), Failure> {
        let disk = |doing| {
            move |error| Failure::Disk {
                doing,
                file: file.to_owned(),
                error,
            }
        };
        let input = tokio::fs::File::open(file).await.map_err(disk("open"))?;
        let now = input.metadata().await.map_err(disk("read"))?.len();
        if now != artifact.size {
            return Err(Failure::Changed {
                expected: artifact.size,
                now,
            });
        }
        let metered = Metered(self.observer.transfer_started(TransferStarted::Upload {
            path: &artifact.path,
            size: artifact.size,
        }));
        let last_progress = Arc::new(StdMutex::new(Instant::now()));
        let body = {
            let (progress, last_progress) = (metered.0.clone(), last_progress.clone());
            let chunks =
                tokio_util::io::ReaderStream::with_capacity(input.take(artifact.size), CHUNK);
            chunks.inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    progress.advanced(chunk.len() as u64);
                    *last_progress.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                }
            })
        };
        let request = self
            .client
            .put(self.url(&artifact.sha256))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_LENGTH, artifact.size)
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let response = tokio::select! {
            response = request => response.map_err(network),
            () = stalled(&last_progress, self.settings.stall_timeout) => {
                Err(Failure::Stalled(self.settings.stall_timeout))
            }
        };
        match response?.status() {
            StatusCode::OK | StatusCode::CREATED => Ok(()),
            status => Err(status_failure(status)),
        }
    }
}

/// Resolves once no byte has moved for `stall` since the last progress.
async fn stalled(last_progress: &StdMutex<Instant>, stall: Duration) {
    loop {
        let due = *last_progress.lock().unwrap_or_else(PoisonError::into_inner) + stall;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}
