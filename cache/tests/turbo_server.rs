//! The HTTP store against a real Turborepo remote cache: the
//! `turborepo-remote-cache` server from npm, run by node on loopback with
//! local storage. `scripts/test.sh` installs it in `tests/cache-server`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use muster_cache::{
    read_entry, sign, verify, write_entry, Artifact, CacheError, Manifest, Store, TurboStore,
    FORMAT,
};
use sha2::{Digest, Sha256};

const TEAM: &str = "team_muster";
const SIGNING_KEY: &[u8] = b"entry signing key";

#[path = "../../tests/support/turbo_server.rs"]
mod turbo_server;

use turbo_server::{TurboServer, TOKEN};

fn store(server: &TurboServer, token: &str) -> TurboStore {
    TurboStore::new(&server.url(), Some(token.into()), Some(TEAM.into()), None)
        .expect("valid URL")
        .with_temp_dir(server.dir.path())
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
    let store = store(&server, TOKEN);
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
    let store = store(&server, TOKEN);
    assert!(store.get("0123456789abcdef").await.unwrap().is_none());
    assert!(!store.contains("0123456789abcdef").await.unwrap());
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_says_which_variable() {
    let server = TurboServer::start();
    let store = store(&server, "not-the-token");
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
    store(&server, TOKEN)
        .put(key, &archive, Some(&tag), 1)
        .await
        .unwrap();
    let store = store(&server, TOKEN).with_max_download(4096);
    let error = store.get(key).await.unwrap_err();
    assert!(
        matches!(error, CacheError::TooLarge { limit: 4096, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_unreachable_at_once() {
    let port = turbo_server::free_port(); // nothing listens there now
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
