//! Working over one registered connection: hub calls in (`Assign`,
//! `Cancel`, `Shutdown`, acknowledgements), execution calls out, pings
//! both ways, until the connection ends; how it ended ([`Served`]) decides
//! whether the worker reconnects.

use std::time::Duration;

use muster_core::wire::calls::{HubCall, WorkerCall};
use muster_core::wire::signalr::Message;
use muster_core::wire::types::{RunOutcome, Welcome};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::client;
use crate::work::Work;

/// How one connection ended.
pub(crate) enum Served {
    Shutdown {
        reason: String,
        outcome: Option<RunOutcome>,
    },
    Stopped,
    /// The hub closed it on purpose, without allowing a reconnect.
    Closed(Option<String>),
    /// The connection broke or went silent: reconnect.
    Dropped(String),
}

/// Works over one connection until it ends.
pub(crate) async fn serve(
    sender: &mut client::Sender,
    receiver: &mut client::Receiver,
    calls: &mut mpsc::Receiver<WorkerCall>,
    work: &mut Work,
    stop: &CancellationToken,
    welcome: &Welcome,
) -> Served {
    let ping_every = Duration::from_millis(welcome.ping_interval_ms.max(100));
    // The hub pings every `ping_every`; twice that in silence means it is
    // gone, even if the TCP connection does not say so.
    let silence = ping_every * 2;
    let mut ping = tokio::time::interval(ping_every);
    let mut deadline = Instant::now() + silence;
    loop {
        tokio::select! {
            message = timeout_at(deadline, receiver.recv()) => {
                let message = match message {
                    Err(_) => return Served::Dropped(format!("the hub was silent for {}", humantime::format_duration(silence))),
                    Ok(Err(e)) => return Served::Dropped(e.to_string()),
                    Ok(Ok(None)) => return Served::Dropped("the hub closed the socket".into()),
                    Ok(Ok(Some(message))) => message,
                };
                deadline = Instant::now() + silence;
                match message {
                    Message::Close { error, allow_reconnect: true } => {
                        return Served::Dropped(error.unwrap_or_else(|| "the hub closed the connection".into()));
                    }
                    Message::Close { error, .. } => return Served::Closed(error),
                    Message::Invocation { target, arguments, .. } => {
                        match HubCall::from_invocation(&target, arguments) {
                            Ok(HubCall::Shutdown { reason, outcome }) => {
                                return Served::Shutdown { reason, outcome };
                            }
                            Ok(call) => work.obey(call),
                            Err(e) => tracing::warn!("ignored a call from the hub: {e}"),
                        }
                    }
                    Message::Completion { invocation_id, error, .. } => {
                        work.acknowledged(&invocation_id, error);
                    }
                    _ => {}
                }
            }
            // A send that cannot finish within the silence bound (a full
            // socket buffer on a dead network) is a dropped connection too.
            Some(call) = calls.recv() => {
                match tokio::time::timeout(silence, work.send(call, sender)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Served::Dropped(e.to_string()),
                    Err(_) => return Served::Dropped(stuck(silence)),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(silence, sender.send(&Message::Ping)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Served::Dropped(e.to_string()),
                    Err(_) => return Served::Dropped(stuck(silence)),
                }
            }
            () = stop.cancelled() => return Served::Stopped,
        }
    }
}

/// Why a send that did not finish within `bound` dropped the connection.
pub(crate) fn stuck(bound: Duration) -> String {
    format!(
        "a send to the hub did not finish within {}",
        humantime::format_duration(bound)
    )
}
