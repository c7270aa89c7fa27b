//! The scheduler's actor: the thin loop around the state machine. It takes
//! commands from connections and the hub's owner, keeps each connected
//! worker's outbox, sleeps until the machine's next deadline, and carries
//! out the machine's effects.
//!
//! The owner's event stream is bounded: events are queued while a command
//! is handled and sent before the next one is taken, so a slow reader of
//! the events (a terminal, a pipe) slows the scheduler, then the
//! connections, then the workers, and nothing piles up in memory.
//!
//! With a journal, every record an input produced is appended (queued, in
//! order) before any of its effects leave. Two kinds of effect also wait
//! until records are durable: the answer to a `Complete` that ended a
//! module (until its record is), and the `Assign` of a module made ready by
//! a result (until that result's record is). While such an `Assign` waits,
//! later messages to the same worker wait behind it, so a `Cancel` never
//! overtakes the `Assign` it is about. Everything else goes out at once: a
//! worker whose slot freed gets its next, unrelated module without waiting
//! for the disk, and the journal writes in groups (one fsync for all that
//! queued meanwhile). When too many records wait, the actor stops taking
//! commands. What waits, and the rules for it, are `held.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use muster_core::wire::calls::HubCall;
use muster_core::wire::types::Welcome;
use muster_core::{ModuleIndex, Plan, WorkerId};
use muster_journal::JournalWriter;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use muster_core::journal::{Entry, StateName};

use super::held::{HeldBack, Release};
use super::machine::{Effect, Input, Machine};
use super::table::DecisionAnswer;
use super::{CancelAnswer, Command, Registered, SchedulerSettings};
use crate::cache::{Looked, ResultCache};
use crate::events::{RunEvent, Summary};
use crate::outbox::{Outbound, Outbox};
use crate::HubError;
use muster_core::gate::Refused;

/// Who is waiting for the answer to the input being handled.
enum Requester {
    /// Nobody: a timer fired.
    Nobody,
    Register {
        invocation_id: Option<String>,
        outbox: Outbox,
        reply: oneshot::Sender<Registered>,
    },
    /// A worker's call, and where to answer it when it has an invocation id.
    Call(WorkerId, Option<(String, Outbox)>),
    Cancel(Option<oneshot::Sender<CancelAnswer>>),
    Decide(Option<oneshot::Sender<DecideAnswer>>),
}

/// What a decision's requester is told.
pub(crate) type DecideAnswer = Result<DecisionAnswer, Refused>;

/// Records written but not yet durable beyond which no command is taken.
const MAX_UNDURABLE: u64 = 16_384;

impl Requester {
    /// Closes the requesting connection with `reason`, unanswered.
    fn close(&self, reason: &str) {
        let outbox = match self {
            Requester::Register { outbox, .. } => outbox,
            Requester::Call(_, Some((_, outbox))) => outbox,
            _ => return,
        };
        outbox.send(Outbound::Close(Some(reason.to_owned())));
    }
}

/// The most log text kept per module for its cache entry.
const MAX_CACHED_LOG: usize = 1 << 20;

pub(crate) struct Scheduler {
    machine: Machine,
    /// The result cache, and where its answers come back.
    cache: Option<Arc<dyn ResultCache>>,
    cached_tx: mpsc::UnboundedSender<(ModuleIndex, Looked)>,
    cached_rx: mpsc::UnboundedReceiver<(ModuleIndex, Looked)>,
    /// The log of each module that missed the cache and may be kept.
    cache_logs: HashMap<String, String>,
    journal: Option<JournalWriter>,
    /// What waits for the journal to be durable.
    held: HeldBack,
    /// The journal was last asked to commit without gathering when it had
    /// this many records.
    expedited: u64,
    /// Why the journal failed, once it did: the run stops there.
    journal_lost: Option<String>,
    /// Each connected worker's session and outbox.
    outboxes: HashMap<WorkerId, (u64, Outbox)>,
    /// Dropped with the summary, so the owner's event stream ends then.
    events: Option<mpsc::Sender<RunEvent>>,
    /// Events of the command being handled, sent before the next one.
    queued: VecDeque<RunEvent>,
    done: Option<oneshot::Sender<Result<Summary, HubError>>>,
    /// The run's summary, once it finished, until the events before it
    /// are sent.
    summary: Option<Summary>,
    connected: watch::Sender<usize>,
    /// Results being kept in the cache: the run ends only once they are
    /// (or after [`STORE_LIMIT`]).
    stores: tokio_util::task::TaskTracker,
}

/// How long the end of a run waits for results still being stored in the
/// cache.
const STORE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Scheduler {
    pub(crate) fn new(
        plan: Plan,
        settings: SchedulerSettings,
        journal: Option<JournalWriter>,
        cache: Option<Arc<dyn ResultCache>>,
        events: mpsc::Sender<RunEvent>,
        done: oneshot::Sender<Result<Summary, HubError>>,
        connected: watch::Sender<usize>,
    ) -> Scheduler {
        let (machine, effects) = Machine::new(plan, settings, std::time::Instant::now());
        let durable = journal.as_ref().map_or(0, |j| *j.durable().borrow());
        // Bounded by the modules looked up: one answer each.
        let (cached_tx, cached_rx) = mpsc::unbounded_channel();
        let mut scheduler = Scheduler {
            machine,
            cache,
            cached_tx,
            cached_rx,
            cache_logs: HashMap::new(),
            held: HeldBack::from(durable),
            journal_lost: None,
            journal,
            expedited: 0,
            outboxes: HashMap::new(),
            events: Some(events),
            queued: VecDeque::new(),
            done: Some(done),
            summary: None,
            stores: tokio_util::task::TaskTracker::new(),
            connected,
        };
        scheduler.take_in(effects, Requester::Nobody);
        scheduler
    }

    /// Runs until every sender of commands is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut durable = self.journal.as_ref().map(JournalWriter::durable);
        let mut failure = self.journal.as_ref().map(JournalWriter::failure);
        loop {
            let deadline = self.machine.next_deadline().map(Instant::from_std);
            let wake = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let watching = self.journal.is_some();
            let journal_news = async {
                match (watching, &mut durable, &mut failure) {
                    (true, Some(durable), Some(failure)) => tokio::select! {
                        moved = durable.changed() => moved.is_ok(),
                        failed = failure.changed() => failed.is_ok() && failure.borrow().is_none(),
                    },
                    _ => std::future::pending().await,
                }
            };
            let taking = self.held.undurable() < MAX_UNDURABLE;
            tokio::select! {
                command = commands.recv(), if taking => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = wake => self.input(Input::Tick, Requester::Nobody),
                Some((module, looked)) = self.cached_rx.recv() => {
                    if let Looked::Miss { .. } = &looked {
                        let id = self.machine_module_id(module);
                        self.cache_logs.insert(id, String::new());
                    }
                    self.input(Input::Cached { module, looked }, Requester::Nobody);
                }
                healthy = journal_news => {
                    if !healthy {
                        self.journal_failed();
                    }
                }
            }
            if let (Some(durable), true) = (&durable, self.journal.is_some()) {
                let durable = *durable.borrow();
                self.held.release(durable, &self.outboxes);
            }
            self.flush_events().await;
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
                // The connection gave up while its Register waited.
                if reply.is_closed() {
                    return;
                }
                let requester = Requester::Register {
                    invocation_id,
                    outbox,
                    reply,
                };
                self.input(Input::Register { registration }, requester);
            }
            Command::Call {
                worker,
                call,
                answer,
            } => self.input(
                Input::Call { worker, call },
                Requester::Call(worker, answer),
            ),
            Command::Workers { reply } => {
                let views = self
                    .machine
                    .worker_views()
                    .into_iter()
                    .map(|(id, mut view)| {
                        if view.connected {
                            view.heard_ms_ago = self
                                .outboxes
                                .get(&id)
                                .map(|(_, outbox)| outbox.heard_ago().as_millis() as u64);
                        }
                        view
                    })
                    .collect();
                let _ = reply.send(views);
            }
            Command::Disconnected {
                worker,
                session,
                reason,
                return_by,
            } => {
                if self
                    .outboxes
                    .get(&worker)
                    .is_some_and(|(s, _)| *s == session)
                {
                    self.outboxes.remove(&worker);
                }
                let return_by = return_by.map(Instant::into_std);
                let input = Input::Disconnected {
                    worker,
                    session,
                    reason,
                    return_by,
                };
                self.input(input, Requester::Nobody);
            }
            Command::Cancel { reason, reply } => {
                self.input(Input::Cancel { reason }, Requester::Cancel(reply))
            }
            Command::Abandon { reason } => self.abandon(reason),
            Command::Decide {
                module,
                decider,
                decision,
                reply,
            } => {
                let input = Input::Decide {
                    module,
                    decider,
                    decision,
                };
                self.input(input, Requester::Decide(Some(reply)))
            }
        }
    }

    fn input(&mut self, input: Input, requester: Requester) {
        let effects = self.machine.handle(std::time::Instant::now(), input);
        self.take_in(effects, requester);
    }

    /// Hands an input's journal records to the journal (in order), then
    /// carries out its effects; see the module documentation for what
    /// waits until the records are durable.
    fn take_in(&mut self, mut effects: Vec<Effect>, requester: Requester) {
        if let Some(why) = &self.journal_lost {
            // Nothing may be acknowledged that the journal does not hold.
            requester.close(why);
            return;
        }
        // The answer waits for this input's results, when it has some.
        let mut result_in_input = 0;
        if let Some(journal) = &mut self.journal {
            let at = unix_ms();
            let held = &mut self.held;
            effects.retain_mut(|effect| match effect {
                Effect::Journal(entry) => {
                    let entry = std::mem::replace(
                        entry,
                        Entry::CancelRequested {
                            reason: String::new(),
                        },
                    );
                    let (terminal, ready) = match &entry {
                        Entry::Module(record) if record.state == StateName::Ready => {
                            (false, Some(record.module.clone()))
                        }
                        Entry::Module(record) => (record.state.is_terminal(), None),
                        // An approval counts as a result: the module it
                        // lets run is not assigned before it is durable.
                        Entry::GateDecided(_) => (true, None),
                        _ => (false, None),
                    };
                    let seq = journal.append(at, entry);
                    if terminal {
                        result_in_input = seq;
                    }
                    held.appended(seq, terminal, ready);
                    false
                }
                Effect::Event(RunEvent::Log { module, text, .. }) => {
                    journal.log(module, text);
                    true
                }
                _ => true,
            });
        }
        self.carry_out(effects, requester, result_in_input);
    }

    /// Sends a hub call to a worker now, or holds it back (see
    /// [`HeldBack::call`]).
    fn send_call(&mut self, worker: WorkerId, call: HubCall) {
        match self.held.call(worker, call) {
            (Some(call), _) => {
                if let Some((_, outbox)) = self.outboxes.get(&worker) {
                    outbox.send(Outbound::Message(call.to_message()));
                }
            }
            // A worker waits for this call: the journal must not gather.
            (None, Release::After(seq)) => self.expedite(seq),
            (None, Release::Now) => {}
        }
    }

    /// Someone waits for record `seq`: the journal commits what it has now
    /// instead of gathering more (once for everything appended so far).
    fn expedite(&mut self, seq: u64) {
        if let Some(journal) = &mut self.journal {
            if self.expedited < seq {
                journal.expedite();
                self.expedited = self.held.appended;
            }
        }
    }

    /// The journal could not write: nothing more may be acknowledged. Every
    /// worker is told why and the owner gets the error.
    fn journal_failed(&mut self) {
        let why = self
            .journal
            .as_ref()
            .and_then(JournalWriter::failed)
            .map_or_else(|| "the journal stopped".to_owned(), |e| e.to_string());
        tracing::error!("the run's journal failed: {why}");
        self.stop_here(
            format!("the master's journal failed: {why}"),
            HubError::Journal(why),
        );
    }

    /// The hub's owner gave the run up (a newer master took it over): like
    /// a failed journal, nothing more is written, acknowledged or sent, and
    /// every worker is told `reason`.
    fn abandon(&mut self, reason: String) {
        if self.done.is_none() {
            return;
        }
        tracing::warn!("the master stops: {reason}");
        self.stop_here(reason.clone(), HubError::Abandoned(reason));
    }

    /// Stops the run where it stands: every worker is closed with
    /// `reason`, the events and the journal are dropped, and the owner gets
    /// `error`.
    fn stop_here(&mut self, reason: String, error: HubError) {
        self.close_workers(&reason);
        self.journal_lost = Some(reason);
        self.events = None;
        self.journal = None;
        if let Some(done) = self.done.take() {
            let _ = done.send(Err(error));
        }
    }

    /// Closes every worker's connection with `reason`, and drops what
    /// waited for the journal to be durable: nothing the journal does not
    /// hold is acknowledged or sent.
    fn close_workers(&mut self, reason: &str) {
        let reason = reason.to_owned();
        for (_, outbox) in self.outboxes.values() {
            outbox.send(Outbound::Close(Some(reason.clone())));
        }
        self.held.drop_all(&reason);
    }

    /// Carries out an input's effects in order; the answer to a call
    /// waits until the record `result_seq` (the result it reported, 0 for
    /// none) is durable.
    fn carry_out(&mut self, effects: Vec<Effect>, mut requester: Requester, result_seq: u64) {
        for effect in effects {
            match effect {
                Effect::Welcome(registered, welcome) => {
                    let Requester::Register {
                        invocation_id,
                        outbox,
                        reply,
                    } = std::mem::replace(&mut requester, Requester::Nobody)
                    else {
                        continue;
                    };
                    self.welcome(registered, &welcome, invocation_id, outbox, reply);
                }
                Effect::Answer(result) => {
                    if let Requester::Call(worker, Some((invocation_id, outbox))) = &requester {
                        let result = result.map_err(|refusal| refusal.to_string());
                        let answer = (invocation_id.clone(), outbox.clone(), result);
                        if let Some((id, outbox, result)) =
                            self.held.answer(*worker, answer, result_seq)
                        {
                            outbox.answer(id, result);
                        }
                    }
                }
                Effect::Decided(answer) => {
                    let Requester::Decide(Some(reply)) =
                        std::mem::replace(&mut requester, Requester::Nobody)
                    else {
                        continue;
                    };
                    match self.held.decision((reply, answer)) {
                        (Some((reply, answer)), _) => {
                            let _ = reply.send(answer);
                        }
                        (None, Release::After(seq)) => self.expedite(seq),
                        (None, Release::Now) => {}
                    }
                }
                Effect::Cancelled(answer) => {
                    if let Requester::Cancel(reply) = &mut requester {
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(answer);
                        }
                    }
                }
                Effect::Send { worker, call } => self.send_call(worker, call),
                Effect::Event(event) => {
                    self.keep_log(&event);
                    if self.events.is_some() {
                        self.queued.push_back(event);
                    }
                }
                Effect::CacheLookup(lookup) => {
                    let Some(cache) = self.cache.clone() else {
                        continue;
                    };
                    let answers = self.cached_tx.clone();
                    tokio::spawn(async move {
                        let module = lookup.module;
                        let looked = cache.lookup(lookup).await;
                        let _ = answers.send((module, looked));
                    });
                }
                Effect::CacheStore(mut store) => {
                    let Some(cache) = self.cache.clone() else {
                        continue;
                    };
                    store.log = self.cache_logs.remove(&store.id).unwrap_or_default();
                    self.stores.spawn(cache.store(store));
                }
                Effect::Finished(summary) => self.summary = Some(summary),
                Effect::Connected(count) => {
                    self.connected.send_replace(count);
                }
                // Taken out before (or not journaled at all).
                Effect::Journal(_) => {}
            }
        }
    }

    fn machine_module_id(&self, module: ModuleIndex) -> String {
        self.machine.module_id(module).to_owned()
    }

    /// Keeps the log of a module that may go into the cache (its current
    /// attempt's, up to [`MAX_CACHED_LOG`]).
    fn keep_log(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Log { module, text, .. } => {
                if let Some(log) = self.cache_logs.get_mut(module) {
                    if log.len() + text.len() <= MAX_CACHED_LOG {
                        log.push_str(text);
                    }
                }
            }
            RunEvent::Module {
                module,
                state: muster_core::ModuleState::Running { .. },
                ..
            } => {
                if let Some(log) = self.cache_logs.get_mut(module) {
                    log.clear();
                }
            }
            _ => {}
        }
    }

    /// Tells the connection who it is, answers its Register, and makes its
    /// outbox the worker's (closing an older one the hub had not yet seen
    /// die).
    fn welcome(
        &mut self,
        registered: Registered,
        welcome: &Welcome,
        invocation_id: Option<String>,
        outbox: Outbox,
        reply: oneshot::Sender<Registered>,
    ) {
        if reply.send(registered).is_err() {
            // Gone between the check and now: it leaves as it came.
            let input = Input::Disconnected {
                worker: registered.worker,
                session: registered.session,
                reason: "the connection ended while registering".into(),
                return_by: None,
            };
            self.input(input, Requester::Nobody);
            return;
        }
        if let Some(invocation_id) = invocation_id {
            let result = serde_json::to_value(welcome).expect("welcome serializes");
            outbox.answer(invocation_id, Ok(result));
        }
        let replaced = self
            .outboxes
            .insert(registered.worker, (registered.session, outbox));
        if let Some((_, old)) = replaced {
            old.send(Outbound::Close(Some(
                "replaced by a newer connection of the same worker".into(),
            )));
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
            let closed = match self.journal.take() {
                Some(journal) => journal.close().await.map_err(|e| e.to_string()),
                None => Ok(()),
            };
            match &closed {
                // Everything is durable now: what waited for it goes (the
                // workers' Shutdown among it).
                Ok(()) => {
                    let everything = self.held.appended;
                    self.held.release(everything, &self.outboxes);
                }
                Err(why) => {
                    tracing::error!("the run's journal failed: {why}");
                    self.close_workers(&format!("the master's journal failed: {why}"));
                }
            }
            self.stores.close();
            if tokio::time::timeout(STORE_LIMIT, self.stores.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "results still being stored in the cache after {}s are not kept",
                    STORE_LIMIT.as_secs()
                );
            }
            if let Some(done) = self.done.take() {
                let _ = done.send(closed.map(|()| summary).map_err(HubError::Journal));
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
