//! What a peer sends is never echoed back large: the hub answers calls
//! with the peer's `invocationId` and with error texts that may quote the
//! peer's input, so a peer that never reads could otherwise fill the
//! hub's memory with copies of its own largest records.

mod common;

use common::Raw;
use muster_core::wire::limits::{MAX_ERROR_TEXT_BYTES, MAX_INVOCATION_ID_BYTES};
use muster_core::wire::signalr::Message;
use serde_json::json;

#[tokio::test]
async fn a_long_invocation_id_closes_the_connection() {
    let hub = common::hub("[modules.a]\nrun = \"true\"\n").await;
    let mut peer = Raw::connect(&hub).await;
    peer.handshake().await;
    let long = "q".repeat(MAX_INVOCATION_ID_BYTES + 1);
    peer.invoke(Some(&long), "Started", json!(["a", 1])).await;
    match peer.next_non_ping().await {
        Some(Message::Close {
            error: Some(error), ..
        }) => {
            assert!(error.contains("invocationId"), "{error}");
            assert!(error.len() < 200, "{error}");
        }
        other => panic!("expected a Close, got {other:?}"),
    }
    drop(hub);
}

#[tokio::test]
async fn an_error_answer_quotes_at_most_a_bounded_text() {
    let hub = common::hub("[modules.a]\nrun = \"true\"\n").await;
    let mut peer = Raw::connect(&hub).await;
    peer.register("w").await;
    let huge = "m".repeat(500_000);
    // An unknown method named with half a megabyte, and an argument of
    // the wrong type that a deserialiser quotes.
    peer.invoke(Some("1"), &huge, json!([])).await;
    peer.invoke(Some("2"), "Started", json!([huge, 1])).await;
    peer.invoke(Some("3"), "Started", json!([1, huge])).await;
    let mut answered = 0;
    while answered < 3 {
        match peer.next_non_ping().await {
            Some(Message::Completion {
                error: Some(error), ..
            }) => {
                assert!(error.len() <= MAX_ERROR_TEXT_BYTES, "{} bytes", error.len());
                answered += 1;
            }
            Some(Message::Invocation { .. }) => {}
            other => panic!("expected an error Completion, got {other:?}"),
        }
    }
    drop(hub);
}
