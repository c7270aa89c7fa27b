//! `muster runs`: the runs kept in the state folder, newest first, with
//! how each ended (or that it is still going, or stopped unfinished).

use std::path::PathBuf;

use clap::Args;
use muster_core::journal::{History, StateName};
use muster_core::text::escape;
use muster_core::wire::types::RunOutcome;
use muster_journal::{list_runs, FileJournal, RunFolder};

use crate::failure::Failure;
use crate::flags::state_root;
use crate::report::columns;
use crate::run_lock::is_running;
use crate::status_view::{span, wall};

#[derive(Args)]
pub struct RunsArgs {
    /// The pipeline file whose state folder (.muster beside it) to list.
    #[arg(long, short = 'f', default_value = "muster.toml")]
    file: PathBuf,
    /// The state folder [default: .muster beside the pipeline file].
    #[arg(long, env = "MUSTER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Print the runs as JSON lines, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn runs(args: &RunsArgs) -> Result<(), Failure> {
    let root = state_root(args.state_dir.as_deref(), &args.file);
    let runs = list_runs(&root).map_err(Failure::infrastructure)?;
    if runs.is_empty() {
        println!("no runs in {}", root.display());
        return Ok(());
    }
    let mut rows: Vec<[String; 6]> = Vec::new();
    for run in runs {
        let folder = RunFolder::at(&root, &run.id).map_err(Failure::infrastructure)?;
        let running = is_running(folder.path());
        let history = FileJournal::read(&folder.journal())
            .map_err(|e| e.to_string())
            .and_then(|d| History::replay(&d.records).map_err(|e| e.to_string()));
        let history = match history {
            Ok(history) => history,
            Err(why) => {
                if !args.json {
                    rows.push([
                        escape(&run.id),
                        "?".into(),
                        "?".into(),
                        format!("unreadable: {}", escape(&why)),
                        "-".into(),
                        "-".into(),
                    ]);
                }
                continue;
            }
        };
        let state = match history.finished {
            Some((RunOutcome::Succeeded, _)) => "succeeded",
            Some((RunOutcome::Failed, _)) => "failed",
            Some((RunOutcome::Cancelled, _)) => "cancelled",
            None if running => "running",
            None => "stopped (resumable)",
        };
        let succeeded = history
            .modules
            .iter()
            .filter(|m| m.state == StateName::Succeeded)
            .count();
        if args.json {
            let json = serde_json::json!({
                "runId": history.run_id,
                "pipeline": history.pipeline,
                "startedAt": history.started_at,
                "lastAt": history.last_at,
                "state": state,
                "succeeded": succeeded,
                "modules": history.modules.len(),
                "stints": history.stints,
            });
            println!("{json}");
            continue;
        }
        rows.push([
            escape(&history.run_id),
            escape(&history.pipeline),
            wall(history.started_at),
            state.to_owned(),
            format!("{succeeded}/{}", history.modules.len()),
            span(history.last_at.saturating_sub(history.started_at)),
        ]);
    }
    if args.json {
        return Ok(());
    }
    let out = columns(
        &["RUN", "PIPELINE", "STARTED", "STATE", "SUCCEEDED", "TOOK"],
        &rows,
    );
    print!("{out}");
    Ok(())
}
