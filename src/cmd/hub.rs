//! `muster hub`: the master alone (or with a few local workers), printing
//! how other machines join it.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

use crate::failure::Failure;
use crate::flags::{FileArg, MasterFlags, ResumeFlag};
use crate::master::{
    decide_hint, gated_modules, hub_settings, result_cache, EndReports, Keeping, LocalWorkers,
    Master,
};
use crate::pipeline::{load, pipeline_dir};
use crate::run_report::Outputs;

#[derive(Args)]
pub struct HubArgs {
    #[command(flatten)]
    file: FileArg,
    /// Address to listen on; use 0.0.0.0:PORT to accept other machines.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Local workers to start beside the hub.
    #[arg(long, short = 'w', default_value_t = 0)]
    workers: u32,
    /// Token workers must present [default: a random one, printed once].
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    resume: ResumeFlag,
    #[command(flatten)]
    master: MasterFlags,
}

pub async fn hub(args: HubArgs) -> Result<(), Failure> {
    let plan = load(&args.file.file)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = hub_settings(&args.master)?;
    let generated = args.token.is_none();
    if let Some(token) = args.token {
        config.token = token;
    }
    let mut keeping = Keeping::local(
        &args.file.file,
        &plan,
        &args.master,
        args.resume.resume.as_deref(),
        &config,
    )?;
    let said = keeping.take_said();
    let gated = gated_modules(&plan);
    let file = &args.file.file;
    let cache = result_cache(
        file,
        &plan,
        &args.master,
        &config,
        &keeping,
        pipeline_dir(file),
    )?;
    let master = Master::start(listener, plan, config, keeping, cache)
        .await?
        .reporting(EndReports {
            files: Outputs::of(&args.master.reports),
            step_summary: false,
        });
    // The hub's URL comes first: scripts read it from the first line.
    println!("hub url: {}", master.url());
    if generated {
        // A token made up for this run only: printing it is the only way
        // for another terminal to join.
        println!(
            "join with: muster worker --hub {} --token {}",
            master.url(),
            master.token()
        );
    } else {
        println!(
            "join with: MUSTER_TOKEN=<your token> muster worker --hub {}",
            master.url()
        );
    }
    if let Some(link) = master.dashboard_link(master.url()) {
        println!("dashboard (watch only): {link}");
    }
    for line in said {
        println!("muster: {line}");
    }
    if let Some(hint) = decide_hint(&gated, master.url()) {
        crate::report::say(&hint);
    }
    let local = LocalWorkers::plain(args.workers, &args.file.file, &args.master);
    master.run(&local).await?.verdict()
}
