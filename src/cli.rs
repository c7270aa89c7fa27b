//! Subcommands: `run`, `hub`, `worker`, `ci` (in `ci.rs`), `cancel` and
//! `validate`. Each returns the process exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use muster_core::protocol::RunOutcome;
use muster_core::{parse_pipeline, Plan};
use muster_hub::{Hub, HubConfig, Summary};
use muster_worker::websocket_url;
use muster_worker::{ClientError, Exit, WorkerConfig, WorkerError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ci::{self, CiArgs};
use crate::exit;
use crate::report::{self, Reporter};

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
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline here: the master plus local workers on loopback.
    Run(RunArgs),
    /// Run the master and print how other machines join it.
    Hub(HubArgs),
    /// Join a hub and run the modules it assigns.
    Worker(WorkerArgs),
    /// The same command on every CI runner: instance 0 becomes the master
    /// and publishes its hub in Redis, the others find it and join.
    Ci(Box<CiArgs>),
    /// Cancel a running hub's run, as Ctrl-C on the master would.
    Cancel(CancelArgs),
    /// Check a pipeline file and print its modules without running anything.
    Validate(FileArg),
}

#[derive(Args)]
pub(crate) struct FileArg {
    /// The pipeline file.
    #[arg(default_value = "muster.toml")]
    pub(crate) file: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    file: FileArg,
    /// Local workers to start [default: the number of CPUs].
    #[arg(long, short = 'w')]
    workers: Option<u32>,
    /// Cancel everything else as soon as one module fails.
    #[arg(long)]
    fail_fast: bool,
    #[command(flatten)]
    limits: HubLimits,
}

/// The hub's timeouts and limits; README.md ("Timeouts") explains them.
#[derive(Args)]
pub(crate) struct HubLimits {
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
    pub(crate) transfer_stall_timeout: Duration,
    /// Folder for the run's state: artifacts go to artifacts/ under it and
    /// stay after the run [default: a temporary folder, removed at the end].
    #[arg(long, help_heading = "Storage")]
    state_dir: Option<PathBuf>,
}

/// Keeps a temporary state folder until the run ends.
pub(crate) struct StateDir {
    _temporary: Option<tempfile::TempDir>,
}

impl HubLimits {
    /// The hub's settings, and the state folder to keep alive while it runs.
    pub(crate) fn config(&self, fail_fast: bool) -> Result<(HubConfig, StateDir), String> {
        if self.client_timeout <= self.ping_interval {
            return Err(format!(
                "--client-timeout ({}) must be longer than --ping-interval ({}): a worker is heard at least once per ping interval\n  \
                 = help: keep the client timeout about twice the ping interval, as SignalR does",
                humantime::format_duration(self.client_timeout),
                humantime::format_duration(self.ping_interval)
            ));
        }
        let (state, temporary) = match &self.state_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temporary = tempfile::Builder::new()
                    .prefix("muster-run-")
                    .tempdir()
                    .map_err(|e| format!("cannot make a temporary state folder: {e}"))?;
                (temporary.path().to_owned(), Some(temporary))
            }
        };
        let config = HubConfig {
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
            artifact_dir: state.join("artifacts"),
            transfer_stall_timeout: self.transfer_stall_timeout,
            ..HubConfig::default()
        };
        Ok((
            config,
            StateDir {
                _temporary: temporary,
            },
        ))
    }
}

#[derive(Args)]
struct HubArgs {
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
    /// Cancel everything else as soon as one module fails.
    #[arg(long)]
    fail_fast: bool,
    #[command(flatten)]
    limits: HubLimits,
}

#[derive(Args)]
struct WorkerArgs {
    /// The hub's URL, as `muster hub` prints it.
    #[arg(long, env = "MUSTER_HUB")]
    hub: String,
    /// The hub's token.
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    token: String,
    /// Extra capability to advertise (repeatable); os:... and arch:... are
    /// detected.
    #[arg(long = "capability", short = 'c')]
    capabilities: Vec<String>,
    /// Modules this worker runs at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Name shown in logs and in MUSTER_WORKER [default: host name and pid].
    #[arg(long)]
    name: Option<String>,
    /// Folder that module cwds are relative to [default: the current folder].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// How long to keep trying to reach the hub (at start, and after the
    /// connection drops) before exiting with code 3.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    reconnect_timeout: Duration,
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

#[derive(Args)]
struct CancelArgs {
    /// The hub's URL, as `muster hub` prints it.
    #[arg(long, env = "MUSTER_HUB")]
    hub: String,
    /// The hub's token.
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    token: String,
    /// Why, shown in the master's output and summary.
    #[arg(long)]
    reason: Option<String>,
}

pub async fn dispatch(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Hub(args) => hub(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Ci(args) => ci::ci(*args).await,
        Command::Cancel(args) => cancel(args).await,
        Command::Validate(args) => validate(&args.file),
    };
    result.unwrap_or_else(|e| {
        eprintln!("muster: error: {e:#}");
        exit::INFRASTRUCTURE
    })
}

/// Reads and checks a pipeline file; on failure prints why and returns the
/// exit code to use.
pub(crate) fn load(file: &Path) -> Result<Plan, u8> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "muster: error: cannot read pipeline file {}: {e}",
                file.display()
            );
            if e.kind() == std::io::ErrorKind::NotFound {
                eprintln!("  = help: pass the path of a pipeline file, or create muster.toml (see examples/)");
            }
            return Err(exit::BAD_INPUT);
        }
    };
    parse_pipeline(&file.display().to_string(), &text).map_err(|e| {
        eprintln!("muster: error: {e}");
        exit::BAD_INPUT
    })
}

fn validate(file: &Path) -> Result<u8> {
    let plan = match load(file) {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    print!("{}", report::describe_plan(&plan));
    println!(
        "{}: ok, {} modules, {} needs edges",
        file.display(),
        plan.len(),
        plan.edge_count()
    );
    Ok(exit::SUCCESS)
}

async fn run(args: RunArgs) -> Result<u8> {
    let plan = match load(&args.file.file) {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    if workers == 0 {
        eprintln!("muster: error: --workers must be at least 1 for `muster run`");
        return Ok(exit::BAD_INPUT);
    }
    if let Err(message) = check_local_capabilities(&plan) {
        eprintln!("muster: error: {message}");
        return Ok(exit::BAD_INPUT);
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let (config, _state) = match args.limits.config(args.fail_fast) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("muster: error: {message}");
            return Ok(exit::BAD_INPUT);
        }
    };
    let token = config.token.clone();
    let reporter = Reporter::for_plan(&plan, &token);
    let hub = Hub::start(listener, plan, config).await?;
    let local = LocalWorkers::plain(workers, &args.file.file, &args.limits);
    master(hub, &token, local, reporter).await
}

async fn hub(args: HubArgs) -> Result<u8> {
    let plan = match load(&args.file.file) {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let generated = args.token.is_none();
    let (mut config, _state) = match args.limits.config(args.fail_fast) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("muster: error: {message}");
            return Ok(exit::BAD_INPUT);
        }
    };
    if let Some(token) = args.token {
        config.token = token;
    }
    let token = config.token.clone();
    let reporter = Reporter::for_plan(&plan, &token);
    let hub = Hub::start(listener, plan, config).await?;
    println!("hub url: {}", hub.url());
    if generated {
        // A token made up for this run only: printing it is the only way
        // for another terminal to join.
        println!(
            "join with: muster worker --hub {} --token {token}",
            hub.url()
        );
    } else {
        println!(
            "join with: MUSTER_TOKEN=<your token> muster worker --hub {}",
            hub.url()
        );
    }
    let local = LocalWorkers::plain(args.workers, &args.file.file, &args.limits);
    master(hub, &token, local, reporter).await
}

/// Runs a started hub with its local workers to the end of the run and
/// returns the exit code.
async fn master(hub: Hub, token: &str, local: LocalWorkers, reporter: Reporter) -> Result<u8> {
    let ran = master_summary(hub, token, &local, reporter).await?;
    Ok(ran.exit_code())
}

/// Workers the master runs as tasks beside its hub, over loopback.
pub(crate) struct LocalWorkers {
    pub count: u32,
    /// Beyond the detected `os:` and `arch:`.
    pub capabilities: Vec<String>,
    pub workdir: PathBuf,
    /// Names are `NAME-1`, `NAME-2`, ...
    pub name: String,
    pub transfer_stall_timeout: Duration,
}

impl LocalWorkers {
    /// `count` workers named `local-N` with the detected capabilities, whose
    /// module cwds are relative to the pipeline file's folder.
    fn plain(count: u32, file: &Path, limits: &HubLimits) -> LocalWorkers {
        LocalWorkers {
            count,
            capabilities: Vec::new(),
            workdir: pipeline_dir(file),
            name: "local".into(),
            transfer_stall_timeout: limits.transfer_stall_timeout,
        }
    }
}

/// Runs a started hub with its local workers to the end of the run, printing
/// it as it goes, and returns its summary.
pub(crate) async fn master_summary(
    hub: Hub,
    token: &str,
    local: &LocalWorkers,
    reporter: Reporter,
) -> Result<Ran> {
    let stop = CancellationToken::new();
    let tasks = spawn_local_workers(&hub, token, local, &stop);
    let ran = supervise(hub, reporter).await?;
    stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(ran)
}

async fn worker(args: WorkerArgs) -> Result<u8> {
    let workdir = match args.workdir {
        Some(dir) => dir,
        None => std::env::current_dir().context("cannot read the current folder")?,
    };
    let config = WorkerConfig {
        hub: args.hub,
        token: args.token,
        name: args
            .name
            .unwrap_or_else(|| format!("{}-{}", muster_worker::host_name(), std::process::id())),
        capabilities: args.capabilities,
        slots: args.slots,
        workdir,
        connect_timeout: args.connect_timeout,
        reconnect_timeout: args.reconnect_timeout,
        transfer_stall_timeout: args.transfer_stall_timeout,
        noop: args.noop,
        observer: crate::worker_view::WorkerView::shared(),
    };
    let stop = CancellationToken::new();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        wait_for_interrupt().await;
        eprintln!("muster: worker stopping; the hub will run its modules elsewhere");
        ctrl_c.cancel();
    });
    match muster_worker::run(config, stop).await {
        Ok(Exit::Shutdown { reason, .. }) => {
            eprintln!("muster: worker done: {reason}");
            Ok(exit::SUCCESS)
        }
        Ok(Exit::Stopped) => Ok(exit::CANCELLED),
        Err(e @ WorkerError::Client(ClientError::BadUrl(_) | ClientError::Unauthorized { .. })) => {
            eprintln!("muster: error: {e}");
            Ok(exit::BAD_INPUT)
        }
        Err(e) => {
            eprintln!("muster: error: {e}");
            Ok(exit::INFRASTRUCTURE)
        }
    }
}

/// `POST {hub}/cancel` with the token; prints what the hub answered.
async fn cancel(args: CancelArgs) -> Result<u8> {
    if let Err(e) = websocket_url(&args.hub) {
        eprintln!("muster: error: {e}");
        return Ok(exit::BAD_INPUT);
    }
    let url = muster_core::url::join(&args.hub, "cancel")
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    // What is printed never carries a token given in the URL.
    let shown = muster_core::url::redact_url(&url);
    let mut body = serde_json::Map::new();
    if let Some(reason) = args.reason {
        body.insert("reason".into(), reason.into());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot set up an HTTP client")?;
    let sent = client
        .post(&url)
        .bearer_auth(&args.token)
        .json(&body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            // A hub exits a few seconds after its run ends: no answer at
            // all most often means there is no run left to cancel.
            let why = if e.is_connect() {
                "nothing is listening there".to_owned()
            } else {
                e.without_url().to_string()
            };
            eprintln!(
                "muster: error: no hub answered at {shown} ({why}); the run may have finished, or the URL is wrong"
            );
            return Ok(exit::INFRASTRUCTURE);
        }
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let reason = answer["reason"].as_str().unwrap_or(&text).trim();
    match status.as_u16() {
        202 => {
            println!("muster: the run is being cancelled ({reason})");
            Ok(exit::SUCCESS)
        }
        200 => {
            println!("muster: the run was already being cancelled ({reason})");
            Ok(exit::SUCCESS)
        }
        409 => {
            eprintln!("muster: nothing to cancel: {reason}");
            Ok(exit::RUN_FAILED)
        }
        401 => {
            eprintln!("muster: error: the hub at {shown} refused the token (HTTP 401): check --token or MUSTER_TOKEN");
            Ok(exit::BAD_INPUT)
        }
        code => {
            let reason = muster_core::text::escape(reason);
            eprintln!("muster: error: the hub at {shown} answered HTTP {code}: {reason}");
            Ok(exit::INFRASTRUCTURE)
        }
    }
}

/// Local workers have only the detected capabilities: a module requiring
/// more could never run, so say so before starting instead of waiting.
fn check_local_capabilities(plan: &Plan) -> Result<(), String> {
    let local = muster_worker::detected_capabilities();
    for module in &plan.modules {
        let missing: Vec<&str> = module
            .requires
            .iter()
            .filter(|r| !local.contains(r))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "module '{}' requires {}, which local workers do not have (they have {})\n  \
                 = help: run it with `muster hub` and a `muster worker --capability ...` that has it",
                module.id,
                missing.join(", "),
                local.join(", ")
            ));
        }
    }
    Ok(())
}

/// Module cwds are relative to the pipeline file's folder.
pub(crate) fn pipeline_dir(file: &Path) -> PathBuf {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    dir.canonicalize().unwrap_or(dir)
}

fn spawn_local_workers(
    hub: &Hub,
    token: &str,
    local: &LocalWorkers,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    (1..=local.count)
        .map(|i| {
            let config = WorkerConfig {
                hub: hub.url().to_owned(),
                token: token.to_owned(),
                name: format!("{}-{i}", local.name),
                capabilities: local.capabilities.clone(),
                slots: 1,
                workdir: local.workdir.clone(),
                connect_timeout: Duration::from_secs(15),
                reconnect_timeout: Duration::from_secs(15),
                transfer_stall_timeout: local.transfer_stall_timeout,
                noop: false,
                observer: crate::worker_view::WorkerView::shared(),
            };
            let stop = stop.child_token();
            tokio::spawn(async move {
                if let Err(e) = muster_worker::run(config, stop).await {
                    eprintln!("muster: local worker {i}: {e}");
                }
            })
        })
        .collect()
}

/// Prints the run as it goes, cancels it on Ctrl-C, and returns its summary.
async fn supervise(mut hub: Hub, reporter: Reporter) -> Result<Ran> {
    let events = hub.take_events().expect("events are taken once");
    let printer = tokio::spawn(reporter.print(events));
    let canceller = hub.canceller();
    let interrupt = tokio::spawn(async move {
        wait_for_interrupt().await;
        eprintln!("muster: cancelling the run (press Ctrl-C again to exit at once)");
        canceller.cancel("cancelled by the user").await;
        wait_for_interrupt().await;
        std::process::exit(i32::from(exit::CANCELLED));
    });
    let summary = hub.wait(Duration::from_secs(5)).await?;
    interrupt.abort();
    // The event stream ends with the run: every line is printed before the
    // table, however slowly stdout is read.
    let printed = printer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let output =
        printed.and_then(|()| report::write_stdout(report::summary_table(&summary).as_bytes()));
    if let Err(e) = &output {
        eprintln!("muster: error: the run's output was not all written to stdout: {e}");
    }
    Ok(Ran { summary, output })
}

/// A finished run as the master saw it.
pub(crate) struct Ran {
    pub summary: Summary,
    /// Whether all of the run's output reached stdout.
    pub output: std::io::Result<()>,
}

impl Ran {
    /// The run's exit code; a run that succeeded but whose output could
    /// not be written exits 3, so CI never trusts a log that was cut short.
    pub fn exit_code(&self) -> u8 {
        let code = outcome_code(self.summary.outcome());
        if code == exit::SUCCESS && self.output.is_err() {
            exit::INFRASTRUCTURE
        } else {
            code
        }
    }
}

pub(crate) async fn wait_for_interrupt() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The exit code for a run's outcome, the same on every instance.
pub(crate) fn outcome_code(outcome: RunOutcome) -> u8 {
    match outcome {
        RunOutcome::Succeeded => exit::SUCCESS,
        RunOutcome::Failed => exit::RUN_FAILED,
        RunOutcome::Cancelled => exit::CANCELLED,
    }
}
