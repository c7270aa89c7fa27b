//! What the actor holds back until the journal has made records durable,
//! and the rules for it (see the actor's documentation): a `Complete`'s
//! answer waits for its result's record, an approver's answer for the
//! decision's, an `Assign` for the record of the result that made its
//! module ready, a `Shutdown` for the run's end, and every later call to
//! the same worker queues behind what waits for it. The journal's sequence
//! numbers are the only clock: `appended` (handed to the journal) and
//! `durable` (reported back by it).

use std::collections::{HashMap, VecDeque};

use muster_core::wire::calls::HubCall;
use muster_core::WorkerId;
use serde_json::Value;
use tokio::sync::oneshot;

use super::actor::DecideAnswer;
use crate::outbox::{Outbound, Outbox};

/// The answer to a call: its invocation id, the caller's outbox, and what
/// to answer.
pub(super) type Answer = (String, Outbox, Result<Value, String>);

/// An approver's reply and what to tell them.
type Decision = (oneshot::Sender<DecideAnswer>, DecideAnswer);

/// A message waiting for the journal to be durable up to `seq`.
struct Waiting<T> {
    seq: u64,
    item: T,
}

/// The held-back messages and the bookkeeping that decides what waits.
#[derive(Default)]
pub(super) struct HeldBack {
    /// The last record handed to the journal.
    pub appended: u64,
    /// The journal's durable record, as last seen.
    pub durable: u64,
    /// The last record of a module's result handed to the journal.
    last_result: u64,
    /// For each module made ready by a result not yet durable at the
    /// time: that result's record. Taken out when the module is assigned.
    ready_after: HashMap<String, u64>,
    /// Answers to `Complete`s waiting for their result's record.
    answers: VecDeque<Waiting<Answer>>,
    /// Accepted decisions waiting for their record: the approver is told
    /// only what the journal holds.
    decisions: VecDeque<Waiting<Decision>>,
    /// Per worker, the record its last waiting answer waits for: a
    /// `Cancel` to it goes after that answer.
    answer_after: HashMap<WorkerId, u64>,
    /// Per worker, the hub calls waiting (an `Assign` of a module whose
    /// readiness is not durable yet, and whatever came after it).
    calls: HashMap<WorkerId, VecDeque<Waiting<HubCall>>>,
}

/// What becoming durable up to a record releases.
pub(super) enum Release {
    /// Go out now.
    Now,
    /// Waits for record `seq`: someone waits, so the journal should not
    /// gather more before committing it.
    After(u64),
}

impl HeldBack {
    /// Starts from a journal durable up to `durable`.
    pub fn from(durable: u64) -> HeldBack {
        HeldBack {
            appended: durable,
            durable,
            ..HeldBack::default()
        }
    }

    /// Records handed to the journal but not durable yet.
    pub fn undurable(&self) -> u64 {
        self.appended - self.durable
    }

    /// Record `seq` was handed to the journal: a module's result
    /// (`terminal`, approvals included), or module `ready` becoming ready
    /// (whose Assign then waits for the last result not durable yet).
    pub fn appended(&mut self, seq: u64, terminal: bool, ready: Option<String>) {
        if terminal {
            self.last_result = seq;
        }
        if let Some(id) = ready.filter(|_| self.last_result > self.durable) {
            self.ready_after.insert(id, self.last_result);
        }
        self.appended = seq;
    }

    /// The answer to `worker`'s call, due once record `after` is durable:
    /// given back to send now, or kept.
    pub fn answer(&mut self, worker: WorkerId, answer: Answer, after: u64) -> Option<Answer> {
        if after <= self.durable {
            return Some(answer);
        }
        self.answer_after.insert(worker, after);
        self.answers.push_back(Waiting {
            seq: after,
            item: answer,
        });
        None
    }

    /// An approver's answer, due once everything appended is durable (a
    /// refusal goes at once): given back to send now, or kept.
    pub fn decision(&mut self, decision: Decision) -> (Option<Decision>, Release) {
        if decision.1.is_err() || self.appended <= self.durable {
            return (Some(decision), Release::Now);
        }
        let seq = self.appended;
        self.decisions.push_back(Waiting {
            seq,
            item: decision,
        });
        (None, Release::After(seq))
    }

    /// A hub call to `worker`: an `Assign` waits until the module's
    /// readiness is durable; a `Shutdown` until the run's end is (a worker
    /// told how the run ended must never see the master fail to record
    /// it); a `Cancel` until the worker's waiting answer has gone (the
    /// answer to a call precedes what follows from it; an unrelated
    /// `Assign` may overtake it). Given back to send now, or kept.
    pub fn call(&mut self, worker: WorkerId, call: HubCall) -> (Option<HubCall>, Release) {
        let needs = match &call {
            HubCall::Assign(assignment) => {
                self.ready_after.remove(&assignment.module_id).unwrap_or(0)
            }
            HubCall::Shutdown { .. } => self.appended,
            _ => self
                .answer_after
                .get(&worker)
                .copied()
                .filter(|&seq| seq > self.durable)
                .unwrap_or(0),
        };
        let behind = self
            .calls
            .get(&worker)
            .and_then(|q| q.back())
            .map_or(0, |w| w.seq);
        let seq = needs.max(behind);
        if seq <= self.durable {
            return (Some(call), Release::Now);
        }
        self.calls
            .entry(worker)
            .or_default()
            .push_back(Waiting { seq, item: call });
        (None, Release::After(seq))
    }

    /// The journal is durable up to `durable`: sends what waited for it,
    /// calls to the workers that still have an outbox.
    pub fn release(&mut self, durable: u64, outboxes: &HashMap<WorkerId, (u64, Outbox)>) {
        self.durable = self.durable.max(durable);
        let durable = self.durable;
        self.answer_after.retain(|_, seq| *seq > durable);
        while self.answers.front().is_some_and(|w| w.seq <= durable) {
            let (invocation_id, outbox, result) = self.answers.pop_front().expect("checked").item;
            outbox.answer(invocation_id, result);
        }
        while self.decisions.front().is_some_and(|w| w.seq <= durable) {
            let (reply, answer) = self.decisions.pop_front().expect("checked").item;
            let _ = reply.send(answer);
        }
        self.calls.retain(|worker, calls| {
            while calls.front().is_some_and(|w| w.seq <= durable) {
                let call = calls.pop_front().expect("checked").item;
                if let Some((_, outbox)) = outboxes.get(worker) {
                    outbox.send(Outbound::Message(call.to_message()));
                }
            }
            !calls.is_empty()
        });
    }

    /// The run stops where it stands: callers whose answers waited are
    /// closed with `reason`, waiting calls dropped, and approvers whose
    /// decisions the journal does not hold are told nothing (the dropped
    /// reply says so).
    pub fn drop_all(&mut self, reason: &str) {
        for waiting in self.answers.drain(..) {
            waiting
                .item
                .1
                .send(Outbound::Close(Some(reason.to_owned())));
        }
        self.calls.clear();
        self.decisions.clear();
        self.answer_after.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::wire::types::Assignment;

    fn assign(module: &str) -> HubCall {
        HubCall::Assign(Assignment {
            module_id: module.to_owned(),
            attempt: 1,
            command: String::new(),
            shell: Vec::new(),
            cwd: String::new(),
            env: Default::default(),
            timeout_ms: 0,
            needs: Default::default(),
            secrets: Vec::new(),
            produces: Vec::new(),
            consumes: Vec::new(),
        })
    }

    fn cancel(module: &str) -> HubCall {
        HubCall::Cancel {
            module_id: module.to_owned(),
            attempt: 1,
            reason: "test".to_owned(),
        }
    }

    fn waits(sent: &(Option<HubCall>, Release)) -> Option<u64> {
        match sent {
            (None, Release::After(seq)) => Some(*seq),
            _ => None,
        }
    }

    #[test]
    fn an_assign_waits_for_the_result_that_made_its_module_ready_and_what_follows_queues() {
        let (w1, w2) = (WorkerId(1), WorkerId(2));
        let mut held = HeldBack::from(0);
        // `a` succeeded (record 1) and made `b` ready (record 2); `c` was
        // ready before any result.
        held.appended(1, true, None);
        held.appended(2, false, Some("b".to_owned()));
        assert_eq!(waits(&held.call(w1, assign("b"))), Some(1));
        // A later call to the same worker waits behind it.
        assert_eq!(waits(&held.call(w1, cancel("x"))), Some(1));
        // Another worker's unrelated Assign goes at once.
        let mut fresh = HeldBack::from(0);
        fresh.appended(1, false, Some("c".to_owned()));
        assert!(matches!(
            fresh.call(w2, assign("c")),
            (Some(_), Release::Now)
        ));
        // Durable up to 1: both go, in order, and nothing waits any more.
        held.release(1, &HashMap::new());
        assert!(held.calls.is_empty());
        assert!(matches!(
            held.call(w1, cancel("y")),
            (Some(_), Release::Now)
        ));
    }

    #[test]
    fn a_shutdown_waits_for_everything_appended() {
        let mut held = HeldBack::from(4);
        held.appended(5, false, None);
        held.appended(6, false, None);
        let shutdown = HubCall::Shutdown {
            reason: "done".to_owned(),
            outcome: None,
        };
        assert_eq!(waits(&held.call(WorkerId(1), shutdown.clone())), Some(6));
        held.release(6, &HashMap::new());
        assert!(matches!(
            held.call(WorkerId(2), shutdown),
            (Some(_), Release::Now)
        ));
        assert_eq!(held.undurable(), 0);
    }
}
