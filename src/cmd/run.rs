//! `muster run`: the whole pipeline here, a master and local workers on
//! loopback.

use anyhow::Context;
use clap::Args;
use muster_core::Plan;
use tokio::net::TcpListener;

use crate::failure::Failure;
use crate::flags::{MasterFlags, ResumeFlag};
use crate::master::{
    decide_hint, gated_modules, hub_settings, result_cache, EndReports, Keeping, LocalWorkers,
    Master,
};
use crate::pipeline::{load, pipeline_dir};
use crate::run_report::Outputs;
use crate::selection::Selection;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    selection: Selection,
    /// Local workers to start [default: the number of CPUs].
    #[arg(long, short = 'w')]
    workers: Option<u32>,
    /// The run token (for `muster cancel`, and for deciding approval gates
    /// that name no approvers) [default: a random one, never printed].
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    resume: ResumeFlag,
    #[command(flatten)]
    master: MasterFlags,
}

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let file = args.selection.file();
    let plan = args.selection.apply(load(&file)?)?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    if workers == 0 {
        return Err(Failure::Usage(
            "--workers must be at least 1 for `muster run`".into(),
        ));
    }
    check_local_capabilities(&plan)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let mut config = hub_settings(&args.master)?;
    if let Some(token) = args.token.clone().filter(|t| !t.is_empty()) {
        config.token = token;
    }
    let gated = gated_modules(&plan);
    let mut keeping = Keeping::local(
        &file,
        &plan,
        &args.master,
        args.resume.resume.as_deref(),
        &config,
    )?;
    keeping.say();
    let cache = result_cache(
        &file,
        &plan,
        &args.master,
        &config,
        &keeping,
        pipeline_dir(&file),
    )?;
    let master = Master::start(listener, plan, config, keeping, cache)
        .await?
        .reporting(EndReports {
            files: Outputs::of(&args.master.reports),
            step_summary: false,
        });
    if let Some(link) = master.dashboard_link(master.url()) {
        crate::report::say(&format!("watch it live at {link}"));
    }
    if let Some(hint) = decide_hint(&gated, master.url()) {
        crate::report::say(&hint);
    }
    let local = LocalWorkers::plain(workers, &file, &args.master);
    master.run(&local).await?.verdict()
}

/// Local workers have only the detected capabilities: a module requiring
/// more could never run, so say so before starting instead of waiting.
fn check_local_capabilities(plan: &Plan) -> Result<(), Failure> {
    let local = muster_worker::detected_capabilities();
    for module in &plan.modules {
        let missing: Vec<&str> = module
            .requires
            .iter()
            .filter(|r| !local.contains(r))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Failure::Usage(format!(
                "module '{}' requires {}, which local workers do not have (they have {})\n  \
                 = help: run it with `muster hub` and a `muster worker --capability ...` that has it",
                module.id,
                missing.join(", "),
                local.join(", ")
            )));
        }
    }
    Ok(())
}
