//! The hub over real loopback sockets, driven by raw SignalR clients with
//! shortened timeouts: handshake deadline, a silent worker counted as lost
//! and its module handed to another worker, stale reports ignored, a
//! dropped worker resuming its registration with its key, and a worker
//! that never reports.

use muster_core::wire::signalr::Message;
use serde_json::json;

mod common;

use common::{finished, hub, Raw};

#[tokio::test]
async fn a_client_without_handshake_is_closed_with_a_reason() {
    let hub = hub("[modules.a]\nrun = \"true\"\n").await;
    let mut raw = Raw::connect(&hub).await;
    raw.answer_pings = false;
    match raw.next_non_ping().await {
        Some(Message::Close { error: Some(e), .. }) => assert!(e.contains("no handshake"), "{e}"),
        other => panic!("expected a Close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_worker_is_lost_and_its_module_runs_elsewhere() {
    let hub = hub("[modules.a]\nrun = \"true\"\n").await;
    let mut silent = Raw::connect(&hub).await;
    silent.answer_pings = false;
    silent.register("silent").await;
    let (module, attempt) = silent.expect_assign().await;
    assert_eq!((module.as_str(), attempt), ("a", 1));
    silent.invoke(None, "Started", json!(["a", 1])).await;
    // From here `silent` says nothing; a second worker joins and must get
    // attempt 2 once the hub gives up on the first.
    let mut healthy = Raw::connect(&hub).await;
    healthy.register("healthy").await;
    let keepalive = tokio::spawn(async move {
        let (module, attempt) = healthy.expect_assign().await;
        assert_eq!((module.as_str(), attempt), ("a", 2));
        healthy.invoke(Some("s"), "Started", json!(["a", 2])).await;
        healthy
            .invoke(
                Some("c"),
                "Complete",
                json!([{"moduleId": "a", "attempt": 2, "status": "succeeded"}]),
            )
            .await;
        healthy
    });
    let mut healthy = keepalive.await.unwrap();
    assert!(closed_by_hub(&mut silent).await);
    let summary = finished(hub).await;
    assert!(summary.succeeded(), "{summary:?}");
    assert_eq!(summary.modules[0].worker.as_deref(), Some("healthy"));
    assert!(
        matches!(
            healthy.next_non_ping().await,
            Some(Message::Completion { .. })
        ),
        "Started is answered"
    );
}

/// True once the hub has closed this client's connection.
async fn closed_by_hub(client: &mut Raw) -> bool {
    loop {
        match client.next_non_ping().await {
            Some(Message::Close { .. }) | None => return true,
            Some(_) => continue,
        }
    }
}

#[tokio::test]
async fn stale_and_duplicate_reports_never_overwrite_the_current_attempt() {
    let hub = hub("[modules.a]\nrun = \"true\"\nretries = 1\n").await;
    let mut w = Raw::connect(&hub).await;
    w.register("w").await;
    assert_eq!(w.expect_assign().await, ("a".into(), 1));
    w.invoke(Some("1"), "Started", json!(["a", 1])).await;
    w.invoke(Some("2"), "Started", json!(["a", 1])).await;
    w.invoke(
        Some("3"),
        "Complete",
        json!([{"moduleId": "a", "attempt": 1, "status": "failed", "error": "boom"}]),
    )
    .await;
    let mut completions = Vec::new();
    let mut assigned = None;
    while completions.len() < 3 || assigned.is_none() {
        match w.next_non_ping().await {
            Some(Message::Completion {
                invocation_id,
                error,
                ..
            }) => completions.push((invocation_id, error)),
            Some(Message::Invocation {
                target, arguments, ..
            }) if target == "Assign" => assigned = Some(arguments[0]["attempt"].as_u64().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        completions.iter().all(|(_, e)| e.is_none()),
        "duplicate Started is fine: {completions:?}"
    );
    assert_eq!(assigned, Some(2), "the retry is attempt 2");
    // A second report for attempt 1 is stale now.
    w.invoke(
        Some("4"),
        "Complete",
        json!([{"moduleId": "a", "attempt": 1, "status": "succeeded"}]),
    )
    .await;
    match w.next_non_ping().await {
        Some(Message::Completion { error: Some(e), .. }) => assert!(e.contains("stale"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    w.invoke(Some("5"), "Started", json!(["a", 2])).await;
    w.invoke(
        Some("6"),
        "Complete",
        json!([{"moduleId": "a", "attempt": 2, "status": "succeeded"}]),
    )
    .await;
    w.invoke(
        Some("7"),
        "Complete",
        json!([{"moduleId": "a", "attempt": 2, "status": "failed"}]),
    )
    .await;
    let summary = finished(hub).await;
    assert!(
        summary.succeeded(),
        "the duplicate 'failed' report did not overwrite: {summary:?}"
    );
}

#[tokio::test]
async fn a_dropped_worker_resumes_with_its_key_and_keeps_its_module() {
    let hub = hub("[modules.a]\nrun = \"true\"\n").await;
    let mut first = Raw::connect(&hub).await;
    let welcome = first.register_with(json!({"name": "w"})).await;
    let (id, key) = (welcome["workerId"].clone(), welcome["resumeKey"].clone());
    assert_eq!(welcome["resumed"], false);
    assert_eq!(first.expect_assign().await, ("a".into(), 1));
    first.invoke(Some("s"), "Started", json!(["a", 1])).await;
    assert!(matches!(
        first.next_non_ping().await,
        Some(Message::Completion { error: None, .. })
    ));
    // The socket ends without a goodbye, as in a network cut.
    drop(first);

    // A claim with the wrong key is not taken: a new worker, nothing kept.
    let holding = json!([{"moduleId": "a", "attempt": 1}]);
    let mut impostor = Raw::connect(&hub).await;
    let refused = impostor
        .register_with(
            json!({"name": "w", "resume": {"workerId": id, "key": "guess", "holding": holding}}),
        )
        .await;
    assert_eq!(refused["resumed"], false);
    assert_ne!(refused["workerId"], id);
    assert_eq!(refused["keep"], json!([]));

    // The right key within the window: same id, and the module is kept.
    let mut back = Raw::connect(&hub).await;
    let resumed = back
        .register_with(
            json!({"name": "w", "resume": {"workerId": id, "key": key, "holding": holding}}),
        )
        .await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["workerId"], id);
    assert_eq!(resumed["keep"], holding);
    back.invoke(
        Some("c"),
        "Complete",
        json!([{"moduleId": "a", "attempt": 1, "status": "succeeded"}]),
    )
    .await;
    let summary = finished(hub).await;
    assert!(summary.succeeded(), "{summary:?}");
    assert_eq!(summary.modules[0].worker.as_deref(), Some("w"));
    assert!(matches!(
        summary.modules[0].state.ended().map(|e| e.attempt),
        Some(1)
    ));
    drop(impostor);
}

#[tokio::test]
async fn a_worker_that_never_reports_times_the_module_out() {
    let hub = hub("[modules.a]\nrun = \"true\"\ntimeout = \"1s\"\n").await;
    let mut mute = Raw::connect(&hub).await;
    mute.register("mute").await;
    assert_eq!(mute.expect_assign().await, ("a".into(), 1));
    mute.invoke(None, "Started", json!(["a", 1])).await;
    // It keeps answering pings, so it is not lost; it just never reports.
    match mute.next_non_ping().await {
        Some(Message::Invocation {
            target, arguments, ..
        }) if target == "Cancel" => {
            assert_eq!(
                (arguments[0].as_str(), arguments[1].as_u64()),
                (Some("a"), Some(1))
            );
        }
        other => panic!("expected a Cancel, got {other:?}"),
    }
    let summary = finished(hub).await;
    let state = &summary.modules[0].state;
    assert_eq!(state.name(), "timed out", "{summary:?}");
    let reason = state.ended().unwrap().reason.clone().unwrap();
    assert!(
        reason.starts_with("no result from worker mute within the module's timeout (1s)"),
        "{reason}"
    );
}
