//! A run: the plan plus one [`ModuleState`] per module. Every change goes
//! through [`ModuleState::transition`]; `Run` adds what follows from a
//! change (dependents become ready or are skipped, failures retry while
//! retries remain) and keeps the ready set so dispatch never scans the
//! whole plan.

use std::collections::BTreeSet;

use crate::plan::{ModuleIndex, Plan};
use crate::state::{Ended, Event, ModuleState, Outcome, Step, TransitionError, WorkerId};

/// How many times a module may lose its worker before it fails: a budget
/// apart from `retries`, which is for a command that fails.
pub const DEFAULT_LOST_WORKER_RETRIES: u32 = 2;

/// A module that moved, and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub module: ModuleIndex,
    pub state: ModuleState,
    /// Why, when the new state does not say it itself (a retry).
    pub note: Option<String>,
}

#[derive(Debug)]
pub struct Run {
    plan: Plan,
    states: Vec<ModuleState>,
    /// Needs of each module that have not succeeded yet.
    waiting: Vec<usize>,
    ready: BTreeSet<ModuleIndex>,
    unfinished: usize,
    lost: Vec<u32>,
    lost_worker_retries: u32,
    /// Set by `cancel_all`: from then on nothing is retried, and a module
    /// handed back by a lost worker is cancelled instead of made ready.
    cancelled: Option<String>,
}

impl Run {
    /// Starts a run: modules without needs become ready at once.
    pub fn new(plan: Plan) -> (Run, Vec<Change>) {
        let n = plan.len();
        let mut run = Run {
            waiting: plan.modules.iter().map(|m| m.needs.len()).collect(),
            states: vec![ModuleState::Pending; n],
            ready: BTreeSet::new(),
            unfinished: n,
            lost: vec![0; n],
            lost_worker_retries: DEFAULT_LOST_WORKER_RETRIES,
            cancelled: None,
            plan,
        };
        let mut changes = Vec::new();
        for i in 0..n {
            if run.waiting[i] == 0 {
                run.apply(i, Event::NeedsMet, &mut changes)
                    .expect("a new module is pending");
            }
        }
        (run, changes)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn state(&self, module: ModuleIndex) -> &ModuleState {
        &self.states[module]
    }

    pub fn states(&self) -> &[ModuleState] {
        &self.states
    }

    /// Ready modules, in plan (topological) order.
    pub fn ready(&self) -> impl Iterator<Item = ModuleIndex> + '_ {
        self.ready.iter().copied()
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// True once every module reached a terminal state.
    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// True when every module succeeded.
    pub fn succeeded(&self) -> bool {
        self.states
            .iter()
            .all(|s| matches!(s, ModuleState::Succeeded(_)))
    }

    /// Applies one event and everything that follows from it.
    pub fn handle(
        &mut self,
        module: ModuleIndex,
        event: Event,
    ) -> Result<Vec<Change>, TransitionError> {
        let mut changes = Vec::new();
        let event = match event {
            Event::Finish {
                worker,
                outcome: outcome @ (Outcome::Failed | Outcome::TimedOut),
                ended,
            } if self.may_retry(module, &ended) => {
                // Check the report is current before turning it into a retry.
                let finish = Event::Finish {
                    worker,
                    outcome,
                    ended: ended.clone(),
                };
                if self.states[module].transition(&finish)? == Step::Unchanged {
                    return Ok(changes);
                }
                Event::Retry {
                    attempt: ended.attempt,
                    reason: format!(
                        "attempt {} {}; retrying",
                        ended.attempt,
                        ended.reason.as_deref().unwrap_or("failed")
                    ),
                }
            }
            other => other,
        };
        self.apply(module, event, &mut changes)?;
        Ok(changes)
    }

    fn may_retry(&self, module: ModuleIndex, ended: &Ended) -> bool {
        let budget = self.plan.modules[module]
            .retries
            .saturating_add(self.lost[module]);
        self.cancelled.is_none() && ended.attempt <= budget
    }

    /// True once `cancel_all` was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_some()
    }

    /// Hands back every module `worker` held: each runs again elsewhere
    /// while its lost-worker budget lasts, and fails after that.
    pub fn worker_lost(&mut self, worker: WorkerId) -> Vec<Change> {
        let mut changes = Vec::new();
        let held: Vec<ModuleIndex> = (0..self.states.len())
            .filter(|&i| self.states[i].holder() == Some(worker))
            .collect();
        for module in held {
            let attempt = self.states[module]
                .attempt()
                .expect("a held module has an attempt");
            let event = if self.lost[module] < self.lost_worker_retries {
                self.lost[module] += 1;
                Event::Retry {
                    attempt,
                    reason: format!("worker {worker} was lost during attempt {attempt}"),
                }
            } else {
                Event::Finish {
                    worker,
                    outcome: Outcome::Failed,
                    ended: Ended {
                        attempt,
                        reason: Some(format!(
                            "lost its worker {} times; not retrying",
                            self.lost[module] + 1
                        )),
                        ..Ended::default()
                    },
                }
            };
            self.apply(module, event, &mut changes)
                .expect("a held module can be retried or failed");
            if let Some(reason) = self.cancelled.clone() {
                if matches!(self.states[module], ModuleState::Ready { .. }) {
                    self.apply(module, Event::Cancel { reason }, &mut changes)
                        .expect("a ready module can be cancelled");
                }
            }
        }
        changes
    }

    /// Cancels every module the master still owns, and returns the
    /// running ones, whose workers must be told.
    pub fn cancel_all(&mut self, reason: &str) -> (Vec<Change>, Vec<(ModuleIndex, WorkerId, u32)>) {
        self.cancelled = Some(reason.to_owned());
        let mut changes = Vec::new();
        let mut running = Vec::new();
        for module in 0..self.states.len() {
            match &self.states[module] {
                ModuleState::Running {
                    worker, attempt, ..
                } => running.push((module, *worker, *attempt)),
                state if state.is_terminal() => {}
                _ => {
                    let event = Event::Cancel {
                        reason: reason.to_owned(),
                    };
                    self.apply(module, event, &mut changes)
                        .expect("the master owns modules that are not running");
                }
            }
        }
        (changes, running)
    }

    fn apply(
        &mut self,
        module: ModuleIndex,
        event: Event,
        changes: &mut Vec<Change>,
    ) -> Result<(), TransitionError> {
        let mut work = vec![(module, event)];
        while let Some((module, event)) = work.pop() {
            let next = match self.states[module].transition(&event)? {
                Step::Moved(next) => next,
                Step::Unchanged => continue,
            };
            let was_terminal = self.states[module].is_terminal();
            match &next {
                ModuleState::Ready { .. } => {
                    self.ready.insert(module);
                }
                _ => {
                    self.ready.remove(&module);
                }
            }
            if next.is_terminal() && !was_terminal {
                self.unfinished -= 1;
                let id = &self.plan.modules[module].id;
                for &dependent in self.plan.dependents(module) {
                    if !matches!(self.states[dependent], ModuleState::Pending) {
                        continue;
                    }
                    if matches!(next, ModuleState::Succeeded(_)) {
                        self.waiting[dependent] -= 1;
                        if self.waiting[dependent] == 0 {
                            work.push((dependent, Event::NeedsMet));
                        }
                    } else {
                        let reason = format!("need '{id}' {}", next.name());
                        work.push((dependent, Event::NeedFailed { reason }));
                    }
                }
            }
            let note = match event {
                Event::Retry { reason, .. } => Some(reason),
                _ => None,
            };
            self.states[module] = next.clone();
            changes.push(Change {
                module,
                state: next,
                note,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse_pipeline;
    use std::time::Instant;

    const W1: WorkerId = WorkerId(1);
    const W2: WorkerId = WorkerId(2);

    fn diamond() -> Run {
        let plan = parse_pipeline(
            "t.toml",
            r#"
[modules.a]
run = "a"
[modules.b]
run = "b"
needs = ["a"]
retries = 1
[modules.c]
run = "c"
needs = ["a"]
[modules.d]
run = "d"
needs = ["b", "c"]
[modules.e]
run = "e"
"#,
        )
        .unwrap();
        Run::new(plan).0
    }

    fn run_to_end(
        run: &mut Run,
        m: ModuleIndex,
        worker: WorkerId,
        outcome: Outcome,
    ) -> Vec<Change> {
        let attempt = run.state(m).attempt().unwrap();
        run.handle(m, Event::Assign { worker }).unwrap();
        run.handle(
            m,
            Event::Start {
                worker,
                attempt,
                at: Instant::now(),
            },
        )
        .unwrap();
        run.handle(
            m,
            Event::Finish {
                worker,
                outcome,
                ended: Ended {
                    attempt,
                    ..Ended::default()
                },
            },
        )
        .unwrap()
    }

    fn names(run: &Run) -> Vec<&'static str> {
        run.states().iter().map(ModuleState::name).collect()
    }

    #[test]
    fn diamond_runs_in_order() {
        let mut run = diamond();
        assert_eq!(run.ready().collect::<Vec<_>>(), [0, 4]);
        run_to_end(&mut run, 0, W1, Outcome::Succeeded);
        assert_eq!(run.ready().collect::<Vec<_>>(), [1, 2, 4]);
        run_to_end(&mut run, 1, W1, Outcome::Succeeded);
        assert!(matches!(run.state(3), ModuleState::Pending));
        run_to_end(&mut run, 2, W2, Outcome::Succeeded);
        assert_eq!(run.ready().collect::<Vec<_>>(), [3, 4]);
        run_to_end(&mut run, 3, W2, Outcome::Succeeded);
        run_to_end(&mut run, 4, W2, Outcome::Succeeded);
        assert!(run.is_finished());
        assert!(run.succeeded());
    }

    #[test]
    fn failure_skips_dependents_and_independent_modules_go_on() {
        let mut run = diamond();
        run_to_end(&mut run, 0, W1, Outcome::Succeeded);
        let changes = run_to_end(&mut run, 2, W1, Outcome::Failed);
        assert_eq!(changes.len(), 2);
        assert_eq!(
            run.state(3),
            &ModuleState::Skipped {
                reason: "need 'c' failed".into()
            }
        );
        assert_eq!(
            names(&run),
            ["succeeded", "ready", "failed", "skipped", "ready"]
        );
        run_to_end(&mut run, 1, W1, Outcome::Succeeded);
        run_to_end(&mut run, 4, W1, Outcome::Succeeded);
        assert!(run.is_finished());
        assert!(!run.succeeded());
    }

    #[test]
    fn retries_then_fails() {
        let mut run = diamond();
        run_to_end(&mut run, 0, W1, Outcome::Succeeded);
        let changes = run_to_end(&mut run, 1, W1, Outcome::Failed);
        assert_eq!(changes[0].state, ModuleState::Ready { attempt: 2 });
        assert!(changes[0].note.as_deref().unwrap().contains("retrying"));
        run_to_end(&mut run, 1, W2, Outcome::TimedOut);
        assert_eq!(run.state(1).name(), "timed out");
        assert_eq!(run.state(3).name(), "skipped");
    }

    #[test]
    fn lost_worker_requeues_then_fails_and_stale_reports_are_refused() {
        let mut run = diamond();
        run.handle(0, Event::Assign { worker: W1 }).unwrap();
        run.handle(
            0,
            Event::Start {
                worker: W1,
                attempt: 1,
                at: Instant::now(),
            },
        )
        .unwrap();
        let changes = run.worker_lost(W1);
        assert_eq!(changes[0].state, ModuleState::Ready { attempt: 2 });
        // The lost worker's late report for attempt 1 is stale.
        let late = Event::Finish {
            worker: W1,
            outcome: Outcome::Succeeded,
            ended: Ended {
                attempt: 1,
                ..Ended::default()
            },
        };
        assert!(matches!(
            run.handle(0, late),
            Err(TransitionError::Stale { current: 2, got: 1 })
        ));
        run.handle(0, Event::Assign { worker: W2 }).unwrap();
        run.worker_lost(W2);
        run.handle(0, Event::Assign { worker: W1 }).unwrap();
        let changes = run.worker_lost(W1);
        assert_eq!(run.state(0).name(), "failed");
        assert_eq!(
            changes.len(),
            4,
            "a fails; b, c and then d are skipped: {changes:?}"
        );
    }

    #[test]
    fn cancel_all_keeps_running_modules_for_their_workers() {
        let mut run = diamond();
        run.handle(0, Event::Assign { worker: W1 }).unwrap();
        run.handle(
            0,
            Event::Start {
                worker: W1,
                attempt: 1,
                at: Instant::now(),
            },
        )
        .unwrap();
        run.handle(4, Event::Assign { worker: W2 }).unwrap();
        let (_, running) = run.cancel_all("fail-fast");
        assert_eq!(running, [(0, W1, 1)]);
        assert_eq!(
            names(&run),
            ["running", "cancelled", "cancelled", "skipped", "cancelled"]
        );
        run.handle(
            0,
            Event::Finish {
                worker: W1,
                outcome: Outcome::Cancelled,
                ended: Ended {
                    attempt: 1,
                    ..Ended::default()
                },
            },
        )
        .unwrap();
        assert!(run.is_finished());
    }

    #[test]
    fn nothing_is_retried_once_the_run_is_cancelled() {
        let mut run = diamond();
        run_to_end(&mut run, 0, W1, Outcome::Succeeded);
        for (m, w) in [(1, W1), (2, W2)] {
            run.handle(m, Event::Assign { worker: w }).unwrap();
            let start = Event::Start {
                worker: w,
                attempt: 1,
                at: Instant::now(),
            };
            run.handle(m, start).unwrap();
        }
        run.cancel_all("fail-fast");
        // b has retries left, but a failure during a cancel is final.
        let ended = Ended {
            attempt: 1,
            ..Ended::default()
        };
        let failed = Event::Finish {
            worker: W1,
            outcome: Outcome::Failed,
            ended,
        };
        run.handle(1, failed).unwrap();
        assert_eq!(run.state(1).name(), "failed");
        // A module handed back by a lost worker is cancelled, not re-queued.
        run.worker_lost(W2);
        assert_eq!(run.state(2).name(), "cancelled");
        assert!(run.is_finished());
    }
}
