//! The HTTP side of transfers against `{hub}/artifacts/{sha256}`: why one
//! request failed ([`Failure`]), which failures are worth another try, the
//! bounded retry loop, the stall bound on waiting for an answer, and the
//! URLs and error texts (never the token, the hub URL only redacted).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use muster_core::wire::http::artifact_url;
use reqwest::StatusCode;
use tokio::time::timeout;

use super::{Transfer, TransferError};

/// Why one transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the hub answered {status}{hint}")]
    Status {
        status: StatusCode,
        hint: &'static str,
    },
    #[error("could not reach the hub: {0}")]
    Network(String),
    /// Nothing accepted a connection at the hub's address.
    #[error("could not reach the hub: {0}")]
    Unreachable(String),
    #[error("stalled: no byte moved for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error("truncated: the body ended after {got} of {expected} bytes{}", cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Truncated {
        got: u64,
        expected: u64,
        cause: Option<String>,
    },
    #[error("digest mismatch: expected {expected}, got {got}")]
    DigestMismatch { expected: String, got: String },
    #[error("size mismatch: expected {expected} bytes, the hub sent {sent}")]
    SizeMismatch { expected: u64, sent: String },
    #[error("the file changed since it was hashed (now {now} bytes, was {expected}); the module must not change its artifacts after it ended")]
    Changed { expected: u64, now: u64 },
    #[error("could not {doing} {}: {error}", file.display())]
    Disk {
        doing: &'static str,
        file: PathBuf,
        error: io::Error,
    },
}

/// Between tries while the hub cannot be connected to.
const HUB_AWAY_PAUSE: Duration = Duration::from_millis(500);

impl Failure {
    /// Whether the hub's address could not be connected to at all.
    pub fn is_hub_away(&self) -> bool {
        matches!(self, Failure::Unreachable(_))
    }

    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Network(_)
            | Failure::Unreachable(_)
            | Failure::Stalled(_)
            | Failure::Truncated { .. } => true,
            Failure::DigestMismatch { .. }
            | Failure::SizeMismatch { .. }
            | Failure::Changed { .. }
            | Failure::Disk { .. } => false,
        }
    }
}

impl Transfer {
    /// `{hub}/artifacts/{sha256}`, with the hub URL's query (if any) after
    /// it; one slash between the parts whether or not the hub URL ended
    /// with one.
    pub(super) fn url(&self, sha256: &str) -> String {
        artifact_url(&self.address().url, sha256)
    }

    /// [`Transfer::url`] as logs and errors show it.
    pub(super) fn shown_url(&self, sha256: &str) -> String {
        artifact_url(&self.address().shown, sha256)
    }

    /// Turns a request's failure, with the tries it took, into the error
    /// that names the artifact, its module and the URL.
    pub(super) fn failed<'a>(
        &'a self,
        module: &'a str,
        path: &'a str,
        sha256: &'a str,
        method: &'static str,
    ) -> impl FnOnce((Failure, u32)) -> TransferError + 'a {
        move |(failure, attempts)| TransferError::Transfer {
            path: path.to_owned(),
            module: module.to_owned(),
            method,
            url: self.shown_url(sha256),
            attempts,
            failure: Box::new(failure),
        }
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried
    /// `attempts` times, with doubling waits between tries. The error comes
    /// with the number of tries made.
    pub(super) async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, (Failure, u32)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut wait = self.settings.first_backoff;
        let mut attempt = 1;
        let mut away_since: Option<tokio::time::Instant> = None;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                // Nobody listens at the hub's address: the run may be
                // moving to a new master, which the worker follows.
                Err(failure)
                    if failure.is_hub_away()
                        && away_since
                            .get_or_insert_with(tokio::time::Instant::now)
                            .elapsed()
                            < self.settings.hub_away_patience =>
                {
                    tracing::info!(
                        "artifact transfer: the hub is away ({failure}); waiting for it"
                    );
                    tokio::time::sleep(HUB_AWAY_PAUSE).await;
                }
                Err(failure) if failure.is_transient() && attempt < self.settings.attempts => {
                    tracing::warn!(
                        attempt,
                        "artifact transfer failed: {failure}; trying again in {}",
                        humantime::format_duration(wait)
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(failure) => return Err((failure, attempt)),
            }
        }
    }

    /// A request's answer (headers), failing after the stall timeout.
    pub(super) async fn bounded(
        &self,
        request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    ) -> Result<reqwest::Response, Failure> {
        match timeout(self.settings.stall_timeout, request).await {
            Err(_) => Err(Failure::Stalled(self.settings.stall_timeout)),
            Ok(response) => response.map_err(network),
        }
    }
}

pub(super) fn status_failure(status: StatusCode) -> Failure {
    let hint = match status {
        StatusCode::UNAUTHORIZED => ": the hub refused the token",
        StatusCode::NOT_FOUND => ": the hub does not have this content",
        StatusCode::BAD_REQUEST => ": the hub refused the digest",
        StatusCode::PAYLOAD_TOO_LARGE => ": the file is larger than the hub accepts",
        StatusCode::UNPROCESSABLE_ENTITY => ": the bytes it got do not match the digest",
        StatusCode::REQUEST_TIMEOUT => ": it waited too long for the bytes",
        _ => "",
    };
    Failure::Status { status, hint }
}

pub(super) fn network(error: reqwest::Error) -> Failure {
    if error.is_connect() {
        Failure::Unreachable(describe_reqwest(error))
    } else {
        Failure::Network(describe_reqwest(error))
    }
}

/// A reqwest error with its causes, without the URL (the caller names it,
/// redacted).
pub fn describe_reqwest(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
