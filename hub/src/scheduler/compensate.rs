//! Compensation: when a run fails after modules with `compensate`
//! succeeded, their compensations run before the run ends, one at a time,
//! in reverse order of completion (the last change is undone first), each
//! on a worker that could run the module, with the module's environment
//! and its outputs as `MUSTER_OUTPUT_<KEY>`. A compensation that fails is
//! reported and the others still run. Each one's start and end are
//! journaled; the summary says which modules were compensated.
//!
//! A compensation is sent as an `Assign` of the module id with
//! [`SUFFIX`] (`deploy~compensate`): no module id can end that way (ids
//! are names or `name[...]`), so workers need nothing new.

use std::collections::VecDeque;
use std::time::Duration;

use muster_core::journal::{CompensationRecord, Entry};
use muster_core::plan::output_env_name;
use muster_core::wire::calls::{HubCall, WorkerCall};
use muster_core::wire::types::{Held, Report, ReportStatus};
use muster_core::{ModuleIndex, ModuleState, WorkerId};

use super::machine::Machine;
use super::table::{Compensations, Current, Refusal, Timer};
use crate::events::RunEvent;

/// What a compensation's module id ends with.
pub(crate) const SUFFIX: &str = "~compensate";

impl Machine {
    /// Called when every module has ended: starts the compensations a
    /// failed run owes, and says whether the run must wait for them.
    pub(super) fn compensating(&mut self) -> bool {
        if let Some(c) = &self.compensations {
            return c.current.is_some() || !c.queue.is_empty();
        }
        if !self.settings.compensate || self.run.succeeded() {
            return false;
        }
        let plan = self.run.plan();
        let queue: VecDeque<ModuleIndex> = self
            .completed
            .iter()
            .rev()
            .copied()
            .filter(|&m| {
                plan.modules[m].compensate.is_some()
                    && matches!(self.run.state(m), ModuleState::Succeeded(_))
            })
            .collect();
        if queue.is_empty() {
            return false;
        }
        let names: Vec<&str> = queue.iter().map(|&m| self.module_id(m)).collect();
        tracing::info!("the run failed: compensating {}", names.join(", "));
        let first = self.module_id(queue[0]).to_owned();
        let text = format!(
            "the run did not succeed: compensating {} module(s), last completed first: {}",
            queue.len(),
            names.join(", ")
        );
        self.compensations = Some(Compensations {
            queue,
            ..Compensations::default()
        });
        self.emit(RunEvent::Note {
            module: first,
            text,
        });
        self.next_compensation();
        true
    }

    /// Takes the next compensation off the queue, arms its bound, and sends
    /// it to a worker if one can take it now (else the next input that
    /// frees one does).
    fn next_compensation(&mut self) {
        let Some(c) = self.compensations.as_mut() else {
            return;
        };
        let Some(module) = c.queue.pop_front() else {
            return;
        };
        c.current = Some(Current {
            module,
            worker: None,
        });
        c.generation += 1;
        let generation = c.generation;
        self.arm(
            self.now + self.settings.capability_timeout,
            Timer::Compensation(generation),
        );
        self.dispatch_compensation();
    }

    /// Sends the waiting compensation to a worker that could run its module.
    pub(super) fn dispatch_compensation(&mut self) {
        let Some(Current {
            module,
            worker: None,
            ..
        }) = self.compensations.as_ref().and_then(|c| c.current.as_ref())
        else {
            return;
        };
        let module = *module;
        let requires = &self.run.plan().modules[module].requires;
        let Some((&id, _)) = self
            .workers
            .iter()
            .filter(|(_, w)| w.can_take(requires))
            .max_by_key(|(id, w)| (w.slots - w.held, std::cmp::Reverse(**id)))
        else {
            return;
        };
        let m = &self.run.plan().modules[module];
        let mut assignment = self.assignment(module, 1);
        assignment.module_id = format!("{}{SUFFIX}", m.id);
        assignment.command = m.compensate.clone().expect("queued modules compensate");
        assignment.produces = Vec::new();
        assignment.consumes = Vec::new();
        if let Some(ended) = self.run.state(module).ended() {
            for (key, value) in &ended.outputs {
                assignment.env.insert(output_env_name(key), value.clone());
            }
        }
        assignment
            .env
            .insert("MUSTER_COMPENSATING".into(), m.id.clone());
        if let Some(w) = self.workers.get_mut(&id) {
            w.held += 1;
        }
        let c = self.compensations.as_mut().expect("checked");
        let current = c.current.as_mut().expect("checked");
        current.worker = Some(id);
        c.generation += 1;
        let generation = c.generation;
        let bound = self.settings.start_timeout + m.timeout + self.settings.result_grace;
        let module_id = m.id.clone();
        self.arm(self.now + bound, Timer::Compensation(generation));
        let name = self.seen_name(id).to_owned();
        self.journal(|_| {
            Entry::Compensation(CompensationRecord {
                module: module_id.clone(),
                state: "started".into(),
                worker: Some(name.clone()),
                ..CompensationRecord::default()
            })
        });
        self.emit(RunEvent::Note {
            module: module_id,
            text: format!("compensating on {name}"),
        });
        self.send(id, HubCall::Assign(assignment));
    }

    /// A worker's call about a compensation (`deploy~compensate`).
    pub(super) fn compensation_call(
        &mut self,
        worker: WorkerId,
        call: WorkerCall,
    ) -> Result<(), Refusal> {
        let Some(id) = call.module_id().map(str::to_owned) else {
            return Err(Refusal::AlreadyRegistered);
        };
        let held = self
            .compensations
            .as_ref()
            .and_then(|c| c.current.as_ref())
            .filter(|c| c.worker == Some(worker))
            .map(|c| c.module)
            .filter(|&m| format!("{}{SUFFIX}", self.module_id(m)) == id);
        let Some(module) = held else {
            return Err(Refusal::UnknownModule(muster_core::text::escape(&id)));
        };
        match call {
            // Its bound was armed when it was sent.
            WorkerCall::Started { .. } => {}
            WorkerCall::Log {
                module_id,
                attempt,
                stream,
                text,
            } => {
                // Masked where every module's log is: the log files and
                // the printer.
                self.emit(RunEvent::Log {
                    module: module_id,
                    attempt,
                    stream,
                    text,
                });
            }
            WorkerCall::Complete(report) => self.compensation_ended(module, Ok(report)),
            WorkerCall::Register(_) => unreachable!("refused above"),
        }
        Ok(())
    }

    /// The current compensation as `worker` would list it among what it
    /// holds, when it runs it.
    pub(super) fn compensation_held(&self, worker: WorkerId) -> Option<Held> {
        let current = self.compensations.as_ref()?.current.as_ref()?;
        (current.worker == Some(worker)).then(|| Held {
            module_id: format!("{}{SUFFIX}", self.module_id(current.module)),
            attempt: 1,
        })
    }

    /// The running compensation's worker left.
    pub(super) fn compensation_worker_lost(&mut self, worker: WorkerId, name: &str) {
        let lost = self
            .compensations
            .as_ref()
            .and_then(|c| c.current.as_ref())
            .filter(|c| c.worker == Some(worker))
            .map(|c| c.module);
        if let Some(module) = lost {
            let why = format!("its worker {name} was lost");
            self.compensation_ended(module, Err(why));
        }
    }

    /// The bound of the current compensation passed (`generation` is the
    /// one armed for it).
    pub(super) fn compensation_deadline(&mut self, generation: u32) {
        let current = self
            .compensations
            .as_ref()
            .filter(|c| c.generation == generation)
            .and_then(|c| c.current.as_ref())
            .map(|c| (c.module, c.worker));
        let Some((module, worker)) = current else {
            return;
        };
        let why = match worker {
            None => format!(
                "no worker could run it within {}",
                humantime::format_duration(self.settings.capability_timeout)
            ),
            Some(_) => "no result came in time".to_owned(),
        };
        if let Some(worker) = worker {
            let module_id = format!("{}{SUFFIX}", self.module_id(module));
            self.send(
                worker,
                HubCall::Cancel {
                    module_id,
                    attempt: 1,
                    reason: why.clone(),
                },
            );
        }
        self.compensation_ended(module, Err(why));
    }

    /// Records how the current compensation ended and starts the next.
    fn compensation_ended(&mut self, module: ModuleIndex, result: Result<Report, String>) {
        let Some(c) = self.compensations.as_mut() else {
            return;
        };
        let current = c.current.take().expect("a compensation is running");
        if let Some(w) = current.worker.and_then(|w| self.workers.get_mut(&w)) {
            w.held = w.held.saturating_sub(1);
        }
        let (state, exit_code, duration, reason) = match result {
            Ok(report) => match report.status {
                ReportStatus::Succeeded => {
                    ("succeeded", report.exit_code, report.duration_ms, None)
                }
                status => {
                    let why = report.error.unwrap_or_else(|| format!("{status:?}"));
                    ("failed", report.exit_code, report.duration_ms, Some(why))
                }
            },
            Err(why) => ("failed", None, 0, Some(why)),
        };
        let outcome = match &reason {
            None => "compensated".to_owned(),
            Some(why) => format!("compensation failed: {why}"),
        };
        c.ended.push((module, outcome.clone()));
        let module_id = self.module_id(module).to_owned();
        let worker_name = current.worker.map(|w| self.seen_name(w).to_owned());
        let masked_reason = reason.clone();
        self.journal(|masker| {
            Entry::Compensation(CompensationRecord {
                module: module_id.clone(),
                state: state.into(),
                worker: worker_name.clone(),
                exit_code,
                duration_ms: Some(duration),
                reason: masked_reason.map(|r| masker.mask(&r).into_owned()),
            })
        });
        let took = Duration::from_millis(duration);
        let text = match reason {
            None => format!("compensated in {:.1}s", took.as_secs_f64()),
            Some(why) => format!("compensation failed: {why}"),
        };
        self.emit(RunEvent::Note {
            module: module_id,
            text,
        });
        self.next_compensation();
    }

    /// How a module's compensation ended, for the summary.
    pub(super) fn compensation_summary(&self, module: ModuleIndex) -> Option<String> {
        self.compensations
            .as_ref()?
            .ended
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, outcome)| outcome.clone())
    }
}
