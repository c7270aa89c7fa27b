//! Helpers for end-to-end tests of the built `muster` binary: write a
//! pipeline into a temporary folder, run commands with a time bound, and
//! start a hub whose URL is read from its output.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_muster");

/// Upper bound for any one command in these tests; a hang fails the test.
pub const LIMIT: Duration = Duration::from_secs(60);

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// The final table's row for `module`, split into cells.
    pub fn row(&self, module: &str) -> Vec<String> {
        self.stdout
            .lines()
            .rev()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.first().map(String::as_str) == Some(module) && cells.len() == 5)
            .unwrap_or_else(|| panic!("no table row for {module} in:\n{}", self.stdout))
    }

    pub fn status_of(&self, module: &str) -> String {
        let row = self.row(module);
        row[1].clone()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// A folder holding `muster.toml` with `text`.
pub fn pipeline(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("muster.toml");
    std::fs::write(&file, text).expect("write pipeline");
    (dir, file)
}

pub fn muster(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("NO_COLOR", "1").stdin(Stdio::null());
    command
}

/// A `muster worker` process named `name`, joined to `url` with `token`
/// (from the environment, as CI would give it), plus `extra` arguments.
pub fn worker(url: &str, token: &str, name: &str, extra: &[&str]) -> Child {
    muster(&["worker", "--hub", url, "--name", name])
        .args(extra)
        .env("MUSTER_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

/// Runs to completion within [`LIMIT`], capturing output.
pub fn run(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn muster");
    wait(child, LIMIT)
}

/// Waits for a child with piped output, killing it if it outlives `limit`.
pub fn wait(child: Child, limit: Duration) -> Output {
    wait_all(vec![child], limit).remove(0)
}

/// Waits for several children together, killing all of them if any
/// outlives `limit`; the panic then shows every child's output, since the
/// one that hangs is often waiting on another.
pub fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let deadline = Instant::now() + limit;
    let mut pending: Vec<_> = children
        .into_iter()
        .map(|mut child| {
            let stdout = drain(child.stdout.take());
            let stderr = drain(child.stderr.take());
            (child, stdout, stderr, None)
        })
        .collect();
    let mut timed_out = false;
    loop {
        for (child, _, _, status) in &mut pending {
            if status.is_none() {
                *status = child.try_wait().expect("wait");
            }
        }
        if pending.iter().all(|(_, _, _, status)| status.is_some()) {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            for (child, _, _, status) in &mut pending {
                if status.is_none() {
                    let _ = child.kill();
                    *status = Some(child.wait().expect("wait after kill"));
                }
            }
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let outputs: Vec<Output> = pending
        .into_iter()
        .map(|(_, stdout, stderr, status)| Output {
            status: status.expect("every child ended"),
            stdout: stdout.recv().unwrap_or_default(),
            stderr: stderr.recv().unwrap_or_default(),
        })
        .collect();
    if timed_out {
        let shown: Vec<String> = outputs
            .iter()
            .enumerate()
            .map(|(i, out)| format!("=== process {i}\n{out}"))
            .collect();
        panic!(
            "not every command finished within {limit:?} (those still running were killed):\n{}",
            shown.join("\n")
        );
    }
    outputs
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        let _ = tx.send(text);
    });
    rx
}

/// A `muster hub` process whose first line (the URL) has been read. It is
/// killed if the test ends without `finish`.
pub struct HubProcess {
    child: Option<Child>,
    pub url: String,
    rest: mpsc::Receiver<String>,
}

impl HubProcess {
    /// Starts `muster hub FILE --token TOKEN` plus `extra` arguments.
    pub fn start(file: &Path, token: &str, extra: &[&str]) -> HubProcess {
        Self::start_with_env(file, token, extra, &[])
    }

    /// [`HubProcess::start`] with extra environment variables.
    pub fn start_with_env(
        file: &Path,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> HubProcess {
        let mut command = muster(&["hub", file.to_str().unwrap(), "--token", token]);
        command.args(extra).envs(env.iter().copied());
        HubProcess::spawn(command)
    }

    /// Runs `command`, a `muster hub` (perhaps started through a shell),
    /// and reads the URL it prints first.
    pub fn spawn(mut command: Command) -> HubProcess {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn hub");
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first) = mpsc::channel();
        let (rest_tx, rest) = mpsc::channel();
        thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = first_tx.send(line);
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            let _ = rest_tx.send(text);
        });
        let mut hub = HubProcess {
            child: Some(child),
            url: String::new(),
            rest,
        };
        let first = first.recv_timeout(LIMIT).expect("the hub prints its URL");
        hub.url = first
            .trim()
            .strip_prefix("hub url: ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        hub
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the hub to exit and returns all it printed after the URL.
    pub fn finish(mut self) -> Output {
        let mut child = self.child.take().expect("finish is called once");
        let stderr = drain(child.stderr.take());
        let out = wait(child, LIMIT);
        Output {
            status: out.status,
            stdout: self.rest.recv().unwrap_or_default(),
            stderr: stderr.recv().unwrap_or_default(),
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three modules that each leave a `sleep 60` running (its pid in
/// `one.pid`, `two.pid`, `three.pid`) and one that needs the first: for
/// tests that cancel a run and check every process is gone.
pub const SLEEPERS: &str = r#"
[modules.one]
run = "sleep 60 & echo $! > one.pid; wait"
[modules.two]
run = "sleep 60 & echo $! > two.pid; wait"
[modules.three]
run = "sleep 60 & echo $! > three.pid; wait"
[modules.after]
needs = ["one"]
run = "echo never"
"#;

/// Waits (within [`LIMIT`]) for a file to hold a whole line; returns it
/// trimmed.
pub fn wait_for_line(path: &Path) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// True while a process with this pid exists.
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A real `redis-server` on a free loopback port, with no persistence;
/// killed on drop. `scripts/test.sh` installs redis-server.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts it with extra arguments, e.g. `["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::launch(false, extra)
    }

    /// Starts it on `port`, picked earlier, without waiting for it: for
    /// tests that point muster at a Redis that is not up yet.
    pub fn start_late(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = spawn_redis(&["--port".into(), port.to_string()], dir.path(), extra);
        RedisServer {
            child,
            port,
            _dir: dir,
        }
    }

    /// Starts it speaking only TLS (`rediss://`), with a self-signed
    /// certificate made by `openssl` for 127.0.0.1.
    pub fn start_tls(extra: &[&str]) -> RedisServer {
        Self::launch(true, extra)
    }

    /// Starts it on a free port; a port taken between [`free_port`] and
    /// redis-server's bind by another test's listener means another try.
    fn launch(tls: bool, extra: &[&str]) -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = Self::launch_once(tls, extra) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn launch_once(tls: bool, extra: &[&str]) -> Option<RedisServer> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let mut listen: Vec<String> = vec!["--port".into(), port.to_string()];
        if tls {
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=127.0.0.1"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(made.success(), "openssl made no certificate");
            listen = vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ];
            for (flag, path) in [
                ("--tls-cert-file", &cert),
                ("--tls-key-file", &key),
                ("--tls-ca-cert-file", &cert),
            ] {
                listen.push(flag.into());
                listen.push(path.display().to_string());
            }
            listen.extend(["--tls-auth-clients".into(), "no".into()]);
        }
        let child = spawn_redis(&listen, dir.path(), extra);
        let mut server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        // Ready when it answers as Redis does (plain) or accepts (TLS);
        // gone when its bind failed.
        let deadline = Instant::now() + LIMIT;
        loop {
            if server.child.try_wait().expect("wait").is_some() {
                return None;
            }
            if server.answers(tls) {
                return Some(server);
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether what listens on the port is this Redis: `PING` gets `+PONG`
    /// (or `-NOAUTH` with a password). Over TLS, a connection must do.
    fn answers(&self, tls: bool) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if tls {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = [0u8; 7];
        std::io::Write::write_all(&mut stream, b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGSTOP) for `pause`, then lets it go on: an
    /// outage in which connections hang rather than fail.
    pub fn pause(&self, pause: Duration) {
        let pid = self.child.id().to_string();
        let signal = |name: &str| {
            let status = Command::new("kill").args([name, &pid]).status();
            assert!(status.is_ok_and(|s| s.success()), "kill {name} {pid}");
        };
        signal("-STOP");
        thread::sleep(pause);
        signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback redis-server with no persistence, its files in `dir`.
fn spawn_redis(listen: &[String], dir: &Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args(listen)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/test.sh installs it)")
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `layers` × `width` modules in layers `m<layer>_<i>`: each needs two of the layer before,
/// checks an output and an artifact of one of them, writes its own, and
/// appends its id to `effects.log` as its last step.
pub fn layered_pipeline(layers: usize, width: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for layer in 0..layers {
        for i in 0..width {
            let id = format!("m{layer}_{i}");
            // 0.15 s to 0.45 s, fixed per module.
            let sleep = 15 + (layer * 7 + i * 13) % 31;
            let mut checks = String::new();
            let _ = writeln!(text, "[modules.{id}]");
            if layer > 0 {
                let a = format!("m{}_{i}", layer - 1);
                let b = format!("m{}_{}", layer - 1, (i + 1) % width);
                let _ = writeln!(text, "needs = [\"{a}\", \"{b}\"]");
                let _ = writeln!(text, "consumes = [\"{a}\"]");
                let upper = a.to_uppercase();
                checks = format!(
                    "test \"$MUSTER_NEEDS_{upper}_V\" = {a} && grep -qx {a} out/{a}.txt && "
                );
            }
            let _ = writeln!(
                text,
                "run = '{checks}sleep 0.{sleep:02} && mkdir -p out && echo {id} > out/{id}.txt && \
                 echo v={id} >> $MUSTER_OUTPUT && echo {id} >> effects.log'"
            );
            let _ = writeln!(text, "produces = [\"out/{id}.txt\"]\n");
        }
    }
    text
}

/// The module ids `effects.log` in `dir` lists, one per command run.
pub fn effects(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("effects.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A running master's discovery record of run `run_id` at `epoch`, with
/// one made-up hub URL per epoch.
pub fn discovery_record(run_id: &str, epoch: u64) -> muster_discovery::record::DiscoveryRecord {
    use muster_discovery::record::{DiscoveryRecord, RunState};
    DiscoveryRecord {
        run_id: run_id.into(),
        urls: vec![format!("http://10.0.0.{epoch}:7400/hub")],
        protocol_version: 1,
        state: RunState::Running,
        outcome: None,
        started_at: epoch,
        epoch,
        token: None,
    }
}
