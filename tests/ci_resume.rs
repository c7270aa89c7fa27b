//! The run remembers in CI: three `muster ci` processes against a real
//! `redis-server` journal a run in a Redis Stream; the whole job is killed
//! (SIGKILL, every instance) mid-run and re-run as GitHub's "re-run failed
//! jobs" would (same GITHUB_RUN_ID, next GITHUB_RUN_ATTEMPT): the re-run
//! resumes from the first attempt's journal and redoes only what was not
//! journaled as succeeded. `muster status` reads the run from Redis in a
//! second process while it goes on; a Redis that dies mid-run fails the
//! run with exit 3.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{effects, layered_pipeline, muster, pipeline, run, RedisServer, LIMIT};

const TOKEN: &str = "ci-resume-token";

/// Instance `index` of 3 of attempt `attempt` of GitHub run `run`.
fn instance(
    file: &Path,
    redis: &str,
    run: &str,
    attempt: u32,
    index: u32,
    extra: &[&str],
) -> Child {
    muster(&[
        "ci",
        file.to_str().unwrap(),
        "--instance",
        &index.to_string(),
        "--total",
        "3",
        "--listen",
        "127.0.0.1:0",
        "--discover-timeout",
        "20s",
        "--reconnect-timeout",
        "3s",
    ])
    .args(extra)
    .env("MUSTER_REDIS_URL", redis)
    .env("MUSTER_TOKEN", TOKEN)
    .env("GITHUB_RUN_ID", run)
    .env("GITHUB_RUN_ATTEMPT", attempt.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn muster ci")
}

fn attempt(file: &Path, redis: &str, run: &str, number: u32, extra: &[&str]) -> Vec<Child> {
    (0..3)
        .map(|i| instance(file, redis, run, number, i, extra))
        .collect()
}

/// `muster status RUN --redis-url URL --json`, parsed.
fn status(redis: &str, run_id: &str) -> serde_json::Value {
    let out = run(muster(&["status", run_id, "--redis-url", redis, "--json"]));
    assert_eq!(out.code(), 0, "{out}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn succeeded(status: &serde_json::Value) -> BTreeSet<String> {
    status["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "succeeded")
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the journal of `run_id` holds at least `n` succeeded
/// modules, and returns its status then.
fn wait_for_succeeded(redis: &str, run_id: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = run(muster(&["status", run_id, "--redis-url", redis, "--json"]));
        if out.code() == 0 {
            let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            if succeeded(&json).len() >= n {
                return json;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{run_id} never got {n} modules done: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_all(children: Vec<Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_rerun_of_a_killed_ci_job_resumes_from_the_redis_journal() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (dir, file) = pipeline(&layered_pipeline(4, 6));
    let first = attempt(&file, &url, "77", 1, &[]);
    // Status from another process, from Redis, while the run goes on.
    let during = wait_for_succeeded(&url, "github-77-1", 4);
    assert_eq!(during["runId"], "github-77-1");
    assert_eq!(during["masterRunning"], true, "{during}");
    assert!(during["finished"].is_null(), "{during}");
    let text = run(muster(&["status", "github-77-1", "--redis-url", &url]));
    assert!(text.stdout.contains("running for"), "{text}");
    kill_all(first);
    // Module processes outlive their killed workers briefly.
    std::thread::sleep(Duration::from_millis(700));
    let journaled = succeeded(&status(&url, "github-77-1"));
    assert!(journaled.len() < 24, "the first attempt was killed mid-run");
    let offset = effects(dir.path()).len();

    let second = attempt(&file, &url, "77", 2, &[]);
    let outs = common::wait_all(second, LIMIT);
    for out in &outs {
        assert_eq!(out.code(), 0, "{out}");
    }
    let master = &outs[0];
    assert!(
        master
            .stdout
            .contains(&format!("kept {} succeeded module", journaled.len())),
        "{master}"
    );
    assert!(master.stdout.contains("from run github-77-1"), "{master}");
    let again: Vec<String> = effects(dir.path())[offset..]
        .iter()
        .filter(|id| journaled.contains(*id))
        .cloned()
        .collect();
    assert!(
        again.is_empty(),
        "journaled modules ran again: {again:?}\n{master}"
    );
    let done = status(&url, "github-77-2");
    assert_eq!(succeeded(&done).len(), 24, "{done}");
    assert_eq!(done["finished"][0], "succeeded", "{done}");
}

#[test]
fn kept_modules_whose_artifacts_are_gone_run_again_and_no_resume_starts_afresh() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (dir, file) = pipeline(&layered_pipeline(3, 4));
    let first_state = dir.path().join("runner-a");
    let first = attempt(
        &file,
        &url,
        "88",
        1,
        &["--state-dir", first_state.to_str().unwrap()],
    );
    wait_for_succeeded(&url, "github-88-1", 5);
    kill_all(first);
    std::thread::sleep(Duration::from_millis(700));
    // Another runner: the first one's artifacts are not on it.
    let second_state = dir.path().join("runner-b");
    let outs = common::wait_all(
        attempt(
            &file,
            &url,
            "88",
            2,
            &["--state-dir", second_state.to_str().unwrap()],
        ),
        LIMIT,
    );
    let master = &outs[0];
    assert_eq!(master.code(), 0, "{master}");
    assert!(
        master
            .stdout
            .contains("is gone (no copy is in this master's store)"),
        "the log says which ran again and why: {master}"
    );
    // A third attempt after a success starts afresh; --no-resume too.
    let before = effects(dir.path()).len();
    let outs = common::wait_all(attempt(&file, &url, "88", 3, &["--no-resume"]), LIMIT);
    assert_eq!(outs[0].code(), 0, "{}", outs[0]);
    assert!(!outs[0].stdout.contains("kept "), "{}", outs[0]);
    assert_eq!(effects(dir.path()).len() - before, 12, "every module ran");
}

#[test]
fn redis_dying_mid_run_fails_the_run_with_exit_3() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_dir, file) = pipeline(&layered_pipeline(4, 4));
    let mut master = instance(&file, &url, "99", 1, 0, &["--workers", "2"]);
    let mut workers: Vec<Child> = (1..3)
        .map(|i| instance(&file, &url, "99", 1, i, &[]))
        .collect();
    wait_for_succeeded(&url, "github-99-1", 2);
    drop(redis);
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = master.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the master went on without its journal"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut master.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("journal"), "it says why: {stderr}");
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
}
