//! The master's hub: an axum server speaking the SignalR JSON hub protocol
//! to workers, and the scheduler task that owns the run's state.
//!
//! Invariants: the scheduler task is the only writer of run state; every
//! connection talks to it through commands. Input from the network never
//! panics the hub: each connection ends on its own error and the run goes
//! on.

mod artifacts;
mod body;
mod cache;
mod connection;
mod dashboard;
mod decide;
mod events;
mod front_door;
mod ids;
mod outbox;
mod scheduler;
mod server;
mod token;
mod websocket;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_core::journal::{Resumption, RunStart};
use muster_core::mask::Masker;
use muster_core::{Limits, Plan};
use muster_journal::JournalWriter;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use artifacts::stored_artifact;
pub use cache::{CacheFuture, Looked, Lookup, NeedResult, ResultCache, Store};
pub use dashboard::{offline_page, PAGE as DASHBOARD_PAGE};
pub use decide::Approvers;
pub use events::{ModuleSummary, RunEvent, Summary};
use ids::random_id;
pub use scheduler::CancelAnswer;

use connection::ConnectionSettings;
use scheduler::{Command, JournalSettings, Scheduler, SchedulerSettings};

/// Commands (worker calls, most of them log batches of up to 32 KiB: at
/// most 2 MiB queued) that
/// wait for the scheduler; a full queue makes connections stop reading,
/// which slows their workers down.
const COMMAND_QUEUE: usize = 64;

/// Run events that wait for the owner (the printer); a full queue makes
/// the scheduler wait.
const EVENT_QUEUE: usize = 64;

/// How the hub runs. `Default` gives SignalR's usual timings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The bearer token every worker must present.
    pub token: String,
    /// Cancel everything else as soon as one module fails.
    pub fail_fast: bool,
    /// How often the hub pings each worker.
    pub ping_interval: Duration,
    /// Silence after which a worker counts as lost. A worker whose socket
    /// drops keeps its modules until this long after it was last heard,
    /// so it can reconnect and carry on.
    pub client_timeout: Duration,
    /// How long a new connection has to send its handshake.
    pub handshake_timeout: Duration,
    /// How long a new TCP connection has to send a request carrying the
    /// token (headers included) before it is closed.
    pub auth_timeout: Duration,
    /// Connections that have not shown the token held at once; beyond it
    /// the oldest is closed. Also kept under a quarter of the open-file
    /// limit.
    pub max_unauthenticated: usize,
    /// The largest SignalR record the hub accepts, in bytes.
    pub max_message_bytes: usize,
    /// How long a ready module waits for a worker with the capabilities
    /// it requires before it fails.
    pub capability_timeout: Duration,
    /// After a cancel, how long workers have to confirm before the master
    /// stops waiting for them.
    pub cancel_grace: Duration,
    /// How long past a module's own timeout the hub waits for its result
    /// (room to upload its artifacts) before timing it out itself.
    pub result_grace: Duration,
    /// How long a worker has to say `Started` for a module assigned to it
    /// before the hub takes it back and runs it elsewhere.
    pub start_timeout: Duration,
    /// A module whose worker is lost this many times fails as a poison
    /// module.
    pub max_worker_losses: u32,
    /// The folder of the artifact store, created at `Hub::start`. The CLI
    /// sets one under the run's state directory; the default is a fresh
    /// `muster-artifacts-<random>` under the system's temp folder, left
    /// behind when the hub ends.
    pub artifact_dir: PathBuf,
    /// The largest artifact the hub accepts, in bytes (413 beyond).
    pub max_artifact_bytes: u64,
    /// An artifact upload that sends nothing for this long is aborted
    /// (408) and its partial file removed.
    pub transfer_stall_timeout: Duration,
    /// A token that opens the dashboard to look but not to cancel; the
    /// run token always opens it.
    pub view_token: Option<String>,
    /// At most this many dashboard viewers at once.
    pub max_viewers: usize,
    /// Who may decide approval gates (name → SHA-256 of their token),
    /// besides the run token (which decides gates naming no approvers).
    pub approvers: Approvers,
    /// When the run fails, run the `compensate` commands of the modules
    /// that succeeded, last completed first.
    pub compensate: bool,
    /// This master takes a live run over from another (CI failover): the
    /// attempts its journal says workers were running are held for them
    /// for `client_timeout`, and a worker that comes back with one keeps
    /// it, instead of it running again at once.
    pub adopt_in_flight: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            token: random_id(),
            fail_fast: false,
            ping_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            auth_timeout: Duration::from_secs(10),
            max_unauthenticated: 256,
            max_message_bytes: muster_core::wire::limits::MAX_RECORD_BYTES,
            capability_timeout: Duration::from_secs(600),
            cancel_grace: Duration::from_secs(15),
            result_grace: Duration::from_secs(30 * 60),
            start_timeout: Duration::from_secs(60),
            max_worker_losses: Limits::default().max_worker_losses,
            artifact_dir: std::env::temp_dir().join(format!("muster-artifacts-{}", random_id())),
            max_artifact_bytes: 16 << 30,
            transfer_stall_timeout: Duration::from_secs(60),
            view_token: None,
            max_viewers: 32,
            approvers: Approvers::default(),
            compensate: true,
            adopt_in_flight: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the scheduler stopped before the run finished")]
    SchedulerGone,
    #[error("the hub's server failed: {0}")]
    Server(#[from] io::Error),
    /// The run's journal could not be written; nothing after the last
    /// durable record was acknowledged.
    #[error("the run's journal failed: {0}")]
    Journal(String),
    /// The owner gave the run up ([`Canceller::abandon`]).
    #[error("{0}")]
    Abandoned(String),
}

/// A running hub.
pub struct Hub {
    url: String,
    events: Option<mpsc::Receiver<RunEvent>>,
    done: oneshot::Receiver<Result<Summary, HubError>>,
    commands: mpsc::Sender<Command>,
    connected: watch::Receiver<usize>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    server: JoinHandle<io::Result<()>>,
}

/// Cancels a run from anywhere (a Ctrl-C handler).
#[derive(Clone)]
pub struct Canceller(mpsc::Sender<Command>);

impl Canceller {
    /// Asks the scheduler to cancel the run and says what it found; `None`
    /// when the scheduler has already stopped.
    pub async fn cancel(&self, reason: impl Into<String>) -> Option<CancelAnswer> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Cancel {
            reason: reason.into(),
            reply: Some(reply),
        };
        self.0.send(command).await.ok()?;
        answer.await.ok()
    }

    /// Gives the run up where it stands, because another master took it
    /// over: nothing more is journaled, every worker's connection is closed
    /// with `reason`, and [`Hub::wait`] ends with [`HubError::Abandoned`].
    pub async fn abandon(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let _ = self.0.send(Command::Abandon { reason }).await;
    }
}

/// The master's environment variables that the plan's gates name in
/// `not = ["$VAR"]`: read once, when the hub starts.
fn gate_env(plan: &Plan) -> std::collections::BTreeMap<String, String> {
    plan.modules
        .iter()
        .filter_map(|m| m.approval.as_ref())
        .flat_map(|gate| &gate.not)
        .filter_map(|written| written.strip_prefix('$'))
        .map(|var| var.trim_start_matches('{').trim_end_matches('}'))
        .filter_map(|var| std::env::var(var).ok().map(|value| (var.to_owned(), value)))
        .collect()
}

/// How the hub journals its run: the scheduler hands every change to
/// `writer` and acts on it only once it is durable.
pub struct Journaling {
    pub writer: JournalWriter,
    /// The stint's first record.
    pub start: RunStart,
    /// Secret values are masked before anything is journaled.
    pub masker: Masker,
    /// What an earlier run left that this one keeps.
    pub resume: Option<Resumption>,
}

/// What a hub may have beyond its plan and settings.
#[derive(Default)]
pub struct Extras {
    pub journaling: Option<Journaling>,
    pub cache: Option<Arc<dyn ResultCache>>,
}

impl Hub {
    /// Serves `plan` on an already bound listener (bind port 0 in tests),
    /// without a journal.
    pub async fn start(listener: TcpListener, plan: Plan, config: HubConfig) -> io::Result<Hub> {
        Hub::start_journaled(listener, plan, config, None).await
    }

    /// Serves `plan`, journaling the run when `journaling` is given.
    pub async fn start_journaled(
        listener: TcpListener,
        plan: Plan,
        config: HubConfig,
        journaling: Option<Journaling>,
    ) -> io::Result<Hub> {
        let extras = Extras {
            journaling,
            cache: None,
        };
        Hub::start_with(listener, plan, config, extras).await
    }

    /// Serves `plan` with a journal and a result cache, each when given.
    pub async fn start_with(
        listener: TcpListener,
        plan: Plan,
        config: HubConfig,
        extras: Extras,
    ) -> io::Result<Hub> {
        let Extras { journaling, cache } = extras;
        let addr = listener.local_addr()?;
        let artifacts = artifacts::ArtifactStore::open(
            &config.artifact_dir,
            config.max_artifact_bytes,
            config.transfer_stall_timeout,
        )
        .await?;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let (connected_tx, connected) = watch::channel(0);
        let settings = SchedulerSettings {
            fail_fast: config.fail_fast,
            ping_interval: config.ping_interval,
            capability_timeout: config.capability_timeout,
            cancel_grace: config.cancel_grace,
            result_grace: config.result_grace,
            start_timeout: config.start_timeout,
            limits: Limits {
                max_worker_losses: config.max_worker_losses.max(1),
            },
            journal: None,
            resume: None,
            adopt_within: config.adopt_in_flight.then_some(config.client_timeout),
            cache: cache.is_some(),
            gate_env: gate_env(&plan),
            compensate: config.compensate,
        };
        let feed = journaling.as_ref().map(|j| j.writer.feed());
        let (settings, writer) = match journaling {
            Some(journaling) => (
                SchedulerSettings {
                    journal: Some(JournalSettings {
                        start: journaling.start,
                        masker: journaling.masker,
                    }),
                    resume: journaling.resume,
                    ..settings
                },
                Some(journaling.writer),
            ),
            None => (settings, None),
        };
        let scheduler = Scheduler::new(
            plan,
            settings,
            writer,
            cache,
            events_tx,
            done_tx,
            connected_tx,
        );
        tokio::spawn(scheduler.run(command_rx));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let state = Arc::new(server::AppState {
            token_digest: token::digest(&config.token),
            commands: commands.clone(),
            settings: ConnectionSettings {
                handshake_timeout: config.handshake_timeout,
                client_timeout: config.client_timeout,
                ping_interval: config.ping_interval,
                max_message: config.max_message_bytes,
            },
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            negotiated: Mutex::new(HashMap::new()),
            artifacts: Arc::new(artifacts),
        });
        let viewers = config.max_viewers.max(1);
        let dashboard = Arc::new(dashboard::DashboardState {
            feed,
            access: dashboard::Access::new(
                state.token_digest,
                config.view_token.as_deref(),
                config.approvers.clone(),
            ),
            viewers: Arc::new(tokio::sync::Semaphore::new(viewers)),
            max_viewers: viewers,
            commands: commands.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            max_message: 64 * 1024,
        });
        let decide = Arc::new(decide::DecideState {
            commands: commands.clone(),
            run_token_digest: state.token_digest,
            approvers: config.approvers.clone(),
        });
        let app = server::router(state)
            .merge(decide::routes(decide))
            .merge(dashboard::routes(dashboard));
        let (max_unauthenticated, ceiling) = front_door::unauthenticated_caps(
            config.max_unauthenticated,
            front_door::open_file_limit(),
        );
        let door = front_door::DoorSettings {
            auth_timeout: config.auth_timeout,
            max_unauthenticated,
            ceiling,
        };
        let server = tokio::spawn(front_door::serve(
            listener,
            app,
            door,
            shutdown.clone(),
            tracker.clone(),
        ));
        Ok(Hub {
            url: hub_url(addr),
            events: Some(events),
            done,
            commands,
            connected,
            shutdown,
            tracker,
            server,
        })
    }

    /// The dashboard's address, e.g. `http://127.0.0.1:7400/` (it needs
    /// a token: add `?access_token=`).
    pub fn dashboard_url(&self) -> String {
        let base = self
            .url
            .strip_suffix(muster_core::wire::http::HUB)
            .unwrap_or(&self.url);
        format!("{base}{}", muster_core::wire::http::DASHBOARD)
    }

    /// The URL workers join, e.g. `http://127.0.0.1:7400/hub`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The stream of run events; the first call takes it. It is bounded:
    /// read it, or the run slows to the reader's pace (log text is held,
    /// never dropped). It ends when the run does.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<RunEvent>> {
        self.events.take()
    }

    pub fn canceller(&self) -> Canceller {
        Canceller(self.commands.clone())
    }

    /// Waits for the run to finish, gives workers up to `linger` to leave
    /// after their Shutdown, then stops the server.
    pub async fn wait(mut self, linger: Duration) -> Result<Summary, HubError> {
        // Events nobody took must not hold the scheduler up.
        drop(self.events.take());
        let summary = self.done.await.map_err(|_| HubError::SchedulerGone)?;
        let summary = match summary {
            Ok(summary) => summary,
            Err(error) => {
                self.shutdown.cancel();
                self.tracker.close();
                let _ = tokio::time::timeout(linger, self.tracker.wait()).await;
                self.server.abort();
                return Err(error);
            }
        };
        let mut connected = self.connected;
        let _ = tokio::time::timeout(linger, connected.wait_for(|&n| n == 0)).await;
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(linger, self.tracker.wait()).await;
        // A client that never finishes its request must not keep the
        // master alive: after the linger the server task is aborted.
        let abort = self.server.abort_handle();
        match tokio::time::timeout(linger, self.server).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
        Ok(summary)
    }
}

fn hub_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/hub", addr.port())
}
