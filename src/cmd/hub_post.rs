//! One JSON `POST` to a hub endpoint with a bearer token, as `muster
//! cancel`, `approve` and `reject` send it: bounded in time, and a hub
//! that does not answer said in one line that never shows the token.

use std::time::Duration;

use anyhow::Context;

use crate::failure::Failure;

/// How long the hub has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Posts `body` to `url` with `token`; the answer's status and text.
/// `shown` is `url` as it may be printed (tokens redacted).
pub async fn post_json(
    url: &str,
    shown: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), Failure> {
    let client = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .context("cannot set up an HTTP client")?;
    let sent = client.post(url).bearer_auth(token).json(body).send().await;
    let response = sent.map_err(|e| {
        // A hub exits a few seconds after its run ends: no answer at all
        // most often means there is no run left.
        let why = if e.is_connect() {
            "nothing is listening there".to_owned()
        } else {
            e.without_url().to_string()
        };
        Failure::infrastructure(format!(
            "no hub answered at {shown} ({why}); the run may have finished, or the URL is wrong"
        ))
    })?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.unwrap_or_default()))
}
