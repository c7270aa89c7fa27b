//! The scheduler: one task that owns the run's state and the table of
//! connected workers. Connections talk to it only through [`Command`]s and
//! it answers through oneshots or the connection's outbox; after every
//! command or timer it pushes ready modules to workers with free slots and
//! the capabilities the module requires. Nothing polls: a dispatch happens
//! because something changed.
//!
//! Every wait has a bound, kept as a [`Timer`]: a worker whose connection
//! dropped keeps its modules only until it could have been heard again; a
//! ready module nobody can take fails after the capability timeout; an
//! assigned module its worker does not start in time is taken back; after
//! a cancel, workers have a grace period to confirm.
//!
//! The owner's event stream is bounded: events are queued while a command
//! is handled and sent before the next one is taken, so a slow reader of
//! the events (a terminal, a pipe) slows the scheduler, then the
//! connections, then the workers, and nothing piles up in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use muster_core::plan::needs_env_name;
use muster_core::protocol::{
    Assignment, Consumed, Held, HubCall, LogStream, Registration, Report, ReportStatus, RunOutcome,
    Welcome, WorkerCall, PROTOCOL_VERSION,
};
use muster_core::{
    Change, Ended, Event, Limits, ModuleIndex, ModuleState, Outcome, Plan, Run, TransitionError,
    WorkerId,
};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::events::{ModuleSummary, RunEvent, Summary};
use crate::outbox::{Outbound, Outbox};

/// The most slots one worker may claim; more is taken as this many.
pub(crate) const MAX_SLOTS: u32 = 1024;

/// Refused calls per worker logged as warnings before the rest go to debug.
const REFUSALS_WARNED: u32 = 10;

/// How many workers a "no worker can take it" message lists.
const WORKERS_LISTED: usize = 8;

/// What connections and the hub's owner ask of the scheduler.
pub(crate) enum Command {
    /// A connection finished its handshake and sent `Register`.
    /// The scheduler answers through the outbox itself, so the Welcome
    /// always reaches the worker before its first Assign.
    Register {
        registration: Registration,
        invocation_id: Option<String>,
        outbox: Outbox,
        reply: oneshot::Sender<Registered>,
    },
    /// `Started`, `Log` or `Complete` from a registered worker. With
    /// `answer`, the scheduler sends the Completion for that invocation id
    /// on that outbox before any message that follows from the call.
    Call {
        worker: WorkerId,
        call: WorkerCall,
        answer: Option<(String, Outbox)>,
    },
    /// A registered worker's connection ended. With `return_by`, the
    /// socket dropped without a goodbye and the worker may reconnect until
    /// then; without it, the worker left or was silent too long.
    Disconnected {
        worker: WorkerId,
        session: u64,
        reason: String,
        return_by: Option<Instant>,
    },
    /// Cancel the whole run (Ctrl-C on the master, `muster cancel`).
    Cancel {
        reason: String,
        reply: Option<oneshot::Sender<CancelAnswer>>,
    },
}

/// Which registration a connection speaks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registered {
    pub worker: WorkerId,
    /// Tells this connection apart from an earlier one of the same worker.
    pub session: u64,
}

/// What a cancel request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelAnswer {
    /// The run is being cancelled now.
    Cancelling,
    /// It already was, for this reason.
    AlreadyCancelled(String),
    /// The run had already finished.
    Finished,
}

/// Deadlines the scheduler wakes up for. Each is checked against the
/// current state when it fires, so a stale one does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A dropped worker has not come back in time.
    Away { worker: WorkerId, session: u64 },
    /// A ready module may have waited too long for a capable worker.
    NoWorker(ModuleIndex),
    /// Workers did not confirm a cancel in time.
    CancelGrace,
    /// A started attempt has had its timeout and the grace to report.
    Result { module: ModuleIndex, attempt: u32 },
    /// An assigned attempt has had its time to be started.
    Start { module: ModuleIndex, attempt: u32 },
}

struct Worker {
    name: String,
    capabilities: BTreeSet<String>,
    slots: u32,
    held: u32,
    session: u64,
    resume_key: String,
    /// `None` while the worker is away (its socket dropped).
    outbox: Option<Outbox>,
    /// Calls refused so far, to keep their logging bounded.
    refusals: u32,
}

impl Worker {
    fn offers(&self, requires: &[String]) -> bool {
        requires.iter().all(|r| self.capabilities.contains(r))
    }

    fn can_take(&self, requires: &[String]) -> bool {
        self.outbox.is_some() && self.held < self.slots && self.offers(requires)
    }

    fn send(&self, call: HubCall) {
        // A closed outbox means the connection is ending; its Disconnected
        // command is on the way and will hand the modules back.
        if let Some(outbox) = &self.outbox {
            outbox.send(Outbound::Message(call.to_message()));
        }
    }
}

pub(crate) struct Scheduler {
    run: Run,
    workers: BTreeMap<WorkerId, Worker>,
    /// Every worker that ever joined: name and capabilities, for the
    /// summary and for "no worker can take it" messages.
    seen: BTreeMap<WorkerId, (String, Vec<String>)>,
    /// Which worker holds each module, mirrored from the run's changes.
    holder: Vec<Option<WorkerId>>,
    /// Ready modules no worker in the table could take, and since when.
    unplaceable: HashMap<ModuleIndex, Instant>,
    /// Workers that did not start a module in time: another worker gets
    /// its next attempt when one can take it.
    passed_over: HashMap<ModuleIndex, BTreeSet<WorkerId>>,
    timers: BTreeSet<(Instant, Timer)>,
    next_worker: u64,
    next_session: u64,
    settings: SchedulerSettings,
    /// Dropped with the summary, so the owner's event stream ends then.
    events: Option<mpsc::Sender<RunEvent>>,
    /// Events of the command being handled, sent before the next one.
    queued: VecDeque<RunEvent>,
    done: Option<oneshot::Sender<Summary>>,
    /// The run's summary, once it finished, until the events before it
    /// are sent.
    summary: Option<Summary>,
    /// Set once the run finished.
    outcome: Option<RunOutcome>,
    connected: watch::Sender<usize>,
}

pub(crate) struct SchedulerSettings {
    pub fail_fast: bool,
    pub ping_interval: Duration,
    /// How long a ready module waits for a worker that can take it.
    pub capability_timeout: Duration,
    /// How long workers have to confirm a cancel.
    pub cancel_grace: Duration,
    /// How long past a module's timeout its result may take.
    pub result_grace: Duration,
    /// How long an assigned module waits for its worker's `Started`.
    pub start_timeout: Duration,
    pub limits: Limits,
}

impl Scheduler {
    pub(crate) fn new(
        plan: Plan,
        settings: SchedulerSettings,
        events: mpsc::Sender<RunEvent>,
        done: oneshot::Sender<Summary>,
        connected: watch::Sender<usize>,
    ) -> Scheduler {
        let n = plan.len();
        let (run, changes) = Run::new(plan, settings.limits);
        let mut scheduler = Scheduler {
            run,
            workers: BTreeMap::new(),
            seen: BTreeMap::new(),
            holder: vec![None; n],
            unplaceable: HashMap::new(),
            passed_over: HashMap::new(),
            timers: BTreeSet::new(),
            next_worker: 1,
            next_session: 1,
            settings,
            events: Some(events),
            queued: VecDeque::new(),
            done: Some(done),
            summary: None,
            outcome: None,
            connected,
        };
        scheduler.record(changes);
        scheduler
    }

    /// Runs until every sender of commands is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let next_timer = self.timers.first().map(|(at, _)| *at);
            let wake = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = wake => self.fire_timers(Instant::now()),
            }
            self.dispatch();
            self.finish_if_done();
            self.flush_events().await;
        }
    }

    /// Sends the queued events, waiting for room: a slow reader slows the
    /// scheduler down rather than filling memory. The summary is sent only
    /// after the events that led to it.
    async fn flush_events(&mut self) {
        while let Some(event) = self.queued.pop_front() {
            if let Some(events) = &self.events {
                if events.send(event).await.is_err() {
                    // The owner stopped listening: nothing more to tell.
                    self.events = None;
                }
            }
        }
        if let Some(summary) = self.summary.take() {
            // The owner's event stream ends with the run.
            self.events = None;
            if let Some(done) = self.done.take() {
                let _ = done.send(summary);
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                registration,
                invocation_id,
                outbox,
                reply,
            } => self.register(registration, invocation_id, outbox, reply),
            Command::Call {
                worker,
                call,
                answer,
            } => {
                let decided = self.call(worker, call);
                let (result, changes, cancel) = match decided {
                    Ok(changes) => (Ok(Value::Null), changes, None),
                    Err(Refused { error, cancel }) => {
                        self.log_refusal(worker, &error);
                        (Err(error), Vec::new(), cancel)
                    }
                };
                // The answer first: everything that follows from the call
                // (a Cancel, dependents' Assigns, the Shutdown) comes after
                // it on the wire.
                if let Some((invocation_id, outbox)) = answer {
                    outbox.answer(invocation_id, result);
                }
                if let (Some(cancel), Some(w)) = (cancel, self.workers.get(&worker)) {
                    w.send(*cancel);
                }
                self.record(changes);
            }
            Command::Disconnected {
                worker,
                session,
                reason,
                return_by,
            } => self.disconnected(worker, session, reason, return_by),
            Command::Cancel { reason, reply } => {
                let answer = if self.run.is_finished() {
                    CancelAnswer::Finished
                } else if let Some(earlier) = self.run.cancel_reason() {
                    CancelAnswer::AlreadyCancelled(earlier.to_owned())
                } else {
                    self.cancel(&reason);
                    CancelAnswer::Cancelling
                };
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
        }
    }

    fn register(
        &mut self,
        registration: Registration,
        invocation_id: Option<String>,
        outbox: Outbox,
        reply: oneshot::Sender<Registered>,
    ) {
        let session = self.next_session;
        self.next_session += 1;
        let resumed = registration
            .resume
            .as_ref()
            .and_then(|resume| self.resumable(&registration.name, resume));
        let (id, resume_key) = match resumed {
            Some(id) => (id, self.workers[&id].resume_key.clone()),
            None => {
                let id = WorkerId(self.next_worker);
                self.next_worker += 1;
                (id, crate::ids::random_id())
            }
        };
        if reply
            .send(Registered {
                worker: id,
                session,
            })
            .is_err()
        {
            return;
        }
        let mut welcome = Welcome {
            worker_id: id.to_string(),
            protocol_version: PROTOCOL_VERSION,
            ping_interval_ms: self.settings.ping_interval.as_millis() as u64,
            resume_key: resume_key.clone(),
            resumed: resumed.is_some(),
            keep: Vec::new(),
        };
        let Some(id) = resumed else {
            if let Some(resume) = &registration.resume {
                tracing::info!(worker = %id, "{} asked to resume as {}, which the hub no longer holds: joins anew", registration.name, resume.worker_id);
            }
            send_welcome(&outbox, invocation_id, &welcome);
            self.join(id, session, resume_key, registration, outbox);
            return;
        };
        // A reconnect in time: keep what both sides agree the worker holds;
        // re-send an Assign that was lost on the way; hand back a module
        // the worker no longer has.
        let holding: BTreeSet<&Held> = registration
            .resume
            .iter()
            .flat_map(|r| &r.holding)
            .collect();
        let mut resend = Vec::new();
        let mut lost = Vec::new();
        for (module, attempt) in self.run.held_by(id) {
            let held = Held {
                module_id: self.run.plan().modules[module].id.clone(),
                attempt,
            };
            if holding.contains(&held) {
                welcome.keep.push(held);
            } else if matches!(self.run.state(module), ModuleState::Assigned { .. }) {
                resend.push((module, attempt));
            } else {
                lost.push(module);
            }
        }
        send_welcome(&outbox, invocation_id, &welcome);
        if let Some(old) = self.workers[&id].outbox.as_ref() {
            // The hub had not noticed the old socket die yet.
            old.send(Outbound::Close(Some(
                "replaced by a newer connection of the same worker".into(),
            )));
        }
        let worker = self.workers.get_mut(&id).expect("resumable workers exist");
        worker.outbox = Some(outbox);
        worker.session = session;
        let name = worker.name.clone();
        tracing::info!(worker = %id, %name, kept = welcome.keep.len(), "worker reconnected");
        self.emit(RunEvent::WorkerBack {
            name: name.clone(),
            kept: welcome.keep.len(),
        });
        for (module, attempt) in resend {
            let assignment = self.assignment(module, attempt);
            self.workers[&id].send(HubCall::Assign(assignment));
        }
        for module in lost {
            let changes = self.run.module_lost(module, id, &name);
            self.record(changes);
        }
        if let Some(reason) = self.run.cancel_reason().map(str::to_owned) {
            for held in &welcome.keep {
                self.workers[&id].send(HubCall::Cancel {
                    module_id: held.module_id.clone(),
                    attempt: held.attempt,
                    reason: reason.clone(),
                });
            }
        }
        // Back after the run ended (its modules were given up on): it is
        // told, as a worker joining late would be.
        if let Some(outcome) = self.outcome {
            self.workers[&id].send(shutdown(outcome));
        }
        self.update_connected();
        self.recheck_unplaceable();
    }

    /// The worker a `Resume` claims, if the hub still holds it and the key
    /// matches (compared in constant time).
    fn resumable(&self, name: &str, resume: &muster_core::protocol::Resume) -> Option<WorkerId> {
        let id = resume
            .worker_id
            .strip_prefix('w')
            .and_then(|n| n.parse().ok())
            .map(WorkerId)?;
        let worker = self.workers.get(&id)?;
        let key_matches = bool::from(worker.resume_key.as_bytes().ct_eq(resume.key.as_bytes()));
        (key_matches && worker.name == name).then_some(id)
    }

    fn join(
        &mut self,
        id: WorkerId,
        session: u64,
        resume_key: String,
        registration: Registration,
        outbox: Outbox,
    ) {
        tracing::info!(worker = %id, name = %registration.name, capabilities = ?registration.capabilities, slots = registration.slots, "worker joined");
        self.emit(RunEvent::WorkerJoined {
            name: registration.name.clone(),
            capabilities: registration.capabilities.clone(),
            slots: registration.slots,
        });
        self.seen.insert(
            id,
            (registration.name.clone(), registration.capabilities.clone()),
        );
        let worker = Worker {
            name: registration.name,
            capabilities: registration.capabilities.into_iter().collect(),
            slots: registration.slots.clamp(1, MAX_SLOTS),
            held: 0,
            session,
            resume_key,
            outbox: Some(outbox),
            refusals: 0,
        };
        if let Some(outcome) = self.outcome {
            worker.send(shutdown(outcome));
        }
        self.workers.insert(id, worker);
        self.update_connected();
        self.recheck_unplaceable();
    }

    fn disconnected(
        &mut self,
        id: WorkerId,
        session: u64,
        reason: String,
        return_by: Option<Instant>,
    ) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.session != session {
            // An older connection of a worker that has already reconnected.
            return;
        }
        worker.outbox = None;
        let held = worker.held;
        let name = worker.name.clone();
        self.update_connected();
        match return_by {
            Some(at) if held > 0 && !self.run.is_finished() => {
                tracing::info!(worker = %id, %name, "worker away: {reason}");
                self.timers.insert((
                    at,
                    Timer::Away {
                        worker: id,
                        session,
                    },
                ));
                self.emit(RunEvent::WorkerAway {
                    name,
                    reason,
                    held: held as usize,
                    within: at.saturating_duration_since(Instant::now()),
                });
            }
            _ => self.remove_worker(id, reason),
        }
    }

    /// Takes a worker out of the table and hands its modules back.
    fn remove_worker(&mut self, id: WorkerId, reason: String) {
        let Some(gone) = self.workers.remove(&id) else {
            return;
        };
        self.update_connected();
        tracing::info!(worker = %id, name = %gone.name, "worker left: {reason}");
        if !self.run.is_finished() {
            // After the run, leaving is what workers are told to do.
            self.emit(RunEvent::WorkerLeft {
                name: gone.name.clone(),
                reason,
            });
        }
        let changes = self.run.worker_lost(id, &gone.name);
        self.record(changes);
        // Modules only this worker could take may now have nobody.
        let ready: Vec<ModuleIndex> = self.run.ready().collect();
        for module in ready {
            self.check_placeable(module);
        }
    }

    fn update_connected(&self) {
        let connected = self.workers.values().filter(|w| w.outbox.is_some()).count();
        self.connected.send_replace(connected);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Away { worker, session } => {
                    let still_away = self
                        .workers
                        .get(&worker)
                        .is_some_and(|w| w.session == session && w.outbox.is_none());
                    if still_away {
                        self.remove_worker(worker, "did not reconnect in time".into());
                    }
                }
                Timer::NoWorker(module) => self.no_worker(module, now),
                Timer::CancelGrace => {
                    let reason = format!(
                        "its worker did not confirm the cancel within {}",
                        humantime::format_duration(self.settings.cancel_grace)
                    );
                    let changes = self.run.give_up_on_workers(&reason);
                    self.record(changes);
                }
                Timer::Result { module, attempt } => self.no_result(module, attempt),
                Timer::Start { module, attempt } => self.not_started(module, attempt),
            }
        }
    }

    /// The bound on the hand-off: a module still assigned (not `Started`)
    /// when its start timeout fires is taken back and runs elsewhere as the
    /// next attempt; the worker is told to drop it.
    fn not_started(&mut self, module: ModuleIndex, attempt: u32) {
        let ModuleState::Assigned {
            worker,
            attempt: current,
        } = *self.run.state(module)
        else {
            return;
        };
        if current != attempt {
            return;
        }
        let id = self.run.plan().modules[module].id.clone();
        let name = self.seen_name(worker).to_owned();
        let waited = humantime::format_duration(self.settings.start_timeout).to_string();
        tracing::warn!(module = %id, attempt, worker = %name, "not started within {waited}: running it elsewhere");
        if let Some(w) = self.workers.get(&worker) {
            w.send(HubCall::Cancel {
                module_id: id,
                attempt,
                reason: format!("not started within {waited}: the hub runs it elsewhere"),
            });
        }
        self.passed_over.entry(module).or_default().insert(worker);
        let changes = self.run.not_started(module, worker, &name, &waited);
        self.record(changes);
    }

    /// The backstop for a worker that stays connected but never reports:
    /// the attempt times out here, and the worker is told to stop it.
    fn no_result(&mut self, module: ModuleIndex, attempt: u32) {
        let ModuleState::Running {
            worker,
            attempt: current,
            ..
        } = *self.run.state(module)
        else {
            return;
        };
        if current != attempt {
            return;
        }
        let m = &self.run.plan().modules[module];
        let (id, timeout) = (m.id.clone(), m.timeout);
        let name = self.seen_name(worker);
        let reason = format!(
            "no result from worker {name} within the module's timeout ({}) and {} more",
            humantime::format_duration(timeout),
            humantime::format_duration(self.settings.result_grace)
        );
        tracing::warn!(module = %id, attempt, "{reason}");
        if let Some(w) = self.workers.get(&worker) {
            w.send(HubCall::Cancel {
                module_id: id,
                attempt,
                reason: reason.clone(),
            });
        }
        let event = Event::Finish {
            worker,
            outcome: Outcome::TimedOut,
            ended: Ended {
                attempt,
                reason: Some(reason),
                ..Ended::default()
            },
        };
        if let Ok(changes) = self.run.handle(module, event) {
            self.record(changes);
        }
    }

    /// Whether some worker in the table (connected or away) offers every
    /// capability the module requires.
    fn placeable(&self, module: ModuleIndex) -> bool {
        let requires = &self.run.plan().modules[module].requires;
        self.workers.values().any(|w| w.offers(requires))
    }

    /// Starts the capability clock for a ready module nobody can take.
    fn check_placeable(&mut self, module: ModuleIndex) {
        if self.unplaceable.contains_key(&module) || self.placeable(module) {
            return;
        }
        let now = Instant::now();
        self.unplaceable.insert(module, now);
        self.timers.insert((
            now + self.settings.capability_timeout,
            Timer::NoWorker(module),
        ));
    }

    fn recheck_unplaceable(&mut self) {
        let waiting: Vec<ModuleIndex> = self.unplaceable.keys().copied().collect();
        for module in waiting {
            if self.placeable(module) {
                self.unplaceable.remove(&module);
            }
        }
    }

    fn no_worker(&mut self, module: ModuleIndex, now: Instant) {
        let Some(&since) = self.unplaceable.get(&module) else {
            return;
        };
        if since + self.settings.capability_timeout > now {
            return;
        }
        self.unplaceable.remove(&module);
        if !matches!(self.run.state(module), ModuleState::Ready { .. }) || self.placeable(module) {
            return;
        }
        let reason = self.no_worker_reason(module);
        let changes = self.run.no_worker(module, reason);
        self.record(changes);
    }

    fn no_worker_reason(&self, module: ModuleIndex) -> String {
        let waited = humantime::format_duration(self.settings.capability_timeout);
        let requires = &self.run.plan().modules[module].requires;
        if self.seen.is_empty() {
            return format!("no worker joined within {waited}");
        }
        let seen: Vec<String> = self
            .seen
            .values()
            .take(WORKERS_LISTED)
            .map(|(name, caps)| format!("{name} ({})", caps.join(", ")))
            .collect();
        let more = self.seen.len().saturating_sub(WORKERS_LISTED);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let what = if requires.is_empty() {
            "no worker is connected".to_owned()
        } else {
            let missing: Vec<&str> = requires
                .iter()
                .filter(|r| !self.workers.values().any(|w| w.capabilities.contains(*r)))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                format!("no single worker offers all of {}", requires.join(", "))
            } else {
                format!("no worker offers {}", missing.join(", "))
            }
        };
        format!(
            "{what} (waited {waited}); workers seen: {}{more}",
            seen.join("; ")
        )
    }

    /// Logs a refused call: the first few of each worker as warnings, the
    /// rest at debug level, so a broken or hostile worker cannot flood the
    /// master's stderr (each refusal is also answered to the worker).
    fn log_refusal(&mut self, worker: WorkerId, error: &str) {
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

    /// Queues an event for the owner; `flush_events` sends it.
    fn emit(&mut self, event: RunEvent) {
        // Nothing after the run's end: the summary closes the stream.
        if self.events.is_some() && self.outcome.is_none() {
            self.queued.push_back(event);
        }
    }

    /// Applies a worker's call to the run and returns the changes to
    /// record once the call is answered.
    fn call(&mut self, worker: WorkerId, call: WorkerCall) -> Result<Vec<Change>, Refused> {
        let (module_id, event) = match call {
            WorkerCall::Register(_) => {
                return Err(Refused::because("this connection is already registered"))
            }
            WorkerCall::Started { module_id, attempt } => (
                module_id,
                Event::Start {
                    worker,
                    attempt,
                    at: std::time::Instant::now(),
                },
            ),
            WorkerCall::Log {
                module_id,
                attempt,
                stream,
                text,
            } => {
                return self
                    .log(worker, module_id, attempt, stream, text)
                    .map(|()| Vec::new())
                    .map_err(Refused::because)
            }
            WorkerCall::Complete(report) => {
                let module_id = report.module_id.clone();
                (module_id, finish_event(worker, report))
            }
        };
        let module = self.module_index(&module_id).map_err(Refused::because)?;
        let started = match &event {
            Event::Start { attempt, .. } => Some(*attempt),
            _ => None,
        };
        match self.run.handle(module, event) {
            Ok(changes) => Ok(changes),
            Err(e) => {
                let state = self.run.state(module);
                let why = match (&e, state.holder()) {
                    (TransitionError::Illegal { .. }, Some(holder)) if holder != worker => {
                        "it is held by another worker".to_owned()
                    }
                    (TransitionError::Illegal { .. }, None) if !state.is_terminal() => {
                        format!("it is {} and not assigned to this worker", state.name())
                    }
                    _ => e.to_string(),
                };
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
                    error: format!("module '{module_id}': {why}"),
                    cancel,
                })
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

    /// Mirrors holders and slot counts from the run's changes, starts the
    /// capability clock for modules nobody can take, and tells the owner.
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
            if matches!(change.state, ModuleState::Ready { .. }) {
                self.check_placeable(change.module);
            } else {
                self.unplaceable.remove(&change.module);
            }
            if let ModuleState::Assigned { attempt, .. } = change.state {
                let at = Instant::now() + self.settings.start_timeout;
                let timer = Timer::Start {
                    module: change.module,
                    attempt,
                };
                self.timers.insert((at, timer));
            }
            if let ModuleState::Running { attempt, .. } = change.state {
                let timeout = self.run.plan().modules[change.module].timeout;
                let at = Instant::now() + timeout + self.settings.result_grace;
                let timer = Timer::Result {
                    module: change.module,
                    attempt,
                };
                self.timers.insert((at, timer));
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
        if let (true, Some(module)) = (self.settings.fail_fast, failed) {
            let id = self.run.plan().modules[module].id.clone();
            self.cancel(&format!("--fail-fast: '{id}' did not succeed"));
        }
    }

    /// The name a worker joined with, `?` for one never seen.
    fn seen_name(&self, worker: WorkerId) -> &str {
        self.seen
            .get(&worker)
            .map_or("?", |(name, _)| name.as_str())
    }

    /// The name of the worker holding the module, or that ran it last.
    fn worker_name(&self, state: &ModuleState) -> Option<String> {
        let worker = state
            .holder()
            .or_else(|| state.ended().and_then(|e| e.worker));
        worker.and_then(|w| self.seen.get(&w).map(|(name, _)| name.clone()))
    }

    fn cancel(&mut self, reason: &str) {
        if self.run.is_cancelled() {
            return;
        }
        tracing::info!("cancelling the run: {reason}");
        let (changes, running) = self.run.cancel_all(reason);
        self.record(changes);
        if !running.is_empty() {
            let at = Instant::now() + self.settings.cancel_grace;
            self.timers.insert((at, Timer::CancelGrace));
        }
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
        if self.run.is_cancelled() {
            return;
        }
        // A pass can skip a module whose only capable worker an earlier
        // module of the same pass filled; another pass, with the slots as
        // they are now, places what is left.
        while self.dispatch_pass() {}
    }

    /// Assigns up to one module per free slot; true when it assigned some
    /// and skipped some, so another pass may place more.
    fn dispatch_pass(&mut self) -> bool {
        if !self.run.has_ready() {
            return false;
        }
        let mut free: u64 = self
            .workers
            .values()
            .filter(|w| w.outbox.is_some())
            .map(|w| u64::from(w.slots.saturating_sub(w.held)))
            .sum();
        // Only as many ready modules as there are free slots, and only those
        // some worker could take: collecting the whole ready set on every
        // command made dispatch quadratic in the number of ready modules.
        let plan = self.run.plan();
        let ready: Vec<ModuleIndex> = self
            .run
            .ready()
            .filter(|&m| {
                let requires = &plan.modules[m].requires;
                self.workers.values().any(|w| w.can_take(requires))
            })
            .take(usize::try_from(free).unwrap_or(usize::MAX))
            .collect();
        let (mut assigned, mut skipped) = (false, false);
        for module in ready {
            if free == 0 {
                break;
            }
            let requires = &self.run.plan().modules[module].requires;
            let passed_over = self.passed_over.get(&module);
            let Some((&id, _)) = self
                .workers
                .iter()
                .filter(|(_, w)| w.can_take(requires))
                .max_by_key(|(id, w)| {
                    let fresh = passed_over.is_none_or(|p| !p.contains(*id));
                    (fresh, w.slots - w.held, std::cmp::Reverse(**id))
                })
            else {
                skipped = true;
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
            assigned = true;
        }
        assigned && skipped && free > 0
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
            secrets: m.secrets.clone(),
            produces: m.produces.clone(),
            consumes: self.consumed(module),
        }
    }

    /// The artifacts a module takes from its needs: every file a consumed
    /// need produced, or those whose path matches the consume's glob.
    fn consumed(&self, module: ModuleIndex) -> Vec<Consumed> {
        let plan = self.run.plan();
        let mut consumed = Vec::new();
        for consume in &plan.modules[module].consumes {
            let matcher = consume.glob.as_deref().map(|glob| {
                // `*` stays within a folder; `**` crosses folders.
                globset::GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .expect("the pipeline checked its globs")
                    .compile_matcher()
            });
            let from = &plan.modules[consume.from].id;
            let produced = self.run.state(consume.from).ended().map(|e| &e.artifacts);
            for artifact in produced.into_iter().flatten() {
                if matcher.as_ref().is_none_or(|m| m.is_match(&artifact.path)) {
                    consumed.push(Consumed {
                        from: from.clone(),
                        artifact: artifact.clone(),
                    });
                }
            }
        }
        consumed
    }

    fn finish_if_done(&mut self) {
        if !self.run.is_finished() || self.outcome.is_some() {
            return;
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
        let summary = Summary {
            modules,
            cancelled: self.run.cancel_reason().map(str::to_owned),
        };
        let outcome = summary.outcome();
        self.outcome = Some(outcome);
        for worker in self.workers.values() {
            worker.send(shutdown(outcome));
        }
        self.summary = Some(summary);
        self.timers.clear();
    }
}

/// A worker's call the run refused: the error to answer with, and a
/// `Cancel` to send after the answer when the worker must stop an attempt.
struct Refused {
    error: String,
    cancel: Option<Box<HubCall>>,
}

impl Refused {
    fn because(error: impl Into<String>) -> Refused {
        Refused {
            error: error.into(),
            cancel: None,
        }
    }
}

/// The call that ends a worker's part in a finished run.
fn shutdown(outcome: RunOutcome) -> HubCall {
    HubCall::Shutdown {
        reason: "the run has finished".into(),
        outcome: Some(outcome),
    }
}

fn send_welcome(outbox: &Outbox, invocation_id: Option<String>, welcome: &Welcome) {
    if let Some(invocation_id) = invocation_id {
        let result = serde_json::to_value(welcome).expect("welcome serializes");
        outbox.answer(invocation_id, Ok(result));
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
