//! The scenarios that run a hub in this process against [`Swarm`] workers:
//! throughput (many independent modules), chain (one module after another)
//! and idle workers (memory per connection), and their JSON lines. The
//! journal scenario (`journal`) runs the first two through
//! [`dispatch_plan`] with a journal.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use muster_core::{parse_pipeline, ModuleState, Plan};
use muster_hub::{Hub, HubConfig, Journaling, RunEvent};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::stats::{stats, stats_precise};
use crate::swarm::{Swarm, TOKEN};
use crate::system::{cpu_self, rss_kib};

/// What one dispatch run measured.
pub struct Dispatch {
    modules: usize,
    /// From the first worker joining to the last module ending.
    elapsed: Duration,
    /// This process's CPU time over the same span (the hub runs here).
    cpu: Duration,
    /// Between consecutive module completions, in plan order.
    steps: Vec<Duration>,
}

impl Dispatch {
    /// Modules per second.
    /// The master's CPU per 1,000 modules, in milliseconds.
    pub fn cpu_ms_per_1000(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 * 1000.0 / self.modules as f64
    }

    pub fn rate(&self) -> f64 {
        self.modules as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile (0–1) of the time per step, in µs.
    pub fn step_percentile_us(&self, p: f64) -> f64 {
        let mut us: Vec<f64> = self.steps.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        us[((us.len() - 1) as f64 * p).round() as usize]
    }
}

/// `n` modules running `true`; each needs the one before it when `chain`.
pub fn noop_plan(n: usize, chain: bool) -> String {
    let mut text = String::with_capacity(n * 40);
    for i in 0..n {
        let _ = writeln!(text, "[modules.m{i}]\nrun = \"true\"");
        if chain && i > 0 {
            let _ = writeln!(text, "needs = [\"m{}\"]", i - 1);
        }
    }
    text
}

/// Runs `plan` through an in-process hub and `processes` × `per_process`
/// no-op worker connections.
pub async fn dispatch(plan: String, processes: u32, per_process: u32) -> Result<Dispatch> {
    dispatch_plan(bench_plan(&plan)?, processes, per_process, None).await
}

/// A generated pipeline, parsed.
pub fn bench_plan(text: &str) -> Result<Plan> {
    Ok(parse_pipeline("bench.toml", text)?)
}

/// [`dispatch`] of a parsed plan, journaling through `journaling` when
/// given (none: `Hub::start`, as the other scenarios).
pub async fn dispatch_plan(
    plan: Plan,
    processes: u32,
    per_process: u32,
    journaling: Option<Journaling>,
) -> Result<Dispatch> {
    let (dispatch, ()) =
        dispatch_with(plan, processes, per_process, journaling, |_| Ok(())).await?;
    Ok(dispatch)
}

/// [`dispatch_plan`], calling `before_workers` with the started hub before
/// the workers start (the dashboard scenario opens its viewers there);
/// what it returns is handed back with the figures.
pub async fn dispatch_with<T>(
    plan: Plan,
    processes: u32,
    per_process: u32,
    journaling: Option<Journaling>,
    before_workers: impl FnOnce(&Hub) -> Result<T>,
) -> Result<(Dispatch, T)> {
    let modules = plan.len();
    let mut hub = match journaling {
        None => start_hub(plan).await?,
        Some(journaling) => start_journaled_hub(plan, journaling).await?,
    };
    let mut events = hub.take_events().context("events")?;
    // It may block (starting a browser): the hub serves on other threads.
    let held = tokio::task::block_in_place(|| before_workers(&hub))?;
    let _swarm = Swarm::spawn(hub.url(), processes, per_process)?;
    let mut first_join = None;
    let mut cpu_at_join = Duration::ZERO;
    let mut done = Vec::with_capacity(modules);
    while let Some(event) = events.recv().await {
        match event {
            RunEvent::WorkerJoined { .. } if first_join.is_none() => {
                first_join = Some(Instant::now());
                cpu_at_join = cpu_self();
            }
            RunEvent::Module {
                state: ModuleState::Succeeded(_),
                ..
            } => done.push(Instant::now()),
            _ => {}
        }
    }
    let (end, cpu_end) = (Instant::now(), cpu_self());
    let summary = hub.wait(Duration::from_secs(5)).await?;
    if !summary.succeeded() || done.len() != modules {
        bail!(
            "the run did not succeed: {} of {modules} modules",
            done.len()
        );
    }
    let start = first_join.context("no worker joined")?;
    let dispatch = Dispatch {
        modules,
        elapsed: end - start,
        cpu: cpu_end.saturating_sub(cpu_at_join),
        steps: done.windows(2).map(|w| w[1] - w[0]).collect(),
    };
    Ok((dispatch, held))
}

/// Idle connections: a plan whose only module nobody can take, so every
/// worker joins and waits; the master's RSS before and after.
pub async fn idle_workers(processes: u32, per_process: u32) -> Result<Value> {
    let plan = parse_pipeline(
        "bench.toml",
        "[modules.never]\nrun = \"true\"\nrequires = [\"nobody-has-this\"]\n",
    )?;
    let mut hub = start_hub(plan).await?;
    let mut events = hub.take_events().context("events")?;
    let before = rss_kib(std::process::id()).context("no RSS")?;
    let _swarm = Swarm::spawn(hub.url(), processes, per_process)?;
    let wanted = (processes * per_process) as usize;
    let mut joined = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(RunEvent::WorkerJoined { .. })) => joined += 1,
            Ok(Some(_)) => {}
            _ => bail!("only {joined} of {wanted} workers joined"),
        }
    }
    // Let registrations settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(std::process::id()).context("no RSS")?;
    hub.canceller().cancel("the measurement is done").await;
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    hub.wait(Duration::from_secs(5)).await?;
    let _ = drain.await;
    let per = (after.saturating_sub(before)) as f64 / wanted as f64;
    Ok(json!({
        "scenario": "idle-workers", "who": "muster", "workers": wanted,
        "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_worker": (per * 10.0).round() / 10.0,
    }))
}

/// Modules per second and master CPU per 1,000 modules, over `runs`.
pub fn throughput_line(scenario: &str, who: &str, runs: &[Dispatch]) -> Value {
    let rates: Vec<f64> = runs.iter().map(Dispatch::rate).collect();
    let cpu: Vec<f64> = runs
        .iter()
        .map(|r| r.cpu.as_secs_f64() * 1000.0 / r.modules as f64)
        .collect();
    json!({
        "scenario": scenario, "who": who, "unit": "modules/s",
        "modules": runs[0].modules,
        "rate": stats(&rates),
        "master_cpu_s_per_1000": stats_precise(&cpu),
    })
}

/// p50 and p99 of the time per chain step, in µs, over `runs`.
pub fn chain_line(scenario: &str, who: &str, runs: &[Dispatch]) -> Value {
    let percentile =
        |p: f64| -> Vec<f64> { runs.iter().map(|r| r.step_percentile_us(p)).collect() };
    json!({
        "scenario": scenario, "who": who, "unit": "us/step",
        "steps": runs[0].modules,
        "p50": stats(&percentile(0.5)),
        "p99": stats(&percentile(0.99)),
    })
}

/// The hub's settings in every scenario.
pub fn hub_config() -> HubConfig {
    HubConfig {
        token: TOKEN.into(),
        ..HubConfig::default()
    }
}

async fn start_hub(plan: Plan) -> Result<Hub> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(Hub::start(listener, plan, hub_config()).await?)
}

async fn start_journaled_hub(plan: Plan, journaling: Journaling) -> Result<Hub> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(Hub::start_journaled(listener, plan, hub_config(), Some(journaling)).await?)
}
