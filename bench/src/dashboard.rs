//! The dashboard scenario: what the page weighs, how long a module's
//! change takes from the hub to a browser's DOM, and what each connected
//! viewer costs the master. The viewers are real pages in a headless
//! Chromium (`tests/browser/viewers.js`, Debian's `chromium` through
//! puppeteer-core), in their own processes, so the master's CPU (this
//! process) holds only what serving them costs. The run is the journal
//! scenario's file-journaled throughput run (the dashboard shows the
//! journal), with 0, 1 and 4 viewers in alternating rounds. The latency
//! is measured twice: at a normal pace (300 modules of 20 ms on four
//! workers, about 1,200 changes per run) and in the saturated throughput
//! run (the last 5,000 changes a page saw).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use muster_hub::Hub;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::dispatch::{bench_plan, dispatch_with, noop_plan, Dispatch};
use crate::journal::file_journaling;
use crate::stats::{stats, stats_precise};
use crate::swarm::TOKEN;

/// The viewer counts measured, 0 first: the base the others are against.
const VIEWERS: [usize; 3] = [0, 1, 4];
/// As the throughput scenario.
const MODULES: usize = 10_000;
/// The paced run for the latency: modules that take 20 ms each on four
/// workers, four changes each (ready, assigned, running, succeeded).
const PACED_MODULES: usize = 300;
/// How long the viewers' browser has to load every page.
const READY_LIMIT: Duration = Duration::from_secs(90);

/// The scenario's lines: the page's weight, then per viewer count the
/// master's CPU and the throughput, each viewer's cost, and the latency
/// from the hub to the DOM.
pub fn dashboard_lines(runtime: &Runtime, runs: usize) -> Result<Vec<Value>> {
    let mut lines = vec![json!({
        "scenario": "dashboard-page", "who": "muster",
        "bytes": muster_hub::DASHBOARD_PAGE.len(),
    })];
    let script = viewers_script()?;
    let state = tempfile::Builder::new()
        .prefix("bench-dashboard-")
        .tempdir()?;
    let mut measured: Vec<Vec<Dispatch>> = VIEWERS.iter().map(|_| Vec::new()).collect();
    let mut latencies: Vec<f64> = Vec::new();
    let mut paced: Vec<f64> = Vec::new();
    for _ in 0..runs {
        let mut text = String::new();
        for i in 0..PACED_MODULES {
            text.push_str(&format!("[modules.m{i}]\nrun = \"sleep 0.02\"\n"));
        }
        let plan = bench_plan(&text)?;
        let (_, opened) = runtime.block_on(async {
            let journaling = file_journaling(&plan, state.path()).await?;
            dispatch_with(plan, 4, 1, Some(journaling), |hub| {
                Viewers::open(&script, hub, 1)
            })
            .await
        })?;
        paced.extend(opened.finish()?);
        for (slot, &viewers) in VIEWERS.iter().enumerate() {
            let plan = bench_plan(&noop_plan(MODULES, false))?;
            let (dispatch, opened) = runtime.block_on(async {
                let journaling = file_journaling(&plan, state.path()).await?;
                dispatch_with(plan, 8, 1, Some(journaling), |hub| {
                    (viewers > 0)
                        .then(|| Viewers::open(&script, hub, viewers))
                        .transpose()
                })
                .await
            })?;
            if let Some(opened) = opened {
                let seen = opened.finish()?;
                if viewers == 1 {
                    latencies.extend(seen);
                }
            }
            measured[slot].push(dispatch);
        }
    }
    let cpu =
        |runs: &[Dispatch]| -> Vec<f64> { runs.iter().map(Dispatch::cpu_ms_per_1000).collect() };
    let base = median(&cpu(&measured[0]));
    for (slot, &viewers) in VIEWERS.iter().enumerate() {
        let runs = &measured[slot];
        let rates: Vec<f64> = runs.iter().map(Dispatch::rate).collect();
        let mut line = json!({
            "scenario": "dashboard-viewers", "who": "muster", "viewers": viewers,
            "modules_per_s": stats(&rates),
            "master_cpu_ms_per_1000": stats_precise(&cpu(runs)),
        });
        if viewers > 0 {
            let extra = (median(&cpu(runs)) - base) / viewers as f64;
            line["extra_cpu_ms_per_1000_per_viewer"] = json!((extra * 100.0).round() / 100.0);
            line["extra_cpu_share_per_viewer"] = json!((extra / base * 1000.0).round() / 1000.0);
        }
        lines.push(line);
    }
    for (pace, mut seen) in [("paced", paced), ("saturated", latencies)] {
        seen.sort_by(f64::total_cmp);
        lines.push(json!({
            "scenario": "dashboard-latency", "who": "muster", "pace": pace,
            "changes": seen.len(),
            "p50_ms": percentile(&seen, 0.50),
            "p99_ms": percentile(&seen, 0.99),
            "max_ms": seen.last().copied(),
        }));
    }
    Ok(lines)
}

/// Pages of the live dashboard in a headless Chromium, until `finish`.
struct Viewers {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Viewers {
    /// Opens `count` pages of `hub`'s dashboard and waits for their first
    /// render.
    fn open(script: &PathBuf, hub: &Hub, count: usize) -> Result<Viewers> {
        let url = format!("{}?access_token={TOKEN}", hub.dashboard_url());
        let mut child = Command::new("node")
            .arg(script)
            .env("URL", url)
            .env("VIEWERS", count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start node for the dashboard's viewers")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let viewers = Viewers {
            child,
            stdin,
            lines,
        };
        viewers.expect("READY")?;
        Ok(viewers)
    }

    /// The line starting with `prefix`, within [`READY_LIMIT`].
    fn expect(&self, prefix: &str) -> Result<String> {
        loop {
            match self.lines.recv_timeout(READY_LIMIT) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("the viewers never said {prefix}"),
            }
        }
    }

    /// Closes the pages; the milliseconds each live change took from the
    /// hub to the first page's DOM.
    fn finish(mut self) -> Result<Vec<f64>> {
        writeln!(self.stdin, "STOP")?;
        let line = self.expect("LATENCIES ")?;
        let _ = self.child.wait();
        let value: Value = serde_json::from_str(&line["LATENCIES ".len()..])?;
        if let Some(errors) = value["errors"].as_array().filter(|e| !e.is_empty()) {
            bail!("the dashboard's pages had errors: {errors:?}");
        }
        Ok(value["latencies"][0]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default())
    }
}

impl Drop for Viewers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/browser/viewers.js`, with its puppeteer-core installed
/// (`scripts/test.sh` installs it).
fn viewers_script() -> Result<PathBuf> {
    let browser = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    if !browser.join("node_modules/puppeteer-core").is_dir() {
        bail!("run `npm ci` in tests/browser first (scripts/test.sh does), and install chromium");
    }
    Ok(browser.join("viewers.js"))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[at])
}
