//! `muster ci`: one identical command on every runner of a CI matrix.
//! Instance 0 takes the run's lease and becomes the master (hub, tunnel,
//! discovery record in Redis, a local worker of its own); every other
//! instance waits for the record, picks the first of its hub URLs that
//! answers, and joins as a worker. Every worker instance also watches the
//! lease: when the master stops renewing it (its runner died), one of them
//! takes the run over from the journal, and the other workers follow the
//! record to it. Every instance exits with the run's status; a master that
//! was taken over exits 3, saying by whom.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use muster_core::url::redact_url;
use muster_core::wire::types::RunOutcome;
use muster_discovery::identity::{self, Instance, Role, RunIdentity};
use muster_discovery::lease::{Holder, Taken};
use muster_discovery::record::{record_key, RunState};
use muster_discovery::store::DiscoveryStore;
use muster_hub::HubConfig;
use muster_worker::{
    ClientError, Exit, TransferProgress, TransferStarted, WorkerError, WorkerEvent, WorkerObserver,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::discover::{find_hub, finished_soon, outcome_word, Found, RecordLocator};
use crate::failover::{contend, ran_with, superseded, LeaseTerms, Renewing};
use crate::failure::{outcome_result, Failure};
use crate::flags::{state_root, FileArg, MasterFlags, WorkerFlags};
use crate::journaling::CiJournalPlace;
use crate::master::{hub_settings, result_cache, EndReports, Keeping, LocalWorkers, Master};
use crate::mirror::{Mirror, MirrorPlace};
use crate::pipeline::{load, pipeline_dir};
use crate::publish::{hub_urls, open_tunnel, publish, running_record, shown_urls, tunnel_kind};
use crate::run_report::{announce_dashboard, Outputs};
use crate::workers::{stop_on_interrupt, worker_config, Seat};

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
    /// Worker instances keep no copy of the run's artifacts. By default
    /// each fetches every artifact the run stores into its own state
    /// folder, so that if it takes the run over from a master that died
    /// the modules that made them need not run again; that costs each
    /// instance the artifacts' bytes, in download and on disk.
    #[arg(long)]
    no_artifact_mirror: bool,
    /// The master's lease in Redis: it renews it every third of this, and
    /// when it has not for this long (plus half again) another instance
    /// takes the run over. Shorter notices a dead master sooner; too short
    /// for a slow network or Redis risks a needless takeover.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    #[command(flatten)]
    worker: WorkerFlags,
    /// Folder that module cwds are relative to [default: the pipeline
    /// file's folder].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Start afresh even when Redis holds a journal of this run or of its
    /// previous attempt (by default a re-run resumes: it keeps what the
    /// failed attempt finished).
    #[arg(long)]
    no_resume: bool,
    /// Resume from this run id's journal [default: the previous attempt of
    /// the same CI run, from CI variables such as GITHUB_RUN_ATTEMPT].
    #[arg(long, value_name = "RUN_ID")]
    resume_from: Option<String>,
    /// How long the run's journal stays in Redis after its last record (for
    /// re-runs and `muster status`).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    journal_ttl: Duration,
    #[command(flatten)]
    master: MasterFlags,
}

pub async fn ci(args: CiArgs) -> Result<(), Failure> {
    let env = |name: &str| std::env::var(name).ok();
    let head = git_head(&args.file.file);
    let run = identity::resolve_run(&env, args.run_id.as_deref(), head.as_deref())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let instance = identity::resolve_instance(&env, args.instance, args.total)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // Redis is often a service container still starting when the job
    // does: every instance keeps trying for --discover-timeout, and says so.
    let store = DiscoveryStore::open(&args.redis_url)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .when_not_answering(|n| crate::report::say(&format!("{n}")));
    crate::report::say(&format!("run {} (from {})", run.run_id, run.source));
    crate::report::say(&instance.explain().to_string());
    let args = Arc::new(args);
    let me = format!("instance {}", instance.index);
    if identity::role(&instance) == Role::Master {
        match first_lease(&args, &store, &run, &me).await? {
            Taken::Won(held) => {
                let leading = Leading {
                    held,
                    took_over: None,
                    token: None,
                    local_workers: args.workers,
                    lost: None,
                };
                return master(args, run, instance, store, leading).await;
            }
            Taken::Held(holder) => crate::report::say(&format!(
                "{holder} holds this run's lease: joining as a worker (if that master is gone, \
                 an instance takes the run over once its lease lapses)"
            )),
            Taken::NoRunYet => {}
        }
    }
    follower(args, run, instance, store, me).await
}

/// Instance 0 takes the run's lease at the start, once Redis answers.
async fn first_lease(
    args: &CiArgs,
    store: &DiscoveryStore,
    run: &RunIdentity,
    me: &str,
) -> Result<Taken, Failure> {
    store
        .answering_within(args.discover_timeout)
        .await
        .map_err(|e| Failure::infrastructure(format!("cannot take the master's lease: {e}")))?;
    let terms = lease_terms(args);
    store
        .take_lease(&run.run_id, me, terms.ttl, true, terms.keep, REDIS_CALL)
        .await
        .map_err(|e| Failure::infrastructure(format!("cannot take the master's lease: {e}")))
}

/// Bound on one Redis call made once (not the lease's own calls).
const REDIS_CALL: Duration = Duration::from_secs(10);

/// How long an instance that took the run over waits, after its run
/// ended, for its own worker to hear so and leave.
const OWN_WORKER_LINGER: Duration = Duration::from_secs(15);

fn lease_terms(args: &CiArgs) -> LeaseTerms {
    LeaseTerms {
        ttl: args.lease_ttl,
        keep: args.journal_ttl,
    }
}

/// A worker instance: works for the run's master and watches its lease;
/// when the master stops renewing it and this instance wins the lease, it
/// becomes the master, while its worker follows the record to it.
async fn follower(
    args: Arc<CiArgs>,
    run: RunIdentity,
    instance: Instance,
    store: DiscoveryStore,
    me: String,
) -> Result<(), Failure> {
    // A hub that closes the connection with a reason gave the run up (its
    // journal failed): then this instance takes no part in a takeover.
    let given_up = CancellationToken::new();
    let mut working = tokio::spawn(worker(
        args.clone(),
        run.clone(),
        instance.clone(),
        store.clone(),
        Some(given_up.clone()),
    ));
    // Without a journal a new master would start the run afresh: such a
    // run ends with its master.
    if args.master.no_journal {
        return working
            .await
            .unwrap_or_else(|e| Err(Failure::infrastructure(e)));
    }
    let mirror = match args.no_artifact_mirror {
        true => None,
        false => Some(start_mirror(&args, &run, &store)?),
    };
    let terms = lease_terms(&args);
    // The first of: the worker ends (the run ended, or it gave up), its
    // hub gives the run up, or this instance takes the run over.
    let takeover = tokio::select! {
        done = &mut working => Err(Some(done)),
        () = given_up.cancelled() => Err(None),
        takeover = contend(&store, &run.run_id, &me, terms) => Ok(takeover),
    };
    let takeover = match takeover {
        Ok(takeover) => takeover,
        Err(done) => {
            if let Some(mirror) = mirror {
                mirror.stop().await;
            }
            let done = match done {
                Some(done) => done,
                // Its worker says how it ends.
                None => working.await,
            };
            return done.unwrap_or_else(|e| Err(Failure::infrastructure(e)));
        }
    };
    // The run folder is the new master's store from now on.
    if let Some(mirror) = mirror {
        mirror.stop().await;
    }
    // With --token-in-record the workers know the earlier master's token.
    let token = match args.token.clone() {
        Some(token) => Some(token),
        None => store
            .read(&run.run_id)
            .await
            .ok()
            .flatten()
            .and_then(|record| record.token),
    };
    let leading = Leading {
        held: takeover.held,
        took_over: Some(takeover.took_over),
        lost: takeover.lost,
        token,
        // This instance's worker goes on, and joins this hub by the record;
        // if it already gave up, a local worker takes its place.
        local_workers: u32::from(working.is_finished()),
    };
    let led = master(args, run, instance, store, leading).await;
    let _ = tokio::time::timeout(OWN_WORKER_LINGER, working).await;
    led
}

/// Starts keeping a copy of the run's artifacts in this instance's run
/// folder, where a takeover's resume looks for them.
fn start_mirror(
    args: &CiArgs,
    run: &RunIdentity,
    store: &DiscoveryStore,
) -> Result<Mirror, Failure> {
    let root = state_root(args.master.state_dir.as_deref(), &args.file.file);
    let folder = muster_journal::RunFolder::at(&root, &run.run_id)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let place = MirrorPlace {
        redis_url: args.redis_url.clone(),
        run_id: run.run_id.clone(),
        store: folder.artifacts(),
        token: args.token.clone(),
    };
    let locator = Arc::new(RecordLocator::new(store.clone(), &run.run_id));
    Ok(Mirror::start(place, locator))
}

/// How an instance leads the run.
struct Leading {
    /// The lease it holds.
    held: Holder,
    /// Set when it took a live run over from another master.
    took_over: Option<muster_core::journal::TookOver>,
    /// The token workers know, when it is not MUSTER_TOKEN.
    token: Option<String>,
    local_workers: u32,
    /// After a takeover: the master that was lost, whose own workers went
    /// with its runner.
    lost: Option<Holder>,
}

async fn master(
    args: Arc<CiArgs>,
    run: RunIdentity,
    instance: Instance,
    store: DiscoveryStore,
    leading: Leading,
) -> Result<(), Failure> {
    let plan = load(&args.file.file)?;
    let kind = tunnel_kind(&args.tunnel, args.bore_secret.as_deref())?;
    let mut config = master_settings(&args, leading.token.clone())?;
    config.adopt_in_flight = leading.took_over.is_some();
    let epoch = leading.held.epoch;
    crate::report::say(&format!("{} is the master", leading.held));
    let went_with_lost = |worker: &str| {
        leading
            .lost
            .as_ref()
            .is_some_and(|lost| ran_with(lost, worker))
    };
    // Renewed from now: opening the journal and the tunnel takes time.
    let renewing = Renewing::start(
        store.clone(),
        run.run_id.clone(),
        leading.held.clone(),
        lease_terms(&args),
    );
    let place = CiJournalPlace {
        redis_url: &args.redis_url,
        run_id: &run.run_id,
        previous: args.resume_from.as_deref().or(run.previous.as_deref()),
        no_resume: args.no_resume && leading.took_over.is_none(),
        epoch,
        ttl: args.journal_ttl,
        took_over: leading.took_over.clone(),
        gone_workers: match &leading.lost {
            Some(_) => Some(&went_with_lost as &dyn Fn(&str) -> bool),
            None => None,
        },
    };
    let mut keeping = Keeping::ci(&args.file.file, &plan, &args.master, &config, &place).await?;
    keeping.say();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let cache = result_cache(
        &args.file.file,
        &plan,
        &args.master,
        &config,
        &keeping,
        workdir(&args),
    )?;
    let master = Master::start(listener, plan, config, keeping, cache)
        .await?
        .reporting(EndReports {
            files: Outputs::of(&args.master.reports),
            // On GitHub, the run's summary goes to the job's page.
            step_summary: true,
        });
    renewing.abandon_on_loss(master.canceller());
    let tunnel = open_tunnel(&kind, port, args.tunnel_timeout).await?;
    let urls = hub_urls(
        args.listen,
        args.advertise.as_deref(),
        port,
        tunnel.as_ref(),
    );
    let token = args.token_in_record.then(|| master.token().to_owned());
    let mut record = running_record(&run.run_id, urls, token, epoch);
    publish(&store, &record, args.record_ttl, args.discover_timeout).await?;
    crate::report::say(&format!(
        "published the hub for {} more instance(s) under {} in Redis at {}: {}",
        instance.total - 1,
        record_key(&run.run_id),
        store.shown_url(),
        shown_urls(&record.urls)
    ));
    let public = tunnel
        .as_ref()
        .map(|t| t.url().to_owned())
        .or_else(|| record.urls.first().cloned());
    if let Some(link) = public.and_then(|url| master.dashboard_link(&url)) {
        crate::report::say(&format!("dashboard (watch only): {link}"));
        announce_dashboard(&link);
    }
    let (latest, watched) = tokio::sync::watch::channel(record.clone());
    let stop_refresh = CancellationToken::new();
    let refresh = tokio::spawn(store.clone().keep_fresh(
        watched,
        args.record_ttl,
        stop_refresh.clone(),
    ));
    let local = LocalWorkers::new(
        leading.local_workers,
        format!("instance-{}", instance.index),
        args.worker.capabilities.clone(),
        workdir(&args),
        &args.master,
    );
    let ran = master.run(&local).await;
    stop_refresh.cancel();
    let _ = refresh.await;
    let superseded = match renewing.stop().await {
        Some(line) => Some(line),
        // A journal append refused for a newer epoch can come first.
        None if ran.is_err() => newer_master(&store, &run.run_id, epoch).await,
        None => None,
    };
    if let Some(line) = superseded {
        return Err(Failure::infrastructure(format!(
            "{line}; this master stopped and the run goes on there"
        )));
    }
    let ran = ran?;
    if leading.took_over.is_some() {
        for line in crate::failover::failovers_in_journal(&args.redis_url, &run.run_id).await {
            crate::report::say(&line);
        }
    }
    record.state = RunState::Finished;
    record.outcome = Some(ran.outcome);
    latest.send_replace(record.clone());
    if let Err(e) = store.write(&record, args.record_ttl).await {
        eprintln!("muster: warning: could not mark the run finished in Redis: {e}");
    }
    drop(tunnel);
    ran.verdict()
}

/// The superseded line, when the lease is another's at a higher epoch.
async fn newer_master(store: &DiscoveryStore, run_id: &str, epoch: u64) -> Option<String> {
    match store.lease(run_id, REDIS_CALL).await {
        Ok(muster_discovery::lease::Seen::Held(holder)) if holder.epoch > epoch => {
            Some(superseded(Some(&holder), holder.epoch))
        }
        _ => None,
    }
}

/// The hub's settings for the master, which refuses to open a hub without
/// a token shared by every instance unless told to publish its own;
/// `token` is the one the run's workers know, when a master takes a run
/// over whose earlier master published its own.
fn master_settings(args: &CiArgs, token: Option<String>) -> Result<HubConfig, Failure> {
    let mut config = hub_settings(&args.master)?;
    match (token.or_else(|| args.token.clone()), args.token_in_record) {
        (Some(token), _) => config.token = token,
        // HubConfig made a random one up; it reaches workers via the record.
        (None, true) => {}
        (None, false) => {
            return Err(Failure::Usage(
                "muster ci needs a token: set MUSTER_TOKEN to a secret shared by every instance \
                 (from your CI's secrets)\n  = help: or pass --token-in-record to let the master make one up and \
                 store it in the discovery record, where anyone who can read Redis can take it"
                    .into(),
            ));
        }
    }
    Ok(config)
}

/// `given_up` fires when the hub closes the connection with a reason.
async fn worker(
    args: Arc<CiArgs>,
    run: RunIdentity,
    instance: Instance,
    store: DiscoveryStore,
    given_up: Option<CancellationToken>,
) -> Result<(), Failure> {
    crate::report::say(&format!(
        "waiting up to {} for the master's record under {} in Redis at {}",
        humantime::format_duration(args.discover_timeout),
        record_key(&run.run_id),
        store.shown_url()
    ));
    let found = find_hub(
        &store,
        &run.run_id,
        args.token.as_deref(),
        args.discover_timeout,
    );
    let (hub, token) = match found.await? {
        Found::Hub { url, token } => (url, token),
        Found::Finished(outcome) => {
            crate::report::say(&format!(
                "run {} has already finished ({}); nothing left to do",
                run.run_id,
                outcome_word(outcome)
            ));
            return Ok(());
        }
    };
    crate::report::say(&format!("joining the hub at {}", redact_url(&hub)));
    let seat = Seat {
        hub,
        token,
        name: format!("instance-{}", instance.index),
        workdir: workdir(&args),
        // The run may move to another master: the record says where.
        locator: Some(Arc::new(RecordLocator::new(store.clone(), &run.run_id))),
    };
    let transfer_stall_timeout = args.master.limits.transfer_stall_timeout;
    let mut config = worker_config(seat, &args.worker, transfer_stall_timeout);
    if let Some(given_up) = given_up {
        config.observer = Arc::new(ClosedByHub {
            view: config.observer,
            given_up,
        });
    }
    match muster_worker::run(config, stop_on_interrupt()).await {
        Ok(Exit::Shutdown { outcome, .. }) => {
            let outcome = outcome.unwrap_or(RunOutcome::Succeeded);
            crate::report::say(&format!("the run has finished: {}", outcome_word(outcome)));
            outcome_result(outcome)
        }
        Ok(Exit::Stopped) => Err(Failure::Cancelled),
        Err(e @ WorkerError::Client(ClientError::Unauthorized { .. })) => {
            Err(Failure::Usage(e.to_string()))
        }
        Err(e) => {
            // The hub may be gone because the run is over.
            if let Some(outcome) = finished_soon(&store, &run.run_id).await {
                crate::report::say(&format!(
                    "the run finished while this worker was away: {}",
                    outcome_word(outcome)
                ));
                return outcome_result(outcome);
            }
            Err(Failure::infrastructure(e))
        }
    }
}

/// The worker's view, firing `given_up` when its hub closes the
/// connection with a reason.
#[derive(Debug)]
struct ClosedByHub {
    view: Arc<dyn WorkerObserver>,
    given_up: CancellationToken,
}

impl WorkerObserver for ClosedByHub {
    fn event(&self, event: WorkerEvent) {
        if let WorkerEvent::HubClosed { .. } = event {
            self.given_up.cancel();
        }
        self.view.event(event);
    }

    fn transfer_started(&self, transfer: TransferStarted<'_>) -> Arc<dyn TransferProgress> {
        self.view.transfer_started(transfer)
    }
}

/// Module cwds are relative to `--workdir`, else to the pipeline file's
/// folder.
fn workdir(args: &CiArgs) -> PathBuf {
    args.workdir
        .clone()
        .unwrap_or_else(|| pipeline_dir(&args.file.file))
}

/// The commit checked out where the pipeline file lives, if git knows.
fn git_head(file: &Path) -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(pipeline_dir(file))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
