//! A worker instance's side of `muster ci`: waiting for the master's
//! record in Redis, probing its hub URLs, and noticing that the run has
//! finished.

use std::time::Duration;

use muster_core::url::redact_url;
use muster_core::wire::http::health_url;
use muster_core::wire::types::RunOutcome;
use muster_discovery::store::{DiscoveryStore, StoreError};
use muster_worker::transfer::describe_reqwest;
use tokio::time::Instant;

use crate::failure::Failure;

/// How long one hub URL has to answer its health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between rounds of probing a published hub that does not answer.
const PROBE_PAUSE: Duration = Duration::from_secs(1);
/// How long a master takes from closing its hub to marking its record
/// finished, at most.
const FINISH_WINDOW: Duration = Duration::from_secs(10);

/// What the record led to.
pub enum Found {
    /// A hub that answers, and the token to show it.
    Hub { url: String, token: String },
    /// The run had already finished.
    Finished(RunOutcome),
}

/// Waits for run `run_id`'s record and probes its URLs until one answers,
/// for up to `patience`. The record can come before its hub answers (a
/// tunnel's public URL often takes seconds to route), and a restarted
/// master writes new URLs: it re-reads and probes again until then.
/// `token` wins over one in the record.
pub async fn find_hub(
    store: &DiscoveryStore,
    run_id: &str,
    token: Option<&str>,
    patience: Duration,
) -> Result<Found, Failure> {
    let deadline = Instant::now() + patience;
    let mut said_waiting = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let record = store.wait_for(run_id, left).await.map_err(|e| match e {
            StoreError::BadUrl { .. } => Failure::Usage(e.to_string()),
            e => Failure::infrastructure(e),
        })?;
        if let Some(outcome) = record.finished() {
            return Ok(Found::Finished(outcome));
        }
        let Some(token) = token.map(str::to_owned).or(record.token.clone()) else {
            return Err(Failure::Usage(
                "no token: set MUSTER_TOKEN to the secret the master uses (the record does not carry it)".into(),
            ));
        };
        let tried = match first_answering(&record.urls).await {
            Ok(url) => return Ok(Found::Hub { url, token }),
            Err(tried) => tried,
        };
        if Instant::now() >= deadline {
            return Err(Failure::infrastructure(format!(
                "none of the master's hub URLs answered within {}:\n{tried}\n  = help: check the master's tunnel (--tunnel) or --advertise address",
                humantime::format_duration(patience)
            )));
        }
        if !said_waiting {
            println!("muster: the master's hub does not answer yet; trying again until the discover timeout:\n{tried}");
            said_waiting = true;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + PROBE_PAUSE)).await;
    }
}

/// Whether the run's record says finished, now or within a few seconds
/// (the time a master takes from closing its hub to writing the record).
pub async fn finished_soon(store: &DiscoveryStore, run_id: &str) -> Option<RunOutcome> {
    let deadline = Instant::now() + FINISH_WINDOW;
    loop {
        if let Ok(Some(outcome)) = store
            .read(run_id)
            .await
            .map(|r| r.and_then(|r| r.finished()))
        {
            return Some(outcome);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Probes every URL's health check at once and returns the first URL, in
/// the record's order, that answered; or a line per URL saying why not.
async fn first_answering(urls: &[String]) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let probes = urls.iter().map(|url| {
        let client = client.clone();
        let health = health_url(url);
        async move {
            match client.get(&health).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("HTTP {}", response.status())),
                // The line names the URL, redacted; the error's own copy
                // of it is not.
                Err(e) => Err(describe_reqwest(e)),
            }
        }
    });
    let results = futures_util::future::join_all(probes).await;
    let mut tried = Vec::new();
    for (url, result) in urls.iter().zip(results) {
        match result {
            Ok(()) => return Ok(url.clone()),
            Err(why) => tried.push(format!("  {}: {why}", redact_url(url))),
        }
    }
    if tried.is_empty() {
        tried.push("  (the record lists no URL)".into());
    }
    Err(tried.join("\n"))
}

/// Where a `muster ci` worker finds its run's hub after losing it: the
/// discovery record's first URL that answers, while the run goes on (a
/// new master publishes its own when it takes the run over).
pub struct RecordLocator {
    store: DiscoveryStore,
    run_id: String,
}

impl RecordLocator {
    pub fn new(store: DiscoveryStore, run_id: &str) -> RecordLocator {
        RecordLocator {
            store,
            run_id: run_id.to_owned(),
        }
    }

    /// The token the record carries (`--token-in-record`), if any.
    pub async fn token(&self) -> Option<String> {
        self.store.read(&self.run_id).await.ok()??.token
    }
}

impl std::fmt::Debug for RecordLocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLocator")
            .field("redis", &self.store.shown_url())
            .field("run_id", &self.run_id)
            .finish()
    }
}

impl muster_worker::HubLocator for RecordLocator {
    fn locate(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move {
            let record = self.store.read(&self.run_id).await.ok()??;
            if record.finished().is_some() {
                return None;
            }
            first_answering(&record.urls).await.ok()
        })
    }
}

/// How a run ended, in a word.
pub fn outcome_word(outcome: RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Succeeded => "succeeded",
        RunOutcome::Failed => "failed",
        RunOutcome::Cancelled => "cancelled",
    }
}
