//! The peers: other schedulers' scripts (`bench/peers/`), run with
//! python3, their JSON lines put into the shape of muster's.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Runs a peer's script; every JSON line it prints is a result.
pub fn peer(script: &str, runs: usize) -> Result<Vec<Value>> {
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

/// A peer's line in the report's shape: its throughput figures under
/// `rate`, its master-side CPU under `master_cpu_s_per_1000`.
pub fn normalise(mut line: Value, who: &str) -> Value {
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
