//! The discovery record against a real `redis-server`: write and read,
//! a waiting reader woken by the master's notification, epochs that keep
//! an older master from overwriting a newer one, a record that comes back
//! after Redis loses it, and a timeout that names the key and hides the
//! password.

mod common;

use std::time::Duration;

use common::RedisServer;
use muster_discovery::record::{DiscoveryRecord, RunState};
use muster_discovery::store::{Store, StoreError, Written};
use tokio_util::sync::CancellationToken;

fn record(run_id: &str, epoch: u64) -> DiscoveryRecord {
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

#[tokio::test]
async fn a_waiting_worker_wakes_when_the_master_writes() {
    let redis = RedisServer::start();
    let store = Store::open(&redis.url()).unwrap();
    assert_eq!(store.read("run-a").await.unwrap(), None);
    let writer = store.clone();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .write(&record("run-a", 7), Duration::from_secs(60))
            .await
            .unwrap()
    });
    let started = tokio::time::Instant::now();
    let found = store
        .wait_for("run-a", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(write.await.unwrap(), Written::Yes);
    assert_eq!(found, record("run-a", 7));
    // Woken by the notification, not by the 5 s re-check.
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn an_older_master_never_replaces_a_newer_record() {
    let redis = RedisServer::start();
    let store = Store::open(&redis.url()).unwrap();
    let ttl = Duration::from_secs(60);
    assert_eq!(
        store.write(&record("r", 20), ttl).await.unwrap(),
        Written::Yes
    );
    assert_eq!(
        store.write(&record("r", 10), ttl).await.unwrap(),
        Written::Superseded
    );
    assert_eq!(store.read("r").await.unwrap().unwrap().epoch, 20);
    let mut finished = record("r", 20);
    finished.state = RunState::Finished;
    assert_eq!(store.write(&finished, ttl).await.unwrap(), Written::Yes);
    assert_eq!(
        store.read("r").await.unwrap().unwrap().state,
        RunState::Finished
    );
}

#[tokio::test]
async fn the_record_comes_back_after_redis_loses_it() {
    let redis = RedisServer::start();
    let store = Store::open(&redis.url()).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(record("heal", 3));
    let stop = CancellationToken::new();
    // A 1 s TTL: re-written about every 333 ms.
    let fresh = tokio::spawn(
        store
            .clone()
            .keep_fresh(rx, Duration::from_secs(1), stop.clone()),
    );
    let first = store
        .wait_for("heal", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(first.epoch, 3);
    // As a restart without persistence would: everything is gone.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .unwrap();
    let back = store
        .wait_for("heal", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(back.epoch, 3);
    stop.cancel();
    fresh.await.unwrap();
}

#[tokio::test]
async fn a_missing_record_times_out_naming_the_key_not_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", "hunter2-secret"]);
    let url = format!("redis://:hunter2-secret@127.0.0.1:{}", redis.port);
    let store = Store::open(&url).unwrap();
    let error = store
        .wait_for("nobody-home", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("muster:run:nobody-home"), "{text}");
    assert!(text.contains(":***@127.0.0.1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // A wrong password is an unreachable Redis, named the same way.
    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let error = Store::open(&wrong).unwrap().read("x").await.unwrap_err();
    assert!(matches!(error, StoreError::Unreachable { .. }), "{error}");
    assert!(!error.to_string().contains("wrong@"), "{error}");
}

#[tokio::test]
async fn rediss_with_a_password_works() {
    let redis = RedisServer::start_tls(&["--requirepass", "tls-pass"]);
    // `#insecure`: the test's certificate is self-signed.
    let url = format!("rediss://:tls-pass@127.0.0.1:{}/#insecure", redis.port);
    let store = Store::open(&url).unwrap();
    assert_eq!(
        store.shown_url(),
        format!("rediss://:***@127.0.0.1:{}/#insecure", redis.port)
    );
    let ttl = Duration::from_secs(60);
    assert_eq!(
        store.write(&record("tls", 1), ttl).await.unwrap(),
        Written::Yes
    );
    assert_eq!(store.read("tls").await.unwrap(), Some(record("tls", 1)));
    // Plain redis:// to a TLS-only port is refused, not hung.
    let plain = Store::open(&format!("redis://:tls-pass@127.0.0.1:{}", redis.port)).unwrap();
    assert!(matches!(
        plain.read("tls").await,
        Err(StoreError::Unreachable { .. })
    ));
}
