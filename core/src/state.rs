//! The module state machine. [`ModuleState::transition`] is the only place
//! a module's state changes: it takes the current state and an [`Event`]
//! and returns the next state, or refuses. Ownership follows the hand-off:
//! before `Started` the master owns the module (a cancel is local); after
//! it the worker owns the execution and reports its end, and reports are
//! matched by attempt so a stale one never overwrites a newer result.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The hub's name for a connected worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// How an attempt ended: shared by every terminal state but `Skipped`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ended {
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub duration: Option<Duration>,
    pub exit_code: Option<i32>,
    /// Why it failed, timed out or was cancelled.
    pub reason: Option<String>,
    pub outputs: BTreeMap<String, String>,
    /// The files it produced, stored on the hub.
    pub artifacts: Vec<crate::wire::types::Artifact>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleState {
    /// Waiting for its needs.
    Pending,
    /// Every need succeeded and the module has an approval gate: it waits
    /// for a person's decision (holding no worker), then runs as `attempt`.
    AwaitingApproval {
        attempt: u32,
    },
    /// Every need succeeded; waiting for a worker.
    Ready {
        attempt: u32,
    },
    /// Pushed to a worker that has not yet said `Started`.
    Assigned {
        worker: WorkerId,
        attempt: u32,
    },
    /// The worker owns the execution.
    Running {
        worker: WorkerId,
        attempt: u32,
        started: Instant,
    },
    Succeeded(Ended),
    Failed(Ended),
    TimedOut(Ended),
    Cancelled(Ended),
    /// Never ran because a need did not succeed.
    Skipped {
        reason: String,
    },
}

/// How the worker says an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

/// Something that happens to a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every need succeeded: it becomes ready to run as `attempt` (1, or
    /// the next after a journal's last when a run is resumed).
    NeedsMet { attempt: u32 },
    /// Every need of a gated module succeeded: it waits for a decision.
    AwaitApproval { attempt: u32 },
    /// Its gate was approved: it runs, or, with `gate_only` (no command),
    /// succeeds with `outputs` (the approver's inputs) as it is.
    Approve {
        gate_only: bool,
        outputs: BTreeMap<String, String>,
    },
    /// Its gate was rejected, or expired with `on_timeout = "fail"`: it
    /// fails without running.
    Reject { reason: String },
    /// Its gate expired with `on_timeout = "skip"`: it is skipped.
    SkipGate { reason: String },
    /// A need did not succeed.
    NeedFailed { reason: String },
    /// The hub pushed the module to a worker.
    Assign { worker: WorkerId },
    /// The worker spawned it.
    Start {
        worker: WorkerId,
        attempt: u32,
        at: Instant,
    },
    /// The worker reported the end of an attempt.
    Finish {
        worker: WorkerId,
        outcome: Outcome,
        ended: Ended,
    },
    /// An earlier result stands for running the ready module (its cache
    /// key matched): it succeeds as its current attempt, without a worker.
    /// `ended` is the stored result; its attempt and worker are replaced.
    CacheHit { ended: Ended },
    /// Run the module again as attempt + 1: after a failure with retries
    /// left, or when its worker was lost.
    Retry { attempt: u32, reason: String },
    /// Cancelled by the master before the worker took it over.
    Cancel { reason: String },
    /// No connected worker can ever take the ready module (a capability
    /// nobody has, waited for past its bound): it fails without running.
    NoWorker { reason: String },
    /// The run was cancelled and the holding worker did not confirm within
    /// the grace period: the master stops waiting and calls it cancelled.
    Unanswered { reason: String },
}

/// Why an event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// A report for an older attempt or another worker: ignore it.
    #[error("stale report for attempt {got} (current attempt {current})")]
    Stale { current: u32, got: u32 },
    #[error("illegal transition: {event} while {state}")]
    Illegal { state: String, event: String },
}

/// What a legal event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The module moved to this state.
    Moved(ModuleState),
    /// A repeat of what already happened (a duplicate `Started` or
    /// `Complete`): nothing changes.
    Unchanged,
}

impl ModuleState {
    /// The single transition function.
    pub fn transition(&self, event: &Event) -> Result<Step, TransitionError> {
        use ModuleState as S;
        let moved = |s: ModuleState| Ok(Step::Moved(s));
        match (self, event) {
            (S::Pending, Event::NeedsMet { attempt }) => moved(S::Ready { attempt: *attempt }),
            (S::Pending, Event::NeedFailed { reason }) => moved(S::Skipped {
                reason: reason.clone(),
            }),
            (S::Pending, Event::AwaitApproval { attempt }) => {
                moved(S::AwaitingApproval { attempt: *attempt })
            }
            (S::AwaitingApproval { attempt }, Event::Approve { gate_only, outputs }) => {
                moved(if *gate_only {
                    S::Succeeded(Ended {
                        attempt: *attempt,
                        outputs: outputs.clone(),
                        ..Ended::default()
                    })
                } else {
                    S::Ready { attempt: *attempt }
                })
            }
            (S::AwaitingApproval { attempt }, Event::Reject { reason }) => {
                moved(S::Failed(Ended {
                    attempt: *attempt,
                    reason: Some(reason.clone()),
                    ..Ended::default()
                }))
            }
            (S::AwaitingApproval { .. }, Event::SkipGate { reason }) => moved(S::Skipped {
                reason: reason.clone(),
            }),
            (S::AwaitingApproval { attempt }, Event::Cancel { reason }) => {
                moved(S::Cancelled(Ended {
                    attempt: *attempt,
                    reason: Some(reason.clone()),
                    ..Ended::default()
                }))
            }
            (S::Ready { attempt }, Event::Assign { worker }) => moved(S::Assigned {
                worker: *worker,
                attempt: *attempt,
            }),
            (
                S::Assigned {
                    worker: w,
                    attempt: a,
                },
                Event::Start {
                    worker,
                    attempt,
                    at,
                },
            ) if w == worker && a == attempt => moved(S::Running {
                worker: *w,
                attempt: *a,
                started: *at,
            }),
            (
                S::Running {
                    worker: w,
                    attempt: a,
                    ..
                },
                Event::Start {
                    worker, attempt, ..
                },
            ) if w == worker && a == attempt => Ok(Step::Unchanged),
            // A worker may end an attempt it never started (the shell was
            // missing, the cwd did not exist): accept it from Assigned too.
            (
                S::Assigned {
                    worker: w,
                    attempt: a,
                }
                | S::Running {
                    worker: w,
                    attempt: a,
                    ..
                },
                Event::Finish {
                    worker,
                    outcome,
                    ended,
                },
            ) if w == worker && *a == ended.attempt => {
                let mut ended = ended.clone();
                ended.worker = Some(*w);
                moved(match outcome {
                    Outcome::Succeeded => S::Succeeded(ended),
                    Outcome::Failed => S::Failed(ended),
                    Outcome::TimedOut => S::TimedOut(ended),
                    Outcome::Cancelled => S::Cancelled(ended),
                })
            }
            (
                S::Assigned { attempt: a, .. } | S::Running { attempt: a, .. },
                Event::Retry { attempt, .. },
            ) if a == attempt => moved(S::Ready { attempt: a + 1 }),
            (S::Ready { attempt }, Event::CacheHit { ended }) => moved(S::Succeeded(Ended {
                attempt: *attempt,
                worker: None,
                ..ended.clone()
            })),
            (S::Pending | S::Ready { .. }, Event::Cancel { reason }) => {
                moved(S::Cancelled(Ended {
                    reason: Some(reason.clone()),
                    ..Ended::default()
                }))
            }
            (S::Assigned { worker, attempt }, Event::Cancel { reason }) => {
                moved(S::Cancelled(Ended {
                    attempt: *attempt,
                    worker: Some(*worker),
                    reason: Some(reason.clone()),
                    ..Ended::default()
                }))
            }
            (S::Ready { attempt }, Event::NoWorker { reason }) => moved(S::Failed(Ended {
                attempt: *attempt,
                reason: Some(reason.clone()),
                ..Ended::default()
            })),
            (
                S::Assigned { worker, attempt }
                | S::Running {
                    worker, attempt, ..
                },
                Event::Unanswered { reason },
            ) => moved(S::Cancelled(Ended {
                attempt: *attempt,
                worker: Some(*worker),
                reason: Some(reason.clone()),
                ..Ended::default()
            })),
            // A repeated Complete for the attempt that already ended.
            (terminal, Event::Finish { worker, ended, .. })
                if terminal
                    .ended()
                    .is_some_and(|e| e.attempt == ended.attempt && e.worker == Some(*worker)) =>
            {
                Ok(Step::Unchanged)
            }
            (
                state,
                Event::Start { attempt, .. }
                | Event::Finish {
                    ended: Ended { attempt, .. },
                    ..
                },
            ) if state.attempt().is_some_and(|current| *attempt != current) => {
                Err(TransitionError::Stale {
                    current: state.attempt().unwrap_or(0),
                    got: *attempt,
                })
            }
            (state, event) => Err(TransitionError::Illegal {
                state: state.name().to_owned(),
                event: format!("{event:?}"),
            }),
        }
    }

    /// The attempt this state is about, if any.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            ModuleState::Ready { attempt }
            | ModuleState::AwaitingApproval { attempt }
            | ModuleState::Assigned { attempt, .. }
            | ModuleState::Running { attempt, .. } => Some(*attempt),
            other => other.ended().map(|e| e.attempt),
        }
    }

    /// The worker holding the module, while one does.
    pub fn holder(&self) -> Option<WorkerId> {
        match self {
            ModuleState::Assigned { worker, .. } | ModuleState::Running { worker, .. } => {
                Some(*worker)
            }
            _ => None,
        }
    }

    pub fn ended(&self) -> Option<&Ended> {
        match self {
            ModuleState::Succeeded(e)
            | ModuleState::Failed(e)
            | ModuleState::TimedOut(e)
            | ModuleState::Cancelled(e) => Some(e),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.ended().is_some() || matches!(self, ModuleState::Skipped { .. })
    }

    /// A lower-case word for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ModuleState::Pending => "pending",
            ModuleState::AwaitingApproval { .. } => "awaiting approval",
            ModuleState::Ready { .. } => "ready",
            ModuleState::Assigned { .. } => "assigned",
            ModuleState::Running { .. } => "running",
            ModuleState::Succeeded(_) => "succeeded",
            ModuleState::Failed(_) => "failed",
            ModuleState::TimedOut(_) => "timed out",
            ModuleState::Cancelled(_) => "cancelled",
            ModuleState::Skipped { .. } => "skipped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W1: WorkerId = WorkerId(1);
    const W2: WorkerId = WorkerId(2);

    fn ended(attempt: u32) -> Ended {
        Ended {
            attempt,
            exit_code: Some(0),
            ..Ended::default()
        }
    }

    fn finish(worker: WorkerId, outcome: Outcome, attempt: u32) -> Event {
        Event::Finish {
            worker,
            outcome,
            ended: ended(attempt),
        }
    }

    fn with_worker(mut e: Ended, w: WorkerId) -> Ended {
        e.worker = Some(w);
        e
    }

    /// Applies `event` to `from` and compares with `expected`.
    fn check(from: ModuleState, event: Event, expected: Result<Step, &str>) {
        let got = from.transition(&event);
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{from:?} + {event:?}"),
            (Err(e), Err(kind)) => assert!(
                format!("{e:?}").starts_with(kind),
                "{from:?} + {event:?}: {e:?} is not {kind}"
            ),
            (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn every_legal_transition() {
        let now = Instant::now();
        let running = ModuleState::Running {
            worker: W1,
            attempt: 1,
            started: now,
        };
        let assigned = ModuleState::Assigned {
            worker: W1,
            attempt: 1,
        };
        let moved = |s| Ok(Step::Moved(s));
        check(
            ModuleState::Pending,
            Event::NeedsMet { attempt: 1 },
            moved(ModuleState::Ready { attempt: 1 }),
        );
        check(
            ModuleState::Pending,
            Event::NeedsMet { attempt: 3 },
            moved(ModuleState::Ready { attempt: 3 }),
        );
        check(
            ModuleState::Pending,
            Event::NeedFailed {
                reason: "need 'a' failed".into(),
            },
            moved(ModuleState::Skipped {
                reason: "need 'a' failed".into(),
            }),
        );
        check(
            ModuleState::Ready { attempt: 2 },
            Event::Assign { worker: W1 },
            moved(ModuleState::Assigned {
                worker: W1,
                attempt: 2,
            }),
        );
        check(
            assigned.clone(),
            Event::Start {
                worker: W1,
                attempt: 1,
                at: now,
            },
            moved(running.clone()),
        );
        check(
            running.clone(),
            Event::Start {
                worker: W1,
                attempt: 1,
                at: now,
            },
            Ok(Step::Unchanged),
        );
        type Terminal = fn(Ended) -> ModuleState;
        let outcomes: [(Outcome, Terminal); 4] = [
            (Outcome::Succeeded, ModuleState::Succeeded),
            (Outcome::Failed, ModuleState::Failed),
            (Outcome::TimedOut, ModuleState::TimedOut),
            (Outcome::Cancelled, ModuleState::Cancelled),
        ];
        for (outcome, state) in outcomes {
            check(
                running.clone(),
                finish(W1, outcome, 1),
                moved(state(with_worker(ended(1), W1))),
            );
            check(
                assigned.clone(),
                finish(W1, outcome, 1),
                moved(state(with_worker(ended(1), W1))),
            );
            // The same report again changes nothing.
            check(
                state(with_worker(ended(1), W1)),
                finish(W1, outcome, 1),
                Ok(Step::Unchanged),
            );
        }
        check(
            running.clone(),
            Event::Retry {
                attempt: 1,
                reason: "lost".into(),
            },
            moved(ModuleState::Ready { attempt: 2 }),
        );
        check(
            assigned.clone(),
            Event::Retry {
                attempt: 1,
                reason: "lost".into(),
            },
            moved(ModuleState::Ready { attempt: 2 }),
        );
        let cancelled = |attempt, worker| {
            moved(ModuleState::Cancelled(Ended {
                attempt,
                worker,
                reason: Some("stop".into()),
                ..Ended::default()
            }))
        };
        check(
            ModuleState::Pending,
            Event::Cancel {
                reason: "stop".into(),
            },
            cancelled(0, None),
        );
        check(
            ModuleState::Ready { attempt: 1 },
            Event::Cancel {
                reason: "stop".into(),
            },
            cancelled(0, None),
        );
        check(
            assigned.clone(),
            Event::Cancel {
                reason: "stop".into(),
            },
            cancelled(1, Some(W1)),
        );
        for held in [assigned, running] {
            check(
                held,
                Event::Unanswered {
                    reason: "stop".into(),
                },
                cancelled(1, Some(W1)),
            );
        }
        // A cached result keeps what it held but takes the current
        // attempt, and no worker ran it.
        let stored = Ended {
            attempt: 7,
            worker: Some(W2),
            duration: Some(Duration::from_secs(40)),
            outputs: BTreeMap::from([("version".into(), "1.2".into())]),
            ..ended(7)
        };
        check(
            ModuleState::Ready { attempt: 2 },
            Event::CacheHit {
                ended: stored.clone(),
            },
            moved(ModuleState::Succeeded(Ended {
                attempt: 2,
                worker: None,
                ..stored
            })),
        );
        check(
            ModuleState::Ready { attempt: 3 },
            Event::NoWorker {
                reason: "nobody has gpu".into(),
            },
            moved(ModuleState::Failed(Ended {
                attempt: 3,
                reason: Some("nobody has gpu".into()),
                ..Ended::default()
            })),
        );
    }

    #[test]
    fn illegal_and_stale_transitions_are_refused() {
        let now = Instant::now();
        let running2 = ModuleState::Running {
            worker: W2,
            attempt: 2,
            started: now,
        };
        // A late report from attempt 1 never overwrites attempt 2.
        check(
            running2.clone(),
            finish(W1, Outcome::Succeeded, 1),
            Err("Stale"),
        );
        check(
            running2.clone(),
            Event::Start {
                worker: W1,
                attempt: 1,
                at: now,
            },
            Err("Stale"),
        );
        check(
            ModuleState::Succeeded(with_worker(ended(2), W2)),
            finish(W1, Outcome::Failed, 1),
            Err("Stale"),
        );
        // The right attempt from the wrong worker.
        check(
            running2.clone(),
            finish(W1, Outcome::Succeeded, 2),
            Err("Illegal"),
        );
        // Running modules are cancelled by their worker, not by the master.
        check(
            running2,
            Event::Cancel { reason: "x".into() },
            Err("Illegal"),
        );
        check(
            ModuleState::Pending,
            Event::Assign { worker: W1 },
            Err("Illegal"),
        );
        check(
            ModuleState::Ready { attempt: 1 },
            Event::Start {
                worker: W1,
                attempt: 1,
                at: now,
            },
            Err("Illegal"),
        );
        check(
            ModuleState::Ready { attempt: 1 },
            Event::NeedsMet { attempt: 1 },
            Err("Illegal"),
        );
        // Only a ready module can lack a worker; only a held one can leave
        // a cancel unanswered.
        check(
            ModuleState::Pending,
            Event::NoWorker { reason: "x".into() },
            Err("Illegal"),
        );
        check(
            ModuleState::Ready { attempt: 1 },
            Event::Unanswered { reason: "x".into() },
            Err("Illegal"),
        );
        check(
            ModuleState::Skipped { reason: "x".into() },
            Event::NeedsMet { attempt: 1 },
            Err("Illegal"),
        );
        // Only a ready module can be finished from the cache: not one
        // whose needs are not met, nor one a worker holds, nor one that
        // ended already.
        for state in [
            ModuleState::Pending,
            ModuleState::Assigned {
                worker: W1,
                attempt: 1,
            },
            ModuleState::Running {
                worker: W1,
                attempt: 1,
                started: now,
            },
            ModuleState::Succeeded(ended(1)),
            ModuleState::Failed(ended(1)),
            ModuleState::Skipped { reason: "x".into() },
        ] {
            check(state, Event::CacheHit { ended: ended(1) }, Err("Illegal"));
        }
        check(
            ModuleState::Succeeded(ended(1)),
            Event::Cancel { reason: "x".into() },
            Err("Illegal"),
        );
        check(
            ModuleState::Failed(ended(1)),
            Event::Retry {
                attempt: 1,
                reason: "x".into(),
            },
            Err("Illegal"),
        );
        check(
            ModuleState::Pending,
            Event::Retry {
                attempt: 1,
                reason: "x".into(),
            },
            Err("Illegal"),
        );
    }

    #[test]
    fn a_gate_waits_then_runs_succeeds_fails_or_is_skipped() {
        let moved = |s| Ok(Step::Moved(s));
        let waiting = ModuleState::AwaitingApproval { attempt: 2 };
        check(
            ModuleState::Pending,
            Event::AwaitApproval { attempt: 2 },
            moved(waiting.clone()),
        );
        check(
            waiting.clone(),
            Event::Approve {
                gate_only: false,
                outputs: BTreeMap::new(),
            },
            moved(ModuleState::Ready { attempt: 2 }),
        );
        let inputs: BTreeMap<String, String> = [("ticket".to_owned(), "OPS-12".to_owned())].into();
        check(
            waiting.clone(),
            Event::Approve {
                gate_only: true,
                outputs: inputs.clone(),
            },
            moved(ModuleState::Succeeded(Ended {
                attempt: 2,
                outputs: inputs,
                ..Ended::default()
            })),
        );
        check(
            waiting.clone(),
            Event::Reject {
                reason: "rejected by alice: not today".into(),
            },
            moved(ModuleState::Failed(Ended {
                attempt: 2,
                reason: Some("rejected by alice: not today".into()),
                ..Ended::default()
            })),
        );
        check(
            waiting.clone(),
            Event::SkipGate {
                reason: "expired".into(),
            },
            moved(ModuleState::Skipped {
                reason: "expired".into(),
            }),
        );
        check(
            waiting.clone(),
            Event::Cancel { reason: "c".into() },
            moved(ModuleState::Cancelled(Ended {
                attempt: 2,
                reason: Some("c".into()),
                ..Ended::default()
            })),
        );
        assert_eq!(waiting.name(), "awaiting approval");
        assert_eq!(waiting.attempt(), Some(2));
        assert!(!waiting.is_terminal());
        assert_eq!(waiting.holder(), None);
    }

    #[test]
    fn a_gate_is_decided_only_while_it_waits() {
        let now = Instant::now();
        let approve = Event::Approve {
            gate_only: false,
            outputs: BTreeMap::new(),
        };
        let reject = Event::Reject {
            reason: "no".into(),
        };
        let waiting = ModuleState::AwaitingApproval { attempt: 1 };
        for state in [
            ModuleState::Pending,
            ModuleState::Ready { attempt: 1 },
            ModuleState::Running {
                worker: W1,
                attempt: 1,
                started: now,
            },
            ModuleState::Succeeded(ended(1)),
            ModuleState::Failed(ended(1)),
            ModuleState::Skipped { reason: "x".into() },
        ] {
            check(state.clone(), approve.clone(), Err("Illegal"));
            check(state.clone(), reject.clone(), Err("Illegal"));
            check(
                state,
                Event::SkipGate { reason: "x".into() },
                Err("Illegal"),
            );
        }
        // A waiting gate holds no worker: nothing can be assigned, started
        // or finished, and it does not wait twice.
        check(
            waiting.clone(),
            Event::Assign { worker: W1 },
            Err("Illegal"),
        );
        check(
            waiting.clone(),
            Event::Start {
                worker: W1,
                attempt: 1,
                at: now,
            },
            Err("Illegal"),
        );
        check(
            waiting.clone(),
            finish(W1, Outcome::Succeeded, 1),
            Err("Illegal"),
        );
        check(
            waiting.clone(),
            Event::NeedsMet { attempt: 1 },
            Err("Illegal"),
        );
        check(
            waiting.clone(),
            Event::AwaitApproval { attempt: 1 },
            Err("Illegal"),
        );
        check(
            waiting,
            Event::NoWorker { reason: "x".into() },
            Err("Illegal"),
        );
        check(
            ModuleState::Ready { attempt: 1 },
            Event::AwaitApproval { attempt: 1 },
            Err("Illegal"),
        );
    }
}
