//! The results of a run: each scenario's JSON line, printed as it comes,
//! and at the end the markdown report written from them (the figures
//! table, ratios against the peers, the journal's cost, the targets, the
//! hand-written notes).

use std::fmt::Write as _;
use std::process::Command;

use serde_json::Value;

use crate::journal::MAX_FILE_LOSS;

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
        self.write_journal(&mut out);
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

    /// The table of every figure, one row per figure of each line (the
    /// journal's have a section of their own).
    fn write_figures(&self, out: &mut String) {
        let _ = writeln!(out, "| scenario | who | figure | median | min–max |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for line in self.lines.iter().filter(|l| !is_journal(l)) {
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

    /// The journal scenario: each figure with the journal off, in a file
    /// and in Redis, each journaled one against off, and the target.
    fn write_journal(&self, out: &mut String) {
        let journal: Vec<&Value> = self.lines.iter().filter(|l| is_journal(l)).collect();
        if journal.is_empty() {
            return;
        }
        let of = |scenario: &str, mode: &str| {
            journal
                .iter()
                .copied()
                .find(|l| l["scenario"] == scenario && l["journal"] == mode)
        };
        let summary = journal
            .iter()
            .copied()
            .find(|l| l.get("throughput_vs_off").is_some());
        let size = |scenario: &str, key: &str| of(scenario, "off").map(|l| l[key].clone());
        let _ = writeln!(out, "\n## The journal\n");
        write_journal_method(
            out,
            &size("journal-throughput", "modules").unwrap_or_default(),
            &size("journal-chain", "steps").unwrap_or_default(),
        );
        for error in journal.iter().filter(|l| l.get("error").is_some()) {
            let _ = writeln!(
                out,
                "Not measured: {} ({}).\n",
                error["journal"], error["error"]
            );
        }
        let _ = writeln!(
            out,
            "| figure | off | file | Redis | file/off | Redis/off |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
        for (label, scenario, key, rounds) in JOURNAL_ROWS {
            let figure = |mode: &str| of(scenario, mode).and_then(|l| l.get(key));
            let rounds = |mode: &str| rounds.and_then(|k| summary.map(|s| &s[k][mode]["rounds"]));
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} | {} |",
                stats_cell(figure("off")),
                stats_cell(figure("file")),
                stats_cell(figure("redis")),
                ratio_cell(figure("file"), figure("off"), rounds("file")),
                ratio_cell(figure("redis"), figure("off"), rounds("redis")),
            );
        }
        if let Some(summary) = summary {
            write_journal_verdict(out, summary);
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
    fn targets(&self) -> [(&'static str, Option<f64>, Met, &'static str); 7] {
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
        let file_journal = self
            .lines
            .iter()
            .find_map(|l| l["throughput_vs_off"]["file"]["ratio"].as_f64());
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
            (
                "file journal: throughput ≥ 0.90 × without",
                file_journal,
                |v| v >= 1.0 - MAX_FILE_LOSS,
                "×",
            ),
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

/// The journal section's rows: label, scenario, figure, and where the
/// summary line keeps each round's ratio for it.
const JOURNAL_ROWS: [(&str, &str, &str, Option<&str>); 10] = [
    (
        "throughput, modules/s",
        "journal-throughput",
        "rate",
        Some("throughput_vs_off"),
    ),
    (
        "master CPU s / 1,000 modules",
        "journal-throughput",
        "master_cpu_s_per_1000",
        None,
    ),
    (
        "chain p50 µs/step",
        "journal-chain",
        "p50",
        Some("chain_p50_vs_off"),
    ),
    ("chain p99 µs/step", "journal-chain", "p99", None),
    (
        "group commits per throughput run",
        "journal-throughput",
        "commits",
        None,
    ),
    (
        "records per group commit, throughput",
        "journal-throughput",
        "records_per_commit",
        None,
    ),
    (
        "ms in group commits per throughput run",
        "journal-throughput",
        "commit_ms",
        None,
    ),
    (
        "group commits per chain run",
        "journal-chain",
        "commits",
        None,
    ),
    (
        "records per group commit, chain",
        "journal-chain",
        "records_per_commit",
        None,
    ),
    (
        "ms in group commits per chain run",
        "journal-chain",
        "commit_ms",
        None,
    ),
];

/// Whether the file journal met its target, and how busy the machine was.
fn write_journal_verdict(out: &mut String, summary: &Value) {
    let file = summary["throughput_vs_off"]["file"]["ratio"]
        .as_f64()
        .unwrap_or(0.0);
    let verdict = if summary["met"] == true {
        "met"
    } else {
        "**not met**"
    };
    let _ = writeln!(
        out,
        "\nTarget: the file journal costs at most {:.0} % of the throughput ({}): \
         file/off = {file:.2}, a loss of {:.0} %: {verdict}.",
        MAX_FILE_LOSS * 100.0,
        summary["target"].as_str().unwrap_or(""),
        (1.0 - file) * 100.0,
    );
    let load = &summary["load_average"];
    let _ = writeln!(
        out,
        "\nThe machine's load average (1 min) was {} before the rounds and {} after.",
        load["before"], load["after"]
    );
}

/// How the journal scenario measures, with its sizes.
fn write_journal_method(out: &mut String, modules: &Value, steps: &Value) {
    let _ = writeln!(
        out,
        "Throughput ({modules} independent no-op modules, 8 worker processes) and chain \
         ({steps} steps), as above, with the hub's journal off (`Hub::start`, as in every \
         other scenario), in a file (a run folder under `target/`, on the repository's disk: \
         one write and one `fdatasync` per group commit) and in Redis (a private \
         `redis-server` on loopback without persistence: one script call per group commit). \
         Rounds alternate off, file, Redis, off, file, Redis, …, so a slow spell of the \
         machine falls on all three. Figures are medians of the rounds (min–max); ratios \
         compare medians, with each round's own ratio in brackets.\n"
    );
}

/// A figure's median (min–max), or a dash.
fn stats_cell(figure: Option<&Value>) -> String {
    figure.map_or("—".into(), |v| {
        format!("{} ({}–{})", v["median"], v["min"], v["max"])
    })
}

/// The ratio of two figures' medians, with each round's ratio if given.
fn ratio_cell(on: Option<&Value>, off: Option<&Value>, rounds: Option<&Value>) -> String {
    let median = |v: Option<&Value>| v.and_then(|v| v["median"].as_f64());
    let (Some(on), Some(off)) = (median(on), median(off)) else {
        return String::new();
    };
    let each: Vec<String> = rounds
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_f64)
                .map(|v| format!("{v:.2}"))
                .collect()
        })
        .unwrap_or_default();
    if each.is_empty() {
        format!("{:.2}", on / off)
    } else {
        format!("{:.2} [{}]", on / off, each.join(" · "))
    }
}

/// A line of the journal scenario.
fn is_journal(line: &Value) -> bool {
    line["scenario"]
        .as_str()
        .is_some_and(|s| s == "journal" || s.starts_with("journal-"))
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
