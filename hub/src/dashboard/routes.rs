//! The dashboard's HTTP side: the page at `/`, its feed (a WebSocket at
//! `/dashboard/feed`) and its Cancel button (`POST /dashboard/cancel`).
//! Every answer without a token that opens the dashboard is a 401 that
//! shows nothing of the run; a token in the address is traded for a
//! cookie and the address cleaned with a redirect.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Extension, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_core::wire::http;
use muster_journal::JournalFeed;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::access::{self, Access, Role};
use super::viewer::{self, Viewer};
use super::PAGE;
use crate::front_door::Admission;
use crate::scheduler::{CancelAnswer, Command};
use crate::websocket;
use crate::Canceller;

/// The page may only run its own inline code and talk to this host.
const CONTENT_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page a browser gets without a token: nothing of the run.
const REFUSED_PAGE: &str =
    "<!doctype html><meta charset=utf-8><title>muster: access refused</title>\
<body style=\"font-family:sans-serif;margin:3em\"><h1>Access refused</h1>\
<p>This dashboard needs a token: open the URL the master printed, which ends in \
<code>?access_token=…</code> (the viewer token, or the run token to be able to cancel).</p>";

/// The header the page's Cancel request carries: a form on another site
/// cannot set it, so a cookie alone never cancels a run.
const CANCEL_HEADER: &str = "x-muster-dashboard";

/// What the dashboard's routes share.
pub(crate) struct DashboardState {
    /// The run's durable records; `None` when the run keeps no journal.
    pub feed: Option<Arc<JournalFeed>>,
    pub access: Access,
    pub viewers: Arc<Semaphore>,
    pub max_viewers: usize,
    pub commands: mpsc::Sender<Command>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// The largest message a viewer may send, as for workers.
    pub max_message: usize,
}

pub(crate) fn routes(state: Arc<DashboardState>) -> Router {
    Router::new()
        .route(http::DASHBOARD, get(page))
        .route(http::DASHBOARD_FEED, get(feed))
        .route(http::DASHBOARD_CANCEL, post(cancel))
        .route(http::DASHBOARD_DECIDE, post(decide))
        .with_state(state)
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

type Door = Option<Extension<Arc<Admission>>>;

/// The role the request's token gives, admitting its connection at the
/// front door when there is one.
fn role(
    state: &DashboardState,
    headers: &HeaderMap,
    query: &TokenQuery,
    door: &Door,
) -> Option<Role> {
    let role = state.access.role(headers, query.access_token.as_deref())?;
    if let Some(Extension(admission)) = door {
        admission.admit();
    }
    Some(role)
}

fn refused() -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, html(REFUSED_PAGE)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn html(body: &'static str) -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body)
}

fn no_journal() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this run keeps no journal (--no-journal), and the dashboard shows the journal: \
         start it without --no-journal to watch it here",
    )
        .into_response()
}

/// `GET /`: the page. A token in the query becomes a cookie, and the
/// browser is sent to the clean address.
async fn page(
    State(state): State<Arc<DashboardState>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    door: Door,
) -> Response {
    if role(&state, &headers, &query, &door).is_none() {
        return refused();
    }
    if state.feed.is_none() {
        return no_journal();
    }
    if let Some(cookie) = query.access_token.as_deref().and_then(access::set_cookie) {
        let mut response =
            (StatusCode::SEE_OTHER, [(header::LOCATION, http::DASHBOARD)]).into_response();
        let headers = response.headers_mut();
        headers.insert(header::SET_COOKIE, cookie);
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let mut response = (StatusCode::OK, html(PAGE)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_POLICY),
    );
    response
}

/// `GET /dashboard/feed`: a viewer's WebSocket.
async fn feed(
    State(state): State<Arc<DashboardState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    door: Door,
    mut request: Request,
) -> Response {
    let Some(role) = role(&state, &headers, &query, &door) else {
        return refused();
    };
    let Some(feed) = state.feed.clone() else {
        return no_journal();
    };
    let Some(accept) = websocket::accept_key(&headers) else {
        return (
            StatusCode::BAD_REQUEST,
            "this endpoint takes a WebSocket upgrade",
        )
            .into_response();
    };
    let Ok(permit) = Arc::clone(&state.viewers).try_acquire_owned() else {
        let text = format!(
            "{} viewers are watching already, the most this hub takes (--max-viewers)",
            state.max_viewers
        );
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let viewer = Viewer {
        feed,
        commands: state.commands.clone(),
        role,
        shutdown: state.shutdown.clone(),
    };
    let max_message = state.max_message;
    let span = tracing::info_span!("viewer", %peer);
    state.tracker.spawn(
        async move {
            let _permit = permit;
            let socket = match on_upgrade.await {
                Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
                Err(e) => {
                    tracing::debug!("the WebSocket upgrade did not complete: {e}");
                    return;
                }
            };
            let (sink, stream) = websocket::split(socket, max_message);
            viewer::serve(sink, stream, viewer).await;
        }
        .instrument(span),
    );
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .expect("a 101 with static headers is a valid response")
}

/// `POST /dashboard/decide`: the Approve and Reject buttons, for an
/// approver's token or the run token, with the body `/hub/decide` takes.
async fn decide(
    State(state): State<Arc<DashboardState>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    door: Door,
    body: axum::body::Body,
) -> Response {
    let Some(role) = role(&state, &headers, &query, &door) else {
        return refused();
    };
    let Some(decider) = role.decider() else {
        let text = "a viewer token may watch the run but not decide its gates: open the dashboard with your approver token";
        return (StatusCode::FORBIDDEN, text).into_response();
    };
    if !headers.contains_key(CANCEL_HEADER) {
        let text = "a decision from the dashboard carries the X-Muster-Dashboard header";
        return (StatusCode::FORBIDDEN, text).into_response();
    }
    crate::decide::submit(&state.commands, decider, body).await
}

/// `POST /dashboard/cancel`: the Cancel button, for the run token only.
async fn cancel(
    State(state): State<Arc<DashboardState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    door: Door,
) -> Response {
    match role(&state, &headers, &query, &door) {
        None => return refused(),
        Some(Role::Viewer) => {
            let text = "a viewer token may watch the run but not cancel it: open the dashboard with the run token";
            return (StatusCode::FORBIDDEN, text).into_response();
        }
        Some(Role::Approver(_)) => {
            let text = "an approver's token may decide gates but not cancel the run: open the dashboard with the run token";
            return (StatusCode::FORBIDDEN, text).into_response();
        }
        Some(Role::Operator) => {}
    }
    if !headers.contains_key(CANCEL_HEADER) {
        let text = "a cancel from the dashboard carries the X-Muster-Dashboard header";
        return (StatusCode::FORBIDDEN, text).into_response();
    }
    let reason = format!("cancelled from the dashboard by {}", peer.ip());
    tracing::info!(%peer, "cancel requested from the dashboard");
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
    (status, Json(body)).into_response()
}
