//! The results of a run: each scenario's JSON line, printed as it comes,
//! and at the end the markdown report written from them (the figures
//! table, ratios against the peers, the targets, the hand-written notes).

use std::fmt::Write as _;
use std::process::Command;

use serde_json::Value;

/// Every scenario's result, in order, for the report.
#[derive(Default)]
pub struct Report {
    lines: Vec<Value>,
}

impl Report {
    /// Prints `line` (one JSON line on stdout) and keeps it for the report.
    pub fn add(&mut self, line: Value) {
        println!("{line}");
        self.lines.push(line);
    }

    /// The report in markdown: one table per scenario group, ratios
    /// against the peers.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        write_header(&mut out);
        self.write_figures(&mut out);
        self.write_peer_ratios(&mut out);
        self.write_targets(&mut out);
        write_notes(&mut out);
        out
    }

    fn find(&self, scenario: &str, who: &str) -> Option<&Value> {
        self.lines
            .iter()
            .find(|l| l["scenario"] == scenario && l["who"] == who)
    }

    /// muster's median `key` in `scenario`.
    fn median(&self, scenario: &str, key: &str) -> Option<f64> {
        self.find(scenario, "muster")
            .and_then(|l| l[key]["median"].as_f64())
    }

    /// How many times better muster's median `key` is than `peer`'s.
    fn ratio(&self, peer: &str, scenario: &str, key: &str, higher_is_better: bool) -> Option<f64> {
        let ours = self.find(scenario, "muster")?[key]["median"].as_f64()?;
        let theirs = self.find(scenario, peer)?[key]["median"].as_f64()?;
        Some(if higher_is_better {
            ours / theirs
        } else {
            theirs / ours
        })
    }

    /// The table of every figure, one row per figure of each line.
    fn write_figures(&self, out: &mut String) {
        let _ = writeln!(out, "| scenario | who | figure | median | min–max |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for line in &self.lines {
            write_figure_rows(out, line);
        }
    }

    /// muster against each peer, where both measured the same thing.
    fn write_peer_ratios(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Ratios against the peers\n");
        for peer in ["dask", "redis-queue"] {
            if let Some(r) = self.ratio(peer, "throughput", "rate", true) {
                let _ = writeln!(
                    out,
                    "- throughput: muster dispatches {r:.1}× as many modules/s as {peer}"
                );
            }
            if let Some(r) = self.ratio(peer, "chain", "p50", false) {
                let _ = writeln!(
                    out,
                    "- chain, p50 per step: muster is {r:.1}× as fast as {peer}"
                );
            }
        }
    }

    /// The project's targets, each with its figure and whether it was met.
    fn write_targets(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Targets\n");
        let _ = writeln!(out, "| target | measured | met |");
        let _ = writeln!(out, "| --- | --- | --- |");
        for (target, value, met, unit) in self.targets() {
            let (shown, verdict) = match value {
                Some(v) => (
                    format!("{v:.2}{unit}"),
                    if met(v) { "yes" } else { "**no**" },
                ),
                None => ("not measured".into(), "—"),
            };
            let _ = writeln!(out, "| {target} | {shown} | {verdict} |");
        }
        crate::cache::write_target(out, self.find("cache", "muster"));
    }

    /// Each target: its name, the figure measured, whether that meets it,
    /// and the figure's unit.
    fn targets(&self) -> [(&'static str, Option<f64>, Met, &'static str); 6] {
        let plan_100k = self
            .lines
            .iter()
            .find(|l| l["scenario"] == "plan" && l["modules"] == 100_000)
            .and_then(|l| l["seconds"]["median"].as_f64());
        let per_worker = self
            .find("idle-workers", "muster")
            .and_then(|l| l["kib_per_worker"].as_f64());
        let make_ratio = self
            .find("make", "muster")
            .and_then(|l| l["ratio"].as_f64());
        [
            (
                "throughput ≥ 5× Dask",
                self.ratio("dask", "throughput", "rate", true),
                |v| v >= 5.0,
                "×",
            ),
            (
                "throughput ≥ 2× Redis queue",
                self.ratio("redis-queue", "throughput", "rate", true),
                |v| v >= 2.0,
                "×",
            ),
            (
                "chain p50 ≤ 200 µs per step",
                self.median("chain", "p50"),
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
        ]
    }
}

/// Whether a figure meets its target.
type Met = fn(f64) -> bool;

/// The title and where the figures come from.
fn write_header(out: &mut String) {
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
}

/// One line's rows in the figures table.
fn write_figure_rows(out: &mut String, line: &Value) {
    if line["scenario"] == "cache" && line.get("error").is_none() {
        return crate::cache::write_figure_rows(out, line);
    }
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

/// Hand-written: what the profile showed and what was done about it.
fn write_notes(out: &mut String) {
    if let Ok(notes) = std::fs::read_to_string("bench/notes.md") {
        let _ = writeln!(out, "\n{}", notes.trim_end());
    }
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
