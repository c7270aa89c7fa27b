//! A run: the plan plus one [`ModuleState`] per module. Every change goes
//! through [`ModuleState::transition`]; `Run` adds what follows from a
//! change (dependents become ready or are skipped, failures retry while
//! retries remain) and keeps the ready set so dispatch never scans the
//! whole plan.

use std::collections::BTreeSet;

use crate::plan::{ModuleIndex, Plan};
use crate::state::{Ended, Event, ModuleState, Outcome, Step, TransitionError, WorkerId};

/// Bounds a run applies on top of each module's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A module whose worker is lost this many times fails as a poison
    /// module (one that may be what kills its workers); before that each
    /// loss runs it again. A budget apart from `retries`, which is for a
    /// command that fails.
    pub max_worker_losses: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_worker_losses: 3,
        }
    }
}

/// The note of a module that succeeded from the cache: its state alone
/// (succeeded, no worker) does not tell it from a kept one.
pub const CACHE_HIT_NOTE: &str = "result from the cache";

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
    /// The workers each module lost, by name, oldest first.
    lost: Vec<Vec<String>>,
    /// The attempt each module runs first as: 1, or more when resumed.
    first_attempt: Vec<u32>,
    limits: Limits,
    /// Set by `cancel_all`: from then on nothing is retried, and a module
    /// handed back by a lost worker is cancelled instead of made ready.
    cancelled: Option<String>,
}

impl Run {
    /// Starts a run: modules without needs become ready at once.
    pub fn new(plan: Plan, limits: Limits) -> (Run, Vec<Change>) {
        let first_attempt = vec![1; plan.len()];
        Run::resumed(plan, limits, Vec::new(), first_attempt, "")
    }

    /// Starts a run that continues an earlier one: the `kept` modules
    /// start as succeeded with their earlier result (each reported as a
    /// change noted `kept_note`, in plan order, before the modules that
    /// become ready), and module `i` runs first as attempt
    /// `first_attempt[i]`, so a late report from the earlier run's
    /// workers is stale. Retries count from that first attempt.
    ///
    /// Every need of a kept module must be kept too (a resume keeps a
    /// closed set): a module's dependents would otherwise start while
    /// the need runs again.
    pub fn resumed(
        plan: Plan,
        limits: Limits,
        mut kept: Vec<(ModuleIndex, Ended)>,
        mut first_attempt: Vec<u32>,
        kept_note: &str,
    ) -> (Run, Vec<Change>) {
        let n = plan.len();
        debug_assert_eq!(first_attempt.len(), n, "one first attempt per module");
        first_attempt.resize(n, 1);
        for attempt in &mut first_attempt {
            // Attempt 0 means "never ran"; the first run is 1.
            *attempt = (*attempt).max(1);
        }
        let mut run = Run {
            waiting: plan.modules.iter().map(|m| m.needs.len()).collect(),
            states: vec![ModuleState::Pending; n],
            ready: BTreeSet::new(),
            unfinished: n,
            lost: vec![Vec::new(); n],
            first_attempt,
            limits,
            cancelled: None,
            plan,
        };
        let mut changes = Vec::new();
        kept.sort_by_key(|(module, _)| *module);
        for (module, ended) in kept {
            run.keep(module, ended, kept_note, &mut changes);
        }
        for i in 0..n {
            if run.waiting[i] == 0 && run.states[i] == ModuleState::Pending {
                let event = run.needs_met(i);
                run.apply(i, event, &mut changes)
                    .expect("a new module is pending");
            }
        }
        (run, changes)
    }

    /// Starts `module` as succeeded with an earlier run's result.
    fn keep(&mut self, module: ModuleIndex, ended: Ended, note: &str, changes: &mut Vec<Change>) {
        let Some(ModuleState::Pending) = self.states.get(module) else {
            debug_assert!(false, "module {module} is kept twice or is not in the plan");
            return;
        };
        debug_assert!(
            self.plan.modules[module]
                .needs
                .iter()
                .all(|&need| matches!(self.states[need], ModuleState::Succeeded(_))),
            "module {} is kept but one of its needs runs again",
            self.plan.modules[module].id
        );
        let state = ModuleState::Succeeded(ended);
        self.states[module] = state.clone();
        self.unfinished -= 1;
        for &dependent in self.plan.dependents(module) {
            self.waiting[dependent] -= 1;
        }
        changes.push(Change {
            module,
            state,
            note: Some(note.to_owned()),
        });
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

    /// Each retry and each lost worker buys one more attempt, counted
    /// from the module's first attempt in this run.
    fn may_retry(&self, module: ModuleIndex, ended: &Ended) -> bool {
        let budget = self.plan.modules[module]
            .retries
            .saturating_add(self.lost[module].len() as u32);
        let attempts_made = ended
            .attempt
            .saturating_sub(self.first_attempt[module])
            .saturating_add(1);
        self.cancelled.is_none() && attempts_made <= budget
    }

    /// True once `cancel_all` was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_some()
    }

    /// Why the run was cancelled, once it was.
    pub fn cancel_reason(&self) -> Option<&str> {
        self.cancelled.as_deref()
    }

    /// The modules `worker` holds, with their attempts.
    pub fn held_by(&self, worker: WorkerId) -> Vec<(ModuleIndex, u32)> {
        (0..self.states.len())
            .filter(|&i| self.states[i].holder() == Some(worker))
            .map(|i| (i, self.states[i].attempt().unwrap_or(0)))
            .collect()
    }

    /// Hands back every module `worker` (called `name` in messages) held.
    pub fn worker_lost(&mut self, worker: WorkerId, name: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        for (module, _) in self.held_by(worker) {
            self.lose(module, worker, name, &mut changes);
        }
        changes
    }

    /// Hands back one module its worker no longer has: it runs again
    /// elsewhere, or fails as a poison module once it has lost
    /// `max_worker_losses` workers.
    pub fn module_lost(
        &mut self,
        module: ModuleIndex,
        worker: WorkerId,
        name: &str,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.states[module].holder() == Some(worker) {
            self.lose(module, worker, name, &mut changes);
        }
        changes
    }

    /// Takes back a module assigned to `worker` that it did not start in
    /// time: it runs elsewhere as the next attempt. This counts as losing
    /// the worker, so a worker that takes modules and never starts them
    /// cannot hold one forever.
    pub fn not_started(
        &mut self,
        module: ModuleIndex,
        worker: WorkerId,
        name: &str,
        waited: &str,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if let ModuleState::Assigned {
            worker: holder,
            attempt,
        } = self.states[module]
        {
            if holder == worker {
                let reason =
                    format!("worker {name} did not start attempt {attempt} within {waited}");
                self.give_back(module, worker, name, reason, &mut changes);
            }
        }
        changes
    }

    fn lose(
        &mut self,
        module: ModuleIndex,
        worker: WorkerId,
        name: &str,
        changes: &mut Vec<Change>,
    ) {
        let attempt = self.states[module]
            .attempt()
            .expect("a held module has an attempt");
        let reason = format!("worker {name} was lost during attempt {attempt}");
        self.give_back(module, worker, name, reason, changes);
    }

    /// Hands a held module back for another attempt, or fails it once it
    /// has lost `max_worker_losses` workers.
    fn give_back(
        &mut self,
        module: ModuleIndex,
        worker: WorkerId,
        name: &str,
        reason: String,
        changes: &mut Vec<Change>,
    ) {
        let attempt = self.states[module]
            .attempt()
            .expect("a held module has an attempt");
        self.lost[module].push(name.to_owned());
        let lost = &self.lost[module];
        let event = if (lost.len() as u32) < self.limits.max_worker_losses {
            Event::Retry { attempt, reason }
        } else {
            Event::Finish {
                worker,
                outcome: Outcome::Failed,
                ended: Ended {
                    attempt,
                    reason: Some(format!(
                        "lost its worker {} times ({}): it may be what kills them \
                         (memory, disk, a crash); not retrying",
                        lost.len(),
                        lost.join(", ")
                    )),
                    ..Ended::default()
                },
            }
        };
        self.apply(module, event, changes)
            .expect("a held module can be retried or failed");
        if let Some(reason) = self.cancelled.clone() {
            if matches!(self.states[module], ModuleState::Ready { .. }) {
                self.apply(module, Event::Cancel { reason }, changes)
                    .expect("a ready module can be cancelled");
            }
        }
    }

    /// Finishes a ready module with a result from the cache, without a
    /// worker: it succeeds as its current attempt (`ended` is the stored
    /// result; its attempt and worker are replaced), noted
    /// [`CACHE_HIT_NOTE`], and dependents whose needs are now all met
    /// become ready. Refused, changing nothing, unless the module is ready.
    pub fn cache_hit(
        &mut self,
        module: ModuleIndex,
        ended: Ended,
    ) -> Result<Vec<Change>, TransitionError> {
        let mut changes = Vec::new();
        self.apply(module, Event::CacheHit { ended }, &mut changes)?;
        Ok(changes)
    }

    /// What meeting its needs does to `module`: it becomes ready, or,
    /// behind an approval gate, waits for a decision.
    fn needs_met(&self, module: ModuleIndex) -> Event {
        let attempt = self.first_attempt[module];
        if self.plan.modules[module].approval.is_some() {
            Event::AwaitApproval { attempt }
        } else {
            Event::NeedsMet { attempt }
        }
    }

    /// Decides a module waiting for approval: `event` is `Approve`,
    /// `Reject` or `SkipGate`. Refused, changing nothing, unless the
    /// module is waiting (or the event is another kind).
    pub fn decide_gate(
        &mut self,
        module: ModuleIndex,
        event: Event,
    ) -> Result<Vec<Change>, TransitionError> {
        let gate_event = matches!(
            event,
            Event::Approve { .. } | Event::Reject { .. } | Event::SkipGate { .. }
        );
        if !gate_event || !matches!(self.states[module], ModuleState::AwaitingApproval { .. }) {
            return Err(TransitionError::Illegal {
                state: self.states[module].name().to_owned(),
                event: format!("{event:?}"),
            });
        }
        let mut changes = Vec::new();
        self.apply(module, event, &mut changes)?;
        Ok(changes)
    }

    /// Fails a ready module that no worker can take.
    pub fn no_worker(&mut self, module: ModuleIndex, reason: String) -> Vec<Change> {
        let mut changes = Vec::new();
        self.apply(module, Event::NoWorker { reason }, &mut changes)
            .expect("only ready modules lack a worker");
        changes
    }

    /// After a cancel: every module still held by a worker that did not
    /// confirm in time is called cancelled.
    pub fn give_up_on_workers(&mut self, reason: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        for module in 0..self.states.len() {
            if self.states[module].holder().is_some() {
                let event = Event::Unanswered {
                    reason: reason.to_owned(),
                };
                self.apply(module, event, &mut changes)
                    .expect("a held module can be given up");
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
                            work.push((dependent, self.needs_met(dependent)));
                        }
                    } else {
                        let reason = format!("need '{id}' {}", next.name());
                        work.push((dependent, Event::NeedFailed { reason }));
                    }
                }
            }
            let note = match event {
                Event::Retry { reason, .. } => Some(reason),
                Event::CacheHit { .. } => Some(CACHE_HIT_NOTE.to_owned()),
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
    use std::collections::BTreeMap;
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
        Run::new(plan, Limits::default()).0
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
        let changes = run.worker_lost(W1, "one");
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
        run.worker_lost(W2, "two");
        run.handle(0, Event::Assign { worker: W1 }).unwrap();
        let changes = run.worker_lost(W1, "one");
        assert_eq!(run.state(0).name(), "failed");
        let reason = run.state(0).ended().unwrap().reason.clone().unwrap();
        assert!(
            reason.starts_with("lost its worker 3 times (one, two, one)"),
            "{reason}"
        );
        assert_eq!(
            changes.len(),
            4,
            "a fails; b, c and then d are skipped: {changes:?}"
        );
    }

    #[test]
    fn the_worker_loss_limit_is_configurable_and_single_modules_can_be_lost() {
        let plan = parse_pipeline("t.toml", "[modules.a]\nrun = \"a\"\n").unwrap();
        let limits = Limits {
            max_worker_losses: 1,
        };
        let mut run = Run::new(plan, limits).0;
        run.handle(0, Event::Assign { worker: W1 }).unwrap();
        // Another worker losing it changes nothing.
        assert!(run.module_lost(0, W2, "two").is_empty());
        assert_eq!(run.held_by(W1), [(0, 1)]);
        run.module_lost(0, W1, "one");
        assert_eq!(run.state(0).name(), "failed");
        assert!(run.is_finished());
    }

    #[test]
    fn a_module_not_started_in_time_runs_again_as_the_next_attempt() {
        let plan = parse_pipeline("t.toml", "[modules.a]\nrun = \"a\"\n").unwrap();
        let limits = Limits {
            max_worker_losses: 2,
        };
        let mut run = Run::new(plan, limits).0;
        run.handle(0, Event::Assign { worker: W1 }).unwrap();
        // Only the worker it was assigned to can be blamed.
        assert!(run.not_started(0, W2, "two", "1m").is_empty());
        let changes = run.not_started(0, W1, "one", "1m");
        assert_eq!(changes.len(), 1);
        assert_eq!(*run.state(0), ModuleState::Ready { attempt: 2 });
        assert_eq!(
            changes[0].note.as_deref(),
            Some("worker one did not start attempt 1 within 1m")
        );
        // Once started, it is the worker's: not taken back for being late.
        run.handle(0, Event::Assign { worker: W2 }).unwrap();
        let start = Event::Start {
            worker: W2,
            attempt: 2,
            at: Instant::now(),
        };
        run.handle(0, start).unwrap();
        assert!(run.not_started(0, W2, "two", "1m").is_empty());
        // It counts as a lost worker: a worker that never starts anything
        // cannot keep a module going round forever.
        let mut run = Run::new(run.plan().clone(), limits).0;
        for _ in 0..2 {
            run.handle(0, Event::Assign { worker: W1 }).unwrap();
            run.not_started(0, W1, "one", "1m");
        }
        assert_eq!(run.state(0).name(), "failed");
    }

    #[test]
    fn unplaceable_and_unanswered_modules_end_with_their_reason() {
        let mut run = diamond();
        run.handle(0, Event::Assign { worker: W1 }).unwrap();
        let start = Event::Start {
            worker: W1,
            attempt: 1,
            at: Instant::now(),
        };
        run.handle(0, start).unwrap();
        let changes = run.no_worker(4, "no worker has gpu".into());
        assert_eq!(changes.len(), 1);
        assert_eq!(run.state(4).name(), "failed");
        run.cancel_all("stop");
        let changes = run.give_up_on_workers("no answer");
        assert_eq!(changes.len(), 1);
        assert_eq!(run.state(0).name(), "cancelled");
        assert!(run.is_finished());
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
        run.worker_lost(W2, "two");
        assert_eq!(run.state(2).name(), "cancelled");
        assert!(run.is_finished());
    }

    fn succeeded(attempt: u32) -> Ended {
        Ended {
            attempt,
            exit_code: Some(0),
            ..Ended::default()
        }
    }

    #[test]
    fn kept_modules_do_not_run_and_dependents_start_at_their_first_attempt() {
        let plan = diamond().plan().clone();
        let first_attempt = vec![2, 3, 1, 4, 1];
        let (run, changes) = Run::resumed(
            plan,
            Limits::default(),
            vec![(2, succeeded(1)), (0, succeeded(1))],
            first_attempt,
            "kept from run r1",
        );
        let summary: Vec<_> = changes
            .iter()
            .map(|c| (c.module, c.state.name(), c.note.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "succeeded", Some("kept from run r1")),
                (2, "succeeded", Some("kept from run r1")),
                (1, "ready", None),
                (4, "ready", None),
            ]
        );
        assert_eq!(*run.state(0), ModuleState::Succeeded(succeeded(1)));
        assert_eq!(*run.state(1), ModuleState::Ready { attempt: 3 });
        assert_eq!(*run.state(3), ModuleState::Pending);
        assert_eq!(run.ready().collect::<Vec<_>>(), [1, 4]);
        assert!(!run.is_finished());
    }

    #[test]
    fn a_resumed_dependent_becomes_ready_at_its_first_attempt() {
        let plan = diamond().plan().clone();
        let kept = vec![(0, succeeded(1)), (2, succeeded(1))];
        let (mut run, _) = Run::resumed(plan, Limits::default(), kept, vec![1, 1, 1, 5, 1], "");
        let changes = run_to_end(&mut run, 1, W1, Outcome::Succeeded);
        assert_eq!(changes[1].state, ModuleState::Ready { attempt: 5 });
        run_to_end(&mut run, 3, W1, Outcome::Succeeded);
        assert_eq!(run.state(3).ended().unwrap().attempt, 5);
        run_to_end(&mut run, 4, W1, Outcome::Succeeded);
        assert!(run.is_finished());
        assert!(run.succeeded());
    }

    #[test]
    fn retries_count_from_the_first_attempt() {
        // b has retries = 1: resumed at attempt 3 it may run 3 and 4.
        let plan = diamond().plan().clone();
        let kept = vec![(0, succeeded(1))];
        let (mut run, _) = Run::resumed(plan, Limits::default(), kept, vec![1, 3, 1, 1, 1], "");
        assert_eq!(*run.state(1), ModuleState::Ready { attempt: 3 });
        let changes = run_to_end(&mut run, 1, W1, Outcome::Failed);
        assert_eq!(changes[0].state, ModuleState::Ready { attempt: 4 });
        run_to_end(&mut run, 1, W1, Outcome::Failed);
        assert_eq!(run.state(1).name(), "failed");
        assert_eq!(run.state(1).attempt(), Some(4));
    }

    #[test]
    fn a_lost_worker_buys_one_more_attempt_from_the_first() {
        // e has no retries: resumed at attempt 7, losing its worker once
        // allows attempt 8, and a failure of attempt 8 is final.
        let plan = diamond().plan().clone();
        let (mut run, _) = Run::resumed(plan, Limits::default(), vec![], vec![1, 1, 1, 1, 7], "");
        run.handle(4, Event::Assign { worker: W1 }).unwrap();
        let changes = run.worker_lost(W1, "one");
        assert_eq!(changes[0].state, ModuleState::Ready { attempt: 8 });
        let changes = run_to_end(&mut run, 4, W2, Outcome::Failed);
        assert_eq!(changes[0].state.name(), "failed");
        // The same with attempts counted from 1 keeps its old behaviour.
        let mut fresh = diamond();
        fresh.handle(4, Event::Assign { worker: W1 }).unwrap();
        fresh.worker_lost(W1, "one");
        let changes = run_to_end(&mut fresh, 4, W2, Outcome::Failed);
        assert_eq!(changes[0].state.name(), "failed");
    }

    #[test]
    fn a_run_with_every_module_kept_is_finished_at_once() {
        let plan = diamond().plan().clone();
        let kept = (0..5).rev().map(|m| (m, succeeded(1))).collect();
        let (run, changes) = Run::resumed(plan, Limits::default(), kept, vec![2; 5], "kept");
        assert_eq!(
            changes.iter().map(|c| c.module).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert!(run.is_finished());
        assert!(run.succeeded());
        assert!(!run.has_ready());
    }

    #[test]
    fn a_cache_hit_succeeds_without_a_worker_and_readies_dependents() {
        let mut run = diamond();
        let stored = Ended {
            attempt: 4,
            worker: Some(W2),
            outputs: [("version".to_owned(), "1.2".to_owned())].into(),
            ..succeeded(4)
        };
        let changes = run.cache_hit(0, stored.clone()).unwrap();
        let summary: Vec<_> = changes
            .iter()
            .map(|c| (c.module, c.state.name(), c.note.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "succeeded", Some(CACHE_HIT_NOTE)),
                (2, "ready", None),
                (1, "ready", None),
            ]
        );
        let ended = run.state(0).ended().unwrap();
        assert_eq!((ended.attempt, ended.worker), (1, None));
        assert_eq!(ended.outputs["version"], "1.2");
        assert_eq!(run.ready().collect::<Vec<_>>(), [1, 2, 4]);

        // Refused, and nothing changes, unless the module is ready.
        let before = run.states().to_vec();
        for module in [0, 3] {
            let refused = run.cache_hit(module, stored.clone());
            assert!(
                matches!(refused, Err(TransitionError::Illegal { .. })),
                "{module}: {refused:?}"
            );
        }
        run.handle(4, Event::Assign { worker: W1 }).unwrap();
        assert!(run.cache_hit(4, stored.clone()).is_err());
        assert_eq!(run.states()[..4], before[..4]);

        for module in [1, 2, 3] {
            run.cache_hit(module, stored.clone()).unwrap();
        }
        run_to_end_from_assigned(&mut run, 4, W1);
        assert!(run.is_finished());
        assert!(run.succeeded());
    }

    #[test]
    fn a_cache_hit_in_a_resumed_run_takes_the_first_attempt() {
        let plan = diamond().plan().clone();
        let (mut run, _) = Run::resumed(plan, Limits::default(), vec![], vec![1, 1, 1, 1, 6], "");
        run.cache_hit(4, succeeded(1)).unwrap();
        assert_eq!(run.state(4).attempt(), Some(6));
    }

    /// Starts and finishes `m`, which `worker` was assigned.
    fn run_to_end_from_assigned(run: &mut Run, m: ModuleIndex, worker: WorkerId) {
        let attempt = run.state(m).attempt().unwrap();
        let start = Event::Start {
            worker,
            attempt,
            at: Instant::now(),
        };
        run.handle(m, start).unwrap();
        let finish = Event::Finish {
            worker,
            outcome: Outcome::Succeeded,
            ended: succeeded(attempt),
        };
        run.handle(m, finish).unwrap();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "one of its needs runs again")]
    fn keeping_a_module_whose_need_runs_again_is_a_caller_bug() {
        let plan = diamond().plan().clone();
        Run::resumed(
            plan,
            Limits::default(),
            vec![(1, succeeded(1))],
            vec![1; 5],
            "",
        );
    }

    fn gated() -> Run {
        let plan = parse_pipeline(
            "t.toml",
            r#"
[modules.build]
run = "b"
[modules.deploy]
run = "d"
needs = ["build"]
approval = { approvers = ["alice"] }
[modules.smoke]
run = "s"
needs = ["deploy"]
[modules.gate]
needs = ["build"]
approval = { inputs = ["ticket"] }
[modules.after]
run = "x"
needs = ["gate"]
"#,
        )
        .unwrap();
        Run::new(plan, Limits::default()).0
    }

    #[test]
    fn a_gate_holds_its_dependents_until_approved() {
        let mut run = gated();
        run_to_end(&mut run, 0, W1, Outcome::Succeeded);
        assert_eq!(
            names(&run),
            [
                "succeeded",
                "awaiting approval",
                "pending",
                "awaiting approval",
                "pending"
            ]
        );
        // A waiting gate is not ready: no worker is given it.
        assert!(!run.has_ready());
        assert!(!run.is_finished());
        let approve = Event::Approve {
            gate_only: false,
            outputs: BTreeMap::new(),
        };
        let changes = run.decide_gate(1, approve.clone()).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(run.ready().collect::<Vec<_>>(), [1]);
        // Deciding twice, or a gate that is not waiting, changes nothing.
        assert!(run.decide_gate(1, approve).is_err());
        assert!(run
            .decide_gate(2, Event::Reject { reason: "x".into() })
            .is_err());
        assert!(run.decide_gate(3, Event::Assign { worker: W1 }).is_err());
        // A pure gate succeeds with the approver's inputs as its outputs,
        // and its dependent becomes ready at once.
        let inputs: BTreeMap<String, String> = [("ticket".to_owned(), "OPS-1".to_owned())].into();
        let changes = run
            .decide_gate(
                3,
                Event::Approve {
                    gate_only: true,
                    outputs: inputs.clone(),
                },
            )
            .unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(run.state(3).ended().unwrap().outputs, inputs);
        assert_eq!(run.ready().collect::<Vec<_>>(), [1, 4]);
    }

    #[test]
    fn a_rejected_gate_fails_and_skips_its_dependents() {
        let mut run = gated();
        run_to_end(&mut run, 0, W1, Outcome::Succeeded);
        run.decide_gate(
            1,
            Event::Reject {
                reason: "rejected by alice: not today".into(),
            },
        )
        .unwrap();
        assert_eq!(
            run.state(2),
            &ModuleState::Skipped {
                reason: "need 'deploy' failed".into()
            }
        );
        run.decide_gate(
            3,
            Event::SkipGate {
                reason: "expired".into(),
            },
        )
        .unwrap();
        assert_eq!(
            names(&run),
            ["succeeded", "failed", "skipped", "skipped", "skipped"]
        );
        assert!(run.is_finished());
        assert!(!run.succeeded());
    }

    #[test]
    fn cancelling_the_run_cancels_a_waiting_gate() {
        let mut run = gated();
        run_to_end(&mut run, 0, W1, Outcome::Succeeded);
        let (changes, running) = run.cancel_all("stop");
        assert!(running.is_empty());
        assert!(changes
            .iter()
            .any(|c| c.module == 1 && c.state.name() == "cancelled"));
        assert!(run.is_finished());
    }
}
