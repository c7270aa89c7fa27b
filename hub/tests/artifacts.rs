//! The artifact store over real loopback sockets: round trips, the token,
//! digest validation, mismatches, deduplication, concurrent uploads, size
//! and stall limits (raw TCP, so the test decides every byte), a client
//! that goes away, and a corrupted blob.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use muster_core::parse_pipeline;
use muster_core::wire::http::artifact_url;
use muster_hub::{Hub, HubConfig};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "artifacts-token";

struct Setup {
    hub: Hub,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Setup {
    async fn start() -> Setup {
        Setup::with(|_| {}).await
    }

    async fn with(tune: impl FnOnce(&mut HubConfig)) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let plan = parse_pipeline("t.toml", "[modules.a]\nrun = \"true\"\n").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = HubConfig {
            token: TOKEN.into(),
            artifact_dir: dir.path().join("store"),
            ..HubConfig::default()
        };
        tune(&mut config);
        let mut hub = Hub::start(listener, plan, config).await.unwrap();
        drop(hub.take_events());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Setup { hub, dir, client }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Where the store keeps the blob named `digest`.
    fn stored(&self, digest: &str) -> PathBuf {
        self.store().join("sha256").join(&digest[..2]).join(digest)
    }

    fn url(&self, digest: &str) -> String {
        artifact_url(self.hub.url(), digest)
    }

    /// `host:port` of the hub, for raw TCP clients.
    fn addr(&self) -> String {
        let rest = self.hub.url().strip_prefix("http://").unwrap();
        rest.split('/').next().unwrap().to_owned()
    }

    fn request(&self, method: Method, digest: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(digest))
            .bearer_auth(TOKEN)
    }

    async fn put(&self, digest: &str, body: Vec<u8>) -> reqwest::Response {
        self.request(Method::PUT, digest)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, digest: &str) -> reqwest::Response {
        self.request(Method::GET, digest).send().await.unwrap()
    }

    async fn head(&self, digest: &str) -> reqwest::Response {
        self.request(Method::HEAD, digest).send().await.unwrap()
    }

    /// Files (not folders) anywhere in the store.
    fn files(&self) -> Vec<PathBuf> {
        files_under(&self.store())
    }

    fn temp_files(&self) -> Vec<PathBuf> {
        files_under(&self.store().join("tmp"))
    }

    /// Waits (bounded) until the store's `tmp/` is empty.
    async fn temp_cleared(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.temp_files().is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `len` bytes that do not repeat in any short period (xorshift).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads the server's answer up to the end of its head, until it closes
/// the connection, or for at most 5 s.
async fn read_answer(socket: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A raw PUT: the request head, then `body` bytes, then nothing.
async fn raw_put(addr: &str, digest: &str, auth: &str, extra: &str, body: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /hub/artifacts/{digest} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {auth}\r\n{extra}\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    socket
}

#[tokio::test]
async fn round_trip() {
    let setup = Setup::start().await;
    let data = content(5 * 1024 * 1024 + 123, 1);
    let digest = sha(&data);

    assert_eq!(setup.head(&digest).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(setup.get(&digest).await.status(), StatusCode::NOT_FOUND);

    assert_eq!(
        setup.put(&digest, data.clone()).await.status(),
        StatusCode::CREATED
    );

    let head = setup.head(&digest).await;
    assert_eq!(head.status(), StatusCode::OK);
    let length = head.headers()[reqwest::header::CONTENT_LENGTH]
        .to_str()
        .unwrap();
    assert_eq!(length, data.len().to_string());

    let got = setup.get(&digest).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.content_length(), Some(data.len() as u64));
    let body = got.bytes().await.unwrap();
    assert!(body[..] == data[..], "the downloaded bytes differ");

    let stored = setup.stored(&digest);
    assert_eq!(setup.files(), vec![stored]);
}

#[tokio::test]
async fn refuses_a_missing_or_wrong_token() {
    let setup = Setup::start().await;
    let data = b"secret stuff".to_vec();
    let digest = sha(&data);
    for method in [Method::HEAD, Method::GET, Method::PUT] {
        let url = setup.url(&digest);
        let missing = setup.client.request(method.clone(), &url);
        let wrong = setup
            .client
            .request(method.clone(), &url)
            .bearer_auth("not-the-token");
        let wrong_query = setup
            .client
            .request(method.clone(), format!("{url}?access_token=nope"));
        for request in [missing, wrong, wrong_query] {
            let answer = request.body(data.clone()).send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{method}");
        }
    }
    assert!(setup.files().is_empty());

    // Refused before the body is read: a 1 GB upload that never sends a
    // byte is answered at once.
    let started = Instant::now();
    let mut socket = raw_put(
        &setup.addr(),
        &digest,
        "not-the-token",
        "Content-Length: 1000000000\r\n",
        b"",
    )
    .await;
    let text = read_answer(&mut socket).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(setup.files().is_empty());

    // The token as a query parameter works too, as for the WebSocket.
    let url = format!("{}?access_token={TOKEN}", setup.url(&digest));
    let answer = setup.client.put(url).body(data).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn refuses_what_is_not_a_digest() {
    let setup = Setup::start().await;
    let good = sha(b"x");
    let bad = [
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        good.to_uppercase(),
        good[..63].to_owned(),
        format!("{good}0"),
        format!("{}g", &good[..63]),
    ];
    for digest in &bad {
        for method in [Method::HEAD, Method::GET, Method::PUT] {
            let answer = setup
                .request(method.clone(), digest)
                .body("x")
                .send()
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                StatusCode::BAD_REQUEST,
                "{method} {digest}"
            );
            if method != Method::HEAD {
                let text = answer.text().await.unwrap();
                assert!(text.contains("not a SHA-256 digest"), "{text}");
            }
        }
    }
    assert!(setup.files().is_empty());
}

#[tokio::test]
async fn refuses_a_body_that_does_not_match_its_digest() {
    let setup = Setup::start().await;
    let claimed = sha(b"what the worker meant");
    let data = content(300 * 1024, 2);
    let answer = setup.put(&claimed, data.clone()).await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = answer.text().await.unwrap();
    assert!(
        text.contains(&claimed) && text.contains(&sha(&data)),
        "{text}"
    );
    assert!(setup.temp_cleared().await);
    assert!(setup.files().is_empty(), "{:?}", setup.files());
    assert_eq!(setup.head(&claimed).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_second_upload_is_skipped() {
    let setup = Setup::start().await;
    let data = content(64 * 1024, 3);
    let digest = sha(&data);
    assert_eq!(
        setup.put(&digest, data.clone()).await.status(),
        StatusCode::CREATED
    );
    let stored = setup.stored(&digest);
    let before = std::fs::metadata(&stored).unwrap().modified().unwrap();

    assert_eq!(
        setup.put(&digest, data.clone()).await.status(),
        StatusCode::OK
    );
    // The hub does not even read the body of what it already has.
    let other = content(64 * 1024, 4);
    assert_eq!(setup.put(&digest, other).await.status(), StatusCode::OK);

    assert_eq!(std::fs::read(&stored).unwrap(), data);
    assert_eq!(
        std::fs::metadata(&stored).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(setup.files(), vec![stored]);
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_content_both_succeed() {
    let setup = Setup::start().await;
    let data = content(3 * 1024 * 1024, 5);
    let digest = sha(&data);
    let uploads = (0..4).map(|_| setup.put(&digest, data.clone()));
    for answer in futures_util::future::join_all(uploads).await {
        let status = answer.status();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
    }
    let stored = setup.stored(&digest);
    assert_eq!(sha(&std::fs::read(&stored).unwrap()), digest);
    assert!(setup.temp_cleared().await);
    assert_eq!(setup.files(), vec![stored]);
}

#[tokio::test]
async fn a_stalled_upload_is_aborted() {
    let setup = Setup::with(|c| c.transfer_stall_timeout = Duration::from_secs(1)).await;
    let digest = sha(b"never sent in full");
    let started = Instant::now();
    let mut socket = raw_put(
        &setup.addr(),
        &digest,
        TOKEN,
        "Content-Length: 100000000\r\n",
        &[7u8; 1000],
    )
    .await;

    // The upload is under way: its temp file exists.
    let deadline = Instant::now() + Duration::from_millis(800);
    while setup.temp_files().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(setup.temp_files().len(), 1);

    let text = read_answer(&mut socket).await;
    let elapsed = started.elapsed();
    assert!(text.starts_with("HTTP/1.1 408"), "not a 408: {text}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(setup.temp_cleared().await);
    assert!(setup.files().is_empty());
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_nothing() {
    let setup = Setup::start().await;
    let digest = sha(b"half of it");
    let socket = raw_put(
        &setup.addr(),
        &digest,
        TOKEN,
        "Content-Length: 100000000\r\n",
        &[1u8; 64 * 1024],
    )
    .await;
    let deadline = Instant::now() + Duration::from_millis(800);
    while setup.temp_files().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(socket);
    assert!(setup.temp_cleared().await);
    assert!(setup.files().is_empty());
}

#[tokio::test]
async fn refuses_what_is_too_large() {
    let setup = Setup::with(|c| c.max_artifact_bytes = 4096).await;
    // Announced: refused before reading.
    let data = content(5000, 6);
    let answer = setup.put(&sha(&data), data).await;
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly the limit is fine.
    let data = content(4096, 7);
    assert_eq!(
        setup.put(&sha(&data), data).await.status(),
        StatusCode::CREATED
    );

    // Not announced (chunked): refused once past the limit.
    let digest = sha(b"too much");
    let chunk = format!("{:x}\r\n{}\r\n", 3000, "z".repeat(3000));
    let body = chunk.repeat(2);
    let mut socket = raw_put(
        &setup.addr(),
        &digest,
        TOKEN,
        "Transfer-Encoding: chunked\r\n",
        body.as_bytes(),
    )
    .await;
    let text = read_answer(&mut socket).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(setup.temp_cleared().await);
    assert_eq!(setup.files().len(), 1);
}

#[tokio::test]
async fn a_corrupted_blob_is_served_as_it_is() {
    let setup = Setup::start().await;
    let data = content(100 * 1024, 8);
    let digest = sha(&data);
    assert_eq!(
        setup.put(&digest, data.clone()).await.status(),
        StatusCode::CREATED
    );
    let stored = setup.stored(&digest);
    let corrupt = content(10, 9);
    std::fs::write(&stored, &corrupt).unwrap();

    let got = setup.get(&digest).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap()[..], corrupt[..]);
    assert_eq!(setup.head(&digest).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_store_that_cannot_be_created_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let plan = parse_pipeline("t.toml", "[modules.a]\nrun = \"true\"\n").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = HubConfig {
        artifact_dir: file.join("store"),
        ..HubConfig::default()
    };
    let Err(error) = Hub::start(listener, plan, config).await else {
        panic!("the hub started on a store under a file");
    };
    assert!(error.to_string().contains("a-file"), "{error}");
}
