//! The subcommands, one file each, dispatched from [`Command`]. Each takes
//! its parsed arguments and returns `Ok(())` or the [`Failure`] that
//! decides the exit code.

mod cache;
mod cancel;
mod ci;
mod decide;
mod graph;
mod hub;
mod hub_post;
mod report;
mod run;
mod runs;
mod status;
mod validate;
mod worker;

use clap::Subcommand;

use crate::failure::Failure;

#[derive(Subcommand)]
pub enum Command {
    /// Run the pipeline here: the master plus local workers on loopback.
    Run(run::RunArgs),
    /// Run the master and print how other machines join it.
    Hub(hub::HubArgs),
    /// Join a hub and run the modules it assigns.
    Worker(worker::WorkerArgs),
    /// The same command on every CI runner: instance 0 becomes the master
    /// and publishes its hub in Redis, the others find it and join.
    Ci(Box<ci::CiArgs>),
    /// Cancel a running hub's run, as Ctrl-C on the master would.
    Cancel(cancel::CancelArgs),
    /// Approve a module's approval gate (with your approver token).
    Approve(decide::ApproveArgs),
    /// Reject a module's approval gate: it fails with your reason and its
    /// dependents are skipped.
    Reject(decide::RejectArgs),
    /// Check a pipeline file and print its modules without running anything.
    Validate(validate::ValidateArgs),
    /// Show a run's state from its journal: a local run from another
    /// terminal, or a CI run from any machine that reaches its Redis.
    Status(status::StatusArgs),
    /// List the runs kept in the state folder, newest first.
    Runs(runs::RunsArgs),
    /// Write a run's reports from its journal: JSON, JUnit XML, Markdown.
    Report(report::ReportArgs),
    /// Print the pipeline's DAG (after matrix expansion) as DOT or mermaid.
    Graph(graph::GraphArgs),
    /// The result cache: why a module ran again.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

impl Command {
    pub async fn execute(self) -> Result<(), Failure> {
        match self {
            Command::Run(args) => run::run(args).await,
            Command::Hub(args) => hub::hub(args).await,
            Command::Worker(args) => worker::worker(args).await,
            Command::Ci(args) => ci::ci(*args).await,
            Command::Cancel(args) => cancel::cancel(args).await,
            Command::Approve(args) => decide::approve(args).await,
            Command::Reject(args) => decide::reject(args).await,
            Command::Validate(args) => validate::validate(&args),
            Command::Status(args) => status::status(args).await,
            Command::Runs(args) => runs::runs(&args),
            Command::Report(args) => report::report(args).await,
            Command::Graph(args) => graph::graph(&args),
            Command::Cache(command) => cache::cache(command),
        }
    }
}
