//! The HTTP half of the hub's protocol, in one place for the hub (which
//! serves these routes), the worker and the CLI (which call them) and
//! discovery (which probes them): the routes, and how the URLs of the
//! hub's endpoints follow from the hub's URL as a user writes it
//! (`http(s)://` or `ws(s)://`, with or without a trailing `/`, maybe with
//! a query that carries the token).
//!
//! Text in, text out: no I/O, and no URL parsing beyond the scheme.

use crate::url::redact_url;

/// The SignalR hub: the WebSocket upgrade (`GET`).
pub const HUB: &str = "/hub";
/// The hub again, for clients given its URL with a trailing slash; the
/// official SignalR clients then negotiate at [`NEGOTIATE`] and connect
/// here.
pub const HUB_SLASH: &str = "/hub/";
/// SignalR negotiate (`POST`).
pub const NEGOTIATE: &str = "/hub/negotiate";
/// Cancels the run (`POST`, with the token).
pub const CANCEL: &str = "/hub/cancel";
/// Decides a module's approval gate (`POST`, with an approver's token or
/// the run token): `{"module", "decision": "approve"|"reject", "inputs",
/// "reason"}`.
pub const DECIDE: &str = "/hub/decide";
/// One artifact, named by the SHA-256 of its content (`HEAD`, `PUT`,
/// `GET`, with the token), in axum's path syntax.
pub const ARTIFACT: &str = "/hub/artifacts/{sha256}";
/// The health check (`GET`, answers `ok`), at the root rather than below
/// the hub.
pub const HEALTH: &str = "/healthz";
/// The live dashboard's page (a browser's first request).
pub const DASHBOARD: &str = "/";
/// The dashboard's WebSocket: the journal's records, workers and logs.
pub const DASHBOARD_FEED: &str = "/dashboard/feed";
/// The dashboard's Cancel button (the run token only).
pub const DASHBOARD_CANCEL: &str = "/dashboard/cancel";
/// The dashboard's Approve and Reject buttons (an approver's token, or the
/// run token).
pub const DASHBOARD_DECIDE: &str = "/dashboard/decide";

/// [`CANCEL`] below a hub URL, for [`join`].
const CANCEL_TAIL: &str = "cancel";
/// [`DECIDE`] below a hub URL, for [`join`].
const DECIDE_TAIL: &str = "decide";
/// The folder of [`ARTIFACT`] below a hub URL, for [`join`].
const ARTIFACTS_TAIL: &str = "artifacts";

/// A hub URL with a scheme other than http, https, ws or wss. Holds the
/// URL redacted ([`redact_url`]): it may be printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hub URL {0:?} must start with http://, https://, ws:// or wss://")]
pub struct BadHubUrl(pub String);

/// The hub's `ws(s)://` URL, to open its WebSocket: `http` becomes `ws`
/// and `https` `wss`; the path loses its trailing slashes (`…/hub/` is
/// `…/hub`); a query is kept.
pub fn websocket_url(hub: &str) -> Result<String, BadHubUrl> {
    with_scheme(
        hub,
        &[
            ("http://", "ws://"),
            ("https://", "wss://"),
            ("ws://", "ws://"),
            ("wss://", "wss://"),
        ],
    )
}

/// The hub's `http(s)://` URL, below which its HTTP endpoints are: `ws`
/// becomes `http` and `wss` `https`; the path loses its trailing slashes;
/// a query is kept.
pub fn http_url(hub: &str) -> Result<String, BadHubUrl> {
    with_scheme(
        hub,
        &[
            ("http://", "http://"),
            ("https://", "https://"),
            ("ws://", "http://"),
            ("wss://", "https://"),
        ],
    )
}

/// `hub` with its scheme mapped by the first of `schemes` it starts with,
/// and normalised by [`join`].
fn with_scheme(hub: &str, schemes: &[(&str, &str)]) -> Result<String, BadHubUrl> {
    let mapped = schemes
        .iter()
        .find_map(|(from, to)| hub.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .ok_or_else(|| BadHubUrl(redact_url(hub)))?;
    Ok(join(&mapped, ""))
}

/// The URL to `POST` to cancel the run of the hub at `hub` (any of the
/// four schemes): [`CANCEL`] below its [`http_url`].
pub fn cancel_url(hub: &str) -> Result<String, BadHubUrl> {
    Ok(join(&http_url(hub)?, CANCEL_TAIL))
}

/// The URL to `POST` a gate's decision to: [`DECIDE`] below the hub's
/// [`http_url`]. A URL without a path (the dashboard's link, as `muster
/// run` prints it) means the hub on that host.
pub fn decide_url(hub: &str) -> Result<String, BadHubUrl> {
    let base = http_url(hub)?;
    let path = &base[..base.find('?').unwrap_or(base.len())];
    let after_scheme = path.find("://").map_or(path, |i| &path[i + 3..]);
    let tail = if after_scheme.contains('/') {
        DECIDE_TAIL
    } else {
        DECIDE.trim_start_matches('/')
    };
    Ok(join(&base, tail))
}

/// The URL of one artifact in the store of the hub at `hub`, an
/// `http(s)://` URL such as [`http_url`] gives: `{hub}/artifacts/{sha256}`,
/// with the hub URL's query (if any) after it; one slash between the parts
/// whether or not the hub URL ended with one.
pub fn artifact_url(hub: &str, sha256: &str) -> String {
    join(hub, &format!("{ARTIFACTS_TAIL}/{sha256}"))
}

/// The health check of the server whose hub is at `hub` (or of the server
/// at `hub` when it has no `/hub` path): [`HEALTH`] at its root.
pub fn health_url(hub: &str) -> String {
    format!(
        "{}{HEALTH}",
        hub.trim_end_matches('/').trim_end_matches(HUB)
    )
}

/// The URL of an endpoint below the hub: `tail` (`artifacts/<sha256>`)
/// appended to the path of `base`, before its query, which is kept (a
/// fragment is dropped: it is never sent). Trailing slashes of the path
/// are dropped first, so `…/hub/` and `…/hub` give the same URLs; an
/// empty `tail` just normalises `base` that way.
pub fn join(base: &str, tail: &str) -> String {
    let without_fragment = &base[..base.find('#').unwrap_or(base.len())];
    let (path, query) =
        without_fragment.split_at(without_fragment.find('?').unwrap_or(without_fragment.len()));
    // Keep the "//" that follows the scheme, whatever else is trimmed.
    let keep = path.find("://").map_or(0, |i| i + 3);
    let trimmed = path[keep..].trim_end_matches('/');
    let mut url = format!("{}{trimmed}", &path[..keep]);
    let tail = tail.trim_start_matches('/');
    if !tail.is_empty() {
        url.push('/');
        url.push_str(tail);
    }
    url.push_str(query);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_go_below_the_hub_or_to_the_hub_of_a_bare_host() {
        assert_eq!(decide_url("ws://h:1/hub").unwrap(), "http://h:1/hub/decide");
        assert_eq!(
            decide_url("http://h:1/hub/").unwrap(),
            "http://h:1/hub/decide"
        );
        assert_eq!(decide_url("http://h:1").unwrap(), "http://h:1/hub/decide");
        assert_eq!(
            decide_url("http://h:1/?access_token=v").unwrap(),
            "http://h:1/hub/decide?access_token=v"
        );
    }

    #[test]
    fn endpoints_join_below_the_hub_without_double_slashes() {
        let cases = [
            ("http://h:1/hub", "", "http://h:1/hub"),
            ("http://h:1/hub/", "", "http://h:1/hub"),
            ("http://h:1/hub//", "", "http://h:1/hub"),
            (
                "http://h:1/hub",
                "artifacts/ab",
                "http://h:1/hub/artifacts/ab",
            ),
            (
                "http://h:1/hub/",
                "artifacts/ab",
                "http://h:1/hub/artifacts/ab",
            ),
            (
                "http://h:1/hub/",
                "/artifacts/ab",
                "http://h:1/hub/artifacts/ab",
            ),
            (
                "http://h:1/hub/?access_token=t",
                "artifacts/ab",
                "http://h:1/hub/artifacts/ab?access_token=t",
            ),
            (
                "https://h/prefix/hub?a=1#frag",
                "cancel",
                "https://h/prefix/hub/cancel?a=1",
            ),
            ("http://h", "artifacts", "http://h/artifacts"),
            ("http://h/", "", "http://h"),
            ("ws://h/hub/", "", "ws://h/hub"),
        ];
        for (base, tail, joined) in cases {
            assert_eq!(join(base, tail), joined, "join({base:?}, {tail:?})");
        }
    }

    #[test]
    fn hub_urls_map_to_websocket_and_http_urls() {
        // (hub as written, websocket_url, http_url)
        let cases = [
            (
                "http://10.0.0.5:7400/hub",
                "ws://10.0.0.5:7400/hub",
                "http://10.0.0.5:7400/hub",
            ),
            ("https://h/hub", "wss://h/hub", "https://h/hub"),
            ("ws://h/hub", "ws://h/hub", "http://h/hub"),
            ("wss://h/x/hub", "wss://h/x/hub", "https://h/x/hub"),
            ("http://h/hub/", "ws://h/hub", "http://h/hub"),
            ("https://h/hub//", "wss://h/hub", "https://h/hub"),
            (
                "http://h:1/hub/?access_token=t",
                "ws://h:1/hub?access_token=t",
                "http://h:1/hub?access_token=t",
            ),
        ];
        for (hub, ws, http) in cases {
            assert_eq!(websocket_url(hub).as_deref(), Ok(ws), "{hub}");
            assert_eq!(http_url(hub).as_deref(), Ok(http), "{hub}");
        }
    }

    #[test]
    fn other_schemes_are_refused_without_showing_secrets() {
        for hub in ["ftp://user:pw@h/hub?access_token=s3cret", "h:7400/hub", ""] {
            let error = websocket_url(hub).unwrap_err();
            assert_eq!(http_url(hub), Err(error.clone()));
            assert_eq!(cancel_url(hub), Err(error.clone()));
            let shown = error.to_string();
            assert!(shown.contains("must start with http://"), "{shown}");
            assert!(
                !shown.contains("s3cret") && !shown.contains(":pw@"),
                "{shown}"
            );
        }
    }

    #[test]
    fn endpoints_sit_below_the_hub() {
        let cases = [
            (
                "http://h:1/hub",
                "http://h:1/hub/cancel",
                "http://h:1/hub/artifacts/ab",
            ),
            (
                "ws://h:1/hub/",
                "http://h:1/hub/cancel",
                "http://h:1/hub/artifacts/ab",
            ),
            (
                "wss://h/x/hub?access_token=t",
                "https://h/x/hub/cancel?access_token=t",
                "https://h/x/hub/artifacts/ab?access_token=t",
            ),
        ];
        for (hub, cancel, artifact) in cases {
            assert_eq!(cancel_url(hub).as_deref(), Ok(cancel), "{hub}");
            let http = http_url(hub).unwrap();
            assert_eq!(artifact_url(&http, "ab"), artifact, "{hub}");
        }
        assert_eq!(
            artifact_url("http://h/hub/", "ab"),
            "http://h/hub/artifacts/ab"
        );
    }

    #[test]
    fn health_is_at_the_root() {
        let cases = [
            ("http://h:1/hub", "http://h:1/healthz"),
            ("http://h:1/hub/", "http://h:1/healthz"),
            (
                "https://brave-new-words.trycloudflare.com",
                "https://brave-new-words.trycloudflare.com/healthz",
            ),
            ("https://h/", "https://h/healthz"),
        ];
        for (hub, health) in cases {
            assert_eq!(health_url(hub), health, "{hub}");
        }
    }

    /// The routes the hub serves are the paths the URL helpers build.
    #[test]
    fn routes_and_urls_agree() {
        let hub = "http://h";
        assert_eq!(
            join(&format!("{hub}{HUB}"), CANCEL_TAIL),
            format!("{hub}{CANCEL}")
        );
        assert_eq!(
            artifact_url(&format!("{hub}{HUB}"), "{sha256}"),
            format!("{hub}{ARTIFACT}")
        );
        assert_eq!(HUB_SLASH, format!("{HUB}/"));
        assert_eq!(NEGOTIATE, format!("{HUB}/negotiate"));
    }
}
