//! What to run for each kind of tunnel: program, arguments and environment
//! (bore's secret goes through the environment, never the arguments), and
//! what to suggest when the program is missing.

use std::ffi::{OsStr, OsString};
use std::io;

/// What to run for one tunnel.
pub(super) struct Launch {
    /// How errors name the tunnel.
    pub(super) name: &'static str,
    pub(super) program: OsString,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(&'static str, String)>,
    pub(super) env_remove: Vec<&'static str>,
    /// Removed from every output line, should the tunnel ever print it.
    pub(super) secret: Option<String>,
    /// For the error when the program is missing.
    pub(super) alternatives: Option<&'static str>,
}

pub(super) fn cloudflared(program: Option<&OsStr>, local_port: u16, metrics_port: u16) -> Launch {
    Launch {
        name: "cloudflared",
        program: program.unwrap_or(OsStr::new("cloudflared")).to_owned(),
        args: vec![
            "tunnel".into(),
            "--no-autoupdate".into(),
            "--url".into(),
            format!("http://127.0.0.1:{local_port}"),
            "--metrics".into(),
            format!("127.0.0.1:{metrics_port}"),
        ],
        env: Vec::new(),
        env_remove: Vec::new(),
        secret: None,
        alternatives: Some("--tunnel bore:HOST / cmd:... / none"),
    }
}

pub(super) fn bore(
    program: Option<&OsStr>,
    local_port: u16,
    host: &str,
    port: Option<u16>,
    secret: Option<&str>,
) -> Launch {
    let mut args = vec![
        "local".into(),
        local_port.to_string(),
        "--local-host".into(),
        "127.0.0.1".into(),
        "--to".into(),
        host.to_owned(),
    ];
    if let Some(port) = port {
        args.extend(["--port".into(), port.to_string()]);
    }
    // No colours, and no backtrace under an error (anyhow follows
    // RUST_BACKTRACE otherwise): the last lines should be the message.
    let mut env = vec![
        ("NO_COLOR", "1".to_owned()),
        ("RUST_LIB_BACKTRACE", "0".to_owned()),
    ];
    let mut env_remove = vec![];
    match secret {
        // Through the environment, so it does not show in `ps`.
        Some(secret) => env.push(("BORE_SECRET", secret.to_owned())),
        None => env_remove.push("BORE_SECRET"),
    }
    Launch {
        name: "bore",
        program: program.unwrap_or(OsStr::new("bore")).to_owned(),
        args,
        env,
        env_remove,
        secret: secret.map(str::to_owned),
        alternatives: Some("--tunnel cloudflared / cmd:... / none (bore installs with `cargo install bore-cli --locked`)"),
    }
}

pub(super) fn shell(command: &str, local_port: u16) -> Launch {
    Launch {
        name: "the tunnel command",
        program: "sh".into(),
        args: vec!["-c".into(), command.to_owned()],
        env: vec![("PORT", local_port.to_string())],
        env_remove: Vec::new(),
        secret: None,
        alternatives: None,
    }
}

/// Asks the OS for a free loopback port and releases it, for cloudflared's
/// metrics server.
pub(super) fn free_loopback_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
