//! The discovery record against a real `redis-server`: write and read,
//! a waiting reader woken by the master's notification, epochs that keep
//! an older master from overwriting a newer one, a record that comes back
//! after Redis loses it, a timeout that names the key and hides the
//! password, a Redis that starts late waited for (and said so once), and a
//! wrong password refused at once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{discovery_record as record, RedisServer};
use muster_discovery::record::RunState;
use muster_discovery::store::{DiscoveryStore, StoreError, Written};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_waiting_worker_wakes_when_the_master_writes() {
    let redis = RedisServer::start();
    let store = DiscoveryStore::open(&redis.url()).unwrap();
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
    let store = DiscoveryStore::open(&redis.url()).unwrap();
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
    let store = DiscoveryStore::open(&redis.url()).unwrap();
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
    let store = DiscoveryStore::open(&url).unwrap();
    let error = store
        .wait_for("nobody-home", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("muster:run:nobody-home"), "{text}");
    assert!(text.contains(":***@127.0.0.1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // A wrong password is refused, named the same way; waiting would not
    // help, so a call that keeps trying ends at once.
    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let error = DiscoveryStore::open(&wrong)
        .unwrap()
        .read("x")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Refused { .. }), "{error}");
    assert!(!error.to_string().contains("wrong@"), "{error}");
    let started = tokio::time::Instant::now();
    let error = DiscoveryStore::open(&wrong)
        .unwrap()
        .wait_for("x", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Refused { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
}

/// Redis still starting, as a CI service container often is: the
/// master's write and a worker's wait keep trying until Redis answers,
/// and the store says so once, without the password.
#[tokio::test]
async fn a_redis_that_starts_late_is_waited_for() {
    let port = common::free_port();
    let url = format!("redis://:late-pass@127.0.0.1:{port}");
    let said = Arc::new(Mutex::new(Vec::new()));
    let heard = said.clone();
    let store = DiscoveryStore::open(&url)
        .unwrap()
        .when_not_answering(move |n| heard.lock().unwrap().push(n.to_string()));
    let limit = Duration::from_secs(20);
    let waiter = store.clone();
    let wait = tokio::spawn(async move { waiter.wait_for("late", limit).await });
    let writer = store.clone();
    let write = tokio::spawn(async move {
        writer
            .write_within(&record("late", 5), Duration::from_secs(60), limit)
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!wait.is_finished() && !write.is_finished());
    let _redis = RedisServer::start_late(port, &["--requirepass", "late-pass"]);
    let started = tokio::time::Instant::now();
    assert_eq!(write.await.unwrap().unwrap(), Written::Yes);
    assert_eq!(wait.await.unwrap().unwrap(), record("late", 5));
    // Retries are at most a second apart.
    assert!(started.elapsed() < Duration::from_secs(4));
    let said = said.lock().unwrap().clone();
    assert_eq!(said.len(), 1, "said once per store: {said:?}");
    assert_eq!(
        said[0],
        format!(
            "Redis at redis://:***@127.0.0.1:{port} is not answering yet (connection refused); \
             retrying for up to 20s"
        )
    );

    // Nobody ever answers: the wait ends at its limit, with the reason.
    let nowhere =
        DiscoveryStore::open(&format!("redis://127.0.0.1:{}", common::free_port())).unwrap();
    let started = tokio::time::Instant::now();
    let error = nowhere
        .write_within(
            &record("never", 1),
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("connection refused"), "{error}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn rediss_with_a_password_works() {
    let redis = RedisServer::start_tls(&["--requirepass", "tls-pass"]);
    // `#insecure`: the test's certificate is self-signed.
    let url = format!("rediss://:tls-pass@127.0.0.1:{}/#insecure", redis.port);
    let store = DiscoveryStore::open(&url).unwrap();
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
    let plain =
        DiscoveryStore::open(&format!("redis://:tls-pass@127.0.0.1:{}", redis.port)).unwrap();
    assert!(matches!(
        plain.read("tls").await,
        Err(StoreError::Unreachable { .. })
    ));
}
