//! `muster cancel`: cancels a running hub's run from anywhere, as Ctrl-C
//! on the master would.

use clap::Args;
use muster_core::wire::http::cancel_url;

use crate::failure::Failure;
use crate::flags::HubAccess;

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
    let body = serde_json::Value::Object(body);
    let (status, text) = super::hub_post::post_json(&url, &shown, &access.token, &body).await?;
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
