//! What a worker tells the person running it, without printing: the
//! library never writes to stdout or stderr itself. It reports
//! [`WorkerEvent`]s and artifact transfer progress to a [`WorkerObserver`]
//! given in [`crate::WorkerConfig`]; the `muster` binary renders them (lines
//! on stderr, progress bars), a test or an embedder can record or ignore
//! them ([`Silent`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Receives what a worker has to say. Both methods default to doing
/// nothing; they are called from the worker's tasks, so they must not
/// block for long.
pub trait WorkerObserver: fmt::Debug + Send + Sync {
    /// Something the person running the worker should read.
    fn event(&self, event: WorkerEvent) {
        let _ = event;
    }

    /// An artifact transfer begins. The returned progress is told of every
    /// chunk moved, and [`TransferProgress::ended`] once the transfer ends,
    /// however it ends (done, failed, retried, cancelled).
    fn transfer_started(&self, transfer: TransferStarted<'_>) -> Arc<dyn TransferProgress> {
        let _ = transfer;
        Arc::new(Silent)
    }
}

/// The progress of one artifact transfer, as shown to the person running
/// the worker.
pub trait TransferProgress: Send + Sync {
    /// `bytes` more moved.
    fn advanced(&self, bytes: u64);
    /// The transfer is over; nothing more is reported.
    fn ended(&self);
}

/// A message for the person running the worker. Its `Display` is the
/// message's text, without a `muster: ` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The first try to reach the hub failed; the worker tries again for up
    /// to `retrying_for` (later failures are only logged).
    HubUnreachable {
        worker: String,
        error: String,
        retrying_for: Duration,
    },
    /// The connection to the hub broke; the worker reconnects.
    HubLost { worker: String, why: String },
    /// The run moved to another master's hub (`to`, redacted); the worker
    /// follows it with what it holds.
    HubMoved { worker: String, to: String },
    /// The hub closed the connection, saying `why` (the master gave the run
    /// up). What follows says the rest: a move, or the worker's error.
    HubClosed { worker: String, why: String },
}

impl fmt::Display for WorkerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerEvent::HubUnreachable {
                worker,
                error,
                retrying_for,
            } => write!(
                f,
                "worker {worker}: {error}; retrying for up to {}",
                humantime::format_duration(*retrying_for)
            ),
            WorkerEvent::HubLost { worker, why } => {
                write!(f, "worker {worker}: lost the hub ({why}); reconnecting")
            }
            WorkerEvent::HubClosed { worker, why } => {
                write!(f, "worker {worker}: the hub closed the connection: {why}")
            }
            WorkerEvent::HubMoved { worker, to } => write!(
                f,
                "worker {worker}: the run moved to a new master at {to}; following it with what it holds"
            ),
        }
    }
}

/// An artifact transfer that begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStarted<'a> {
    /// A file the module `path` names goes to the hub.
    Upload { path: &'a str, size: u64 },
    /// A file produced by module `from` comes from the hub.
    Download {
        path: &'a str,
        from: &'a str,
        size: u64,
    },
}

impl TransferStarted<'_> {
    /// The bytes the transfer will move.
    pub fn size(&self) -> u64 {
        match *self {
            TransferStarted::Upload { size, .. } | TransferStarted::Download { size, .. } => size,
        }
    }
}

/// Says nothing and shows nothing: the default observer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl WorkerObserver for Silent {}

impl TransferProgress for Silent {
    fn advanced(&self, _bytes: u64) {}
    fn ended(&self) {}
}

/// A transfer's progress that is ended when this guard drops, so every way
/// out of a transfer (an error, a cancelled task) ends it.
pub(crate) struct Metered(pub(crate) Arc<dyn TransferProgress>);

impl Drop for Metered {
    fn drop(&mut self) {
        self.0.ended();
    }
}
