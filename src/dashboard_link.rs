//! The dashboard's address as the master prints it: the root of a hub URL
//! (the loopback one, or the public tunnel's in CI) with a token a
//! person can paste into a browser. The page trades it for a cookie and
//! drops it from the address bar.

/// `hub_url`'s root with `?access_token=TOKEN` (percent-encoded), e.g.
/// `https://x.example/hub` → `https://x.example/?access_token=…`.
pub fn dashboard_link(hub_url: &str, token: &str) -> String {
    let without_query = hub_url.split(['?', '#']).next().unwrap_or(hub_url);
    let trimmed = without_query.trim_end_matches('/');
    let base = trimmed.strip_suffix("/hub").unwrap_or(trimmed);
    let base = if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/?access_token={}", encode(token))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_the_hub_root_with_the_token() {
        assert_eq!(
            dashboard_link("http://127.0.0.1:7400/hub", "abc"),
            "http://127.0.0.1:7400/?access_token=abc"
        );
        assert_eq!(
            dashboard_link("wss://x.example/hub/?access_token=old", "a b&c"),
            "https://x.example/?access_token=a%20b%26c"
        );
        assert_eq!(
            dashboard_link("http://10.0.0.2:9000", "t"),
            "http://10.0.0.2:9000/?access_token=t"
        );
    }
}
