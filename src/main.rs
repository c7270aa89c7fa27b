//! The `muster` command line: parses arguments, sets up logging, runs the
//! command (`cmd/`), and turns its result into the exit code, in
//! [`exit_code`] only.

mod cache_policy;
mod cmd;
mod dashboard_link;
mod discover;
mod failover;
mod failure;
mod flags;
mod interrupt;
mod journal_source;
mod journaling;
mod master;
mod mirror;
mod pipeline;
mod publish;
mod report;
mod result_cache;
mod run_lock;
mod run_report;
mod selection;
mod state_folder;
mod status_view;
mod worker_view;
mod workers;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::failure::Failure;

/// Exit codes CI can rely on; README.md documents them.
mod exit {
    /// Every module succeeded (or a worker's run ended normally).
    pub const SUCCESS: u8 = 0;
    /// The run finished and at least one module did not succeed.
    pub const RUN_FAILED: u8 = 1;
    /// The pipeline file, the command line or the token is wrong; nothing
    /// ran.
    pub const BAD_INPUT: u8 = 2;
    /// muster itself could not work: no listener, a hub out of reach.
    pub const INFRASTRUCTURE: u8 = 3;
    /// The run was cancelled (Ctrl-C / SIGTERM on the master, `muster
    /// cancel`).
    pub const CANCELLED: u8 = 130;
}

/// How long `main` waits, once the command has returned, for threads
/// still blocked (a write to a stdout nobody reads) before exiting anyway.
/// Tasks still running are dropped first, so what they hold (module
/// process groups, temporary folders) is cleaned up either way.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// Run a CI pipeline, a DAG of shell modules, across many machines.
///
/// A master starts an embedded SignalR hub; workers connect over WebSockets,
/// register their capabilities, and get modules pushed to them.
#[derive(Parser)]
#[command(
    name = "muster",
    version,
    propagate_version = true,
    after_help = "Examples:
  muster run                          run ./muster.toml with one local worker per CPU
  muster validate ci/muster.toml      check a file and print its modules
  muster hub --listen 0.0.0.0:7400    run the master for workers on other machines
  muster worker --hub http://10.0.0.5:7400/hub -c docker   join it (token from MUSTER_TOKEN)
  muster cancel --hub http://10.0.0.5:7400/hub               cancel that run from anywhere

Exit codes: 0 every module succeeded, 1 a module failed, timed out or was skipped,
2 bad pipeline file, arguments or token, 3 muster could not work (network, hub), 130 cancelled.
MUSTER_LOG=info shows muster's own logs on stderr."
)]
struct Cli {
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    raise_open_file_limit();
    return_large_blocks_to_the_system();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            let failure = Failure::infrastructure(format!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit_code(Err(failure)));
        }
    };
    let result = runtime.block_on(args.command.execute());
    runtime.shutdown_timeout(SHUTDOWN_LIMIT);
    ExitCode::from(exit_code(result))
}

/// Says why a command failed, on stderr, and returns the exit code for
/// its result; README.md ("Exit codes") documents them.
fn exit_code(result: Result<(), Failure>) -> u8 {
    let Err(failure) = result else {
        return exit::SUCCESS;
    };
    if let Some(message) = failure.message() {
        eprintln!("muster: {message}");
    }
    match failure {
        Failure::RunFailed | Failure::NothingToCancel(_) | Failure::DecisionRefused(_) => {
            exit::RUN_FAILED
        }
        Failure::Usage(_) | Failure::Pipeline(_) => exit::BAD_INPUT,
        Failure::Infrastructure(_) | Failure::OutputLost => exit::INFRASTRUCTURE,
        Failure::Cancelled | Failure::Interrupted(_) | Failure::Abandoned => exit::CANCELLED,
    }
}

/// glibc serves blocks of 128 KiB and more with their own mappings, but
/// raises that threshold each time such a block is freed, after which large
/// records and log batches come from the heap and stay resident after they
/// are freed. A fixed threshold keeps the hub's memory returning to the
/// system when a burst of large messages is over.
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Raises the soft limit on open files to the hard limit. Many systems
/// start processes at a soft limit of 1,024: a hub with hundreds of
/// workers, or under a flood of connections, would run out of descriptors
/// long before the hard limit that it is allowed to use.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!("raised the open-file limit from {soft} to {hard}"),
            Err(e) => tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::debug!("cannot read the open-file limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(result: Result<(), Failure>, code: u8) {
        assert_eq!(exit_code(result), code);
    }

    #[test]
    fn every_result_has_its_documented_exit_code() {
        check(Ok(()), 0);
        check(Err(Failure::RunFailed), 1);
        check(Err(Failure::NothingToCancel("finished".into())), 1);
        check(Err(Failure::Usage("--workers".into())), 2);
        check(Err(Failure::infrastructure("cannot listen")), 3);
        check(Err(Failure::OutputLost), 3);
        check(Err(Failure::Cancelled), 130);
        check(Err(Failure::Interrupted("interrupted")), 130);
        check(Err(Failure::Abandoned), 130);
    }
}
