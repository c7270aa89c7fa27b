//! Request bodies read only after the request's token was checked: a
//! caller without the token gets its 401 before a byte of its body is
//! taken, so strangers cannot make the hub hold their uploads. What is
//! read is bounded in size and time.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

/// How long a caller with the token has to send a small body.
pub(crate) const BODY_TIME: Duration = Duration::from_secs(30);

/// The whole body, at most `limit` bytes within [`BODY_TIME`]; otherwise
/// the answer to give (413, 408 or 400).
pub(crate) async fn read(body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        let text = format!("the body is larger than {} KiB", limit / 1024);
        (StatusCode::PAYLOAD_TOO_LARGE, text).into_response()
    };
    let reading = async {
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                let text = format!("the body could not be read: {e}");
                (StatusCode::BAD_REQUEST, text).into_response()
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    };
    match tokio::time::timeout(BODY_TIME, reading).await {
        Ok(read) => read,
        Err(_) => {
            let text = format!(
                "the body did not arrive within {}",
                humantime::format_duration(BODY_TIME)
            );
            Err((StatusCode::REQUEST_TIMEOUT, text).into_response())
        }
    }
}
