//! The `muster` command line: parses arguments, sets up logging, calls the
//! library crates, and decides the exit code.

mod ci;
mod cli;
mod report;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// Exit codes CI can rely on; README.md documents them.
pub mod exit {
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

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("muster: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    ExitCode::from(runtime.block_on(cli::dispatch(args)))
}
