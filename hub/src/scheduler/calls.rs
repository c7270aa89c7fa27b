//! A registered worker's calls (`Started`, `Log`, `Complete`) applied to
//! the run, and the refusals: answered to the worker with the reason,
//! logged a bounded number of times.

use std::time::Duration;

use muster_core::wire::calls::{HubCall, WorkerCall};
use muster_core::wire::types::{LogStream, Report, ReportStatus};
use muster_core::{Ended, Event, ModuleIndex, Outcome, TransitionError, WorkerId};
use serde_json::Value;

use super::machine::Machine;
use super::table::Refusal;
use crate::events::RunEvent;

/// Refused calls per worker logged as warnings before the rest go to debug.
const REFUSALS_WARNED: u32 = 10;

/// A refused call: why, and a `Cancel` to send after the answer when the
/// worker must stop an attempt.
struct Refused {
    refusal: Refusal,
    cancel: Option<Box<HubCall>>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused {
            refusal,
            cancel: None,
        }
    }
}

impl Machine {
    /// Applies a call and returns its answer; what follows from it (a
    /// Cancel, the run's changes) is queued after the answer.
    pub(super) fn call(&mut self, worker: WorkerId, call: WorkerCall) -> Result<Value, Refusal> {
        match self.apply_call(worker, call) {
            Ok(()) => Ok(Value::Null),
            Err(Refused { refusal, cancel }) => {
                self.log_refusal(worker, &refusal);
                if let Some(cancel) = cancel {
                    self.send(worker, *cancel);
                }
                Err(refusal)
            }
        }
    }

    fn apply_call(&mut self, worker: WorkerId, call: WorkerCall) -> Result<(), Refused> {
        if self.compensations.is_some()
            && call
                .module_id()
                .is_some_and(|id| id.ends_with(super::compensate::SUFFIX))
        {
            return Ok(self.compensation_call(worker, call)?);
        }
        let (module_id, event) = match call {
            WorkerCall::Register(_) => return Err(Refusal::AlreadyRegistered.into()),
            WorkerCall::Started { module_id, attempt } => (
                module_id,
                Event::Start {
                    worker,
                    attempt,
                    at: self.now,
                },
            ),
            WorkerCall::Log {
                module_id,
                attempt,
                stream,
                text,
            } => return Ok(self.log(worker, module_id, attempt, stream, text)?),
            WorkerCall::Complete(report) => {
                let module_id = report.module_id.clone();
                (module_id, finish_event(worker, report))
            }
        };
        let module = self.module_index(&module_id)?;
        let mut event = event;
        if let (Event::Finish { ended, .. }, Some(inputs)) =
            (&mut event, self.approval_outputs(module))
        {
            for (key, value) in inputs {
                ended
                    .outputs
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
        }
        let started = match &event {
            Event::Start { attempt, .. } => Some(*attempt),
            _ => None,
        };
        match self.run.handle(module, event) {
            Ok(changes) => {
                self.record(changes);
                Ok(())
            }
            Err(e) => {
                let why = self.why_refused(module, worker, &e);
                // The hub no longer wants a refused Started's attempt
                // (cancelled before the hand-off, or superseded): the worker
                // must stop it.
                let cancel = started.map(|attempt| {
                    Box::new(HubCall::Cancel {
                        module_id: module_id.clone(),
                        attempt,
                        reason: format!("the hub refused Started: {why}"),
                    })
                });
                Err(Refused {
                    refusal: Refusal::Transition {
                        module: module_id,
                        why,
                    },
                    cancel,
                })
            }
        }
    }

    /// A refused transition in the worker's terms.
    fn why_refused(&self, module: ModuleIndex, worker: WorkerId, e: &TransitionError) -> String {
        let state = self.run.state(module);
        match (e, state.holder()) {
            (TransitionError::Illegal { .. }, Some(holder)) if holder != worker => {
                "it is held by another worker".to_owned()
            }
            (TransitionError::Illegal { .. }, None) if !state.is_terminal() => {
                format!("it is {} and not assigned to this worker", state.name())
            }
            _ => e.to_string(),
        }
    }

    fn log(
        &mut self,
        worker: WorkerId,
        module_id: String,
        attempt: u32,
        stream: LogStream,
        text: String,
    ) -> Result<(), Refusal> {
        let module = self.module_index(&module_id)?;
        let state = self.run.state(module);
        if state.holder() != Some(worker) || state.attempt() != Some(attempt) {
            return Err(Refusal::LogNotHeld {
                module: module_id,
                attempt,
            });
        }
        self.emit(RunEvent::Log {
            module: module_id,
            attempt,
            stream,
            text,
        });
        Ok(())
    }

    fn module_index(&self, id: &str) -> Result<ModuleIndex, Refusal> {
        self.run
            .plan()
            .index_of(id)
            .ok_or_else(|| Refusal::UnknownModule(id.to_owned()))
    }

    /// Logs a refused call: the first few of each worker as warnings, the
    /// rest at debug level, so a broken or hostile worker cannot flood the
    /// master's stderr (each refusal is also answered to the worker).
    fn log_refusal(&mut self, worker: WorkerId, error: &Refusal) {
        let refusals = self.workers.get_mut(&worker).map_or(0, |w| {
            w.refusals += 1;
            w.refusals
        });
        match refusals {
            0..REFUSALS_WARNED => tracing::warn!(worker = %worker, "ignored: {error}"),
            REFUSALS_WARNED => {
                tracing::warn!(worker = %worker, "ignored: {error} (further refusals for this worker are logged at debug level)")
            }
            _ => tracing::debug!(worker = %worker, "ignored: {error}"),
        }
    }
}

fn finish_event(worker: WorkerId, report: Report) -> Event {
    let outcome = match report.status {
        ReportStatus::Succeeded => Outcome::Succeeded,
        ReportStatus::Failed => Outcome::Failed,
        ReportStatus::TimedOut => Outcome::TimedOut,
        ReportStatus::Cancelled => Outcome::Cancelled,
    };
    Event::Finish {
        worker,
        outcome,
        // The transition records the worker that held the attempt.
        ended: Ended {
            attempt: report.attempt,
            worker: None,
            duration: Some(Duration::from_millis(report.duration_ms)),
            exit_code: report.exit_code,
            reason: report.error,
            outputs: report.outputs,
            artifacts: report.artifacts,
        },
    }
}
