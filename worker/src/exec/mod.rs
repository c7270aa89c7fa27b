//! Runs one assigned module as a process: its own process group, the
//! given shell, cwd and env, stdout and stderr streamed as batched `Log`
//! calls, the timeout and cancellation enforced on the whole group, and the
//! outcome reported with outputs and timing. The values of the module's
//! `secrets` (and of the hub token) are masked in every log batch, in the
//! report's error and in its output values, before they leave the worker.
//!
//! This file is the attempt from start to report; `process` starts the
//! process, `logs` streams its output, `outputs` reads `$MUSTER_OUTPUT`,
//! `artifacts` fetches and stores its artifacts.

mod artifacts;
mod logs;
mod outputs;
mod process;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use muster_core::mask::Masker;
use muster_core::wire::calls::WorkerCall;
use muster_core::wire::types::{Artifact, Assignment, LogStream, Report, ReportStatus};
use muster_group::ProcessGroup;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::transfer::Transfer;
use artifacts::{fetch_consumed, upload_produced, ArtifactsError};
use logs::spawn_pump;
use outputs::{collect_outputs, OutputsError};
use process::{secret_masker, spawn};

/// Time between SIGTERM and SIGKILL when a module is stopped.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the pipes to drain after the process ended.
const DRAIN: Duration = Duration::from_secs(2);

/// Who is running the module, for its environment.
pub(crate) struct Context<'a> {
    pub worker_name: &'a str,
    pub workdir: &'a Path,
    /// Masked in everything the module prints.
    pub hub_token: &'a str,
    /// Moves the module's artifacts to and from the hub.
    pub transfer: &'a Transfer,
}

/// Runs the assignment to its end and sends `Started`, `Log`s and the
/// `Complete` report through `out`.
pub(crate) async fn execute(
    assignment: Assignment,
    context: Context<'_>,
    out: mpsc::Sender<WorkerCall>,
    cancel: CancellationToken,
) {
    let begun = Instant::now();
    let masker = secret_masker(&assignment, context.hub_token);
    let outcome = if cancel.is_cancelled() {
        // Cancelled before it was spawned: nothing to start or to kill.
        AttemptResult::failed(ReportStatus::Cancelled, AttemptError::CancelledBeforeStart)
    } else {
        // The hand-off: from here the worker owns the attempt. Said before
        // the artifacts are fetched, since the hub takes back an assignment
        // that is not started within its start timeout, and downloads can
        // be long.
        let _ = out.send(started(&assignment)).await;
        let attempt = Attempt {
            assignment: &assignment,
            context: &context,
            out: &out,
            cancel: &cancel,
            masker: &masker,
        };
        attempt.run().await
    };
    let _ = out.send(outcome.report(&assignment, &masker, begun)).await;
}

/// `Started` for [`crate::WorkerConfig::noop`], which runs nothing.
pub(crate) fn noop_started(assignment: &Assignment) -> WorkerCall {
    started(assignment)
}

/// A succeeded `Complete` for [`crate::WorkerConfig::noop`].
pub(crate) fn noop_complete(assignment: &Assignment) -> WorkerCall {
    WorkerCall::Complete(Report {
        module_id: assignment.module_id.clone(),
        attempt: assignment.attempt,
        status: ReportStatus::Succeeded,
        exit_code: Some(0),
        outputs: BTreeMap::new(),
        error: None,
        duration_ms: 0,
        artifacts: Vec::new(),
    })
}

fn started(assignment: &Assignment) -> WorkerCall {
    WorkerCall::Started {
        module_id: assignment.module_id.clone(),
        attempt: assignment.attempt,
    }
}

/// Why an attempt did not succeed; its text is the report's `error`.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("cancelled before it started")]
    CancelledBeforeStart,
    #[error(transparent)]
    Artifacts(#[from] ArtifactsError),
    #[error("could not create the $MUSTER_OUTPUT file: {0}")]
    OutputFile(io::Error),
    #[error("could not start {shell:?} in {}: {error}", cwd.display())]
    Spawn {
        shell: String,
        cwd: PathBuf,
        error: io::Error,
    },
    #[error("timed out after {}", humanize(*.0))]
    TimedOut(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("lost the process: {0}")]
    LostProcess(io::Error),
    #[error("{}", describe_exit_status(*.0))]
    Exited(ExitStatus),
    #[error(transparent)]
    Outputs(#[from] OutputsError),
}

/// How an attempt ended, before it is masked into a report.
struct AttemptResult {
    status: ReportStatus,
    exit_code: Option<i32>,
    error: Option<AttemptError>,
    outputs: BTreeMap<String, String>,
    artifacts: Vec<Artifact>,
}

impl AttemptResult {
    /// An attempt that ended with `error`, and an exit code only if the
    /// process ended with one.
    fn ended_with(
        status: ReportStatus,
        exit_code: Option<i32>,
        error: AttemptError,
    ) -> AttemptResult {
        AttemptResult {
            status,
            exit_code,
            error: Some(error),
            outputs: BTreeMap::new(),
            artifacts: Vec::new(),
        }
    }

    fn failed(status: ReportStatus, error: AttemptError) -> AttemptResult {
        AttemptResult::ended_with(status, None, error)
    }

    /// The `Complete` call, with every secret masked.
    fn report(self, assignment: &Assignment, masker: &Masker, begun: Instant) -> WorkerCall {
        // An output that carries a secret is passed on masked, not refused:
        // the module succeeded, and its dependents see `***`.
        let outputs = self
            .outputs
            .into_iter()
            .map(|(key, value)| (key, masker.mask_owned(value)))
            .collect();
        WorkerCall::Complete(Report {
            module_id: assignment.module_id.clone(),
            attempt: assignment.attempt,
            status: self.status,
            exit_code: self.exit_code,
            outputs,
            error: self.error.map(|e| masker.mask_owned(e.to_string())),
            duration_ms: begun.elapsed().as_millis() as u64,
            artifacts: self.artifacts,
        })
    }
}

/// How the module's process ended.
enum ProcessEnd {
    Exited(io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// One started attempt and what it needs.
struct Attempt<'a> {
    assignment: &'a Assignment,
    context: &'a Context<'a>,
    out: &'a mpsc::Sender<WorkerCall>,
    cancel: &'a CancellationToken,
    masker: &'a Masker,
}

impl Attempt<'_> {
    /// Fetches the artifacts, runs the process, reads its outputs and
    /// stores what it produced.
    async fn run(&self) -> AttemptResult {
        let cwd = self.context.workdir.join(&self.assignment.cwd);
        let fetched = tokio::select! {
            fetched = fetch_consumed(self.assignment, &cwd, self.context.transfer, self.out) => fetched,
            () = self.cancel.cancelled() => Err(ArtifactsError::CancelledFetching),
        };
        if let Err(error) = fetched {
            let status = match self.cancel.is_cancelled() {
                true => ReportStatus::Cancelled,
                false => ReportStatus::Failed,
            };
            return AttemptResult::failed(status, error.into());
        }
        let output_file = match tempfile::Builder::new().prefix("muster-output-").tempfile() {
            Ok(file) => file,
            Err(e) => {
                return AttemptResult::failed(ReportStatus::Failed, AttemptError::OutputFile(e))
            }
        };
        let ended = match self.run_process(&cwd, output_file.path()).await {
            Ok(ended) => ended,
            Err(error) => return AttemptResult::failed(ReportStatus::Failed, error),
        };
        let outputs = collect_outputs(output_file.path()).await;
        let timeout = Duration::from_millis(self.assignment.timeout_ms);
        match ended {
            ProcessEnd::TimedOut => {
                AttemptResult::failed(ReportStatus::TimedOut, AttemptError::TimedOut(timeout))
            }
            ProcessEnd::Cancelled => {
                AttemptResult::failed(ReportStatus::Cancelled, AttemptError::Cancelled)
            }
            ProcessEnd::Exited(Err(e)) => {
                AttemptResult::failed(ReportStatus::Failed, AttemptError::LostProcess(e))
            }
            ProcessEnd::Exited(Ok(status)) if !status.success() => AttemptResult::ended_with(
                ReportStatus::Failed,
                status.code(),
                AttemptError::Exited(status),
            ),
            ProcessEnd::Exited(Ok(_)) => match outputs {
                Ok(outputs) => self.store_produced(&cwd, outputs).await,
                Err(e) => AttemptResult::ended_with(ReportStatus::Failed, Some(0), e.into()),
            },
        }
    }

    /// Spawns the process in its own group and waits for it to exit, time
    /// out or be cancelled; whatever it left running in its group is killed
    /// and its pipes are drained.
    async fn run_process(&self, cwd: &Path, output: &Path) -> Result<ProcessEnd, AttemptError> {
        let assignment = self.assignment;
        let mut child =
            spawn(assignment, self.context, cwd, output).map_err(|error| AttemptError::Spawn {
                shell: assignment.shell.first().cloned().unwrap_or_default(),
                cwd: cwd.to_owned(),
                error,
            })?;
        let group = ProcessGroup::of(&child);
        let (out, masker) = (self.out, self.masker);
        let pumps = [
            child
                .stdout
                .take()
                .map(|pipe| spawn_pump(pipe, LogStream::Stdout, assignment, out, masker)),
            child
                .stderr
                .take()
                .map(|pipe| spawn_pump(pipe, LogStream::Stderr, assignment, out, masker)),
        ];
        let timeout = Duration::from_millis(assignment.timeout_ms);
        let ended = tokio::select! {
            status = child.wait() => ProcessEnd::Exited(status),
            () = tokio::time::sleep(timeout) => ProcessEnd::TimedOut,
            () = self.cancel.cancelled() => ProcessEnd::Cancelled,
        };
        if !matches!(ended, ProcessEnd::Exited(_)) {
            group.terminate(&mut child, KILL_GRACE).await;
        }
        // Whatever the module left running in its group goes with it.
        drop(group);
        for pump in pumps.into_iter().flatten() {
            let abort = pump.abort_handle();
            if tokio::time::timeout(DRAIN, pump).await.is_err() {
                abort.abort();
            }
        }
        Ok(ended)
    }

    /// After the module succeeded: uploads what it produced and reports
    /// it with its outputs.
    async fn store_produced(&self, cwd: &Path, outputs: BTreeMap<String, String>) -> AttemptResult {
        let uploaded = tokio::select! {
            uploaded = upload_produced(self.assignment, cwd, self.context.transfer, self.out) => uploaded,
            () = self.cancel.cancelled() => Err(ArtifactsError::CancelledUploading),
        };
        match uploaded {
            Ok(artifacts) => AttemptResult {
                status: ReportStatus::Succeeded,
                exit_code: Some(0),
                error: None,
                outputs,
                artifacts,
            },
            Err(e) if self.cancel.is_cancelled() => {
                AttemptResult::failed(ReportStatus::Cancelled, e.into())
            }
            Err(e) => AttemptResult::ended_with(ReportStatus::Failed, Some(0), e.into()),
        }
    }
}

/// How a process ended, for a module's error: its exit code or signal.
fn describe_exit_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without an exit code".into(),
    }
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{secs}s")
    }
}
