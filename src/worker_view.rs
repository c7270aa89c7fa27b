//! How `muster` shows what a worker has to say: the worker library prints
//! nothing itself, it tells a [`WorkerObserver`]. This one writes its
//! events as `muster: …` lines on stderr, and draws a progress bar on
//! stderr for each large artifact transfer while stderr is a terminal.

use std::io::{self, IsTerminal};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use muster_worker::transfer::LARGE_TRANSFER;
use muster_worker::{TransferProgress, TransferStarted, WorkerEvent, WorkerObserver};

/// Renders a worker's events and transfers on stderr.
#[derive(Debug, Default)]
pub struct WorkerView;

impl WorkerView {
    /// The view, as [`muster_worker::WorkerConfig::observer`] takes it.
    pub fn shared() -> Arc<dyn WorkerObserver> {
        Arc::new(WorkerView)
    }
}

impl WorkerObserver for WorkerView {
    fn event(&self, event: WorkerEvent) {
        // The worker's error, or the move that follows, says it.
        if let WorkerEvent::HubClosed { .. } = event {
            return;
        }
        // Its text may quote the hub (a Close reason): escaped like every
        // text from the network before it reaches a terminal.
        eprintln!("muster: {}", muster_core::text::escape(&event.to_string()));
    }

    fn transfer_started(&self, transfer: TransferStarted<'_>) -> Arc<dyn TransferProgress> {
        Arc::new(progress_bar(transfer))
    }
}

/// A progress bar, cleared from the terminal when the transfer ends.
struct Bar(ProgressBar);

impl TransferProgress for Bar {
    fn advanced(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn ended(&self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar on stderr for a large transfer when stderr is a
/// terminal; a hidden one otherwise.
fn progress_bar(transfer: TransferStarted<'_>) -> Bar {
    let size = transfer.size();
    if size <= LARGE_TRANSFER || !io::stderr().is_terminal() {
        return Bar(ProgressBar::hidden());
    }
    let message = match transfer {
        TransferStarted::Upload { path, .. } => format!("↑ {path}"),
        TransferStarted::Download { path, from, .. } => format!("↓ {path} ({from})"),
    };
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    Bar(bar)
}
