//! `POST /hub/decide`: approves or rejects a module's approval gate for
//! `muster approve` / `muster reject` (and any HTTP client). The token
//! says who decides: an approver's own token (the master knows only its
//! SHA-256, from `--approver NAME=DIGEST`) or the run token. The answer
//! comes once the decision is journaled; a refusal changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use muster_core::gate::{Decider, Decision, Refused};
use muster_core::wire::http;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::front_door::Admission;
use crate::scheduler::Command;
use crate::token;

/// The largest body a decision may have.
const MAX_DECISION_BODY: usize = 64 * 1024;

/// The approvers a master knows: name → SHA-256 of their token.
#[derive(Debug, Clone, Default)]
pub struct Approvers(pub BTreeMap<String, [u8; 32]>);

impl Approvers {
    /// The approver whose token this is. Every digest is compared, in
    /// constant time.
    pub(crate) fn named(&self, token: &str) -> Option<String> {
        let mut found = None;
        for (name, expected) in &self.0 {
            if token::matches(token, expected) {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Who `token` is: the run token (`run` is its digest), an approver,
    /// or nobody.
    fn who(&self, token: &str, run: &[u8; 32]) -> Option<Decider> {
        let approver = self.named(token);
        if token::matches(token, run) {
            Some(Decider::RunToken)
        } else {
            approver.map(Decider::Approver)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideRequest {
    module: String,
    /// `approve` or `reject`.
    decision: String,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    reason: Option<String>,
}

fn answer(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(json!({"error": error.into()}))).into_response()
}

/// What the decide route needs.
pub(crate) struct DecideState {
    pub commands: mpsc::Sender<Command>,
    pub run_token_digest: [u8; 32],
    pub approvers: Approvers,
}

/// `POST /hub/decide`, with its own state.
pub(crate) fn routes(state: Arc<DecideState>) -> Router {
    Router::new()
        .route(http::DECIDE, post(decide))
        .with_state(state)
}

async fn decide(
    State(state): State<Arc<DecideState>>,
    headers: HeaderMap,
    door: Option<Extension<Arc<Admission>>>,
    body: axum::body::Body,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(decider) = state.approvers.who(token, &state.run_token_digest) else {
        return answer(
            StatusCode::UNAUTHORIZED,
            "missing or unknown token: send 'Authorization: Bearer <token>' with your approver token (the master's --approver NAME=DIGEST) or the run token",
        );
    };
    if let Some(Extension(admission)) = door {
        admission.admit();
    }
    submit(&state.commands, decider, body).await
}

/// Reads a decision from `body` (once the caller's token named the
/// `decider`) and hands it to the scheduler; answers once it is
/// journaled, or with why it was refused. The dashboard's buttons come
/// here too.
pub(crate) async fn submit(
    commands: &mpsc::Sender<Command>,
    decider: Decider,
    body: axum::body::Body,
) -> Response {
    let body = match crate::body::read(body, MAX_DECISION_BODY).await {
        Ok(body) => body,
        Err(refused) => return answer(refused.status, refused.why),
    };
    let request: DecideRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"module\": \"...\", \"decision\": \"approve\"|\"reject\", \"inputs\": {{...}}, \"reason\": \"...\"}}: {e}"),
            )
        }
    };
    let decision = match request.decision.as_str() {
        "approve" => Decision::Approve {
            inputs: request.inputs,
            reason: request.reason.filter(|r| !r.trim().is_empty()),
        },
        "reject" => Decision::Reject {
            reason: request.reason.unwrap_or_default(),
        },
        _ => {
            return answer(
                StatusCode::BAD_REQUEST,
                "decision must be \"approve\" or \"reject\"",
            )
        }
    };
    let (reply, answered) = oneshot::channel();
    let command = Command::Decide {
        module: request.module,
        decider,
        decision,
        reply,
    };
    if commands.send(command).await.is_err() {
        return answer(StatusCode::CONFLICT, "the run has already finished");
    }
    match answered.await {
        Ok(Ok(done)) => {
            tracing::info!(module = %done.module, by = %done.by, "gate {}", done.decision);
            (
                StatusCode::OK,
                Json(json!({"module": done.module, "decision": done.decision, "by": done.by})),
            )
                .into_response()
        }
        Ok(Err(refused)) => {
            let status = match &refused {
                Refused::UnknownModule(_) | Refused::NoGate(_) => StatusCode::NOT_FOUND,
                Refused::NotWaiting { .. } | Refused::AlreadyDecided { .. } => StatusCode::CONFLICT,
                Refused::NotAnApprover { .. } | Refused::Excluded { .. } => StatusCode::FORBIDDEN,
                Refused::MissingInput { .. }
                | Refused::UnknownInput { .. }
                | Refused::BadText { .. }
                | Refused::NoReason(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            answer(status, refused.to_string())
        }
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master could not journal the decision (its journal failed or the run ended): nothing was decided",
        ),
    }
}
