//! The scheduler's state machine: what it holds, the inputs it takes, the
//! effects it returns, and the one `handle` that turns the first into the
//! second. No I/O here: time comes in as an argument, and whatever must
//! reach a socket or the hub's owner leaves as an [`Effect`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use muster_core::gate::{Decider, Decision, Refused};
use muster_core::journal::{module_digests, Entry, GateRecord};
use muster_core::wire::calls::{HubCall, WorkerCall};
use muster_core::wire::types::{Registration, RunOutcome, Welcome};
use muster_core::{Change, ModuleIndex, ModuleState, Plan, Run, WorkerId};
use serde_json::Value;

use super::table::{
    cached_note, CacheState, Compensations, Decided, DecisionAnswer, OpenGate, Refusal, Timer,
    Worker,
};
use super::{CancelAnswer, Registered, SchedulerSettings};
use crate::cache::{Looked, Lookup, Store};
use crate::events::{ModuleSummary, RunEvent, Summary};

/// What happens to the scheduler.
#[derive(Debug)]
pub(crate) enum Input {
    /// A connection sent `Register`.
    Register { registration: Registration },
    /// `Started`, `Log` or `Complete` from a registered worker.
    Call { worker: WorkerId, call: WorkerCall },
    /// A registered worker's connection ended; with `return_by`, it may
    /// come back until then.
    Disconnected {
        worker: WorkerId,
        session: u64,
        reason: String,
        return_by: Option<Instant>,
    },
    /// Cancel the whole run.
    Cancel { reason: String },
    /// The result cache answered a lookup.
    Cached { module: ModuleIndex, looked: Looked },
    /// A decision on a module's approval gate.
    Decide {
        module: String,
        decider: Decider,
        decision: Decision,
    },
    /// Time has passed: fire the timers that are due.
    Tick,
}

/// What the scheduler asks its actor to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// The answer to `Register`: which worker the connection is, and the
    /// Welcome to answer it with. Always the first effect of a Register.
    Welcome(Registered, Welcome),
    /// The answer to a call: first, before anything that follows from it.
    Answer(Result<Value, Refusal>),
    /// The answer to `Cancel`.
    Cancelled(CancelAnswer),
    /// The answer to `Decide`: first, before anything that follows from it.
    Decided(Result<DecisionAnswer, Refused>),
    /// A hub call to a connected worker.
    Send { worker: WorkerId, call: HubCall },
    /// An event for the hub's owner.
    Event(RunEvent),
    /// The run has finished; the owner's event stream ends here.
    Finished(Summary),
    /// The number of connected workers is now this.
    Connected(usize),
    /// A record for the run's journal: every effect of this input waits
    /// until it is durable.
    Journal(Entry),
    /// Look a ready module up in the result cache; answer with
    /// `Input::Cached`.
    CacheLookup(Lookup),
    /// Keep a module's result in the cache.
    CacheStore(Store),
}

/// The run, the worker table, and every deadline, owned in one place.
pub(crate) struct Machine {
    pub(super) run: Run,
    pub(super) workers: BTreeMap<WorkerId, Worker>,
    /// Every worker that ever joined: name and capabilities, for the
    /// summary and for "no worker can take it" messages.
    pub(super) seen: BTreeMap<WorkerId, (String, Vec<String>)>,
    /// Which worker holds each module, mirrored from the run's changes.
    holder: Vec<Option<WorkerId>>,
    /// Ready modules no worker in the table could take, and since when.
    pub(super) unplaceable: HashMap<ModuleIndex, Instant>,
    /// Workers that did not start a module in time: another worker gets
    /// its next attempt when one can take it.
    pub(super) passed_over: HashMap<ModuleIndex, BTreeSet<WorkerId>>,
    pub(super) timers: BTreeSet<(Instant, Timer)>,
    pub(super) next_worker: u64,
    pub(super) next_session: u64,
    pub(super) settings: SchedulerSettings,
    /// Set once the run finished.
    pub(super) outcome: Option<RunOutcome>,
    /// Workers in the table that are connected (not away).
    pub(super) connected: usize,
    /// `connected` as last told to the actor.
    told_connected: usize,
    /// The time of the input being handled.
    pub(super) now: Instant,
    /// While a resumed run records the modules it kept: the run they
    /// succeeded in.
    pub(super) keeping_from: Option<String>,
    /// Each module's standing with the result cache.
    pub(super) cache: Vec<CacheState>,
    /// Gates waiting for a decision.
    pub(super) gates: HashMap<ModuleIndex, OpenGate>,
    /// Gates decided (or expired) in this stint.
    pub(super) decided: HashMap<ModuleIndex, Decided>,
    /// Approvals an earlier stint journaled, by module id, not yet taken.
    pub(super) standing: BTreeMap<String, GateRecord>,
    /// Each module's definition digest, when the plan has gates (what a
    /// decision is bound to); empty otherwise.
    pub(super) definitions: Vec<String>,
    /// Modules in the order they succeeded (kept ones first): what a
    /// failed run compensates, last first.
    pub(super) completed: Vec<ModuleIndex>,
    /// Set once a failed run started compensating.
    pub(super) compensations: Option<Compensations>,
    effects: Vec<Effect>,
}

impl Machine {
    /// A machine for `plan`, and the effects of its first changes (the
    /// modules with no needs become ready).
    /// The worker table for the dashboard, each with its id, so the
    /// actor can add when its connection last heard from it.
    pub(crate) fn worker_views(&self) -> Vec<(WorkerId, super::WorkerView)> {
        let mut running: BTreeMap<WorkerId, Vec<String>> = BTreeMap::new();
        for (module, state) in self.run.states().iter().enumerate() {
            if let Some(worker) = state.holder() {
                let id = self.run.plan().modules[module].id.clone();
                running.entry(worker).or_default().push(id);
            }
        }
        self.workers
            .iter()
            .map(|(&id, worker)| {
                let view = super::WorkerView {
                    name: worker.name.clone(),
                    capabilities: worker.capabilities.iter().cloned().collect(),
                    slots: worker.slots,
                    running: running.remove(&id).unwrap_or_default(),
                    heard_ms_ago: None,
                    connected: worker.connected,
                };
                (id, view)
            })
            .collect()
    }

    pub(crate) fn new(
        plan: Plan,
        mut settings: SchedulerSettings,
        now: Instant,
    ) -> (Machine, Vec<Effect>) {
        let n = plan.len();
        let resume = settings.resume.take();
        let resume_reruns: Option<Vec<ModuleIndex>> = resume
            .as_ref()
            .map(|r| r.rerun.iter().map(|rerun| rerun.module).collect());
        let standing = resume
            .as_ref()
            .map(|r| r.approvals.clone())
            .unwrap_or_default();
        let definitions = if plan.modules.iter().any(|m| m.approval.is_some()) {
            module_digests(&plan)
                .into_iter()
                .map(|d| d.digest)
                .collect()
        } else {
            Vec::new()
        };
        // An adopted attempt starts as the one its worker runs, not the next.
        let adopting = match (&resume, settings.adopt_within) {
            (Some(resume), Some(within)) => Some((resume.in_flight.clone(), within)),
            _ => None,
        };
        let (run, changes) = match &resume {
            Some(resume) => {
                let note = format!("kept from run {}", resume.from_run);
                let mut first_attempt = resume.first_attempt.clone();
                // An earlier master still alive at the time may have sent
                // an Assign before the journal held anything of it (an
                // Assign waits for the result that made its module ready,
                // not for its own records): every module starts one attempt
                // past what the journal shows, so a worker still running
                // such an attempt is fenced off.
                if adopting.is_some() {
                    for attempt in &mut first_attempt {
                        *attempt += 1;
                    }
                }
                for adopted in adopting.iter().flat_map(|(in_flight, _)| in_flight) {
                    first_attempt[adopted.module] = adopted.attempt;
                }
                Run::resumed(
                    plan,
                    settings.limits,
                    resume.kept.clone(),
                    first_attempt,
                    &note,
                )
            }
            None => Run::new(plan, settings.limits),
        };
        let mut machine = Machine {
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
            outcome: None,
            connected: 0,
            told_connected: 0,
            now,
            keeping_from: resume.as_ref().map(|r| r.from_run.clone()),
            cache: vec![CacheState::Off; n],
            gates: HashMap::new(),
            decided: HashMap::new(),
            standing,
            definitions,
            completed: Vec::new(),
            compensations: None,
            effects: Vec::new(),
        };
        machine.journal_start();
        machine.record(changes);
        machine.keeping_from = None;
        if let Some((in_flight, within)) = &adopting {
            machine.adopt(in_flight, *within);
        }
        if let Some(resume) = &resume_reruns {
            machine.journal_waiting_reruns(resume);
        }
        machine.finish_if_done();
        let effects = std::mem::take(&mut machine.effects);
        (machine, effects)
    }

    /// The transition function: applies one input at `now`, then pushes
    /// ready modules to workers, and returns what must happen outside.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        self.now = now;
        match input {
            Input::Register { registration } => self.register(registration),
            Input::Call { worker, call } => {
                let answer = self.call(worker, call);
                self.effects.insert(0, Effect::Answer(answer));
            }
            Input::Disconnected {
                worker,
                session,
                reason,
                return_by,
            } => self.disconnected(worker, session, reason, return_by),
            Input::Cancel { reason } => {
                let answer = if self.run.is_finished() {
                    CancelAnswer::Finished
                } else if let Some(earlier) = self.run.cancel_reason() {
                    CancelAnswer::AlreadyCancelled(earlier.to_owned())
                } else {
                    self.cancel(&reason);
                    CancelAnswer::Cancelling
                };
                self.effects.insert(0, Effect::Cancelled(answer));
            }
            Input::Tick => self.fire_timers(),
            Input::Cached { module, looked } => self.cached(module, looked),
            Input::Decide {
                module,
                decider,
                decision,
            } => {
                let answer = self.decide(&module, decider, decision);
                self.effects.insert(0, Effect::Decided(answer));
            }
        }
        self.dispatch();
        self.dispatch_compensation();
        self.finish_if_done();
        if self.connected != self.told_connected {
            self.told_connected = self.connected;
            self.effects.push(Effect::Connected(self.connected));
        }
        std::mem::take(&mut self.effects)
    }

    /// A module's id.
    pub(crate) fn module_id(&self, module: ModuleIndex) -> &str {
        &self.run.plan().modules[module].id
    }

    /// When the machine next needs a `Tick`, if ever.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Arms a timer; a stale one does nothing when it fires.
    pub(super) fn arm(&mut self, at: Instant, timer: Timer) {
        self.timers.insert((at, timer));
    }

    /// Sends a hub call to a worker if it is connected. To one that is
    /// away the call is not sent: it is caught up when it comes back, or
    /// its modules are handed back when it does not.
    pub(super) fn send(&mut self, worker: WorkerId, call: HubCall) {
        if self.workers.get(&worker).is_some_and(|w| w.connected) {
            self.effects.push(Effect::Send { worker, call });
        }
    }

    /// Tells the owner, unless the run has ended (the summary closes the
    /// stream).
    pub(super) fn emit(&mut self, event: RunEvent) {
        if self.outcome.is_none() {
            self.journal_event(&event);
            self.effects.push(Effect::Event(event));
        }
    }

    pub(super) fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// Applies the run's changes: mirrors holders and slot counts, starts
    /// the capability clock for modules nobody can take, arms the start and
    /// result timers, tells the owner, and cancels on a failure under
    /// `--fail-fast`.
    pub(super) fn record(&mut self, changes: Vec<Change>) {
        let mut failed = None;
        let mut ready = Vec::new();
        let mut opened = Vec::new();
        for mut change in changes {
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
                ready.push(change.module);
            } else {
                self.unplaceable.remove(&change.module);
            }
            if matches!(change.state, ModuleState::AwaitingApproval { .. }) {
                change.note = Some(self.open_gate(change.module));
                opened.push(change.module);
            } else if !self.gates.is_empty() {
                self.gates.remove(&change.module);
            }
            self.arm_attempt_timers(change.module, &change.state);
            if matches!(
                change.state,
                ModuleState::Failed(_) | ModuleState::TimedOut(_)
            ) {
                failed = Some(change.module);
            }
            self.keep_result(change.module, &change.state);
            if matches!(change.state, ModuleState::Succeeded(_)) {
                self.completed.push(change.module);
            }
            let module = self.run.plan().modules[change.module].id.clone();
            let worker = self.worker_name(&change.state);
            let note = self.hit_note(change.module).or(change.note);
            self.emit(RunEvent::Module {
                module,
                state: change.state,
                worker,
                note,
            });
        }
        self.look_up_ready(&ready);
        self.take_standing_approvals(&opened);
        if let (true, Some(module)) = (self.settings.fail_fast, failed) {
            let id = self.run.plan().modules[module].id.clone();
            self.cancel(&format!("--fail-fast: '{id}' did not succeed"));
        }
    }

    /// A cache hit's note, when the module was one.
    fn hit_note(&self, module: ModuleIndex) -> Option<String> {
        match &self.cache[module] {
            CacheState::Hit { key, saved } => Some(cached_note(key, *saved)),
            _ => None,
        }
    }

    /// The name a worker joined with, `?` for one never seen.
    pub(super) fn seen_name(&self, worker: WorkerId) -> &str {
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

    /// Cancels every module that has not ended; running ones are told to
    /// stop and have the cancel grace to confirm.
    pub(super) fn cancel(&mut self, reason: &str) {
        if self.run.is_cancelled() {
            return;
        }
        tracing::info!("cancelling the run: {reason}");
        self.journal_cancel(reason);
        let (changes, running) = self.run.cancel_all(reason);
        self.record(changes);
        if !running.is_empty() {
            self.arm(self.now + self.settings.cancel_grace, Timer::CancelGrace);
        }
        for (module, worker, attempt) in running {
            let module_id = self.run.plan().modules[module].id.clone();
            self.send(
                worker,
                HubCall::Cancel {
                    module_id,
                    attempt,
                    reason: reason.to_owned(),
                },
            );
        }
    }

    /// Once every module has ended: the summary, and `Shutdown` to every
    /// connected worker. Nothing is timed after that.
    fn finish_if_done(&mut self) {
        if !self.run.is_finished() || self.outcome.is_some() || self.compensating() {
            return;
        }
        let plan = self.run.plan();
        let modules = plan
            .modules
            .iter()
            .zip(self.run.states())
            .enumerate()
            .map(|(i, (m, state))| ModuleSummary {
                id: m.id.clone(),
                worker: self.worker_name(state),
                state: state.clone(),
                cached: self.cache_note(i),
                gate: self.gate_summary(i),
                compensated: self.compensation_summary(i),
            })
            .collect();
        let summary = Summary {
            modules,
            cancelled: self.run.cancel_reason().map(str::to_owned),
        };
        let outcome = summary.outcome();
        self.journal_finish(outcome, summary.cancelled.as_deref());
        self.outcome = Some(outcome);
        let workers: Vec<WorkerId> = self.workers.keys().copied().collect();
        for worker in workers {
            self.send(worker, shutdown(outcome));
        }
        self.effects.push(Effect::Finished(summary));
        self.timers.clear();
    }
}

/// The call that ends a worker's part in a finished run.
pub(super) fn shutdown(outcome: RunOutcome) -> HubCall {
    HubCall::Shutdown {
        reason: "the run has finished".into(),
        outcome: Some(outcome),
    }
}
