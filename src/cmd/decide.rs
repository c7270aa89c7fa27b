//! `muster approve` and `muster reject`: decide a module's approval gate
//! from anywhere that reaches the hub, with your own approver token (or
//! the run token, for gates that name no approvers).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use muster_core::wire::http::decide_url;

use crate::failure::Failure;

/// How long a CI run's record in Redis is waited for.
const FIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the hub is and who you are.
#[derive(Args)]
pub struct DeciderAccess {
    /// The hub's URL, as `muster hub` or `muster run` prints it (the
    /// dashboard's address works too).
    #[arg(long, env = "MUSTER_HUB", required_unless_present = "run_id")]
    hub: Option<String>,
    /// A CI run's id, as `muster ci` prints it: its hub is found through
    /// the discovery record in --redis-url.
    #[arg(long, requires = "redis_url", conflicts_with = "hub")]
    run_id: Option<String>,
    /// The Redis of a CI run (with --run-id).
    #[arg(long, env = "MUSTER_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Your approver token (the master knows its SHA-256 from --approver
    /// NAME=SHA256), or the run token for a gate that names no approvers.
    #[arg(long, env = "MUSTER_APPROVER_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The gated module, as the run names it.
    module: String,
    /// A value the gate asks for, NAME=VALUE (repeatable); it reaches the
    /// command as MUSTER_APPROVAL_<NAME> and becomes an output.
    #[arg(long = "input", value_name = "NAME=VALUE", value_parser = parse_input)]
    inputs: Vec<(String, String)>,
    /// Why, kept in the journal with the decision.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    access: DeciderAccess,
}

#[derive(Args)]
pub struct RejectArgs {
    /// The gated module, as the run names it.
    module: String,
    /// Why: the module fails with it, and its dependents are skipped.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    access: DeciderAccess,
}

fn parse_input(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected NAME=VALUE, e.g. --input ticket=OPS-12".to_owned())
}

pub async fn approve(args: ApproveArgs) -> Result<(), Failure> {
    let inputs: BTreeMap<String, String> = args.inputs.into_iter().collect();
    let body = serde_json::json!({
        "module": args.module,
        "decision": "approve",
        "inputs": inputs,
        "reason": args.reason,
    });
    send(&args.access, body).await
}

pub async fn reject(args: RejectArgs) -> Result<(), Failure> {
    let body = serde_json::json!({
        "module": args.module,
        "decision": "reject",
        "reason": args.reason,
    });
    send(&args.access, body).await
}

/// The hub to send the decision to: `--hub`, or the one a CI run's
/// discovery record names.
async fn hub_url(access: &DeciderAccess) -> Result<String, Failure> {
    use crate::discover::{find_hub, outcome_word, Found};
    use muster_discovery::store::DiscoveryStore;
    if let Some(hub) = &access.hub {
        return Ok(hub.clone());
    }
    let (Some(run_id), Some(redis)) = (&access.run_id, &access.redis_url) else {
        return Err(Failure::Usage(
            "say where the run is: --hub URL, or --run-id ID with --redis-url for a CI run".into(),
        ));
    };
    let store = DiscoveryStore::open(redis).map_err(|e| Failure::Usage(e.to_string()))?;
    match find_hub(&store, run_id, Some(&access.token), FIND_TIMEOUT).await? {
        Found::Hub { url, .. } => Ok(url),
        Found::Finished(outcome) => Err(Failure::DecisionRefused(format!(
            "run {run_id} has already finished ({})",
            outcome_word(outcome)
        ))),
    }
}

/// `POST {hub}/decide`; prints what the hub answered.
async fn send(access: &DeciderAccess, body: serde_json::Value) -> Result<(), Failure> {
    let hub = hub_url(access).await?;
    let url = decide_url(&hub).map_err(|e| Failure::Usage(e.to_string()))?;
    let shown = muster_core::url::redact_url(&url);
    let (status, text) = super::hub_post::post_json(&url, &shown, &access.token, &body).await?;
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let error = match answer["error"].as_str().unwrap_or(text.trim()) {
        "" => format!("the hub at {shown} answered HTTP {status} with no reason"),
        given => muster_core::text::escape(given),
    };
    match status {
        200 => {
            let field = |name: &str| muster_core::text::escape(answer[name].as_str().unwrap_or("?"));
            crate::report::say(&format!(
                "{} {} by {}",
                field("module"),
                field("decision"),
                field("by")
            ));
            Ok(())
        }
        401 => Err(Failure::Usage(format!(
            "the hub at {shown} does not know this token (HTTP 401): give your approver token with --token or MUSTER_APPROVER_TOKEN"
        ))),
        403 | 404 | 413 | 422 | 400 => Err(Failure::Usage(error)),
        409 => Err(Failure::DecisionRefused(error)),
        code => Err(Failure::infrastructure(format!(
            "the hub at {shown} answered HTTP {code}: {error}"
        ))),
    }
}
