//! `--tunnel bore:HOST` against a real `bore server` on loopback.
//!
//! Needs the `bore` binary from crates.io's `bore-cli` (0.6):
//! `cargo install bore-cli --version 0.6.0 --locked`, found through
//! `MUSTER_BORE` (a path) or PATH. Without it these tests fail, saying so.
//!
//! bore's control port is fixed at 7835, on the server and in the client.
//! So that tests (and anything else on the machine using 7835) do not
//! collide, each test's server binds its own loopback address
//! (127.x.y.z; Linux routes all of 127.0.0.0/8 to the loopback interface).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use muster_discovery::tunnel::{open_with_program, TunnelError, TunnelKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const CONTROL_PORT: u16 = 7835;

/// The `bore` binary: `MUSTER_BORE`, or `bore` on PATH.
fn bore_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MUSTER_BORE").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("bore"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests need bore: run `cargo install bore-cli --version 0.6.0 --locked` \
                 (or set MUSTER_BORE to the binary's path)"
            )
        })
}

/// A loopback address of this test's own.
fn loopback() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    if cfg!(target_os = "linux") {
        let pid = std::process::id();
        IpAddr::V4(Ipv4Addr::new(
            127,
            90 + n,
            (pid >> 8) as u8,
            (pid as u8).clamp(1, 254),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// A running `bore server`, killed on drop.
struct BoreServer {
    addr: IpAddr,
    _child: Child,
}

impl BoreServer {
    async fn start(secret: Option<&str>) -> BoreServer {
        let addr = loopback();
        let mut command = Command::new(bore_binary());
        command
            .args(["server", "--bind-addr", &addr.to_string()])
            .env("NO_COLOR", "1")
            .env_remove("BORE_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(secret) = secret {
            command.env("BORE_SECRET", secret);
        }
        let mut child = command.spawn().expect("could not start bore server");
        for _ in 0..200 {
            if TcpStream::connect((addr, CONTROL_PORT)).await.is_ok() {
                return BoreServer {
                    addr,
                    _child: child,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
                panic!("bore server on {addr}:{CONTROL_PORT} exited ({status}): {err}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("bore server did not listen on {addr}:{CONTROL_PORT} within 5s");
    }
}

/// A stand-in hub on loopback: `/healthz` answers `ok`, anything else
/// `hello from the hub`.
async fn hub() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 2048];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let body = if buf[..n].starts_with(b"GET /healthz ") {
                    "ok"
                } else {
                    "hello from the hub"
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

fn bore_to(server: &BoreServer, secret: Option<&str>) -> TunnelKind {
    TunnelKind::Bore {
        server: server.addr.to_string(),
        secret: secret.map(str::to_owned),
    }
}

#[tokio::test]
async fn bore_tunnel_reaches_the_hub_and_closes_on_drop() {
    let server = BoreServer::start(Some("shared-secret")).await;
    let port = hub().await;
    let kind = bore_to(&server, Some("shared-secret"));
    let tunnel = open_with_program(&kind, &bore_binary(), port, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("a bore tunnel");

    let url = tunnel.url().to_owned();
    let prefix = format!("http://{}:", server.addr);
    let public_port: u16 = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} does not start with {prefix}"))
        .parse()
        .unwrap();
    assert_ne!(public_port, port);
    let body = reqwest::get(format!("{url}/anything"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello from the hub");

    // Killing the client ends its control connection; the server then stops
    // listening on the public port.
    drop(tunnel);
    for _ in 0..200 {
        if TcpStream::connect((server.addr, public_port))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} still accepts connections after the tunnel was dropped");
}

#[tokio::test]
async fn bore_without_the_servers_secret_exits_early() {
    let server = BoreServer::start(Some("shared-secret")).await;
    let port = hub().await;
    let err = open_with_program(
        &bore_to(&server, None),
        &bore_binary(),
        port,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TunnelError::Exited { .. }), "{text}");
    assert!(
        text.starts_with("bore exited (exit status: 1) while waiting for its public port"),
        "{text}"
    );
    assert!(
        text.contains("server requires authentication, but no client secret was provided"),
        "{text}"
    );
    assert!(!text.contains("Stack backtrace"), "{text}");
}

#[tokio::test]
async fn bore_with_a_wrong_secret_never_shows_it() {
    let server = BoreServer::start(Some("shared-secret")).await;
    let port = hub().await;
    let err = open_with_program(
        &bore_to(&server, Some("wrong-secret")),
        &bore_binary(),
        port,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TunnelError::Exited { .. }), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");
}

#[tokio::test]
async fn bore_to_a_server_that_is_not_there() {
    let addr = loopback();
    let kind = TunnelKind::Bore {
        server: addr.to_string(),
        secret: None,
    };
    let text = open_with_program(&kind, &bore_binary(), 1, Duration::from_secs(20))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&format!("could not connect to {addr}:{CONTROL_PORT}")),
        "{text}"
    );
}
