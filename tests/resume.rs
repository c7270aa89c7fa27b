//! The run remembers: a local run killed with SIGKILL at random moments,
//! again and again, each time followed by `muster run --resume`, ends with
//! every module succeeded, and no module whose success the journal held at
//! a kill ran again after it (only those in flight at a kill may run
//! twice). Also: what `--resume` keeps and re-runs when the pipeline
//! changed, a finished run refused, and `muster status` / `muster runs`
//! from a second process while a run goes on.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{effects, muster, pipeline, run};

const LAYERS: usize = 6;
const WIDTH: usize = 10;

fn layered_pipeline() -> String {
    common::layered_pipeline(LAYERS, WIDTH)
}

/// `muster status --json` of the latest run: module id → state (none
/// when no run has journaled anything yet).
fn journaled_states(file: &Path) -> BTreeMap<String, String> {
    let out = run(muster(&["status", "--json", "-f", file.to_str().unwrap()]));
    if out.code() == 2 && out.stderr.contains("there are no runs") {
        return BTreeMap::new();
    }
    assert_eq!(out.code(), 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"));
    json["modules"]
        .as_array()
        .unwrap_or_else(|| panic!("no modules in {json}"))
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A small deterministic generator (xorshift), so a failure can be
/// replayed with the same kill moments.
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

#[test]
fn twenty_sigkills_then_resume_runs_nothing_twice_that_the_journal_held() {
    let (dir, file) = pipeline(&layered_pipeline());
    let file_arg = file.to_str().unwrap();
    let seed = std::env::var("MUSTER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let mut moments = Moments(seed);
    // (lines of effects.log at the kill, modules journaled succeeded then,
    // whether the run had journaled anything)
    let mut kills: Vec<(usize, BTreeSet<String>, bool)> = Vec::new();
    let mut finished_early = false;
    for round in 0..20 {
        let mut args = vec!["run", file_arg, "--workers", "4"];
        // A master killed before its first record leaves nothing to resume.
        if kills.iter().any(|(_, _, journaled)| *journaled) {
            args.push("--resume");
        }
        let mut child = muster(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(moments.next_ms(150, 700));
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(status) = child.try_wait().unwrap() {
            // The run ended before this kill: it must have succeeded.
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert_eq!(
                status.code(),
                Some(0),
                "round {round} ended on its own: {stderr}"
            );
            finished_early = true;
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Module processes outlive a SIGKILLed master (they are in their
        // own process groups); each ends within 0.45 s.
        std::thread::sleep(Duration::from_millis(700));
        let states = journaled_states(&file);
        let succeeded = states
            .iter()
            .filter(|(_, state)| *state == "succeeded")
            .map(|(id, _)| id.clone())
            .collect();
        kills.push((effects(dir.path()).len(), succeeded, !states.is_empty()));
    }
    if !finished_early {
        let out = run(muster(&["run", file_arg, "--workers", "4", "--resume"]));
        assert_eq!(out.code(), 0, "the last resume: {out}");
        assert!(out.stdout.contains("kept "), "it says what it kept: {out}");
    }
    let states = journaled_states(&file);
    assert_eq!(states.len(), LAYERS * WIDTH);
    assert!(
        states.values().all(|s| s == "succeeded"),
        "every module succeeded: {states:?}"
    );
    let lines = effects(dir.path());
    let ran: BTreeSet<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(ran.len(), LAYERS * WIDTH, "every module ran at least once");
    for (k, (offset, journaled, _)) in kills.iter().enumerate() {
        let again: Vec<&String> = lines[*offset..]
            .iter()
            .filter(|id| journaled.contains(*id))
            .collect();
        assert!(
            again.is_empty(),
            "after kill {k}, modules the journal held as succeeded ran again: {again:?} (seed {seed})"
        );
    }
    assert!(
        kills.len() >= 5,
        "the run was killed only {} times before it finished",
        kills.len()
    );
}

#[test]
fn resume_keeps_what_did_not_change_and_reruns_the_rest() {
    let text = r#"
[modules.build]
run = "echo build >> effects.log && echo version=1 >> $MUSTER_OUTPUT"
[modules.test]
run = "echo test >> effects.log"
needs = ["build"]
[modules.lint]
run = "echo lint >> effects.log && exit 1"
[modules.docs]
run = "echo docs >> effects.log"
"#;
    let (dir, file) = pipeline(text);
    let file_arg = file.to_str().unwrap();
    let out = run(muster(&["run", file_arg, "--workers", "2"]));
    assert_eq!(out.code(), 1, "lint fails: {out}");
    // Fix lint and change build's command: build and test run again, docs
    // is kept.
    std::fs::write(
        &file,
        text.replace("&& exit 1", "")
            .replace("version=1", "version=2"),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("effects.log")).unwrap();
    let out = run(muster(&["run", file_arg, "--workers", "2", "--resume"]));
    assert_eq!(out.code(), 0, "{out}");
    let ran: BTreeSet<String> = effects(dir.path()).into_iter().collect();
    assert_eq!(
        ran,
        ["build", "lint", "test"].map(String::from).into(),
        "{out}"
    );
    assert!(out.stdout.contains("kept 1 succeeded module"), "{out}");
    assert!(out.stdout.contains("build (its command changed)"), "{out}");
    // A run that succeeded is not resumed.
    let out = run(muster(&["run", file_arg, "--resume"]));
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("succeeded"), "{out}");
    // `muster runs` lists both runs... only one run: resumed in place.
    let out = run(muster(&["runs", "-f", file_arg]));
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.contains("succeeded"))
            .count(),
        1,
        "{out}"
    );
}

/// `muster run FILE --workers N` in the background, once one of its
/// modules has run `touch started`.
fn run_until_started(dir: &Path, file: &str, workers: &str) -> std::process::Child {
    let child = muster(&["run", file, "--workers", workers])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = dir.join("started");
    let deadline = Instant::now() + common::LIMIT;
    while !started.exists() {
        assert!(Instant::now() < deadline, "no module started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn status_from_another_process_while_the_run_goes_on() {
    let text = r#"
[modules.quick]
run = "echo quick"
[modules.slow]
run = "touch started && sleep 30"
[modules.after]
run = "true"
needs = ["slow"]
"#;
    let (dir, file) = pipeline(text);
    let file_arg = file.to_str().unwrap();
    let mut child = run_until_started(dir.path(), file_arg, "2");
    let deadline = Instant::now() + Duration::from_secs(10);
    let states = loop {
        // The journal may not hold the run's first records yet: a module
        // can start before they are durable.
        let states = journaled_states(&file);
        let quick = states.get("quick").map(String::as_str);
        if quick == Some("succeeded") || Instant::now() > deadline {
            break states;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let state = |id: &str| states.get(id).map(String::as_str);
    assert_eq!(state("quick"), Some("succeeded"), "{states:?}");
    assert_eq!(state("slow"), Some("running"), "{states:?}");
    assert_eq!(state("after"), Some("pending"), "{states:?}");
    let out = run(muster(&["status", "-f", file_arg]));
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("running for"), "{out}");
    assert!(out.stdout.contains("1 succeeded"), "{out}");
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run(muster(&["status", "-f", file_arg]));
    assert!(
        out.stdout.contains("not running"),
        "a dead master is told: {out}"
    );
}

#[test]
fn status_follow_prints_each_change_and_exits_with_the_runs_code() {
    let text = r#"
[modules.first]
run = "touch started && sleep 1"
[modules.second]
run = "echo the last words && exit 4"
needs = ["first"]
"#;
    let (dir, file) = pipeline(text);
    let file_arg = file.to_str().unwrap();
    let mut child = run_until_started(dir.path(), file_arg, "1");
    let out = run(muster(&["status", "--follow", "-f", file_arg]));
    assert_eq!(out.code(), 1, "the run failed: {out}");
    assert!(out.stdout.contains("first succeeded"), "{out}");
    assert!(out.stdout.contains("second failed"), "{out}");
    assert!(out.stdout.contains("run finished: failed"), "{out}");
    child.wait().unwrap();
    // Afterwards, the failed module's last log lines come with its status.
    let out = run(muster(&["status", "-f", file_arg]));
    assert!(out.stdout.contains("| the last words"), "{out}");
}
