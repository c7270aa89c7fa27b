//! The hub attacked from outside, as a new user or an attacker would:
//! floods of sockets that never authenticate, a worker that takes a module
//! and never starts it, clients that never read, large records, hostile
//! names, and a master whose stdout is read slowly. Real processes and
//! sockets throughout; memory is read from /proc.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{pipeline, HubProcess, BIN};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const RS: char = '\u{1e}';

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The soft and hard open-file limits of a process, from /proc.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

/// Lets this test process hold thousands of sockets.
fn raise_own_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches("/hub")
        .to_owned()
}

/// `muster hub` started by a shell that first sets the open-file limits
/// (`ulimit`, such as `-Sn 1024`); a soft limit above a machine's hard
/// one is left as it is, which the hub then raises all the same.
fn hub_under_ulimit(
    file: &std::path::Path,
    token: &str,
    ulimit: &str,
    extra: &[&str],
) -> HubProcess {
    let script = format!("ulimit {ulimit} 2>/dev/null; exec \"$0\" \"$@\"");
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            &script,
            BIN,
            "hub",
            file.to_str().unwrap(),
            "--token",
            token,
        ])
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    HubProcess::spawn(command)
}

/// Connections that never send anything, and connections that send a
/// request's headers one byte every 200 ms: none carries the token. Each
/// records when the hub closed it.
struct Hostile {
    silent: Vec<TcpStream>,
    slow: Vec<std::thread::JoinHandle<Option<Instant>>>,
    opened: Instant,
}

impl Hostile {
    fn open(addr: &str, silent: usize, slow: usize) -> Hostile {
        let opened = Instant::now();
        let silent = (0..silent)
            .map(|_| TcpStream::connect(addr).expect("connect a silent socket"))
            .collect();
        let slow = (0..slow)
            .map(|_| {
                let addr = addr.to_owned();
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(&addr).ok()?;
                    let request = format!(
                        "GET /hub HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}\r\n",
                        "p".repeat(400)
                    );
                    for byte in request.bytes().cycle() {
                        if stream.write_all(&[byte]).is_err() {
                            return Some(Instant::now());
                        }
                        std::thread::sleep(Duration::from_millis(200));
                        if opened.elapsed() > Duration::from_secs(60) {
                            return None;
                        }
                    }
                    None
                })
            })
            .collect();
        Hostile {
            silent,
            slow,
            opened,
        }
    }

    /// Waits until every hostile connection is closed by the hub and
    /// returns how long the last one took; panics past `limit`.
    fn wait_closed(self, limit: Duration) -> Duration {
        let mut last = Duration::ZERO;
        for mut stream in self.silent {
            let left = limit
                .saturating_sub(self.opened.elapsed())
                .max(Duration::from_millis(10));
            stream.set_read_timeout(Some(left)).unwrap();
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(0) => {}
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("a silent socket was still open after {limit:?}: {e}"),
            }
            last = last.max(self.opened.elapsed());
        }
        for slow in self.slow {
            let closed = slow
                .join()
                .unwrap()
                .expect("the hub closes slow-header sockets");
            last = last.max(closed.duration_since(self.opened));
        }
        last
    }
}

#[test]
fn silent_and_slow_sockets_cannot_lock_workers_out() {
    raise_own_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    // The module holds the run (and so the hub) until the test is done
    // watching the hostile sockets.
    let (_pipeline_dir, file) = pipeline(&format!(
        "[modules.work]\nrun = \"until [ -f {} ]; do sleep 0.1; done; echo worked on $MUSTER_WORKER\"\n",
        done.display()
    ));
    let token = "door-token";
    let hub = hub_under_ulimit(&file, token, "-Sn 1024", &["--auth-timeout", "3s"]);
    // The hub raised its own soft limit to the hard one.
    let (soft, hard) = open_file_limits(hub.pid());
    assert_eq!(soft, hard, "the hub keeps the soft open-file limit {soft}");
    let hostile = Hostile::open(&host_port(&hub.url), 2000, 200);
    let worker = common::worker(&hub.url, token, "real", &[]);
    // Every hostile socket is closed by the running hub within the
    // admission timeout (3 s), with room for a loaded machine.
    let last = hostile.wait_closed(Duration::from_secs(20));
    assert!(last < Duration::from_secs(20), "closed after {last:?}");
    std::fs::write(&done, "").unwrap();
    let out = hub.finish();
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("[work] worked on real"), "{out}");
    assert!(!out.stderr.contains("Too many open files"), "{out}");
    assert_eq!(common::wait(worker, common::LIMIT).code(), 0);
}

#[test]
fn with_a_low_hard_limit_the_cap_still_leaves_room_for_workers() {
    raise_own_file_limit();
    let (_dir, file) = pipeline("[modules.work]\nrun = \"echo worked on $MUSTER_WORKER\"\n");
    let token = "low-limit-token";
    // 256 descriptors in all: at most 64 go to sockets without a token.
    let hub = hub_under_ulimit(&file, token, "-n 256", &["--auth-timeout", "20s"]);
    assert_eq!(open_file_limits(hub.pid()), ("256".into(), "256".into()));
    let hostile = Hostile::open(&host_port(&hub.url), 600, 0);
    let worker = common::worker(&hub.url, token, "real", &[]);
    let out = hub.finish();
    // An accept may briefly find the table full while evicted sockets
    // close; the worker still gets in and the run completes.
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("[work] worked on real"), "{out}");
    assert_eq!(common::wait(worker, common::LIMIT).code(), 0);
    drop(hostile);
}

/// A raw SignalR client over a WebSocket, as a hostile or broken worker.
struct Raw {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    buffer: String,
}

impl Raw {
    async fn connect(hub_url: &str, token: &str) -> Raw {
        let url = format!(
            "{}?access_token={token}",
            hub_url.replace("http://", "ws://")
        );
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let mut raw = Raw {
            socket,
            buffer: String::new(),
        };
        raw.send(&format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"))
            .await;
        assert_eq!(raw.record().await.as_deref(), Some("{}"));
        raw
    }

    async fn send(&mut self, text: &str) {
        self.socket
            .send(WsMessage::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    async fn register(&mut self, name: &str, capabilities: &[&str]) -> String {
        let registration =
            serde_json::json!({"name": name, "capabilities": capabilities, "slots": 1});
        let invocation = serde_json::json!({"type": 1, "invocationId": "reg", "target": "Register", "arguments": [registration]});
        self.send(&format!("{invocation}{RS}")).await;
        self.until(|r| r.contains("\"invocationId\":\"reg\"")).await
    }

    /// The next record, or `None` when the socket closed.
    async fn record(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buffer.find(RS) {
                let record = self.buffer[..at].to_owned();
                self.buffer.drain(..=at);
                return Some(record);
            }
            match self.socket.next().await? {
                Ok(WsMessage::Text(text)) => self.buffer.push_str(&text),
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads records (answering nothing) until one matches; panics after
    /// 30 s or on a closed socket.
    async fn until(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let wait = async {
            loop {
                let record = self.record().await.expect("the hub closed the socket");
                if wanted(&record) {
                    return record;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the awaited record came")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_its_worker_never_starts_runs_elsewhere() {
    let (_dir, file) =
        pipeline("[modules.hold]\ntimeout = \"3s\"\nrun = \"echo ran on $MUSTER_WORKER\"\n");
    let token = "start-token";
    let hub = HubProcess::start(
        &file,
        token,
        &[
            "--start-timeout",
            "2s",
            "--result-grace",
            "2s",
            "--ping-interval",
            "1s",
            "--client-timeout",
            "5s",
        ],
    );
    let mut raw = Raw::connect(&hub.url, token).await;
    raw.register("taker", &["os:linux"]).await;
    let assign = raw.until(|r| r.contains("\"target\":\"Assign\"")).await;
    assert!(assign.contains("\"attempt\":1"), "{assign}");
    // The real worker joins; the raw one keeps answering pings but never
    // says Started.
    let real = common::worker(&hub.url, token, "real", &[]);
    let cancel = raw.until(|r| r.contains("\"target\":\"Cancel\"")).await;
    assert!(cancel.contains("\"hold\",1"), "{cancel}");
    assert!(cancel.contains("not started within 2s"), "{cancel}");
    let out = tokio::task::spawn_blocking(move || hub.finish())
        .await
        .unwrap();
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout
            .contains("[hold] ** will retry: worker taker did not start attempt 1 within 2s"),
        "{out}"
    );
    assert!(out.stdout.contains("[hold] ran on real"), "{out}");
    assert_eq!(out.row("hold")[3], "real", "{out}");
    drop(real);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused_and_nothing_raw_reaches_the_terminal() {
    let (_dir, file) = pipeline("[modules.victim]\nrun = \"true\"\n");
    let token = "name-token";
    let hub = HubProcess::start(&file, token, &[]);
    let mut raw = Raw::connect(&hub.url, token).await;
    let refused = raw
        .register("evil\n[hold] ** succeeded on evil\x1b[2J", &["os:linux"])
        .await;
    assert!(
        refused.contains("\"error\":\"Register refused: the worker name"),
        "{refused}"
    );
    assert!(refused.contains("outside A-Z a-z 0-9"), "{refused}");
    let refused = raw
        .register("fine", &["os:linux", "\x1b]0;title\x07"])
        .await;
    assert!(
        refused.contains("Register refused: the capability"),
        "{refused}"
    );
    // A Register without an invocation id cannot get its answer: refused.
    let mut silent = Raw::connect(&hub.url, token).await;
    silent
        .send(&format!(
            "{{\"type\":1,\"target\":\"Register\",\"arguments\":[{{\"name\":\"quiet\"}}]}}{RS}"
        ))
        .await;
    let close = silent.until(|r| r.contains("\"type\":7")).await;
    assert!(
        close.contains("Register must be sent with invoke"),
        "{close}"
    );
    // An accepted worker's log and error text cannot forge lines either.
    raw.register("raw", &["os:linux"]).await;
    raw.until(|r| r.contains("\"target\":\"Assign\"")).await;
    raw.send(&format!("{{\"type\":1,\"invocationId\":\"s\",\"target\":\"Started\",\"arguments\":[\"victim\",1]}}{RS}")).await;
    raw.until(|r| r.contains("\"invocationId\":\"s\"")).await;
    let log = serde_json::json!({"type": 1, "target": "Log", "arguments": ["victim", 1, "stdout", "\x1b[2J\rforged\n[other] ** succeeded on x"]});
    raw.send(&format!("{log}{RS}")).await;
    let report = serde_json::json!({"moduleId": "victim", "attempt": 1, "status": "failed", "error": "boom\n[hold] ** succeeded\x1b[2J"});
    let complete = serde_json::json!({"type": 1, "invocationId": "c", "target": "Complete", "arguments": [report]});
    raw.send(&format!("{complete}{RS}")).await;
    raw.until(|r| r.contains("\"invocationId\":\"c\"")).await;
    let out = tokio::task::spawn_blocking(move || hub.finish())
        .await
        .unwrap();
    assert_eq!(out.code(), 1, "{out}");
    assert!(
        !out.stdout.contains('\x1b'),
        "an escape reached stdout: {out}"
    );
    assert!(
        !out.stdout.contains('\r'),
        "a carriage return reached stdout: {out}"
    );
    assert!(
        !out.stdout
            .lines()
            .any(|l| l.starts_with("[hold]") || l.starts_with("[other]")),
        "a forged line: {out}"
    );
    assert!(out.stdout.contains("[victim] \\x1b[2J\\rforged"), "{out}");
    assert!(
        out.stdout.contains("boom\\n[hold] ** succeeded\\x1b[2J"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_its_memory_returned() {
    let (_dir, file) = pipeline("[modules.a]\nrun = \"true\"\n[modules.b]\nneeds = [\"a\"]\nrequires = [\"never\"]\nrun = \"true\"\n");
    let token = "reader-token";
    let hub = HubProcess::start(&file, token, &["--capability-timeout", "60s"]);
    let pid = hub.pid();
    let before = rss_kib(pid);
    let mut raw = Raw::connect(&hub.url, token).await;
    raw.register("glutton", &["os:linux"]).await;
    // Invocations that each get an error Completion, sent 1,000 a frame,
    // never reading an answer.
    let batch: String = (0..1000)
        .map(|i| format!("{{\"type\":1,\"invocationId\":\"{i}\",\"target\":\"Log\",\"arguments\":[\"nope\",1,\"stdout\",\"x\"]}}{RS}"))
        .collect();
    let mut sent = 0u64;
    let mut closed = false;
    let mut peak = before;
    let flood = Instant::now();
    while flood.elapsed() < Duration::from_secs(60) && sent < 1_500_000 {
        let send = raw.socket.send(WsMessage::Text(batch.clone().into()));
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(())) => sent += 1000,
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            // The hub stopped reading: the socket is full.
            Err(_) => break,
        }
        if sent.is_multiple_of(50_000) {
            peak = peak.max(rss_kib(pid));
        }
    }
    // The hub closes the connection: reading now finds the Close (or the
    // end of the socket) after the answers it could queue.
    if !closed {
        let end = async {
            loop {
                match raw.record().await {
                    None => return None,
                    Some(r) if r.contains("\"type\":7") => return Some(r),
                    Some(_) => {}
                }
            }
        };
        let close = tokio::time::timeout(Duration::from_secs(30), end).await;
        let Ok(close) = close else {
            let pid = hub.pid();
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let out = tokio::task::spawn_blocking(move || hub.finish())
                .await
                .unwrap();
            panic!("the hub did not close a client that does not read (sent {sent}): {out}");
        };
        if let Some(close) = close {
            assert!(close.contains("not reading"), "{close}");
        }
    }
    peak = peak.max(rss_kib(pid));
    assert!(
        peak < before + 64 * 1024,
        "the hub grew from {before} KiB to {peak} KiB after {sent} unread invocations"
    );
    drop(raw);
    drop(hub);
}

#[test]
fn a_slowly_read_stdout_gets_every_line_and_memory_stays_bounded() {
    let (_dir, file) = pipeline(
        "[modules.loud]\nrun = \"head -c 12000000 /dev/zero | base64 -w 100; echo LAST\"\n",
    );
    let mut child = common::muster(&["run", file.to_str().unwrap(), "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    // Nobody reads stdout for 8 s, as `| (sleep 8; wc -c)` would.
    let mut peak = 0;
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(8) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    let full = format!("[loud] {}", "A".repeat(100));
    // 12,000,000 bytes are 16,000,000 characters of base64: 160,000 lines.
    let lines = stdout.lines().filter(|l| *l == full).count();
    assert_eq!(lines, 160_000, "stderr: {stderr}");
    assert!(stdout.contains("\n[loud] LAST\n"), "stderr: {stderr}");
    assert!(
        stdout.contains("run succeeded: 1 of 1 modules succeeded"),
        "stderr: {stderr}"
    );
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(
        peak < 48 * 1024,
        "the master grew to {peak} KiB while its stdout was not read"
    );
}

#[test]
fn a_closed_stdout_is_an_error_not_a_success() {
    let (_dir, file) = pipeline("[modules.loud]\nrun = \"seq 1 200000\"\n");
    let mut child = common::muster(&["run", file.to_str().unwrap(), "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little, then close the pipe, as `| head -1` would.
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = common::wait(child, common::LIMIT);
    assert_eq!(out.code(), 3, "{out}");
    assert!(
        out.stderr
            .contains("cannot write the run's output to stdout"),
        "{out}"
    );
}

#[test]
fn cancel_without_a_hub_says_the_run_may_have_finished() {
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/hub");
    let out = common::run(common::muster(&[
        "cancel",
        "--hub",
        &url,
        "--token",
        "t0ken-value",
    ]));
    assert_eq!(out.code(), 3, "{out}");
    assert!(
        out.stderr.contains(&format!(
            "no hub answered at http://127.0.0.1:{port}/hub/cancel"
        )),
        "{out}"
    );
    assert!(out.stderr.contains("the run may have finished"), "{out}");
    assert!(!out.stderr.contains("t0ken-value"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_does_not_keep_its_buffer() {
    let (_dir, file) = pipeline("[modules.a]\nrequires = [\"never\"]\nrun = \"true\"\n");
    let token = "large-token";
    let hub = HubProcess::start(&file, token, &["--capability-timeout", "300s"]);
    let pid = hub.pid();
    let text = "x".repeat(900_000);
    let record = format!(
        "{{\"type\":1,\"invocationId\":\"big\",\"target\":\"Log\",\"arguments\":[\"nope\",1,\"stdout\",\"{text}\"]}}{RS}"
    );
    // Connections stay open; each one's idle cost is counted in the bound.
    let mut open = Vec::new();
    let mut before = 0;
    for i in 0..200 {
        let mut raw = Raw::connect(&hub.url, token).await;
        raw.register(&format!("large-{i}"), &["os:linux"]).await;
        if i == 0 {
            before = rss_kib(pid);
        }
        raw.send(&record).await;
        let answer = raw.until(|r| r.contains("\"invocationId\":\"big\"")).await;
        assert!(answer.contains("\"error\""), "{answer}");
        open.push(raw);
    }
    let after = rss_kib(pid);
    // 200 x 900 KB went through; what stays is each connection's idle cost
    // (about 20 KiB), not the largest frame it ever sent.
    assert!(
        after < before + 40 * 1024,
        "the hub grew from {before} KiB to {after} KiB holding 200 connections that each sent one 900 KB record"
    );
    drop(open);
    drop(hub);
}
