//! `muster ci`: one identical command on every runner of a CI matrix.
//! Instance 0 becomes the master (hub, tunnel, discovery record in Redis, a
//! local worker of its own); every other instance waits for the record,
//! picks the first of its hub URLs that answers, and joins as a worker.
//! Every instance exits with the run's status.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use muster_core::protocol::{RunOutcome, PROTOCOL_VERSION};
use muster_core::url::redact_url;
use muster_discovery::identity::{self, Instance, Role, RunIdentity};
use muster_discovery::record::{record_key, DiscoveryRecord, RunState};
use muster_discovery::store::{DiscoveryStore, StoreError, Written};
use muster_discovery::tunnel::{self, Tunnel};
use muster_hub::Hub;
use muster_worker::transfer::describe_reqwest;
use muster_worker::{ClientError, Exit, WorkerConfig, WorkerError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{self, FileArg, HubLimits};
use crate::exit;
use crate::report::Reporter;

/// How long one hub URL has to answer its health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between rounds of probing a published hub that does not answer.
const PROBE_PAUSE: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct CiArgs {
    #[command(flatten)]
    file: FileArg,
    /// Redis holding the discovery record: redis://[:PASSWORD@]HOST[:PORT]
    /// or rediss:// for TLS.
    #[arg(long, env = "MUSTER_REDIS_URL", hide_env_values = true)]
    redis_url: String,
    /// The hub's token, a secret shared by every instance (from your CI's
    /// secrets). Never printed.
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This instance's index, from 0 [default: from CI variables].
    #[arg(long)]
    instance: Option<u32>,
    /// How many instances the run has [default: from CI variables].
    #[arg(long)]
    total: Option<u32>,
    /// The id every instance of this run shares [default: from CI
    /// variables, such as GITHUB_RUN_ID and GITHUB_RUN_ATTEMPT].
    #[arg(long, env = "MUSTER_RUN_ID")]
    run_id: Option<String>,
    /// How other runners reach the master: none, cloudflared, bore:HOST[:PORT]
    /// (a bore server), or cmd:COMMAND (any command that prints a URL).
    #[arg(long, env = "MUSTER_TUNNEL", default_value = "none")]
    tunnel: String,
    /// The bore server's secret, if it has one.
    #[arg(long, env = "BORE_SECRET", hide_env_values = true)]
    bore_secret: Option<String>,
    /// Where the master's hub listens.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Host or IP other runners reach the master at directly [default: this
    /// machine's outbound address].
    #[arg(long)]
    advertise: Option<String>,
    /// Put the token in the discovery record (anyone who can read the Redis
    /// key can then join); without MUSTER_TOKEN the master makes one up.
    #[arg(long)]
    token_in_record: bool,
    /// How long a worker waits for the master's record and for its hub to answer.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    discover_timeout: Duration,
    /// How long the master waits for its tunnel's public URL.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    tunnel_timeout: Duration,
    /// The discovery record's time to live; the master re-writes it every
    /// third of this while it lives.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    record_ttl: Duration,
    /// Local workers the master runs beside its hub.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Extra capability this instance's workers advertise (repeatable).
    #[arg(long = "capability", short = 'c')]
    capabilities: Vec<String>,
    /// Modules a worker instance runs at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Folder that module cwds are relative to [default: the pipeline
    /// file's folder].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// How long a worker keeps trying to reach a hub it lost.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    reconnect_timeout: Duration,
    /// Cancel everything else as soon as one module fails.
    #[arg(long)]
    fail_fast: bool,
    #[command(flatten)]
    limits: HubLimits,
}

pub async fn ci(args: CiArgs) -> Result<u8> {
    let env = |name: &str| std::env::var(name).ok();
    let head = git_head(&args.file.file);
    let identities =
        identity::resolve_run(&env, args.run_id.as_deref(), head.as_deref()).and_then(|run| {
            Ok((
                run,
                identity::resolve_instance(&env, args.instance, args.total)?,
            ))
        });
    let (run, instance) = match identities {
        Ok(found) => found,
        Err(e) => {
            eprintln!("muster: error: {e}");
            return Ok(exit::BAD_INPUT);
        }
    };
    // Redis is often a service container still starting when the job
    // does: every instance keeps trying for --discover-timeout, and says so.
    let store = match DiscoveryStore::open(&args.redis_url) {
        Ok(store) => store.when_not_answering(|n| println!("muster: {n}")),
        Err(e) => {
            eprintln!("muster: error: {e}");
            return Ok(exit::BAD_INPUT);
        }
    };
    println!("muster: run {} (from {})", run.run_id, run.source);
    println!("muster: {}", instance.explain());
    match identity::role(&instance) {
        Role::Master => master(args, run, instance, store).await,
        Role::Worker => worker(args, run, instance, store).await,
    }
}

async fn master(
    args: CiArgs,
    run: RunIdentity,
    instance: Instance,
    store: DiscoveryStore,
) -> Result<u8> {
    let plan = match cli::load(&args.file.file) {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    let kind = match tunnel::parse_tunnel(&args.tunnel, args.bore_secret.as_deref()) {
        Ok(kind) => kind,
        Err(e) => {
            eprintln!("muster: error: --tunnel: {e}");
            return Ok(exit::BAD_INPUT);
        }
    };
    let (mut config, _state) = match args.limits.config(args.fail_fast) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("muster: error: {message}");
            return Ok(exit::BAD_INPUT);
        }
    };
    match (args.token.clone(), args.token_in_record) {
        (Some(token), _) => config.token = token,
        // HubConfig made a random one up; it reaches workers via the record.
        (None, true) => {}
        (None, false) => {
            eprintln!(
                "muster: error: muster ci needs a token: set MUSTER_TOKEN to a secret shared by every instance \
                 (from your CI's secrets)\n  = help: or pass --token-in-record to let the master make one up and \
                 store it in the discovery record, where anyone who can read Redis can take it"
            );
            return Ok(exit::BAD_INPUT);
        }
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let token = config.token.clone();
    let reporter = Reporter::for_plan(&plan, &token);
    let hub = Hub::start(listener, plan, config).await?;
    // Ctrl-C while the tunnel starts drops it (and its process) cleanly.
    let opened = tokio::select! {
        opened = tunnel::open(&kind, port, args.tunnel_timeout) => opened,
        () = cli::wait_for_interrupt() => {
            eprintln!("muster: interrupted while the tunnel was starting");
            return Ok(exit::CANCELLED);
        }
    };
    let tunnel = match opened {
        Ok(tunnel) => tunnel,
        Err(e) => {
            eprintln!("muster: error: tunnel: {e}");
            return Ok(exit::INFRASTRUCTURE);
        }
    };
    let urls = hub_urls(&args, port, tunnel.as_ref());
    let started_at = unix_ms();
    let mut record = DiscoveryRecord {
        run_id: run.run_id.clone(),
        urls: urls.clone(),
        protocol_version: PROTOCOL_VERSION,
        state: RunState::Running,
        outcome: None,
        started_at,
        epoch: started_at,
        token: args.token_in_record.then(|| token.clone()),
    };
    let written = tokio::select! {
        written = store.write_within(&record, args.record_ttl, args.discover_timeout) => written,
        () = cli::wait_for_interrupt() => {
            eprintln!("muster: interrupted while waiting for Redis");
            return Ok(exit::CANCELLED);
        }
    };
    match written {
        Ok(Written::Yes) => {}
        Ok(Written::Superseded) => {
            eprintln!(
                "muster: error: a newer master already owns run {} in Redis at {}\n  = help: is instance 0 running twice with the same run id?",
                run.run_id,
                store.shown_url()
            );
            return Ok(exit::INFRASTRUCTURE);
        }
        Err(e) => {
            eprintln!("muster: error: cannot publish the hub: {e}");
            return Ok(exit::INFRASTRUCTURE);
        }
    }
    println!(
        "muster: published the hub for {} more instance(s) under {} in Redis at {}: {}",
        instance.total - 1,
        record_key(&run.run_id),
        store.shown_url(),
        shown_urls(&urls)
    );
    let (latest, watched) = tokio::sync::watch::channel(record.clone());
    let stop_refresh = CancellationToken::new();
    let refresh = tokio::spawn(store.clone().keep_fresh(
        watched,
        args.record_ttl,
        stop_refresh.clone(),
    ));
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| cli::pipeline_dir(&args.file.file));
    let ran = cli::master_summary(
        hub,
        &token,
        &cli::LocalWorkers {
            count: args.workers,
            capabilities: args.capabilities.clone(),
            workdir,
            name: format!("instance-{}", instance.index),
            transfer_stall_timeout: args.limits.transfer_stall_timeout,
        },
        reporter,
    )
    .await?;
    stop_refresh.cancel();
    let _ = refresh.await;
    let outcome = ran.summary.outcome();
    record.state = RunState::Finished;
    record.outcome = Some(outcome);
    latest.send_replace(record.clone());
    if let Err(e) = store.write(&record, args.record_ttl).await {
        eprintln!("muster: warning: could not mark the run finished in Redis: {e}");
    }
    drop(tunnel);
    Ok(ran.exit_code())
}

/// The hub's URLs in order of preference: this machine's own address
/// (fastest, when runners share a network), the tunnel, then loopback (for
/// instances on the same machine).
fn hub_urls(args: &CiArgs, port: u16, tunnel: Option<&Tunnel>) -> Vec<String> {
    let mut urls = Vec::new();
    let loopback_only = args.listen.ip().is_loopback();
    let direct = match &args.advertise {
        Some(host) => Some(host.clone()),
        None if !loopback_only => outbound_ip().map(|ip| match ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }),
        None => None,
    };
    if let Some(host) = direct {
        urls.push(format!("http://{host}:{port}/hub"));
    }
    if let Some(tunnel) = tunnel {
        urls.push(format!("{}/hub", tunnel.url().trim_end_matches('/')));
    }
    urls.push(format!("http://127.0.0.1:{port}/hub"));
    urls.dedup();
    urls
}

/// The address this machine's traffic leaves from: a UDP socket
/// "connected" to a documentation address sends nothing but picks a route.
fn outbound_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn worker(
    args: CiArgs,
    run: RunIdentity,
    instance: Instance,
    store: DiscoveryStore,
) -> Result<u8> {
    println!(
        "muster: waiting up to {} for the master's record under {} in Redis at {}",
        humantime::format_duration(args.discover_timeout),
        record_key(&run.run_id),
        store.shown_url()
    );
    // The record can come before its hub answers (a tunnel's public URL
    // often takes seconds to route), and a restarted master writes new
    // URLs: re-read and probe again until the discover timeout.
    let deadline = tokio::time::Instant::now() + args.discover_timeout;
    let mut said_waiting = false;
    let (hub, token) = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let record = match store.wait_for(&run.run_id, left).await {
            Ok(record) => record,
            Err(e @ StoreError::BadUrl { .. }) => {
                eprintln!("muster: error: {e}");
                return Ok(exit::BAD_INPUT);
            }
            Err(e) => {
                eprintln!("muster: error: {e}");
                return Ok(exit::INFRASTRUCTURE);
            }
        };
        if let Some(outcome) = record.finished() {
            println!(
                "muster: run {} has already finished ({}); nothing left to do",
                run.run_id,
                outcome_word(outcome)
            );
            return Ok(exit::SUCCESS);
        }
        let Some(token) = args.token.clone().or(record.token.clone()) else {
            eprintln!(
                "muster: error: no token: set MUSTER_TOKEN to the secret the master uses (the record does not carry it)"
            );
            return Ok(exit::BAD_INPUT);
        };
        let tried = match first_answering(&record.urls).await {
            Ok(hub) => break (hub, token),
            Err(tried) => tried,
        };
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "muster: error: none of the master's hub URLs answered within {}:\n{tried}\n  = help: check the master's tunnel (--tunnel) or --advertise address",
                humantime::format_duration(args.discover_timeout)
            );
            return Ok(exit::INFRASTRUCTURE);
        }
        if !said_waiting {
            println!("muster: the master's hub does not answer yet; trying again until the discover timeout:\n{tried}");
            said_waiting = true;
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + PROBE_PAUSE)).await;
    };
    println!("muster: joining the hub at {}", redact_url(&hub));
    let workdir = match &args.workdir {
        Some(dir) => dir.clone(),
        None => cli::pipeline_dir(&args.file.file),
    };
    let config = WorkerConfig {
        hub,
        token,
        name: format!("instance-{}", instance.index),
        capabilities: args.capabilities.clone(),
        slots: args.slots,
        workdir,
        connect_timeout: Duration::from_secs(15),
        reconnect_timeout: args.reconnect_timeout,
        transfer_stall_timeout: args.limits.transfer_stall_timeout,
        noop: false,
        observer: crate::worker_view::WorkerView::shared(),
    };
    let stop = CancellationToken::new();
    let interrupted = stop.clone();
    tokio::spawn(async move {
        cli::wait_for_interrupt().await;
        eprintln!("muster: worker stopping; the hub will run its modules elsewhere");
        interrupted.cancel();
    });
    match muster_worker::run(config, stop).await {
        Ok(Exit::Shutdown { outcome, .. }) => {
            let outcome = outcome.unwrap_or(RunOutcome::Succeeded);
            println!("muster: the run has finished: {}", outcome_word(outcome));
            Ok(cli::outcome_code(outcome))
        }
        Ok(Exit::Stopped) => Ok(exit::CANCELLED),
        Err(e @ WorkerError::Client(ClientError::Unauthorized { .. })) => {
            eprintln!("muster: error: {e}");
            Ok(exit::BAD_INPUT)
        }
        Err(e) => {
            // The hub may be gone because the run is over.
            if let Some(outcome) = finished_soon(&store, &run.run_id).await {
                println!(
                    "muster: the run finished while this worker was away: {}",
                    outcome_word(outcome)
                );
                return Ok(cli::outcome_code(outcome));
            }
            eprintln!("muster: error: {e}");
            Ok(exit::INFRASTRUCTURE)
        }
    }
}

/// Whether the run's record says finished, now or within a few seconds
/// (the time a master takes from closing its hub to writing the record).
async fn finished_soon(store: &DiscoveryStore, run_id: &str) -> Option<RunOutcome> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(outcome)) = store
            .read(run_id)
            .await
            .map(|r| r.and_then(|r| r.finished()))
        {
            return Some(outcome);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Probes every URL's health check at once and returns the first URL, in
/// the record's order, that answered; or a line per URL saying why not.
async fn first_answering(urls: &[String]) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let probes = urls.iter().map(|url| {
        let client = client.clone();
        let health = format!(
            "{}/healthz",
            url.trim_end_matches('/').trim_end_matches("/hub")
        );
        async move {
            match client.get(&health).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("HTTP {}", response.status())),
                // The line names the URL, redacted; the error's own copy
                // of it is not.
                Err(e) => Err(describe_reqwest(e)),
            }
        }
    });
    let results = futures_util::future::join_all(probes).await;
    let mut tried = Vec::new();
    for (url, result) in urls.iter().zip(results) {
        match result {
            Ok(()) => return Ok(url.clone()),
            Err(why) => tried.push(format!("  {}: {why}", redact_url(url))),
        }
    }
    if tried.is_empty() {
        tried.push("  (the record lists no URL)".into());
    }
    Err(tried.join("\n"))
}

/// The hub URLs as they may be printed, comma-separated.
fn shown_urls(urls: &[String]) -> String {
    urls.iter()
        .map(|url| redact_url(url))
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcome_word(outcome: RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Succeeded => "succeeded",
        RunOutcome::Failed => "failed",
        RunOutcome::Cancelled => "cancelled",
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The commit checked out where the pipeline file lives, if git knows.
fn git_head(file: &std::path::Path) -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(cli::pipeline_dir(file))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
