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

mod client;
mod exec;
pub mod transfer;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use muster_core::protocol::{
    Assignment, Held, HubCall, Registration, Report, ReportStatus, Resume, RunOutcome, Welcome,
    WorkerCall, MAX_RECORD_BYTES,
};
use muster_core::signalr::Message;
use muster_core::url::redact_url;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::transfer::{ArtifactError, Transfer, TransferSettings};

pub use client::{websocket_url, ClientError};

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
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the hub closed the connection before the run ended{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    HubClosed(Option<String>),
    #[error("the hub did not answer Register: {0}")]
    Register(String),
    #[error("the worker could not set up: {0}")]
    Setup(String),
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
pub async fn run(config: WorkerConfig, stop: CancellationToken) -> Result<Exit, WorkerError> {
    let (out, mut calls) = mpsc::channel::<WorkerCall>(256);
    let mut work = Work::new(&config, &stop, out)?;
    let mut session: Option<Welcome> = None;
    let mut sender: Option<client::Sender> = None;
    let shown_hub = redact_url(&config.hub);
    let exit = loop {
        let joined = match join(&config, &stop, &mut calls, &mut work, session.as_ref()).await {
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
                sender = Some(tx);
                break Err(WorkerError::HubClosed(error));
            }
            Served::Dropped(why) => {
                tracing::warn!(hub = %shown_hub, "lost the hub: {why}; reconnecting");
                eprintln!(
                    "muster: worker {}: lost the hub ({why}); reconnecting",
                    config.name
                );
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

type Joined = (client::Sender, client::Receiver, Welcome);

/// Connects and registers, retrying transient failures with capped,
/// jittered exponential backoff until `reconnect_timeout` has passed: an
/// attempt is cut off at that deadline, and so is the wait before the next
/// one, after which one last attempt gets [`LAST_LOOK`] (a hub that came
/// back during the wait is not missed). Executions go on meanwhile: their
/// calls are buffered. `Ok(None)` when `stop` fired.
async fn join(
    config: &WorkerConfig,
    stop: &CancellationToken,
    calls: &mut mpsc::Receiver<WorkerCall>,
    work: &mut Work,
    earlier: Option<&Welcome>,
) -> Result<Option<Joined>, WorkerError> {
    let started = Instant::now();
    let deadline = started + config.reconnect_timeout;
    let mut backoff = Backoff::new();
    let mut last: Option<String> = None;
    loop {
        let registration = work.registration(config, earlier);
        let bound = deadline.max(Instant::now() + LAST_LOOK);
        let attempt = timeout_at(bound, connect_and_register(config, registration));
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                result = &mut attempt => break result,
                Some(call) = calls.recv() => work.buffer(call),
                () = stop.cancelled() => return Ok(None),
            }
        };
        let error = match result {
            Ok(Ok(joined)) => return Ok(Some(joined)),
            Ok(Err(WorkerError::Client(e))) if !e.is_transient() => return Err(e.into()),
            Ok(Err(e)) => e.to_string(),
            // Cut off at the deadline: the error before it says more.
            Err(_) => last.take().unwrap_or_else(|| {
                format!(
                    "no answer from {} within {}",
                    redact_url(&config.hub),
                    humantime::format_duration(config.reconnect_timeout)
                )
            }),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(WorkerError::HubGone {
                waited: started.elapsed(),
                last: error,
            });
        }
        let wait = backoff.next();
        if backoff.tries == 1 {
            eprintln!(
                "muster: worker {}: {error}; retrying for up to {}",
                config.name,
                humantime::format_duration(config.reconnect_timeout)
            );
        } else {
            tracing::info!("still cannot reach the hub: {error}");
        }
        last = Some(error);
        let sleep = tokio::time::sleep_until((now + wait).min(deadline));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                Some(call) = calls.recv() => work.buffer(call),
                () = stop.cancelled() => return Ok(None),
            }
        }
    }
}

/// How long the attempt made once the deadline has come may take: long
/// enough to register with a hub that answers, short enough that giving up
/// stays close to the deadline.
const LAST_LOOK: Duration = Duration::from_millis(500);

async fn connect_and_register(
    config: &WorkerConfig,
    registration: Registration,
) -> Result<Joined, WorkerError> {
    let (mut sender, mut receiver) =
        client::connect(&config.hub, &config.token, config.connect_timeout).await?;
    sender
        .send(&WorkerCall::Register(registration).to_message(Some("0".into())))
        .await?;
    let welcome = await_welcome(&mut receiver, config.connect_timeout).await?;
    Ok((sender, receiver, welcome))
}

/// Capped exponential backoff with jitter: 100 ms doubling to 5 s, each
/// wait drawn between half and all of the current step, so workers that
/// lost the hub together do not come back in lockstep.
struct Backoff {
    step: Duration,
    tries: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff {
            step: Self::FIRST,
            tries: 0,
        }
    }

    fn next(&mut self) -> Duration {
        self.tries += 1;
        let wait = self.step.mul_f64(rand::rng().random_range(0.5..=1.0));
        self.step = (self.step * 2).min(Self::CAP);
        wait
    }
}

/// How one connection ended.
enum Served {
    Shutdown {
        reason: String,
        outcome: Option<RunOutcome>,
    },
    Stopped,
    /// The hub closed it on purpose, without allowing a reconnect.
    Closed(Option<String>),
    /// The connection broke or went silent: reconnect.
    Dropped(String),
}

/// Works over one connection until it ends.
async fn serve(
    sender: &mut client::Sender,
    receiver: &mut client::Receiver,
    calls: &mut mpsc::Receiver<WorkerCall>,
    work: &mut Work,
    stop: &CancellationToken,
    welcome: &Welcome,
) -> Served {
    let ping_every = Duration::from_millis(welcome.ping_interval_ms.max(100));
    // The hub pings every `ping_every`; twice that in silence means it is
    // gone, even if the TCP connection does not say so.
    let silence = ping_every * 2;
    let mut ping = tokio::time::interval(ping_every);
    let mut deadline = Instant::now() + silence;
    loop {
        tokio::select! {
            message = timeout_at(deadline, receiver.recv()) => {
                let message = match message {
                    Err(_) => return Served::Dropped(format!("the hub was silent for {}", humantime::format_duration(silence))),
                    Ok(Err(e)) => return Served::Dropped(e.to_string()),
                    Ok(Ok(None)) => return Served::Dropped("the hub closed the socket".into()),
                    Ok(Ok(Some(message))) => message,
                };
                deadline = Instant::now() + silence;
                match message {
                    Message::Close { error, allow_reconnect: true } => {
                        return Served::Dropped(error.unwrap_or_else(|| "the hub closed the connection".into()));
                    }
                    Message::Close { error, .. } => return Served::Closed(error),
                    Message::Invocation { target, arguments, .. } => {
                        match HubCall::from_invocation(&target, arguments) {
                            Ok(HubCall::Shutdown { reason, outcome }) => {
                                return Served::Shutdown { reason, outcome };
                            }
                            Ok(call) => work.obey(call),
                            Err(e) => tracing::warn!("ignored a call from the hub: {e}"),
                        }
                    }
                    Message::Completion { invocation_id, error, .. } => {
                        work.acknowledged(&invocation_id, error);
                    }
                    _ => {}
                }
            }
            // A send that cannot finish within the silence bound (a full
            // socket buffer on a dead network) is a dropped connection too.
            Some(call) = calls.recv() => {
                match tokio::time::timeout(silence, work.send(call, sender)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Served::Dropped(e.to_string()),
                    Err(_) => return Served::Dropped(stuck(silence)),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(silence, sender.send(&Message::Ping)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Served::Dropped(e.to_string()),
                    Err(_) => return Served::Dropped(stuck(silence)),
                }
            }
            () = stop.cancelled() => return Served::Stopped,
        }
    }
}

fn stuck(bound: Duration) -> String {
    format!(
        "a send to the hub did not finish within {}",
        humantime::format_duration(bound)
    )
}

/// Output buffered while the hub is out of reach, beyond which log batches
/// are dropped (and counted) so a long outage cannot fill memory.
const MAX_BUFFERED_LOG_BYTES: usize = 4 * 1024 * 1024;

/// One attempt this worker owns.
struct Owned {
    token: CancellationToken,
    /// The attempt's `Complete`, once it ended, until the hub acknowledges
    /// it; with the invocation id it was last sent under.
    report: Option<(Option<String>, Report)>,
}

/// The attempts this worker owns, each a task with its own cancel token,
/// and the calls that wait for a connection. Executions send their calls
/// through `out`.
struct Work {
    name: String,
    workdir: PathBuf,
    /// The hub's token, which executions mask in module output.
    token: String,
    /// Artifact uploads and downloads, sharing one download cache.
    transfer: Transfer,
    /// The cache's folder, removed when the worker ends.
    _cache: tempfile::TempDir,
    /// See [`WorkerConfig::noop`].
    noop: bool,
    stop: CancellationToken,
    out: mpsc::Sender<WorkerCall>,
    tracker: TaskTracker,
    owned: HashMap<Held, Owned>,
    /// `Started` and `Log` calls made while the hub was out of reach.
    pending: VecDeque<WorkerCall>,
    pending_log_bytes: usize,
    dropped_log_bytes: usize,
    next_invocation: u64,
}

impl Work {
    fn new(
        config: &WorkerConfig,
        stop: &CancellationToken,
        out: mpsc::Sender<WorkerCall>,
    ) -> Result<Self, WorkerError> {
        let cache = tempfile::Builder::new()
            .prefix("muster-cache-")
            .tempdir()
            .map_err(|e| {
                WorkerError::Setup(format!("cannot make an artifact cache folder: {e}"))
            })?;
        let settings = TransferSettings {
            stall_timeout: config.transfer_stall_timeout,
            ..TransferSettings::default()
        };
        let transfer = Transfer::new(&config.hub, config.token.clone(), cache.path(), settings)
            .map_err(|e| match e {
                ArtifactError::BadHubUrl(url) => WorkerError::Client(ClientError::BadUrl(url)),
                other => WorkerError::Setup(other.to_string()),
            })?;
        Ok(Work {
            name: config.name.clone(),
            workdir: config.workdir.clone(),
            token: config.token.clone(),
            transfer,
            _cache: cache,
            noop: config.noop,
            stop: stop.clone(),
            out,
            tracker: TaskTracker::new(),
            owned: HashMap::new(),
            pending: VecDeque::new(),
            pending_log_bytes: 0,
            dropped_log_bytes: 0,
            next_invocation: 1,
        })
    }

    /// What to send in `Register`: a claim to the earlier registration and
    /// every attempt still owned, when there was one.
    fn registration(&self, config: &WorkerConfig, earlier: Option<&Welcome>) -> Registration {
        let mut capabilities = detected_capabilities();
        for extra in &config.capabilities {
            if !capabilities.contains(extra) {
                capabilities.push(extra.clone());
            }
        }
        let resume = earlier.map(|welcome| Resume {
            worker_id: welcome.worker_id.clone(),
            key: welcome.resume_key.clone(),
            holding: self.owned.keys().cloned().collect(),
        });
        Registration {
            name: config.name.clone(),
            capabilities,
            slots: config.slots.max(1),
            version: env!("CARGO_PKG_VERSION").into(),
            resume,
        }
    }

    /// After registering: stops what the hub no longer counts as this
    /// worker's, then sends what waited for the connection.
    async fn resume(
        &mut self,
        welcome: &Welcome,
        sender: &mut client::Sender,
    ) -> Result<(), ClientError> {
        let keep: BTreeSet<&Held> = welcome.keep.iter().collect();
        let mut late = Vec::new();
        self.owned.retain(|held, owned| {
            if keep.contains(held) {
                return true;
            }
            match owned.report.take() {
                // Finished while away: the hub decides whether it still
                // counts (it fences off an attempt it gave to another).
                Some((_, report)) => late.push(report),
                None => {
                    tracing::warn!(module = %held.module_id, attempt = held.attempt, "the hub no longer counts this attempt as ours; stopping it");
                    owned.token.cancel();
                }
            }
            false
        });
        if self.dropped_log_bytes > 0 {
            tracing::warn!(
                "dropped {} bytes of module output while the hub was out of reach",
                self.dropped_log_bytes
            );
            self.dropped_log_bytes = 0;
        }
        for report in late {
            sender
                .send(&WorkerCall::Complete(report).to_message(Some(self.invocation_id())))
                .await?;
        }
        // What waited goes out in order; a call the socket fails on stays
        // queued for the next connection.
        while let Some(call) = self.pending.pop_front() {
            if !held_of(&call).is_some_and(|held| self.owned.contains_key(&held)) {
                continue;
            }
            if let Err(e) = sender.send(&call.clone().to_message(None)).await {
                self.pending.push_front(call);
                return Err(e);
            }
        }
        self.pending_log_bytes = 0;
        let unacknowledged: Vec<Report> = self
            .owned
            .values()
            .filter_map(|o| o.report.as_ref().map(|(_, r)| r.clone()))
            .collect();
        for report in unacknowledged {
            self.send(WorkerCall::Complete(report), sender).await?;
        }
        Ok(())
    }

    fn invocation_id(&mut self) -> String {
        self.next_invocation += 1;
        self.next_invocation.to_string()
    }

    /// Keeps a call made while the hub is out of reach.
    fn buffer(&mut self, call: WorkerCall) {
        match call {
            WorkerCall::Complete(report) => self.ended(report, None),
            WorkerCall::Log { ref text, .. } => {
                if self.pending_log_bytes + text.len() > MAX_BUFFERED_LOG_BYTES {
                    self.dropped_log_bytes += text.len();
                } else {
                    self.pending_log_bytes += text.len();
                    self.pending.push_back(call);
                }
            }
            call => self.pending.push_back(call),
        }
    }

    /// Sends an execution's call; a `Complete` is kept until acknowledged.
    async fn send(
        &mut self,
        call: WorkerCall,
        sender: &mut client::Sender,
    ) -> Result<(), ClientError> {
        let WorkerCall::Complete(report) = call else {
            let result = sender.send(&call.clone().to_message(None)).await;
            if result.is_err() {
                self.buffer(call);
            }
            return result;
        };
        let id = self.invocation_id();
        let frame_of = |report: &Report| {
            WorkerCall::Complete(report.clone())
                .to_message(Some(id.clone()))
                .to_frame()
        };
        let mut frame = frame_of(&report);
        let report = if frame.len() > MAX_RECORD_BYTES {
            // The hub would close the connection on it, and it would be
            // re-sent on every reconnect: fail the attempt instead.
            let failed = report_too_large(report, frame.len());
            frame = frame_of(&failed);
            failed
        } else {
            report
        };
        self.ended(report, Some(id));
        sender.send_frame(frame).await
    }

    /// Records an attempt's end; one this worker no longer owns is sent
    /// once, unacknowledged, so the hub can log it and fence it off.
    fn ended(&mut self, report: Report, invocation: Option<String>) {
        let held = Held {
            module_id: report.module_id.clone(),
            attempt: report.attempt,
        };
        match self.owned.get_mut(&held) {
            Some(owned) => owned.report = Some((invocation, report)),
            None => {
                tracing::debug!(module = %held.module_id, "report for an attempt the hub gave away")
            }
        }
    }

    /// The hub answered a `Complete`: the attempt is no longer ours to
    /// keep.
    fn acknowledged(&mut self, invocation_id: &str, error: Option<String>) {
        let held = self.owned.iter().find_map(|(held, owned)| {
            let sent_as = owned.report.as_ref().and_then(|(id, _)| id.as_deref());
            (sent_as == Some(invocation_id)).then(|| held.clone())
        });
        if let Some(error) = &error {
            tracing::warn!("the hub refused a report: {error}");
        }
        if let Some(held) = held {
            self.owned.remove(&held);
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
                if let Some(owned) = self.owned.get(&Held { module_id, attempt }) {
                    owned.token.cancel();
                }
            }
            HubCall::Shutdown { .. } => {}
        }
    }

    fn start(&mut self, assignment: Assignment) {
        let held = Held {
            module_id: assignment.module_id.clone(),
            attempt: assignment.attempt,
        };
        if self.owned.contains_key(&held) {
            // The hub re-sent an Assign this worker already has.
            return;
        }
        let token = self.stop.child_token();
        self.owned.insert(
            held,
            Owned {
                token: token.clone(),
                report: None,
            },
        );
        if self.noop {
            let out = self.out.clone();
            self.tracker.spawn(async move {
                let _ = out.send(exec::noop_started(&assignment)).await;
                let _ = out.send(exec::noop_complete(&assignment)).await;
            });
            return;
        }
        let span = tracing::info_span!(
            "module",
            id = %assignment.module_id,
            attempt = assignment.attempt
        );
        let out = self.out.clone();
        let name = self.name.clone();
        let workdir = self.workdir.clone();
        let hub_token = self.token.clone();
        let transfer = self.transfer.clone();
        let execution = async move {
            let context = exec::Context {
                worker_name: &name,
                workdir: &workdir,
                hub_token: &hub_token,
                transfer: &transfer,
            };
            exec::execute(assignment, context, out, token).await;
        };
        self.tracker.spawn(execution.instrument(span));
    }

    /// Cancels everything still running and waits, at most `limit`, for the
    /// executions to kill their process groups.
    async fn stop_all(self, limit: Duration) {
        for owned in self.owned.values() {
            owned.token.cancel();
        }
        self.tracker.close();
        drop(self.out);
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
    }
}

/// The attempt a `Started` or `Log` call is about.
fn held_of(call: &WorkerCall) -> Option<Held> {
    match call {
        WorkerCall::Started { module_id, attempt }
        | WorkerCall::Log {
            module_id, attempt, ..
        } => Some(Held {
            module_id: module_id.clone(),
            attempt: *attempt,
        }),
        WorkerCall::Complete(_) | WorkerCall::Register(_) => None,
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

/// A report that would not fit one record, replaced by a failure that says
/// why; outputs and the artifact list are what can grow.
fn report_too_large(report: Report, size: usize) -> Report {
    let error = format!(
        "its report took {} KiB, over the {} KiB a hub accepts in one message: \
         produce fewer or shorter outputs, or pack its artifacts into one archive",
        size.div_ceil(1024),
        MAX_RECORD_BYTES / 1024
    );
    Report {
        status: ReportStatus::Failed,
        outputs: Default::default(),
        artifacts: Vec::new(),
        error: Some(error),
        ..report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next()).collect();
        assert!(waits[0] >= Backoff::FIRST / 2 && waits[0] <= Backoff::FIRST);
        assert!(waits[1] >= Backoff::FIRST && waits[1] <= Backoff::FIRST * 2);
        for wait in &waits[6..] {
            assert!(
                *wait >= Backoff::CAP / 2 && *wait <= Backoff::CAP,
                "{wait:?}"
            );
        }
        assert_eq!(backoff.tries, 10);
    }
}
