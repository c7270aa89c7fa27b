//! A connection's bounded outgoing queue, shared by the connection (which
//! answers calls on it and drains it into the socket) and the scheduler
//! (which pushes hub calls to a worker through it). Sending never waits:
//! a full queue means the peer is not reading, and it is closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_core::wire::limits::bounded_error_text;
use muster_core::wire::signalr::Message;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

/// What the writer task sends.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A hub-protocol message, framed on the way out.
    Message(Message),
    /// An already framed record (the handshake answer).
    Framed(String),
    /// Send a Close message with this error, then close the socket.
    Close(Option<String>),
    /// The answer to a WebSocket ping.
    Pong(Vec<u8>),
}

/// The most messages waiting to be written to one peer. The hub sends a
/// worker a handful of calls per module it holds; a peer this far behind is
/// not reading, and is closed.
pub(crate) const OUTBOX_CAPACITY: usize = 4096;

/// A connection's outgoing queue. Sending never waits: when the queue is
/// full the peer is not reading, and the connection is closed with a reason
/// instead of buffering without bound.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    queue: mpsc::Sender<Outbound>,
    /// Cancelled when the queue was found full.
    pub(crate) overflow: CancellationToken,
    /// When the peer was last heard (any frame, pings included): the
    /// connection sets it, the dashboard's worker table shows it.
    heard: Arc<Heard>,
}

#[derive(Debug)]
struct Heard {
    since: Instant,
    /// Milliseconds after `since`.
    at_ms: AtomicU64,
}

impl Outbox {
    pub(crate) fn new() -> (Outbox, mpsc::Receiver<Outbound>) {
        let (queue, outgoing) = mpsc::channel(OUTBOX_CAPACITY);
        let outbox = Outbox {
            queue,
            overflow: CancellationToken::new(),
            heard: Arc::new(Heard {
                since: Instant::now(),
                at_ms: AtomicU64::new(0),
            }),
        };
        (outbox, outgoing)
    }

    /// Queues `message`. Dropped when the connection is ending: closed (its
    /// Disconnected command is on the way), or just found too far behind
    /// (it is being closed for that).
    pub(crate) fn send(&self, message: Outbound) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(message) {
            self.overflow.cancel();
        }
    }

    /// The peer was heard just now.
    pub(crate) fn heard(&self) {
        let ms = self.heard.since.elapsed().as_millis() as u64;
        self.heard.at_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the peer was last heard.
    pub(crate) fn heard_ago(&self) -> Duration {
        let at = Duration::from_millis(self.heard.at_ms.load(Ordering::Relaxed));
        self.heard.since.elapsed().saturating_sub(at)
    }

    /// A Completion answering `invocation_id`. An error text may quote
    /// what the peer sent, so it is cut to a bound: with the parser's
    /// bound on invocation ids, every answer stays small, and a full queue
    /// is a few MiB, not thousands of the peer's largest records.
    pub(crate) fn answer(&self, invocation_id: String, result: Result<Value, String>) {
        let (result, error) = match result {
            Ok(value) => (Some(value), None),
            Err(error) => (None, Some(bounded_error_text(error))),
        };
        self.send(Outbound::Message(Message::Completion {
            invocation_id,
            result,
            error,
        }));
    }
}

pub(crate) fn overflow_reason() -> String {
    format!("the peer is not reading: {OUTBOX_CAPACITY} messages are waiting for it")
}
