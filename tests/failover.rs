//! Master failover in CI, with a real `redis-server` and four `muster ci`
//! processes, each with its own state folder as separate runners have:
//! - chaos: the current master is SIGKILLed at random moments, up to five
//!   times per run, over ten runs; the killed instance is started again
//!   (a CI retry). Every run ends with exit 0 on every instance still
//!   running, every module's outputs reached its dependents (the pipeline
//!   checks them), and no module whose success was journaled ran again,
//!   except those re-run because their artifacts were lost with a master;
//! - zombie: the master is SIGSTOPped past its lease, another instance
//!   takes over, and the old one, resumed, changes nothing and exits on its
//!   own saying who superseded it;
//! - a Redis outage shorter than the lease's patience causes no takeover.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{effects, layered_pipeline, muster, pipeline, RedisServer};

const TOKEN: &str = "failover-token";
const INSTANCES: u32 = 4;
/// A run with every kill and takeover it may have.
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// One `muster ci` process, its output going to a file (it may be killed).
struct Instance {
    index: u32,
    child: Child,
    log: PathBuf,
}

/// The four instances of one run, and where they keep their state.
struct Run {
    id: String,
    redis: String,
    file: PathBuf,
    dir: PathBuf,
    lease: String,
    running: Vec<Instance>,
    /// Every process that ended (killed, or done).
    ended: Ended,
    starts: u32,
}

impl Run {
    fn start(redis: &str, id: &str, file: &Path, lease: &str) -> Run {
        let mut run = Run {
            id: id.to_owned(),
            redis: redis.to_owned(),
            file: file.to_owned(),
            dir: file.parent().unwrap().to_owned(),
            lease: lease.to_owned(),
            running: Vec::new(),
            ended: Ended::default(),
            starts: 0,
        };
        for index in 0..INSTANCES {
            run.spawn(index);
        }
        run
    }

    fn spawn(&mut self, index: u32) {
        self.starts += 1;
        let log = self
            .dir
            .join(format!("instance-{index}-{}.log", self.starts));
        let state = self.dir.join(format!("state-{index}"));
        let out = File::create(&log).unwrap();
        let child = muster(&[
            "ci",
            self.file.to_str().unwrap(),
            "--instance",
            &index.to_string(),
            "--total",
            &INSTANCES.to_string(),
            "--run-id",
            &self.id,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap(),
            "--discover-timeout",
            "60s",
            "--reconnect-timeout",
            "60s",
            "--lease-ttl",
            &self.lease,
            "--ping-interval",
            "1s",
            "--client-timeout",
            "3s",
            "--max-worker-losses",
            "20",
        ])
        .env("MUSTER_REDIS_URL", &self.redis)
        .env("MUSTER_TOKEN", TOKEN)
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn muster ci");
        self.running.push(Instance { index, child, log });
    }

    /// The instance index holding the lease, and its epoch.
    fn master(&self) -> Option<(u32, u64)> {
        let value: Option<String> =
            redis_get(&self.redis, &format!("muster:run:{}:lease", self.id));
        let value = value?;
        let (epoch, holder) = value.split_once(' ')?;
        let index = holder.strip_prefix("instance ")?.parse().ok()?;
        Some((index, epoch.parse().ok()?))
    }

    /// The discovery record's epoch.
    fn record_epoch(&self) -> Option<u64> {
        let text: String = redis_get(&self.redis, &format!("muster:run:{}", self.id))?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["epoch"].as_u64()
    }

    fn record_finished(&self) -> bool {
        let text: Option<String> = redis_get(&self.redis, &format!("muster:run:{}", self.id));
        text.is_some_and(|t| t.contains("\"finished\""))
    }

    fn signal(&self, index: u32, signal: &str) {
        let instance = self.running.iter().find(|i| i.index == index).unwrap();
        let status = std::process::Command::new("kill")
            .args([signal, &instance.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn kill(&mut self, index: u32) {
        let at = self.running.iter().position(|i| i.index == index).unwrap();
        let mut instance = self.running.remove(at);
        let _ = instance.child.kill();
        let _ = instance.child.wait();
        let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
        self.ended.0.push((index, None, log));
    }

    /// Waits for every running instance to exit.
    fn finish(mut self, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        while let Some(mut instance) = self.running.pop() {
            let code = loop {
                if let Some(status) = instance.child.try_wait().unwrap() {
                    break status.code();
                }
                if Instant::now() > deadline {
                    let _ = instance.child.kill();
                    let _ = instance.child.wait();
                    break Some(-1);
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
            self.ended.0.push((instance.index, code, log));
        }
        std::mem::take(&mut self.ended)
    }
}

/// The processes of a run that ended: instance, exit code (`None`: killed
/// by the test) and output.
#[derive(Default)]
struct Ended(Vec<(u32, Option<i32>, String)>);

impl Ended {
    /// Every process's output, headed by its instance and exit code.
    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(i, code, log)| format!("--- instance {i} (exit {code:?})\n{log}"))
            .collect()
    }

    /// Every process the test did not kill exited with `code`.
    fn assert_exited(&self, code: i32, run: &str) {
        let all = self.text();
        for (index, exit, _) in &self.0 {
            if let Some(exit) = exit {
                assert_eq!(*exit, code, "instance {index} of {run}:\n{all}");
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for instance in &mut self.running {
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
    }
}

fn redis_get<T: redis::FromRedisValue>(url: &str, key: &str) -> Option<T> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client.get_connection().ok()?;
    redis::cmd("GET").arg(key).query(&mut connection).ok()
}

/// `muster status --json` of the run, parsed.
fn status(redis: &str, run_id: &str) -> serde_json::Value {
    let out = common::run(muster(&["status", run_id, "--redis-url", redis, "--json"]));
    assert_eq!(out.code(), 0, "{out}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The modules journaled as succeeded, none while there is no journal yet.
fn journaled_so_far(redis: &str, run_id: &str) -> BTreeSet<String> {
    let out = common::run(muster(&["status", run_id, "--redis-url", redis, "--json"]));
    match serde_json::from_str(&out.stdout) {
        Ok(json) if out.code() == 0 => succeeded(&json),
        _ => BTreeSet::new(),
    }
}

fn succeeded(status: &serde_json::Value) -> BTreeSet<String> {
    status["modules"]
        .as_array()
        .map(|modules| {
            modules
                .iter()
                .filter(|m| m["state"] == "succeeded")
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Modules a master's log says it re-ran although they had succeeded
/// (their artifacts were lost with a master, or a need of theirs re-ran).
fn rerun_in(logs: &Ended) -> BTreeSet<String> {
    logs.0
        .iter()
        .flat_map(|(_, _, log)| log.lines())
        .filter_map(|line| line.split("re-running ").nth(1))
        .filter(|rest| rest.contains("is gone") || rest.contains("which runs again"))
        .filter_map(|rest| rest.split(':').next())
        .map(str::to_owned)
        .collect()
}

/// A small deterministic pseudo-random sequence (no dependency).
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Waits until the record names a master at a higher epoch than `epoch`
/// (or the run finished); returns how long that took.
fn wait_for_new_master(run: &Run, epoch: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if run.record_epoch().is_some_and(|e| e > epoch) {
            return Some(start.elapsed());
        }
        if run.record_finished() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no master took run {} over within {limit:?}", run.id);
}

/// One chaos run: returns the takeover times and how many module runs
/// beyond the forty it took (re-runs of killed attempts and of lost
/// artifacts' producers).
fn chaos_run(redis: &str, number: u64) -> (Vec<Duration>, usize) {
    let (dir, file) = pipeline(&layered_pipeline(5, 8));
    let id = format!("chaos-{number}");
    let mut dice = Dice(number * 7919 + 17);
    let kills = 1 + dice.next(5);
    let mut run = Run::start(redis, &id, &file, "1s");
    let mut takeovers = Vec::new();
    let mut journaled_at_kills: Vec<(BTreeSet<String>, usize)> = Vec::new();
    for _ in 0..kills {
        // Wait for a master that has published, then a random moment.
        let deadline = Instant::now() + RUN_LIMIT;
        let (master, epoch) = loop {
            if let (Some((index, epoch)), Some(record)) = (run.master(), run.record_epoch()) {
                if record == epoch {
                    break (index, epoch);
                }
            }
            assert!(Instant::now() < deadline, "no master in {id}");
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(300 + dice.next(2200)));
        if run.record_finished() {
            break;
        }
        run.kill(master);
        // What the dead master journaled, and the side effects so far.
        std::thread::sleep(Duration::from_millis(100));
        let journaled = succeeded(&status(redis, &id));
        journaled_at_kills.push((journaled, effects(dir.path()).len()));
        let took = wait_for_new_master(&run, epoch, Duration::from_secs(60));
        // The CI retry of the killed job: the same command again.
        run.spawn(master);
        match took {
            Some(took) => takeovers.push(took),
            None => break,
        }
    }
    let ended = run.finish(RUN_LIMIT);
    let all = ended.text();
    ended.assert_exited(0, &id);
    let done = status(redis, &id);
    assert_eq!(done["finished"][0], "succeeded", "{done}\n{all}");
    // The last master lists every failover the run had.
    if !takeovers.is_empty() {
        let lines = all
            .lines()
            .filter(|l| l.contains("muster: failover: "))
            .count();
        assert!(
            lines >= takeovers.len(),
            "{id}: failovers not listed\n{all}"
        );
    }
    let outputs: BTreeMap<String, String> = done["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap().to_owned();
            (
                id,
                m["outputs"]["v"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(outputs.len(), 40);
    for (module, v) in &outputs {
        assert_eq!(module, v, "{module}'s output");
    }
    // No journaled success ran again, except for lost artifacts.
    let allowed = rerun_in(&ended);
    let log = effects(dir.path());
    for (journaled, offset) in &journaled_at_kills {
        let again: Vec<&String> = log[*offset..]
            .iter()
            .filter(|m| journaled.contains(*m) && !allowed.contains(*m))
            .collect();
        assert!(
            again.is_empty(),
            "{id}: journaled modules ran again: {again:?}\n{all}"
        );
    }
    (takeovers, log.len().saturating_sub(40))
}

#[test]
fn the_run_survives_its_master_being_killed_again_and_again() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Two runs at a time: ten runs of four instances each.
    let mut times: Vec<Duration> = Vec::new();
    let mut extra_runs = 0;
    for pair in 0..5u64 {
        let handles: Vec<_> = (0..2)
            .map(|k| {
                let url = url.clone();
                std::thread::spawn(move || chaos_run(&url, pair * 2 + k))
            })
            .collect();
        for handle in handles {
            let (took, extra) = handle.join().expect("a chaos run failed");
            times.extend(took);
            extra_runs += extra;
        }
    }
    times.sort();
    assert!(!times.is_empty());
    let median = times[times.len() / 2];
    let max = *times.last().unwrap();
    eprintln!(
        "takeover (kill to new record) over {} failovers with a 1s lease: median {:.2}s, \
         max {:.2}s; {extra_runs} module runs beyond the 400",
        times.len(),
        median.as_secs_f64(),
        max.as_secs_f64()
    );
    assert!(max < Duration::from_secs(30), "{times:?}");
}

#[test]
fn a_stopped_master_that_comes_back_changes_nothing_and_exits_superseded() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (dir, file) = pipeline(&layered_pipeline(5, 8));
    let mut run = Run::start(&url, "zombie", &file, "1s");
    let deadline = Instant::now() + RUN_LIMIT;
    while run.record_epoch().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(800));
    let (master, epoch) = run.master().unwrap();
    assert_eq!(master, 0);
    run.signal(0, "-STOP");
    wait_for_new_master(&run, epoch, Duration::from_secs(30)).expect("a takeover");
    let (new_master, new_epoch) = run.master().unwrap();
    assert_ne!(new_master, 0);
    let record_before: String = redis_get(&url, "muster:run:zombie").unwrap();
    run.signal(0, "-CONT");
    // The old master notices within a lease period and exits by itself.
    let at = run.running.iter().position(|i| i.index == 0).unwrap();
    let mut zombie = run.running.remove(at);
    let stopped = Instant::now();
    let code = loop {
        if let Some(status) = zombie.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "the old master did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&zombie.log).unwrap();
    assert_eq!(code, Some(3), "{log}");
    let line = format!("superseded by instance {new_master} at epoch {new_epoch}");
    assert!(log.contains(&line), "{log}");
    // Nothing it wrote was taken: the record is the new master's.
    let record_after: serde_json::Value =
        serde_json::from_str(&redis_get::<String>(&url, "muster:run:zombie").unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&record_before).unwrap();
    assert_eq!(record_after["epoch"], before["epoch"]);
    assert_eq!(record_after["urls"], before["urls"]);
    let ended = run.finish(RUN_LIMIT);
    for (index, code, log) in &ended.0 {
        assert_eq!(*code, Some(0), "instance {index}:\n{log}");
    }
    let done = status(&url, "zombie");
    assert_eq!(done["finished"][0], "succeeded", "{done}");
    assert_eq!(succeeded(&done).len(), 40);
    // The journal's last stint is the new master's.
    assert_eq!(done["epoch"].as_u64(), Some(new_epoch), "{done}");
    let _ = dir;
}

#[test]
fn a_short_redis_outage_causes_no_takeover() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_dir, file) = pipeline(&layered_pipeline(4, 6));
    let run = Run::start(&url, "outage", &file, "4s");
    let deadline = Instant::now() + RUN_LIMIT;
    while run.record_epoch().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Longer than the lease itself: it lapses in Redis meanwhile.
    redis.pause(Duration::from_secs(5));
    let ended = run.finish(RUN_LIMIT);
    let all = ended.text();
    ended.assert_exited(0, "outage");
    assert!(!all.contains("takes the run over"), "{all}");
    let done = status(&url, "outage");
    assert_eq!(done["epoch"].as_u64(), Some(1), "{done}");
}

#[test]
fn a_long_redis_outage_fails_the_run_clearly_and_the_same_command_resumes_it() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (dir, file) = pipeline(&layered_pipeline(4, 6));
    let run = Run::start(&url, "long-outage", &file, "4s");
    let deadline = Instant::now() + RUN_LIMIT;
    while journaled_so_far(&url, "long-outage").len() < 4 {
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Longer than a journal append is retried (30 s).
    redis.pause(Duration::from_secs(40));
    let ended = run.finish(RUN_LIMIT);
    let all = ended.text();
    ended.assert_exited(3, "long-outage");
    assert!(all.contains("journal"), "the master says why:\n{all}");
    assert!(!all.contains("takes the run over"), "{all}");
    let journaled = succeeded(&status(&url, "long-outage"));
    let offset = effects(dir.path()).len();

    // The same command again goes on from the journal.
    let again = Run::start(&url, "long-outage", &file, "4s");
    let ended = again.finish(RUN_LIMIT);
    let all = ended.text();
    ended.assert_exited(0, "long-outage");
    assert!(all.contains("going on from it"), "{all}");
    let rerun: Vec<String> = effects(dir.path())[offset..]
        .iter()
        .filter(|m| journaled.contains(*m))
        .cloned()
        .collect();
    assert!(
        rerun.is_empty(),
        "journaled modules ran again: {rerun:?}\n{all}"
    );
    assert_eq!(succeeded(&status(&url, "long-outage")).len(), 24);
}
