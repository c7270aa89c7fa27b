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
//! With a journal, the effects of each input are held until the journal
//! records that input produced are durable, then carried out in the order
//! the inputs came. The journal writes in groups (one fsync for all that
//! queued meanwhile), and the actor goes on handling inputs while a group
//! is written, so journaling costs latency per step, little throughput.
//! When too many records wait, the actor stops taking commands.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use muster_core::wire::types::Welcome;
use muster_core::{ModuleIndex, Plan, WorkerId};
use muster_journal::JournalWriter;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use muster_core::journal::Entry;

use super::machine::{Effect, Input, Machine};
use super::{CancelAnswer, Command, Registered, SchedulerSettings};
use crate::cache::{Looked, ResultCache};
use crate::events::{RunEvent, Summary};
use crate::outbox::{Outbound, Outbox};

/// Who is waiting for the answer to the input being handled.
enum Requester {
    /// Nobody: a timer fired.
    Nobody,
    Register {
        invocation_id: Option<String>,
        outbox: Outbox,
        reply: oneshot::Sender<Registered>,
    },
    Call(Option<(String, Outbox)>),
    Cancel(Option<oneshot::Sender<CancelAnswer>>),
}

/// Records written but not yet durable beyond which no command is taken.
const MAX_UNDURABLE: u64 = 16_384;

/// An input's effects waiting for the journal.
struct Held {
    /// Carried out once the journal is durable up to this record.
    seq: u64,
    effects: Vec<Effect>,
    requester: Requester,
}

impl Requester {
    /// Closes the requesting connection with `reason`, unanswered.
    fn close(&self, reason: &str) {
        let outbox = match self {
            Requester::Register { outbox, .. } => outbox,
            Requester::Call(Some((_, outbox))) => outbox,
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
    /// The journal's durable record, as last seen.
    durable: u64,
    /// Inputs whose effects wait for the journal, oldest first.
    held: VecDeque<Held>,
    /// The last record handed to the journal.
    appended: u64,
    /// Why the journal failed, once it did: the run stops there.
    journal_lost: Option<String>,
    /// Each connected worker's session and outbox.
    outboxes: HashMap<WorkerId, (u64, Outbox)>,
    /// Dropped with the summary, so the owner's event stream ends then.
    events: Option<mpsc::Sender<RunEvent>>,
    /// Events of the command being handled, sent before the next one.
    queued: VecDeque<RunEvent>,
    done: Option<oneshot::Sender<Result<Summary, String>>>,
    /// The run's summary, once it finished, until the events before it
    /// are sent.
    summary: Option<Summary>,
    connected: watch::Sender<usize>,
}

impl Scheduler {
    pub(crate) fn new(
        plan: Plan,
        settings: SchedulerSettings,
        journal: Option<JournalWriter>,
        cache: Option<Arc<dyn ResultCache>>,
        events: mpsc::Sender<RunEvent>,
        done: oneshot::Sender<Result<Summary, String>>,
        connected: watch::Sender<usize>,
    ) -> Scheduler {
        let (machine, effects) = Machine::new(plan, settings, std::time::Instant::now());
        let appended = journal.as_ref().map_or(0, |j| *j.durable().borrow());
        // Bounded by the modules looked up: one answer each.
        let (cached_tx, cached_rx) = mpsc::unbounded_channel();
        let mut scheduler = Scheduler {
            machine,
            cache,
            cached_tx,
            cached_rx,
            cache_logs: HashMap::new(),
            durable: appended,
            appended,
            journal_lost: None,
            journal,
            held: VecDeque::new(),
            outboxes: HashMap::new(),
            events: Some(events),
            queued: VecDeque::new(),
            done: Some(done),
            summary: None,
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
            let taking = self.appended - self.durable < MAX_UNDURABLE;
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
                self.durable = *durable.borrow();
            }
            self.release();
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
            } => self.input(Input::Call { worker, call }, Requester::Call(answer)),
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
        }
    }

    fn input(&mut self, input: Input, requester: Requester) {
        let effects = self.machine.handle(std::time::Instant::now(), input);
        self.take_in(effects, requester);
    }

    /// Hands an input's journal records to the journal, then carries out
    /// its effects, at once when nothing waits for the journal, else once
    /// the records are durable.
    fn take_in(&mut self, mut effects: Vec<Effect>, requester: Requester) {
        if let Some(why) = &self.journal_lost {
            // Nothing may be acknowledged that the journal does not hold.
            requester.close(why);
            return;
        }
        if let Some(journal) = &mut self.journal {
            let at = unix_ms();
            effects.retain_mut(|effect| match effect {
                Effect::Journal(entry) => {
                    let entry = std::mem::replace(
                        entry,
                        Entry::CancelRequested {
                            reason: String::new(),
                        },
                    );
                    self.appended = journal.append(at, entry);
                    false
                }
                Effect::Event(RunEvent::Log { module, text, .. }) => {
                    journal.log(module, text);
                    true
                }
                _ => true,
            });
        }
        if self.held.is_empty() && self.appended <= self.durable {
            self.carry_out(effects, requester);
        } else {
            self.held.push_back(Held {
                seq: self.appended,
                effects,
                requester,
            });
        }
    }

    /// Carries out the held inputs whose records are now durable.
    fn release(&mut self) {
        while self.held.front().is_some_and(|h| h.seq <= self.durable) {
            let held = self.held.pop_front().expect("checked");
            self.carry_out(held.effects, held.requester);
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
        let reason = format!("the master's journal failed: {why}");
        for (_, outbox) in self.outboxes.values() {
            outbox.send(Outbound::Close(Some(reason.clone())));
        }
        for held in self.held.drain(..) {
            held.requester.close(&reason);
        }
        self.journal_lost = Some(reason);
        self.events = None;
        self.journal = None;
        if let Some(done) = self.done.take() {
            let _ = done.send(Err(why));
        }
    }

    fn carry_out(&mut self, effects: Vec<Effect>, mut requester: Requester) {
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
                    if let Requester::Call(Some((invocation_id, outbox))) = &requester {
                        let result = result.map_err(|refusal| refusal.to_string());
                        outbox.answer(invocation_id.clone(), result);
                    }
                }
                Effect::Cancelled(answer) => {
                    if let Requester::Cancel(reply) = &mut requester {
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(answer);
                        }
                    }
                }
                Effect::Send { worker, call } => {
                    if let Some((_, outbox)) = self.outboxes.get(&worker) {
                        outbox.send(Outbound::Message(call.to_message()));
                    }
                }
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
                    tokio::spawn(cache.store(store));
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
            if let Some(done) = self.done.take() {
                let _ = done.send(closed.map(|()| summary));
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
