//! What `run`, `hub` and `ci` share as the master: the hub's settings and
//! state folder, starting the hub, local workers beside it, printing the
//! run as it goes, Ctrl-C, and waiting for the run's end.
//!
//! The first Ctrl-C (or SIGTERM) cancels the run and waits for workers to
//! confirm. The second leaves at once, by returning [`Failure::Abandoned`]
//! rather than exiting the process: everything the run started is dropped
//! on the way out, so module process groups are killed and temporary
//! folders removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster_core::journal::Settings;
use muster_core::wire::types::RunOutcome;
use muster_core::Plan;
use muster_hub::{Canceller, Extras, Hub, HubConfig, Journaling, ResultCache};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cache_policy::write_policy;
use crate::failure::{outcome_result, Failure};
use crate::flags::{state_root, MasterFlags, WorkerFlags};
use crate::interrupt::wait_for_interrupt;
use crate::journal_source::Source;
use crate::journaling::{
    open_local, open_redis, prune_runs, CiJournalPlace, JournalInputs, LocalJournal,
};
use crate::pipeline::pipeline_dir;
use crate::report::{self, plan_masker, Reporter};
use crate::result_cache::CacheSetup;
use crate::run_lock::RunLock;
use crate::run_report::{append_step_summary, gather, step_summary_path, Outputs};
use crate::state_folder::StateFolder;
use crate::workers::{worker_config, Seat, LOCAL_RECONNECT_TIMEOUT};

/// How long workers have to leave after the hub told them the run is over,
/// before the hub's server stops.
const HUB_LINGER: Duration = Duration::from_secs(5);

/// How long each local worker has to end after the run did.
const LOCAL_WORKER_LINGER: Duration = Duration::from_secs(5);

/// The hub's settings from the master's flags. The hub's token is a
/// random one until the caller sets its own; the artifact store's folder
/// is set by [`Keeping`].
pub fn hub_settings(flags: &MasterFlags) -> Result<HubConfig, Failure> {
    flags.limits.check()?;
    let mut config = flags.limits.hub_config(flags.fail_fast, PathBuf::new());
    // A viewer token is made up when none is given: the printed dashboard
    // link carries it, so the run token need not be shared to watch.
    let made_up = HubConfig::default().token;
    config.view_token = Some(flags.dashboard.view_token.clone().unwrap_or(made_up));
    config.max_viewers = flags.dashboard.max_viewers as usize;
    config.approvers = muster_hub::Approvers(flags.approvers.iter().cloned().collect());
    config.compensate = !flags.no_compensate;
    Ok(config)
}

/// The ids of `plan`'s gated modules, for [`decide_hint`] (taken before
/// the plan goes to the hub).
pub fn gated_modules(plan: &Plan) -> Vec<String> {
    plan.modules
        .iter()
        .filter(|m| m.approval.is_some())
        .map(|m| m.id.clone())
        .collect()
}

/// How to decide the run's gates, once its hub's address is known.
pub fn decide_hint(gated: &[String], hub: &str) -> Option<String> {
    let first = gated.first()?;
    Some(format!(
        "{} approval gate(s) ({}): decide with `muster approve {first} --hub {hub}` (or `muster reject`), your approver token in MUSTER_APPROVER_TOKEN",
        gated.len(),
        gated.join(", "),
    ))
}

/// A line for each gate whose named approvers the master knows none of:
/// only its timeout can end it.
fn gates_nobody_can_decide(plan: &Plan, approvers: &muster_hub::Approvers) -> Vec<String> {
    plan.modules
        .iter()
        .filter_map(|m| Some((m, m.approval.as_ref()?)))
        .filter(|(_, gate)| {
            !gate.approvers.is_empty() && !gate.approvers.iter().any(|a| approvers.0.contains_key(a))
        })
        .map(|(m, gate)| {
            format!(
                "gate '{}' names approvers {}, but the master knows none of their tokens: give --approver NAME=SHA256 (or MUSTER_APPROVERS), or only its timeout ({}, then {}) will end it",
                m.id,
                gate.approvers.join(", "),
                humantime::format_duration(gate.timeout),
                gate.on_timeout.word()
            )
        })
        .collect()
}

/// Where the run's state goes, and how it is journaled.
pub enum Keeping {
    /// `--no-journal`: a temporary folder, removed with the run.
    Nothing(StateFolder),
    /// A run folder under the state folder, and the journal.
    Journal {
        artifacts: PathBuf,
        journaling: Box<Journaling>,
        /// Where the journal is read back (for the reports at the end).
        source: Source,
        /// A local run's lock on its folder, held until the run ends.
        lock: Option<RunLock>,
        /// `--no-journal` with reports asked for: the run is journaled in
        /// a temporary folder, removed when the run ends.
        temporary: Option<StateFolder>,
        /// What to tell the user (printed by [`Keeping::say`]).
        said: Vec<String>,
    },
}

impl Keeping {
    /// For `run` and `hub`: a new local run's folder and journal, the run
    /// `resume` names continued, or nothing with `--no-journal`. `config`
    /// must hold the final token (it is masked in the journal).
    pub fn local(
        file: &Path,
        plan: &Plan,
        flags: &MasterFlags,
        resume: Option<&str>,
        config: &HubConfig,
    ) -> Result<Keeping, Failure> {
        if flags.no_journal {
            if resume.is_some() {
                return Err(Failure::Usage(
                    "--resume needs the run's journal: leave out --no-journal".into(),
                ));
            }
            return Keeping::nothing(file, plan, flags, config, flags.reports.any());
        }
        let root = state_root(flags.state_dir.as_deref(), file);
        let inputs = journal_inputs(file, plan, flags, config);
        let opened = open_local(&root, &inputs, resume, flags.keep_runs as usize)?;
        Ok(Keeping::in_folder(opened, None))
    }

    /// `--no-journal`: a temporary folder, removed with the run. When the
    /// run is to leave `reports`, it is journaled there, so the reports are
    /// made from its journal as `muster report` makes them.
    fn nothing(
        file: &Path,
        plan: &Plan,
        flags: &MasterFlags,
        config: &HubConfig,
        reports: bool,
    ) -> Result<Keeping, Failure> {
        let state = StateFolder::temporary()?;
        if !reports {
            return Ok(Keeping::Nothing(state));
        }
        let inputs = journal_inputs(file, plan, flags, config);
        let mut opened = open_local(state.path(), &inputs, None, 1)?;
        // Nothing is worth saying about a folder removed with the run.
        opened.said.clear();
        Ok(Keeping::in_folder(opened, Some(state)))
    }

    /// A run journaled in a local run folder, held under its lock;
    /// `temporary` is removed with the run.
    fn in_folder(opened: LocalJournal, temporary: Option<StateFolder>) -> Keeping {
        Keeping::Journal {
            artifacts: opened.folder.artifacts(),
            journaling: Box::new(opened.journaling),
            source: Source::Local {
                folder: opened.folder,
            },
            lock: Some(opened.lock),
            temporary,
            said: opened.said,
        }
    }

    /// For instance 0 of `muster ci`: the journal in Redis (resuming what
    /// it can), artifacts and logs in a local run folder; nothing with
    /// `--no-journal`.
    pub async fn ci(
        file: &Path,
        plan: &Plan,
        flags: &MasterFlags,
        config: &HubConfig,
        place: &CiJournalPlace<'_>,
    ) -> Result<Keeping, Failure> {
        if flags.no_journal {
            let reports = flags.reports.any() || step_summary_path().is_some();
            return Keeping::nothing(file, plan, flags, config, reports);
        }
        let root = state_root(flags.state_dir.as_deref(), file);
        let inputs = journal_inputs(file, plan, flags, config);
        let opened = open_redis(&root, &inputs, place).await?;
        // A self-hosted runner keeps its folders between jobs.
        prune_runs(&root, flags.keep_runs as usize, opened.folder.id());
        Ok(Keeping::Journal {
            artifacts: opened.folder.artifacts(),
            journaling: Box::new(opened.journaling),
            source: Source::Redis {
                url: place.redis_url.to_owned(),
                run_id: place.run_id.to_owned(),
            },
            lock: None,
            temporary: None,
            said: opened.said,
        })
    }

    /// Prints what opening the journal found (the run, what a resume
    /// kept), once.
    pub fn say(&mut self) {
        for line in self.take_said() {
            crate::report::say(&line);
        }
    }

    /// What opening the journal found, to print later.
    pub fn take_said(&mut self) -> Vec<String> {
        match self {
            Keeping::Journal { said, .. } => std::mem::take(said),
            Keeping::Nothing(_) => Vec::new(),
        }
    }

    /// Where the hub stores artifacts.
    pub fn artifacts(&self) -> PathBuf {
        match self {
            Keeping::Nothing(state) => state.artifacts(),
            Keeping::Journal { artifacts, .. } => artifacts.clone(),
        }
    }
}

/// The result cache for `plan` (none with `--no-cache`, or when no module
/// has inputs), its hits restored under `workdir`; `config` holds the
/// final token (it is masked).
pub fn result_cache(
    file: &Path,
    plan: &Plan,
    flags: &MasterFlags,
    config: &HubConfig,
    keeping: &Keeping,
    workdir: PathBuf,
) -> Result<Option<Arc<dyn ResultCache>>, Failure> {
    let env = |name: &str| std::env::var(name).ok();
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let policy = write_policy(flags.cache.cache_write, &env, &read);
    let state_root = state_root(flags.state_dir.as_deref(), file);
    let setup = CacheSetup {
        flags: &flags.cache,
        state_root: &state_root,
        workdir,
        artifacts: keeping.artifacts(),
        masker: plan_masker(plan, &hub_tokens(config)),
        policy,
    };
    Ok(crate::result_cache::open(plan, setup)?.map(|c| c as Arc<dyn ResultCache>))
}

/// The tokens of the hub: never journaled, cached or printed in a log.
fn hub_tokens(config: &HubConfig) -> Vec<&str> {
    std::iter::once(config.token.as_str())
        .chain(config.view_token.as_deref())
        .collect()
}

/// What the journal needs from the master's settings.
pub fn journal_inputs<'a>(
    file: &'a Path,
    plan: &'a Plan,
    flags: &MasterFlags,
    config: &HubConfig,
) -> JournalInputs<'a> {
    JournalInputs {
        pipeline: file,
        plan,
        settings: Settings {
            fail_fast: flags.fail_fast,
            max_worker_losses: config.max_worker_losses,
        },
        masker: plan_masker(plan, &hub_tokens(config)),
    }
}

/// A started hub with what it needs until its run ends.
pub struct Master {
    hub: Hub,
    token: String,
    reporter: Reporter,
    /// Where its journal is read back, when it keeps one.
    source: Option<Source>,
    /// What to write from the journal when the run ends.
    reports: EndReports,
    /// The dashboard's viewer token, when the run has a dashboard (it
    /// shows the journal: none with `--no-journal`).
    view_token: Option<String>,
    /// Dropped when the run ends.
    held: Held,
}

/// What a master holds until its run ends: its temporary folder (removed
/// when dropped), and its run folder's lock (released when dropped).
#[allow(dead_code)] // held for their drop
struct Held {
    temporary: Option<StateFolder>,
    lock: Option<RunLock>,
}

/// The reports a master writes when its run ends.
#[derive(Debug, Clone, Default)]
pub struct EndReports {
    /// `--report-json`, `--junit`.
    pub files: Outputs,
    /// Append the Markdown summary to `$GITHUB_STEP_SUMMARY` (`muster ci`).
    pub step_summary: bool,
}

impl EndReports {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && !self.step_summary
    }
}

impl Master {
    /// Starts the hub for `plan` on an already bound `listener`, keeping
    /// its state as `keeping` says.
    pub async fn start(
        listener: TcpListener,
        plan: Plan,
        mut config: HubConfig,
        keeping: Keeping,
        cache: Option<Arc<dyn ResultCache>>,
    ) -> Result<Master, Failure> {
        for line in gates_nobody_can_decide(&plan, &config.approvers) {
            eprintln!("muster: warning: {line}");
        }
        let token = config.token.clone();
        let view_token = match &keeping {
            Keeping::Journal { .. } => config.view_token.clone(),
            Keeping::Nothing(_) => None,
        };
        let reporter = Reporter::for_plan(&plan, &token);
        config.artifact_dir = keeping.artifacts();
        let (journaling, source, held) = match keeping {
            Keeping::Nothing(state) => (
                None,
                None,
                Held {
                    temporary: Some(state),
                    lock: None,
                },
            ),
            Keeping::Journal {
                journaling,
                source,
                lock,
                temporary,
                ..
            } => (Some(*journaling), Some(source), Held { temporary, lock }),
        };
        let extras = Extras { journaling, cache };
        let hub = Hub::start_with(listener, plan, config, extras).await?;
        Ok(Master {
            hub,
            token,
            reporter,
            source,
            reports: EndReports::default(),
            view_token,
            held,
        })
    }

    /// The dashboard's address below `hub_url` (this hub's own, or a public
    /// one in CI) with the viewer token, when the run has a dashboard.
    pub fn dashboard_link(&self, hub_url: &str) -> Option<String> {
        let token = self.view_token.as_deref()?;
        Some(crate::dashboard_link::dashboard_link(hub_url, token))
    }

    /// Writes `reports` from the journal when the run ends.
    pub fn reporting(mut self, reports: EndReports) -> Master {
        self.reports = reports;
        self
    }

    /// Cancels or abandons the run from elsewhere.
    pub fn canceller(&self) -> muster_hub::Canceller {
        self.hub.canceller()
    }

    /// The URL workers join.
    pub fn url(&self) -> &str {
        self.hub.url()
    }

    /// The token workers must show.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Runs the hub with `local` workers beside it to the end of the run,
    /// printing it as it goes.
    pub async fn run(self, local: &LocalWorkers) -> Result<Ran, Failure> {
        let Master {
            hub,
            token,
            reporter,
            source,
            reports,
            held,
            ..
        } = self;
        let stop = CancellationToken::new();
        let tasks = local.spawn(hub.url(), &token, &stop);
        let mut ran = supervise(hub, reporter).await;
        if let (Ok(ran), Some(source)) = (&mut ran, &source) {
            ran.reports_lost = !write_reports(source, &reports).await;
        }
        if ran.is_ok() {
            stop.cancel();
            for task in tasks {
                let _ = tokio::time::timeout(LOCAL_WORKER_LINGER, task).await;
            }
        } else {
            // Nobody waits for them: dropping each worker now drops what it
            // holds (its connection, its cache folder).
            for task in &tasks {
                task.abort();
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        drop(held);
        ran
    }
}

/// Workers the master runs as tasks beside its hub, over loopback, one
/// slot each.
pub struct LocalWorkers {
    count: u32,
    /// Names are `NAME-1`, `NAME-2`, ...
    name: String,
    flags: WorkerFlags,
    workdir: std::path::PathBuf,
    transfer_stall_timeout: Duration,
}

impl LocalWorkers {
    /// `count` workers named `NAME-N` with `capabilities` beyond the
    /// detected `os:` and `arch:`, whose module cwds are relative to
    /// `workdir`.
    pub fn new(
        count: u32,
        name: impl Into<String>,
        capabilities: Vec<String>,
        workdir: std::path::PathBuf,
        flags: &MasterFlags,
    ) -> LocalWorkers {
        LocalWorkers {
            count,
            name: name.into(),
            flags: WorkerFlags {
                capabilities,
                slots: 1,
                reconnect_timeout: LOCAL_RECONNECT_TIMEOUT,
            },
            workdir,
            transfer_stall_timeout: flags.limits.transfer_stall_timeout,
        }
    }

    /// `count` workers named `local-N` with the detected capabilities, whose
    /// module cwds are relative to the pipeline file's folder.
    pub fn plain(count: u32, file: &Path, flags: &MasterFlags) -> LocalWorkers {
        LocalWorkers::new(count, "local", Vec::new(), pipeline_dir(file), flags)
    }

    fn spawn(&self, hub: &str, token: &str, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
        (1..=self.count)
            .map(|i| {
                let seat = Seat {
                    hub: hub.to_owned(),
                    token: token.to_owned(),
                    name: format!("{}-{i}", self.name),
                    workdir: self.workdir.clone(),
                    locator: None,
                };
                let config = worker_config(seat, &self.flags, self.transfer_stall_timeout);
                let stop = stop.child_token();
                tokio::spawn(async move {
                    if let Err(e) = muster_worker::run(config, stop).await {
                        eprintln!("muster: local worker {i}: {e}");
                    }
                })
            })
            .collect()
    }
}

/// A finished run as the master saw it.
pub struct Ran {
    pub outcome: RunOutcome,
    /// Whether some of the run's output did not reach stdout.
    pub output_lost: bool,
    /// Whether a report asked for (`--report-json`, `--junit`) could not
    /// be written.
    pub reports_lost: bool,
}

impl Ran {
    /// The run's result; a run that succeeded but whose output could not
    /// be written fails, so CI never trusts a log that was cut short.
    pub fn verdict(&self) -> Result<(), Failure> {
        outcome_result(self.outcome)?;
        if self.output_lost {
            return Err(Failure::OutputLost);
        }
        if self.reports_lost {
            return Err(Failure::infrastructure(
                "every module succeeded, but a report could not be written (see above)",
            ));
        }
        Ok(())
    }
}

/// Prints the run as it goes and returns how it ended; see the module
/// documentation for Ctrl-C.
async fn supervise(mut hub: Hub, reporter: Reporter) -> Result<Ran, Failure> {
    let events = hub.take_events().expect("events are taken once");
    let printer = tokio::spawn(reporter.print(events));
    let canceller = hub.canceller();
    let summary = tokio::select! {
        summary = hub.wait(HUB_LINGER) => summary?,
        () = cancel_then_abandon(canceller) => {
            printer.abort();
            return Err(Failure::Abandoned);
        }
    };
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
    Ok(Ran {
        outcome: summary.outcome(),
        output_lost: output.is_err(),
        reports_lost: false,
    })
}

/// Writes the reports `reports` asks for from the run's journal; says why
/// not on stderr and returns false when one asked for is not written.
/// The step summary is best effort: it only ever warns.
async fn write_reports(source: &Source, reports: &EndReports) -> bool {
    if reports.is_empty() {
        return true;
    }
    let report = match gather(source).await {
        Ok(report) => report,
        Err(failure) => {
            let why = failure.message().unwrap_or_default();
            if reports.files.is_empty() {
                eprintln!("muster: warning: no job summary: the run's journal: {why}");
                return true;
            }
            eprintln!("muster: cannot make the run's reports from its journal: {why}");
            return false;
        }
    };
    if reports.step_summary {
        append_step_summary(&report);
    }
    match reports.files.write(&report) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("muster: error: {why}");
            false
        }
    }
}

/// Cancels the run at the first interrupt; returns at the second.
async fn cancel_then_abandon(canceller: Canceller) {
    wait_for_interrupt().await;
    eprintln!("muster: cancelling the run (press Ctrl-C again to exit at once)");
    canceller.cancel("cancelled by the user").await;
    wait_for_interrupt().await;
}
