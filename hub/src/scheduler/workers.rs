//! The worker table: joining, resuming after a dropped socket (keep what
//! both sides agree is held, re-send a lost Assign, hand back what the
//! worker no longer has), being away, and leaving.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use muster_core::journal::InFlight;
use muster_core::state::Event;
use muster_core::wire::calls::HubCall;
use muster_core::wire::types::{Held, Registration, Resume, Welcome, PROTOCOL_VERSION};
use muster_core::{ModuleIndex, ModuleState, WorkerId};
use subtle::ConstantTimeEq;

use super::machine::{shutdown, Effect, Machine};
use super::table::{Timer, Worker};
use super::{Registered, MAX_SLOTS};
use crate::events::RunEvent;

impl Machine {
    /// A new connection's `Register`: a resume in time keeps the worker's
    /// id and modules; anything else joins as a new worker.
    pub(super) fn register(&mut self, registration: Registration) {
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
        let welcome = Welcome {
            worker_id: id.to_string(),
            protocol_version: PROTOCOL_VERSION,
            ping_interval_ms: self.settings.ping_interval.as_millis() as u64,
            resume_key: resume_key.clone(),
            resumed: resumed.is_some(),
            keep: Vec::new(),
        };
        let registered = Registered {
            worker: id,
            session,
        };
        match resumed {
            Some(id) => self.resume(id, session, registration, welcome),
            None => {
                if let Some(resume) = &registration.resume {
                    tracing::info!(worker = %id, "{} asked to resume as {}, which the hub no longer holds: joins anew", registration.name, resume.worker_id);
                }
                self.push(Effect::Welcome(registered, welcome));
                self.join(id, session, resume_key, registration);
            }
        }
    }

    /// The worker a `Resume` claims, if the hub still holds it and the key
    /// matches (compared in constant time); else an away worker of the
    /// same name this master adopted from an earlier master's journal (the
    /// token is the proof there: that master's keys died with it).
    fn resumable(&self, name: &str, resume: &Resume) -> Option<WorkerId> {
        let claimed = resume
            .worker_id
            .strip_prefix('w')
            .and_then(|n| n.parse().ok())
            .map(WorkerId)
            .filter(|id| {
                self.workers.get(id).is_some_and(|worker| {
                    let key = worker.resume_key.as_bytes().ct_eq(resume.key.as_bytes());
                    bool::from(key) && worker.name == name
                })
            });
        claimed.or_else(|| {
            self.workers
                .iter()
                .find(|(_, w)| w.adopted && !w.connected && w.name == name)
                .map(|(&id, _)| id)
        })
    }

    /// A master that took a live run over: each attempt the journal says a
    /// named worker was running is held for that worker, away, until
    /// `within` from now. A worker of that name that comes back holding
    /// the attempt keeps it (its report is taken as any other); one that
    /// does not come back in time is lost, and the attempt runs again.
    pub(super) fn adopt(&mut self, in_flight: &[InFlight], within: Duration) {
        let mut by_name: BTreeMap<&str, WorkerId> = BTreeMap::new();
        let mut changes = Vec::new();
        for adopted in in_flight {
            let ready = ModuleState::Ready {
                attempt: adopted.attempt,
            };
            if self.run.state(adopted.module) != &ready {
                continue;
            }
            let worker = match by_name.get(adopted.worker.as_str()) {
                Some(&id) => id,
                None => {
                    let id = self.adopted_worker(&adopted.worker, within);
                    by_name.insert(&adopted.worker, id);
                    id
                }
            };
            if let Some(w) = self.workers.get_mut(&worker) {
                w.slots += 1;
            }
            let assign = self.run.handle(adopted.module, Event::Assign { worker });
            let start = Event::Start {
                worker,
                attempt: adopted.attempt,
                at: self.now,
            };
            let started = self.run.handle(adopted.module, start);
            for mut change in assign.into_iter().chain(started).flatten() {
                change.note = Some(format!(
                    "adopted from the earlier master: waiting for {} to come back with it",
                    adopted.worker
                ));
                changes.push(change);
            }
        }
        self.record(changes);
    }

    /// An away worker known only by the name an earlier master journaled.
    fn adopted_worker(&mut self, name: &str, within: Duration) -> WorkerId {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        self.seen.insert(id, (name.to_owned(), Vec::new()));
        self.workers.insert(
            id,
            Worker {
                name: name.to_owned(),
                capabilities: BTreeSet::new(),
                slots: 0,
                held: 0,
                session: 0,
                resume_key: crate::ids::random_id(),
                connected: false,
                refusals: 0,
                adopted: true,
            },
        );
        self.arm(
            self.now + within,
            Timer::Away {
                worker: id,
                session: 0,
            },
        );
        id
    }

    /// A reconnect in time: keep what both sides agree the worker holds;
    /// re-send an Assign that was lost on the way; hand back a module the
    /// worker no longer has.
    fn resume(
        &mut self,
        id: WorkerId,
        session: u64,
        registration: Registration,
        mut welcome: Welcome,
    ) {
        let holding: BTreeSet<&Held> = registration
            .resume
            .iter()
            .flat_map(|r| &r.holding)
            .collect();
        let mut resend: Vec<(ModuleIndex, u32)> = Vec::new();
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
        // The compensation it runs, if it still holds it.
        let compensation = self.compensation_held(id);
        let compensation_kept = compensation
            .as_ref()
            .is_some_and(|held| holding.contains(held));
        if let (Some(held), true) = (&compensation, compensation_kept) {
            welcome.keep.push(held.clone());
        }
        let keep = welcome.keep.clone();
        self.push(Effect::Welcome(
            Registered {
                worker: id,
                session,
            },
            welcome,
        ));
        let worker = self.workers.get_mut(&id).expect("resumable workers exist");
        if !worker.connected {
            self.connected += 1;
        }
        if worker.adopted {
            // It joined another master: what it offers is news to this one.
            worker.adopted = false;
            worker.capabilities = registration.capabilities.iter().cloned().collect();
            worker.slots = registration.slots.clamp(1, MAX_SLOTS);
            self.seen
                .insert(id, (worker.name.clone(), registration.capabilities.clone()));
        }
        worker.connected = true;
        worker.session = session;
        let name = worker.name.clone();
        tracing::info!(worker = %id, %name, kept = keep.len(), "worker reconnected");
        self.emit(RunEvent::WorkerBack {
            name: name.clone(),
            kept: keep.len(),
        });
        for (module, attempt) in resend {
            let assignment = self.assignment(module, attempt);
            self.send(id, HubCall::Assign(assignment));
        }
        for module in lost {
            let changes = self.run.module_lost(module, id, &name);
            self.record(changes);
        }
        if compensation.is_some() && !compensation_kept {
            self.compensation_worker_lost(id, &name);
        }
        if let Some(reason) = self.run.cancel_reason().map(str::to_owned) {
            for held in keep {
                let cancel = HubCall::Cancel {
                    module_id: held.module_id,
                    attempt: held.attempt,
                    reason: reason.clone(),
                };
                self.send(id, cancel);
            }
        }
        // Back after the run ended (its modules were given up on): it is
        // told, as a worker joining late would be.
        if let Some(outcome) = self.outcome {
            self.send(id, shutdown(outcome));
        }
        self.recheck_unplaceable();
    }

    fn join(&mut self, id: WorkerId, session: u64, resume_key: String, registration: Registration) {
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
            connected: true,
            refusals: 0,
            adopted: false,
        };
        self.workers.insert(id, worker);
        self.connected += 1;
        if let Some(outcome) = self.outcome {
            self.send(id, shutdown(outcome));
        }
        self.recheck_unplaceable();
    }

    /// A connection ended. A worker that may come back and holds modules is
    /// away until `return_by`; any other leaves now. An older connection of
    /// a worker that already reconnected changes nothing.
    pub(super) fn disconnected(
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
            return;
        }
        if worker.connected {
            worker.connected = false;
            self.connected -= 1;
        }
        let held = worker.held;
        let name = worker.name.clone();
        match return_by {
            Some(at)
                if held > 0
                    && (!self.run.is_finished() || self.compensation_held(id).is_some()) =>
            {
                tracing::info!(worker = %id, %name, "worker away: {reason}");
                self.arm(
                    at,
                    Timer::Away {
                        worker: id,
                        session,
                    },
                );
                self.emit(RunEvent::WorkerAway {
                    name,
                    reason,
                    held: held as usize,
                    within: at.saturating_duration_since(self.now),
                });
            }
            _ => self.remove_worker(id, reason),
        }
    }

    /// Takes a worker out of the table and hands its modules back.
    pub(super) fn remove_worker(&mut self, id: WorkerId, reason: String) {
        let Some(gone) = self.workers.remove(&id) else {
            return;
        };
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
        self.compensation_worker_lost(id, &gone.name);
        // Modules only this worker could take may now have nobody.
        let ready: Vec<ModuleIndex> = self.run.ready().collect();
        for module in ready {
            self.check_placeable(module);
        }
    }
}
