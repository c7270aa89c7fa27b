//! What a person reads: module log lines prefixed with the module's name
//! (coloured on a terminal), state changes as they happen, the plan for
//! `validate`, and the final table. Everything printed while the run goes
//! passes through a [`Masker`] for the secrets the master knows, on top of
//! the workers' own masking, and text that came from the network (worker
//! names, reasons, log lines) is escaped so it cannot move the cursor or
//! forge a line of muster's own.
//!
//! Output is never dropped: the printer reads the hub's bounded event
//! stream only as fast as stdout takes it, which slows the run down to the
//! reader's pace. A failed write to stdout is remembered and reported, not
//! ignored.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use muster_core::mask::Masker;
use muster_core::text::{escape, escape_log_line};
use muster_core::wire::types::RunOutcome;
use muster_core::{ModuleState, Plan};
use muster_hub::{RunEvent, Summary};
use tokio::sync::mpsc;

const PALETTE: [u8; 6] = [36, 35, 33, 32, 34, 31];

/// Text gathered from waiting events before one write to stdout.
const BATCH_BYTES: usize = 64 * 1024;

pub struct Reporter {
    colour: bool,
    colours: HashMap<String, u8>,
    /// A progress line on stderr, only when stderr is a terminal.
    progress: Option<ProgressBar>,
    running: HashSet<String>,
    masker: Masker,
}

impl Reporter {
    /// Colours only on a terminal, and never with `NO_COLOR` set.
    pub fn new(modules: usize) -> Reporter {
        let progress = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(modules as u64);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} modules done {msg}",
            )
            .expect("the template is valid");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Reporter {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            colours: HashMap::new(),
            progress,
            running: HashSet::new(),
            masker: Masker::default(),
        }
    }

    /// A reporter for this plan that masks its secrets and `token` (see
    /// [`plan_masker`]).
    pub fn for_plan(plan: &Plan, token: &str) -> Reporter {
        Reporter::new(plan.len()).with_masker(plan_masker(plan, &[token]))
    }

    /// Masks `masker`'s secrets in everything it prints.
    pub fn with_masker(mut self, masker: Masker) -> Reporter {
        self.masker = masker;
        self
    }

    /// Prints every event until the run ends. Writes block (on a blocking
    /// thread) while stdout is full, and the hub waits meanwhile; events
    /// that are already waiting go out in the same write. After a write
    /// fails (a closed pipe), the rest of the run is drained without
    /// printing and the error is returned at the end.
    pub async fn print(mut self, mut events: mpsc::Receiver<RunEvent>) -> std::io::Result<()> {
        let mut failed: Option<std::io::Error> = None;
        while let Some(event) = events.recv().await {
            if failed.is_some() {
                continue;
            }
            let mut text = String::new();
            let mut next = Some(event);
            while let Some(event) = next.take() {
                self.track(&event);
                text.push_str(&self.show(event));
                if text.len() < BATCH_BYTES {
                    next = events.try_recv().ok();
                }
            }
            if text.is_empty() {
                continue;
            }
            let progress = self.progress.clone();
            let written = tokio::task::spawn_blocking(move || {
                let write = || write_stdout(text.as_bytes());
                match &progress {
                    Some(bar) => bar.suspend(write),
                    None => write(),
                }
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = written {
                eprintln!("muster: error: cannot write the run's output to stdout: {e}; the run goes on, its exit code will say output was lost");
                failed = Some(e);
            }
        }
        if let Some(bar) = self.progress {
            bar.finish_and_clear();
        }
        failed.map_or(Ok(()), Err)
    }

    /// Keeps the progress line's counts.
    fn track(&mut self, event: &RunEvent) {
        let (Some(bar), RunEvent::Module { module, state, .. }) = (&self.progress, event) else {
            return;
        };
        if matches!(state, ModuleState::Running { .. }) {
            self.running.insert(module.clone());
        } else {
            self.running.remove(module);
        }
        if state.is_terminal() {
            bar.inc(1);
        }
        bar.set_message(format!("{} running", self.running.len()));
    }

    /// The text to print for `event`, with every known secret masked.
    fn show(&mut self, event: RunEvent) -> String {
        let text = self.render(event);
        self.masker.mask_owned(text)
    }

    fn render(&mut self, event: RunEvent) -> String {
        let mut out = String::new();
        match event {
            RunEvent::WorkerJoined {
                name,
                capabilities,
                slots,
            } => {
                let _ = writeln!(
                    out,
                    "muster: worker {} joined ({}; {slots} slot{})",
                    escape(&name),
                    escape(&capabilities.join(", ")),
                    if slots == 1 { "" } else { "s" }
                );
            }
            RunEvent::WorkerLeft { name, reason } => {
                let (name, reason) = (escape(&name), escape(&reason));
                let _ = writeln!(out, "muster: worker {name} left: {reason}");
            }
            RunEvent::WorkerAway {
                name,
                reason,
                held,
                within,
            } => {
                let (name, reason) = (escape(&name), escape(&reason));
                let _ = writeln!(
                    out,
                    "muster: worker {name} dropped ({reason}); keeping its {held} module{} for {} while it reconnects",
                    if held == 1 { "" } else { "s" },
                    humantime::format_duration(round_to_ms(within))
                );
            }
            RunEvent::WorkerBack { name, kept } => {
                let name = escape(&name);
                let _ = writeln!(
                    out,
                    "muster: worker {name} reconnected and kept {kept} module{}",
                    if kept == 1 { "" } else { "s" }
                );
            }
            RunEvent::Log { module, text, .. } => {
                let prefix = self.prefix(&module);
                for line in text.lines() {
                    let _ = writeln!(out, "{prefix} {}", escape_log_line(line));
                }
            }
            RunEvent::Note { module, text } => {
                let prefix = self.prefix(&module);
                let _ = writeln!(out, "{prefix} ** {}", escape(&text));
            }
            RunEvent::Module {
                module,
                state,
                worker,
                note,
            } => {
                if let Some(line) = state_line(&state, worker.as_deref(), note.as_deref()) {
                    let prefix = self.prefix(&module);
                    let _ = writeln!(out, "{prefix} ** {line}");
                }
            }
        }
        out
    }

    fn prefix(&mut self, module: &str) -> String {
        if !self.colour {
            return format!("[{module}]");
        }
        let next = PALETTE[self.colours.len() % PALETTE.len()];
        let colour = *self.colours.entry(module.to_owned()).or_insert(next);
        format!("\x1b[{colour}m[{module}]\x1b[0m")
    }
}

/// What a module's new state says after `[module] ** `, if it is worth a
/// line; `worker` and `note` (why it will retry) as the hub gave them.
fn state_line(state: &ModuleState, worker: Option<&str>, note: Option<&str>) -> Option<String> {
    let on = worker
        .map(|w| format!(" on {}", escape(w)))
        .unwrap_or_default();
    let note = note.map(escape);
    let reason = |e: &muster_core::Ended| escape(e.reason.as_deref().unwrap_or("no reason given"));
    let line = match state {
        ModuleState::Running { attempt, .. } if *attempt > 1 => {
            format!("started{on} (attempt {attempt})")
        }
        ModuleState::Running { .. } => format!("started{on}"),
        // A gate says what it asks, who may decide and until when; its
        // decision comes as the note of the state that follows.
        ModuleState::AwaitingApproval { .. } => format!("awaiting approval: {}", note?),
        ModuleState::Ready { .. } | ModuleState::Succeeded(_)
            if note.as_deref().is_some_and(is_gate_note) =>
        {
            note.unwrap_or_default()
        }
        // A retry says why; a resumed run's module that runs again is
        // said once, before the run.
        ModuleState::Ready { attempt } if *attempt > 1 => format!("will retry: {}", note?),
        // A result from the cache says so, with its key.
        ModuleState::Succeeded(_) if note.as_deref().is_some_and(|n| n.starts_with("cached")) => {
            note.unwrap_or_default()
        }
        // A resumed run's module kept from the earlier run.
        ModuleState::Succeeded(e) if worker.is_none() && note.is_some() => format!(
            "{} (succeeded{} then)",
            note.unwrap_or_default(),
            took(e.duration)
        ),
        ModuleState::Succeeded(e) => format!("succeeded{on}{}", took(e.duration)),
        ModuleState::Failed(e) | ModuleState::TimedOut(e) => {
            format!("{}{on}{}: {}", state.name(), took(e.duration), reason(e))
        }
        ModuleState::Cancelled(e) => format!(
            "cancelled: {}",
            escape(e.reason.as_deref().unwrap_or("cancelled"))
        ),
        ModuleState::Skipped { reason } => format!("skipped: {}", escape(reason)),
        _ => return None,
    };
    Some(line)
}

/// The note a gate's decision leaves on the module's next state.
fn is_gate_note(note: &str) -> bool {
    ["approved ", "rejected ", "no decision within "]
        .iter()
        .any(|start| note.starts_with(start))
}

fn took(duration: Option<Duration>) -> String {
    duration
        .map(|d| format!(" in {}", seconds(d)))
        .unwrap_or_default()
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A masker for every secret the plan names whose value the master knows:
/// from its own environment (in CI every runner has the same secrets) or
/// from a module's `env` in the pipeline file. Built once per run.
/// `extra` adds values muster itself knows are secret (the hub's token).
pub fn plan_masker(plan: &Plan, extra: &[&str]) -> Masker {
    let mut names: Vec<&str> = plan
        .modules
        .iter()
        .flat_map(|m| m.secrets.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    let from_env = names
        .iter()
        .filter_map(std::env::var_os)
        .map(|value| value.to_string_lossy().into_owned());
    let from_plan = plan
        .modules
        .iter()
        .flat_map(|m| m.secrets.iter().filter_map(|name| m.env.get(name).cloned()));
    let extra = extra.iter().map(|value| (*value).to_owned());
    Masker::new(from_env.chain(from_plan).chain(extra).collect::<Vec<_>>())
}

/// The plan as `muster validate` prints it: one module a line, in the order
/// they can run. Secrets are listed by name; their values are never read.
pub fn describe_plan(plan: &Plan) -> String {
    let mut out = String::new();
    let width = plan
        .modules
        .iter()
        .map(|m| m.id.chars().count())
        .max()
        .unwrap_or(0);
    for module in &plan.modules {
        let _ = write!(out, "{:width$}", module.id);
        if !module.needs.is_empty() {
            let needs: Vec<&str> = module
                .needs
                .iter()
                .map(|&n| plan.modules[n].id.as_str())
                .collect();
            let _ = write!(out, "  needs: {}", needs.join(", "));
        }
        if !module.requires.is_empty() {
            let _ = write!(out, "  requires: {}", module.requires.join(", "));
        }
        if !module.secrets.is_empty() {
            let _ = write!(out, "  secrets: {}", module.secrets.join(", "));
        }
        if module.cached() {
            let _ = write!(out, "  inputs: {}", module.inputs.join(", "));
            if !module.env_inputs.is_empty() {
                let _ = write!(out, "  env inputs: {}", module.env_inputs.join(", "));
            }
        }
        if !module.produces.is_empty() {
            let _ = write!(out, "  produces: {}", module.produces.join(", "));
        }
        if let Some(gate) = &module.approval {
            let _ = write!(
                out,
                "  gate{}: {} within {} (then {})",
                if gate.gate_only { " (no run)" } else { "" },
                gate.deciders(),
                humantime::format_duration(gate.timeout),
                gate.on_timeout.word()
            );
            if !gate.inputs.is_empty() {
                let _ = write!(out, ", inputs {}", gate.inputs.join(", "));
            }
        }
        if module.compensate.is_some() {
            out.push_str("  compensate: yes");
        }
        if !module.consumes.is_empty() {
            let consumes: Vec<String> = module
                .consumes
                .iter()
                .map(|c| {
                    let from = &plan.modules[c.from].id;
                    match &c.glob {
                        Some(glob) => format!("{from}:{glob}"),
                        None => from.clone(),
                    }
                })
                .collect();
            let _ = write!(out, "  consumes: {}", consumes.join(", "));
        }
        let _ = writeln!(
            out,
            "  timeout: {}",
            humantime::format_duration(module.timeout)
        );
    }
    out
}

/// The table printed when the run ends.
pub fn summary_table(summary: &Summary) -> String {
    let rows: Vec<[String; 5]> = summary
        .modules
        .iter()
        .map(|m| {
            let ended = m.state.ended();
            [
                m.id.clone(),
                m.state.name().to_owned(),
                ended
                    .and_then(|e| e.duration)
                    .map(seconds)
                    .unwrap_or_else(|| "-".into()),
                m.worker.as_deref().map_or_else(|| "-".into(), escape),
                if m.cached.is_some() { "yes" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&columns(
        &["MODULE", "STATUS", "TIME", "WORKER", "CACHED"],
        &rows,
    ));
    let succeeded = summary
        .modules
        .iter()
        .filter(|m| matches!(m.state, ModuleState::Succeeded(_)))
        .count();
    let verdict = match summary.outcome() {
        RunOutcome::Succeeded => "run succeeded",
        RunOutcome::Cancelled => "run cancelled",
        RunOutcome::Failed => "run failed",
    };
    let _ = writeln!(
        out,
        "\n{verdict}: {succeeded} of {} modules succeeded",
        summary.modules.len()
    );
    let hits: Vec<Duration> = summary.modules.iter().filter_map(|m| m.cached).collect();
    if !hits.is_empty() {
        let saved: Duration = hits.iter().sum();
        let _ = writeln!(
            out,
            "cache: {} module(s) from the cache, saving {} of module time",
            hits.len(),
            humantime::format_duration(Duration::from_secs(saved.as_secs()))
        );
    }
    for m in &summary.modules {
        if let Some(gate) = &m.gate {
            let _ = writeln!(out, "gate {}: {}", m.id, escape(gate));
        }
    }
    let compensated: Vec<String> = summary
        .modules
        .iter()
        .filter_map(|m| Some(format!("{} {}", m.id, escape(m.compensated.as_ref()?))))
        .collect();
    if !compensated.is_empty() {
        let _ = writeln!(out, "compensations: {}", compensated.join("; "));
    }
    if let Some(reason) = &summary.cancelled {
        let _ = writeln!(out, "cancelled: {}", escape(reason));
    }
    out
}

/// `rows` under `header` in columns two spaces apart, each line ending
/// without spaces.
pub fn columns<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// Prints one `muster: …` status line to stdout without panicking on a
/// closed pipe: the run's output writer notices that and fails the run.
pub fn say(line: &str) {
    let _ = write_stdout(format!("muster: {line}\n").as_bytes());
}

/// Writes all of `bytes` to stdout and flushes; the error says why not.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Durations in messages read better without nanoseconds.
fn round_to_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::parse_pipeline;
    use muster_core::wire::types::LogStream;

    fn reporter(secrets: &[&str]) -> Reporter {
        let mut reporter = Reporter::new(1).with_masker(Masker::new(secrets));
        reporter.colour = false;
        reporter
    }

    #[test]
    fn printed_lines_are_masked() {
        let mut reporter = reporter(&["hunter2-very-secret"]);
        let log = RunEvent::Log {
            module: "deploy".into(),
            attempt: 1,
            stream: LogStream::Stdout,
            text: "token: hunter2-very-secret\nok".into(),
        };
        assert_eq!(reporter.show(log), "[deploy] token: ***\n[deploy] ok\n");
    }

    #[test]
    fn text_from_the_network_cannot_forge_lines_or_move_the_cursor() {
        let mut reporter = reporter(&[]);
        let joined = RunEvent::WorkerJoined {
            name: "evil\n[hold] ** succeeded on evil\x1b[2J".into(),
            capabilities: vec!["os:linux\r".into()],
            slots: 1,
        };
        assert_eq!(
            reporter.show(joined),
            "muster: worker evil\\n[hold] ** succeeded on evil\\x1b[2J joined (os:linux\\r; 1 slot)\n"
        );
        let log = RunEvent::Log {
            module: "m".into(),
            attempt: 1,
            stream: LogStream::Stdout,
            text: "\x1b[32mok\x1b[0m\x1b[2J\rfake".into(),
        };
        assert_eq!(reporter.show(log), "[m] \x1b[32mok\x1b[0m\\x1b[2J\\rfake\n");
    }

    #[test]
    fn plan_masker_reads_values_of_the_plan_secrets() {
        let plan = parse_pipeline(
            "muster.toml",
            "[modules.a]\nrun = \"x\"\nsecrets = [\"SECRET_FROM_FILE\", \"MUSTER_TEST_UNSET_SECRET\"]\nenv = { SECRET_FROM_FILE = \"file-secret\", PLAIN = \"plain-value\" }\n",
        )
        .unwrap();
        let masker = plan_masker(&plan, &["the-hub-token"]);
        assert_eq!(masker.mask("file-secret plain-value"), "*** plain-value");
        assert_eq!(masker.mask("token the-hub-token"), "token ***");
        assert_eq!(
            describe_plan(&plan),
            "a  secrets: SECRET_FROM_FILE, MUSTER_TEST_UNSET_SECRET  timeout: 1h\n"
        );
    }
}
