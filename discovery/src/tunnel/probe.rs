//! HTTP probes with a bound: whether a URL answers (cloudflared's `/ready`,
//! the hub's `/healthz` through the tunnel), and cloudflared's
//! `/quicktunnel` for its URL. A probe never outlives the shared deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::output::is_quick_tunnel_host;

/// The longest a single HTTP probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) fn http_client(loopback: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder().timeout(PROBE_TIMEOUT);
    let builder = if loopback {
        builder.no_proxy()
    } else {
        builder
    };
    builder.build().unwrap_or_else(|_| reqwest::Client::new())
}

/// Whether `GET url` answers 200 (with `body`, trimmed, if given) before
/// the deadline.
pub(super) async fn answers(
    client: &reqwest::Client,
    url: &str,
    body: Option<&str>,
    deadline: Instant,
) -> bool {
    let Some(limit) = probe_limit(deadline) else {
        return false;
    };
    let Ok(response) = client.get(url).timeout(limit).send().await else {
        return false;
    };
    if response.status() != reqwest::StatusCode::OK {
        return false;
    }
    match body {
        None => true,
        Some(expected) => matches!(response.text().await, Ok(text) if text.trim() == expected),
    }
}

/// The quick tunnel's URL from cloudflared's `/quicktunnel`
/// (`{"hostname":"<name>.trycloudflare.com"}`), once it serves it.
pub(super) async fn quick_tunnel_hostname(
    client: &reqwest::Client,
    endpoint: &str,
    deadline: Instant,
) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct QuickTunnel {
        hostname: String,
    }
    let limit = probe_limit(deadline)?;
    let response = client.get(endpoint).timeout(limit).send().await.ok()?;
    let body: QuickTunnel = response.json().await.ok()?;
    let host = body.hostname.trim();
    let host = host.strip_prefix("https://").unwrap_or(host);
    is_quick_tunnel_host(host).then(|| format!("https://{host}"))
}

fn probe_limit(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.min(PROBE_TIMEOUT))
}
