//! The hub and its journal over real loopback sockets: a worker's
//! `Complete` is answered, and the module's dependents are assigned, only
//! once the journal holds its record (what does not depend on a result
//! goes out at once); an approved module is assigned, and its approver
//! answered, only once the approval is journaled; no worker hears the run
//! has ended before the journal holds its end; a journal that fails ends
//! the run with the error and closes every worker's connection, saying why.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Raw, TOKEN};
use muster_core::journal::{module_digests, plan_digest, RunStart, Settings, StateName};
use muster_core::mask::Masker;
use muster_core::parse_pipeline;
use muster_core::wire::signalr::Message;
use muster_hub::{Hub, HubConfig, HubError, Journaling};
use muster_journal::{AppendFuture, Backend, Batch, JournalWriter, StoreError};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A journal that makes a batch durable only when the test allows one
/// (a permit per batch), and keeps what it was given.
struct Gated {
    permits: Arc<Semaphore>,
    written: Arc<Mutex<Vec<(StateName, String)>>>,
    /// Batches made durable before every later one fails.
    fail_after: Option<usize>,
    /// Every batch fails while it is set.
    failing: Option<Arc<AtomicBool>>,
    batches: usize,
}

impl Gated {
    /// Durable once `permits` allow, failing never.
    fn new(permits: Arc<Semaphore>) -> Gated {
        Gated {
            permits,
            written: Arc::new(Mutex::new(Vec::new())),
            fail_after: None,
            failing: None,
            batches: 0,
        }
    }
}

impl Backend for Gated {
    fn append<'a>(&'a mut self, batch: &'a Batch) -> AppendFuture<'a> {
        Box::pin(async move {
            let failing = self
                .failing
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst));
            if failing || self.fail_after.is_some_and(|n| self.batches >= n) {
                return Err(StoreError::Closed);
            }
            self.batches += 1;
            self.permits.acquire().await.expect("open").forget();
            let mut written = self.written.lock().unwrap();
            for record in batch.records() {
                if let muster_core::journal::Entry::Module(m) = &record.entry {
                    written.push((m.state, m.module.clone()));
                }
            }
            Ok(())
        })
    }
}

const PIPELINE: &str =
    "[modules.a]\nrun = \"true\"\n[modules.b]\nrun = \"true\"\nneeds = [\"a\"]\n";

async fn journaled_hub(backend: Gated) -> Hub {
    journaled_hub_of(PIPELINE, backend).await
}

async fn journaled_hub_of(pipeline: &str, backend: Gated) -> Hub {
    let plan = parse_pipeline("t.toml", pipeline).unwrap();
    let modules = module_digests(&plan);
    let start = RunStart {
        run_id: "test-run".into(),
        pipeline: "t.toml".into(),
        muster_version: "test".into(),
        stint: 1,
        epoch: 1,
        resumed_from: None,
        took_over: None,
        plan_digest: plan_digest(&modules),
        modules,
        settings: Settings::default(),
    };
    let journaling = Journaling {
        writer: JournalWriter::start(Box::new(backend), None, 1),
        start,
        masker: Masker::default(),
        resume: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = HubConfig {
        token: TOKEN.into(),
        ..HubConfig::default()
    };
    let mut hub = Hub::start_journaled(listener, plan, config, Some(journaling))
        .await
        .unwrap();
    drop(hub.take_events());
    hub
}

/// A raw client that has sent `Register` as worker `w`.
async fn registering(hub: &Hub) -> Raw {
    let mut worker = Raw::connect(hub).await;
    worker.handshake().await;
    worker
        .invoke(Some("r"), "Register", json!([{"name": "w"}]))
        .await;
    worker
}

/// A worker `runner` that has started module `a`, and a worker `idle`
/// with nothing to do.
async fn runner_and_idle(hub: &Hub) -> (Raw, Raw) {
    let mut runner = Raw::connect(hub).await;
    runner.register("runner").await;
    let (module, _) = runner.expect_assign().await;
    assert_eq!(module, "a");
    let mut idle = Raw::connect(hub).await;
    idle.register("idle").await;
    runner.invoke(None, "Started", json!(["a", 1])).await;
    (runner, idle)
}

/// `worker` reports attempt 1 of `a` succeeded, asking for an answer ("c").
async fn complete_a(worker: &mut Raw) {
    worker
        .invoke(
            Some("c"),
            "Complete",
            json!([{"moduleId": "a", "attempt": 1, "status": "succeeded", "exitCode": 0}]),
        )
        .await;
}

/// Nothing but pings for `wait`.
async fn silent_for(client: &mut Raw, wait: Duration) -> bool {
    tokio::time::timeout(wait, client.next_non_ping())
        .await
        .is_err()
}

#[tokio::test]
async fn a_complete_is_answered_and_dependents_assigned_only_once_journaled() {
    let permits = Arc::new(Semaphore::new(0));
    let written = Arc::new(Mutex::new(Vec::new()));
    let hub = journaled_hub(Gated {
        written: written.clone(),
        ..Gated::new(permits.clone())
    })
    .await;
    let mut worker = registering(&hub).await;
    // Nothing is durable yet, but joining and taking a module with no
    // needs do not wait for the disk: their records are queued first.
    assert!(matches!(
        worker.next_non_ping().await,
        Some(Message::Completion { .. })
    ));
    let (module, attempt) = worker.expect_assign().await;
    assert_eq!((module.as_str(), attempt), ("a", 1));
    worker.invoke(Some("s"), "Started", json!(["a", 1])).await;
    assert!(matches!(
        worker.next_non_ping().await,
        Some(Message::Completion { .. })
    ));
    complete_a(&mut worker).await;
    assert!(
        silent_for(&mut worker, Duration::from_millis(500)).await,
        "the Complete was answered, or b assigned, before a's result was durable"
    );
    assert!(!written
        .lock()
        .unwrap()
        .contains(&(StateName::Succeeded, "a".into())));
    permits.add_permits(100);
    match worker.next_non_ping().await {
        Some(Message::Completion { invocation_id, .. }) => assert_eq!(invocation_id, "c"),
        other => panic!("expected the Complete's answer, got {other:?}"),
    }
    assert!(written
        .lock()
        .unwrap()
        .contains(&(StateName::Succeeded, "a".into())));
    let (module, _) = worker.expect_assign().await;
    assert_eq!(module, "b");
    drop(worker);
    drop(hub);
}

#[tokio::test]
async fn an_approval_is_answered_and_its_module_assigned_only_once_journaled() {
    let permits = Arc::new(Semaphore::new(0));
    let hub = journaled_hub_of(
        "[modules.g]\nrun = \"true\"\napproval = {}\n",
        Gated::new(permits.clone()),
    )
    .await;
    let mut worker = registering(&hub).await;
    assert!(matches!(
        worker.next_non_ping().await,
        Some(Message::Completion { .. })
    ));
    // The gate waits: nothing is assigned.
    assert!(silent_for(&mut worker, Duration::from_millis(300)).await);
    let url = format!("{}/decide", hub.url().replacen("ws://", "http://", 1));
    let decided = tokio::spawn(
        reqwest::Client::new()
            .post(url)
            .bearer_auth(TOKEN)
            .json(&json!({"module": "g", "decision": "approve"}))
            .send(),
    );
    assert!(
        silent_for(&mut worker, Duration::from_millis(500)).await,
        "g was assigned before its approval was durable"
    );
    assert!(
        !decided.is_finished(),
        "the approval was answered before it was durable"
    );
    permits.add_permits(100);
    let answer = decided.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let (module, _) = worker.expect_assign().await;
    assert_eq!(module, "g");
    drop(worker);
    drop(hub);
}

#[tokio::test]
async fn a_failing_journal_ends_the_run_with_its_error_and_tells_workers() {
    let hub = journaled_hub(Gated {
        // The run's start is journaled; the worker's joining is not.
        fail_after: Some(1),
        ..Gated::new(Arc::new(Semaphore::new(100)))
    })
    .await;
    // Let the run's start be written before the worker comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut worker = registering(&hub).await;
    let waited = tokio::time::timeout(Duration::from_secs(20), hub.wait(Duration::from_secs(1)))
        .await
        .expect("the hub ended");
    match waited {
        Err(HubError::Journal(why)) => assert!(!why.is_empty()),
        other => panic!("expected a journal error, got {other:?}"),
    }
    // The worker is told why; nothing about a result was acknowledged.
    let mut closed = None;
    while let Some(message) = worker.next_non_ping().await {
        match message {
            Message::Close { error, .. } => {
                closed = error;
                break;
            }
            Message::Completion { invocation_id, .. } => {
                assert_eq!(invocation_id, "r", "only the Register was answered")
            }
            _ => {}
        }
    }
    let closed = closed.expect("a Close with the reason");
    assert!(closed.contains("journal"), "{closed}");
}

#[tokio::test]
async fn the_runs_end_reaches_no_worker_before_it_is_journaled() {
    let permits = Arc::new(Semaphore::new(0));
    let hub = journaled_hub_of("[modules.a]\nrun = \"true\"\n", Gated::new(permits.clone())).await;
    // The idle worker has no answer waiting, so only the run's end being
    // durable can hold its Shutdown back.
    let (mut runner, mut idle) = runner_and_idle(&hub).await;
    complete_a(&mut runner).await;
    assert!(
        silent_for(&mut idle, Duration::from_millis(500)).await,
        "a worker was told the run ended before the journal held its end"
    );
    permits.add_permits(1000);
    for worker in [&mut runner, &mut idle] {
        let shutdown = loop {
            match worker.next_non_ping().await {
                Some(Message::Invocation {
                    target, arguments, ..
                }) if target == "Shutdown" => break arguments,
                Some(Message::Completion { .. }) => {}
                other => panic!("expected Shutdown, got {other:?}"),
            }
        };
        assert_eq!(shutdown[1], "succeeded");
    }
    drop(hub);
}

#[tokio::test]
async fn a_run_whose_end_cannot_be_journaled_tells_no_worker_it_ended() {
    let failing = Arc::new(AtomicBool::new(false));
    let hub = journaled_hub_of(
        "[modules.a]\nrun = \"true\"\n",
        Gated {
            failing: Some(failing.clone()),
            ..Gated::new(Arc::new(Semaphore::new(1000)))
        },
    )
    .await;
    let (mut runner, mut idle) = runner_and_idle(&hub).await;
    // What happened so far is durable; the result and the run's end will
    // not be.
    tokio::time::sleep(Duration::from_millis(300)).await;
    failing.store(true, Ordering::SeqCst);
    complete_a(&mut runner).await;
    for worker in [&mut runner, &mut idle] {
        match worker.next_non_ping().await {
            Some(Message::Close { error, .. }) => {
                let error = error.unwrap_or_default();
                assert!(error.contains("journal"), "{error}");
            }
            other => panic!("expected a Close saying the journal failed, got {other:?}"),
        }
    }
    let waited = tokio::time::timeout(Duration::from_secs(20), hub.wait(Duration::from_secs(1)))
        .await
        .expect("the hub ended");
    assert!(matches!(waited, Err(HubError::Journal(_))), "{waited:?}");
}
