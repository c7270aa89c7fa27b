//! The make scenario: the same DAG of `true` commands run by the `muster`
//! binary and by `make -j8`, wall time against wall time.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::stats::stats_precise;

/// 2,000 `true` commands in 10 layers of 200, each needing two modules of
/// the layer before: `muster run --workers 8` against `make -j8`.
pub fn versus_make(runs: usize, muster: &Path) -> Result<Value> {
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
