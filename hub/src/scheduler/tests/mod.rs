//! The state machine driven with a fake clock: no sockets, no sleeps. Each
//! test feeds inputs at chosen instants and checks the effects in order.

use std::time::{Duration, Instant};

use muster_core::wire::calls::{HubCall, WorkerCall};
use muster_core::wire::types::{
    Assignment, Held, LogStream, Registration, Report, ReportStatus, Resume, Welcome,
};
use muster_core::{parse_pipeline, Limits, WorkerId};
use serde_json::Value;

use super::machine::{Effect, Input, Machine};
use super::{CancelAnswer, Registered, SchedulerSettings};
use crate::events::{RunEvent, Summary};

fn settings() -> SchedulerSettings {
    SchedulerSettings {
        fail_fast: false,
        ping_interval: Duration::from_secs(5),
        capability_timeout: Duration::from_secs(30),
        cancel_grace: Duration::from_secs(10),
        result_grace: Duration::from_secs(5),
        start_timeout: Duration::from_secs(60),
        limits: Limits::default(),
        journal: None,
        resume: None,
        adopt_within: None,
        cache: false,
        compensate: true,
        gate_env: [("GITHUB_ACTOR".to_owned(), "bob".to_owned())].into(),
    }
}

/// A machine and its clock.
struct Hub {
    machine: Machine,
    start: Instant,
    now: Instant,
}

impl Hub {
    fn new(pipeline: &str) -> Hub {
        Hub::with(pipeline, |_| {})
    }

    fn with(pipeline: &str, adjust: impl FnOnce(&mut SchedulerSettings)) -> Hub {
        Hub::starting(pipeline, adjust).0
    }

    /// A machine and the effects of its start.
    fn starting(pipeline: &str, adjust: impl FnOnce(&mut SchedulerSettings)) -> (Hub, Vec<Effect>) {
        let plan = parse_pipeline("muster.toml", pipeline).expect("a valid pipeline");
        let mut settings = settings();
        adjust(&mut settings);
        let start = Instant::now();
        let (machine, effects) = Machine::new(plan, settings, start);
        let hub = Hub {
            machine,
            start,
            now: start,
        };
        (hub, effects)
    }

    /// Moves the clock to `secs` after the start.
    fn at(&mut self, secs: f64) -> &mut Hub {
        let now = self.start + Duration::from_secs_f64(secs);
        assert!(now >= self.now, "the clock only moves forward");
        self.now = now;
        self
    }

    fn input(&mut self, input: Input) -> Vec<Effect> {
        self.machine.handle(self.now, input)
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.input(Input::Tick)
    }

    fn register(&mut self, registration: Registration) -> (Registered, Welcome, Vec<Effect>) {
        let mut effects = self.input(Input::Register { registration });
        let Effect::Welcome(registered, welcome) = effects.remove(0) else {
            panic!("a Register is answered first: {effects:?}")
        };
        (registered, welcome, effects)
    }

    fn join(&mut self, name: &str, capabilities: &[&str], slots: u32) -> (Registered, Vec<Effect>) {
        let (registered, _, effects) = self.register(registration(name, capabilities, slots));
        (registered, effects)
    }

    fn call(&mut self, worker: WorkerId, call: WorkerCall) -> (Result<Value, String>, Vec<Effect>) {
        let mut effects = self.input(Input::Call { worker, call });
        let Effect::Answer(answer) = effects.remove(0) else {
            panic!("a call is answered first: {effects:?}")
        };
        // As the worker reads it.
        (answer.map_err(|refusal| refusal.to_string()), effects)
    }

    fn started(&mut self, worker: WorkerId, module: &str, attempt: u32) -> Vec<Effect> {
        let call = WorkerCall::Started {
            module_id: module.into(),
            attempt,
        };
        let (answer, effects) = self.call(worker, call);
        assert_eq!(answer, Ok(Value::Null), "Started {module}");
        effects
    }

    fn complete(
        &mut self,
        worker: WorkerId,
        module: &str,
        attempt: u32,
        status: ReportStatus,
    ) -> (Result<Value, String>, Vec<Effect>) {
        self.call(
            worker,
            WorkerCall::Complete(report(module, attempt, status)),
        )
    }

    fn disconnect(&mut self, who: Registered, return_in: Option<f64>) -> Vec<Effect> {
        let return_by = return_in.map(|secs| self.now + Duration::from_secs_f64(secs));
        self.input(Input::Disconnected {
            worker: who.worker,
            session: who.session,
            reason: "socket closed".into(),
            return_by,
        })
    }

    fn state(&self, module: &str) -> &'static str {
        let index = self.machine.run.plan().index_of(module).unwrap();
        self.machine.run.state(index).name()
    }

    fn attempt(&self, module: &str) -> Option<u32> {
        let index = self.machine.run.plan().index_of(module).unwrap();
        self.machine.run.state(index).attempt()
    }
}

fn registration(name: &str, capabilities: &[&str], slots: u32) -> Registration {
    Registration {
        name: name.into(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        slots,
        version: String::new(),
        resume: None,
    }
}

fn report(module: &str, attempt: u32, status: ReportStatus) -> Report {
    Report {
        module_id: module.into(),
        attempt,
        status,
        exit_code: Some(if status == ReportStatus::Succeeded {
            0
        } else {
            1
        }),
        outputs: Default::default(),
        error: None,
        duration_ms: 10,
        artifacts: Vec::new(),
    }
}

/// The hub calls among the effects, as (worker, what, module, attempt).
fn calls(effects: &[Effect]) -> Vec<(WorkerId, &'static str, String, u32)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { worker, call } => Some(match call {
                HubCall::Assign(a) => (*worker, "assign", a.module_id.clone(), a.attempt),
                HubCall::Cancel {
                    module_id, attempt, ..
                } => (*worker, "cancel", module_id.clone(), *attempt),
                HubCall::Shutdown { .. } => (*worker, "shutdown", String::new(), 0),
            }),
            _ => None,
        })
        .collect()
}

/// The first `Assign` among the effects, whole.
fn first_assignment(effects: &[Effect]) -> Option<Assignment> {
    effects.iter().find_map(|effect| match effect {
        Effect::Send {
            call: HubCall::Assign(a),
            ..
        } => Some(a.clone()),
        _ => None,
    })
}

fn assigned(effects: &[Effect]) -> Vec<(WorkerId, String)> {
    calls(effects)
        .into_iter()
        .filter(|(_, what, ..)| *what == "assign")
        .map(|(worker, _, module, _)| (worker, module))
        .collect()
}

/// The module states the owner was told of, as (module, state name, note).
fn changes(effects: &[Effect]) -> Vec<(String, &'static str, Option<String>)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Event(RunEvent::Module {
                module,
                state,
                note,
                ..
            }) => Some((module.clone(), state.name(), note.clone())),
            _ => None,
        })
        .collect()
}

fn finished(effects: &[Effect]) -> Option<&Summary> {
    effects.iter().find_map(|effect| match effect {
        Effect::Finished(summary) => Some(summary),
        _ => None,
    })
}

fn reason_of(hub: &Hub, module: &str) -> String {
    let index = hub.machine.run.plan().index_of(module).unwrap();
    let state = hub.machine.run.state(index);
    state
        .ended()
        .and_then(|e| e.reason.clone())
        .unwrap_or_default()
}

#[test]
fn the_worker_with_most_free_slots_gets_work_it_is_capable_of() {
    let mut hub = Hub::new(
        "[modules.gpu]\nrun = \"true\"\nrequires = [\"gpu\"]\n\
         [modules.b]\nrun = \"true\"\n[modules.c]\nrun = \"true\"\n[modules.d]\nrun = \"true\"\n",
    );
    let (small, effects) = hub.join("small", &["os:linux"], 1);
    // The Welcome came first (taken by `join`); then the one slot is filled.
    assert_eq!(assigned(&effects), vec![(small.worker, "b".into())]);
    let (big, effects) = hub.join("big", &["gpu"], 3);
    assert_eq!(
        assigned(&effects),
        vec![
            (big.worker, "gpu".into()),
            (big.worker, "c".into()),
            (big.worker, "d".into())
        ]
    );
    assert!(effects.contains(&Effect::Connected(2)));
}

#[test]
fn a_calls_answer_comes_before_what_follows_from_it() {
    let mut hub =
        Hub::new("[modules.a]\nrun = \"true\"\n[modules.b]\nneeds = [\"a\"]\nrun = \"true\"\n");
    let (w, effects) = hub.join("w", &[], 1);
    assert_eq!(assigned(&effects), vec![(w.worker, "a".into())]);
    hub.started(w.worker, "a", 1);
    let (answer, effects) = hub.complete(w.worker, "a", 1, ReportStatus::Succeeded);
    assert_eq!(answer, Ok(Value::Null));
    assert_eq!(assigned(&effects), vec![(w.worker, "b".into())]);
    hub.started(w.worker, "b", 1);
    let (answer, effects) = hub.complete(w.worker, "b", 1, ReportStatus::Succeeded);
    assert_eq!(answer, Ok(Value::Null));
    // The last report ends the run: Shutdown to the worker, then the summary.
    assert_eq!(
        calls(&effects),
        vec![(w.worker, "shutdown", String::new(), 0)]
    );
    let summary = finished(&effects).expect("the run finished");
    assert!(summary
        .modules
        .iter()
        .all(|m| m.state.name() == "succeeded"));
    assert!(matches!(effects.last(), Some(Effect::Finished(_))));
    assert_eq!(hub.machine.next_deadline(), None);
}

#[test]
fn a_module_nobody_can_take_fails_after_the_capability_timeout() {
    let mut hub = Hub::new("[modules.train]\nrun = \"true\"\nrequires = [\"gpu\"]\n");
    hub.at(1.0).join("cpu", &["os:linux"], 1);
    assert_eq!(hub.at(29.9).tick(), vec![]);
    let effects = hub.at(30.0).tick();
    assert_eq!(changes(&effects)[0].1, "failed");
    let reason = reason_of(&hub, "train");
    assert!(
        reason.starts_with("no worker offers gpu (waited 30s)"),
        "{reason}"
    );
    assert!(reason.contains("workers seen: cpu (os:linux)"), "{reason}");
    assert!(finished(&effects).is_some());
}

#[test]
fn with_no_worker_at_all_the_reason_says_so() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\n");
    hub.at(30.0).tick();
    assert_eq!(reason_of(&hub, "a"), "no worker joined within 30s");
}

#[test]
fn a_capable_worker_joining_in_time_stops_the_capability_clock() {
    let mut hub = Hub::new("[modules.train]\nrun = \"true\"\nrequires = [\"gpu\"]\n");
    let (gpu, effects) = hub.at(10.0).join("gpu", &["gpu"], 1);
    assert_eq!(assigned(&effects), vec![(gpu.worker, "train".into())]);
    hub.at(30.0).tick();
    assert_eq!(hub.state("train"), "assigned");
}

#[test]
fn a_module_not_started_in_time_runs_elsewhere_and_its_worker_is_told() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\n");
    let (lazy, _) = hub.join("lazy", &[], 4);
    let (other, _) = hub.join("other", &[], 1);
    assert_eq!(hub.at(59.0).tick(), vec![]);
    let effects = hub.at(60.0).tick();
    // The worker is told to drop it, and the next attempt goes to the other
    // worker although the first has more free slots.
    assert_eq!(
        calls(&effects),
        vec![
            (lazy.worker, "cancel", "a".into(), 1),
            (other.worker, "assign", "a".into(), 2)
        ]
    );
    assert_eq!(hub.attempt("a"), Some(2));
    // The lazy worker's late Started for attempt 1 is refused, and it is
    // told again to stop that attempt.
    let call = WorkerCall::Started {
        module_id: "a".into(),
        attempt: 1,
    };
    let (answer, effects) = hub.call(lazy.worker, call);
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(
        calls(&effects),
        vec![(lazy.worker, "cancel", "a".into(), 1)]
    );
}

#[test]
fn a_started_module_without_a_result_times_out_after_its_timeout_and_the_grace() {
    let mut hub = Hub::new("[modules.a]\nrun = \"sleep 100\"\ntimeout = \"3s\"\n");
    let (w, _) = hub.join("w", &[], 1);
    hub.at(1.0).started(w.worker, "a", 1);
    assert_eq!(hub.at(8.9).tick(), vec![]);
    let effects = hub.at(9.0).tick();
    assert_eq!(calls(&effects)[0], (w.worker, "cancel", "a".into(), 1));
    assert_eq!(hub.state("a"), "timed out");
    assert_eq!(
        reason_of(&hub, "a"),
        "no result from worker w within the module's timeout (3s) and 5s more"
    );
}

#[test]
fn a_stale_attempt_is_fenced_off() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\n");
    let (first, _) = hub.join("first", &[], 1);
    let (second, _) = hub.join("second", &[], 1);
    let effects = hub.at(60.0).tick();
    assert_eq!(assigned(&effects), vec![(second.worker, "a".into())]);
    hub.started(second.worker, "a", 2);
    // The first worker reports the attempt it was told to drop.
    let (answer, effects) = hub.complete(first.worker, "a", 1, ReportStatus::Succeeded);
    assert_eq!(
        answer,
        Err("module 'a': stale report for attempt 1 (current attempt 2)".into())
    );
    assert_eq!(changes(&effects), vec![]);
    assert_eq!(hub.state("a"), "running");
    // Its log for that attempt is refused too; the holder's goes through.
    let log = |attempt| WorkerCall::Log {
        module_id: "a".into(),
        attempt,
        stream: LogStream::Stdout,
        text: "hello\n".into(),
    };
    let (answer, _) = hub.call(first.worker, log(1));
    assert!(answer.unwrap_err().contains("does not hold"));
    let (answer, effects) = hub.call(second.worker, log(2));
    assert_eq!(answer, Ok(Value::Null));
    assert!(matches!(
        &effects[..],
        [Effect::Event(RunEvent::Log { attempt: 2, .. })]
    ));
}

#[test]
fn a_module_that_loses_its_worker_too_often_fails_as_poison() {
    let mut hub = Hub::new(
        "[modules.crash]\nrun = \"true\"\n[modules.after]\nneeds = [\"crash\"]\nrun = \"true\"\n",
    );
    for round in 1..=3 {
        let (w, effects) = hub.join(&format!("w{round}"), &[], 1);
        assert_eq!(assigned(&effects), vec![(w.worker, "crash".into())]);
        hub.started(w.worker, "crash", round);
        let effects = hub.disconnect(w, None);
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Event(RunEvent::WorkerLeft { .. }))));
        if round < 3 {
            assert_eq!(hub.state("crash"), "ready", "round {round}");
        }
    }
    assert_eq!(hub.state("crash"), "failed");
    assert_eq!(hub.state("after"), "skipped");
    let reason = reason_of(&hub, "crash");
    assert!(reason.contains("3"), "{reason}");
}

#[test]
fn a_worker_back_in_time_keeps_what_both_sides_hold() {
    let mut hub = Hub::new(
        "[modules.kept]\nrun = \"true\"\n[modules.unsent]\nrun = \"true\"\n[modules.forgotten]\nrun = \"true\"\n",
    );
    let (first, welcome, _) = hub.register(registration("w", &[], 3));
    hub.started(first.worker, "kept", 1);
    hub.started(first.worker, "forgotten", 1);
    let effects = hub.at(1.0).disconnect(first, Some(10.0));
    assert!(matches!(
        &effects[..],
        [Effect::Event(RunEvent::WorkerAway { held: 3, within, .. }), Effect::Connected(0)]
            if *within == Duration::from_secs(10)
    ));
    // It comes back holding only `kept`: `unsent` (never started) is sent
    // again, `forgotten` (started, then lost) runs again.
    let mut back = registration("w", &[], 3);
    back.resume = Some(Resume {
        worker_id: welcome.worker_id.clone(),
        key: welcome.resume_key.clone(),
        holding: vec![Held {
            module_id: "kept".into(),
            attempt: 1,
        }],
    });
    let (again, welcome_back, effects) = hub.at(5.0).register(back);
    assert_eq!(again.worker, first.worker);
    assert_ne!(again.session, first.session);
    assert!(welcome_back.resumed);
    assert_eq!(
        welcome_back.keep,
        vec![Held {
            module_id: "kept".into(),
            attempt: 1
        }]
    );
    assert_eq!(
        calls(&effects),
        vec![
            (first.worker, "assign", "unsent".into(), 1),
            (first.worker, "assign", "forgotten".into(), 2)
        ]
    );
    // The older connection's late goodbye changes nothing.
    assert_eq!(hub.disconnect(first, None), vec![]);
    assert_eq!(hub.state("kept"), "running");
    // Nor does the away timer of the earlier session.
    assert_eq!(hub.at(11.0).tick(), vec![]);
}

#[test]
fn a_worker_away_too_long_is_removed_and_its_modules_run_elsewhere() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\n");
    let (w, welcome, _) = hub.register(registration("w", &[], 1));
    hub.started(w.worker, "a", 1);
    hub.disconnect(w, Some(10.0));
    assert_eq!(hub.at(9.9).tick(), vec![]);
    let effects = hub.at(10.0).tick();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Event(RunEvent::WorkerLeft { reason, .. }) if reason == "did not reconnect in time")));
    assert_eq!(hub.state("a"), "ready");
    // Coming back now, with the old key, it joins as a new worker.
    let mut late = registration("w", &[], 1);
    late.resume = Some(Resume {
        worker_id: welcome.worker_id,
        key: welcome.resume_key,
        holding: Vec::new(),
    });
    let (again, welcome, effects) = hub.register(late);
    assert_ne!(again.worker, w.worker);
    assert!(!welcome.resumed);
    assert_eq!(assigned(&effects), vec![(again.worker, "a".into())]);
}

#[test]
fn a_wrong_resume_key_joins_anew() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\nrequires = [\"x\"]\n");
    let (w, welcome, _) = hub.register(registration("w", &[], 1));
    let mut thief = registration("w", &[], 1);
    thief.resume = Some(Resume {
        worker_id: welcome.worker_id,
        key: "0".repeat(32),
        holding: Vec::new(),
    });
    let (other, welcome, _) = hub.register(thief);
    assert_ne!(other.worker, w.worker);
    assert!(!welcome.resumed);
}

#[test]
fn cancel_tells_running_workers_and_gives_up_on_them_after_the_grace() {
    let mut hub =
        Hub::new("[modules.a]\nrun = \"true\"\n[modules.b]\nneeds = [\"a\"]\nrun = \"true\"\n");
    let (w, _) = hub.join("w", &[], 1);
    hub.started(w.worker, "a", 1);
    let effects = hub.at(2.0).input(Input::Cancel {
        reason: "Ctrl-C".into(),
    });
    assert_eq!(effects[0], Effect::Cancelled(CancelAnswer::Cancelling));
    assert_eq!(calls(&effects), vec![(w.worker, "cancel", "a".into(), 1)]);
    assert_eq!(hub.state("b"), "cancelled");
    let effects = hub.input(Input::Cancel {
        reason: "again".into(),
    });
    assert_eq!(
        effects,
        vec![Effect::Cancelled(CancelAnswer::AlreadyCancelled(
            "Ctrl-C".into()
        ))]
    );
    assert_eq!(hub.at(11.9).tick(), vec![]);
    let effects = hub.at(12.0).tick();
    assert_eq!(hub.state("a"), "cancelled");
    assert!(reason_of(&hub, "a").contains("did not confirm the cancel within 10s"));
    let summary = finished(&effects).expect("the run ends");
    assert_eq!(summary.cancelled.as_deref(), Some("Ctrl-C"));
    let effects = hub.input(Input::Cancel {
        reason: "late".into(),
    });
    assert_eq!(effects, vec![Effect::Cancelled(CancelAnswer::Finished)]);
}

#[test]
fn a_confirmed_cancel_ends_the_run_before_the_grace() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\n");
    let (w, _) = hub.join("w", &[], 1);
    hub.started(w.worker, "a", 1);
    hub.input(Input::Cancel {
        reason: "stop".into(),
    });
    let (answer, effects) = hub.complete(w.worker, "a", 1, ReportStatus::Cancelled);
    assert_eq!(answer, Ok(Value::Null));
    assert!(finished(&effects).is_some());
    assert_eq!(hub.machine.next_deadline(), None);
}

#[test]
fn fail_fast_cancels_the_rest_on_the_first_failure() {
    let mut hub = Hub::with(
        "[modules.bad]\nrun = \"false\"\n[modules.slow]\nrun = \"sleep 9\"\n",
        |s| s.fail_fast = true,
    );
    let (w, _) = hub.join("w", &[], 2);
    hub.started(w.worker, "bad", 1);
    hub.started(w.worker, "slow", 1);
    let (_, effects) = hub.complete(w.worker, "bad", 1, ReportStatus::Failed);
    assert_eq!(
        calls(&effects),
        vec![(w.worker, "cancel", "slow".into(), 1)]
    );
    assert_eq!(
        hub.machine.run.cancel_reason(),
        Some("--fail-fast: 'bad' did not succeed")
    );
}

#[test]
fn a_worker_joining_after_the_run_is_told_it_has_finished() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\n");
    let (w, _) = hub.join("w", &[], 1);
    hub.started(w.worker, "a", 1);
    let (answer, _) = hub.complete(w.worker, "a", 1, ReportStatus::Succeeded);
    assert_eq!(answer, Ok(Value::Null));
    let (late, effects) = hub.join("late", &[], 1);
    assert_eq!(
        calls(&effects),
        vec![(late.worker, "shutdown", String::new(), 0)]
    );
    // Nothing is told to the owner after the summary.
    assert!(!effects.iter().any(|e| matches!(e, Effect::Event(_))));
}

#[test]
fn a_second_register_on_a_registered_connection_is_refused() {
    let mut hub = Hub::new("[modules.a]\nrun = \"true\"\nrequires = [\"x\"]\n");
    let (w, _) = hub.join("w", &[], 1);
    let (answer, effects) = hub.call(w.worker, WorkerCall::Register(registration("w", &[], 1)));
    assert_eq!(answer, Err("this connection is already registered".into()));
    assert_eq!(effects, vec![]);
}

/// Journaling on, with `secret` masked.
fn journaled(settings: &mut SchedulerSettings) {
    use muster_core::journal::{RunStart, Settings};
    settings.journal = Some(super::JournalSettings {
        start: RunStart {
            run_id: "r1".into(),
            pipeline: "muster.toml".into(),
            muster_version: "test".into(),
            stint: 1,
            epoch: 1,
            resumed_from: None,
            took_over: None,
            plan_digest: String::new(),
            modules: Vec::new(),
            settings: Settings::default(),
        },
        masker: muster_core::mask::Masker::new(["hunter22"]),
    });
}

/// The journal records among the effects, as (module or kind, state).
fn journaled_records(effects: &[Effect]) -> Vec<(String, String)> {
    use muster_core::journal::Entry;
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Journal(Entry::Module(m)) => {
                Some((m.module.clone(), m.state.word().to_owned()))
            }
            Effect::Journal(Entry::RunStarted(_)) => Some(("run".into(), "started".into())),
            Effect::Journal(Entry::WorkerJoined { name, .. }) => {
                Some((name.clone(), "joined".into()))
            }
            Effect::Journal(Entry::RunFinished { .. }) => Some(("run".into(), "finished".into())),
            Effect::Journal(Entry::CancelRequested { .. }) => {
                Some(("run".into(), "cancel requested".into()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn every_change_is_journaled_with_the_effects_it_holds_back() {
    let (mut hub, effects) = Hub::starting(
        "[modules.a]\nrun = \"a\"\n[modules.b]\nrun = \"b\"\nneeds = [\"a\"]\n",
        journaled,
    );
    assert_eq!(
        journaled_records(&effects),
        [
            ("run".into(), "started".into()),
            ("a".into(), "ready".into())
        ]
    );
    let (w, effects) = hub.join("w", &[], 1);
    assert_eq!(
        journaled_records(&effects),
        [
            ("w".into(), "joined".into()),
            ("a".into(), "assigned".into())
        ]
    );
    hub.started(w.worker, "a", 1);
    let mut done = report("a", 1, ReportStatus::Succeeded);
    done.outputs.insert("token".into(), "is hunter22".into());
    done.outputs.insert("plain".into(), "1".into());
    let (answer, effects) = hub.call(w.worker, WorkerCall::Complete(done));
    assert_eq!(answer, Ok(Value::Null));
    // The answer, the journal record of a's success and b's assignment
    // leave together: the actor sends none before the record is durable.
    assert_eq!(
        journaled_records(&effects),
        [
            ("a".into(), "succeeded".into()),
            ("b".into(), "ready".into()),
            ("b".into(), "assigned".into())
        ]
    );
    let record = effects
        .iter()
        .find_map(|e| match e {
            Effect::Journal(muster_core::journal::Entry::Module(m)) if m.module == "a" => Some(m),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        record.outputs["token"], "is ***",
        "no secret in the journal"
    );
    assert_eq!(record.outputs["plain"], "1");
    assert!(record.masked, "a resume must not trust a masked output");
    // The owner (and through the run, dependents) still get the value.
    let told = effects.iter().find_map(|e| match e {
        Effect::Event(RunEvent::Module {
            state: muster_core::ModuleState::Succeeded(ended),
            ..
        }) => Some(ended.outputs["token"].clone()),
        _ => None,
    });
    assert_eq!(told.as_deref(), Some("is hunter22"));
    hub.started(w.worker, "b", 1);
    let (_, effects) = hub.complete(w.worker, "b", 1, ReportStatus::Succeeded);
    let records = journaled_records(&effects);
    assert_eq!(records.last().unwrap(), &("run".into(), "finished".into()));
}

#[test]
fn without_a_journal_nothing_is_journaled() {
    let (mut hub, effects) = Hub::starting("[modules.a]\nrun = \"a\"\n", |_| {});
    assert!(journaled_records(&effects).is_empty());
    let (_, effects) = hub.join("w", &[], 1);
    assert!(journaled_records(&effects).is_empty());
}

#[test]
fn a_resumed_run_journals_what_it_kept_and_what_waits_to_run_again() {
    use muster_core::journal::{Rerun, Resumption, StateName, Why};
    let pipeline = "[modules.a]\nrun = \"a\"\n[modules.b]\nrun = \"b\"\nneeds = [\"a\"]\n[modules.c]\nrun = \"c\"\nneeds = [\"b\"]\n";
    let (mut hub, effects) = Hub::starting(pipeline, |settings| {
        journaled(settings);
        settings.resume = Some(Resumption {
            in_flight: Vec::new(),
            from_run: "r0".into(),
            kept: vec![(
                0,
                muster_core::Ended {
                    attempt: 1,
                    ..Default::default()
                },
            )],
            first_attempt: vec![2, 3, 1],
            rerun: vec![
                Rerun {
                    module: 1,
                    why: Why::InFlight { attempt: 2 },
                },
                Rerun {
                    module: 2,
                    why: Why::NotSucceeded(StateName::Skipped),
                },
            ],
            approvals: Default::default(),
        });
    });
    assert_eq!(
        journaled_records(&effects),
        [
            ("run".into(), "started".into()),
            ("a".into(), "succeeded".into()),
            ("b".into(), "ready".into()),
            ("c".into(), "pending".into())
        ]
    );
    let kept = effects
        .iter()
        .find_map(|e| match e {
            Effect::Journal(muster_core::journal::Entry::Module(m)) if m.module == "a" => Some(m),
            _ => None,
        })
        .unwrap();
    assert_eq!(kept.kept_from.as_deref(), Some("r0"));
    // b runs again as its next attempt.
    assert_eq!(hub.attempt("b"), Some(3));
    let (_, effects) = hub.join("w", &[], 1);
    assert_eq!(assigned(&effects), [(WorkerId(1), "b".to_owned())]);
}

/// A master taking over a run in which `a` succeeded and `b` (attempt 2)
/// was running on `instance-1`; adopted attempts wait 10 s.
fn taken_over() -> Hub {
    use muster_core::journal::{InFlight, Rerun, Resumption, Why};
    let pipeline = "[modules.a]\nrun = \"a\"\n[modules.b]\nrun = \"b\"\nneeds = [\"a\"]\n[modules.c]\nrun = \"c\"\nneeds = [\"b\"]\n";
    Hub::with(pipeline, |settings| {
        settings.adopt_within = Some(Duration::from_secs(10));
        settings.resume = Some(Resumption {
            from_run: "r".into(),
            kept: vec![(
                0,
                muster_core::Ended {
                    attempt: 1,
                    ..Default::default()
                },
            )],
            first_attempt: vec![2, 3, 1],
            rerun: vec![Rerun {
                module: 1,
                why: Why::InFlight { attempt: 2 },
            }],
            approvals: Default::default(),
            in_flight: vec![InFlight {
                module: 1,
                attempt: 2,
                worker: "instance-1".into(),
            }],
        });
    })
}

#[test]
fn a_new_master_adopts_the_attempt_a_worker_comes_back_with() {
    let mut hub = taken_over();
    assert_eq!(hub.state("b"), "running");
    // Another worker joining meanwhile is not given b.
    let (_, effects) = hub.join("instance-2", &[], 1);
    assert!(assigned(&effects).is_empty());
    // instance-1 comes back from the old master: its ids and key mean
    // nothing here, its name and the attempt it holds do.
    let mut back = registration("instance-1", &[], 1);
    back.resume = Some(Resume {
        worker_id: "w9".into(),
        key: "the old master's key".into(),
        holding: vec![Held {
            module_id: "b".into(),
            attempt: 2,
        }],
    });
    let (adopted, welcome, _) = hub.at(3.0).register(back);
    assert!(welcome.resumed);
    assert_eq!(
        welcome.keep,
        vec![Held {
            module_id: "b".into(),
            attempt: 2
        }]
    );
    let (answer, effects) = hub.complete(adopted.worker, "b", 2, ReportStatus::Succeeded);
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(hub.state("b"), "succeeded");
    assert_eq!(assigned(&effects).len(), 1, "c goes to a free worker");
    // Its adoption window passing changes nothing.
    hub.at(11.0).tick();
    assert_eq!(hub.attempt("b"), Some(2));
}

#[test]
fn an_adopted_attempt_whose_worker_never_comes_back_runs_again() {
    let mut hub = taken_over();
    let (w, effects) = hub.join("instance-2", &[], 1);
    assert!(assigned(&effects).is_empty());
    assert_eq!(hub.at(9.9).tick(), vec![]);
    let effects = hub.at(10.0).tick();
    assert_eq!(assigned(&effects), vec![(w.worker, "b".into())]);
    assert_eq!(hub.attempt("b"), Some(3));
    // The lost worker coming back late holds nothing the hub counts.
    let mut late = registration("instance-1", &[], 1);
    late.resume = Some(Resume {
        worker_id: "w9".into(),
        key: "k".into(),
        holding: vec![Held {
            module_id: "b".into(),
            attempt: 2,
        }],
    });
    let (_, welcome, _) = hub.register(late);
    assert!(!welcome.resumed && welcome.keep.is_empty());
}

#[test]
fn a_master_taking_over_fences_off_an_assign_it_cannot_know_was_sent() {
    use muster_core::journal::Resumption;
    // The journal last saw `a` ready as attempt 1, and `b` (needing `a`)
    // not even that: the old master may have sent either's Assign before
    // the journal held it.
    let pipeline = "[modules.a]\nrun = \"a\"\n[modules.b]\nrun = \"b\"\nneeds = [\"a\"]\n";
    let mut hub = Hub::with(pipeline, |settings| {
        settings.adopt_within = Some(Duration::from_secs(10));
        settings.resume = Some(Resumption {
            from_run: "r".into(),
            kept: Vec::new(),
            first_attempt: vec![1, 1],
            rerun: Vec::new(),
            approvals: Default::default(),
            in_flight: Vec::new(),
        });
    });
    assert_eq!(hub.attempt("a"), Some(2));
    let mut back = registration("w", &[], 1);
    back.resume = Some(Resume {
        worker_id: "w1".into(),
        key: "old".into(),
        holding: vec![Held {
            module_id: "a".into(),
            attempt: 1,
        }],
    });
    let (w, welcome, effects) = hub.register(back);
    assert!(welcome.keep.is_empty());
    assert_eq!(calls(&effects), vec![(w.worker, "assign", "a".into(), 2)]);
    let (answer, _) = hub.complete(w.worker, "a", 1, ReportStatus::Cancelled);
    assert!(answer.is_err(), "a report for the fenced attempt is stale");
    assert_eq!(hub.state("a"), "assigned");
    hub.started(w.worker, "a", 2);
    let (_, effects) = hub.complete(w.worker, "a", 2, ReportStatus::Succeeded);
    assert_eq!(calls(&effects), vec![(w.worker, "assign", "b".into(), 2)]);
    let (answer, _) = hub.complete(w.worker, "b", 1, ReportStatus::Cancelled);
    assert!(answer.is_err(), "b's first attempt is fenced off too");
    assert_eq!(hub.state("b"), "assigned");
}

mod compensate;
mod gates;
