//! Every wait has a bound, kept as a [`Timer`]: a worker whose connection
//! dropped keeps its modules only until it could have been heard again; a
//! ready module nobody can take fails after the capability timeout; an
//! assigned module its worker does not start in time is taken back; a
//! started one whose result does not come is timed out here; after a
//! cancel, workers have a grace period to confirm. Each timer is checked
//! against the current state when it fires, so a stale one does nothing.

use std::time::Instant;

use muster_core::wire::calls::HubCall;
use muster_core::{Ended, Event, ModuleIndex, ModuleState, Outcome, WorkerId};

use super::machine::Machine;
use super::table::Timer;

impl Machine {
    /// Fires every timer due by now.
    pub(super) fn fire_timers(&mut self) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Away { worker, session } => {
                    let still_away = self
                        .workers
                        .get(&worker)
                        .is_some_and(|w| w.session == session && !w.connected);
                    if still_away {
                        self.remove_worker(worker, "did not reconnect in time".into());
                    }
                }
                Timer::NoWorker(module) => self.no_worker(module),
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
                Timer::GateExpires(module) => self.gate_expired(module),
                Timer::GateReminder(module) => self.gate_reminder(module),
                Timer::Compensation(generation) => self.compensation_deadline(generation),
            }
        }
    }

    /// An attempt handed to a worker must be started within the start
    /// timeout, and once started must report within its timeout and the
    /// result grace.
    pub(super) fn arm_attempt_timers(&mut self, module: ModuleIndex, state: &ModuleState) {
        let at: Instant;
        let timer = match *state {
            ModuleState::Assigned { attempt, .. } => {
                at = self.now + self.settings.start_timeout;
                Timer::Start { module, attempt }
            }
            ModuleState::Running { attempt, .. } => {
                let timeout = self.run.plan().modules[module].timeout;
                at = self.now + timeout + self.settings.result_grace;
                Timer::Result { module, attempt }
            }
            _ => return,
        };
        self.arm(at, timer);
    }

    /// The worker holding `attempt` of `module`, if the module is still at
    /// that attempt and in the state `phase` accepts: a timer armed for an
    /// earlier attempt or state does nothing.
    fn holder_of(
        &self,
        module: ModuleIndex,
        attempt: u32,
        phase: fn(&ModuleState) -> bool,
    ) -> Option<WorkerId> {
        let state = self.run.state(module);
        let current = phase(state) && state.attempt() == Some(attempt);
        state.holder().filter(|_| current)
    }

    /// The bound on the hand-off: a module still assigned (not `Started`)
    /// when its start timeout fires is taken back and runs elsewhere as the
    /// next attempt; the worker is told to drop it.
    fn not_started(&mut self, module: ModuleIndex, attempt: u32) {
        let assigned = |state: &ModuleState| matches!(state, ModuleState::Assigned { .. });
        let Some(worker) = self.holder_of(module, attempt, assigned) else {
            return;
        };
        let id = self.run.plan().modules[module].id.clone();
        let name = self.seen_name(worker).to_owned();
        let waited = humantime::format_duration(self.settings.start_timeout).to_string();
        tracing::warn!(module = %id, attempt, worker = %name, "not started within {waited}: running it elsewhere");
        self.send(
            worker,
            HubCall::Cancel {
                module_id: id,
                attempt,
                reason: format!("not started within {waited}: the hub runs it elsewhere"),
            },
        );
        self.passed_over.entry(module).or_default().insert(worker);
        let changes = self.run.not_started(module, worker, &name, &waited);
        self.record(changes);
    }

    /// The backstop for a worker that stays connected but never reports:
    /// the attempt times out here, and the worker is told to stop it.
    fn no_result(&mut self, module: ModuleIndex, attempt: u32) {
        let running = |state: &ModuleState| matches!(state, ModuleState::Running { .. });
        let Some(worker) = self.holder_of(module, attempt, running) else {
            return;
        };
        let m = &self.run.plan().modules[module];
        let (id, timeout) = (m.id.clone(), m.timeout);
        let reason = format!(
            "no result from worker {} within the module's timeout ({}) and {} more",
            self.seen_name(worker),
            humantime::format_duration(timeout),
            humantime::format_duration(self.settings.result_grace)
        );
        tracing::warn!(module = %id, attempt, "{reason}");
        self.send(
            worker,
            HubCall::Cancel {
                module_id: id,
                attempt,
                reason: reason.clone(),
            },
        );
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
}
