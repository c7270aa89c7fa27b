//! The scheduler: one task that owns the run's state and the table of
//! connected workers. Connections talk to it only through [`Command`]s and
//! it answers through oneshots; after every command it pushes ready modules
//! to workers with free slots and the capabilities the module requires.
//! Nothing polls: a dispatch happens because something changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use muster_core::plan::needs_env_name;
use muster_core::protocol::{
    Assignment, HubCall, LogStream, Registration, Report, ReportStatus, Welcome, WorkerCall,
    PROTOCOL_VERSION,
};
use muster_core::signalr::Message;
use muster_core::{Change, Ended, Event, ModuleIndex, ModuleState, Outcome, Plan, Run, WorkerId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::Outbound;
use crate::events::{ModuleSummary, RunEvent, Summary};

/// The most slots one worker may claim; more is taken as this many.
pub(crate) const MAX_SLOTS: u32 = 1024;

/// What connections and the hub's owner ask of the scheduler.
pub(crate) enum Command {
    /// A connection finished its handshake and sent `Register`.
    /// The scheduler answers through the outbox itself, so the Welcome
    /// always reaches the worker before its first Assign.
    Register {
        registration: Registration,
        invocation_id: Option<String>,
        outbox: mpsc::UnboundedSender<Outbound>,
        reply: oneshot::Sender<WorkerId>,
    },
    /// `Started`, `Log` or `Complete` from a registered worker.
    Call {
        worker: WorkerId,
        call: WorkerCall,
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// A registered worker's connection ended.
    Disconnected { worker: WorkerId, reason: String },
    /// Cancel the whole run (Ctrl-C on the master).
    Cancel { reason: String },
}

struct Worker {
    name: String,
    capabilities: BTreeSet<String>,
    slots: u32,
    held: u32,
    outbox: mpsc::UnboundedSender<Outbound>,
}

impl Worker {
    fn can_take(&self, requires: &[String]) -> bool {
        self.held < self.slots && requires.iter().all(|r| self.capabilities.contains(r))
    }

    fn send(&self, call: HubCall) {
        // A closed outbox means the connection is ending; its Disconnected
        // command is on the way and will hand the modules back.
        let _ = self.outbox.send(Outbound::Message(call.to_message()));
    }
}

pub(crate) struct Scheduler {
    run: Run,
    workers: BTreeMap<WorkerId, Worker>,
    /// Names of every worker that ever joined, for the summary.
    names: BTreeMap<WorkerId, String>,
    /// Which worker holds each module, mirrored from the run's changes.
    holder: Vec<Option<WorkerId>>,
    next_worker: u64,
    fail_fast: bool,
    ping_interval: Duration,
    /// Dropped with the summary, so the owner's event stream ends then.
    events: Option<mpsc::UnboundedSender<RunEvent>>,
    done: Option<oneshot::Sender<Summary>>,
    connected: watch::Sender<usize>,
}

pub(crate) struct SchedulerSettings {
    pub fail_fast: bool,
    pub ping_interval: Duration,
}

impl Scheduler {
    pub(crate) fn new(
        plan: Plan,
        settings: SchedulerSettings,
        events: mpsc::UnboundedSender<RunEvent>,
        done: oneshot::Sender<Summary>,
        connected: watch::Sender<usize>,
    ) -> Scheduler {
        let n = plan.len();
        let (run, changes) = Run::new(plan);
        let mut scheduler = Scheduler {
            run,
            workers: BTreeMap::new(),
            names: BTreeMap::new(),
            holder: vec![None; n],
            next_worker: 1,
            fail_fast: settings.fail_fast,
            ping_interval: settings.ping_interval,
            events: Some(events),
            done: Some(done),
            connected,
        };
        scheduler.record(changes);
        scheduler
    }

    /// Runs until every sender of commands is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.recv().await {
            self.handle(command);
            self.dispatch();
            self.finish_if_done();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                registration,
                invocation_id,
                outbox,
                reply,
            } => {
                let id = WorkerId(self.next_worker);
                self.next_worker += 1;
                let welcome = Welcome {
                    worker_id: id.to_string(),
                    protocol_version: PROTOCOL_VERSION,
                    ping_interval_ms: self.ping_interval.as_millis() as u64,
                };
                if reply.send(id).is_err() {
                    return;
                }
                if let Some(invocation_id) = invocation_id {
                    let result = serde_json::to_value(welcome).expect("welcome serializes");
                    let _ = outbox.send(Outbound::Message(Message::Completion {
                        invocation_id,
                        result: Some(result),
                        error: None,
                    }));
                }
                tracing::info!(worker = %id, name = %registration.name, capabilities = ?registration.capabilities, slots = registration.slots, "worker joined");
                self.emit(RunEvent::WorkerJoined {
                    name: registration.name.clone(),
                    capabilities: registration.capabilities.clone(),
                    slots: registration.slots,
                });
                self.names.insert(id, registration.name.clone());
                let worker = Worker {
                    name: registration.name,
                    capabilities: registration.capabilities.into_iter().collect(),
                    slots: registration.slots.clamp(1, MAX_SLOTS),
                    held: 0,
                    outbox,
                };
                if self.run.is_finished() {
                    worker.send(HubCall::Shutdown {
                        reason: "the run has finished".into(),
                    });
                }
                self.workers.insert(id, worker);
                self.connected.send_replace(self.workers.len());
            }
            Command::Call {
                worker,
                call,
                reply,
            } => {
                let result = self.call(worker, call);
                if let Err(error) = &result {
                    tracing::warn!(worker = %worker, "ignored: {error}");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Disconnected { worker, reason } => {
                let Some(gone) = self.workers.remove(&worker) else {
                    return;
                };
                self.connected.send_replace(self.workers.len());
                tracing::info!(worker = %worker, name = %gone.name, "worker left: {reason}");
                if !self.run.is_finished() {
                    // After the run, leaving is what workers are told to do.
                    self.emit(RunEvent::WorkerLeft {
                        name: gone.name,
                        reason,
                    });
                }
                let changes = self.run.worker_lost(worker);
                self.record(changes);
            }
            Command::Cancel { reason } => self.cancel(&reason),
        }
    }

    fn emit(&self, event: RunEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn call(&mut self, worker: WorkerId, call: WorkerCall) -> Result<(), String> {
        let (module_id, event) = match call {
            WorkerCall::Register(_) => return Err("this connection is already registered".into()),
            WorkerCall::Started { module_id, attempt } => (
                module_id,
                Event::Start {
                    worker,
                    attempt,
                    at: Instant::now(),
                },
            ),
            WorkerCall::Log {
                module_id,
                attempt,
                stream,
                text,
            } => return self.log(worker, module_id, attempt, stream, text),
            WorkerCall::Complete(report) => {
                let module_id = report.module_id.clone();
                (module_id, finish_event(worker, report))
            }
        };
        let module = self.module_index(&module_id)?;
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
                if let (Some(attempt), Some(w)) = (started, self.workers.get(&worker)) {
                    // The hub no longer wants this attempt (cancelled before
                    // the hand-off, or superseded): the worker must stop it.
                    w.send(HubCall::Cancel {
                        module_id: module_id.clone(),
                        attempt,
                        reason: format!("the hub refused Started: {e}"),
                    });
                }
                Err(format!("module '{module_id}': {e}"))
            }
        }
    }

    fn log(
        &mut self,
        worker: WorkerId,
        module_id: String,
        attempt: u32,
        stream: LogStream,
        text: String,
    ) -> Result<(), String> {
        let module = self.module_index(&module_id)?;
        let state = self.run.state(module);
        if state.holder() != Some(worker) || state.attempt() != Some(attempt) {
            return Err(format!(
                "log for module '{module_id}' attempt {attempt}, which this worker does not hold"
            ));
        }
        self.emit(RunEvent::Log {
            module: module_id,
            attempt,
            stream,
            text,
        });
        Ok(())
    }

    fn module_index(&self, id: &str) -> Result<ModuleIndex, String> {
        self.run
            .plan()
            .index_of(id)
            .ok_or_else(|| format!("no module '{id}' in this pipeline"))
    }

    /// Mirrors holders and slot counts from the run's changes and tells the
    /// owner about them.
    fn record(&mut self, changes: Vec<Change>) {
        let mut failed = None;
        for change in changes {
            let now = change.state.holder();
            let before = self.holder[change.module];
            if before != now {
                if let Some(w) = before.and_then(|w| self.workers.get_mut(&w)) {
                    w.held = w.held.saturating_sub(1);
                }
                if let Some(w) = now.and_then(|w| self.workers.get_mut(&w)) {
                    w.held += 1;
                }
                self.holder[change.module] = now;
            }
            if matches!(
                change.state,
                ModuleState::Failed(_) | ModuleState::TimedOut(_)
            ) {
                failed = Some(change.module);
            }
            let module = &self.run.plan().modules[change.module];
            let worker = self.worker_name(&change.state);
            self.emit(RunEvent::Module {
                module: module.id.clone(),
                state: change.state,
                worker,
                note: change.note,
            });
        }
        if let (true, Some(module)) = (self.fail_fast, failed) {
            let id = self.run.plan().modules[module].id.clone();
            self.cancel(&format!("--fail-fast: '{id}' did not succeed"));
        }
    }

    /// The name of the worker holding the module, or that ran it last.
    fn worker_name(&self, state: &ModuleState) -> Option<String> {
        let worker = state
            .holder()
            .or_else(|| state.ended().and_then(|e| e.worker));
        worker.and_then(|w| self.names.get(&w).cloned())
    }

    fn cancel(&mut self, reason: &str) {
        if self.run.is_cancelled() {
            return;
        }
        let (changes, running) = self.run.cancel_all(reason);
        self.record(changes);
        for (module, worker, attempt) in running {
            if let Some(w) = self.workers.get(&worker) {
                w.send(HubCall::Cancel {
                    module_id: self.run.plan().modules[module].id.clone(),
                    attempt,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    /// Pushes ready modules to workers that can take them, spreading load
    /// to the worker with the most free slots.
    fn dispatch(&mut self) {
        if self.run.is_cancelled() || !self.run.has_ready() {
            return;
        }
        let mut free: u64 = self
            .workers
            .values()
            .map(|w| u64::from(w.slots.saturating_sub(w.held)))
            .sum();
        let ready: Vec<ModuleIndex> = self.run.ready().collect();
        for module in ready {
            if free == 0 {
                break;
            }
            let requires = &self.run.plan().modules[module].requires;
            let Some((&id, _)) = self
                .workers
                .iter()
                .filter(|(_, w)| w.can_take(requires))
                .max_by_key(|(id, w)| (w.slots - w.held, std::cmp::Reverse(**id)))
            else {
                continue;
            };
            let changes = self
                .run
                .handle(module, Event::Assign { worker: id })
                .expect("a ready module can be assigned");
            let attempt = self.run.state(module).attempt().unwrap_or(1);
            let assignment = self.assignment(module, attempt);
            self.workers[&id].send(HubCall::Assign(assignment));
            self.record(changes);
            free -= 1;
        }
    }

    fn assignment(&self, module: ModuleIndex, attempt: u32) -> Assignment {
        let plan = self.run.plan();
        let m = &plan.modules[module];
        let mut env = m.env.clone();
        let mut needs = BTreeMap::new();
        for &need in &m.needs {
            let id = &plan.modules[need].id;
            let outputs = self
                .run
                .state(need)
                .ended()
                .map(|e| e.outputs.clone())
                .unwrap_or_default();
            for (key, value) in &outputs {
                env.insert(needs_env_name(id, key), value.clone());
            }
            needs.insert(id.clone(), outputs);
        }
        Assignment {
            module_id: m.id.clone(),
            attempt,
            command: m.run.clone(),
            shell: m.shell.clone(),
            cwd: m.cwd.clone(),
            env,
            timeout_ms: m.timeout.as_millis() as u64,
            needs,
        }
    }

    fn finish_if_done(&mut self) {
        if !self.run.is_finished() {
            return;
        }
        let Some(done) = self.done.take() else {
            return;
        };
        for worker in self.workers.values() {
            worker.send(HubCall::Shutdown {
                reason: "the run has finished".into(),
            });
        }
        let plan = self.run.plan();
        let modules = plan
            .modules
            .iter()
            .zip(self.run.states())
            .map(|(m, state)| ModuleSummary {
                id: m.id.clone(),
                worker: self.worker_name(state),
                state: state.clone(),
            })
            .collect();
        let _ = done.send(Summary {
            modules,
            cancelled: self.run.is_cancelled(),
        });
        self.events = None;
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
        },
    }
}
