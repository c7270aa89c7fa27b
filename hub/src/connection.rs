//! One worker connection: the SignalR handshake, then records in, typed
//! calls to the scheduler, Completions and hub calls out. The socket is
//! split into a reader (this task) and a writer task fed by a bounded
//! outbox, so the scheduler never waits on a slow peer, and a peer that
//! does not read is closed rather than queued for without limit. Written
//! over any `Sink + Stream` of WebSocket messages (`websocket.rs` makes
//! them from the upgraded socket), so a unit test drives it with channels.

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use muster_core::wire::calls::{CallError, WorkerCall};
use muster_core::wire::signalr::{
    frame, FrameDecoder, HandshakeRequest, HandshakeResponse, Message,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::outbox::{overflow_reason, Outbound, Outbox};
use crate::scheduler::{Command, Registered};
use crate::websocket::{WsError, WsMessage};

/// Limits every connection shares.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSettings {
    pub handshake_timeout: Duration,
    pub client_timeout: Duration,
    pub ping_interval: Duration,
    pub max_message: usize,
}

/// Serves one connection until it closes, times out or breaks the protocol.
pub(crate) async fn serve<K, S>(
    sink: K,
    stream: S,
    peer: String,
    commands: mpsc::Sender<Command>,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
) where
    K: Sink<WsMessage, Error = WsError> + Send + Unpin + 'static,
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let (outbox, outgoing) = Outbox::new();
    let overflow = outbox.overflow.clone();
    let writer = tokio::spawn(write_loop(
        sink,
        outgoing,
        overflow.clone(),
        settings.ping_interval,
    ));
    let mut reader = Reader {
        commands: &commands,
        outbox: &outbox,
        settings: &settings,
        decoder: FrameDecoder::new(settings.max_message),
        worker: None,
        handshake_done: false,
        refusals: 0,
        last_heard: Instant::now(),
    };
    let end = tokio::select! {
        end = reader.read(stream) => end,
        () = shutdown.cancelled() => End::Close(Some("the hub is shutting down".into())),
        // The writer sends the Close itself: the queue has no room for it.
        () = overflow.cancelled() => End::Close(Some(overflow_reason())),
    };
    let registered = reader.worker;
    // A socket that just dropped may be a network blip: the worker may
    // reconnect until it could have been heard again. A goodbye, silence
    // or the hub's own close ends it at once.
    let may_return_by = reader.last_heard + settings.client_timeout;
    let (reason, return_by) = match end {
        End::PeerClosed(reason) => {
            tracing::debug!(%peer, "connection closed: {reason}");
            (reason, None)
        }
        End::Dropped(reason) => {
            tracing::info!(%peer, "connection dropped: {reason}");
            (reason, Some(may_return_by))
        }
        End::Close(error) => {
            let reason = error.clone().unwrap_or_else(|| "closed by the hub".into());
            tracing::warn!(%peer, "closing connection: {reason}");
            if !overflow.is_cancelled() {
                outbox.send(Outbound::Close(error));
            }
            (reason, None)
        }
    };
    drop(outbox);
    if let Some(Registered { worker, session }) = registered {
        let command = Command::Disconnected {
            worker,
            session,
            reason,
            return_by,
        };
        let _ = commands.send(command).await;
    }
    // The writer ends once the Close is sent or every outbox is dropped
    // (the scheduler drops its copy when it handles Disconnected); one
    // stuck on a stalled peer is stopped.
    let stop_writer = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        stop_writer.abort();
    }
}

/// Why the read side ended.
enum End {
    /// The peer said goodbye or went silent.
    PeerClosed(String),
    /// The socket ended without a goodbye.
    Dropped(String),
    /// The hub closes, with an error for the peer when there is one.
    Close(Option<String>),
}

struct Reader<'a> {
    commands: &'a mpsc::Sender<Command>,
    outbox: &'a Outbox,
    settings: &'a ConnectionSettings,
    decoder: FrameDecoder,
    worker: Option<Registered>,
    handshake_done: bool,
    /// Invocations refused so far, to keep their logging bounded.
    refusals: u32,
    /// When the peer last sent anything.
    last_heard: Instant,
}

impl Reader<'_> {
    async fn read<R>(&mut self, mut stream: R) -> End
    where
        R: Stream<Item = Result<WsMessage, WsError>> + Unpin,
    {
        let mut deadline = Instant::now() + self.settings.handshake_timeout;
        loop {
            let next = match timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) if !self.handshake_done => {
                    return End::Close(Some(format!(
                        "no handshake within {:?}",
                        self.settings.handshake_timeout
                    )))
                }
                Err(_) => {
                    return End::PeerClosed(format!(
                        "silent for {:?} (no message or ping)",
                        self.settings.client_timeout
                    ))
                }
            };
            let text =
                match next {
                    None => return End::Dropped("the socket closed without a goodbye".into()),
                    Some(Err(e)) => return End::Dropped(format!("socket error: {e}")),
                    Some(Ok(WsMessage::Text(text))) => text,
                    Some(Ok(WsMessage::Binary(bytes))) => match String::from_utf8(bytes) {
                        Ok(text) => text,
                        Err(_) => return End::Close(Some(
                            "binary frames are not supported: this hub speaks the JSON protocol"
                                .into(),
                        )),
                    },
                    Some(Ok(WsMessage::Close)) => {
                        return End::PeerClosed("the peer sent a WebSocket close".into())
                    }
                    Some(Ok(WsMessage::Ping(payload))) => {
                        self.outbox.send(Outbound::Pong(payload));
                        self.last_heard = Instant::now();
                        self.outbox.heard();
                        continue;
                    }
                    Some(Ok(WsMessage::Pong(_))) => {
                        self.last_heard = Instant::now();
                        self.outbox.heard();
                        continue;
                    }
                };
            self.last_heard = Instant::now();
            self.outbox.heard();
            if self.handshake_done {
                deadline = Instant::now() + self.settings.client_timeout;
            }
            let records = match self.decoder.push(&text) {
                Ok(records) => records,
                Err(e) => return End::Close(Some(e.to_string())),
            };
            for record in records {
                if let Some(end) = self.record(&record).await {
                    return end;
                }
                if self.handshake_done {
                    deadline = Instant::now() + self.settings.client_timeout;
                }
            }
        }
    }

    async fn record(&mut self, record: &str) -> Option<End> {
        if !self.handshake_done {
            return self.handshake(record);
        }
        let message = match Message::parse(record) {
            Ok(message) => message,
            Err(e) => return Some(End::Close(Some(format!("{e}; closing")))),
        };
        match message {
            Message::Invocation {
                invocation_id,
                target,
                arguments,
            } => self.invocation(invocation_id, &target, arguments).await,
            Message::StreamInvocation { invocation_id, .. } => {
                self.complete(
                    Some(invocation_id),
                    Err("streaming invocations are not supported".into()),
                );
                None
            }
            Message::Close { error, .. } => Some(End::PeerClosed(match error {
                Some(e) => format!("the peer closed with error: {e}"),
                None => "the peer sent Close".into(),
            })),
            Message::Ping
            | Message::Completion { .. }
            | Message::StreamItem { .. }
            | Message::CancelInvocation { .. } => None,
        }
    }

    fn handshake(&mut self, record: &str) -> Option<End> {
        let error = match serde_json::from_str::<HandshakeRequest>(record) {
            Ok(r) if r.protocol == "json" && r.version == 1 => None,
            Ok(r) => Some(format!(
                "requested protocol '{}' version {} is not supported; use 'json' version 1",
                r.protocol, r.version
            )),
            Err(e) => Some(format!("malformed handshake: {e}")),
        };
        let answer = HandshakeResponse {
            error: error.clone(),
        };
        let json = serde_json::to_string(&answer).expect("handshake answers serialize");
        self.outbox.send(Outbound::Framed(frame(&json)));
        match error {
            None => {
                self.handshake_done = true;
                None
            }
            Some(e) => Some(End::Close(Some(e))),
        }
    }

    async fn invocation(
        &mut self,
        invocation_id: Option<String>,
        target: &str,
        arguments: Vec<Value>,
    ) -> Option<End> {
        let call = match WorkerCall::from_invocation(target, arguments) {
            Ok(call) => call,
            Err(e) => {
                self.refuse(invocation_id, e);
                return None;
            }
        };
        let result = match (call, self.worker) {
            (WorkerCall::Register(_), None) if invocation_id.is_none() => {
                return Some(End::Close(Some(
                    "Register must be sent with invoke (an invocation with an invocationId): \
                     its answer carries the worker's id and resumeKey"
                        .into(),
                )));
            }
            (WorkerCall::Register(registration), None) => {
                if let Err(rule) = registration.check() {
                    tracing::warn!("refused a registration: {rule}");
                    self.complete(invocation_id, Err(format!("Register refused: {rule}")));
                    return None;
                }
                let (reply, registered) = oneshot::channel();
                let command = Command::Register {
                    registration,
                    invocation_id,
                    outbox: self.outbox.clone(),
                    reply,
                };
                self.commands.send(command).await.ok()?;
                self.worker = Some(registered.await.ok()?);
                return None;
            }
            (WorkerCall::Register(_), Some(_)) => {
                Err("this connection is already registered".to_owned())
            }
            (_, None) => Err("call Register first".to_owned()),
            (call, Some(Registered { worker, .. })) => {
                // The scheduler answers on this connection's outbox itself,
                // so the answer goes out before anything that follows from
                // the call (an Assign, a Cancel, the Shutdown).
                let answer = invocation_id.map(|id| (id, self.outbox.clone()));
                let command = Command::Call {
                    worker,
                    call,
                    answer,
                };
                self.commands.send(command).await.ok()?;
                return None;
            }
        };
        if let Err(e) = &result {
            if invocation_id.is_none() {
                tracing::warn!("ignored {target}: {e}");
            }
        }
        self.complete(invocation_id, result);
        None
    }

    fn refuse(&mut self, invocation_id: Option<String>, error: CallError) {
        // A few warnings per connection, the rest at debug level: the peer
        // gets every refusal as an answer, stderr need not.
        self.refusals += 1;
        if self.refusals <= 10 {
            tracing::warn!("refused invocation: {error}");
        } else {
            tracing::debug!("refused invocation: {error}");
        }
        self.complete(invocation_id, Err(error.to_string()));
    }

    /// Answers an invocation that asked for it.
    fn complete(&self, invocation_id: Option<String>, result: Result<Value, String>) {
        if let Some(invocation_id) = invocation_id {
            self.outbox.answer(invocation_id, result);
        }
    }
}

async fn write_loop<K>(
    mut sink: K,
    mut outgoing: mpsc::Receiver<Outbound>,
    overflow: CancellationToken,
    ping_interval: Duration,
) where
    K: Sink<WsMessage, Error = WsError> + Unpin,
{
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    // No pings before the handshake answer: the first record a client gets
    // must be that answer.
    let mut handshake_sent = false;
    // A SignalR Close record to send before the WebSocket close, if any.
    let goodbye = loop {
        let message = tokio::select! {
            next = outgoing.recv() => match next {
                Some(Outbound::Message(message)) => WsMessage::Text(message.to_frame()),
                Some(Outbound::Framed(text)) => {
                    handshake_sent = true;
                    WsMessage::Text(text)
                }
                Some(Outbound::Pong(payload)) => WsMessage::Pong(payload),
                Some(Outbound::Close(error)) => break Some(error),
                None => break None,
            },
            _ = ping.tick(), if handshake_sent => WsMessage::Text(Message::Ping.to_frame()),
            () = overflow.cancelled() => break Some(Some(overflow_reason())),
        };
        if sink.send(message).await.is_err() {
            return;
        }
    };
    if let Some(error) = goodbye {
        let close = Message::Close {
            error,
            allow_reconnect: false,
        };
        if sink.send(WsMessage::Text(close.to_frame())).await.is_err() {
            return;
        }
    }
    let _ = sink.send(WsMessage::Close).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::WorkerId;

    /// Both ends of a socket as channels, so the connection runs without
    /// any network.
    fn duplex(
        incoming: mpsc::UnboundedReceiver<WsMessage>,
        outgoing: mpsc::UnboundedSender<WsMessage>,
    ) -> (
        impl Sink<WsMessage, Error = WsError> + Send + Unpin + 'static,
        impl Stream<Item = Result<WsMessage, WsError>> + Send + Unpin + 'static,
    ) {
        let stream = futures_util::stream::unfold(incoming, |mut incoming| async move {
            incoming.recv().await.map(|message| (Ok(message), incoming))
        });
        let sink = futures_util::sink::unfold(outgoing, |outgoing, message| async move {
            outgoing
                .send(message)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            Ok::<_, WsError>(outgoing)
        });
        (Box::pin(sink), Box::pin(stream))
    }

    struct Peer {
        send: mpsc::UnboundedSender<WsMessage>,
        recv: mpsc::UnboundedReceiver<WsMessage>,
        commands: mpsc::Receiver<Command>,
    }

    impl Peer {
        fn start() -> Peer {
            let (send, incoming) = mpsc::unbounded_channel();
            let (outgoing, recv) = mpsc::unbounded_channel();
            let (commands_tx, commands) = mpsc::channel(8);
            let settings = ConnectionSettings {
                handshake_timeout: Duration::from_secs(5),
                client_timeout: Duration::from_secs(5),
                ping_interval: Duration::from_secs(60),
                max_message: 1024,
            };
            let (sink, stream) = duplex(incoming, outgoing);
            let shutdown = CancellationToken::new();
            tokio::spawn(serve(
                sink,
                stream,
                "test".into(),
                commands_tx,
                settings,
                shutdown,
            ));
            Peer {
                send,
                recv,
                commands,
            }
        }

        fn say(&self, text: &str) {
            self.send.send(WsMessage::Text(text.into())).unwrap();
        }

        async fn hear(&mut self) -> String {
            match self.recv.recv().await {
                Some(WsMessage::Text(text)) => text,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn handshake_register_and_a_bad_record() {
        let mut peer = Peer::start();
        // Handshake and a first invocation arrive in one frame.
        peer.say(concat!(
            "{\"protocol\":\"json\",\"version\":1}\u{1e}",
            "{\"type\":1,\"invocationId\":\"1\",\"target\":\"Register\",\"arguments\":[{\"name\":\"w\",\"slots\":2}]}\u{1e}"
        ));
        assert_eq!(peer.hear().await, "{}\u{1e}");
        let Some(Command::Register {
            registration,
            invocation_id,
            reply,
            ..
        }) = peer.commands.recv().await
        else {
            panic!("the scheduler is asked to register the worker");
        };
        assert_eq!((registration.name.as_str(), registration.slots), ("w", 2));
        assert_eq!(invocation_id.as_deref(), Some("1"));
        reply
            .send(Registered {
                worker: WorkerId(7),
                session: 1,
            })
            .unwrap();
        // Once registered, calls carry the worker's id to the scheduler.
        peer.say("{\"type\":1,\"target\":\"Started\",\"arguments\":[\"m\",1]}\u{1e}");
        match peer.commands.recv().await {
            Some(Command::Call {
                worker,
                call,
                answer: None,
            }) => {
                assert_eq!(worker, WorkerId(7));
                assert_eq!(
                    call,
                    WorkerCall::Started {
                        module_id: "m".into(),
                        attempt: 1
                    }
                );
            }
            _ => panic!("expected a Started call"),
        }
        peer.say("{\"type\":1,\"invocationId\":\"2\",\"target\":\"Register\",\"arguments\":[{\"name\":\"again\"}]}\u{1e}");
        assert!(peer.hear().await.contains("already registered"));
        peer.say("{oops\u{1e}");
        let close = peer.hear().await;
        assert!(
            close.contains("\"type\":7") && close.contains("malformed JSON"),
            "{close}"
        );
        match peer.commands.recv().await {
            // The hub closed it for bad input: no window to reconnect in.
            Some(Command::Disconnected {
                worker, return_by, ..
            }) => assert_eq!((worker, return_by), (WorkerId(7), None)),
            _ => panic!("the scheduler hears that the worker left"),
        }
    }
}
