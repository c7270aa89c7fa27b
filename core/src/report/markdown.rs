//! The report as GitHub-flavoured Markdown, for a job summary
//! (`$GITHUB_STEP_SUMMARY`) or a pull-request comment: a headline, a
//! table of modules (those that did not succeed first) and a mermaid
//! `gantt` chart of when each ran on which worker.
//!
//! GitHub takes at most 1 MiB of summary per step and mermaid at most
//! 50,000 characters per diagram, so both are bounded whatever the run's
//! size: at most [`MAX_ROWS`] table rows and [`MAX_BARS`] bars, each
//! followed by a visible "… and N more" line, and every cell cut to a
//! length. Text is escaped for each syntax: module ids and worker names
//! come from the pipeline file and the network, reasons from modules.

use std::fmt::Write as _;

use super::model::{rfc3339_text, ModuleReport, Report};
use crate::journal::StateName;

/// Table rows at most; the rest are counted.
pub const MAX_ROWS: usize = 500;
/// Gantt bars at most; the rest are counted.
pub const MAX_BARS: usize = 100;
/// A cell (module id, reason, worker) is cut to this many characters.
const MAX_CELL_CHARS: usize = 160;
/// A Gantt label is cut to this many characters.
const MAX_LABEL_CHARS: usize = 60;

/// The whole summary.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    headline(&mut out, report);
    table(&mut out, report);
    gantt(&mut out, report);
    out
}

fn headline(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "### muster: run {} {}\n",
        cell(&report.run_id),
        report.outcome.word()
    );
    let counts: Vec<String> = report
        .counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.word()))
        .collect();
    let mut facts = vec![
        format!("pipeline `{}`", code(&report.pipeline)),
        format!("{} modules: {}", report.modules.len(), counts.join(", ")),
    ];
    if let Some(ms) = report.duration_ms {
        facts.push(format!("took {}", duration(ms)));
    }
    let cached = report.modules.iter().filter(|m| m.cached).count();
    if cached > 0 {
        facts.push(format!("{cached} from the cache"));
    }
    if !report.workers.is_empty() {
        facts.push(format!("{} workers", report.workers.len()));
    }
    let _ = writeln!(out, "{}\n", facts.join(" · "));
    if let Some(reason) = &report.cancelled {
        let _ = writeln!(out, "Cancelled: {}\n", cell(reason));
    }
    for failover in &report.failovers {
        let time = |at: Option<u64>| at.map_or_else(|| "?".to_owned(), super::model::rfc3339_text);
        let _ = writeln!(
            out,
            "Failover: {} lost at {}; {} took over at {}, epoch {}\n",
            cell(failover.lost.as_deref().unwrap_or("the master")),
            time(failover.lost_at),
            cell(&failover.by),
            time(failover.took_over_at),
            failover.epoch
        );
    }
}

/// Modules that did not succeed first, then the rest, in plan order.
fn table(out: &mut String, report: &Report) {
    out.push_str("| module | state | attempt | time | worker | reason |\n");
    out.push_str("| --- | --- | --: | --: | --- | --- |\n");
    let (first, rest): (Vec<&ModuleReport>, Vec<&ModuleReport>) = report
        .modules
        .iter()
        .partition(|m| m.state != StateName::Succeeded);
    let ordered: Vec<&ModuleReport> = first.into_iter().chain(rest).collect();
    for module in ordered.iter().take(MAX_ROWS) {
        let state = match (module.cached, &module.kept_from) {
            (true, _) => "succeeded (cached)".to_owned(),
            (_, Some(run)) => format!("succeeded (kept from {})", cell(run)),
            _ => module.state.word().to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {state} | {} | {} | {} | {} |",
            cell(&module.id),
            module.attempts,
            module.duration_ms.map_or_else(|| "-".to_owned(), duration),
            module
                .worker
                .as_deref()
                .map_or_else(|| "-".to_owned(), cell),
            module.reason.as_deref().map_or_else(String::new, cell),
        );
    }
    if ordered.len() > MAX_ROWS {
        let more = &ordered[MAX_ROWS..];
        let succeeded = more
            .iter()
            .filter(|m| m.state == StateName::Succeeded)
            .count();
        let _ = writeln!(
            out,
            "\n… and {} more modules ({succeeded} of them succeeded); the JSON report \
             (`muster report --json`) lists every one.",
            more.len()
        );
    }
    out.push('\n');
}

/// One bar per module that ran, in sections per worker; past
/// [`MAX_BARS`], those that did not succeed and then the longest.
fn gantt(out: &mut String, report: &Report) {
    let mut timed: Vec<(&ModuleReport, u64, u64)> = report
        .modules
        .iter()
        .filter_map(|m| {
            let start = m.started_at?;
            let end = m.finished_at.or_else(|| Some(start + m.duration_ms?))?;
            Some((m, start, end.max(start + 1)))
        })
        .collect();
    if timed.is_empty() {
        return;
    }
    let all = timed.len();
    if all > MAX_BARS {
        timed.sort_by_key(|(m, start, end)| {
            (
                m.state == StateName::Succeeded,
                std::cmp::Reverse(end - start),
            )
        });
        timed.truncate(MAX_BARS);
    }
    timed.sort_by(|a, b| (a.0.worker.as_deref(), a.1).cmp(&(b.0.worker.as_deref(), b.1)));
    out.push_str("```mermaid\ngantt\n");
    let _ = writeln!(out, "  title Run {}", label(&report.run_id));
    out.push_str("  dateFormat x\n  axisFormat %H:%M:%S\n");
    let mut section: Option<Option<&str>> = None;
    for (module, start, end) in &timed {
        let worker = module.worker.as_deref();
        if section != Some(worker) {
            let _ = writeln!(out, "  section {}", label(worker.unwrap_or("no worker")));
            section = Some(worker);
        }
        let tag = match module.state {
            StateName::Succeeded => "done, ",
            StateName::Failed | StateName::TimedOut | StateName::Cancelled => "crit, ",
            _ => "active, ",
        };
        // No space before the colon: mermaid takes `title …`, `click …`
        // and the like for statements, and only a matrix id has a space
        // (inside its brackets, after the name).
        let _ = writeln!(out, "  {}:{tag}{start}, {end}", label(&module.id));
    }
    out.push_str("```\n");
    if all > MAX_BARS {
        let _ = writeln!(
            out,
            "\n… and {} more modules not drawn: the chart shows the {MAX_BARS} that did not \
             succeed or took longest.",
            all - MAX_BARS
        );
    }
    if let Some(at) = report.started_at {
        let _ = writeln!(out, "\nStarted {} (times in UTC).", rfc3339_text(at));
    }
}

/// `1.2s`, `3m 04s`, `1h 02m`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Characters a table cell backslash-escapes: those that end the cell,
/// start a link, an image, an HTML tag or an entity, emphasise, strike,
/// start a code span or maths (`$`), or mention someone (`@`). A cell never
/// starts a line, so `#`, `-` and `1.` need nothing.
const MARKDOWN_SPECIAL: &str = "\\`*_[]<>|~&$@!";

/// Text for a table cell: cut to a length, every control character a
/// space, and the characters of [`MARKDOWN_SPECIAL`] backslash-escaped
/// (GFM allows that for any ASCII punctuation).
pub fn cell(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for (i, c) in raw.chars().enumerate() {
        if i == MAX_CELL_CHARS {
            out.push('…');
            break;
        }
        match c {
            c if c.is_control() => out.push(' '),
            c if MARKDOWN_SPECIAL.contains(c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Text inside an inline code span: no backticks, no control characters.
fn code(raw: &str) -> String {
    raw.chars()
        .take(MAX_CELL_CHARS)
        .map(|c| if c == '`' || c.is_control() { '\'' } else { c })
        .collect()
}

/// Text for a mermaid gantt title, section or task name. Mermaid reads
/// `:` as the end of a task's name, `#` and `;` as comments or statement
/// ends, and has no escape for them: letters, digits and a few safe
/// characters stay, anything else becomes `_`.
pub fn label(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .take(MAX_LABEL_CHARS)
        .map(|c| {
            if c.is_alphanumeric() || " _-.,=[]()/@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if raw.chars().count() > MAX_LABEL_CHARS {
        out.push('…');
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        "_".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Entry, ModuleDigest, ModuleRecord, Record, RunStart, Settings};
    use crate::report::model::tests::sample;
    use crate::wire::types::RunOutcome;
    use std::collections::BTreeMap;

    #[test]
    fn a_small_run_has_every_module_and_a_bar_each() {
        let md = markdown(&sample());
        assert!(md.starts_with("### muster: run r1 failed\n"), "{md}");
        assert!(
            md.contains("| test | failed | 2 | 1.0s | w2 | exit code 3 |"),
            "{md}"
        );
        assert!(
            md.contains("| deploy | skipped | 0 | - | - | need 'test' failed |"),
            "{md}"
        );
        assert!(md.contains("| lint | succeeded (cached) |"), "{md}");
        assert!(md.contains("| docs | succeeded (kept from r0) |"), "{md}");
        // Failed first.
        assert!(md.find("| test |").unwrap() < md.find("| build |").unwrap());
        assert!(
            md.contains("```mermaid\ngantt\n  title Run r1\n  dateFormat x\n"),
            "{md}"
        );
        assert!(
            md.contains("  section w2\n  test:crit, 1700000006000, 1700000007000\n"),
            "{md}"
        );
        assert!(!md.contains("… and"), "{md}");
    }

    #[test]
    fn hostile_text_cannot_break_the_table_or_the_chart() {
        assert_eq!(cell("a|b\n<script>*x*"), "a\\|b \\<script\\>\\*x\\*");
        assert_eq!(label("test[os=linux]: #1; x"), "test[os=linux]_ _1_ x");
        assert_eq!(label(":::"), "___");
        assert_eq!(label(""), "_");
        assert_eq!(code("a`b"), "a'b");
        assert_eq!(cell(&"x".repeat(500)).chars().count(), MAX_CELL_CHARS + 1);
    }

    /// 10,000 modules with long ids and reasons, half of them failed.
    fn huge() -> Report {
        let ids: Vec<String> = (0..10_000)
            .map(|i| format!("module-{i}-{}", "x".repeat(150)))
            .collect();
        let mut records = vec![Record {
            v: 1,
            seq: 1,
            at: 1_000,
            entry: Entry::RunStarted(RunStart {
                run_id: "big".to_owned(),
                pipeline: "muster.toml".to_owned(),
                muster_version: "0".to_owned(),
                stint: 1,
                epoch: 1,
                resumed_from: None,
                took_over: None,
                plan_digest: "p".to_owned(),
                modules: ids
                    .iter()
                    .map(|id| ModuleDigest {
                        id: id.clone(),
                        digest: "d".to_owned(),
                        parts: BTreeMap::new(),
                        needs: Vec::new(),
                    })
                    .collect(),
                settings: Settings::default(),
            }),
        }];
        for (i, id) in ids.iter().enumerate() {
            let worker = Some(format!("worker-{}", i % 50));
            for state in [StateName::Running, StateName::Failed] {
                let state = if state == StateName::Failed && i % 2 == 0 {
                    StateName::Succeeded
                } else {
                    state
                };
                records.push(Record {
                    v: 1,
                    seq: records.len() as u64 + 1,
                    at: 1_000 + i as u64 * 10 + u64::from(state != StateName::Running) * 5,
                    entry: Entry::Module(ModuleRecord {
                        module: id.clone(),
                        state,
                        attempt: Some(1),
                        worker: worker.clone(),
                        duration_ms: Some(5),
                        reason: (state == StateName::Failed)
                            .then(|| format!("exit code 1 {}", "|<>".repeat(100))),
                        ..ModuleRecord::default()
                    }),
                });
            }
        }
        records.push(Record {
            v: 1,
            seq: records.len() as u64 + 1,
            at: 200_000,
            entry: Entry::RunFinished {
                outcome: RunOutcome::Failed,
                cancelled: None,
            },
        });
        Report::build(&records).unwrap()
    }

    #[test]
    fn ten_thousand_modules_stay_under_a_mebibyte_and_say_what_was_left_out() {
        let md = markdown(&huge());
        assert!(md.len() < 1 << 20, "{} bytes", md.len());
        let rows = md.lines().filter(|l| l.starts_with("| module-")).count();
        assert_eq!(rows, MAX_ROWS);
        assert!(
            md.contains("… and 9500 more modules (5000 of them succeeded)"),
            "{}",
            &md[md.len() - 3000..]
        );
        let chart = &md[md.find("```mermaid").unwrap()..];
        let chart = &chart[..chart[3..].find("```").unwrap() + 6];
        assert!(
            chart.len() < 50_000,
            "mermaid takes 50,000 characters: {}",
            chart.len()
        );
        let bars = chart.lines().filter(|l| l.contains(":crit, ")).count();
        assert_eq!(bars, MAX_BARS);
        assert!(md.contains("… and 9900 more modules not drawn"), "{md}");
    }
}
