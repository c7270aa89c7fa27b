//! The HTTP side: SignalR negotiate, the WebSocket upgrade at `/hub` (and
//! `/hub/`), the cancel endpoint for `muster cancel`, the artifact store's
//! routes (`artifacts.rs`), and token checks that answer 401 before
//! anything else happens. A request that passes the check admits its
//! connection at the front door (`front_door.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Extension, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_core::wire::http;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::artifacts;
use crate::connection::{self, ConnectionSettings};
use crate::front_door::Admission;
use crate::ids::random_id;
use crate::scheduler::{CancelAnswer, Command};
use crate::websocket;
use crate::Canceller;

/// The longest reason `muster cancel` may give; longer ones are cut.
const MAX_CANCEL_REASON: usize = 200;

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
    /// Files modules hand to each other, by SHA-256.
    pub artifacts: Arc<artifacts::ArtifactStore>,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let artifacts = artifacts::routes()
        .with_state(state.artifacts.clone())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(http::NEGOTIATE, post(negotiate))
        .route(http::HUB, get(upgrade))
        // Some clients are given the URL with a trailing slash; the
        // official ones then negotiate at /hub/negotiate and connect here.
        .route(http::HUB_SLASH, get(upgrade))
        .route(http::CANCEL, post(cancel))
        .route(http::ARTIFACT, artifacts)
        .route(http::HEALTH, get(|| async { "ok" }))
        .with_state(state)
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

/// The connection a request came on, when it came through the front door.
type Door = Option<Extension<Arc<Admission>>>;

/// Compares digests in constant time, so a wrong token and a short one
/// take the same time to refuse. The right token admits the connection.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: &HubQuery,
    door: &Door,
) -> Result<(), HttpError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or(query.access_token.as_deref()).unwrap_or("");
    if crate::token::matches(given, &state.token_digest) {
        if let Some(Extension(admission)) = door {
            admission.admit();
        }
        Ok(())
    } else {
        Err(HttpError::Unauthorized)
    }
}

/// Refuses a request without the token before its handler runs, so its
/// body is never read.
async fn require_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HubQuery>,
    door: Door,
    request: Request,
    next: Next,
) -> Result<Response, HttpError> {
    authorize(&state, &headers, &query, &door)?;
    Ok(next.run(request).await)
}

async fn negotiate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HubQuery>,
    door: Door,
) -> Result<Response, HttpError> {
    authorize(&state, &headers, &query, &door)?;
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
    door: Door,
    mut request: Request,
) -> Result<Response, HttpError> {
    authorize(&state, &headers, &query, &door)?;
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
    let accept = websocket::accept_key(&headers).ok_or(HttpError::NotWebSocket)?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let settings = state.settings.clone();
    let commands = state.commands.clone();
    let shutdown = state.shutdown.clone();
    let span = tracing::info_span!("connection", %peer);
    state.tracker.spawn(
        async move {
            let socket = match on_upgrade.await {
                Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
                Err(e) => {
                    tracing::debug!("the WebSocket upgrade did not complete: {e}");
                    return;
                }
            };
            // Above twice the record cap the WebSocket layer itself refuses
            // the message; between the two, the decoder answers with a
            // SignalR Close.
            let (sink, stream) = websocket::split(socket, settings.max_message * 2);
            connection::serve(sink, stream, peer.to_string(), commands, settings, shutdown).await
        }
        .instrument(span),
    );
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .expect("a 101 with static headers is a valid response"))
}

/// A cancel's body is a short reason.
const MAX_CANCEL_BODY: usize = 64 * 1024;

#[derive(Deserialize, Default)]
struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /hub/cancel` with the token: cancels the run as Ctrl-C on the
/// master would. The body may be `{"reason": "..."}`.
async fn cancel(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HubQuery>,
    door: Door,
    body: axum::body::Body,
) -> Result<Response, HttpError> {
    authorize(&state, &headers, &query, &door)?;
    let body = match crate::body::read(body, MAX_CANCEL_BODY).await {
        Ok(body) => body,
        Err(refused) => return Ok((refused.status, refused.why).into_response()),
    };
    let request: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                let text = format!("the body must be {{\"reason\": \"...\"}} or empty: {e}");
                return Ok((StatusCode::BAD_REQUEST, text).into_response());
            }
        }
    };
    let mut reason = format!("cancelled by `muster cancel` from {}", peer.ip());
    if let Some(given) = request.reason.filter(|r| !r.trim().is_empty()) {
        let given: String = given
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_CANCEL_REASON)
            .collect();
        reason = format!("{reason}: {given}");
    }
    tracing::info!(%peer, "cancel requested");
    let answer = Canceller(state.commands.clone())
        .cancel(reason.clone())
        .await;
    let (status, body) = match answer {
        Some(CancelAnswer::Cancelling) => (
            StatusCode::ACCEPTED,
            json!({"status": "cancelling", "reason": reason}),
        ),
        Some(CancelAnswer::AlreadyCancelled(earlier)) => (
            StatusCode::OK,
            json!({"status": "already cancelling", "reason": earlier}),
        ),
        Some(CancelAnswer::Finished) | None => (
            StatusCode::CONFLICT,
            json!({"status": "finished", "reason": "the run has already finished"}),
        ),
    };
    Ok((status, Json(body)).into_response())
}
