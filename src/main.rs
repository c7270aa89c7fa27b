//! The `muster` command line: parses arguments, sets up logging, calls the
//! library crates, and decides the exit code.

mod ci;
mod cli;
mod report;
mod worker_view;

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
    raise_open_file_limit();
    return_large_blocks_to_the_system();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("muster: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    ExitCode::from(runtime.block_on(cli::dispatch(args)))
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
