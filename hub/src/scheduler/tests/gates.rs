//! Approval gates in the machine: waiting without a worker, who may
//! decide, expiry, reminders, and approvals a resumed run keeps.

use muster_core::gate::{Decider, Decision};
use muster_core::parse_pipeline;
use muster_core::wire::calls::WorkerCall;
use muster_core::wire::types::ReportStatus;
use muster_core::WorkerId;

use super::*;

const GATED: &str = "[modules.build]\nrun = \"b\"\n\
[modules.deploy]\nrun = \"d\"\nneeds = [\"build\"]\n\
approval = { prompt = \"Ship $MUSTER_NEEDS_BUILD_VERSION?\", approvers = [\"alice\", \"bob\"], timeout = \"1h\", inputs = [\"ticket\"], not = [\"$GITHUB_ACTOR\"] }\n\
[modules.smoke]\nrun = \"s\"\nneeds = [\"deploy\"]\n";

impl Hub {
    fn decide(
        &mut self,
        module: &str,
        by: Decider,
        decision: Decision,
    ) -> (Result<String, String>, Vec<Effect>) {
        let mut effects = self.input(Input::Decide {
            module: module.into(),
            decider: by,
            decision,
        });
        let Effect::Decided(answer) = effects.remove(0) else {
            panic!("a decision is answered first: {effects:?}")
        };
        let answer = answer
            .map(|a| format!("{} {} by {}", a.module, a.decision, a.by))
            .map_err(|e| e.to_string());
        (answer, effects)
    }
}

fn approve(inputs: &[(&str, &str)]) -> Decision {
    Decision::Approve {
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        reason: None,
    }
}

fn alice() -> Decider {
    Decider::Approver("alice".into())
}

/// Runs `build` to success with `version=1.4.2` on a worker `w`.
fn build_done(hub: &mut Hub) -> (WorkerId, Vec<Effect>) {
    let (w, effects) = hub.join("w", &[], 2);
    assert_eq!(assigned(&effects), [(w.worker, "build".to_owned())]);
    hub.started(w.worker, "build", 1);
    let mut done = report("build", 1, ReportStatus::Succeeded);
    done.outputs.insert("version".into(), "1.4.2".into());
    let (_, effects) = hub.call(w.worker, WorkerCall::Complete(done));
    (w.worker, effects)
}

#[test]
fn a_gate_waits_without_a_worker_until_an_approver_decides() {
    let mut hub = Hub::new(GATED);
    let (w, effects) = build_done(&mut hub);
    assert!(assigned(&effects).is_empty(), "{effects:?}");
    let said = changes(&effects);
    assert_eq!(said[1].0, "deploy");
    assert_eq!(said[1].1, "awaiting approval");
    assert_eq!(
        said[1].2.as_deref(),
        Some("Ship 1.4.2? (who may decide: alice, bob; expires in 1h, then fail)")
    );
    // Refusals change nothing.
    let carol = Decider::Approver("carol".into());
    let (answer, effects) = hub.decide("deploy", carol, approve(&[("ticket", "T")]));
    assert_eq!(
        answer,
        Err("carol may not decide 'deploy': its approvers are alice, bob".into())
    );
    assert!(effects.is_empty(), "{effects:?}");
    let bob = Decider::Approver("bob".into());
    let (answer, _) = hub.decide("deploy", bob, approve(&[("ticket", "T")]));
    assert!(answer.unwrap_err().contains("not = [$GITHUB_ACTOR]"));
    let (answer, _) = hub.decide("deploy", Decider::RunToken, approve(&[("ticket", "T")]));
    assert!(answer.is_err());
    let (answer, _) = hub.decide("deploy", alice(), approve(&[]));
    assert_eq!(
        answer,
        Err("approving 'deploy' needs ticket: give --input ticket=VALUE".into())
    );
    let (answer, _) = hub.decide("smoke", alice(), approve(&[]));
    assert_eq!(answer, Err("module 'smoke' has no approval gate".into()));
    assert_eq!(hub.state("deploy"), "awaiting approval");
    // The approval: the module is assigned with the input in its env.
    let (answer, effects) = hub.decide("deploy", alice(), approve(&[("ticket", "OPS-12")]));
    assert_eq!(answer, Ok("deploy approved by alice".into()));
    let assign = first_assignment(&effects).expect("deploy is assigned");
    assert_eq!(assign.module_id, "deploy");
    assert_eq!(assign.env["MUSTER_APPROVAL_TICKET"], "OPS-12");
    assert_eq!(changes(&effects)[0].2.as_deref(), Some("approved by alice"));
    // A second decision is refused, saying who decided.
    let (answer, _) = hub.decide("deploy", alice(), approve(&[("ticket", "X")]));
    assert_eq!(
        answer,
        Err("module 'deploy' was already approved by alice".into())
    );
    // The input is an output of the module for its dependents.
    hub.started(w, "deploy", 1);
    let (_, effects) = hub.complete(w, "deploy", 1, ReportStatus::Succeeded);
    let smoke = first_assignment(&effects).expect("smoke is assigned");
    assert_eq!(smoke.env["MUSTER_NEEDS_DEPLOY_TICKET"], "OPS-12");
    hub.started(w, "smoke", 1);
    let (_, effects) = hub.complete(w, "smoke", 1, ReportStatus::Succeeded);
    let summary = finished(&effects).expect("the run ends");
    assert!(summary.modules[1]
        .gate
        .as_deref()
        .unwrap()
        .starts_with("approved by alice after"));
}

#[test]
fn a_rejected_gate_fails_with_the_reason_and_skips_its_dependents() {
    let mut hub = Hub::new(GATED);
    build_done(&mut hub);
    let no = Decision::Reject {
        reason: "not on a Friday".into(),
    };
    let (answer, effects) = hub.decide("deploy", alice(), no);
    assert_eq!(answer, Ok("deploy rejected by alice".into()));
    assert_eq!(
        reason_of(&hub, "deploy"),
        "rejected by alice: not on a Friday"
    );
    assert_eq!(hub.state("smoke"), "skipped");
    assert!(finished(&effects).is_some());
    let (answer, _) = hub.decide("deploy", alice(), approve(&[("ticket", "T")]));
    assert_eq!(
        answer,
        Err("module 'deploy' was already rejected by alice".into())
    );
}

#[test]
fn an_expired_gate_fails_skips_or_runs_as_on_timeout_says() {
    for (on_timeout, deploy, smoke) in [
        ("fail", "failed", "skipped"),
        ("skip", "skipped", "skipped"),
        ("approve", "ready", "pending"),
    ] {
        let pipeline = format!(
            "[modules.build]\nrun = \"b\"\n[modules.deploy]\nrun = \"d\"\nneeds = [\"build\"]\n\
             approval = {{ timeout = \"10m\", on_timeout = \"{on_timeout}\" }}\n\
             [modules.smoke]\nrun = \"s\"\nneeds = [\"deploy\"]\n"
        );
        let mut hub = Hub::new(&pipeline);
        let (w, _) = hub.join("w", &[], 1);
        hub.started(w.worker, "build", 1);
        let _ = hub.complete(w.worker, "build", 1, ReportStatus::Succeeded);
        hub.at(599.0).tick();
        assert_eq!(hub.state("deploy"), "awaiting approval", "{on_timeout}");
        let effects = hub.at(600.0).tick();
        assert_eq!(hub.state("smoke"), smoke, "{on_timeout}");
        if deploy == "ready" {
            assert_eq!(assigned(&effects), [(w.worker, "deploy".to_owned())]);
        } else {
            assert_eq!(hub.state("deploy"), deploy, "{on_timeout}");
        }
        assert_eq!(
            changes(&effects)[0].2.as_deref(),
            Some(format!("no decision within 10m: on_timeout = \"{on_timeout}\"").as_str())
        );
    }
}

#[test]
fn a_waiting_gate_says_so_again_and_is_cancelled_with_the_run() {
    let pipeline = "[modules.gate]\napproval = { timeout = \"1h\" }\n";
    let mut hub = Hub::new(pipeline);
    assert_eq!(hub.state("gate"), "awaiting approval");
    let effects = hub.at(600.0).tick();
    let reminded = effects.iter().any(|e| {
        matches!(e, Effect::Event(RunEvent::Note { module, text })
            if module == "gate" && text == "still waiting for approval: Approve 'gate'? (who may decide: any approver or the run token; 50m left)")
    });
    assert!(reminded, "{effects:?}");
    let effects = hub.input(Input::Cancel {
        reason: "stop".into(),
    });
    assert_eq!(hub.state("gate"), "cancelled");
    assert!(finished(&effects).is_some());
    // Nothing is timed after the run.
    assert_eq!(hub.machine.next_deadline(), None);
}

#[test]
fn a_pure_gate_decided_by_the_run_token_succeeds_with_its_inputs() {
    let pipeline = "[modules.gate]\napproval = { inputs = [\"ticket\"] }\n\
                    [modules.after]\nrun = \"a\"\nneeds = [\"gate\"]\n";
    let mut hub = Hub::new(pipeline);
    hub.join("w", &[], 1);
    let (answer, effects) = hub.decide("gate", Decider::RunToken, approve(&[("ticket", "T-1")]));
    assert_eq!(answer, Ok("gate approved by the run token".into()));
    assert_eq!(hub.state("gate"), "succeeded");
    let assign = first_assignment(&effects).expect("after is assigned");
    assert_eq!(assign.env["MUSTER_NEEDS_GATE_TICKET"], "T-1");
}

#[test]
fn a_journaled_approval_stands_only_for_the_same_question() {
    use muster_core::journal::{module_digests, GateRecord, Resumption};
    let pipeline = "[modules.deploy]\nrun = \"d\"\napproval = { approvers = [\"alice\"] }\n";
    let plan = parse_pipeline("muster.toml", pipeline).unwrap();
    let definition = module_digests(&plan)[0].digest.clone();
    let approval = |definition: &str| GateRecord {
        module: "deploy".into(),
        decision: "approved".into(),
        by: Some("alice".into()),
        definition: definition.into(),
        needs_outputs: muster_core::gate::needs_digest([]),
        ..GateRecord::default()
    };
    let resumed = |record: GateRecord| {
        move |settings: &mut SchedulerSettings| {
            journaled(settings);
            settings.resume = Some(Resumption {
                in_flight: Vec::new(),
                from_run: "r0".into(),
                kept: Vec::new(),
                first_attempt: vec![2],
                rerun: Vec::new(),
                approvals: [("deploy".to_owned(), record)].into(),
            });
        }
    };
    // Same definition, same needs: approved at once, and journaled.
    let (mut hub, effects) = Hub::starting(pipeline, resumed(approval(&definition)));
    assert_eq!(hub.state("deploy"), "ready");
    let note = changes(&effects)
        .into_iter()
        .find(|(_, state, _)| *state == "ready")
        .and_then(|(_, _, note)| note)
        .unwrap();
    assert!(
        note.starts_with("approved by alice in an earlier attempt"),
        "{note}"
    );
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Journal(muster_core::journal::Entry::GateDecided(g)) if g.decision == "approved")));
    let (answer, _) = hub.decide("deploy", alice(), approve(&[]));
    assert!(answer.unwrap_err().contains("already approved by alice"));
    // Another definition: superseded, it asks again.
    let (hub, effects) = Hub::starting(pipeline, resumed(approval("0000")));
    assert_eq!(hub.state("deploy"), "awaiting approval");
    let superseded = effects.iter().any(|e| {
        matches!(e, Effect::Event(RunEvent::Note { text, .. })
            if text == "the approval by alice is superseded (its definition changed): asking again")
    });
    assert!(superseded, "{effects:?}");
}
