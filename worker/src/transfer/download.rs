//! Downloading a consumed artifact: to a safe destination below the
//! module's cwd, from this worker's cache when it holds the digest, else
//! with a `GET` into the cache (hashed while written, retried when the
//! failure is transient) under the digest's lock, then copied into place.

use std::path::Path;

use muster_core::wire::types::{Artifact, Consumed};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::{timeout, Instant};

use super::cache::{cache_holds, place, Part, Placed};
use super::destination::destination;
use super::hash::hex;
use super::http::{describe_reqwest, status_failure, Failure};
use super::{Fetched, Moved, Transfer, TransferError};
use crate::observer::{Metered, TransferStarted};

impl Transfer {
    /// Puts a consumed artifact at its path under `cwd`, with its mode:
    /// checked for safety first, skipped if the right content is already
    /// there, copied from the cache if this worker fetched it before, else
    /// fetched from the hub into the cache and copied from there.
    pub async fn download(
        &self,
        cwd: &Path,
        consumed: &Consumed,
    ) -> Result<Fetched, TransferError> {
        let artifact = &consumed.artifact;
        let from = consumed.from.as_str();
        let Some(destination) = destination(cwd, consumed).await? else {
            return Ok(Fetched::AlreadyThere);
        };
        let begun = Instant::now();
        let cached = self.cache.join(&artifact.sha256);
        // The cache is only ever written under this lock, and only by a
        // rename of a verified file, so what is there is whole.
        let lock = self.locks.lock_for(&artifact.sha256);
        let mut fetched = {
            let _held = lock.lock().await;
            let cached_already = cache_holds(&cached, artifact.size).await;
            if !cached_already {
                self.fetch(&cached, consumed).await?;
            }
            !cached_already
        };
        match place(&cached, &destination, artifact).await {
            Ok(()) => {}
            // The cached copy was damaged on disk since it was verified:
            // drop it and fetch again, once.
            Err(Placed::Corrupt(_)) if !fetched => {
                let _held = lock.lock().await;
                let _ = tokio::fs::remove_file(&cached).await;
                self.fetch(&cached, consumed).await?;
                fetched = true;
                place(&cached, &destination, artifact)
                    .await
                    .map_err(|e| e.into_error(self, from, artifact))?;
            }
            Err(e) => return Err(e.into_error(self, from, artifact)),
        }
        let moved = Moved {
            bytes: artifact.size,
            elapsed: begun.elapsed(),
        };
        if fetched {
            moved.log("downloaded", &artifact.path, from);
            Ok(Fetched::Downloaded(moved))
        } else {
            Ok(Fetched::FromCache(moved))
        }
    }

    /// Keeps a copy of a blob of the hub's store at `file` (a mirror of the
    /// run's store, kept by a CI instance that may take the run over):
    /// fetched straight there, written whole or not at all, and skipped
    /// when `file` already holds the right size. Returns whether it fetched.
    pub async fn copy_to(
        &self,
        file: &Path,
        from: &str,
        artifact: &Artifact,
    ) -> Result<bool, TransferError> {
        if cache_holds(file, artifact.size).await {
            return Ok(false);
        }
        if let Some(folder) = file.parent() {
            tokio::fs::create_dir_all(folder)
                .await
                .map_err(|error| TransferError::Io {
                    doing: "cannot create the folder".into(),
                    file: folder.to_owned(),
                    error,
                })?;
        }
        let consumed = Consumed {
            from: from.to_owned(),
            artifact: artifact.clone(),
        };
        self.fetch(file, &consumed).await?;
        Ok(true)
    }

    /// GETs the content into the cache, retrying transient failures.
    async fn fetch(&self, cached: &Path, consumed: &Consumed) -> Result<(), TransferError> {
        let artifact = &consumed.artifact;
        self.retrying(|| self.get(cached, artifact, &consumed.from))
            .await
            .map_err(self.failed(&consumed.from, &artifact.path, &artifact.sha256, "GET"))
    }

    /// Fetches the content into the cache: a temp file beside `cached`,
    /// hashed while written, renamed into place once size and digest match.
    async fn get(&self, cached: &Path, artifact: &Artifact, from: &str) -> Result<(), Failure> {
        let request = self
            .client
            .get(self.url(&artifact.sha256))
            .bearer_auth(&self.token)
            .send();
        let mut response = self.bounded(request).await?;
        if response.status() != StatusCode::OK {
            return Err(status_failure(response.status()));
        }
        if let Some(announced) = response.content_length() {
            if announced != artifact.size {
                return Err(Failure::SizeMismatch {
                    expected: artifact.size,
                    sent: format!("Content-Length {announced}"),
                });
            }
        }
        let disk = |doing, file: &Path| {
            let file = file.to_owned();
            move |error| Failure::Disk { doing, file, error }
        };
        tokio::fs::create_dir_all(&self.cache)
            .await
            .map_err(disk("create the cache folder", &self.cache))?;
        let (part, output) = Part::create(cached).map_err(disk("create a file in", &self.cache))?;
        let mut output = tokio::fs::File::from_std(output);
        let metered = Metered(self.observer.transfer_started(TransferStarted::Download {
            path: &artifact.path,
            from,
            size: artifact.size,
        }));
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let stall = self.settings.stall_timeout;
        loop {
            let chunk = match timeout(stall, response.chunk()).await {
                Err(_) => return Err(Failure::Stalled(stall)),
                Ok(Err(e)) => {
                    return Err(Failure::Truncated {
                        got,
                        expected: artifact.size,
                        cause: Some(describe_reqwest(e)),
                    })
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            got += chunk.len() as u64;
            if got > artifact.size {
                return Err(Failure::SizeMismatch {
                    expected: artifact.size,
                    sent: "more".into(),
                });
            }
            hasher.update(&chunk);
            output
                .write_all(&chunk)
                .await
                .map_err(disk("write", &part.path))?;
            metered.0.advanced(chunk.len() as u64);
        }
        if got < artifact.size {
            return Err(Failure::Truncated {
                got,
                expected: artifact.size,
                cause: None,
            });
        }
        let digest = hex(hasher);
        if digest != artifact.sha256 {
            return Err(Failure::DigestMismatch {
                expected: artifact.sha256.clone(),
                got: digest,
            });
        }
        output.flush().await.map_err(disk("write", &part.path))?;
        drop(output);
        part.persist(cached).map_err(disk("rename into", cached))
    }
}
