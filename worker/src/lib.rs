//! The worker: joins a hub, registers its capabilities and slots, runs
//! what it is assigned and streams logs and results back.
//!
//! Invariant: the worker owns an execution from its `Started` until its
//! `Complete`; it stops an execution only when the hub says `Cancel` or
//! `Shutdown`, or when the module's own timeout passes.

mod client;
mod exec;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use muster_core::protocol::{HubCall, Registration, Welcome, WorkerCall};
use muster_core::signalr::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::{websocket_url, ClientError};

/// How a worker joins and what it offers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The hub's URL, `http(s)://host:port/hub` or `ws(s)://...`.
    pub hub: String,
    pub token: String,
    pub name: String,
    /// Capabilities beyond the `os:` and `arch:` ones detected here.
    pub capabilities: Vec<String>,
    pub slots: u32,
    /// Module `cwd`s are relative to this folder.
    pub workdir: PathBuf,
    /// Bound on connecting and on the handshake.
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the hub closed the connection before the run ended{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    HubClosed(Option<String>),
    #[error("the hub did not answer Register: {0}")]
    Register(String),
}

/// Why a worker stopped without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The hub said the run is over.
    Shutdown(String),
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

/// Joins the hub and works until it says Shutdown or `stop` fires.
pub async fn run(config: WorkerConfig, stop: CancellationToken) -> Result<Exit, WorkerError> {
    let (mut sender, mut receiver) =
        client::connect(&config.hub, &config.token, config.connect_timeout).await?;
    let mut capabilities = detected_capabilities();
    for extra in &config.capabilities {
        if !capabilities.contains(extra) {
            capabilities.push(extra.clone());
        }
    }
    let registration = Registration {
        name: config.name.clone(),
        capabilities,
        slots: config.slots.max(1),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    sender
        .send(&WorkerCall::Register(registration).to_message(Some("0".into())))
        .await?;
    let welcome = await_welcome(&mut receiver, config.connect_timeout).await?;
    tracing::info!(worker = %welcome.worker_id, hub = %config.hub, "registered");
    let ping_every = Duration::from_millis(welcome.ping_interval_ms.max(100));
    let mut ping = tokio::time::interval(ping_every);
    let (out, mut calls) = mpsc::unbounded_channel::<WorkerCall>();
    let tracker = TaskTracker::new();
    let mut running: HashMap<(String, u32), CancellationToken> = HashMap::new();
    let mut next_invocation = 1u64;
    let exit = loop {
        tokio::select! {
            message = receiver.recv() => match message? {
                None => break Err(WorkerError::HubClosed(None)),
                Some(Message::Close { error, .. }) => break Err(WorkerError::HubClosed(error)),
                Some(Message::Invocation { target, arguments, .. }) => {
                    match HubCall::from_invocation(&target, arguments) {
                        Ok(HubCall::Assign(assignment)) => {
                            let token = stop.child_token();
                            running.insert((assignment.module_id.clone(), assignment.attempt), token.clone());
                            let out = out.clone();
                            let name = config.name.clone();
                            let workdir = config.workdir.clone();
                            tracker.spawn(async move {
                                let context = exec::Context { worker_name: &name, workdir: &workdir };
                                exec::execute(assignment, context, out, token).await;
                            });
                        }
                        Ok(HubCall::Cancel { module_id, attempt, reason }) => {
                            tracing::info!(module = %module_id, attempt, "cancel: {reason}");
                            if let Some(token) = running.get(&(module_id, attempt)) {
                                token.cancel();
                            }
                        }
                        Ok(HubCall::Shutdown { reason }) => break Ok(Exit::Shutdown(reason)),
                        Err(e) => tracing::warn!("ignored a call from the hub: {e}"),
                    }
                }
                Some(Message::Completion { error: Some(error), .. }) => {
                    tracing::warn!("the hub refused a report: {error}");
                }
                Some(_) => {}
            },
            Some(call) = calls.recv() => {
                let id = match &call {
                    WorkerCall::Complete(report) => {
                        running.remove(&(report.module_id.clone(), report.attempt));
                        next_invocation += 1;
                        Some(next_invocation.to_string())
                    }
                    _ => None,
                };
                sender.send(&call.to_message(id)).await?;
            }
            _ = ping.tick() => sender.send(&Message::Ping).await?,
            () = stop.cancelled() => break Ok(Exit::Stopped),
        }
    };
    // Stop what still runs and pass on its last reports while the socket
    // may still be open; the executions end within their kill grace.
    for token in running.values() {
        token.cancel();
    }
    tracker.close();
    drop(out);
    let drain = async {
        while let Some(call) = calls.recv().await {
            if sender.send(&call.to_message(None)).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    sender.close().await;
    exit
}

async fn await_welcome(
    receiver: &mut client::Receiver,
    timeout: Duration,
) -> Result<Welcome, WorkerError> {
    let wait = async {
        loop {
            match receiver.recv().await? {
                None => return Err(WorkerError::HubClosed(None)),
                Some(Message::Close { error, .. }) => return Err(WorkerError::HubClosed(error)),
                Some(Message::Completion { result, error, .. }) => {
                    if let Some(error) = error {
                        return Err(WorkerError::Register(error));
                    }
                    let welcome = result.unwrap_or_default();
                    return serde_json::from_value(welcome)
                        .map_err(|e| WorkerError::Register(e.to_string()));
                }
                Some(_) => continue,
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| WorkerError::Register(format!("no answer within {timeout:?}")))?
}
