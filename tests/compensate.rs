//! Compensation end to end: a run that fails after modules with
//! `compensate` succeeded undoes them, last completed first, exactly once,
//! with each module's outputs in the compensation's environment; the
//! journal and the summary say so; `--no-compensate` turns it off.

mod common;

use common::{effects, muster, pipeline, run};

/// Three deploy-like modules in a chain, then a check that fails. The
/// middle compensation fails too: the others still run.
const DEPLOYS: &str = r#"
[modules.db]
run = "echo db >> effects.log; echo version=7 >> $MUSTER_OUTPUT"
compensate = "echo undo-db $MUSTER_OUTPUT_VERSION $MUSTER_COMPENSATING >> effects.log"
[modules.app]
needs = ["db"]
run = "echo app >> effects.log"
compensate = "echo undo-app >> effects.log; exit 4"
[modules.web]
needs = ["app"]
run = "echo web >> effects.log"
compensate = "echo undo-web >> effects.log"
[modules.lint]
run = "echo lint >> effects.log"
[modules.check]
needs = ["web"]
run = "echo check >> effects.log; exit 1"
"#;

#[test]
fn a_failed_run_compensates_in_reverse_order_exactly_once() {
    let (dir, file) = pipeline(DEPLOYS);
    let out = run(muster(&["run", file.to_str().unwrap(), "--workers", "1"]));
    assert_eq!(out.code(), 1, "{out}");
    let ran = effects(dir.path());
    let undone: Vec<&str> = ran
        .iter()
        .map(String::as_str)
        .filter(|e| e.starts_with("undo"))
        .collect();
    assert_eq!(undone, ["undo-web", "undo-app", "undo-db 7 db"], "{out}");
    // Every compensation came after the failure.
    let check = ran.iter().position(|e| e == "check").unwrap();
    assert!(ran.iter().position(|e| e.starts_with("undo")).unwrap() > check);
    assert!(
        out.stdout.contains(
            "compensations: db compensated; app compensation failed: exited with code 4; web compensated"
        ),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("[app] ** compensation failed: exited with code 4"),
        "{out}"
    );
    // The journal holds each start and end, in that order.
    let runs = dir.path().join(".muster/runs");
    let run_dir = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let journal = std::fs::read_to_string(run_dir.join("journal.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["type"] == "compensation")
        .collect();
    let said: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["module"].as_str().unwrap(),
                r["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            "web started",
            "web succeeded",
            "app started",
            "app failed",
            "db started",
            "db succeeded"
        ]
    );
    assert_eq!(records[3]["exitCode"], 4);
    // The JSON report says it per module.
    let json = dir.path().join("report.json");
    let report = run(muster(&[
        "report",
        "--file",
        file.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]));
    assert_eq!(report.code(), 0, "{report}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let compensation = |id: &str| {
        let modules = report["modules"].as_array().unwrap();
        let module = modules.iter().find(|m| m["id"] == id).unwrap();
        module["compensation"]["state"].as_str().map(str::to_owned)
    };
    assert_eq!(compensation("web").as_deref(), Some("succeeded"));
    assert_eq!(compensation("app").as_deref(), Some("failed"));
    assert_eq!(compensation("check"), None);
}

#[test]
fn a_run_that_succeeds_or_says_no_compensate_compensates_nothing() {
    let (dir, file) = pipeline(&DEPLOYS.replace("exit 1", "exit 0"));
    let out = run(muster(&["run", file.to_str().unwrap(), "--workers", "1"]));
    assert_eq!(out.code(), 0, "{out}");
    assert!(!effects(dir.path()).iter().any(|e| e.starts_with("undo")));
    let (dir, file) = pipeline(DEPLOYS);
    let out = run(muster(&[
        "run",
        file.to_str().unwrap(),
        "--workers",
        "1",
        "--no-compensate",
    ]));
    assert_eq!(out.code(), 1, "{out}");
    assert!(
        !effects(dir.path()).iter().any(|e| e.starts_with("undo")),
        "{out}"
    );
    assert!(!out.stdout.contains("compensations:"), "{out}");
}
