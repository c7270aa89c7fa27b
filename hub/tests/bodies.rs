//! Request bodies over real loopback sockets: a caller without the token
//! gets its 401 before the hub reads a byte of its body (so strangers
//! cannot make it hold their uploads), and a caller with the token is held
//! to the size the route takes.

mod common;

use std::time::Duration;

use common::TOKEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The hub's `host:port`.
fn address(hub: &muster_hub::Hub) -> String {
    let url = hub.url();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap().to_owned()
}

/// Sends a POST to `path` announcing a `length`-byte body, sends only
/// `sent` bytes of it, and returns the status line of the answer, which
/// must come within 5 s with the rest of the body never sent.
async fn status_of_partial_post(
    hub: &muster_hub::Hub,
    path: &str,
    token: Option<&str>,
    length: usize,
    sent: usize,
) -> String {
    let mut socket = TcpStream::connect(address(hub)).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: hub\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&vec![b' '; sent]).await.unwrap();
    let mut answer = vec![0; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer))
        .await
        .expect("an answer before the body is complete")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn without_the_token_no_body_is_read() {
    let hub = common::hub("[modules.a]\nrun = \"true\"\n").await;
    for path in ["/hub/cancel", "/hub/decide"] {
        let status = status_of_partial_post(&hub, path, None, 2_000_000, 10).await;
        assert!(status.contains(" 401 "), "{path}: {status}");
        let status = status_of_partial_post(&hub, path, Some("wrong"), 2_000_000, 10).await;
        assert!(status.contains(" 401 "), "{path}: {status}");
    }
    drop(hub);
}

#[tokio::test]
async fn with_the_token_a_body_over_the_routes_limit_is_refused() {
    let hub = common::hub("[modules.a]\nrun = \"true\"\n").await;
    for path in ["/hub/cancel", "/hub/decide"] {
        let status = status_of_partial_post(&hub, path, Some(TOKEN), 2_000_000, 200_000).await;
        assert!(status.contains(" 413 "), "{path}: {status}");
    }
    drop(hub);
}
