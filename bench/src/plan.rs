//! The plan scenario: generated pipelines of 10k–100k modules, parsed in a
//! fresh process (the `plan-size` subcommand) for its time and peak memory.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use muster_core::parse_pipeline;
use serde_json::{json, Value};

use crate::stats::{stats, stats_precise};
use crate::system::peak_rss_kib;

/// `modules` modules with three needs each (on random earlier ones), parsed
/// in a fresh process so its peak memory is the plan's.
pub fn plan_line(modules: usize, runs: usize) -> Result<Value> {
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

/// The `plan-size` subcommand: parses `file` and prints one JSON line with
/// the time it took and this process's peak memory.
pub fn plan_size(file: &Path) -> Result<()> {
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
