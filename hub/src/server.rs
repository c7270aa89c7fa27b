//! The HTTP side: SignalR negotiate, the WebSocket upgrade at `/hub`, and
//! token checks that answer 401 before any upgrade.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::connection::{self, ConnectionSettings};
use crate::scheduler::Command;

/// How long a negotiated connection token waits for its WebSocket.
const NEGOTIATED_TTL: Duration = Duration::from_secs(60);

pub(crate) struct AppState {
    pub token_digest: [u8; 32],
    pub commands: mpsc::Sender<Command>,
    pub settings: ConnectionSettings,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Connection tokens handed out by negotiate, not yet used.
    pub negotiated: Mutex<HashMap<String, Instant>>,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/hub/negotiate", post(negotiate))
        .route("/hub", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Errors the HTTP side answers with; the body says what to do and never
/// echoes what the client sent.
enum HttpError {
    Unauthorized,
    UnknownConnection,
    NotWebSocket,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            HttpError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send 'Authorization: Bearer <token>' or access_token=<token>",
            ),
            HttpError::UnknownConnection => (
                StatusCode::NOT_FOUND,
                "unknown or expired connection id: negotiate again",
            ),
            HttpError::NotWebSocket => (
                StatusCode::BAD_REQUEST,
                "this endpoint takes a WebSocket upgrade (only the WebSockets transport is supported)",
            ),
        };
        (status, text).into_response()
    }
}

#[derive(Deserialize)]
struct HubQuery {
    id: Option<String>,
    access_token: Option<String>,
    #[serde(rename = "negotiateVersion")]
    negotiate_version: Option<u32>,
}

/// Compares digests in constant time, so a wrong token and a short one
/// take the same time to refuse.
fn authorize(state: &AppState, headers: &HeaderMap, query: &HubQuery) -> Result<(), HttpError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or(query.access_token.as_deref()).unwrap_or("");
    if bool::from(digest(given).ct_eq(&state.token_digest)) {
        Ok(())
    } else {
        Err(HttpError::Unauthorized)
    }
}

async fn negotiate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HubQuery>,
) -> Result<Response, HttpError> {
    authorize(&state, &headers, &query)?;
    let connection_id = random_id();
    let connection_token = random_id();
    let version = query.negotiate_version.unwrap_or(0).min(1);
    {
        let mut negotiated = state
            .negotiated
            .lock()
            .expect("negotiate map is never poisoned");
        negotiated.retain(|_, at| at.elapsed() < NEGOTIATED_TTL);
        let key = if version >= 1 {
            &connection_token
        } else {
            &connection_id
        };
        negotiated.insert(key.clone(), Instant::now());
    }
    let mut body = json!({
        "connectionId": connection_id,
        "negotiateVersion": version,
        "availableTransports": [
            {"transport": "WebSockets", "transferFormats": ["Text"]}
        ],
    });
    if version >= 1 {
        body["connectionToken"] = connection_token.into();
    }
    Ok(Json(body).into_response())
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HubQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    authorize(&state, &headers, &query)?;
    if let Some(id) = &query.id {
        let known = state
            .negotiated
            .lock()
            .expect("negotiate map is never poisoned")
            .remove(id)
            .is_some_and(|at| at.elapsed() < NEGOTIATED_TTL);
        if !known {
            return Err(HttpError::UnknownConnection);
        }
    }
    let ws = ws.map_err(|_| HttpError::NotWebSocket)?;
    let settings = state.settings.clone();
    // Above twice the record cap the WebSocket layer itself refuses the
    // frame; between the two, the decoder answers with a SignalR Close.
    let ws = ws
        .max_message_size(settings.max_message * 2)
        .max_frame_size(settings.max_message * 2);
    let commands = state.commands.clone();
    let shutdown = state.shutdown.clone();
    let tracker = state.tracker.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        let span = tracing::info_span!("connection", %peer);
        let serve = connection::serve(socket, peer.to_string(), commands, settings, shutdown);
        tracker.spawn(serve.instrument(span)).await.ok();
    }))
}

/// A random identifier for connection ids and tokens.
pub fn random_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
