//! muster's benchmark (`scripts/bench.sh` builds it in release mode and
//! runs it). Each scenario prints one JSON line; `--write FILE` also
//! writes the markdown report. The hub runs in this process, as in the
//! `muster` binary, so its CPU time and memory are this process's; workers
//! are separate processes (this binary again, `swarm`) with the no-op
//! execution mode, so what is measured is muster's own dispatch.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use muster_core::{parse_pipeline, ModuleState};
use muster_hub::{Hub, HubConfig, RunEvent};
use muster_worker::{WorkerConfig, WorkerEvent, WorkerObserver};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "muster's benchmark; see docs/benchmarks.md")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scenarios and print one JSON line each.
    Run {
        /// Repetitions of each scenario (figures are medians, with min/max).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only these scenarios (throughput, chain, make, workers, plan, peers).
        #[arg(long)]
        only: Vec<String>,
        /// Write the markdown report here too.
        #[arg(long)]
        write: Option<PathBuf>,
        /// The `muster` binary, for the make scenario.
        #[arg(long, default_value = "target/release/muster")]
        muster: PathBuf,
    },
    /// Internal: `count` no-op workers in this process, joined to `hub`.
    Swarm {
        #[arg(long)]
        hub: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        count: u32,
    },
    /// Internal: parse a pipeline file; print time and peak memory.
    PlanSize { file: PathBuf },
}

const TOKEN: &str = "bench-token";

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            runs,
            only,
            write,
            muster,
        } => run_all(runs.max(1), &only, write.as_deref(), &muster),
        Cmd::Swarm { hub, token, count } => swarm(&hub, &token, count),
        Cmd::PlanSize { file } => plan_size(&file),
    }
}

/// Every scenario's result, in order, for the report.
struct Report {
    lines: Vec<Value>,
}

impl Report {
    fn add(&mut self, line: Value) {
        println!("{line}");
        self.lines.push(line);
    }

    fn find(&self, scenario: &str, who: &str) -> Option<&Value> {
        self.lines
            .iter()
            .find(|l| l["scenario"] == scenario && l["who"] == who)
    }
}

fn run_all(runs: usize, only: &[String], write: Option<&Path>, muster: &Path) -> Result<()> {
    raise_open_files();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = Report { lines: Vec::new() };
    if wanted("throughput") {
        let runs: Vec<Dispatch> = (0..runs)
            .map(|_| runtime.block_on(dispatch(noop_plan(10_000, false), 8, 1)))
            .collect::<Result<_>>()?;
        report.add(throughput_line("throughput", "muster", &runs));
    }
    if wanted("chain") {
        let runs: Vec<Dispatch> = (0..runs)
            .map(|_| runtime.block_on(dispatch(noop_plan(2_000, true), 8, 1)))
            .collect::<Result<_>>()?;
        report.add(chain_line("muster", &runs));
    }
    if wanted("make") {
        report.add(versus_make(runs, muster)?);
    }
    if wanted("workers") {
        report.add(runtime.block_on(idle_workers(4, 250))?);
        let runs: Vec<Dispatch> = (0..runs)
            .map(|_| runtime.block_on(dispatch(noop_plan(10_000, false), 4, 250)))
            .collect::<Result<_>>()?;
        report.add(throughput_line("throughput-1000-workers", "muster", &runs));
    }
    if wanted("plan") {
        for modules in [10_000, 50_000, 100_000] {
            report.add(plan_line(modules, runs)?);
        }
    }
    if wanted("peers") {
        for (who, script) in [
            ("dask", "bench/peers/dask_bench.py"),
            ("redis-queue", "bench/peers/redis_queue.py"),
        ] {
            match peer(script, runs) {
                Ok(lines) => lines
                    .into_iter()
                    .for_each(|line| report.add(normalise(line, who))),
                Err(e) => {
                    report.add(json!({"scenario": "peers", "who": who, "error": format!("{e:#}")}))
                }
            }
        }
    }
    if let Some(path) = write {
        std::fs::write(path, markdown(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("muster-bench: wrote {}", path.display());
    }
    Ok(())
}

/// `n` modules running `true`; each needs the one before it when `chain`.
fn noop_plan(n: usize, chain: bool) -> String {
    let mut text = String::with_capacity(n * 40);
    for i in 0..n {
        let _ = writeln!(text, "[modules.m{i}]\nrun = \"true\"");
        if chain && i > 0 {
            let _ = writeln!(text, "needs = [\"m{}\"]", i - 1);
        }
    }
    text
}

/// What one dispatch run measured.
struct Dispatch {
    modules: usize,
    /// From the first worker joining to the last module ending.
    elapsed: Duration,
    /// This process's CPU time over the same span (the hub runs here).
    cpu: Duration,
    /// Between consecutive module completions, in plan order.
    steps: Vec<Duration>,
}

/// Runs `plan` through an in-process hub and `processes` × `per_process`
/// no-op worker connections.
async fn dispatch(plan: String, processes: u32, per_process: u32) -> Result<Dispatch> {
    let plan = parse_pipeline("bench.toml", &plan)?;
    let modules = plan.len();
    let mut hub = start_hub(plan).await?;
    let mut events = hub.take_events().context("events")?;
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
    Ok(Dispatch {
        modules,
        elapsed: end - start,
        cpu: cpu_end.saturating_sub(cpu_at_join),
        steps: done.windows(2).map(|w| w[1] - w[0]).collect(),
    })
}

async fn start_hub(plan: muster_core::Plan) -> Result<Hub> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let config = HubConfig {
        token: TOKEN.into(),
        ..HubConfig::default()
    };
    Ok(Hub::start(listener, plan, config).await?)
}

/// Worker processes (this binary, `swarm`), killed on drop.
struct Swarm(Vec<Child>);

impl Swarm {
    fn spawn(hub: &str, processes: u32, per_process: u32) -> Result<Swarm> {
        let me = std::env::current_exe()?;
        let children = (0..processes)
            .map(|_| {
                Command::new(&me)
                    .args(["swarm", "--hub", hub, "--token", TOKEN, "--count"])
                    .arg(per_process.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Swarm(children))
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a swarm worker says (a lost hub) goes to stderr, as the `muster`
/// binary shows it; no-op workers transfer nothing.
#[derive(Debug)]
struct SwarmView;

impl WorkerObserver for SwarmView {
    fn event(&self, event: WorkerEvent) {
        eprintln!("muster: {event}");
    }
}

fn swarm(hub: &str, token: &str, count: u32) -> Result<()> {
    raise_open_files();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let config = WorkerConfig {
                    hub: hub.to_owned(),
                    token: token.to_owned(),
                    name: format!("bench-{}-{i}", std::process::id()),
                    capabilities: Vec::new(),
                    slots: 1,
                    workdir: std::env::temp_dir(),
                    connect_timeout: Duration::from_secs(30),
                    reconnect_timeout: Duration::from_secs(30),
                    transfer_stall_timeout: Duration::from_secs(60),
                    noop: true,
                    observer: std::sync::Arc::new(SwarmView),
                };
                tokio::spawn(muster_worker::run(config, stop.child_token()))
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    Ok(())
}

/// Idle connections: a plan whose only module nobody can take, so every
/// worker joins and waits; the master's RSS before and after.
async fn idle_workers(processes: u32, per_process: u32) -> Result<Value> {
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

fn throughput_line(scenario: &str, who: &str, runs: &[Dispatch]) -> Value {
    let rates: Vec<f64> = runs
        .iter()
        .map(|r| r.modules as f64 / r.elapsed.as_secs_f64())
        .collect();
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

fn chain_line(who: &str, runs: &[Dispatch]) -> Value {
    let percentile = |p: f64| -> Vec<f64> {
        runs.iter()
            .map(|r| {
                let mut us: Vec<f64> = r.steps.iter().map(|d| d.as_secs_f64() * 1e6).collect();
                us.sort_by(f64::total_cmp);
                us[((us.len() - 1) as f64 * p).round() as usize]
            })
            .collect()
    };
    json!({
        "scenario": "chain", "who": who, "unit": "us/step",
        "steps": runs[0].modules,
        "p50": stats(&percentile(0.5)),
        "p99": stats(&percentile(0.99)),
    })
}

/// Median, min and max of several runs, and the runs, to one decimal.
fn stats(values: &[f64]) -> Value {
    stats_to(values, 1)
}

/// [`stats`] to three decimals, for figures well under one.
fn stats_precise(values: &[f64]) -> Value {
    stats_to(values, 3)
}

fn stats_to(values: &[f64], decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    let round = |v: f64| (v * scale).round() / scale;
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "median": round(sorted[sorted.len() / 2]),
        "min": round(sorted[0]),
        "max": round(sorted[sorted.len() - 1]),
        "runs": sorted.iter().map(|v| round(*v)).collect::<Vec<_>>(),
    })
}

/// 2,000 `true` commands in 10 layers of 200, each needing two modules of
/// the layer before: `muster run --workers 8` against `make -j8`.
fn versus_make(runs: usize, muster: &Path) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let (layers, width) = (10, 200);
    let (mut toml, mut make) = (String::new(), String::from(".PHONY: all\nall:"));
    for i in 0..width {
        let _ = write!(make, " m{}_{i}", layers - 1);
    }
    make.push('\n');
    for l in 0..layers {
        for i in 0..width {
            let _ = writeln!(toml, "[modules.m{l}_{i}]\nrun = \"true\"");
            let mut deps = String::new();
            if l > 0 {
                let (a, b) = (
                    format!("m{}_{i}", l - 1),
                    format!("m{}_{}", l - 1, (i + 1) % width),
                );
                let _ = writeln!(toml, "needs = [\"{a}\", \"{b}\"]");
                deps = format!(" {a} {b}");
            }
            let _ = writeln!(make, ".PHONY: m{l}_{i}\nm{l}_{i}:{deps}\n\t@true");
        }
    }
    let (toml_file, makefile) = (dir.path().join("muster.toml"), dir.path().join("Makefile"));
    std::fs::write(&toml_file, toml)?;
    std::fs::write(&makefile, make)?;
    let time = |command: &mut Command| -> Result<f64> {
        let start = Instant::now();
        let status = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{command:?} failed: {status}");
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let mut muster_s = Vec::new();
    let mut make_s = Vec::new();
    for _ in 0..runs {
        muster_s.push(time(
            Command::new(muster)
                .args(["run", "--workers", "8"])
                .arg(&toml_file)
                .env("NO_COLOR", "1"),
        )?);
        make_s.push(time(
            Command::new("make")
                .args(["-j8", "-s", "-f"])
                .arg(&makefile),
        )?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = median(&mut muster_s.clone()) / median(&mut make_s.clone());
    Ok(json!({
        "scenario": "make", "who": "muster", "unit": "s",
        "commands": layers * width,
        "muster_s": stats_precise(&muster_s), "make_s": stats_precise(&make_s),
        "ratio": (ratio * 100.0).round() / 100.0,
    }))
}

/// `modules` modules with three needs each (on random earlier ones), parsed
/// in a fresh process so its peak memory is the plan's.
fn plan_line(modules: usize, runs: usize) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("big.toml");
    let mut text = String::with_capacity(modules * 60);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |below: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below as u64) as usize
    };
    let mut edges = 0;
    for i in 0..modules {
        let _ = writeln!(text, "[modules.m{i}]\nrun = \"true\"");
        if i >= 3 {
            let mut needs = [next(i), next(i), next(i)];
            needs.sort_unstable();
            let mut uniq: Vec<usize> = needs.to_vec();
            uniq.dedup();
            edges += uniq.len();
            let list: Vec<String> = uniq.iter().map(|n| format!("\"m{n}\"")).collect();
            let _ = writeln!(text, "needs = [{}]", list.join(", "));
        }
    }
    std::fs::write(&file, text)?;
    let me = std::env::current_exe()?;
    let mut seconds = Vec::new();
    let mut peak = Vec::new();
    for _ in 0..runs {
        let output = Command::new(&me).arg("plan-size").arg(&file).output()?;
        let line: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| String::from_utf8_lossy(&output.stderr).into_owned())?;
        seconds.push(line["seconds"].as_f64().unwrap_or(0.0));
        peak.push(line["peak_rss_mib"].as_f64().unwrap_or(0.0));
    }
    Ok(json!({
        "scenario": "plan", "who": "muster", "modules": modules, "edges": edges,
        "seconds": stats_precise(&seconds), "peak_rss_mib": stats(&peak),
    }))
}

fn plan_size(file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let start = Instant::now();
    let plan = parse_pipeline(&file.display().to_string(), &text)?;
    let seconds = start.elapsed().as_secs_f64();
    let peak = peak_rss_kib(std::process::id()).unwrap_or(0);
    println!(
        "{}",
        json!({"modules": plan.len(), "edges": plan.edge_count(), "seconds": seconds,
               "peak_rss_mib": peak as f64 / 1024.0})
    );
    Ok(())
}

/// A peer's line in the report's shape: its throughput figures under
/// `rate`, its master-side CPU under `master_cpu_s_per_1000`.
fn normalise(mut line: Value, who: &str) -> Value {
    line["who"] = who.into();
    if line["scenario"] == "throughput" && line.get("rate").is_none() {
        line["rate"] = json!({
            "median": line["median"], "min": line["min"], "max": line["max"],
        });
    }
    for cpu in ["cpu_s_per_1k", "producer_cpu_s_per_1k"] {
        if let Some(v) = line.get(cpu).cloned() {
            line["master_cpu_s_per_1000"] = v;
        }
    }
    line
}

/// Runs a peer's script; every JSON line it prints is a result.
fn peer(script: &str, runs: usize) -> Result<Vec<Value>> {
    if !Path::new(script).exists() {
        bail!("{script} is missing");
    }
    let output = Command::new("python3")
        .arg(script)
        .args(["--runs", &runs.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run python3 {script}"))?;
    if !output.status.success() {
        bail!("python3 {script} failed: {}", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).context("a peer printed a bad line"))
        .collect()
}

fn cpu_self() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let (user, system) = (u.user_time(), u.system_time());
            Duration::from_micros(
                (user.tv_sec() * 1_000_000
                    + user.tv_usec()
                    + system.tv_sec() * 1_000_000
                    + system.tv_usec()) as u64,
            )
        })
        .unwrap_or_default()
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// A thousand sockets need more than the usual 1,024 descriptors.
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The report: one table per scenario group, ratios against the peers.
fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `scripts/bench.sh` (release build) on {}: {} CPUs ({}), Linux {}. Figures \
         are medians of several runs, with min–max; ratios compare medians. All figures, \
         muster's and the peers', come from the same run on the same machine.\n",
        today(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        std::env::consts::ARCH,
    );
    let _ = writeln!(out, "| scenario | who | figure | median | min–max |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for line in &report.lines {
        for (label, key) in [
            ("modules/s", "rate"),
            ("master CPU s / 1,000 modules", "master_cpu_s_per_1000"),
            ("p50 µs/step", "p50"),
            ("p99 µs/step", "p99"),
            ("muster run s", "muster_s"),
            ("make -j8 s", "make_s"),
            ("validate+plan s", "seconds"),
            ("peak RSS MiB", "peak_rss_mib"),
        ] {
            if let Some(v) = line.get(key) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {label} | {} | {}–{} |",
                    scenario_name(line),
                    line["who"].as_str().unwrap_or("?"),
                    v["median"],
                    v["min"],
                    v["max"]
                );
            }
        }
        if let Some(per) = line.get("kib_per_worker") {
            let _ = writeln!(
                out,
                "| idle workers ({}) | muster | master KiB per connected worker | {per} | {}→{} KiB |",
                line["workers"], line["rss_before_kib"], line["rss_after_kib"]
            );
        }
        if let Some(ratio) = line.get("ratio") {
            let _ = writeln!(out, "| make | muster/make | wall-time ratio | {ratio} | |");
        }
        if let Some(error) = line.get("error") {
            let _ = writeln!(
                out,
                "| {} | {} | not run | {error} | |",
                line["scenario"], line["who"]
            );
        }
    }
    let _ = writeln!(out, "\n## Ratios against the peers\n");
    let ratio = |peer: &str, scenario: &str, key: &str, higher_is_better: bool| -> Option<f64> {
        let ours = report.find(scenario, "muster")?[key]["median"].as_f64()?;
        let theirs = report.find(scenario, peer)?[key]["median"].as_f64()?;
        Some(if higher_is_better {
            ours / theirs
        } else {
            theirs / ours
        })
    };
    for peer in ["dask", "redis-queue"] {
        if let Some(r) = ratio(peer, "throughput", "rate", true) {
            let _ = writeln!(
                out,
                "- throughput: muster dispatches {r:.1}× as many modules/s as {peer}"
            );
        }
        if let Some(r) = ratio(peer, "chain", "p50", false) {
            let _ = writeln!(
                out,
                "- chain, p50 per step: muster is {r:.1}× as fast as {peer}"
            );
        }
    }
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | measured | met |");
    let _ = writeln!(out, "| --- | --- | --- |");
    let median = |scenario: &str, key: &str| {
        report
            .find(scenario, "muster")
            .and_then(|l| l[key]["median"].as_f64())
    };
    let plan_100k = report
        .lines
        .iter()
        .find(|l| l["scenario"] == "plan" && l["modules"] == 100_000)
        .and_then(|l| l["seconds"]["median"].as_f64());
    let per_worker = report
        .find("idle-workers", "muster")
        .and_then(|l| l["kib_per_worker"].as_f64());
    let make_ratio = report
        .find("make", "muster")
        .and_then(|l| l["ratio"].as_f64());
    type Met = fn(f64) -> bool;
    let rows: [(&str, Option<f64>, Met, &str); 6] = [
        (
            "throughput ≥ 5× Dask",
            ratio("dask", "throughput", "rate", true),
            |v| v >= 5.0,
            "×",
        ),
        (
            "throughput ≥ 2× Redis queue",
            ratio("redis-queue", "throughput", "rate", true),
            |v| v >= 2.0,
            "×",
        ),
        (
            "chain p50 ≤ 200 µs per step",
            median("chain", "p50"),
            |v| v <= 200.0,
            " µs",
        ),
        ("muster/make ≤ 1.5", make_ratio, |v| v <= 1.5, ""),
        (
            "≤ 64 KiB per idle worker",
            per_worker,
            |v| v <= 64.0,
            " KiB",
        ),
        ("100,000-module plan < 2 s", plan_100k, |v| v < 2.0, " s"),
    ];
    for (target, value, met, unit) in rows {
        let (shown, verdict) = match value {
            Some(v) => (
                format!("{v:.2}{unit}"),
                if met(v) { "yes" } else { "**no**" },
            ),
            None => ("not measured".into(), "—"),
        };
        let _ = writeln!(out, "| {target} | {shown} | {verdict} |");
    }
    // Hand-written: what the profile showed and what was done about it.
    if let Ok(notes) = std::fs::read_to_string("bench/notes.md") {
        let _ = writeln!(out, "\n{}", notes.trim_end());
    }
    out
}

fn scenario_name(line: &Value) -> String {
    match (line["scenario"].as_str(), line.get("modules")) {
        (Some("plan"), Some(n)) => format!("plan ({n} modules, {} edges)", line["edges"]),
        (Some(s), _) => s.to_owned(),
        _ => "?".into(),
    }
}

/// The CPU's model name, from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn today() -> String {
    let out = Command::new("date").arg("+%Y-%m-%d").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
