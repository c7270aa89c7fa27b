//! Joining the hub: connect, send `Register`, wait for the `Welcome`,
//! retrying transient failures with [`Backoff`] until the reconnect
//! deadline. Executions go on meanwhile; their calls are buffered in
//! [`Work`].

use std::time::Duration;

use muster_core::url::redact_url;
use muster_core::wire::calls::WorkerCall;
use muster_core::wire::signalr::Message;
use muster_core::wire::types::{Registration, Welcome};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client;
use crate::observer::WorkerEvent;
use crate::work::Work;
use crate::{WorkerConfig, WorkerError};

/// A registered connection: both halves of the socket and the hub's answer.
pub(crate) type Joined = (client::Sender, client::Receiver, Welcome);

/// Connects and registers, retrying transient failures with capped,
/// jittered exponential backoff until `reconnect_timeout` has passed: an
/// attempt is cut off at that deadline, and so is the wait before the next
/// one, after which one last attempt gets [`LAST_LOOK`] (a hub that came
/// back during the wait is not missed). Executions go on meanwhile: their
/// calls are buffered. `Ok(None)` when `stop` fired.
pub(crate) async fn join(
    config: &mut WorkerConfig,
    stop: &CancellationToken,
    calls: &mut mpsc::Receiver<WorkerCall>,
    work: &mut Work,
    earlier: Option<&Welcome>,
) -> Result<Option<Joined>, WorkerError> {
    let started = Instant::now();
    let deadline = started + config.reconnect_timeout;
    let mut backoff = Backoff::new();
    let mut last: Option<String> = None;
    loop {
        // After a drop or a failed try, the run may have moved to another
        // master: ask where its hub is now.
        if (earlier.is_some() || backoff.tries > 0)
            && crate::follow_run(config, calls, work, stop).await.is_none()
        {
            return Ok(None);
        }
        let registration = work.registration(config, earlier);
        let bound = deadline.max(Instant::now() + LAST_LOOK);
        let result = {
            let attempt = timeout_at(bound, connect_and_register(config, registration));
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    Some(call) = calls.recv() => work.buffer(call),
                    () = stop.cancelled() => return Ok(None),
                }
            }
        };
        let error = match result {
            Ok(Ok(joined)) => return Ok(Some(joined)),
            Ok(Err(WorkerError::Client(e))) if !e.is_transient() => {
                // A master that gave the run up refuses newcomers; the run
                // may have moved on to a new one.
                match crate::follow_run(config, calls, work, stop).await {
                    None => return Ok(None),
                    Some(false) => return Err(e.into()),
                    Some(true) => e.to_string(),
                }
            }
            Ok(Err(e)) => e.to_string(),
            // Cut off at the deadline: the error before it says more.
            Err(_) => last.take().unwrap_or_else(|| {
                format!(
                    "no answer from {} within {}",
                    redact_url(&config.hub),
                    humantime::format_duration(config.reconnect_timeout)
                )
            }),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(WorkerError::HubGone {
                waited: started.elapsed(),
                last: error,
            });
        }
        let wait = backoff.next();
        if backoff.tries == 1 {
            config.observer.event(WorkerEvent::HubUnreachable {
                worker: config.name.clone(),
                error: error.clone(),
                retrying_for: config.reconnect_timeout,
            });
        } else {
            tracing::info!("still cannot reach the hub: {error}");
        }
        last = Some(error);
        let sleep = tokio::time::sleep_until((now + wait).min(deadline));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                Some(call) = calls.recv() => work.buffer(call),
                () = stop.cancelled() => return Ok(None),
            }
        }
    }
}

/// How long the attempt made once the deadline has come may take: long
/// enough to register with a hub that answers, short enough that giving up
/// stays close to the deadline.
const LAST_LOOK: Duration = Duration::from_millis(500);

async fn connect_and_register(
    config: &WorkerConfig,
    registration: Registration,
) -> Result<Joined, WorkerError> {
    let (mut sender, mut receiver) =
        client::connect(&config.hub, &config.token, config.connect_timeout).await?;
    sender
        .send(&WorkerCall::Register(registration).to_message(Some("0".into())))
        .await?;
    let welcome = await_welcome(&mut receiver, config.connect_timeout).await?;
    Ok((sender, receiver, welcome))
}

async fn await_welcome(
    receiver: &mut client::Receiver,
    timeout: Duration,
) -> Result<Welcome, WorkerError> {
    let wait = async {
        loop {
            match receiver.recv().await? {
                None => return Err(WorkerError::HubClosed(None)),
                Some(Message::Close { error, .. }) => return Err(WorkerError::HubClosed(error)),
                Some(Message::Completion { result, error, .. }) => {
                    if let Some(error) = error {
                        return Err(WorkerError::Register(error));
                    }
                    let welcome = result.unwrap_or_default();
                    return serde_json::from_value(welcome)
                        .map_err(|e| WorkerError::Register(e.to_string()));
                }
                Some(_) => continue,
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| WorkerError::Register(format!("no answer within {timeout:?}")))?
}
