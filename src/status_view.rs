//! `muster status` as text: a run's state folded from its journal, for a
//! person at a terminal. Text that came from workers (names, reasons, log
//! lines) is escaped before it is printed.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use muster_core::journal::{History, ModuleStatus, StateName};
use muster_core::text::{escape, escape_log_line};
use muster_core::wire::types::RunOutcome;

use crate::report::columns;

/// Modules listed one by one when the run has no more than this many; a
/// larger run lists only those that are not succeeded or pending.
const LIST_ALL_UP_TO: usize = 40;

/// Log lines shown under a module that did not succeed.
pub const TAIL_LINES: usize = 10;

/// The run's state as text. `now_ms` is the wall clock (Unix ms), `all`
/// lists every module, `tail` gives a module's last log lines if known.
pub fn render(
    history: &History,
    now_ms: u64,
    all: bool,
    tail: &dyn Fn(&str) -> Option<Vec<String>>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} ({})",
        escape(&history.run_id),
        escape(&history.pipeline)
    );
    let _ = writeln!(out, "state:    {}", run_state(history, now_ms));
    if history.stints > 1 {
        let _ = writeln!(
            out,
            "masters:  {} (resumed {} time(s))",
            history.stints,
            history.stints - 1
        );
    }
    if let Some(from) = history
        .resumed_from
        .as_deref()
        .filter(|f| *f != history.run_id)
    {
        let _ = writeln!(out, "resumed:  from run {}", escape(from));
    }
    let _ = writeln!(out, "modules:  {}", counts(&history.modules));
    if history.finished.is_none() {
        let workers = if history.workers.is_empty() {
            "none connected".to_owned()
        } else {
            history
                .workers
                .iter()
                .map(|w| escape(w))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "workers:  {workers}");
    }
    if let Some(reason) = &history.cancelled {
        let _ = writeln!(out, "cancelled: {}", escape(reason));
    }
    let listed: Vec<&ModuleStatus> = history
        .modules
        .iter()
        .filter(|m| {
            all || history.modules.len() <= LIST_ALL_UP_TO
                || !matches!(m.state, StateName::Succeeded | StateName::Pending)
        })
        .collect();
    if !listed.is_empty() {
        out.push('\n');
        out.push_str(&table(&listed, now_ms));
    }
    let hidden = history.modules.len() - listed.len();
    if hidden > 0 {
        let _ = writeln!(
            out,
            "({hidden} succeeded or pending modules not listed; --all lists them)"
        );
    }
    for module in &history.modules {
        if !matches!(
            module.state,
            StateName::Failed | StateName::TimedOut | StateName::Cancelled
        ) {
            continue;
        }
        let _ = write!(out, "\n{} {}", escape(&module.id), module.state.word());
        if let Some(code) = module.exit_code {
            let _ = write!(out, " (exit code {code})");
        }
        if let Some(reason) = &module.reason {
            let _ = write!(out, ": {}", escape(reason));
        }
        out.push('\n');
        if let Some(lines) = tail(&module.id) {
            for line in lines {
                let _ = writeln!(out, "  | {}", escape_log_line(&line));
            }
        }
    }
    out
}

/// "running for 3m 12s (started ...)" or "failed after 4m (ended ...)".
fn run_state(history: &History, now_ms: u64) -> String {
    let started = wall(history.started_at);
    match history.finished {
        Some((outcome, at)) => {
            let word = match outcome {
                RunOutcome::Succeeded => "succeeded",
                RunOutcome::Failed => "failed",
                RunOutcome::Cancelled => "cancelled",
            };
            format!(
                "{word} after {} (started {started}, ended {})",
                span(at.saturating_sub(history.started_at)),
                wall(at)
            )
        }
        None => format!(
            "running for {} (started {started}; last record {} ago)",
            span(now_ms.saturating_sub(history.started_at)),
            span(now_ms.saturating_sub(history.last_at))
        ),
    }
}

/// "37 succeeded, 2 running, 18 pending (of 57)", in the states' order.
pub fn counts(modules: &[ModuleStatus]) -> String {
    let mut counts = std::collections::BTreeMap::<StateName, usize>::new();
    for module in modules {
        *counts.entry(module.state).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.word()))
        .collect();
    format!("{} (of {})", parts.join(", "), modules.len())
}

fn table(modules: &[&ModuleStatus], now_ms: u64) -> String {
    let rows: Vec<[String; 5]> = modules
        .iter()
        .map(|m| {
            let time = match (m.duration_ms, m.started_at) {
                (Some(ms), _) => span(ms),
                (None, Some(started)) if m.state.is_in_flight() => {
                    format!("{} so far", span(now_ms.saturating_sub(started)))
                }
                _ => "-".to_owned(),
            };
            let state = match &m.kept_from {
                Some(_) => format!("{} (kept)", m.state.word()),
                None => m.state.word().to_owned(),
            };
            [
                escape(&m.id),
                state,
                m.attempt.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                time,
                m.worker.as_deref().map_or_else(|| "-".to_owned(), escape),
            ]
        })
        .collect();
    columns(&["MODULE", "STATE", "ATTEMPT", "TIME", "WORKER"], &rows)
}

/// A Unix ms time as `2026-12-01T10:22:05Z`.
pub fn wall(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Milliseconds as `3m 12s` (whole seconds; `0.4s` under one second).
pub fn span(ms: u64) -> String {
    if ms < 1000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// One journal record as a line for `muster status --follow`.
pub fn record_line(record: &muster_core::journal::Record) -> String {
    use muster_core::journal::Entry;
    let clock = wall(record.at);
    let clock = clock.get(11..19).unwrap_or(&clock);
    let what = match &record.entry {
        Entry::RunStarted(start) if start.stint > 1 => {
            format!(
                "run {} resumed (master {})",
                escape(&start.run_id),
                start.stint
            )
        }
        Entry::RunStarted(start) => format!(
            "run {} started ({} modules)",
            escape(&start.run_id),
            start.modules.len()
        ),
        Entry::Module(m) => {
            let mut details = Vec::new();
            if let Some(attempt) = m.attempt {
                details.push(format!("attempt {attempt}"));
            }
            if let Some(worker) = &m.worker {
                details.push(escape(worker));
            }
            if let Some(ms) = m.duration_ms {
                details.push(span(ms));
            }
            if let Some(code) = m.exit_code {
                details.push(format!("exit code {code}"));
            }
            if let Some(from) = &m.kept_from {
                details.push(format!("kept from run {}", escape(from)));
            }
            let mut line = format!("{} {}", escape(&m.module), m.state.word());
            if !details.is_empty() {
                let _ = write!(line, " ({})", details.join(", "));
            }
            if let Some(why) = m.reason.as_ref().or(m.note.as_ref()) {
                let _ = write!(line, ": {}", escape(why));
            }
            line
        }
        Entry::GateDecided(gate) => {
            let mut line = format!("{} {}", escape(&gate.module), escape(&gate.decision));
            if let Some(by) = &gate.by {
                let _ = write!(line, " by {}", escape(by));
            }
            if let Some(reason) = &gate.reason {
                let _ = write!(line, ": {}", escape(reason));
            }
            line
        }
        Entry::Compensation(c) => {
            let mut line = format!("{} compensation {}", escape(&c.module), escape(&c.state));
            if let Some(worker) = &c.worker {
                let _ = write!(line, " on {}", escape(worker));
            }
            if let Some(reason) = &c.reason {
                let _ = write!(line, ": {}", escape(reason));
            }
            line
        }
        Entry::WorkerJoined { name, .. } => format!("worker {} joined", escape(name)),
        Entry::WorkerLeft { name, reason } => {
            format!("worker {} left: {}", escape(name), escape(reason))
        }
        Entry::WorkerAway { name, reason, held } => format!(
            "worker {} away with {held} module(s): {}",
            escape(name),
            escape(reason)
        ),
        Entry::WorkerBack { name, kept } => {
            format!("worker {} back, kept {kept} module(s)", escape(name))
        }
        Entry::CancelRequested { reason } => format!("cancel requested: {}", escape(reason)),
        Entry::RunFinished { outcome, .. } => format!(
            "run finished: {}",
            match outcome {
                RunOutcome::Succeeded => "succeeded",
                RunOutcome::Failed => "failed",
                RunOutcome::Cancelled => "cancelled",
            }
        ),
    };
    format!("[{clock}] {what}")
}
