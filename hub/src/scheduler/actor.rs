//! The scheduler's actor: the thin loop around the state machine. It takes
//! commands from connections and the hub's owner, keeps each connected
//! worker's outbox, sleeps until the machine's next deadline, and carries
//! out the machine's effects.
//!
//! The owner's event stream is bounded: events are queued while a command
//! is handled and sent before the next one is taken, so a slow reader of
//! the events (a terminal, a pipe) slows the scheduler, then the
//! connections, then the workers, and nothing piles up in memory.

use std::collections::{HashMap, VecDeque};

use muster_core::wire::types::Welcome;
use muster_core::{Plan, WorkerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::machine::{Effect, Input, Machine};
use super::{CancelAnswer, Command, Registered, SchedulerSettings};
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

pub(crate) struct Scheduler {
    machine: Machine,
    /// Each connected worker's session and outbox.
    outboxes: HashMap<WorkerId, (u64, Outbox)>,
    /// Dropped with the summary, so the owner's event stream ends then.
    events: Option<mpsc::Sender<RunEvent>>,
    /// Events of the command being handled, sent before the next one.
    queued: VecDeque<RunEvent>,
    done: Option<oneshot::Sender<Summary>>,
    /// The run's summary, once it finished, until the events before it
    /// are sent.
    summary: Option<Summary>,
    connected: watch::Sender<usize>,
}

impl Scheduler {
    pub(crate) fn new(
        plan: Plan,
        settings: SchedulerSettings,
        events: mpsc::Sender<RunEvent>,
        done: oneshot::Sender<Summary>,
        connected: watch::Sender<usize>,
    ) -> Scheduler {
        let (machine, effects) = Machine::new(plan, settings, std::time::Instant::now());
        let mut scheduler = Scheduler {
            machine,
            outboxes: HashMap::new(),
            events: Some(events),
            queued: VecDeque::new(),
            done: Some(done),
            summary: None,
            connected,
        };
        scheduler.carry_out(effects, Requester::Nobody);
        scheduler
    }

    /// Runs until every sender of commands is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.machine.next_deadline().map(Instant::from_std);
            let wake = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = wake => self.input(Input::Tick, Requester::Nobody),
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
        self.carry_out(effects, requester);
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
                    if self.events.is_some() {
                        self.queued.push_back(event);
                    }
                }
                Effect::Finished(summary) => self.summary = Some(summary),
                Effect::Connected(count) => {
                    self.connected.send_replace(count);
                }
            }
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
            let effects = self.machine.handle(std::time::Instant::now(), input);
            self.carry_out(effects, Requester::Nobody);
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
            if let Some(done) = self.done.take() {
                let _ = done.send(summary);
            }
        }
    }
}
