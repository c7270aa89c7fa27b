//! The HTTP store against a real Turborepo remote cache: the
//! `turborepo-remote-cache` server from npm, run by node on loopback with
//! local storage. `scripts/test.sh` installs it in `tests/cache-server`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use muster_cache::{
    read_entry, sign, verify, write_entry, Artifact, CacheError, Manifest, Store, TurboStore,
    FORMAT,
};
use sha2::{Digest, Sha256};

const TOKEN: &str = "test-token";
const TEAM: &str = "team_muster";
const SIGNING_KEY: &[u8] = b"entry signing key";

/// A `turborepo-remote-cache` server on a free loopback port, storing in
/// a temporary folder; killed on drop.
struct TurboServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TurboServer {
    /// The server takes no port 0: a free port is picked, and another if
    /// it was taken before the server bound it.
    fn start() -> TurboServer {
        let cli = server_cli();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let log = fs::File::create(dir.path().join("server.log")).expect("log file");
            let child = Command::new("node")
                .arg(&cli)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("NODE_ENV", "production")
                .env("HOST", "127.0.0.1")
                .env("PORT", port.to_string())
                .env("TURBO_TOKEN", TOKEN)
                .env("STORAGE_PROVIDER", "local")
                .env("STORAGE_PATH", dir.path().join("storage"))
                .env("STORAGE_PATH_USE_TMP_FOLDER", "false")
                // Without a key of its own the server drops x-artifact-tag.
                .env("TURBO_REMOTE_CACHE_SIGNATURE_KEY", "server keeps tags")
                .env("LOG_LEVEL", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("node runs (scripts/test.sh installs it)");
            let mut server = TurboServer { child, port, dir };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("turborepo-remote-cache did not start on any of 5 free ports");
    }

    /// True once the server answers its status route; false if it
    /// exited (its port was taken). Waits at most 30 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                eprintln!("turborepo-remote-cache exited ({status}):\n{}", self.log());
                return false;
            }
            if status_answers(self.port) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "turborepo-remote-cache did not answer within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn store(&self, token: &str) -> TurboStore {
        TurboStore::new(&self.url(), Some(token.into()), Some(TEAM.into()), None)
            .expect("valid URL")
            .with_temp_dir(self.dir.path())
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TurboServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's entry point, installed by `scripts/test.sh`.
fn server_cli() -> PathBuf {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cache-server");
    let cli = folder.join("node_modules/turborepo-remote-cache/dist/cli.js");
    assert!(
        cli.exists(),
        "{} is missing: run scripts/test.sh, or `npm ci` in {}",
        cli.display(),
        folder.display()
    );
    cli
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One plain HTTP request to the status route, bounded by short timeouts.
fn status_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let request = b"GET /v8/artifacts/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut answer = Vec::with_capacity(1024);
    let _ = stream.take(1024).read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")
}

/// A signed entry for `key` with one artifact of `blob` bytes.
fn signed_entry(dir: &Path, key: &str, blob: &[u8]) -> (PathBuf, String) {
    let source = dir.join("artifact.bin");
    fs::write(&source, blob).unwrap();
    let manifest = Manifest {
        format: FORMAT,
        key: key.into(),
        module: "build".into(),
        exit_code: 0,
        duration_ms: 1234,
        outputs: BTreeMap::from([("version".to_owned(), "1.0.0".to_owned())]),
        artifacts: vec![Artifact {
            path: "dist/artifact.bin".into(),
            size: blob.len() as u64,
            sha256: format!("{:x}", Sha256::digest(blob)),
            mode: 0o644,
        }],
        log: "built\n".into(),
    };
    let archive = dir.join(format!("{key}.tar"));
    write_entry(&manifest, &|_| source.clone(), &archive).unwrap();
    let tag = sign(SIGNING_KEY, &archive).unwrap();
    (archive, tag)
}

#[tokio::test]
async fn put_then_get_is_a_hit_with_the_same_bytes_and_tag() {
    let server = TurboServer::start();
    let store = server.store(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let key = "a1b2c3d4e5f60718";
    // Large enough to take many chunks each way.
    let blob: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (archive, tag) = signed_entry(dir.path(), key, &blob);

    store.put(key, &archive, Some(&tag), 1234).await.unwrap();
    assert!(store.contains(key).await.unwrap());
    let fetched = store.get(key).await.unwrap().expect("a hit");
    assert_eq!(
        fs::read(fetched.path()).unwrap(),
        fs::read(&archive).unwrap()
    );
    assert_eq!(fetched.tag.as_deref(), Some(tag.as_str()));
    assert!(verify(SIGNING_KEY, fetched.path(), &tag).unwrap());
    let restored = dir.path().join("restored");
    let manifest = read_entry(fetched.path(), key, &|sha| restored.join(sha)).unwrap();
    assert_eq!(manifest.outputs["version"], "1.0.0");
    assert_eq!(
        fs::read(restored.join(&manifest.artifacts[0].sha256)).unwrap(),
        blob
    );
}

#[tokio::test]
async fn an_unknown_key_is_a_miss() {
    let server = TurboServer::start();
    let store = server.store(TOKEN);
    assert!(store.get("0123456789abcdef").await.unwrap().is_none());
    assert!(!store.contains("0123456789abcdef").await.unwrap());
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_says_which_variable() {
    let server = TurboServer::start();
    let store = server.store("not-the-token");
    let error = store.get("0123456789abcdef").await.unwrap_err();
    assert!(
        matches!(error, CacheError::Unauthorized { status: 401, .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("MUSTER_CACHE_TOKEN") && text.contains(&server.url()),
        "{text}"
    );
    assert!(!text.contains("not-the-token"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let (archive, tag) = signed_entry(dir.path(), "0123456789abcdef", b"x");
    let error = store
        .put("0123456789abcdef", &archive, Some(&tag), 1)
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::Unauthorized { .. }), "{error}");
}

#[tokio::test]
async fn without_a_team_the_server_says_so() {
    let server = TurboServer::start();
    let store = TurboStore::new(&server.url(), Some(TOKEN.into()), None, None).unwrap();
    let error = store.get("0123456789abcdef").await.unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, CacheError::Http { status: 400, .. }),
        "{text}"
    );
    assert!(text.contains("team"), "{text}");
    // The slug names the team as well.
    let store =
        TurboStore::new(&server.url(), Some(TOKEN.into()), None, Some(TEAM.into())).unwrap();
    assert!(store.get("0123456789abcdef").await.unwrap().is_none());
}

#[tokio::test]
async fn a_download_over_the_cap_is_refused() {
    let server = TurboServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = "feedface";
    let (archive, tag) = signed_entry(dir.path(), key, &[7u8; 10_000]);
    server
        .store(TOKEN)
        .put(key, &archive, Some(&tag), 1)
        .await
        .unwrap();
    let store = server.store(TOKEN).with_max_download(4096);
    let error = store.get(key).await.unwrap_err();
    assert!(
        matches!(error, CacheError::TooLarge { limit: 4096, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_unreachable_at_once() {
    let port = free_port(); // nothing listens there now
    let store = TurboStore::new(
        &format!("http://user:secret@127.0.0.1:{port}"),
        Some(TOKEN.into()),
        Some(TEAM.into()),
        None,
    )
    .unwrap();
    let started = Instant::now();
    let error = store.get("0123456789abcdef").await.unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    assert!(
        started.elapsed() < muster_cache::http::CONNECT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && !text.contains("secret"),
        "{text}"
    );
    assert!(
        store.describe().contains("user:***@"),
        "{}",
        store.describe()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_unreachable_after_the_stall_timeout() {
    // Accepts connections, reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let store = TurboStore::new(&url, Some(TOKEN.into()), Some(TEAM.into()), None)
        .unwrap()
        .with_stall_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let error = store.get("0123456789abcdef").await.unwrap_err();
    assert!(
        error.is_unreachable() && error.to_string().contains("no progress"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let (archive, tag) = signed_entry(dir.path(), "0123456789abcdef", &[1u8; 100_000]);
    let error = store
        .put("0123456789abcdef", &archive, Some(&tag), 1)
        .await
        .unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    silent.abort();
}
