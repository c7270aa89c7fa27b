//! The user's tunnel choice: the `--tunnel` value (and bore's secret)
//! parsed into a [`TunnelKind`], checked before anything starts so a typo
//! fails at once with the forms that exist.

use std::fmt;

use super::TunnelError;

/// How to expose the hub, as chosen on the command line (see
/// [`parse_tunnel`]).
#[derive(Clone, PartialEq, Eq)]
pub enum TunnelKind {
    /// No tunnel: workers reach the hub on its local addresses.
    None,
    /// A cloudflared quick tunnel (`https://<words>.trycloudflare.com`).
    Cloudflared,
    /// `bore local` to a bore server. `server` is `HOST` or `HOST:PORT`;
    /// bore's control port is fixed at 7835, so `PORT` is the public port
    /// to ask the server for (bore's `--port`); without it the server picks
    /// one. Write IPv6 addresses in brackets.
    Bore {
        server: String,
        secret: Option<String>,
    },
    /// `sh -c COMMAND` with `PORT` set to the hub's local port; the first
    /// `http://` or `https://` URL it prints (on stdout or stderr), cut to
    /// `scheme://host[:port]`, is the public URL.
    Command(String),
}

impl fmt::Debug for TunnelKind {
    /// Never shows the bore secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelKind::None => f.write_str("None"),
            TunnelKind::Cloudflared => f.write_str("Cloudflared"),
            TunnelKind::Bore { server, secret } => f
                .debug_struct("Bore")
                .field("server", server)
                .field("secret", &secret.as_ref().map(|_| "<hidden>"))
                .finish(),
            TunnelKind::Command(command) => f.debug_tuple("Command").field(command).finish(),
        }
    }
}

/// Parses the `--tunnel` value (or `MUSTER_TUNNEL`): `none`,
/// `cloudflared`, `bore:HOST[:PORT]` or `cmd:COMMAND`. A bare `bore` is
/// refused with the form to write. `bore_secret` is bore's `--secret`
/// (`--bore-secret`, `BORE_SECRET`), handed to bore through its
/// environment, never its arguments.
pub fn parse_tunnel(value: &str, bore_secret: Option<&str>) -> Result<TunnelKind, TunnelError> {
    let value = value.trim();
    let secret = bore_secret.filter(|s| !s.is_empty()).map(str::to_owned);
    let bore = |server: &str| {
        split_bore_server(server)?;
        Ok(TunnelKind::Bore {
            server: server.to_owned(),
            secret: secret.clone(),
        })
    };
    match value {
        "none" => Ok(TunnelKind::None),
        "cloudflared" => Ok(TunnelKind::Cloudflared),
        "bore" => Err(TunnelError::BoreServerMissing),
        _ => {
            if let Some(server) = value.strip_prefix("bore:") {
                bore(server.trim())
            } else if let Some(command) = value.strip_prefix("cmd:") {
                match command.trim() {
                    "" => Err(TunnelError::EmptyCommand),
                    command => Ok(TunnelKind::Command(command.to_owned())),
                }
            } else {
                Err(TunnelError::Unknown {
                    value: value.to_owned(),
                })
            }
        }
    }
}

/// `HOST[:PORT]` (or `[IPV6][:PORT]`) into the host bore connects to and
/// the public port to ask for.
pub(super) fn split_bore_server(server: &str) -> Result<(String, Option<u16>), TunnelError> {
    let bad = |reason| TunnelError::BadBoreServer {
        server: server.to_owned(),
        reason,
    };
    let (host, port) = if let Some(rest) = server.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("expected :PORT after ']'"))?,
                ),
            ),
        }
    } else {
        match server.matches(':').count() {
            0 => (server, None),
            1 => {
                let (host, port) = server.split_once(':').unwrap_or((server, ""));
                (host, Some(port))
            }
            _ => return Err(bad("write an IPv6 address in brackets, e.g. [2001:db8::1]")),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad(
            "expected a host name or IP address, e.g. bore.example.com",
        ));
    }
    let port =
        match port {
            None => None,
            Some(port) => match port.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return Err(bad(
                    "the part after ':' must be the public port (1-65535) to ask the server for; \
                     bore's control port is always 7835",
                )),
            },
        };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tunnel_values() {
        let secret = Some("s3cret");
        for (value, expected) in [
            ("none", TunnelKind::None),
            ("cloudflared", TunnelKind::Cloudflared),
            (
                "bore:bore.example.com",
                TunnelKind::Bore {
                    server: "bore.example.com".into(),
                    secret: Some("s3cret".into()),
                },
            ),
            (
                "bore:bore.example.com:40000",
                TunnelKind::Bore {
                    server: "bore.example.com:40000".into(),
                    secret: Some("s3cret".into()),
                },
            ),
            (
                "bore:[2001:db8::1]:4000",
                TunnelKind::Bore {
                    server: "[2001:db8::1]:4000".into(),
                    secret: Some("s3cret".into()),
                },
            ),
            (
                "cmd: ngrok http $PORT ",
                TunnelKind::Command("ngrok http $PORT".into()),
            ),
        ] {
            assert_eq!(parse_tunnel(value, secret).unwrap(), expected, "{value}");
        }
        assert_eq!(
            parse_tunnel("bore:h", Some("")).unwrap(),
            TunnelKind::Bore {
                server: "h".into(),
                secret: None
            }
        );
        let err = |value| parse_tunnel(value, None).unwrap_err().to_string();
        // A bare `bore` names the form that exists (there is no flag for
        // the server alone).
        assert!(err("bore").contains("--tunnel bore:HOST[:PORT]"));
        assert!(err("ngrok").contains("use none, cloudflared, bore:HOST[:PORT] or cmd:COMMAND"));
        assert!(err("cmd:  ").contains("needs a command"));
        assert!(err("bore:host:0").contains("control port is always 7835"));
        assert!(err("bore:host:x").contains("public port"));
        assert!(err("bore:2001:db8::1").contains("brackets"));
        assert!(err("bore:").contains("expected a host"));
    }

    #[test]
    fn debug_hides_the_bore_secret() {
        let kind = parse_tunnel("bore:h", Some("s3cret")).unwrap();
        let shown = format!("{kind:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<hidden>"),
            "{shown}"
        );
    }
}
