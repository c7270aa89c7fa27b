//! The journal scenario: throughput and chain as in `dispatch`, with the
//! hub's journal off, in a file and in Redis, measured in alternating
//! rounds (off, file, redis, off, file, redis, …) so that a slow spell of
//! the machine falls on all three alike. Journal off is `Hub::start`, as in
//! the other scenarios; a journaled hub is set up as the `muster` binary
//! sets one up (`src/journaling.rs`): a run folder with its journal and log
//! files (file; under `target/`, on the repository's disk), or a Redis
//! Stream with the log files still local (redis; a private `redis-server`
//! without persistence). Each line also says how many group commits the
//! journal made and how long they took, so a cost can be traced to them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use muster_core::journal::{module_digests, plan_digest, RunStart, Settings};
use muster_core::mask::Masker;
use muster_core::Plan;
use muster_hub::Journaling;
use muster_journal::{
    new_run_id, AppendFuture, Backend, Batch, FileJournal, JournalWriter, LogFiles, RedisJournal,
    RunFolder,
};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::dispatch::{
    bench_plan, chain_line, dispatch_plan, hub_config, noop_plan, throughput_line, Dispatch,
};
use crate::stats::stats;
use crate::system::load_average;

/// The journal issue's target: the file journal costs at most this share
/// of the throughput without it.
pub const MAX_FILE_LOSS: f64 = 0.10;

/// The sizes of the throughput and chain scenarios, so "off" is the same
/// measurement as theirs.
const THROUGHPUT_MODULES: usize = 10_000;
const CHAIN_STEPS: usize = 2_000;
/// As `src/journaling.rs` caps each module's log files.
const LOG_CAP_BYTES: u64 = 16 << 20;
/// The Redis journal's keys outlive the scenario by this much at most.
const REDIS_TTL: Duration = Duration::from_secs(600);

/// Where the hub journals in one run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    File,
    Redis,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::File => "file",
            Mode::Redis => "redis",
        }
    }
}

/// The two measurements, each run with every mode.
#[derive(Clone, Copy)]
enum Shape {
    Throughput,
    Chain,
}

impl Shape {
    /// Its plan, as the throughput and chain scenarios have it.
    fn plan(self) -> Result<Plan> {
        match self {
            Shape::Throughput => bench_plan(&noop_plan(THROUGHPUT_MODULES, false)),
            Shape::Chain => bench_plan(&noop_plan(CHAIN_STEPS, true)),
        }
    }
}

/// Every run of one shape and mode, in round order: what dispatch
/// measured, and what the journal did (none when off).
#[derive(Default)]
struct Runs {
    dispatches: Vec<Dispatch>,
    commits: Vec<Arc<Commits>>,
}

/// Every run, by shape, then mode.
type Measured = [[Runs; 3]; 2];

/// Runs `runs` rounds of throughput then chain, each with the journal off,
/// in a file and in Redis, and returns their lines: one per shape and
/// mode, then the ratios against off and whether the target held. Without
/// a `redis-server` the Redis runs are left out, with a line saying why.
pub fn journal_lines(runtime: &Runtime, runs: usize) -> Result<Vec<Value>> {
    let state = tempfile::Builder::new()
        .prefix("bench-journal-")
        .tempdir_in(target_dir()?)?;
    let mut lines = Vec::new();
    let redis = RedisServer::start()
        .map_err(|e| {
            lines.push(json!({
                "scenario": "journal", "who": "muster", "journal": "redis",
                "error": format!("{e:#}"),
            }))
        })
        .ok();
    let modes: &[Mode] = match redis {
        Some(_) => &[Mode::Off, Mode::File, Mode::Redis],
        None => &[Mode::Off, Mode::File],
    };
    let url = redis.as_ref().map(|r| r.url.as_str());
    let load_before = load_average();
    let mut measured = Measured::default();
    for _ in 0..runs {
        for shape in [Shape::Throughput, Shape::Chain] {
            for &mode in modes {
                let plan = shape.plan()?;
                let (dispatch, commits) = runtime
                    .block_on(measure(plan, mode, state.path(), url))
                    .with_context(|| format!("journal {}", mode.name()))?;
                let runs = &mut measured[shape as usize][mode as usize];
                runs.dispatches.push(dispatch);
                runs.commits.extend(commits);
            }
        }
    }
    for (shape, scenario) in [
        (Shape::Throughput, "journal-throughput"),
        (Shape::Chain, "journal-chain"),
    ] {
        for &mode in modes {
            let runs = &measured[shape as usize][mode as usize];
            let line = match shape {
                Shape::Throughput => throughput_line(scenario, "muster", &runs.dispatches),
                Shape::Chain => chain_line(scenario, "muster", &runs.dispatches),
            };
            lines.push(with_commits(line, mode, &runs.commits));
        }
    }
    let mut ratios = ratios_line(&measured, modes);
    ratios["load_average"] = json!({"before": load_before, "after": load_average()});
    lines.push(ratios);
    Ok(lines)
}

/// One run of `plan` with the journal `mode`.
async fn measure(
    plan: Plan,
    mode: Mode,
    state: &Path,
    redis: Option<&str>,
) -> Result<(Dispatch, Option<Arc<Commits>>)> {
    let (journaling, commits) = match mode {
        Mode::Off => (None, None),
        Mode::File | Mode::Redis => {
            let (journaling, commits) = journaling(&plan, mode, state, redis).await?;
            (Some(journaling), Some(commits))
        }
    };
    let dispatch = dispatch_plan(plan, 8, 1, journaling).await?;
    Ok((dispatch, commits))
}

/// A new run's file journal under `state`, as `muster run` opens one.
pub async fn file_journaling(plan: &Plan, state: &Path) -> Result<Journaling> {
    Ok(journaling(plan, Mode::File, state, None).await?.0)
}

/// A new run's journal, as `muster run` (file) or `muster ci` (Redis)
/// opens one, its backend counted.
async fn journaling(
    plan: &Plan,
    mode: Mode,
    state: &Path,
    redis: Option<&str>,
) -> Result<(Journaling, Arc<Commits>)> {
    let id = new_run_id(SystemTime::now());
    let folder = RunFolder::create(state, &id)?;
    let epoch = unix_ms();
    let backend: Box<dyn Backend> = match (mode, redis) {
        (Mode::File, _) => Box::new(FileJournal::create(&folder.journal())?),
        (Mode::Redis, Some(url)) => Box::new(
            RedisJournal::connect(url, &id, epoch, REDIS_TTL)
                .await?
                .keep_log_tails(Masker::default()),
        ),
        _ => bail!("no journal for {}", mode.name()),
    };
    let commits = Arc::new(Commits::default());
    let counted = Counted {
        inner: backend,
        commits: Arc::clone(&commits),
    };
    let logs = LogFiles::new(&folder.logs(), Masker::default(), LOG_CAP_BYTES)?;
    let writer = JournalWriter::start(Box::new(counted), Some(logs), 1);
    let config = hub_config();
    let modules = module_digests(plan);
    let start = RunStart {
        run_id: id,
        pipeline: "bench.toml".into(),
        muster_version: env!("CARGO_PKG_VERSION").into(),
        stint: 1,
        epoch,
        resumed_from: None,
        took_over: None,
        plan_digest: plan_digest(&modules),
        modules,
        settings: Settings {
            fail_fast: config.fail_fast,
            max_worker_losses: config.max_worker_losses,
        },
    };
    let journaling = Journaling {
        writer,
        start,
        masker: Masker::default(),
        resume: None,
    };
    Ok((journaling, commits))
}

/// What a journal's backend did in one run: its appends (each one group
/// commit: one write and `fdatasync`, or one script call), the records
/// they held, and the time spent in them.
#[derive(Default)]
struct Commits {
    appends: AtomicU64,
    records: AtomicU64,
    busy_us: AtomicU64,
}

/// A backend that counts into [`Commits`] what it passes on.
struct Counted {
    inner: Box<dyn Backend>,
    commits: Arc<Commits>,
}

impl Backend for Counted {
    fn append<'a>(&'a mut self, batch: &'a Batch) -> AppendFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let appended = self.inner.append(batch).await;
            let commits = &self.commits;
            commits.appends.fetch_add(1, Ordering::Relaxed);
            commits
                .records
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            commits
                .busy_us
                .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
            appended
        })
    }

    fn log(&mut self, module: &str, text: &str) {
        self.inner.log(module, text);
    }
}

/// `line` with its journal mode and, when journaled, its group commits
/// per run: how many, records per commit, and milliseconds spent in them.
fn with_commits(mut line: Value, mode: Mode, commits: &[Arc<Commits>]) -> Value {
    line["journal"] = mode.name().into();
    if commits.is_empty() {
        return line;
    }
    let each = |f: &dyn Fn(&Commits) -> f64| commits.iter().map(|c| f(c)).collect::<Vec<_>>();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    line["commits"] = stats(&each(&|c| load(&c.appends)));
    line["records_per_commit"] = stats(&each(&|c| load(&c.records) / load(&c.appends).max(1.0)));
    line["commit_ms"] = stats(&each(&|c| load(&c.busy_us) / 1000.0));
    line
}

/// Each journaled mode against off: the ratio of the medians, and each
/// round's own ratio (the runs of one round ran back to back); whether
/// the file journal met the target.
fn ratios_line(measured: &Measured, modes: &[Mode]) -> Value {
    let rate = |d: &Dispatch| d.rate();
    let p50 = |d: &Dispatch| d.step_percentile_us(0.5);
    let ratios = |shape: Shape, figure: &dyn Fn(&Dispatch) -> f64| {
        let off = &measured[shape as usize][Mode::Off as usize].dispatches;
        let mut by_mode = serde_json::Map::new();
        for &mode in modes.iter().filter(|&&m| m != Mode::Off) {
            let on = &measured[shape as usize][mode as usize].dispatches;
            let rounds: Vec<f64> = on
                .iter()
                .zip(off)
                .map(|(on, off)| round3(figure(on) / figure(off)))
                .collect();
            let of_medians = median(on.iter().map(figure)) / median(off.iter().map(figure));
            by_mode.insert(
                mode.name().into(),
                json!({"ratio": round3(of_medians), "rounds": rounds}),
            );
        }
        Value::Object(by_mode)
    };
    let throughput = ratios(Shape::Throughput, &rate);
    let file = throughput["file"]["ratio"].as_f64().unwrap_or(0.0);
    json!({
        "scenario": "journal", "who": "muster",
        "throughput_vs_off": throughput,
        "chain_p50_vs_off": ratios(Shape::Chain, &p50),
        "target": format!("file journal throughput ≥ {:.2} × off", 1.0 - MAX_FILE_LOSS),
        "met": file >= 1.0 - MAX_FILE_LOSS,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `target/`, beside this binary (`target/release/muster-bench`): on the
/// repository's disk, as a run's state folder would be.
fn target_dir() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    me.parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .context("the benchmark binary has no target folder")
}

/// A private `redis-server` on a free port, without persistence, killed
/// when dropped.
struct RedisServer {
    child: Child,
    url: String,
}

impl RedisServer {
    fn start() -> Result<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start redis-server (Debian package redis-server)")?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
