//! `muster worker`: joins a hub and runs what it assigns until the hub
//! says the run is over.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use muster_worker::{ClientError, Exit, WorkerError};

use crate::failure::Failure;
use crate::flags::{HubAccess, WorkerFlags};
use crate::workers::{stop_on_interrupt, worker_config, Seat};

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    access: HubAccess,
    #[command(flatten)]
    worker: WorkerFlags,
    /// Name shown in logs and in MUSTER_WORKER [default: host name and pid].
    #[arg(long)]
    name: Option<String>,
    /// Folder that module cwds are relative to [default: the current folder].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Bound on one connection attempt and its handshake.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// An artifact upload or download that moves no bytes for this long
    /// fails (after a few retries).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    transfer_stall_timeout: Duration,
    /// A benchmark aid: report every module succeeded at once without
    /// running it (no process is forked), to measure muster's own dispatch.
    #[arg(long)]
    noop: bool,
}

pub async fn worker(args: WorkerArgs) -> Result<(), Failure> {
    let workdir = match args.workdir {
        Some(dir) => dir,
        None => std::env::current_dir().context("cannot read the current folder")?,
    };
    let seat = Seat {
        hub: args.access.hub,
        token: args.access.token,
        name: args
            .name
            .unwrap_or_else(|| format!("{}-{}", muster_worker::host_name(), std::process::id())),
        workdir,
        locator: None,
    };
    let mut config = worker_config(seat, &args.worker, args.transfer_stall_timeout);
    config.connect_timeout = args.connect_timeout;
    config.noop = args.noop;
    match muster_worker::run(config, stop_on_interrupt()).await {
        Ok(Exit::Shutdown { reason, .. }) => {
            eprintln!("muster: worker done: {reason}");
            Ok(())
        }
        Ok(Exit::Stopped) => Err(Failure::Cancelled),
        Err(e @ WorkerError::Client(ClientError::BadUrl(_) | ClientError::Unauthorized { .. })) => {
            Err(Failure::Usage(e.to_string()))
        }
        Err(e) => Err(Failure::infrastructure(e)),
    }
}
