//! Reading the tunnel program's output: each line cleaned (no colours, no
//! secret, bounded length), and the public URL or port scraped from it,
//! since the tunnel programs have no other way to say where they listen.

/// Output lines are cut to this many characters.
const MAX_LINE: usize = 500;

/// The `https://<name>.trycloudflare.com` URL on a line of cloudflared's
/// output, if the line carries one standing alone (as in the box cloudflared
/// prints). Other URLs (the disclaimer's links to cloudflare.com, the
/// `https://api.trycloudflare.com/tunnel` endpoint in error lines) are not it.
pub(super) fn parse_cloudflared_line(line: &str) -> Option<String> {
    line.match_indices("https://").find_map(|(at, scheme)| {
        let rest = &line[at + scheme.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
            .unwrap_or(rest.len());
        let (host, after) = rest.split_at(end);
        let alone = after.is_empty() || after.starts_with(|c: char| c.is_whitespace() || c == '|');
        (alone && is_quick_tunnel_host(host)).then(|| format!("https://{host}"))
    })
}

/// The public port on a line of `bore local`'s output (`listening at
/// HOST:PORT`, or `remote_port=PORT`), with or without colours.
pub(super) fn parse_bore_line(line: &str) -> Option<u16> {
    let line = strip_ansi(line);
    let port = if let Some((_, rest)) = line.split_once("listening at ") {
        rest.split_whitespace().next()?.rsplit_once(':')?.1
    } else {
        let (_, rest) = line.split_once("remote_port=")?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        &rest[..end]
    };
    port.parse().ok().filter(|&p| p != 0)
}

/// The first `http://` or `https://` URL in `line`, without trailing
/// punctuation.
pub(super) fn first_url(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(at) = find_scheme(&line[from..]).map(|at| at + from) {
        let rest = &line[at..];
        let end = rest
            .find(|c: char| c.is_whitespace() || "\"'<>|`(){},".contains(c))
            .unwrap_or(rest.len());
        let url = rest[..end].trim_end_matches(['.', ':', ';', '!', '?']);
        let scheme_len = if url.starts_with("https://") { 8 } else { 7 };
        if url.len() > scheme_len {
            return Some(url);
        }
        from = at + scheme_len;
    }
    None
}

/// `<name>.trycloudflare.com`, but not cloudflared's own API host.
pub(super) fn is_quick_tunnel_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match host.strip_suffix(".trycloudflare.com") {
        Some(name) => !name.is_empty() && name != "api" && !name.starts_with('.'),
        None => false,
    }
}

/// The `scheme://authority` part of a URL.
pub(super) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| i + after_scheme);
    &url[..end]
}

fn find_scheme(text: &str) -> Option<usize> {
    match (text.find("http://"), text.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One output line as text: lossy UTF-8, no colours, no line ending, the
/// secret (if any) replaced, cut to [`MAX_LINE`] characters.
pub(super) fn clean_line(raw: &[u8], secret: Option<&str>) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut line = strip_ansi(text.trim_end_matches(['\r', '\n']));
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        line = line.replace(secret, "<secret>");
    }
    if let Some((cut, _)) = line.char_indices().nth(MAX_LINE) {
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// Removes ANSI escape sequences (`ESC [ ... final`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.clone().next() == Some('[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::fixtures::{BORE_LOG, NO_NETWORK_LOG, QUICK_TUNNEL_LOG, QUICK_URL};

    #[test]
    fn cloudflared_url_is_the_one_in_the_box() {
        let found: Vec<String> = QUICK_TUNNEL_LOG
            .lines()
            .filter_map(parse_cloudflared_line)
            .collect();
        assert_eq!(found, [QUICK_URL]);
    }

    #[test]
    fn cloudflared_disclaimer_and_errors_carry_no_tunnel_url() {
        let disclaimer = QUICK_TUNNEL_LOG.lines().next().unwrap();
        assert!(disclaimer.contains("https://www.cloudflare.com/website-terms/"));
        assert_eq!(parse_cloudflared_line(disclaimer), None);
        assert_eq!(
            NO_NETWORK_LOG.lines().find_map(parse_cloudflared_line),
            None
        );
        for line in [
            "see https://api.trycloudflare.com for details",
            "https://.trycloudflare.com |",
            "https://trycloudflare.com",
            "https://x.trycloudflare.com.evil.example",
            "https://x.trycloudflare.com:8443",
        ] {
            assert_eq!(parse_cloudflared_line(line), None, "{line}");
        }
        assert_eq!(
            parse_cloudflared_line("INF |  https://A-b.TryCloudflare.com|").as_deref(),
            Some("https://A-b.TryCloudflare.com")
        );
    }

    #[test]
    fn bore_port_from_its_output() {
        let ports: Vec<u16> = BORE_LOG.lines().filter_map(parse_bore_line).collect();
        assert_eq!(ports, [35429, 35429]);
        for (line, port) in [
            ("2026-01-01T00:00:00.000000Z  INFO bore_cli::client: listening at bore.pub:40123", Some(40123)),
            ("2026-01-01T00:00:00.000000Z  INFO bore_cli::client: connected to server remote_port=40123", Some(40123)),
            ("2026-01-01T00:00:00.000000Z  INFO bore_cli::server: server listening addr=0.0.0.0", None),
            ("Error: could not connect to bore.pub:7835", None),
            ("listening at host:0", None),
        ] {
            assert_eq!(parse_bore_line(line), port, "{line}");
        }
    }

    #[test]
    fn first_url_on_a_line() {
        for (line, url) in [
            (
                "tunnel ready at https://abc.example.com/ (press ctrl-c)",
                Some("https://abc.example.com/"),
            ),
            (
                "Forwarding: http://127.0.0.1:8080.",
                Some("http://127.0.0.1:8080"),
            ),
            ("\"url\":\"https://x.example\",", Some("https://x.example")),
            (
                "http:// nothing, then http://[::1]:9000/hub",
                Some("http://[::1]:9000/hub"),
            ),
            (
                "|  https://solar.trycloudflare.com  |",
                Some("https://solar.trycloudflare.com"),
            ),
            ("no url here, ftp://x.example", None),
        ] {
            assert_eq!(first_url(line), url, "{line}");
        }
        assert_eq!(
            origin("https://abc.example.com/some/path?q"),
            "https://abc.example.com"
        );
        assert_eq!(origin("http://[::1]:9000"), "http://[::1]:9000");
    }

    #[test]
    fn lines_are_cleaned() {
        let raw = b"\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m token=s3cret\r\n";
        assert_eq!(clean_line(raw, Some("s3cret")), "2026  INFO token=<secret>");
        assert_eq!(
            clean_line("x".repeat(600).as_bytes(), None).chars().count(),
            MAX_LINE + 1
        );
    }
}
