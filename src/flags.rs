//! Command-line flags that more than one command takes, as clap structs
//! the commands flatten into their own: the pipeline file, how to reach a
//! hub, what a worker offers, and the master's settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use muster_hub::HubConfig;

use crate::failure::Failure;

/// The pipeline file (`run`, `hub`, `ci`, `validate`).
#[derive(Args)]
pub struct FileArg {
    /// The pipeline file.
    #[arg(default_value = "muster.toml")]
    pub file: PathBuf,
}

/// A running hub and its token (`worker`, `cancel`).
#[derive(Args)]
pub struct HubAccess {
    /// The hub's URL, as `muster hub` prints it.
    #[arg(long, env = "MUSTER_HUB")]
    pub hub: String,
    /// The hub's token.
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// What a worker offers and how long it keeps trying to reach its hub
/// (`worker`, and the worker instances of `ci`).
#[derive(Args)]
pub struct WorkerFlags {
    /// Extra capability to advertise (repeatable); os:... and arch:... are
    /// detected.
    #[arg(long = "capability", short = 'c')]
    pub capabilities: Vec<String>,
    /// Modules a worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// How long a worker keeps trying to reach its hub (at start, and after
    /// the connection drops) before it gives up with exit code 3.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconnect_timeout: Duration,
}

/// The master's settings (`run`, `hub`, and instance 0 of `ci`).
#[derive(Args)]
pub struct MasterFlags {
    /// Cancel everything else as soon as one module fails.
    #[arg(long)]
    pub fail_fast: bool,
    #[command(flatten)]
    pub limits: HubLimits,
    /// Folder for runs' state: each run's journal, module logs and
    /// artifacts go to runs/<run-id>/ under it [default: .muster beside the
    /// pipeline file].
    #[arg(long, env = "MUSTER_STATE_DIR", help_heading = "Storage")]
    pub state_dir: Option<PathBuf>,
    /// Runs kept in the state folder; older ones are removed when a run
    /// starts.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Storage")]
    pub keep_runs: u32,
    /// Keep no journal: the run's state lives in a temporary folder removed
    /// at the end, and the run cannot be resumed or followed with `muster
    /// status` (reports asked for are made from a journal kept there until
    /// the end).
    #[arg(long, help_heading = "Storage")]
    pub no_journal: bool,
    #[command(flatten)]
    pub cache: CacheFlags,
    #[command(flatten)]
    pub reports: ReportFlags,
    #[command(flatten)]
    pub dashboard: DashboardFlags,
    /// Who may decide approval gates: NAME=SHA256, the SHA-256 of that
    /// person's own token in hex (`printf %s "$TOKEN" | sha256sum`); the
    /// master never sees the token itself. Repeatable, or a comma-separated
    /// list in MUSTER_APPROVERS. The run token decides only gates that
    /// name no approvers.
    #[arg(
        long = "approver",
        value_name = "NAME=SHA256",
        env = "MUSTER_APPROVERS",
        value_delimiter = ',',
        value_parser = parse_approver,
        help_heading = "Gates and compensation"
    )]
    pub approvers: Vec<(String, [u8; 32])>,
    /// When the run fails, do not run the `compensate` commands of the
    /// modules that succeeded.
    #[arg(long, help_heading = "Gates and compensation")]
    pub no_compensate: bool,
}

fn parse_approver(text: &str) -> Result<(String, [u8; 32]), String> {
    muster_core::gate::parse_approver(text)
}

/// The live dashboard the hub serves at `/` (`run`, `hub`, instance 0 of
/// `ci`).
#[derive(Args, Clone)]
pub struct DashboardFlags {
    /// A token that opens the dashboard to watch the run but not to cancel
    /// it [default: a random one, printed in the dashboard's URL]. The run
    /// token opens it too, with the Cancel button.
    #[arg(
        long,
        env = "MUSTER_VIEW_TOKEN",
        hide_env_values = true,
        help_heading = "Dashboard"
    )]
    pub view_token: Option<String>,
    /// At most this many dashboard viewers connected at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000), help_heading = "Dashboard")]
    pub max_viewers: u32,
}

/// Reports written when the run ends (`run`, `hub`, instance 0 of `ci`),
/// from the run's journal, as `muster report` writes them afterwards.
#[derive(Args, Clone, Default)]
pub struct ReportFlags {
    /// Write the run's report as JSON (schema muster-report/1,
    /// docs/report.md) to FILE when the run ends.
    #[arg(long, value_name = "FILE", help_heading = "Reports")]
    pub report_json: Option<PathBuf>,
    /// Write the run as JUnit XML (a test case per module) to FILE when the
    /// run ends.
    #[arg(long, value_name = "FILE", help_heading = "Reports")]
    pub junit: Option<PathBuf>,
}

impl ReportFlags {
    /// Whether any report is asked for.
    pub fn any(&self) -> bool {
        self.report_json.is_some() || self.junit.is_some()
    }
}

/// The result cache (`run`, `hub`, instance 0 of `ci`).
#[derive(Args)]
pub struct CacheFlags {
    /// Run every module: neither look results up nor keep them.
    #[arg(long, help_heading = "Cache")]
    pub no_cache: bool,
    /// The local cache folder [default: .muster/cache beside the pipeline
    /// file]; used when no --cache-url is given.
    #[arg(long, env = "MUSTER_CACHE_DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,
    /// The local cache's size cap; the least recently used entries go first.
    #[arg(long, default_value = "5GiB", value_parser = parse_size, help_heading = "Cache")]
    pub cache_max_size: u64,
    /// A remote cache speaking the Turborepo remote-cache API, e.g.
    /// https://cache.example.com (instead of the local folder).
    #[arg(long, env = "MUSTER_CACHE_URL", help_heading = "Cache")]
    pub cache_url: Option<String>,
    /// The remote cache's bearer token. Never printed.
    #[arg(
        long,
        env = "MUSTER_CACHE_TOKEN",
        hide_env_values = true,
        help_heading = "Cache"
    )]
    pub cache_token: Option<String>,
    /// The remote cache's team (`teamId`, or `slug` when it does not start
    /// with `team_`).
    #[arg(long, env = "MUSTER_CACHE_TEAM", help_heading = "Cache")]
    pub cache_team: Option<String>,
    /// Whether to keep results [default: true, but false for a pull request
    /// from a fork in CI].
    #[arg(long, value_name = "BOOL", help_heading = "Cache")]
    pub cache_write: Option<bool>,
}

/// `5GiB`, `500MiB`, `1024` (bytes).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 5GiB or 500MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Continuing an earlier run (`run`, `hub`).
#[derive(Args)]
pub struct ResumeFlag {
    /// Continue the latest run of this pipeline that did not succeed (or
    /// RUN_ID, from `muster runs`): its succeeded modules whose definition
    /// did not change are kept, with their outputs and artifacts; the rest
    /// run again.
    #[arg(long, value_name = "RUN_ID", num_args = 0..=1, default_missing_value = LATEST)]
    pub resume: Option<String>,
}

/// `--resume` without a run id.
pub const LATEST: &str = "latest";

/// Where runs' state lives: `--state-dir`, else `.muster` beside the
/// pipeline file.
pub fn state_root(state_dir: Option<&Path>, file: &Path) -> PathBuf {
    match state_dir {
        Some(dir) => dir.to_owned(),
        None => crate::pipeline::pipeline_dir(file).join(".muster"),
    }
}

/// The hub's timeouts and limits; README.md ("Timeouts") explains them.
#[derive(Args)]
pub struct HubLimits {
    /// How often the hub pings each worker (workers ping back as often).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    ping_interval: Duration,
    /// A worker silent this long is lost and its modules run elsewhere; a
    /// worker whose socket drops may reconnect and keep them until then.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    client_timeout: Duration,
    /// How long a new connection has to finish the SignalR handshake.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    handshake_timeout: Duration,
    /// How long a new TCP connection has to send a request carrying the
    /// token (headers included); a silent or slow one is closed then.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    auth_timeout: Duration,
    /// Connections that have not yet shown the token, held at once; a new
    /// one beyond this closes the oldest, so a flood of idle sockets cannot
    /// lock workers out. Kept under a quarter of the open-file limit.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000), help_heading = "Timeouts")]
    max_unauthenticated: u32,
    /// How long a worker has to say Started for a module assigned to it;
    /// then the hub tells it to drop the module and runs it elsewhere as
    /// the next attempt.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    start_timeout: Duration,
    /// How long a ready module waits for a worker with the capabilities it
    /// requires before it fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    capability_timeout: Duration,
    /// After a cancel, how long workers have to confirm their modules
    /// stopped before the master gives up on them.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    cancel_grace: Duration,
    /// How long past a module's own timeout the hub waits for its result
    /// (room to upload its artifacts) before timing it out itself.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    result_grace: Duration,
    /// A module whose worker is lost this many times fails as a poison
    /// module instead of running again.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Timeouts")]
    max_worker_losses: u32,
    /// An artifact upload or download that moves no bytes for this long
    /// fails.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, help_heading = "Timeouts")]
    pub transfer_stall_timeout: Duration,
}

impl HubLimits {
    /// The hub's settings with these limits (see [`HubLimits::check`]),
    /// its artifacts stored under `artifact_dir`.
    pub fn hub_config(&self, fail_fast: bool, artifact_dir: PathBuf) -> HubConfig {
        HubConfig {
            fail_fast,
            ping_interval: self.ping_interval,
            client_timeout: self.client_timeout,
            handshake_timeout: self.handshake_timeout,
            auth_timeout: self.auth_timeout,
            max_unauthenticated: self.max_unauthenticated as usize,
            start_timeout: self.start_timeout,
            capability_timeout: self.capability_timeout,
            cancel_grace: self.cancel_grace,
            result_grace: self.result_grace,
            max_worker_losses: self.max_worker_losses,
            artifact_dir,
            transfer_stall_timeout: self.transfer_stall_timeout,
            ..HubConfig::default()
        }
    }

    /// Refuses limits that contradict each other: a worker is heard at
    /// least once per ping interval, so the client timeout must be longer.
    pub fn check(&self) -> Result<(), Failure> {
        if self.client_timeout > self.ping_interval {
            return Ok(());
        }
        Err(Failure::Usage(format!(
            "--client-timeout ({}) must be longer than --ping-interval ({}): a worker is heard at least once per ping interval\n  \
             = help: keep the client timeout about twice the ping interval, as SignalR does",
            humantime::format_duration(self.client_timeout),
            humantime::format_duration(self.ping_interval)
        )))
    }
}
