//! Compensation in the machine: last completed first, a lost worker, no
//! worker at all, a worker that drops and comes back with it.

use muster_core::wire::calls::WorkerCall;
use muster_core::wire::types::{Held, ReportStatus, Resume};
use serde_json::Value;

use super::*;

#[test]
fn a_failed_run_compensates_last_first_and_goes_on_when_a_worker_is_lost() {
    let pipeline = "[modules.a]\nrun = \"a\"\ncompensate = \"undo-a\"\n\
                    [modules.b]\nrun = \"b\"\nneeds = [\"a\"]\ncompensate = \"undo-b\"\n\
                    [modules.c]\nrun = \"c\"\nneeds = [\"b\"]\n";
    let mut hub = Hub::new(pipeline);
    let (w, _) = hub.join("w", &[], 1);
    let w = w.worker;
    for module in ["a", "b"] {
        hub.started(w, module, 1);
        let (answer, _) = hub.complete(w, module, 1, ReportStatus::Succeeded);
        assert!(answer.is_ok());
    }
    hub.started(w, "c", 1);
    let (_, effects) = hub.complete(w, "c", 1, ReportStatus::Failed);
    assert!(
        finished(&effects).is_none(),
        "the run waits for its compensations"
    );
    let sent = |effects: &[Effect]| first_assignment(effects).expect("a compensation is assigned");
    let undo_b = sent(&effects);
    assert_eq!(undo_b.module_id, "b~compensate");
    assert_eq!(undo_b.command, "undo-b");
    assert_eq!(undo_b.env["MUSTER_COMPENSATING"], "b");
    // A report for a compensation it does not hold is refused.
    let (answer, _) = hub.call(
        w,
        WorkerCall::Complete(report("a~compensate", 1, ReportStatus::Succeeded)),
    );
    assert!(answer.is_err());
    let (answer, effects) = hub.call(
        w,
        WorkerCall::Complete(report("b~compensate", 1, ReportStatus::Succeeded)),
    );
    assert_eq!(answer, Ok(Value::Null));
    assert_eq!(sent(&effects).module_id, "a~compensate");
    // Its worker is lost: that compensation fails, and the run ends.
    let registered = Registered {
        worker: w,
        session: 1,
    };
    let effects = hub.disconnect(registered, None);
    let summary = finished(&effects).expect("the run ends");
    let compensated: Vec<Option<&str>> = summary
        .modules
        .iter()
        .map(|m| m.compensated.as_deref())
        .collect();
    assert_eq!(
        compensated,
        [
            Some("compensation failed: its worker w was lost"),
            Some("compensated"),
            None
        ]
    );
}

#[test]
fn a_compensation_no_worker_can_run_fails_after_the_capability_timeout() {
    let pipeline = "[modules.a]\nrun = \"a\"\ncompensate = \"undo\"\n\
                    [modules.b]\nrun = \"b\"\nneeds = [\"a\"]\n";
    let mut hub = Hub::new(pipeline);
    let (w, _) = hub.join("w", &[], 1);
    hub.started(w.worker, "a", 1);
    let _ = hub.complete(w.worker, "a", 1, ReportStatus::Succeeded);
    // The worker leaves while b waits: b and a's compensation have nobody
    // to run on.
    let effects = hub.disconnect(w, None);
    assert!(finished(&effects).is_none());
    // b fails for want of a worker; then the compensation waits as long.
    let effects = hub.at(31.0).tick();
    assert_eq!(hub.state("b"), "failed");
    assert!(finished(&effects).is_none());
    let effects = hub.at(62.0).tick();
    let summary = finished(&effects).expect("the run ends");
    assert_eq!(
        summary.modules[0].compensated.as_deref(),
        Some("compensation failed: no worker could run it within 30s")
    );
}

#[test]
fn a_compensating_worker_that_drops_and_comes_back_with_it_keeps_it() {
    let pipeline = "[modules.a]\nrun = \"a\"\ncompensate = \"undo\"\n\
                    [modules.b]\nrun = \"b\"\nneeds = [\"a\"]\n";
    let mut hub = Hub::new(pipeline);
    let (first, welcome, _) = hub.register(registration("w", &[], 1));
    let w = first.worker;
    hub.started(w, "a", 1);
    let _ = hub.complete(w, "a", 1, ReportStatus::Succeeded);
    hub.started(w, "b", 1);
    let (_, effects) = hub.complete(w, "b", 1, ReportStatus::Failed);
    assert_eq!(assigned(&effects), [(w, "a~compensate".to_owned())]);
    // Its socket drops: it may come back while the compensation runs.
    let effects = hub.at(1.0).disconnect(first, Some(10.0));
    assert!(finished(&effects).is_none(), "{effects:?}");
    let mut back = registration("w", &[], 1);
    back.resume = Some(Resume {
        worker_id: welcome.worker_id.clone(),
        key: welcome.resume_key.clone(),
        holding: vec![Held {
            module_id: "a~compensate".into(),
            attempt: 1,
        }],
    });
    let (again, welcome_back, _) = hub.at(2.0).register(back);
    assert_eq!(again.worker, w);
    assert_eq!(
        welcome_back.keep,
        vec![Held {
            module_id: "a~compensate".into(),
            attempt: 1
        }]
    );
    let (answer, effects) = hub.call(
        w,
        WorkerCall::Complete(report("a~compensate", 1, ReportStatus::Succeeded)),
    );
    assert_eq!(answer, Ok(Value::Null));
    let summary = finished(&effects).expect("the run ends");
    assert_eq!(
        summary.modules[0].compensated.as_deref(),
        Some("compensated")
    );
}
