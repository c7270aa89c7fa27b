//! The dashboard's HTTP side over real loopback sockets: the page only
//! with a token (a pasted `?access_token=` becomes a cookie and leaves the
//! address), the feed (the journal's durable records, the worker table,
//! a watched module's log as it is written), Cancel for the run token
//! only, and no dashboard without a journal.

mod common;

use std::time::Duration;

use common::{Raw, TOKEN};
use futures_util::{SinkExt, StreamExt};
use muster_core::journal::{module_digests, plan_digest, RunStart, Settings};
use muster_core::mask::Masker;
use muster_core::parse_pipeline;
use muster_hub::{Hub, HubConfig, Journaling};
use muster_journal::{FileJournal, JournalWriter, LogFiles};
use reqwest::header;
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const VIEW: &str = "viewer-token";

const PIPELINE: &str =
    "[modules.build]\nrun = \"true\"\n[modules.test]\nrun = \"true\"\nneeds = [\"build\"]\n";

struct Dashboard {
    hub: Hub,
    base: String,
    _dir: tempfile::TempDir,
}

async fn dashboard(max_viewers: usize) -> Dashboard {
    let dir = tempfile::tempdir().unwrap();
    let plan = parse_pipeline("t.toml", PIPELINE).unwrap();
    let modules = module_digests(&plan);
    let start = RunStart {
        run_id: "dash-run".into(),
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
    let backend = FileJournal::create(&dir.path().join("journal.jsonl")).unwrap();
    let logs = LogFiles::new(&dir.path().join("logs"), Masker::default(), 1 << 20).unwrap();
    let journaling = Journaling {
        writer: JournalWriter::start(Box::new(backend), Some(logs), 1),
        start,
        masker: Masker::default(),
        resume: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = HubConfig {
        token: TOKEN.into(),
        view_token: Some(VIEW.into()),
        max_viewers,
        ..HubConfig::default()
    };
    let mut hub = Hub::start_journaled(listener, plan, config, Some(journaling))
        .await
        .unwrap();
    drop(hub.take_events());
    let base = hub.dashboard_url().trim_end_matches('/').to_owned();
    Dashboard {
        hub,
        base,
        _dir: dir,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

type Feed =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_feed(base: &str, cookie_token: &str) -> Feed {
    let url = format!("{}/dashboard/feed", base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        header::COOKIE,
        format!("muster_access={cookie_token}").parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The next JSON frame from the feed (10 s at most).
async fn next(feed: &mut Feed) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the feed said nothing for 10 s")
            .expect("the feed ended")
            .unwrap();
        if let WsMessage::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Frames until one satisfies `wanted`, which it returns.
async fn until(feed: &mut Feed, wanted: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let frame = next(feed).await;
        if wanted(&frame) {
            return frame;
        }
    }
    panic!("the feed never said what was waited for");
}

fn has_record(frame: &Value, test: impl Fn(&Value) -> bool) -> bool {
    frame["records"]
        .as_array()
        .is_some_and(|records| records.iter().any(test))
}

#[tokio::test]
async fn the_page_opens_only_with_a_token_and_a_pasted_token_becomes_a_cookie() {
    let dash = dashboard(4).await;
    let http = client();
    let refused = http.get(format!("{}/", dash.base)).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body = refused.text().await.unwrap();
    assert!(body.contains("access_token") && !body.contains("build"));
    let wrong = http
        .get(format!("{}/", dash.base))
        .header(header::COOKIE, "muster_access=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let pasted = http
        .get(format!("{}/?access_token={VIEW}", dash.base))
        .send()
        .await
        .unwrap();
    assert_eq!(pasted.status(), 303);
    assert_eq!(pasted.headers()[header::LOCATION], "/");
    let cookie = pasted.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with(&format!("muster_access={VIEW};")));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));

    let page = http
        .get(format!("{}/", dash.base))
        .header(header::COOKIE, format!("muster_access={VIEW}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(policy.contains("default-src 'none'"));
    assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(page.text().await.unwrap(), muster_hub::DASHBOARD_PAGE);

    // The viewer token is not a worker's: the hub refuses it.
    let negotiate = http
        .post(format!("{}/hub/negotiate?negotiateVersion=1", dash.base))
        .bearer_auth(VIEW)
        .send()
        .await
        .unwrap();
    assert_eq!(negotiate.status(), 401);
    dash.hub.canceller().cancel("test over").await;
}

#[tokio::test]
async fn a_viewer_follows_the_journal_the_workers_and_a_modules_log() {
    let dash = dashboard(4).await;
    let mut feed = open_feed(&dash.base, VIEW).await;
    let hello = next(&mut feed).await;
    assert_eq!(hello["hello"]["role"], "viewer");
    until(&mut feed, |f| has_record(f, |r| r["type"] == "runStarted")).await;

    let mut worker = Raw::connect(&dash.hub).await;
    worker.register("w1").await;
    let (module, attempt) = worker.expect_assign().await;
    assert_eq!(module, "build");
    worker
        .invoke(Some("s"), "Started", json!(["build", attempt]))
        .await;
    until(&mut feed, |f| {
        has_record(f, |r| r["module"] == "build" && r["state"] == "running")
    })
    .await;
    let workers = until(&mut feed, |f| f["workers"].is_array()).await;
    let table = &workers["workers"][0];
    assert_eq!(table["name"], "w1");
    assert_eq!(table["running"], json!(["build"]));
    assert!(table["heardMsAgo"].as_u64().is_some());

    // Watching a module sends its scrollback, then each new piece.
    worker
        .invoke(
            None,
            "Log",
            json!(["build", attempt, "stdout", "first line\n"]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    feed.send(WsMessage::Text(r#"{"watch":"build"}"#.into()))
        .await
        .unwrap();
    let scrollback = until(&mut feed, |f| f["log"].is_object()).await;
    assert_eq!(scrollback["log"]["reset"], true);
    assert_eq!(scrollback["log"]["text"], "first line\n");
    worker
        .invoke(
            None,
            "Log",
            json!(["build", attempt, "stdout", "second line\n"]),
        )
        .await;
    let more = until(&mut feed, |f| f["log"].is_object()).await;
    assert_eq!(more["log"]["reset"], false);
    assert_eq!(more["log"]["text"], "second line\n");

    // A page may only say what it watches.
    feed.send(WsMessage::Text(r#"{"cancel":true}"#.into()))
        .await
        .unwrap();
    let refusal = until(&mut feed, |f| f["error"].is_string()).await;
    assert!(refusal["error"].as_str().unwrap().contains("watch"));

    worker
        .invoke(
            Some("c"),
            "Complete",
            json!([{"moduleId": "build", "attempt": attempt, "status": "succeeded", "exitCode": 0}]),
        )
        .await;
    until(&mut feed, |f| {
        has_record(f, |r| r["module"] == "build" && r["state"] == "succeeded")
    })
    .await;
    // A viewer that comes later gets the whole history.
    let mut late = open_feed(&dash.base, TOKEN).await;
    assert_eq!(next(&mut late).await["hello"]["role"], "operator");
    until(&mut late, |f| {
        has_record(f, |r| r["module"] == "build" && r["state"] == "succeeded")
    })
    .await;
    dash.hub.canceller().cancel("test over").await;
}

#[tokio::test]
async fn only_the_run_token_cancels_and_only_from_the_page() {
    let dash = dashboard(4).await;
    let http = client();
    let url = format!("{}/dashboard/cancel", dash.base);
    let viewer = http
        .post(&url)
        .header(header::COOKIE, format!("muster_access={VIEW}"))
        .header("X-Muster-Dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), 403);
    assert!(viewer.text().await.unwrap().contains("viewer token"));
    let nobody = http
        .post(&url)
        .header("X-Muster-Dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), 401);
    let forged = http
        .post(&url)
        .header(header::COOKIE, format!("muster_access={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "a cookie alone never cancels");
    let operator = http
        .post(&url)
        .header(header::COOKIE, format!("muster_access={TOKEN}"))
        .header("X-Muster-Dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(operator.status(), 202);
    let body: Value = operator.json().await.unwrap();
    assert_eq!(body["status"], "cancelling");
    let summary = common::finished(dash.hub).await;
    assert_eq!(
        summary.outcome(),
        muster_core::wire::types::RunOutcome::Cancelled
    );
}

#[tokio::test]
async fn viewers_beyond_the_limit_are_turned_away() {
    let dash = dashboard(1).await;
    let mut first = open_feed(&dash.base, VIEW).await;
    assert!(next(&mut first).await["hello"].is_object());
    let url = format!("{}/dashboard/feed", dash.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        header::COOKIE,
        format!("muster_access={VIEW}").parse().unwrap(),
    );
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(refused.to_string().contains("503"), "{refused}");
    dash.hub.canceller().cancel("test over").await;
}

#[tokio::test]
async fn a_run_without_a_journal_says_why_it_has_no_dashboard() {
    let hub = common::hub(PIPELINE).await;
    let base = hub.dashboard_url();
    let answer = client()
        .get(format!("{base}?access_token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    assert!(answer.text().await.unwrap().contains("--no-journal"));
    hub.canceller().cancel("test over").await;
}

#[tokio::test]
async fn gates_are_decided_from_the_page_by_approvers_and_the_run_token_only() {
    let dash = dashboard(4).await;
    let http = client();
    let url = format!("{}/dashboard/decide", dash.base);
    let body = r#"{"module": "test", "decision": "approve"}"#;
    let post = |cookie: Option<&str>, header: bool| {
        let mut request = http.post(&url).body(body);
        if let Some(token) = cookie {
            request = request.header(header::COOKIE, format!("muster_access={token}"));
        }
        if header {
            request = request.header("X-Muster-Dashboard", "1");
        }
        request.send()
    };
    let viewer = post(Some(VIEW), true).await.unwrap();
    assert_eq!(viewer.status(), 403);
    assert!(viewer.text().await.unwrap().contains("viewer token"));
    assert_eq!(post(None, true).await.unwrap().status(), 401);
    let forged = post(Some(TOKEN), false).await.unwrap();
    assert_eq!(forged.status(), 403, "a cookie alone never decides");
    // The run token gets to the scheduler, which answers for the module.
    let operator = post(Some(TOKEN), true).await.unwrap();
    assert_eq!(operator.status(), 404);
    let answer: Value = operator.json().await.unwrap();
    assert_eq!(answer["error"], "module 'test' has no approval gate");
    dash.hub.canceller().cancel("test over").await;
}
