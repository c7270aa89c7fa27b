//! Request bodies read only after the request's token was checked: a
//! caller without the token gets its 401 before a byte of its body is
//! taken, so strangers cannot make the hub hold their uploads. What is
//! read is bounded in size and time.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use futures_util::StreamExt;

/// How long a caller with the token has to send a small body.
pub(crate) const BODY_TIME: Duration = Duration::from_secs(30);

/// Why a body was not taken: the status to answer with, and why.
pub(crate) struct Refused {
    pub status: StatusCode,
    pub why: String,
}

/// The whole body, at most `limit` bytes within [`BODY_TIME`]; otherwise
/// why not (413, 408 or 400), for the route to answer in its own format.
pub(crate) async fn read(body: Body, limit: usize) -> Result<Bytes, Refused> {
    let reading = async {
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| Refused {
                status: StatusCode::BAD_REQUEST,
                why: format!("the body could not be read: {e}"),
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(Refused {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    why: format!("the body is larger than {} KiB", limit / 1024),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    };
    match tokio::time::timeout(BODY_TIME, reading).await {
        Ok(read) => read,
        Err(_) => Err(Refused {
            status: StatusCode::REQUEST_TIMEOUT,
            why: format!(
                "the body did not arrive within {}",
                humantime::format_duration(BODY_TIME)
            ),
        }),
    }
}
