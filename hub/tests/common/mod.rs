//! A raw SignalR client over a real loopback WebSocket, where the test
//! decides every frame, and a hub with shortened timeouts.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use muster_core::parse_pipeline;
use muster_core::wire::signalr::{FrameDecoder, Message};
use muster_hub::{Hub, HubConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub const TOKEN: &str = "liveness-token";

pub async fn hub(pipeline: &str) -> Hub {
    let plan = parse_pipeline("t.toml", pipeline).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = HubConfig {
        token: TOKEN.into(),
        ping_interval: Duration::from_millis(100),
        client_timeout: Duration::from_millis(1000),
        handshake_timeout: Duration::from_millis(300),
        cancel_grace: Duration::from_millis(300),
        result_grace: Duration::from_millis(300),
        ..HubConfig::default()
    };
    let mut hub = Hub::start(listener, plan, config).await.unwrap();
    // Nobody prints here: the scheduler must not wait for a reader.
    drop(hub.take_events());
    hub
}

/// The run's summary; a run that does not end within 20 s fails the test.
pub async fn finished(hub: Hub) -> muster_hub::Summary {
    tokio::time::timeout(Duration::from_secs(20), hub.wait(Duration::from_secs(1)))
        .await
        .expect("the run did not finish")
        .unwrap()
}

/// A raw SignalR client: the test decides every frame it sends.
pub struct Raw {
    pub socket: Socket,
    decoder: FrameDecoder,
    queued: Vec<Message>,
    /// Answer each hub ping with one, as live clients do.
    pub answer_pings: bool,
}

impl Raw {
    pub async fn connect(hub: &Hub) -> Raw {
        let url = format!(
            "{}?access_token={TOKEN}",
            hub.url().replace("http://", "ws://")
        );
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Raw {
            socket,
            decoder: FrameDecoder::new(1 << 20),
            queued: Vec::new(),
            answer_pings: true,
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(WsMessage::Text(text.into()))
            .await
            .unwrap();
    }

    pub async fn handshake(&mut self) {
        self.send("{\"protocol\":\"json\",\"version\":1}\u{1e}")
            .await;
        let answer = self.socket.next().await.unwrap().unwrap();
        assert_eq!(answer.to_text().unwrap(), "{}\u{1e}");
    }

    pub async fn invoke(&mut self, id: Option<&str>, target: &str, args: Value) {
        let mut message = json!({"type": 1, "target": target, "arguments": args});
        if let Some(id) = id {
            message["invocationId"] = id.into();
        }
        self.send(&format!("{message}\u{1e}")).await;
    }

    pub async fn register(&mut self, name: &str) {
        self.handshake().await;
        self.invoke(Some("r"), "Register", json!([{"name": name}]))
            .await;
        match self.next_non_ping().await {
            Some(Message::Completion {
                result: Some(r), ..
            }) => assert!(r["workerId"].is_string()),
            other => panic!("no welcome: {other:?}"),
        }
    }

    /// Handshake and `Register` with this registration; returns the
    /// Welcome.
    pub async fn register_with(&mut self, registration: Value) -> Value {
        self.handshake().await;
        self.invoke(Some("r"), "Register", json!([registration]))
            .await;
        match self.next_non_ping().await {
            Some(Message::Completion {
                result: Some(welcome),
                ..
            }) => welcome,
            other => panic!("no welcome: {other:?}"),
        }
    }

    /// The next message that is not a ping, or `None` when the socket ends
    /// or nothing comes for 5 s.
    pub async fn next_non_ping(&mut self) -> Option<Message> {
        loop {
            if !self.queued.is_empty() {
                return Some(self.queued.remove(0));
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.socket.next()).await;
            let text = match frame {
                Ok(Some(Ok(WsMessage::Text(text)))) => text.to_string(),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            };
            for record in self.decoder.push(&text).unwrap() {
                let message = Message::parse(&record).unwrap();
                if message != Message::Ping {
                    self.queued.push(message);
                } else if self.answer_pings {
                    self.send(&Message::Ping.to_frame()).await;
                }
            }
        }
    }

    pub async fn expect_assign(&mut self) -> (String, u64) {
        match self.next_non_ping().await {
            Some(Message::Invocation {
                target, arguments, ..
            }) if target == "Assign" => (
                arguments[0]["moduleId"].as_str().unwrap().to_owned(),
                arguments[0]["attempt"].as_u64().unwrap(),
            ),
            other => panic!("expected Assign, got {other:?}"),
        }
    }
}
