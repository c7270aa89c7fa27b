//! Every worker muster runs in its own process: the `muster worker`
//! command, the worker instances of `muster ci`, and the local workers
//! beside a master. Their `WorkerConfig` is built in [`worker_config`] only.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use muster_worker::{HubLocator, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::flags::WorkerFlags;
use crate::interrupt::wait_for_interrupt;

/// How long one connection attempt and its handshake may take for a
/// worker without a `--connect-timeout` flag (a `muster ci` worker
/// instance, a local worker); the same as that flag's default on
/// `muster worker`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a local worker keeps trying to reach the hub beside it, on
/// loopback in the same process: a hub that does not answer for this long
/// has gone.
pub const LOCAL_RECONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a worker joins and as whom.
pub struct Seat {
    /// The hub's URL.
    pub hub: String,
    pub token: String,
    /// Shown in logs and in `MUSTER_WORKER`.
    pub name: String,
    /// Module `cwd`s are relative to this folder.
    pub workdir: PathBuf,
    /// Where the hub is now, when the run may move to another master (a
    /// `muster ci` worker instance follows the discovery record).
    pub locator: Option<Arc<dyn HubLocator>>,
}

/// The settings of a worker taking `seat` with `flags`. Connect timeout
/// [`CONNECT_TIMEOUT`], and it runs its modules (not `--noop`).
pub fn worker_config(
    seat: Seat,
    flags: &WorkerFlags,
    transfer_stall_timeout: Duration,
) -> WorkerConfig {
    WorkerConfig {
        hub: seat.hub,
        token: seat.token,
        name: seat.name,
        capabilities: flags.capabilities.clone(),
        slots: flags.slots,
        workdir: seat.workdir,
        connect_timeout: CONNECT_TIMEOUT,
        reconnect_timeout: flags.reconnect_timeout,
        transfer_stall_timeout,
        noop: false,
        observer: crate::worker_view::WorkerView::shared(),
        locator: seat.locator,
    }
}

/// A stop token for a worker process that fires on Ctrl-C or SIGTERM: the
/// worker kills its modules and leaves, and the hub runs them elsewhere.
pub fn stop_on_interrupt() -> CancellationToken {
    let stop = CancellationToken::new();
    let interrupted = stop.clone();
    tokio::spawn(async move {
        wait_for_interrupt().await;
        eprintln!("muster: worker stopping; the hub will run its modules elsewhere");
        interrupted.cancel();
    });
    stop
}
