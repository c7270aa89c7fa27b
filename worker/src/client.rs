//! The worker's SignalR client: connect over tokio-tungstenite with the
//! token, do the JSON handshake, then send and receive typed messages. The
//! socket is split so the worker loop can wait on the hub and on its own
//! executions at once.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use muster_core::url::redact_url;
use muster_core::wire::http::{self, BadHubUrl};
use muster_core::wire::signalr::{FrameDecoder, HandshakeRequest, HandshakeResponse, Message};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The largest record the worker accepts from the hub, which it trusts (it
/// holds the token): an Assign repeats every need's outputs (each up to
/// 64 KiB) in `env` and `needs`, so a module with many needs can be large.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Every URL an error holds is redacted ([`redact_url`]): it may be
/// printed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("hub URL {0:?} must start with http://, https://, ws:// or wss://")]
    BadUrl(String),
    #[error("could not connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the hub at {url} refused the token (HTTP 401): check --token or MUSTER_TOKEN")]
    Unauthorized { url: String },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("the hub refused the handshake: {0}")]
    Handshake(String),
    #[error("connection to the hub failed: {0}")]
    Socket(String),
    #[error("the hub sent something this worker does not understand: {0}")]
    Protocol(String),
}

/// The sending half.
pub struct Sender {
    sink: SplitSink<Socket, WsMessage>,
}

/// The receiving half: yields whole messages, `None` on a clean close.
pub struct Receiver {
    stream: SplitStream<Socket>,
    decoder: FrameDecoder,
    ready: VecDeque<String>,
}

/// The hub's ws(s) URL (core's mapping), refused as [`ClientError::BadUrl`].
pub fn websocket_url(hub: &str) -> Result<String, ClientError> {
    http::websocket_url(hub).map_err(|BadHubUrl(shown)| ClientError::BadUrl(shown))
}

/// Connects, authenticates with a bearer header and does the handshake.
pub async fn connect(
    hub: &str,
    token: &str,
    timeout: Duration,
) -> Result<(Sender, Receiver), ClientError> {
    let url = websocket_url(hub)?;
    // Every error names the hub as it may be printed: a token in its query
    // or a password in it never shows.
    let shown = redact_url(hub);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|_| ClientError::BadUrl(shown.clone()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ClientError::Handshake("the token holds characters a header cannot".into()))?;
    request.headers_mut().insert("Authorization", bearer);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (socket, _) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(ClientError::Timeout {
                url: shown,
                timeout,
            })
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response)))
            if response.status() == 401 =>
        {
            return Err(ClientError::Unauthorized { url: shown })
        }
        Ok(Err(e)) => {
            return Err(ClientError::Connect {
                url: shown,
                reason: e.to_string(),
            })
        }
        Ok(Ok(connected)) => connected,
    };
    let (sink, stream) = socket.split();
    let mut sender = Sender { sink };
    let mut receiver = Receiver {
        stream,
        decoder: FrameDecoder::new(MAX_MESSAGE),
        ready: VecDeque::new(),
    };
    let handshake = serde_json::to_string(&HandshakeRequest::json()).expect("serializes");
    sender
        .send_frame(muster_core::wire::signalr::frame(&handshake))
        .await?;
    let answer = match tokio::time::timeout(timeout, receiver.record()).await {
        Err(_) => {
            return Err(ClientError::Timeout {
                url: shown,
                timeout,
            })
        }
        Ok(answer) => answer?
            .ok_or_else(|| ClientError::Socket("the hub closed during the handshake".into()))?,
    };
    let answer: HandshakeResponse =
        serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let Some(error) = answer.error {
        return Err(ClientError::Handshake(error));
    }
    Ok((sender, receiver))
}

impl ClientError {
    /// Whether trying again later may succeed: a bad URL or token, or a hub
    /// that refuses the handshake, will not change by waiting.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            ClientError::BadUrl(_) | ClientError::Unauthorized { .. } | ClientError::Handshake(_)
        )
    }
}

impl Sender {
    pub async fn send(&mut self, message: &Message) -> Result<(), ClientError> {
        self.send_frame(message.to_frame()).await
    }

    /// Sends a record already framed (see [`Message::to_frame`]).
    pub async fn send_frame(&mut self, text: String) -> Result<(), ClientError> {
        self.sink
            .send(WsMessage::Text(text.into()))
            .await
            .map_err(|e| ClientError::Socket(e.to_string()))
    }

    /// Sends a WebSocket close; errors are moot at that point.
    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
    }
}

impl Receiver {
    /// The next message, or `None` once the hub closed the socket.
    /// Cancel-safe: records already read stay queued.
    pub async fn recv(&mut self) -> Result<Option<Message>, ClientError> {
        match self.record().await? {
            None => Ok(None),
            Some(record) => Message::parse(&record)
                .map(Some)
                .map_err(|e| ClientError::Protocol(e.to_string())),
        }
    }

    async fn record(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(record) = self.ready.pop_front() {
                return Ok(Some(record));
            }
            let text = match self.stream.next().await {
                None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Socket(e.to_string())),
                Some(Ok(WsMessage::Text(text))) => text.to_string(),
                Some(Ok(WsMessage::Binary(_))) => {
                    return Err(ClientError::Protocol("unexpected binary frame".into()))
                }
                Some(Ok(_)) => continue,
            };
            let records = self
                .decoder
                .push(&text)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            self.ready.extend(records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_become_websocket_urls() {
        let cases = [
            ("http://10.0.0.5:7400/hub", "ws://10.0.0.5:7400/hub"),
            (
                "https://abc.trycloudflare.com/hub",
                "wss://abc.trycloudflare.com/hub",
            ),
            ("ws://h/hub", "ws://h/hub"),
            ("wss://h/hub", "wss://h/hub"),
            // A trailing slash is the same hub.
            ("http://10.0.0.5:7400/hub/", "ws://10.0.0.5:7400/hub"),
            ("https://h/hub//", "wss://h/hub"),
            ("ws://h/hub/", "ws://h/hub"),
            // A query (a token the hub also reads there) is kept.
            (
                "http://h:1/hub/?access_token=t",
                "ws://h:1/hub?access_token=t",
            ),
        ];
        for (hub, ws) in cases {
            assert_eq!(websocket_url(hub).unwrap(), ws, "{hub}");
        }
        let bad = websocket_url("ftp://user:pw@h/hub?access_token=s3cret")
            .err()
            .unwrap();
        assert!(matches!(bad, ClientError::BadUrl(_)));
        let shown = bad.to_string();
        assert!(
            shown.contains("ftp://user:***@h/hub?access_token=***"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw"),
            "{shown}"
        );
    }

    /// A refused connection names the hub without its token.
    #[tokio::test]
    async fn errors_name_the_hub_without_its_secrets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let hub = format!("http://127.0.0.1:{port}/hub/?access_token=s3cret");
        let error = connect(&hub, "t", Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(error, ClientError::Connect { .. }), "{error}");
        let shown = error.to_string();
        assert!(
            shown.contains(&format!("127.0.0.1:{port}/hub/?access_token=***")),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    /// wss:// is compiled in: against a server that does not speak TLS the
    /// error is the TLS handshake's, not "TLS support not compiled in".
    #[tokio::test]
    async fn wss_speaks_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let url = format!("wss://127.0.0.1:{port}/hub");
        let error = connect(&url, "t", Duration::from_secs(5))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(!error.to_lowercase().contains("not compiled"), "{error}");
        assert!(error.contains(&url), "{error}");
    }
}
