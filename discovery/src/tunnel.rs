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

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

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

/// A running tunnel. Dropping it kills the tunnel's whole process group.
pub struct Tunnel {
    public_url: String,
    // Dropped in this order: the group is killed before the child handle
    // (whose own kill-on-drop then finds it dead) is released.
    _group: ProcessGroup,
    _child: Child,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("unknown tunnel {value:?}: use none, cloudflared, bore:HOST[:PORT] or cmd:COMMAND")]
    Unknown { value: String },
    #[error("--tunnel bore needs the bore server: write bore:HOST[:PORT], or pass the server separately")]
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

/// Parses the `--tunnel` value: `none`, `cloudflared`, `bore:HOST[:PORT]`,
/// `bore` (then `bore_server` names the server; an inline `bore:HOST` wins
/// over it) or `cmd:COMMAND`. `bore_secret` is bore's `--secret`, handed to
/// bore through its environment, never its arguments.
pub fn parse_tunnel(
    value: &str,
    bore_server: Option<&str>,
    bore_secret: Option<&str>,
) -> Result<TunnelKind, TunnelError> {
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
        "bore" => match bore_server.map(str::trim).filter(|s| !s.is_empty()) {
            Some(server) => bore(server),
            None => Err(TunnelError::BoreServerMissing),
        },
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

/// The `https://<name>.trycloudflare.com` URL on a line of cloudflared's
/// output, if the line carries one standing alone (as in the box cloudflared
/// prints). Other URLs (the disclaimer's links to cloudflare.com, the
/// `https://api.trycloudflare.com/tunnel` endpoint in error lines) are not it.
pub fn parse_cloudflared_line(line: &str) -> Option<String> {
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
pub fn parse_bore_line(line: &str) -> Option<u16> {
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
pub fn first_url(line: &str) -> Option<&str> {
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

// ---------------------------------------------------------------------------

/// How often to look again while waiting (for the metrics server, readiness,
/// the public URL).
const POLL: Duration = Duration::from_millis(250);
/// The longest a single HTTP probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How many of the tunnel's last output lines an error shows.
const LAST_LINES: usize = 8;
/// Output lines are cut to this many characters.
const MAX_LINE: usize = 500;

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

/// What to run for one tunnel.
struct Launch {
    /// How errors name the tunnel.
    name: &'static str,
    program: OsString,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    env_remove: Vec<&'static str>,
    /// Removed from every output line, should the tunnel ever print it.
    secret: Option<String>,
    /// For the error when the program is missing.
    alternatives: Option<&'static str>,
}

fn cloudflared(program: Option<&OsStr>, local_port: u16, metrics_port: u16) -> Launch {
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

fn bore(
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

fn shell(command: &str, local_port: u16) -> Launch {
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

/// A tunnel process whose URL and readiness are still awaited.
struct Starting {
    name: &'static str,
    group: ProcessGroup,
    child: Child,
    /// Output lines from both pipes, while starting.
    lines: mpsc::UnboundedReceiver<String>,
    lines_open: bool,
    recent: VecDeque<String>,
    loopback: reqwest::Client,
    public: reqwest::Client,
}

impl Starting {
    fn spawn(launch: Launch) -> Result<Starting, TunnelError> {
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in &launch.env_remove {
            command.env_remove(name);
        }
        #[cfg(unix)]
        command.process_group(0);
        let program = launch.program.to_string_lossy().into_owned();
        let mut child = command
            .spawn()
            .map_err(|source| match launch.alternatives {
                Some(alternatives) if source.kind() == io::ErrorKind::NotFound => {
                    TunnelError::NotInstalled {
                        program,
                        alternatives,
                    }
                }
                _ => TunnelError::Spawn { program, source },
            })?;
        let group = ProcessGroup(child.id());
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            forward(out, launch.name, launch.secret.clone(), tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, launch.name, launch.secret, tx);
        }
        Ok(Starting {
            name: launch.name,
            group,
            child,
            lines,
            lines_open: true,
            recent: VecDeque::new(),
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
            while let Some(line) = self.step(waiting_for, deadline, timeout, wake).await? {
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
        let healthz = format!("{url}/healthz");
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
            while let Some(line) = self.step(waiting_for, deadline, timeout, wake).await? {
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
                .step(waiting_for, deadline, timeout, wake)
                .await?
                .is_some()
            {}
        }
    }

    /// Waits for the next output line (`Some`), or until `wake` (`None`);
    /// fails if the deadline passes or the process exits.
    async fn step(
        &mut self,
        waiting_for: &str,
        deadline: Instant,
        timeout: Duration,
        wake: Instant,
    ) -> Result<Option<String>, TunnelError> {
        tokio::select! {
            biased;
            line = self.lines.recv(), if self.lines_open => match line {
                Some(line) => {
                    self.remember(&line);
                    Ok(Some(line))
                }
                None => {
                    self.lines_open = false;
                    Ok(None)
                }
            },
            status = self.child.wait() => {
                let status = match status {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("its status is unknown: {e}"),
                };
                self.drain().await;
                Err(TunnelError::Exited {
                    tunnel: self.name.to_owned(),
                    status,
                    waiting_for: waiting_for.to_owned(),
                    output: self.output(),
                })
            }
            _ = sleep_until(wake.min(deadline)) => {
                if Instant::now() < deadline {
                    return Ok(None);
                }
                self.drain().await;
                Err(TunnelError::Timeout {
                    tunnel: self.name.to_owned(),
                    waiting_for: waiting_for.to_owned(),
                    timeout,
                    output: self.output(),
                })
            }
        }
    }

    /// Takes in what the process printed last, waiting briefly for the
    /// pipes to close after an exit.
    async fn drain(&mut self) {
        let grace = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(grace);
        while self.lines_open {
            tokio::select! {
                line = self.lines.recv() => match line {
                    Some(line) => self.remember(&line),
                    None => self.lines_open = false,
                },
                _ = &mut grace => break,
            }
        }
    }

    fn remember(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if self.recent.len() == LAST_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.to_owned());
    }

    /// The last lines, for an error message.
    fn output(&self) -> String {
        if self.recent.is_empty() {
            return "it printed nothing".to_owned();
        }
        let mut out = "its last output:".to_owned();
        for line in &self.recent {
            out.push_str("\n    ");
            out.push_str(line);
        }
        out
    }

    fn into_tunnel(self, public_url: String) -> Tunnel {
        tracing::info!(tunnel = self.name, url = %public_url, "tunnel open");
        // Dropping the receiver leaves the readers only logging.
        Tunnel {
            public_url,
            _group: self.group,
            _child: self.child,
        }
    }
}

/// Reads one pipe line by line: to the channel while the tunnel starts,
/// and to the debug log for as long as the process runs (the pipe must be
/// drained, or the tunnel blocks on a full pipe).
fn forward(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    secret: Option<String>,
    tx: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = clean_line(&buf, secret.as_deref());
            tracing::debug!(tunnel = name, "{line}");
            // Fails once the tunnel is open and nobody listens any more.
            let _ = tx.send(line);
        }
    });
}

/// Kills the whole process group on drop (the tunnel and anything it
/// started).
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(id) = self.0.and_then(|id| i32::try_from(id).ok()) {
            // The group leader is our child, which is never reaped before
            // this runs, so the id cannot belong to anyone else yet.
            kill_group(id);
        }
    }
}

/// `killpg(pgid, SIGKILL)`.
#[cfg(unix)]
fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    // Never 0 or 1: those would hit our own group or init's.
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

fn http_client(loopback: bool) -> reqwest::Client {
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
async fn answers(
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
async fn quick_tunnel_hostname(
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

/// `<name>.trycloudflare.com`, but not cloudflared's own API host.
fn is_quick_tunnel_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match host.strip_suffix(".trycloudflare.com") {
        Some(name) => !name.is_empty() && name != "api" && !name.starts_with('.'),
        None => false,
    }
}

/// `HOST[:PORT]` (or `[IPV6][:PORT]`) into the host bore connects to and
/// the public port to ask for.
fn split_bore_server(server: &str) -> Result<(String, Option<u16>), TunnelError> {
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

/// Asks the OS for a free loopback port and releases it, for cloudflared's
/// metrics server.
fn free_loopback_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The `scheme://authority` part of a URL.
fn origin(url: &str) -> &str {
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
fn clean_line(raw: &[u8], secret: Option<&str>) -> String {
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
    //! The fixtures under `tests/fixtures/` reproduce real output:
    //! `cloudflared-quick-tunnel.log` has the shape of `cloudflared tunnel
    //! --url` output (cloudflared prints the box with its `AsciiBox`,
    //! padding 2), `cloudflared-no-network.log` the failure when
    //! api.trycloudflare.com is unreachable, and `bore-local.log` is what
    //! `bore local` 0.6.0 printed (with colours) against a local
    //! `bore server`.

    use super::*;
    use std::path::PathBuf;

    const QUICK_TUNNEL_LOG: &str = include_str!("../tests/fixtures/cloudflared-quick-tunnel.log");
    const NO_NETWORK_LOG: &str = include_str!("../tests/fixtures/cloudflared-no-network.log");
    const BORE_LOG: &str = include_str!("../tests/fixtures/bore-local.log");
    const QUICK_URL: &str = "https://solar-quiet-harbor-lantern.trycloudflare.com";

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
    fn parses_tunnel_values() {
        let secret = Some("s3cret");
        for (value, server, expected) in [
            ("none", None, TunnelKind::None),
            ("cloudflared", None, TunnelKind::Cloudflared),
            (
                "bore:bore.example.com",
                None,
                TunnelKind::Bore {
                    server: "bore.example.com".into(),
                    secret: Some("s3cret".into()),
                },
            ),
            (
                "bore:bore.example.com:40000",
                Some("other"),
                TunnelKind::Bore {
                    server: "bore.example.com:40000".into(),
                    secret: Some("s3cret".into()),
                },
            ),
            (
                "bore",
                Some("10.0.0.1"),
                TunnelKind::Bore {
                    server: "10.0.0.1".into(),
                    secret: Some("s3cret".into()),
                },
            ),
            (
                "bore:[2001:db8::1]:4000",
                None,
                TunnelKind::Bore {
                    server: "[2001:db8::1]:4000".into(),
                    secret: Some("s3cret".into()),
                },
            ),
            (
                "cmd: ngrok http $PORT ",
                None,
                TunnelKind::Command("ngrok http $PORT".into()),
            ),
        ] {
            assert_eq!(
                parse_tunnel(value, server, secret).unwrap(),
                expected,
                "{value}"
            );
        }
        assert_eq!(
            parse_tunnel("bore:h", None, Some("")).unwrap(),
            TunnelKind::Bore {
                server: "h".into(),
                secret: None
            }
        );
        let err = |value, server| parse_tunnel(value, server, None).unwrap_err().to_string();
        assert!(err("bore", None).contains("bore:HOST[:PORT]"));
        assert!(
            err("ngrok", None).contains("use none, cloudflared, bore:HOST[:PORT] or cmd:COMMAND")
        );
        assert!(err("cmd:  ", None).contains("needs a command"));
        assert!(err("bore:host:0", None).contains("control port is always 7835"));
        assert!(err("bore:host:x", None).contains("public port"));
        assert!(err("bore:2001:db8::1", None).contains("brackets"));
        assert!(err("bore:", None).contains("expected a host"));
    }

    #[test]
    fn debug_hides_the_bore_secret() {
        let kind = parse_tunnel("bore:h", None, Some("s3cret")).unwrap();
        let shown = format!("{kind:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<hidden>"),
            "{shown}"
        );
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

    // ---- processes -------------------------------------------------------

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
