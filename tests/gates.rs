//! Approval gates end to end, with real processes: a `muster hub` with a
//! local worker runs the pipeline, and `muster approve` / `muster reject`
//! decide from other processes, as an approver on another machine would.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{effects, muster, pipeline, run, HubProcess, Output, LIMIT};

const RUN_TOKEN: &str = "gate-run-token";
const ALICE: &str = "alice-own-token";
const CAROL: &str = "carol-own-token";

/// The hex SHA-256 of `token`, as `--approver NAME=SHA256` takes it.
fn sha256(token: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// `muster hub FILE --workers 1` with alice and carol as approvers.
fn hub(file: &Path, extra: &[&str]) -> HubProcess {
    let alice = format!("alice={}", sha256(ALICE));
    let carol = format!("carol={}", sha256(CAROL));
    let mut args = vec!["--workers", "1", "--approver", &alice, "--approver", &carol];
    args.extend_from_slice(extra);
    HubProcess::start(file, RUN_TOKEN, &args)
}

fn decide(hub: &str, token: &str, args: &[&str]) -> Output {
    let mut command = muster(args);
    command
        .args(["--hub", hub])
        .env("MUSTER_APPROVER_TOKEN", token);
    run(command)
}

/// Decides as soon as `module` waits for it (retrying while it is not
/// waiting yet), within [`LIMIT`].
fn decide_when_waiting(hub: &str, token: &str, args: &[&str]) -> Output {
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = decide(hub, token, args);
        let early = out.code() == 1 && out.stderr.contains("is not waiting for approval (it is");
        if !early || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const DEPLOY: &str = r#"
[modules.build]
run = "echo version=1.4.2 >> $MUSTER_OUTPUT; echo build >> effects.log"
[modules.deploy]
needs = ["build"]
approval = { prompt = "Deploy $MUSTER_NEEDS_BUILD_VERSION?", approvers = ["alice"], timeout = "5m", inputs = ["ticket"] }
run = "echo deploy $MUSTER_APPROVAL_TICKET >> effects.log"
[modules.smoke]
needs = ["deploy"]
run = "echo smoke $MUSTER_NEEDS_DEPLOY_TICKET >> effects.log"
"#;

#[test]
fn a_gate_holds_its_dependents_until_approved_from_another_process() {
    let (dir, file) = pipeline(DEPLOY);
    let hub = hub(&file, &[]);
    let out = decide_when_waiting(
        &hub.url,
        ALICE,
        &[
            "approve",
            "deploy",
            "--input",
            "ticket=OPS-12",
            "--reason",
            "go",
        ],
    );
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("deploy approved by alice"), "{out}");
    let done = hub.finish();
    assert_eq!(done.code(), 0, "{done}");
    assert_eq!(
        effects(dir.path()),
        ["build", "deploy OPS-12", "smoke OPS-12"]
    );
    assert!(
        done.stdout
            .contains("[deploy] ** awaiting approval: Deploy 1.4.2? (who may decide: alice;"),
        "{done}"
    );
    assert!(
        done.stdout.contains("[deploy] ** approved by alice: go"),
        "{done}"
    );
    assert!(
        done.stdout.contains("gate deploy: approved by alice after"),
        "{done}"
    );
    // The journal holds who decided, bound to what was asked.
    let status = run(muster(&[
        "status",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert!(
        status.stdout.contains("\"decision\":\"approved\""),
        "{status}"
    );
}

#[test]
fn a_rejection_fails_the_gate_with_its_reason_and_skips_dependents() {
    let (dir, file) = pipeline(DEPLOY);
    let hub = hub(&file, &[]);
    let out = decide_when_waiting(
        &hub.url,
        ALICE,
        &["reject", "deploy", "--reason", "not on a Friday"],
    );
    assert_eq!(out.code(), 0, "{out}");
    let done = hub.finish();
    assert_eq!(done.code(), 1, "{done}");
    assert_eq!(effects(dir.path()), ["build"]);
    assert!(
        done.stdout
            .contains("[deploy] ** failed: rejected by alice: not on a Friday"),
        "{done}"
    );
    assert!(
        done.stdout
            .contains("[smoke] ** skipped: need 'deploy' failed"),
        "{done}"
    );
}

#[test]
fn wrong_tokens_strangers_early_and_second_decisions_change_nothing() {
    // build waits for a file, so deploy is pending while the first
    // decisions come; smoke waits for another, so the run is still going
    // when the second decision comes.
    let text = DEPLOY
        .replace(
            "run = \"echo version",
            "run = \"while [ ! -f go ]; do sleep 0.05; done; echo version",
        )
        .replace(
            "run = \"echo smoke",
            "run = \"while [ ! -f end ]; do sleep 0.05; done; echo smoke",
        );
    let (dir, file) = pipeline(&text);
    let hub = hub(&file, &[]);
    let approve = ["approve", "deploy", "--input", "ticket=T-1"];
    let out = decide(&hub.url, ALICE, &approve);
    assert_eq!(out.code(), 1, "{out}");
    assert!(
        out.stderr
            .contains("module 'deploy' is not waiting for approval (it is pending)"),
        "{out}"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    // A token the hub does not know.
    let out = decide_when_waiting(&hub.url, "guess", &approve);
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("does not know this token"), "{out}");
    assert!(
        !out.stderr.contains("guess"),
        "the token is never printed: {out}"
    );
    // A known approver the gate does not name, and the run token.
    let out = decide_when_waiting(&hub.url, CAROL, &approve);
    assert_eq!(out.code(), 2, "{out}");
    assert!(
        out.stderr
            .contains("carol may not decide 'deploy': its approvers are alice"),
        "{out}"
    );
    let out = decide_when_waiting(&hub.url, RUN_TOKEN, &approve);
    assert_eq!(out.code(), 2, "{out}");
    // A missing input and an unknown module.
    let out = decide_when_waiting(&hub.url, ALICE, &["approve", "deploy"]);
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("needs ticket"), "{out}");
    let out = decide(&hub.url, ALICE, &["approve", "deplyo"]);
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("no module 'deplyo'"), "{out}");
    // Nothing of that changed the gate: the right decision still counts,
    // and a second one is refused.
    let out = decide_when_waiting(&hub.url, ALICE, &approve);
    assert_eq!(out.code(), 0, "{out}");
    let out = decide(&hub.url, ALICE, &["reject", "deploy", "--reason", "late"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(
        out.stderr
            .contains("module 'deploy' was already approved by alice"),
        "{out}"
    );
    std::fs::write(dir.path().join("end"), "").unwrap();
    let done = hub.finish();
    assert_eq!(done.code(), 0, "{done}");
    assert_eq!(effects(dir.path()), ["build", "deploy T-1", "smoke T-1"]);
}

#[test]
fn an_expired_gate_does_what_on_timeout_says() {
    for (on_timeout, code, ran) in [
        ("fail", 1, vec!["build"]),
        ("skip", 1, vec!["build"]),
        ("approve", 0, vec!["build", "deploy", "smoke"]),
    ] {
        let text = format!(
            "[modules.build]\nrun = \"echo build >> effects.log\"\n\
             [modules.deploy]\nneeds = [\"build\"]\nrun = \"echo deploy >> effects.log\"\n\
             approval = {{ timeout = \"1s\", on_timeout = \"{on_timeout}\" }}\n\
             [modules.smoke]\nneeds = [\"deploy\"]\nrun = \"echo smoke >> effects.log\"\n"
        );
        let (dir, file) = pipeline(&text);
        let done = hub(&file, &[]).finish();
        assert_eq!(done.code(), code, "{on_timeout}: {done}");
        assert_eq!(effects(dir.path()), ran, "{on_timeout}: {done}");
        assert!(
            done.stdout.contains(&format!(
                "no decision within 1s: on_timeout = \"{on_timeout}\""
            )),
            "{on_timeout}: {done}"
        );
    }
}

const ONCE: &str = r#"
[modules.build]
run = "echo version=1 >> $MUSTER_OUTPUT; echo build >> effects.log"
[modules.deploy]
needs = ["build"]
approval = { approvers = ["alice"] }
run = "echo deploy >> effects.log; if [ ! -f once ]; then touch once; sleep 20; fi"
"#;

/// Starts the pipeline, approves deploy, and kills the hub with SIGKILL
/// once deploy's command has started.
fn approve_then_crash(dir: &Path, file: &Path) {
    let mut first = hub(file, &[]);
    let out = decide_when_waiting(&first.url, ALICE, &["approve", "deploy"]);
    assert_eq!(out.code(), 0, "{out}");
    let deadline = Instant::now() + LIMIT;
    while !effects(dir).contains(&"deploy".to_owned()) {
        assert!(Instant::now() < deadline, "deploy never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = first.pid();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(killed.success());
    first.url.clear();
    drop(first);
}

#[test]
fn an_approval_survives_a_crash_and_stands_for_the_same_question() {
    let (dir, file) = pipeline(ONCE);
    approve_then_crash(dir.path(), &file);
    // Same definition, same outputs of its needs: not asked again.
    let done = hub(&file, &["--resume"]).finish();
    assert_eq!(done.code(), 0, "{done}");
    assert!(
        done.stdout
            .contains("[deploy] ** approved by alice in an earlier attempt of this run; it stands"),
        "{done}"
    );
    assert_eq!(effects(dir.path()), ["build", "deploy", "deploy"]);
}

#[test]
fn an_approval_is_superseded_when_a_need_gives_other_outputs() {
    let (dir, file) = pipeline(ONCE);
    approve_then_crash(dir.path(), &file);
    // build now gives another version: the approval was for version 1.
    std::fs::write(&file, ONCE.replace("version=1", "version=2")).unwrap();
    let second = hub(&file, &["--resume"]);
    let out = decide_when_waiting(&second.url, ALICE, &["approve", "deploy"]);
    assert_eq!(out.code(), 0, "{out}");
    let done = second.finish();
    assert_eq!(done.code(), 0, "{done}");
    assert!(
        done.stdout.contains(
            "the approval by alice is superseded (the outputs of its needs changed): asking again"
        ),
        "{done}"
    );
    assert_eq!(effects(dir.path()), ["build", "deploy", "build", "deploy"]);
}

#[test]
fn a_ci_run_is_approved_through_its_discovery_record() {
    let redis = common::RedisServer::start();
    let (dir, file) = pipeline(DEPLOY);
    let alice = format!("alice={}", sha256(ALICE));
    let master = muster(&[
        "ci",
        file.to_str().unwrap(),
        "--instance",
        "0",
        "--total",
        "1",
        "--run-id",
        "gated-ci",
        "--listen",
        "127.0.0.1:0",
        "--approver",
        &alice,
    ])
    .env("MUSTER_REDIS_URL", redis.url())
    .env("MUSTER_TOKEN", RUN_TOKEN)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // From "another machine": only the run id and the Redis URL.
    let deadline = Instant::now() + LIMIT;
    let out = loop {
        let mut command = muster(&[
            "approve",
            "deploy",
            "--run-id",
            "gated-ci",
            "--input",
            "ticket=CI-9",
        ]);
        command
            .env("MUSTER_REDIS_URL", redis.url())
            .env("MUSTER_APPROVER_TOKEN", ALICE)
            .env_remove("MUSTER_HUB");
        let out = run(command);
        let early = out.code() == 1 && out.stderr.contains("is not waiting for approval (it is");
        if !early || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.code(), 0, "{out}");
    let done = common::wait(master, LIMIT);
    assert_eq!(done.code(), 0, "{done}");
    assert_eq!(effects(dir.path()), ["build", "deploy CI-9", "smoke CI-9"]);
}

#[test]
fn a_gate_whose_approvers_the_master_does_not_know_is_said_at_the_start() {
    let (_dir, file) = pipeline(
        "[modules.deploy]\nrun = \"true\"\napproval = { approvers = [\"dave\"], timeout = \"1s\" }\n",
    );
    let done = hub(&file, &[]).finish();
    assert_eq!(done.code(), 1, "{done}");
    assert!(
        done.stderr.contains(
            "warning: gate 'deploy' names approvers dave, but the master knows none of their tokens"
        ),
        "{done}"
    );
}

#[test]
fn muster_run_says_how_to_decide_and_its_run_token_decides_a_gate_without_approvers() {
    use std::io::{BufRead, BufReader};
    let (dir, file) = pipeline(
        "[modules.gate]\napproval = { inputs = [\"ticket\"] }\n\
         [modules.after]\nneeds = [\"gate\"]\nrun = \"echo after $MUSTER_NEEDS_GATE_TICKET >> effects.log\"\n",
    );
    let mut child = muster(&["run", file.to_str().unwrap(), "--workers", "1"])
        .env("MUSTER_TOKEN", RUN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let said = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("approval gate(s)"))
        .expect("muster run says how to decide");
    let hub = said
        .split("--hub ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap()
        .to_owned();
    let out = decide_when_waiting(
        &hub,
        RUN_TOKEN,
        &["approve", "gate", "--input", "ticket=L-1"],
    );
    assert_eq!(out.code(), 0, "{out}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", rest.join("\n"));
    assert_eq!(effects(dir.path()), ["after L-1"]);
}
