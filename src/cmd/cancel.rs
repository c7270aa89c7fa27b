//! `muster cancel`: cancels a running hub's run from anywhere, as Ctrl-C
//! on the master would.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use muster_core::wire::http::cancel_url;

use crate::failure::Failure;
use crate::flags::HubAccess;

/// How long the hub has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    access: HubAccess,
    /// Why, shown in the master's output and summary.
    #[arg(long)]
    reason: Option<String>,
}

/// `POST {hub}/cancel` with the token; prints what the hub answered.
pub async fn cancel(args: CancelArgs) -> Result<(), Failure> {
    let CancelArgs { access, reason } = args;
    let url = cancel_url(&access.hub).map_err(|e| Failure::Usage(e.to_string()))?;
    // What is printed never carries a token given in the URL.
    let shown = muster_core::url::redact_url(&url);
    let mut body = serde_json::Map::new();
    if let Some(reason) = reason {
        body.insert("reason".into(), reason.into());
    }
    let client = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .context("cannot set up an HTTP client")?;
    let sent = client
        .post(&url)
        .bearer_auth(&access.token)
        .json(&body)
        .send()
        .await;
    let response = sent.map_err(|e| {
        // A hub exits a few seconds after its run ends: no answer at all
        // most often means there is no run left to cancel.
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
    let text = response.text().await.unwrap_or_default();
    answered(status, &text, &shown)
}

/// What the hub's answer means, printed when it is good news.
fn answered(status: u16, text: &str, shown: &str) -> Result<(), Failure> {
    let answer: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let reason = answer["reason"].as_str().unwrap_or(text).trim();
    match status {
        202 => {
            println!("muster: the run is being cancelled ({reason})");
            Ok(())
        }
        200 => {
            println!("muster: the run was already being cancelled ({reason})");
            Ok(())
        }
        409 => Err(Failure::NothingToCancel(reason.to_owned())),
        401 => Err(Failure::Usage(format!(
            "the hub at {shown} refused the token (HTTP 401): check --token or MUSTER_TOKEN"
        ))),
        code => {
            let reason = muster_core::text::escape(reason);
            Err(Failure::infrastructure(format!(
                "the hub at {shown} answered HTTP {code}: {reason}"
            )))
        }
    }
}
