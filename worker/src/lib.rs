//! The worker: joins a hub, registers its capabilities and slots, runs
//! what it is assigned and streams logs and results back. When its
//! connection drops it reconnects with backoff, resumes its registration
//! and keeps the modules the hub still counts as its own.
//!
//! Invariant: the worker owns an execution from its `Started` until the
//! hub acknowledged its `Complete`; it stops an execution only when the
//! hub says `Cancel` or `Shutdown` or no longer counts it as the worker's
//! (after a reconnect), when the module's own timeout passes, or when the
//! worker itself stops.
//!
//! This file is the public API and the outer loop ([`run`]); `join`
//! connects and registers (with `backoff`), `serve` works one connection,
//! `work` owns the attempts and their acknowledgements, `exec` runs one
//! module, `transfer` moves its artifacts. The library prints nothing:
//! what it has to say goes to the [`WorkerObserver`] in [`WorkerConfig`].

mod backoff;
mod client;
mod exec;
mod join;
mod observer;
mod serve;
pub mod transfer;
mod work;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use muster_core::url::redact_url;
use muster_core::wire::calls::WorkerCall;
use muster_core::wire::types::{RunOutcome, Welcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::join::join;
use crate::serve::{serve, stuck, Served};
use crate::transfer::TransferError;
use crate::work::Work;

pub use client::ClientError;
pub use observer::{Silent, TransferProgress, TransferStarted, WorkerEvent, WorkerObserver};

/// How a worker joins and what it offers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The hub's URL, `http(s)://host:port/hub` or `ws(s)://...`; a
    /// trailing slash is dropped, a query kept. Printed only through
    /// [`redact_url`].
    pub hub: String,
    pub token: String,
    pub name: String,
    /// Capabilities beyond the `os:` and `arch:` ones detected here.
    pub capabilities: Vec<String>,
    pub slots: u32,
    /// Module `cwd`s are relative to this folder.
    pub workdir: PathBuf,
    /// Bound on one connection attempt and its handshake.
    pub connect_timeout: Duration,
    /// How long to keep trying to reach the hub, first and after a drop,
    /// before giving up.
    pub reconnect_timeout: Duration,
    /// An artifact transfer that moves no bytes for this long fails.
    pub transfer_stall_timeout: Duration,
    /// A benchmark aid: report every module succeeded at once, without
    /// running its command (no process is forked). Measures muster's own
    /// dispatch cost.
    pub noop: bool,
    /// Told what the worker has to say (a lost hub, transfer progress);
    /// [`Silent`] shows nothing.
    pub observer: Arc<dyn WorkerObserver>,
    /// Where the hub is now, for a worker whose run may move to another
    /// master (CI failover); asked before each reconnect, and when the hub
    /// closes the connection. `None`: the hub stays at `hub`.
    pub locator: Option<Arc<dyn HubLocator>>,
}

/// Finds a run's current hub (in `muster ci`, from the discovery record):
/// `None` when it cannot tell, or the run has no hub any more.
pub trait HubLocator: std::fmt::Debug + Send + Sync {
    fn locate(&self) -> Pin<Box<dyn Future<Output = Option<String>> + Send + '_>>;
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the hub closed the connection before the run ended{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    HubClosed(Option<String>),
    #[error("the hub did not answer Register: {0}")]
    Register(String),
    #[error("the worker could not set up: cannot make an artifact cache folder: {0}")]
    CacheFolder(io::Error),
    #[error("the worker could not set up: {0}")]
    Setup(TransferError),
    #[error("gave up on the hub after trying for {:.1}s: {last}", .waited.as_secs_f64())]
    HubGone { waited: Duration, last: String },
}

/// Why a worker stopped without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The hub said the run is over, and how it ended if it said so.
    Shutdown {
        reason: String,
        outcome: Option<RunOutcome>,
    },
    /// The owner asked it to stop.
    Stopped,
}

/// `os:<os>` and `arch:<arch>` for this machine, as Rust names them
/// (`linux`, `macos`, `windows`; `x86_64`, `aarch64`, ...).
pub fn detected_capabilities() -> Vec<String> {
    vec![
        format!("os:{}", std::env::consts::OS),
        format!("arch:{}", std::env::consts::ARCH),
    ]
}

/// This machine's host name, for default worker names.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into())
}

/// Joins the hub and works until it says Shutdown or `stop` fires. A
/// dropped connection is retried with backoff for `reconnect_timeout`.
pub async fn run(mut config: WorkerConfig, stop: CancellationToken) -> Result<Exit, WorkerError> {
    let (out, mut calls) = mpsc::channel::<WorkerCall>(256);
    let mut work = Work::new(&config, &stop, out)?;
    let mut session: Option<Welcome> = None;
    let mut sender: Option<client::Sender> = None;
    let exit = loop {
        let shown_hub = redact_url(&config.hub);
        let joined = match join(&mut config, &stop, &mut calls, &mut work, session.as_ref()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => break Ok(Exit::Stopped),
            Err(e) => break Err(e),
        };
        let (mut tx, mut rx, welcome) = joined;
        let resumed = welcome.resumed;
        tracing::info!(worker = %welcome.worker_id, hub = %shown_hub, resumed, "registered");
        let resumed = tokio::time::timeout(config.connect_timeout, work.resume(&welcome, &mut tx));
        let failed = match resumed.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(stuck(config.connect_timeout)),
        };
        if let Some(e) = failed {
            tracing::warn!("connection dropped right after registering: {e}");
            session = Some(welcome);
            continue;
        }
        let ended = serve(&mut tx, &mut rx, &mut calls, &mut work, &stop, &welcome).await;
        session = Some(welcome);
        match ended {
            Served::Shutdown { reason, outcome } => {
                sender = Some(tx);
                break Ok(Exit::Shutdown { reason, outcome });
            }
            Served::Stopped => {
                sender = Some(tx);
                break Ok(Exit::Stopped);
            }
            Served::Closed(error) => {
                config.observer.event(WorkerEvent::HubClosed {
                    worker: config.name.clone(),
                    why: error.clone().unwrap_or_default(),
                });
                // A master that was superseded closes its workers: the run
                // goes on at the new one, if the locator knows of it.
                let moved = follow_run(&mut config, &mut calls, &mut work, &stop).await;
                if moved != Some(true) {
                    sender = Some(tx);
                    break Err(WorkerError::HubClosed(error));
                }
                let why = error.unwrap_or_else(|| "the hub closed the connection".into());
                tracing::warn!(hub = %shown_hub, "the hub closed the connection: {why}; following the run to {}", redact_url(&config.hub));
            }
            Served::Dropped(why) => {
                tracing::warn!(hub = %shown_hub, "lost the hub: {why}; reconnecting");
                config.observer.event(WorkerEvent::HubLost {
                    worker: config.name.clone(),
                    why,
                });
            }
        }
    };
    // Whatever still runs is stopped and not reported: the hub sees this
    // worker leave and runs those modules again elsewhere.
    drop(calls);
    work.stop_all(Duration::from_secs(10)).await;
    if let Some(mut sender) = sender {
        let _ = tokio::time::timeout(Duration::from_secs(5), sender.close()).await;
    }
    exit
}

/// How long one [`HubLocator::locate`] may take.
const LOCATE_LIMIT: Duration = Duration::from_secs(10);

/// Asks `locator` where the hub is now, within [`LOCATE_LIMIT`], buffering
/// the executions' calls meanwhile; `None` when it cannot tell or `stop`
/// fired.
async fn locate(
    locator: &dyn HubLocator,
    calls: &mut mpsc::Receiver<WorkerCall>,
    work: &mut Work,
    stop: &CancellationToken,
) -> Option<String> {
    let located = tokio::time::timeout(LOCATE_LIMIT, locator.locate());
    tokio::pin!(located);
    loop {
        tokio::select! {
            located = &mut located => return located.ok().flatten(),
            Some(call) = calls.recv() => work.buffer(call),
            () = stop.cancelled() => return None,
        }
    }
}

/// Asks the locator, if the worker has one, where the run's hub is now,
/// and moves there (see [`move_hub`]): whether it moved; `None` when `stop`
/// fired meanwhile.
pub(crate) async fn follow_run(
    config: &mut WorkerConfig,
    calls: &mut mpsc::Receiver<WorkerCall>,
    work: &mut Work,
    stop: &CancellationToken,
) -> Option<bool> {
    let Some(locator) = config.locator.clone() else {
        return Some(false);
    };
    let located = locate(locator.as_ref(), calls, work, stop).await;
    if stop.is_cancelled() {
        return None;
    }
    match located.filter(|url| *url != config.hub) {
        Some(url) => {
            move_hub(config, work, url);
            Some(true)
        }
        None => Some(false),
    }
}

/// Points the worker, and its transfers under way, at the hub at `url`.
fn move_hub(config: &mut WorkerConfig, work: &Work, url: String) {
    match work.move_to(&url) {
        Ok(()) => {
            config.observer.event(WorkerEvent::HubMoved {
                worker: config.name.clone(),
                to: redact_url(&url),
            });
            config.hub = url;
        }
        Err(e) => tracing::warn!("the run's hub moved to a URL this worker cannot use: {e}"),
    }
}
