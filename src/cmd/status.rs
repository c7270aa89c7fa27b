//! `muster status`: a run's state from its journal, without reaching its
//! hub: from another terminal for a local run, from any machine that can
//! reach the Redis of a CI run. `--follow` prints each change as it is
//! journaled and exits with the run's exit code.

use std::time::Duration;

use clap::Args;
use muster_core::journal::{Entry, History};
use muster_core::wire::types::RunOutcome;

use crate::failure::{outcome_result, Failure};
use crate::journal_source::{RunChoice, Source};
use crate::journaling::unix_ms;
use crate::status_view::{self, record_line, TAIL_LINES};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    run: RunChoice,
    /// Print each change as it is journaled until the run ends, then exit
    /// with the run's exit code (0 succeeded, 1 failed, 130 cancelled; 3
    /// when its master stopped before the end).
    #[arg(long)]
    follow: bool,
    /// Print the run's state as JSON, for scripts.
    #[arg(long)]
    json: bool,
    /// List every module, not only those that are not succeeded or pending.
    #[arg(long)]
    all: bool,
}

/// How long `--follow` waits for a CI run whose master is gone to get a
/// new one (another instance taking it over) before it gives up on it.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

pub async fn status(args: StatusArgs) -> Result<(), Failure> {
    let source = args.run.source()?;
    let records = source.read().await?;
    let mut history = if records.is_empty() {
        // A master that has not written its first record yet.
        History {
            run_id: source.run_id().to_owned(),
            ..History::default()
        }
    } else {
        History::replay(&records).map_err(|e| Failure::Usage(format!("{}: {e}", source.shown())))?
    };
    let running = source.master_running().await;
    if args.json {
        let mut json = serde_json::to_value(&history).map_err(Failure::infrastructure)?;
        json["masterRunning"] = running.map_or(serde_json::Value::Null, serde_json::Value::Bool);
        println!("{json}");
    } else {
        let mut tails = std::collections::HashMap::new();
        for module in &history.modules {
            if module.state.is_terminal()
                && module.state != muster_core::journal::StateName::Succeeded
                && module.state != muster_core::journal::StateName::Skipped
            {
                if let Some(lines) = source.tail(&module.id, TAIL_LINES).await {
                    tails.insert(module.id.clone(), lines);
                }
            }
        }
        let text = status_view::render(&history, unix_ms(), args.all, &|id| tails.get(id).cloned());
        print!("{text}");
        if history.finished.is_none() && running == Some(false) {
            let how = match &source {
                Source::Local { .. } => format!("`muster run --resume {}`", source.run_id()),
                Source::Redis { .. } => "a re-run of the CI job".to_owned(),
            };
            println!(
                "\nits master is not running: the run stopped before it finished \
                 (continue it with {how})"
            );
        }
    }
    if !args.follow {
        return Ok(());
    }
    follow(&source, &mut history).await
}

/// Prints each record after those in `history` until the run finishes.
async fn follow(source: &Source, history: &mut History) -> Result<(), Failure> {
    let mut cursor = source.follow().await?;
    let mut quiet_checks = 0u32;
    loop {
        if let Some((outcome, _)) = history.finished {
            return finished(outcome);
        }
        let records = source.next(&mut cursor).await?;
        if records.is_empty() {
            // Every few quiet polls, make sure a master is still there.
            quiet_checks += 1;
            if quiet_checks.is_multiple_of(10)
                && source.master_running().await == Some(false)
                && !source.master_back_within(TAKEOVER_WAIT).await
            {
                // One last look: it may have finished just now.
                let last = source.read().await?;
                let seen = history.last_seq;
                for record in last.iter().filter(|r| r.seq > seen) {
                    println!("{}", record_line(record));
                    let _ = history.apply(record);
                }
                if let Some((outcome, _)) = history.finished {
                    return finished(outcome);
                }
                return Err(Failure::infrastructure(format!(
                    "the master of run {} stopped before the run finished",
                    source.run_id()
                )));
            }
            continue;
        }
        quiet_checks = 0;
        let seen = history.last_seq;
        for record in records.iter().filter(|r| r.seq > seen) {
            println!("{}", record_line(record));
            history
                .apply(record)
                .map_err(|e| Failure::infrastructure(format!("{}: {e}", source.shown())))?;
            if matches!(record.entry, Entry::RunFinished { .. }) {
                break;
            }
        }
    }
}

fn finished(outcome: RunOutcome) -> Result<(), Failure> {
    outcome_result(outcome)
}
