//! Public tunnels: make the master's local hub port reachable from the other
//! runners of a CI run, through a cloudflared quick tunnel, a bore server, or
//! any command that prints a URL.
//!
//! The tunnel is a child process the [`Tunnel`] owns. It runs in its own
//! process group, and dropping the `Tunnel` kills that whole group, so it
//! dies with the master on every normal exit, an error or Ctrl-C. A master
//! killed with SIGKILL cannot clean up: then the runner's teardown ends the
//! tunnel (`PR_SET_PDEATHSIG` is not used: it fires when the *thread* that
//! spawned the child exits, and tokio's blocking threads come and go).
//!
//! [`open`] never hangs: starting, finding the URL and checking that the
//! hub answers through it all share one deadline, and every failure says
//! what the tunnel printed last.
//!
//! The parts: `choice` parses what the user asked for, `launch` says
//! what to run for it, `process` runs it in its own process group and
//! reads its output, `output` scrapes that output for the public URL, and
//! `probe` checks that the URL answers. This file holds the public API and
//! the order of the steps.

mod choice;
mod launch;
mod output;
mod probe;
mod process;

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use muster_core::wire::http::health_url;
use tokio::time::Instant;

pub use choice::{parse_tunnel, TunnelKind};

use choice::split_bore_server;
use launch::{bore, cloudflared, free_loopback_port, shell, Launch};
use output::{first_url, origin, parse_bore_line, parse_cloudflared_line};
use probe::{answers, http_client, quick_tunnel_hostname};
use process::{ProcessGuard, TunnelProcess};

/// A running tunnel. Dropping it kills the tunnel's whole process group.
pub struct Tunnel {
    public_url: String,
    _process: ProcessGuard,
}

/// Why a tunnel could not be chosen or opened. Each message says what to
/// write instead, or what the tunnel printed last.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("unknown tunnel {value:?}: use none, cloudflared, bore:HOST[:PORT] or cmd:COMMAND")]
    Unknown { value: String },
    #[error("--tunnel bore needs the bore server in the same value: write --tunnel bore:HOST[:PORT] (or MUSTER_TUNNEL=bore:HOST[:PORT]), e.g. bore:bore.example.com")]
    BoreServerMissing,
    #[error("bad bore server {server:?}: {reason}")]
    BadBoreServer {
        server: String,
        reason: &'static str,
    },
    #[error("--tunnel cmd: needs a command after the colon, e.g. cmd:'my-tunnel --port $PORT'")]
    EmptyCommand,
    #[error("{program} is not installed or not on PATH: install it, or use {alternatives}")]
    NotInstalled {
        program: String,
        alternatives: &'static str,
    },
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("could not pick a free loopback port for cloudflared's metrics server: {0}")]
    MetricsPort(io::Error),
    #[error("{tunnel} did not get ready within {}: still waiting for {waiting_for}; {output}", humantime::format_duration(*.timeout))]
    Timeout {
        tunnel: String,
        waiting_for: String,
        timeout: Duration,
        output: String,
    },
    #[error("{tunnel} exited ({status}) while waiting for {waiting_for}; {output}")]
    Exited {
        tunnel: String,
        status: String,
        waiting_for: String,
        output: String,
    },
}

/// Starts the tunnel to `http://127.0.0.1:<local_port>` and returns once
/// the hub answers `GET /healthz` through its public URL; `None` for
/// [`TunnelKind::None`]. Everything (start, URL, readiness) must happen
/// within `timeout`.
pub async fn open(
    kind: &TunnelKind,
    local_port: u16,
    timeout: Duration,
) -> Result<Option<Tunnel>, TunnelError> {
    start(kind, None, local_port, timeout).await
}

/// Like [`open`], but runs `program` instead of the `cloudflared` or `bore`
/// found on PATH. A `cmd:` tunnel always runs through `sh`.
pub async fn open_with_program(
    kind: &TunnelKind,
    program: &Path,
    local_port: u16,
    timeout: Duration,
) -> Result<Option<Tunnel>, TunnelError> {
    start(kind, Some(program.as_os_str()), local_port, timeout).await
}

impl Tunnel {
    /// The public base URL (`http(s)://host[:port]`, no path).
    pub fn url(&self) -> &str {
        &self.public_url
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// How often to look again while waiting (for the metrics server, readiness,
/// the public URL).
const POLL: Duration = Duration::from_millis(250);

async fn start(
    kind: &TunnelKind,
    program: Option<&OsStr>,
    local_port: u16,
    timeout: Duration,
) -> Result<Option<Tunnel>, TunnelError> {
    let now = Instant::now();
    // A timeout too large to add means "no limit worth counting".
    let deadline = now
        .checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
    let (mut starting, url) = match kind {
        TunnelKind::None => return Ok(None),
        TunnelKind::Cloudflared => {
            let metrics = free_loopback_port().map_err(TunnelError::MetricsPort)?;
            let mut starting = Starting::spawn(cloudflared(program, local_port, metrics))?;
            let url = starting.cloudflared_url(metrics, deadline, timeout).await?;
            starting.wait_ready(metrics, deadline, timeout).await?;
            (starting, url)
        }
        TunnelKind::Bore { server, secret } => {
            let (host, port) = split_bore_server(server)?;
            let launch = bore(program, local_port, &host, port, secret.as_deref());
            let mut starting = Starting::spawn(launch)?;
            let waiting_for = "its public port (\"listening at HOST:PORT\")";
            let remote = starting
                .wait_line(waiting_for, deadline, timeout, parse_bore_line)
                .await?;
            let url = if host.contains(':') {
                format!("http://[{host}]:{remote}")
            } else {
                format!("http://{host}:{remote}")
            };
            (starting, url)
        }
        TunnelKind::Command(command) => {
            let mut starting = Starting::spawn(shell(command, local_port))?;
            let waiting_for = "an http:// or https:// URL on its output";
            let url = starting
                .wait_line(waiting_for, deadline, timeout, |line| {
                    first_url(line).map(|url| origin(url).to_owned())
                })
                .await?;
            (starting, url)
        }
    };
    starting.wait_healthy(&url, deadline, timeout).await?;
    Ok(Some(starting.into_tunnel(url)))
}

/// A tunnel process whose URL and readiness are still awaited, with the
/// HTTP clients that probe for them.
struct Starting {
    process: TunnelProcess,
    loopback: reqwest::Client,
    public: reqwest::Client,
}

impl Starting {
    fn spawn(launch: Launch) -> Result<Starting, TunnelError> {
        Ok(Starting {
            process: TunnelProcess::spawn(launch)?,
            loopback: http_client(true),
            public: http_client(false),
        })
    }

    /// The quick tunnel's URL: from cloudflared's metrics server
    /// (`/quicktunnel`) or its log, whichever comes first.
    async fn cloudflared_url(
        &mut self,
        metrics: u16,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<String, TunnelError> {
        let waiting_for = "its https://<name>.trycloudflare.com URL";
        let endpoint = format!("http://127.0.0.1:{metrics}/quicktunnel");
        loop {
            let wake = Instant::now() + POLL;
            if let Some(url) = quick_tunnel_hostname(&self.loopback, &endpoint, deadline).await {
                return Ok(url);
            }
            while let Some(line) = self
                .process
                .step(waiting_for, deadline, timeout, wake)
                .await?
            {
                if let Some(url) = parse_cloudflared_line(&line) {
                    return Ok(url);
                }
            }
        }
    }

    /// Waits until cloudflared's `/ready` answers 200: it holds a
    /// connection to Cloudflare's edge.
    async fn wait_ready(
        &mut self,
        metrics: u16,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), TunnelError> {
        let url = format!("http://127.0.0.1:{metrics}/ready");
        let waiting_for = format!("{url} to answer 200 (a connection to Cloudflare's edge)");
        let client = self.loopback.clone();
        self.wait_probe(&waiting_for, deadline, timeout, || {
            answers(&client, &url, None, deadline)
        })
        .await
    }

    /// Waits until the hub answers `GET <url>/healthz` with 200 `ok`
    /// through the tunnel.
    async fn wait_healthy(
        &mut self,
        url: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), TunnelError> {
        let healthz = health_url(url);
        let waiting_for = format!("the hub to answer GET {healthz} with 200 ok");
        let client = self.public.clone();
        self.wait_probe(&waiting_for, deadline, timeout, || {
            answers(&client, &healthz, Some("ok"), deadline)
        })
        .await
    }

    /// Reads output until `parse` finds what it looks for in a line.
    async fn wait_line<T>(
        &mut self,
        waiting_for: &str,
        deadline: Instant,
        timeout: Duration,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, TunnelError> {
        loop {
            // Lines wake the loop; the far wake-up only bounds each step.
            let wake = Instant::now() + POLL;
            while let Some(line) = self
                .process
                .step(waiting_for, deadline, timeout, wake)
                .await?
            {
                if let Some(found) = parse(&line) {
                    return Ok(found);
                }
            }
        }
    }

    /// Runs `probe` every [`POLL`] until it says yes, still reading output
    /// and noticing an exit in between.
    async fn wait_probe<F, Fut>(
        &mut self,
        waiting_for: &str,
        deadline: Instant,
        timeout: Duration,
        probe: F,
    ) -> Result<(), TunnelError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            let wake = Instant::now() + POLL;
            if probe().await {
                return Ok(());
            }
            while self
                .process
                .step(waiting_for, deadline, timeout, wake)
                .await?
                .is_some()
            {}
        }
    }

    fn into_tunnel(self, public_url: String) -> Tunnel {
        tracing::info!(tunnel = self.process.name, url = %public_url, "tunnel open");
        Tunnel {
            public_url,
            _process: self.process.into_guard(),
        }
    }
}

#[cfg(test)]
mod fixtures {
    //! Real tunnel output, shared by the tests of the parts that read it.
    //! The fixtures under `tests/fixtures/` reproduce real output:
    //! `cloudflared-quick-tunnel.log` has the shape of `cloudflared tunnel
    //! --url` output (cloudflared prints the box with its `AsciiBox`,
    //! padding 2), `cloudflared-no-network.log` the failure when
    //! api.trycloudflare.com is unreachable, and `bore-local.log` is what
    //! `bore local` 0.6.0 printed (with colours) against a local
    //! `bore server`.

    pub(super) const QUICK_TUNNEL_LOG: &str =
        include_str!("../../tests/fixtures/cloudflared-quick-tunnel.log");
    pub(super) const NO_NETWORK_LOG: &str =
        include_str!("../../tests/fixtures/cloudflared-no-network.log");
    pub(super) const BORE_LOG: &str = include_str!("../../tests/fixtures/bore-local.log");
    pub(super) const QUICK_URL: &str = "https://solar-quiet-harbor-lantern.trycloudflare.com";
}

#[cfg(test)]
mod tests {
    //! `open` end to end, with fake tunnel programs (shell scripts) and
    //! local servers standing in for the hub and cloudflared's metrics.

    use super::fixtures::{NO_NETWORK_LOG, QUICK_TUNNEL_LOG, QUICK_URL};
    use super::*;
    use std::path::PathBuf;

    /// A fake program (a shell script) in a temp dir.
    fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A fake cloudflared that writes its arguments to `args`, prints the
    /// fixture to stderr and then waits.
    fn fake_cloudflared(dir: &tempfile::TempDir, fixture: &str, then: &str) -> PathBuf {
        let log = dir.path().join("output.log");
        std::fs::write(&log, fixture).unwrap();
        let args = dir.path().join("args");
        script(
            dir,
            "cloudflared",
            &format!(
                "echo \"$@\" > {}\ncat {} >&2\n{then}",
                args.display(),
                log.display()
            ),
        )
    }

    /// A server on loopback answering `/healthz` with `ok`, and (standing in
    /// for cloudflared's metrics server) `/ready` and `/quicktunnel`.
    async fn local_server(listener: tokio::net::TcpListener, hostname: &'static str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0; 2048];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let body = if request.starts_with("GET /healthz ") {
                    "ok".to_owned()
                } else if request.starts_with("GET /ready ") {
                    "{\"status\":200,\"readyConnections\":1}".to_owned()
                } else if request.starts_with("GET /quicktunnel ") {
                    format!("{{\"hostname\":\"{hostname}\"}}")
                } else {
                    String::new()
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    }

    async fn serve(hostname: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(local_server(listener, hostname));
        port
    }

    /// Whether a process is gone (or a zombie waiting to be reaped).
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    async fn wait_gone(pid: &str) -> bool {
        for _ in 0..100 {
            if gone(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn command_tunnel_gives_its_url_and_dies_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let port = serve("").await;
        let pid_file = dir.path().join("pid");
        let kind = TunnelKind::Command(format!(
            "sleep 30 & echo $! > {}; echo \"tunnel up: http://127.0.0.1:$PORT/hub\"; sleep 30",
            pid_file.display()
        ));
        let tunnel = open(&kind, port, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tunnel.url(), format!("http://127.0.0.1:{port}"));
        let grandchild = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_owned();
        assert!(!gone(&grandchild));
        drop(tunnel);
        assert!(
            wait_gone(&grandchild).await,
            "the tunnel's child {grandchild} outlived the tunnel"
        );
    }

    #[tokio::test]
    async fn none_opens_nothing() {
        assert!(open(&TunnelKind::None, 1, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn command_without_url_times_out_with_its_last_lines() {
        let kind = TunnelKind::Command(
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; done; sleep 30".into(),
        );
        let started = std::time::Instant::now();
        let err = open(&kind, 1, Duration::from_millis(700))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = err.to_string();
        assert!(matches!(err, TunnelError::Timeout { .. }), "{text}");
        assert!(text.starts_with("the tunnel command did not get ready within 700ms: still waiting for an http:// or https:// URL"), "{text}");
        assert!(
            text.contains("line 10") && text.contains("line 3") && !text.contains("line 2\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn command_that_cannot_be_reached_times_out_on_healthz() {
        // A URL nobody answers on (the port was free a moment ago).
        let free = free_loopback_port().unwrap();
        let kind = TunnelKind::Command(format!("echo http://127.0.0.1:{free}; sleep 30"));
        let text = open(&kind, 1, Duration::from_millis(800))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(&format!(
                "the hub to answer GET http://127.0.0.1:{free}/healthz with 200 ok"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn cloudflared_missing_says_what_to_do() {
        let err = open_with_program(
            &TunnelKind::Cloudflared,
            Path::new("/nonexistent/cloudflared"),
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/cloudflared is not installed or not on PATH: install it, or use --tunnel bore:HOST / cmd:... / none"
        );
        let bore = TunnelKind::Bore {
            server: "h".into(),
            secret: None,
        };
        let err = open_with_program(
            &bore,
            Path::new("/nonexistent/bore"),
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("cargo install bore-cli --locked"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cloudflared_that_exits_early_reports_status_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let program = fake_cloudflared(&dir, NO_NETWORK_LOG, "exit 1");
        let err = open_with_program(
            &TunnelKind::Cloudflared,
            &program,
            1,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TunnelError::Exited { .. }), "{text}");
        assert!(text.starts_with("cloudflared exited (exit status: 1) while waiting for its https://<name>.trycloudflare.com URL; its last output:"), "{text}");
        assert!(text.contains("failed to request quick Tunnel"), "{text}");
    }

    #[tokio::test]
    async fn cloudflared_without_url_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let disclaimer: String = NO_NETWORK_LOG
            .lines()
            .take(2)
            .map(|l| format!("{l}\n"))
            .collect();
        let program = fake_cloudflared(&dir, &disclaimer, "exec sleep 30");
        let err = open_with_program(
            &TunnelKind::Cloudflared,
            &program,
            1,
            Duration::from_millis(600),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("cloudflared did not get ready within 600ms: still waiting for its https://<name>.trycloudflare.com URL; its last output:"), "{text}");
        assert!(
            text.ends_with("INF Requesting new quick Tunnel on trycloudflare.com..."),
            "{text}"
        );
    }

    /// The metrics port cloudflared was told to use, from the fake's `args`.
    async fn metrics_port(dir: &tempfile::TempDir) -> u16 {
        for _ in 0..250 {
            if let Ok(args) = std::fs::read_to_string(dir.path().join("args")) {
                if let Some((_, port)) = args.trim().rsplit_once("--metrics 127.0.0.1:") {
                    return port.parse().unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the fake cloudflared never ran");
    }

    /// With a metrics server answering (played by the test), `open` gets
    /// past the URL and `/ready` and then waits for the public URL, which
    /// cannot answer here: the error names it.
    async fn cloudflared_up_to_the_public_url(fixture: &str, hostname: &'static str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let program = fake_cloudflared(&dir, fixture, "exec sleep 30");
        let opening = tokio::spawn(async move {
            open_with_program(
                &TunnelKind::Cloudflared,
                &program,
                4321,
                Duration::from_secs(2),
            )
            .await
        });
        let metrics = metrics_port(&dir).await;
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert_eq!(
            args.trim(),
            format!(
                "tunnel --no-autoupdate --url http://127.0.0.1:4321 --metrics 127.0.0.1:{metrics}"
            )
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", metrics))
            .await
            .unwrap();
        tokio::spawn(local_server(listener, hostname));
        opening.await.unwrap().unwrap_err().to_string()
    }

    #[tokio::test]
    async fn cloudflared_url_from_its_log() {
        let text = cloudflared_up_to_the_public_url(QUICK_TUNNEL_LOG, "").await;
        assert!(
            text.contains(&format!(
                "still waiting for the hub to answer GET {QUICK_URL}/healthz with 200 ok"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn cloudflared_url_from_its_metrics_server() {
        let disclaimer: String = NO_NETWORK_LOG
            .lines()
            .take(2)
            .map(|l| format!("{l}\n"))
            .collect();
        let text =
            cloudflared_up_to_the_public_url(&disclaimer, "brave-new-words.trycloudflare.com")
                .await;
        assert!(
            text.contains("GET https://brave-new-words.trycloudflare.com/healthz"),
            "{text}"
        );
    }
}
