//! The worker's side of artifacts against a stand-in of the hub's store
//! (`HEAD`/`PUT`/`GET {hub}/artifacts/{sha256}`, in memory) on a real
//! socket, with knobs to corrupt, cut or stall what it serves and to fail
//! requests with 503.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use muster_core::wire::types::{Artifact, Consumed};
use muster_worker::transfer::{
    describe_artifact, find_produced, Fetched, Found, ProducedError, Transfer, TransferError,
    TransferSettings, Uploaded, MAX_LISTED_BYTES,
};
use sha2::{Digest, Sha256};

const TOKEN: &str = "stand-in-token";

/// The stand-in store and its knobs.
#[derive(Default)]
struct StandInStore {
    blobs: Mutex<HashMap<String, Bytes>>,
    heads: AtomicUsize,
    puts: AtomicUsize,
    gets: AtomicUsize,
    /// Serve every blob with one byte flipped.
    corrupt: AtomicBool,
    /// Serve half of every blob, then cut the connection.
    truncate: AtomicBool,
    /// Serve half of every blob, then send nothing more.
    stall: AtomicBool,
    /// Answer this many next requests with 503.
    fail_next: AtomicUsize,
    /// Take PUTs without ever reading their bodies or answering.
    stall_puts: AtomicBool,
}

impl StandInStore {
    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

/// The stand-in's base URL (`http://127.0.0.1:PORT/hub`) and its store.
async fn stand_in() -> (String, Arc<StandInStore>) {
    let store = Arc::new(StandInStore::default());
    let app = Router::new()
        .route(
            "/hub/artifacts/{sha256}",
            get(serve_blob).head(has_blob).put(store_blob),
        )
        .with_state(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hub"), store)
}

/// The checks every request goes through: the 503 knob, the token, the
/// digest.
fn admit(store: &StandInStore, headers: &HeaderMap, sha256: &str) -> Result<(), StatusCode> {
    let failing = store
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if failing.is_ok() {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let bearer = format!("Bearer {TOKEN}");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(bearer.as_str())
    {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let digest = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !digest || sha256.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(())
}

async fn has_blob(
    State(store): State<Arc<StandInStore>>,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    store.heads.fetch_add(1, Ordering::SeqCst);
    if let Err(status) = admit(&store, &headers, &sha256) {
        return status.into_response();
    }
    match store.blobs.lock().unwrap().get(&sha256) {
        Some(blob) => (StatusCode::OK, [(header::CONTENT_LENGTH, blob.len())]).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn store_blob(
    State(store): State<Arc<StandInStore>>,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    store.puts.fetch_add(1, Ordering::SeqCst);
    if let Err(status) = admit(&store, &headers, &sha256) {
        return status;
    }
    if store.stall_puts.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Err(_) => return StatusCode::REQUEST_TIMEOUT,
            Ok(None) => break,
            Ok(Some(Err(_))) => return StatusCode::BAD_REQUEST,
            Ok(Some(Ok(chunk))) => {
                hasher.update(&chunk);
                bytes.extend_from_slice(&chunk);
            }
        }
    }
    if format!("{:x}", hasher.finalize()) != sha256 {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    let mut blobs = store.blobs.lock().unwrap();
    if blobs.contains_key(&sha256) {
        return StatusCode::OK;
    }
    blobs.insert(sha256, bytes.into());
    StatusCode::CREATED
}

async fn serve_blob(
    State(store): State<Arc<StandInStore>>,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    store.gets.fetch_add(1, Ordering::SeqCst);
    if let Err(status) = admit(&store, &headers, &sha256) {
        return status.into_response();
    }
    let Some(blob) = store.blobs.lock().unwrap().get(&sha256).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let length = [(header::CONTENT_LENGTH, blob.len())];
    let half = blob.slice(..blob.len() / 2);
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(half)]);
    if store.truncate.load(Ordering::SeqCst) {
        let cut = futures_util::stream::iter([Err(std::io::Error::other("cut"))]);
        return (length, Body::from_stream(first.chain(cut))).into_response();
    }
    if store.stall.load(Ordering::SeqCst) {
        let stalled = first.chain(futures_util::stream::pending());
        return (length, Body::from_stream(stalled)).into_response();
    }
    let mut served = blob.to_vec();
    if store.corrupt.load(Ordering::SeqCst) {
        served[0] ^= 0xff;
    }
    (length, Body::from(served)).into_response()
}

/// Settings for tests: quick retries, a short stall timeout.
fn quick() -> TransferSettings {
    TransferSettings {
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_millis(500),
        attempts: 3,
        first_backoff: Duration::from_millis(20),
        hub_away_patience: Duration::ZERO,
    }
}

/// A client of the stand-in with its own cache in `dir`.
fn transfer(hub: &str, dir: &tempfile::TempDir, settings: TransferSettings) -> Transfer {
    Transfer::new(hub, TOKEN, dir.path().join("cache"), settings).unwrap()
}

fn write(root: &Path, path: &str, bytes: &[u8], mode: u32) {
    let file = root.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, bytes).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn paths(found: &[Found]) -> Vec<&str> {
    found.iter().map(|f| f.path.as_str()).collect()
}

fn patterns(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| p.to_string()).collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// An artifact of `bytes` at `path`, from the module `build`.
fn consumed(path: &str, bytes: &[u8], mode: u32) -> Consumed {
    Consumed {
        from: "build".into(),
        artifact: Artifact {
            path: path.into(),
            size: bytes.len() as u64,
            sha256: sha256(bytes),
            mode,
        },
    }
}

/// Puts `bytes` in the stand-in as the producer would.
async fn publish(client: &Transfer, bytes: &[u8]) -> Consumed {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "blob", bytes, 0o644);
    let found = find_produced(dir.path(), &patterns(&["blob"])).unwrap();
    let artifact = describe_artifact(&found[0]).await.unwrap();
    client.upload("build", dir.path(), &artifact).await.unwrap();
    consumed("blob", bytes, 0o644)
}

/// Every file below `dir`, relative.
fn files_below(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                folders.push(entry.path());
            } else {
                let path = entry.path();
                files.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_list_of_artifacts_too_long_for_one_report_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for i in 0..8000 {
        std::fs::File::create(out.join(format!("file-number-{i}"))).unwrap();
    }
    match find_produced(dir.path(), &patterns(&["out/**"])) {
        Err(ProducedError::TooMany { files, allowed, .. }) => {
            assert_eq!(files, 8000);
            assert_eq!(allowed * 1024, MAX_LISTED_BYTES);
        }
        other => panic!("expected TooMany, got {other:?}"),
    }
    // Half as many fit.
    for i in 4000..8000 {
        std::fs::remove_file(out.join(format!("file-number-{i}"))).unwrap();
    }
    let found = find_produced(dir.path(), &patterns(&["out/**"])).unwrap();
    assert_eq!(found.len(), 4000);
}

#[test]
fn globs_find_every_file_separately_in_nested_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for path in [
        "dist/a.tar.gz",
        "dist/linux/x64/b.tar.gz",
        "dist/linux/c.tar.gz",
        "dist/linux/notes.txt",
        "dist/d.zip",
        "target/release/app",
        "target/release/deps/app-123",
        "other.tar.gz",
    ] {
        write(root, path, path.as_bytes(), 0o644);
    }
    let found = find_produced(
        root,
        &patterns(&["dist/**/*.tar.gz", "target/release/app", "dist/*.zip"]),
    )
    .unwrap();
    assert_eq!(
        paths(&found),
        [
            "dist/a.tar.gz",
            "dist/d.zip",
            "dist/linux/c.tar.gz",
            "dist/linux/x64/b.tar.gz",
            "target/release/app",
        ]
    );
    // `*` stays within one folder; overlapping patterns give a file once.
    let found = find_produced(root, &patterns(&["dist/*", "dist/a.tar.gz"])).unwrap();
    assert_eq!(paths(&found), ["dist/a.tar.gz", "dist/d.zip"]);
    assert_eq!(found[0].file, root.join("dist/a.tar.gz"));
}

#[test]
fn an_optional_pattern_may_match_nothing_a_required_one_may_not() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "out/app", b"app", 0o755);
    let found = find_produced(dir.path(), &patterns(&["out/app", "?coverage/**/*.xml"])).unwrap();
    assert_eq!(paths(&found), ["out/app"]);
    let error = find_produced(dir.path(), &patterns(&["out/app", "reports/*.xml"])).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ProducedError::NoMatch { .. }), "{message}");
    assert!(message.contains("\"reports/*.xml\""), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    // A folder is not an artifact.
    let error = find_produced(dir.path(), &patterns(&["out"])).unwrap_err();
    assert!(matches!(error, ProducedError::NoMatch { .. }), "{error}");
}

#[test]
fn patterns_that_leave_the_cwd_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a/x", b"x", 0o644);
    for pattern in [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "?/etc/*",
        "..",
        "a/[",
        "",
    ] {
        let error = find_produced(dir.path(), &patterns(&[pattern])).unwrap_err();
        assert!(
            matches!(error, ProducedError::BadPattern { .. }),
            "{pattern}: {error}"
        );
        assert!(error.to_string().contains(pattern), "{error}");
    }
}

#[test]
fn links_are_followed_only_to_files_inside_the_cwd() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", b"secret", 0o600);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "real/app", b"app", 0o755);
    std::os::unix::fs::symlink("real/app", root.join("out-app")).unwrap();
    let found = find_produced(root, &patterns(&["out-app"])).unwrap();
    assert_eq!(paths(&found), ["out-app"]);
    assert_eq!(found[0].file, root.join("real/app").canonicalize().unwrap());

    std::os::unix::fs::symlink(outside.path().join("secret"), root.join("leak")).unwrap();
    let error = find_produced(root, &patterns(&["leak"])).unwrap_err();
    assert!(matches!(error, ProducedError::OutsideCwd { .. }), "{error}");
    assert!(
        error.to_string().contains("leak") && error.to_string().contains("outside"),
        "{error}"
    );
    // A glob finds the link too, and the same rule holds.
    let error = find_produced(root, &patterns(&["*"])).unwrap_err();
    assert!(matches!(error, ProducedError::OutsideCwd { .. }), "{error}");
    // A link to a folder is never entered.
    std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();
    let found = find_produced(root, &patterns(&["?linked/**"])).unwrap();
    assert!(found.is_empty(), "{found:?}");
    let found = find_produced(root, &patterns(&["?**/secret"])).unwrap();
    assert!(found.is_empty(), "{found:?}");
}

#[tokio::test]
async fn round_trip_keeps_bytes_and_modes() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    let producer = tempfile::tempdir().unwrap();
    write(producer.path(), "bin/app", b"#!/bin/sh\necho hi\n", 0o755);
    write(producer.path(), "bin/readme.txt", b"read me", 0o640);
    let found = find_produced(producer.path(), &patterns(&["bin/*"])).unwrap();
    let mut artifacts = Vec::new();
    for found in &found {
        let artifact = describe_artifact(found).await.unwrap();
        let sent = client
            .upload("build", producer.path(), &artifact)
            .await
            .unwrap();
        assert!(matches!(sent, Uploaded::Sent(_)), "{sent:?}");
        artifacts.push(artifact);
    }
    assert_eq!(artifacts[0].mode, 0o755);
    assert_eq!(artifacts[0].sha256, sha256(b"#!/bin/sh\necho hi\n"));
    assert_eq!(artifacts[1].mode, 0o640);
    assert_eq!(artifacts[1].size, 7);

    let consumer = tempfile::tempdir().unwrap();
    for artifact in &artifacts {
        let wanted = Consumed {
            from: "build".into(),
            artifact: artifact.clone(),
        };
        let fetched = client.download(consumer.path(), &wanted).await.unwrap();
        assert!(matches!(fetched, Fetched::Downloaded(_)), "{fetched:?}");
    }
    for artifact in &artifacts {
        let original = producer.path().join(&artifact.path);
        let copy = consumer.path().join(&artifact.path);
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read(&original).unwrap()
        );
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, artifact.mode, "{}", artifact.path);
    }
    assert_eq!(files_below(consumer.path()), ["bin/app", "bin/readme.txt"]);
    assert_eq!(store.gets(), 2);
}

#[tokio::test]
async fn an_upload_whose_hub_went_away_waits_and_goes_to_the_new_one() {
    // A port nothing listens on: the old master died.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hub", listener.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "out/app", b"built", 0o644);
    let found = find_produced(dir.path(), &patterns(&["out/app"])).unwrap();
    let artifact = describe_artifact(&found[0]).await.unwrap();

    // Without patience it fails after its attempts.
    let impatient = transfer(&gone, &dir, quick());
    assert!(impatient
        .upload("build", dir.path(), &artifact)
        .await
        .is_err());

    // With it, the upload waits while the run moves to a new master.
    let settings = TransferSettings {
        hub_away_patience: Duration::from_secs(20),
        ..quick()
    };
    let client = transfer(&gone, &dir, settings);
    let mover = client.clone();
    let (hub, store) = stand_in().await;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        mover.move_to(&hub).unwrap();
    });
    let sent = client.upload("build", dir.path(), &artifact).await.unwrap();
    assert!(
        matches!(sent, Uploaded::Sent(m) if m.bytes == 5),
        "{sent:?}"
    );
    assert_eq!(store.puts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_second_upload_of_the_same_content_only_asks() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    write(dir.path(), "a/one", b"same bytes", 0o644);
    write(dir.path(), "b/two", b"same bytes", 0o600);
    let found = find_produced(dir.path(), &patterns(&["*/*"])).unwrap();
    let first = describe_artifact(&found[0]).await.unwrap();
    let second = describe_artifact(&found[1]).await.unwrap();
    assert_eq!(first.sha256, second.sha256);
    let sent = client.upload("build", dir.path(), &first).await.unwrap();
    assert!(
        matches!(sent, Uploaded::Sent(m) if m.bytes == 10),
        "{sent:?}"
    );
    let sent = client.upload("build", dir.path(), &second).await.unwrap();
    assert_eq!(sent, Uploaded::AlreadyStored);
    assert_eq!(store.puts.load(Ordering::SeqCst), 1);
    assert_eq!(store.heads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_downloads_of_one_digest_fetch_it_once() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    let bytes = vec![7u8; 3 * 1024 * 1024];
    let wanted = publish(&client, &bytes).await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = tokio::join!(
        client.download(one.path(), &wanted),
        client.download(two.path(), &wanted)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|f| matches!(f, Fetched::Downloaded(_)));
    assert!(matches!(outcomes[0], Fetched::FromCache(_)), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Fetched::Downloaded(_)),
        "{outcomes:?}"
    );
    assert_eq!(store.gets(), 1);
    for folder in [&one, &two] {
        assert_eq!(std::fs::read(folder.path().join("blob")).unwrap(), bytes);
    }
    // A later module on the same worker takes it from the cache too.
    let three = tempfile::tempdir().unwrap();
    let fetched = client.download(three.path(), &wanted).await.unwrap();
    assert!(matches!(fetched, Fetched::FromCache(_)), "{fetched:?}");
    assert_eq!(store.gets(), 1);
}

#[tokio::test]
async fn a_correct_file_at_the_destination_is_not_fetched() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    let wanted = publish(&client, b"already here").await;
    let consumer = tempfile::tempdir().unwrap();
    write(consumer.path(), "blob", b"already here", 0o600);
    let fetched = client.download(consumer.path(), &wanted).await.unwrap();
    assert_eq!(fetched, Fetched::AlreadyThere);
    assert_eq!(store.gets(), 0);
    // Its mode is made the artifact's.
    let mode = std::fs::metadata(consumer.path().join("blob"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
    // A different file there is replaced.
    write(consumer.path(), "blob", b"stale content", 0o644);
    let fetched = client.download(consumer.path(), &wanted).await.unwrap();
    assert!(matches!(fetched, Fetched::Downloaded(_)), "{fetched:?}");
    assert_eq!(
        std::fs::read(consumer.path().join("blob")).unwrap(),
        b"already here"
    );
}

#[tokio::test]
async fn a_corrupted_blob_is_refused_and_leaves_nothing_behind() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    let wanted = publish(&client, b"the real content").await;
    store.corrupt.store(true, Ordering::SeqCst);
    let consumer = tempfile::tempdir().unwrap();
    write(consumer.path(), "blob", b"previous", 0o644);
    let error = client.download(consumer.path(), &wanted).await.unwrap_err();
    let message = error.to_string();
    let expected = format!("digest mismatch: expected {}, got ", wanted.artifact.sha256);
    assert!(message.contains(&expected), "{message}");
    assert!(
        message.contains("artifact blob of module build"),
        "{message}"
    );
    assert!(message.contains(&format!("GET {hub}/artifacts/{}", wanted.artifact.sha256)));
    assert!(!message.contains(TOKEN));
    // Not retried: the hub serves what it has.
    assert_eq!(store.gets(), 1);
    assert_eq!(
        std::fs::read(consumer.path().join("blob")).unwrap(),
        b"previous"
    );
    assert_eq!(files_below(consumer.path()), ["blob"]);
    assert!(files_below(&dir.path().join("cache")).is_empty());
}

#[tokio::test]
async fn a_truncated_body_is_an_error_after_retries() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    let wanted = publish(&client, &vec![1u8; 1 << 20]).await;
    store.truncate.store(true, Ordering::SeqCst);
    let consumer = tempfile::tempdir().unwrap();
    let error = client.download(consumer.path(), &wanted).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("truncated"), "{message}");
    assert!(message.contains("of 1048576 bytes"), "{message}");
    assert!(message.contains("3 attempts"), "{message}");
    assert_eq!(store.gets(), 3);
    assert!(files_below(consumer.path()).is_empty());
    assert!(files_below(&dir.path().join("cache")).is_empty());
}

#[tokio::test]
async fn a_stalled_body_fails_within_the_stall_timeout() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = TransferSettings {
        stall_timeout: Duration::from_millis(300),
        attempts: 1,
        ..quick()
    };
    let client = transfer(&hub, &dir, settings);
    let wanted = publish(&client, &vec![2u8; 1 << 20]).await;
    store.stall.store(true, Ordering::SeqCst);
    let consumer = tempfile::tempdir().unwrap();
    let begun = Instant::now();
    let error = client.download(consumer.path(), &wanted).await.unwrap_err();
    let took = begun.elapsed();
    assert!(
        error
            .to_string()
            .contains("stalled: no byte moved for 300ms"),
        "{error}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(files_below(consumer.path()).is_empty());
    assert!(files_below(&dir.path().join("cache")).is_empty());
}

#[tokio::test]
async fn a_stalled_upload_fails_within_the_stall_timeout() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = TransferSettings {
        stall_timeout: Duration::from_millis(300),
        attempts: 2,
        ..quick()
    };
    let client = transfer(&hub, &dir, settings);
    store.stall_puts.store(true, Ordering::SeqCst);
    write(dir.path(), "big", &vec![3u8; 64 << 20], 0o644);
    let artifact = describe_artifact(&find_produced(dir.path(), &patterns(&["big"])).unwrap()[0])
        .await
        .unwrap();
    let begun = Instant::now();
    let error = client
        .upload("build", dir.path(), &artifact)
        .await
        .unwrap_err();
    let took = begun.elapsed();
    let message = error.to_string();
    assert!(
        message.contains("stalled: no byte moved for 300ms"),
        "{message}"
    );
    assert!(
        message.contains("PUT") && message.contains("2 attempts"),
        "{message}"
    );
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(store.puts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn transient_503s_are_retried() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    store.fail_next.store(2, Ordering::SeqCst);
    // HEAD 503, HEAD 503, HEAD 404, PUT 201.
    let wanted = publish(&client, b"worth the wait").await;
    assert_eq!(store.heads.load(Ordering::SeqCst), 3);
    store.fail_next.store(2, Ordering::SeqCst);
    let consumer = tempfile::tempdir().unwrap();
    let fetched = client.download(consumer.path(), &wanted).await.unwrap();
    assert!(matches!(fetched, Fetched::Downloaded(_)), "{fetched:?}");
    assert_eq!(store.gets(), 3);
    assert_eq!(
        std::fs::read(consumer.path().join("blob")).unwrap(),
        b"worth the wait"
    );
    // Past the attempts it fails, saying how often it tried.
    store.fail_next.store(5, Ordering::SeqCst);
    let other = consumed("other", b"other", 0o644);
    let error = client.download(consumer.path(), &other).await.unwrap_err();
    assert!(
        error.to_string().contains("503 Service Unavailable"),
        "{error}"
    );
    assert!(error.to_string().contains("3 attempts"), "{error}");
}

#[tokio::test]
async fn refusals_by_the_hub_are_not_retried() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    // Not in the store: 404.
    let client = transfer(&hub, &dir, quick());
    let missing = consumed("lib/x.so", b"never uploaded", 0o644);
    let consumer = tempfile::tempdir().unwrap();
    let error = client
        .download(consumer.path(), &missing)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("404 Not Found"), "{message}");
    assert!(
        message.contains("lib/x.so") && message.contains("module build"),
        "{message}"
    );
    assert_eq!(store.gets(), 1);
    // A wrong token: 401, on upload as well.
    let wrong = Transfer::new(&hub, "wrong-token", dir.path().join("cache"), quick()).unwrap();
    let error = wrong.download(consumer.path(), &missing).await.unwrap_err();
    assert!(error.to_string().contains("refused the token"), "{error}");
    assert!(!error.to_string().contains("wrong-token"), "{error}");
    assert_eq!(store.gets(), 2);
    write(dir.path(), "up", b"up", 0o644);
    let artifact = describe_artifact(&find_produced(dir.path(), &patterns(&["up"])).unwrap()[0])
        .await
        .unwrap();
    let error = wrong
        .upload("build", dir.path(), &artifact)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("401") && error.to_string().contains("HEAD"),
        "{error}"
    );
    assert_eq!(store.heads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_file_changed_after_hashing_is_not_uploaded() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    write(dir.path(), "out", b"before", 0o644);
    let artifact = describe_artifact(&find_produced(dir.path(), &patterns(&["out"])).unwrap()[0])
        .await
        .unwrap();
    write(dir.path(), "out", b"after!", 0o644);
    let error = client
        .upload("build", dir.path(), &artifact)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("422"), "{error}");
    write(dir.path(), "out", b"longer than before", 0o644);
    let error = client
        .upload("build", dir.path(), &artifact)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("the file changed"), "{error}");
    assert_eq!(store.puts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unsafe_consumed_paths_are_refused() {
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(&hub, &dir, quick());
    let wanted = publish(&client, b"payload").await;
    let outside = tempfile::tempdir().unwrap();
    let consumer = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), consumer.path().join("escape")).unwrap();
    write(consumer.path(), "file", b"a file", 0o644);
    std::fs::create_dir(consumer.path().join("taken")).unwrap();
    let check = |path: &str, reason: &str| {
        let mut bad = wanted.clone();
        bad.artifact.path = path.into();
        let client = &client;
        let consumer = consumer.path().to_owned();
        let reason = reason.to_owned();
        let path = path.to_owned();
        async move {
            let error = client.download(&consumer, &bad).await.unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(error, TransferError::UnsafePath { .. }),
                "{path}: {message}"
            );
            assert!(message.contains(&format!("{path:?}")), "{message}");
            assert!(message.contains("from module build"), "{message}");
            assert!(message.contains(&reason), "{path}: {message}");
        }
    };
    check("../x", "climbs out").await;
    check("/etc/x", "absolute").await;
    check("a/../../x", "climbs out").await;
    check("a//x", "empty part").await;
    check("./x", "`.` part").await;
    check("", "empty").await;
    check("escape/x", "escape is a link").await;
    check("file/x", "file is a file").await;
    check("taken", "a folder is in its place").await;
    let mut bad_digest = wanted.clone();
    bad_digest.artifact.sha256 = "../../etc".into();
    let error = client
        .download(consumer.path(), &bad_digest)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("not a SHA-256 digest"),
        "{error}"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert_eq!(store.gets(), 0);
    // Nested folders that do not exist yet are made.
    let mut nested = wanted.clone();
    nested.artifact.path = "deep/er/blob".into();
    client.download(consumer.path(), &nested).await.unwrap();
    assert_eq!(
        std::fs::read(consumer.path().join("deep/er/blob")).unwrap(),
        b"payload"
    );
}

#[tokio::test]
async fn a_200_mb_file_round_trips() {
    const SIZE: usize = 200 * 1024 * 1024;
    let (hub, store) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let client = transfer(
        &hub,
        &dir,
        TransferSettings {
            stall_timeout: Duration::from_secs(30),
            ..quick()
        },
    );
    let producer = tempfile::tempdir().unwrap();
    let original = producer.path().join("big.bin");
    let expected = write_big(&original, SIZE);
    let begun = Instant::now();
    let found = find_produced(producer.path(), &patterns(&["*.bin"])).unwrap();
    let artifact = describe_artifact(&found[0]).await.unwrap();
    assert_eq!(artifact.size, SIZE as u64);
    assert_eq!(artifact.sha256, expected);
    let sent = client
        .upload("build", producer.path(), &artifact)
        .await
        .unwrap();
    assert!(
        matches!(sent, Uploaded::Sent(m) if m.bytes == SIZE as u64),
        "{sent:?}"
    );
    let consumer = tempfile::tempdir().unwrap();
    let wanted = Consumed {
        from: "build".into(),
        artifact,
    };
    let fetched = client.download(consumer.path(), &wanted).await.unwrap();
    let Fetched::Downloaded(moved) = fetched else {
        panic!("{fetched:?}")
    };
    eprintln!(
        "200 MB: round trip in {:?}, download {moved}",
        begun.elapsed()
    );
    let copy = consumer.path().join("big.bin");
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), SIZE as u64);
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(&copy).unwrap(), &mut hasher).unwrap();
    assert_eq!(format!("{:x}", hasher.finalize()), expected);
    assert_eq!((store.puts.load(Ordering::SeqCst), store.gets()), (1, 1));
}

/// Writes `size` varied bytes to `path`; their SHA-256.
fn write_big(path: &PathBuf, size: usize) -> String {
    use std::io::Write;
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in block.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    for index in 0..size / block.len() {
        block[..8].copy_from_slice(&(index as u64).to_le_bytes());
        hasher.update(&block);
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
    format!("{:x}", hasher.finalize())
}
