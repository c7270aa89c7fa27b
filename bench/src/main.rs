//! muster's benchmark (`scripts/bench.sh` builds it in release mode and
//! runs it). Each scenario prints one JSON line; `--write FILE` also
//! writes the markdown report. The hub runs in this process, as in the
//! `muster` binary, so its CPU time and memory are this process's; workers
//! are separate processes (this binary again, `swarm`) with the no-op
//! execution mode, so what is measured is muster's own dispatch.
//!
//! This file is the command line and the choice of scenarios; each
//! scenario lives in its own module, the report in `report`.

mod cache;
mod dashboard;
mod dispatch;
mod journal;
mod make;
mod peers;
mod plan;
mod report;
mod stats;
mod swarm;
mod system;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::dispatch::{chain_line, dispatch, idle_workers, noop_plan, throughput_line, Dispatch};
use crate::report::Report;

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
        /// Only these scenarios (throughput, chain, journal, dashboard,
        /// make, cache, workers, plan, peers).
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            runs,
            only,
            write,
            muster,
        } => run_all(runs.max(1), &only, write.as_deref(), &muster),
        Cmd::Swarm { hub, token, count } => swarm::swarm(&hub, &token, count),
        Cmd::PlanSize { file } => plan::plan_size(&file),
    }
}

/// The `run` subcommand: the scenarios `only` names (all if none), each
/// `runs` times; the markdown report to `write` at the end.
fn run_all(runs: usize, only: &[String], write: Option<&Path>, muster: &Path) -> Result<()> {
    system::raise_open_files();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = Report::default();
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
        report.add(chain_line("chain", "muster", &runs));
    }
    if wanted("journal") {
        for line in journal::journal_lines(&runtime, runs)? {
            report.add(line);
        }
    }
    if wanted("dashboard") {
        let lines = dashboard::dashboard_lines(&runtime, runs).unwrap_or_else(|e| {
            vec![json!({"scenario": "dashboard", "who": "muster", "error": format!("{e:#}")})]
        });
        for line in lines {
            report.add(line);
        }
    }
    if wanted("make") {
        report.add(make::versus_make(runs, muster)?);
    }
    if wanted("cache") {
        report.add(cache::versus_turbo(runs, muster).unwrap_or_else(
            |e| json!({"scenario": "cache", "who": "muster", "error": format!("{e:#}")}),
        ));
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
            report.add(plan::plan_line(modules, runs)?);
        }
    }
    if wanted("peers") {
        for (who, script) in [
            ("dask", "bench/peers/dask_bench.py"),
            ("redis-queue", "bench/peers/redis_queue.py"),
        ] {
            match peers::peer(script, runs) {
                Ok(lines) => lines
                    .into_iter()
                    .for_each(|line| report.add(peers::normalise(line, who))),
                Err(e) => {
                    report.add(json!({"scenario": "peers", "who": who, "error": format!("{e:#}")}))
                }
            }
        }
    }
    if let Some(path) = write {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("muster-bench: wrote {}", path.display());
    }
    Ok(())
}
