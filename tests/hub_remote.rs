//! `muster hub` and `muster worker` as separate processes: joining by URL
//! and token, routing by capability, and a hub that survives bad input
//! from the network while it serves a real run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{muster, pipeline, HubProcess};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn worker(url: &str, token: &str, name: &str, capability: &str) -> std::process::Child {
    common::worker(url, token, name, &["--capability", capability])
}

#[test]
fn modules_go_to_workers_with_the_required_capabilities() {
    let (_dir, file) = pipeline(
        r#"
[modules.gpu-train]
requires = ["gpu"]
run = "echo training on $MUSTER_WORKER"
[modules.docker-build]
requires = ["docker"]
run = "echo building on $MUSTER_WORKER"
[modules.anywhere]
needs = ["gpu-train", "docker-build"]
requires = ["os:linux"]
run = "echo done"
"#,
    );
    let hub = HubProcess::start(&file, "s3cret-token", &[]);
    let gpu = worker(&hub.url, "s3cret-token", "gpu-box", "gpu");
    let docker = worker(&hub.url, "s3cret-token", "docker-box", "docker");
    let out = hub.finish();
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(out.row("gpu-train")[3], "gpu-box", "{out}");
    assert_eq!(out.row("docker-build")[3], "docker-box", "{out}");
    assert!(
        out.stdout.contains("[gpu-train] training on gpu-box"),
        "{out}"
    );
    assert!(
        !out.stdout.contains("s3cret-token"),
        "the token leaked: {out}"
    );
    for child in [gpu, docker] {
        let result = common::wait(child, common::LIMIT);
        assert_eq!(result.code(), 0, "workers exit 0 after Shutdown: {result}");
        assert!(
            result.stderr.contains("worker done: the run has finished"),
            "{result}"
        );
    }
}

#[test]
fn a_wrong_token_is_refused_before_the_upgrade() {
    let (_dir, file) = pipeline("[modules.a]\nrun = \"true\"\n");
    let hub = HubProcess::start(&file, "right-token", &[]);
    let wrong = common::run(muster(&[
        "worker",
        "--hub",
        &hub.url,
        "--token",
        "Zq9-bogus",
    ]));
    assert_eq!(wrong.code(), 2, "a wrong token is bad input: {wrong}");
    assert!(
        wrong.stderr.contains("refused the token (HTTP 401)"),
        "{wrong}"
    );
    assert!(
        !wrong.stderr.contains("Zq9-bogus"),
        "the token leaked: {wrong}"
    );
    // The hub is unharmed: the right token joins and the run completes.
    let right = worker(&hub.url, "right-token", "right", "any");
    let out = hub.finish();
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(common::wait(right, common::LIMIT).code(), 0);
}

/// Sends one raw HTTP request and returns the status line.
fn http_status(url: &str, request: &str) -> String {
    let addr = url.trim_start_matches("http://").trim_end_matches("/hub");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(request.replace("HOST", addr).as_bytes())
        .unwrap();
    let mut response = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_real_run_goes_on() {
    let (dir, file) = pipeline(
        r#"
[modules.steady]
timeout = "50s"
run = "i=0; until [ -f flood-done ]; do i=$((i+1)); echo tick $i; sleep 0.1; done; echo steady to the end"
"#,
    );
    let token = "flood-token";
    // Debug logs on, to check that no log line carries the token.
    let hub = HubProcess::start_with_env(
        &file,
        token,
        &["--workers", "1", "--handshake-timeout", "1s"],
        &[("MUSTER_LOG", "debug")],
    );
    let url = hub.url.clone();

    assert!(http_status(&url, "POST /hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: HOST\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").contains("401"));
    assert!(http_status(&url, &format!("POST /hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).contains("200"));
    assert!(http_status(
        &url,
        "GET /hub?id=nope HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"
    )
    .contains("401"));
    assert!(http_status(&url, &format!("GET /hub?id=nope&access_token={token} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n")).contains("404"));

    // Each case: the frames a raw client sends after a good handshake, and
    // a piece of what the hub must answer.
    let register = "{\"type\":1,\"invocationId\":\"r\",\"target\":\"Register\",\"arguments\":[{\"name\":\"raw\"}]}\u{1e}";
    let one = |frame: &str| vec![frame.to_owned()];
    let registered = |frame: &str| vec![register.to_owned(), frame.to_owned()];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (one("{not json\u{1e}"), "malformed JSON"),
        (one("{\"type\":42}\u{1e}"), "unknown message type 42"),
        (one(&format!("{}\u{1e}", "x".repeat(1_200_000))), "exceeds the 1048576-byte cap"),
        // No record separator: the pieces add up past the cap.
        (vec!["y".repeat(600_000), "y".repeat(600_000)], "exceeds the 1048576-byte cap"),
        (one("{\"type\":1,\"invocationId\":\"1\",\"target\":\"Explode\",\"arguments\":[]}\u{1e}"), "unknown hub method 'Explode'"),
        (one("{\"type\":1,\"invocationId\":\"2\",\"target\":\"Started\",\"arguments\":[\"steady\",1]}\u{1e}"), "call Register first"),
        (one("{\"type\":1,\"invocationId\":\"3\",\"target\":\"Register\",\"arguments\":[{\"name\":7}]}\u{1e}"), "'Register' argument 0"),
        (registered("{\"type\":1,\"invocationId\":\"4\",\"target\":\"Register\",\"arguments\":[{\"name\":\"again\"}]}\u{1e}"), "already registered"),
        (registered("{\"type\":1,\"invocationId\":\"5\",\"target\":\"Complete\",\"arguments\":[42]}\u{1e}"), "'Complete' argument 0"),
        (registered("{\"type\":1,\"invocationId\":\"6\",\"target\":\"Complete\",\"arguments\":[{\"moduleId\":\"steady\",\"attempt\":1,\"status\":\"succeeded\"}]}\u{1e}"), "held by another worker"),
        (registered("{\"type\":1,\"invocationId\":\"7\",\"target\":\"Complete\",\"arguments\":[{\"moduleId\":\"nope\",\"attempt\":1,\"status\":\"failed\"}]}\u{1e}"), "no module 'nope'"),
    ];
    let ws_url = format!("{}?access_token={token}", url.replace("http://", "ws://"));
    for (frames, expected) in cases {
        let answer = raw_exchange(&ws_url, &frames, expected).await;
        assert!(
            answer.contains(expected),
            "sent bad frames, expected {expected:?}, got {answer:?}"
        );
    }
    // Many bad clients at once.
    let flood: Vec<_> = (0..24)
        .map(|i| {
            let ws_url = ws_url.clone();
            tokio::spawn(async move {
                let frames = vec![format!("{{\"type\":{}}}\u{1e}", 100 + i)];
                raw_exchange(&ws_url, &frames, "unknown message type").await
            })
        })
        .collect();
    for client in flood {
        assert!(client.await.unwrap().contains("unknown message type"));
    }
    // A client that never sends its handshake is closed with a reason.
    let (mut silent, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    let close = tokio::time::timeout(Duration::from_secs(10), silent.next())
        .await
        .expect("the hub closes a client without a handshake")
        .unwrap()
        .unwrap();
    assert!(
        close
            .to_text()
            .unwrap_or_default()
            .contains("no handshake within 1s"),
        "{close:?}"
    );

    // A wrong protocol in the handshake is refused with a reason.
    let ws_url = format!("{}?access_token={token}", url.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    socket
        .send(WsMessage::Text(
            "{\"protocol\":\"messagepack\",\"version\":1}\u{1e}".into(),
        ))
        .await
        .unwrap();
    let answer = socket.next().await.unwrap().unwrap();
    assert!(
        answer.to_text().unwrap().contains("not supported"),
        "{answer:?}"
    );

    // The real run went on during the flood and ends once it is over.
    std::fs::write(dir.path().join("flood-done"), "").unwrap();
    let out = tokio::task::spawn_blocking(move || hub.finish())
        .await
        .unwrap();
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("[steady] tick 1"), "{out}");
    assert!(out.stdout.contains("[steady] steady to the end"), "{out}");
    assert!(out.stderr.contains("DEBUG"), "debug logs were on: {out}");
    assert!(
        !out.stderr.contains(token) && !out.stdout.contains(token),
        "a log line carries the token: {out}"
    );
}

/// Connects a raw client, does the handshake, sends `frames` and returns
/// the first text from the hub (pings aside) that holds `expected`, or the
/// last one heard.
async fn raw_exchange(ws_url: &str, frames: &[String], expected: &str) -> String {
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url.into_client_request().unwrap())
        .await
        .expect("connect");
    socket
        .send(WsMessage::Text(
            "{\"protocol\":\"json\",\"version\":1}\u{1e}".into(),
        ))
        .await
        .unwrap();
    let handshake = socket.next().await.unwrap().unwrap();
    assert_eq!(handshake.to_text().unwrap(), "{}\u{1e}");
    for frame in frames {
        if socket
            .send(WsMessage::Text(frame.clone().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut answer = String::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), socket.next()).await
    {
        if let WsMessage::Text(text) = message {
            if !text.contains("\"type\":6") {
                answer = text.to_string();
                if answer.contains(expected) {
                    break;
                }
            }
        }
    }
    answer
}

#[test]
fn an_unreachable_hub_is_named_in_one_clear_line() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hub");
    let out = common::run(muster(&[
        "worker",
        "--hub",
        &url,
        "--token",
        "t",
        "--reconnect-timeout",
        "2s",
    ]));
    assert_eq!(out.code(), 3, "{out}");
    // It says once that it keeps trying, then gives up with the reason.
    assert!(out.stderr.contains("retrying for up to 2s"), "{out}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("muster: error: gave up on the hub after trying for ")
            && last.contains(&format!("could not connect to {url}")),
        "{out}"
    );
    let bad = common::run(muster(&[
        "worker",
        "--hub",
        "ftp://example/hub",
        "--token",
        "t",
    ]));
    assert_eq!(bad.code(), 2, "{bad}");
    assert!(
        bad.stderr
            .contains("must start with http://, https://, ws:// or wss://"),
        "{bad}"
    );
}
