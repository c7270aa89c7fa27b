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

use muster_core::protocol::{Assignment, HubCall, Registration, Welcome, WorkerCall};
use muster_core::signalr::Message;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

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
    #[error("the hub has been silent for {0:?}; giving up on it")]
    HubSilent(Duration),
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
    // The hub pings every `ping_every`; twice that in silence means it is
    // gone, even if the TCP connection does not say so.
    let silence = ping_every * 2;
    let mut ping = tokio::time::interval(ping_every);
    let (out, mut calls) = mpsc::channel::<WorkerCall>(256);
    let mut executions = Executions::new(&config, &stop, out);
    let mut next_invocation = 1u64;
    let mut deadline = Instant::now() + silence;
    let exit = loop {
        tokio::select! {
            message = timeout_at(deadline, receiver.recv()) => {
                let message = match message {
                    Err(_) => break Err(WorkerError::HubSilent(silence)),
                    Ok(Err(e)) => break Err(e.into()),
                    Ok(Ok(None)) => break Err(WorkerError::HubClosed(None)),
                    Ok(Ok(Some(message))) => message,
                };
                deadline = Instant::now() + silence;
                match message {
                    Message::Close { error, .. } => break Err(WorkerError::HubClosed(error)),
                    Message::Invocation { target, arguments, .. } => {
                        match HubCall::from_invocation(&target, arguments) {
                            Ok(HubCall::Shutdown { reason }) => break Ok(Exit::Shutdown(reason)),
                            Ok(call) => executions.obey(call),
                            Err(e) => tracing::warn!("ignored a call from the hub: {e}"),
                        }
                    }
                    Message::Completion { error: Some(error), .. } => {
                        tracing::warn!("the hub refused a report: {error}");
                    }
                    _ => {}
                }
            }
            Some(call) = calls.recv() => {
                let id = match &call {
                    WorkerCall::Complete(report) => {
                        executions.ended(&report.module_id, report.attempt);
                        next_invocation += 1;
                        Some(next_invocation.to_string())
                    }
                    _ => None,
                };
                if let Err(e) = sender.send(&call.to_message(id)).await {
                    break Err(e.into());
                }
            }
            _ = ping.tick() => {
                if let Err(e) = sender.send(&Message::Ping).await {
                    break Err(e.into());
                }
            }
            () = stop.cancelled() => break Ok(Exit::Stopped),
        }
    };
    // Whatever still runs is stopped and not reported: the hub sees this
    // worker leave and runs those modules again elsewhere.
    drop(calls);
    executions.stop_all(Duration::from_secs(10)).await;
    sender.close().await;
    exit
}

/// The modules this worker is running, each a task with its own cancel
/// token; their calls go to the hub through `out`.
struct Executions {
    name: String,
    workdir: PathBuf,
    stop: CancellationToken,
    out: mpsc::Sender<WorkerCall>,
    tracker: TaskTracker,
    running: HashMap<(String, u32), CancellationToken>,
}

impl Executions {
    fn new(config: &WorkerConfig, stop: &CancellationToken, out: mpsc::Sender<WorkerCall>) -> Self {
        Executions {
            name: config.name.clone(),
            workdir: config.workdir.clone(),
            stop: stop.clone(),
            out,
            tracker: TaskTracker::new(),
            running: HashMap::new(),
        }
    }

    /// Starts an `Assign`ed module or cancels one (`Shutdown` ends the loop
    /// before it gets here).
    fn obey(&mut self, call: HubCall) {
        match call {
            HubCall::Assign(assignment) => self.start(assignment),
            HubCall::Cancel {
                module_id,
                attempt,
                reason,
            } => {
                tracing::info!(module = %module_id, attempt, "cancel: {reason}");
                if let Some(token) = self.running.get(&(module_id, attempt)) {
                    token.cancel();
                }
            }
            HubCall::Shutdown { .. } => {}
        }
    }

    fn start(&mut self, assignment: Assignment) {
        let token = self.stop.child_token();
        let key = (assignment.module_id.clone(), assignment.attempt);
        self.running.insert(key, token.clone());
        let span = tracing::info_span!(
            "module",
            id = %assignment.module_id,
            attempt = assignment.attempt
        );
        let out = self.out.clone();
        let name = self.name.clone();
        let workdir = self.workdir.clone();
        let execution = async move {
            let context = exec::Context {
                worker_name: &name,
                workdir: &workdir,
            };
            exec::execute(assignment, context, out, token).await;
        };
        self.tracker.spawn(execution.instrument(span));
    }

    /// The attempt reported its end.
    fn ended(&mut self, module_id: &str, attempt: u32) {
        self.running.remove(&(module_id.to_owned(), attempt));
    }

    /// Cancels everything still running and waits, at most `limit`, for the
    /// executions to kill their process groups.
    async fn stop_all(self, limit: Duration) {
        for token in self.running.values() {
            token.cancel();
        }
        self.tracker.close();
        drop(self.out);
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
    }
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
