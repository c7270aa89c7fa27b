//! The attempts this worker owns and the calls that wait for a connection:
//! starting and cancelling executions, buffering their calls while the hub
//! is out of reach, sending `Complete` and keeping it until the hub
//! acknowledges it, and resuming after a reconnect (stopping what the hub
//! no longer counts as ours, re-sending what it did not acknowledge).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use muster_core::wire::calls::{HubCall, WorkerCall};
use muster_core::wire::limits::MAX_RECORD_BYTES;
use muster_core::wire::types::{
    Assignment, Held, Registration, Report, ReportStatus, Resume, Welcome,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client::{self, ClientError};
use crate::exec;
use crate::transfer::{Transfer, TransferError, TransferSettings};
use crate::{detected_capabilities, WorkerConfig, WorkerError};

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
pub(crate) struct Work {
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
    /// Sends artifact transfers, including those under way, to the hub at
    /// `url` from now on.
    pub(crate) fn move_to(&self, url: &str) -> Result<(), TransferError> {
        self.transfer.move_to(url)
    }

    pub(crate) fn new(
        config: &WorkerConfig,
        stop: &CancellationToken,
        out: mpsc::Sender<WorkerCall>,
    ) -> Result<Self, WorkerError> {
        let cache = tempfile::Builder::new()
            .prefix("muster-cache-")
            .tempdir()
            .map_err(WorkerError::CacheFolder)?;
        let settings = TransferSettings {
            stall_timeout: config.transfer_stall_timeout,
            // A worker that follows its run to a new master waits for it.
            hub_away_patience: if config.locator.is_some() {
                config.reconnect_timeout
            } else {
                Duration::ZERO
            },
            ..TransferSettings::default()
        };
        let transfer = Transfer::new(&config.hub, config.token.clone(), cache.path(), settings)
            .map_err(|e| match e {
                TransferError::BadHubUrl(url) => WorkerError::Client(ClientError::BadUrl(url)),
                other => WorkerError::Setup(other),
            })?
            .observed_by(config.observer.clone());
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
    pub(crate) fn registration(
        &self,
        config: &WorkerConfig,
        earlier: Option<&Welcome>,
    ) -> Registration {
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
    pub(crate) async fn resume(
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
    pub(crate) fn buffer(&mut self, call: WorkerCall) {
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
    pub(crate) async fn send(
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
    pub(crate) fn acknowledged(&mut self, invocation_id: &str, error: Option<String>) {
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
    pub(crate) fn obey(&mut self, call: HubCall) {
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
    pub(crate) async fn stop_all(self, limit: Duration) {
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
