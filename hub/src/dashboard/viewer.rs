//! One dashboard viewer's socket: the run's journal records as they
//! become durable (first the whole history, then each change, never a
//! snapshot), the worker table every second, and the log of the module
//! the page watches. A viewer reads the shared feed at its own offset, so
//! a slow one falls behind without holding anything for it; a send that
//! does not go through within [`SEND_LIMIT`] closes it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use muster_journal::{JournalFeed, LogCursor, LogFiles, LogRead};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::access::Role;
use crate::scheduler::Command;
use crate::websocket::{WsError, WsMessage};

/// Records per frame: at most about this many bytes of them.
const FRAME_BYTES: usize = 256 * 1024;
/// Log text per frame.
const LOG_FRAME_BYTES: u64 = 256 * 1024;
/// The scrollback a watch starts with: the whole log as kept, up to this.
const SCROLLBACK_BYTES: u64 = 16 * 1024 * 1024;
/// A viewer that does not take a frame within this is closed.
const SEND_LIMIT: Duration = Duration::from_secs(30);
/// How often the worker table is sent.
const WORKERS_EVERY: Duration = Duration::from_secs(1);
/// How long the scheduler has to answer for the worker table.
const WORKERS_ANSWER: Duration = Duration::from_secs(2);
/// The longest message a page may send (it only says what it watches).
const MAX_REQUEST_BYTES: usize = 4096;

/// What a viewer's task needs.
pub(crate) struct Viewer {
    pub feed: Arc<JournalFeed>,
    pub commands: mpsc::Sender<Command>,
    pub role: Role,
    pub shutdown: CancellationToken,
}

/// What the page may send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    /// The module whose log to follow; `null` to stop.
    watch: Option<String>,
}

/// The module whose log is followed, and how far it has been sent.
struct Watched {
    module: String,
    cursor: LogCursor,
}

/// Why the viewer's socket is done.
#[derive(Debug)]
enum Gone {
    Closed,
    Failed(String),
}

impl From<WsError> for Gone {
    fn from(e: WsError) -> Gone {
        Gone::Failed(e.to_string())
    }
}

/// Serves one viewer until it leaves, a send stalls, or the hub stops.
pub(crate) async fn serve<K, S>(mut sink: K, mut stream: S, viewer: Viewer)
where
    K: Sink<WsMessage, Error = WsError> + Unpin,
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    match follow(&mut sink, &mut stream, &viewer).await {
        Ok(()) | Err(Gone::Closed) => {}
        Err(Gone::Failed(why)) => tracing::debug!("a dashboard viewer is closed: {why}"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(WsMessage::Close)).await;
}

async fn follow<K, S>(sink: &mut K, stream: &mut S, viewer: &Viewer) -> Result<(), Gone>
where
    K: Sink<WsMessage, Error = WsError> + Unpin,
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let hello = json!({"hello": {"role": viewer.role.word(), "serverNow": unix_ms()}});
    send(sink, hello.to_string()).await?;
    let mut mark = viewer.feed.watch();
    let mut offset = 0;
    let mut logs_seen = 0;
    let mut said_full = false;
    let mut watched: Option<Watched> = None;
    let mut ticker = tokio::time::interval(WORKERS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = *mark.borrow_and_update();
        while offset < now.bytes {
            let (lines, next) = viewer.feed.read(offset, FRAME_BYTES);
            if lines.is_empty() {
                break;
            }
            send(sink, records_frame(&lines)).await?;
            offset = next;
        }
        if now.full && !std::mem::replace(&mut said_full, true) {
            let text = "the run's journal grew too long for the live page: it stops here \
                        (`muster status` follows the rest)";
            send(sink, json!({ "error": text }).to_string()).await?;
        }
        if now.logs != logs_seen {
            logs_seen = now.logs;
            if let Some(watched) = &mut watched {
                send_log(sink, &viewer.feed, watched).await?;
            }
        }
        tokio::select! {
            _ = viewer.shutdown.cancelled() => return Ok(()),
            changed = mark.changed() => {
                if changed.is_err() {
                    // The feed is gone with the hub.
                    return Ok(());
                }
            }
            _ = ticker.tick() => {
                if let Some(workers) = workers(&viewer.commands).await {
                    let frame = json!({"workers": workers, "serverNow": unix_ms()});
                    send(sink, frame.to_string()).await?;
                }
            }
            message = stream.next() => match message {
                Some(Ok(WsMessage::Text(text))) => {
                    watched = match parse(&text) {
                        Ok(Some(module)) => {
                            let mut fresh = Watched { module, cursor: LogCursor::default() };
                            send_whole_log(sink, &viewer.feed, &mut fresh).await?;
                            Some(fresh)
                        }
                        Ok(None) => None,
                        Err(why) => {
                            send(sink, json!({ "error": why }).to_string()).await?;
                            watched
                        }
                    };
                }
                Some(Ok(WsMessage::Ping(payload))) => {
                    let _ = tokio::time::timeout(SEND_LIMIT, sink.send(WsMessage::Pong(payload)))
                        .await;
                }
                Some(Ok(WsMessage::Pong(_))) => {}
                Some(Ok(WsMessage::Binary(_))) => {
                    return Err(Gone::Failed("binary frames are not understood".into()));
                }
                Some(Ok(WsMessage::Close)) | None => return Err(Gone::Closed),
                Some(Err(e)) => return Err(e.into()),
            },
        }
    }
}

/// The module a page asks to watch, or `None` to stop.
fn parse(text: &str) -> Result<Option<String>, String> {
    if text.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "a request of {} bytes is over the {MAX_REQUEST_BYTES}-byte limit",
            text.len()
        ));
    }
    serde_json::from_str::<Request>(text)
        .map(|request| request.watch)
        .map_err(|_| "send {\"watch\": \"<module id>\"} or {\"watch\": null}".to_owned())
}

/// `{"records":[…]}` around journal lines, without decoding them: each
/// line is already one JSON object.
pub(crate) fn records_frame(lines: &[u8]) -> String {
    let text = String::from_utf8_lossy(lines);
    let mut frame = String::with_capacity(text.len() + 16);
    frame.push_str("{\"records\":[");
    for (i, line) in text.lines().filter(|l| !l.is_empty()).enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(line);
    }
    frame.push_str("]}");
    frame
}

async fn send_whole_log<K>(
    sink: &mut K,
    feed: &JournalFeed,
    watched: &mut Watched,
) -> Result<(), Gone>
where
    K: Sink<WsMessage, Error = WsError> + Unpin,
{
    let (text, cursor) = match feed.logs_dir() {
        Some(dir) => {
            LogFiles::read_whole(dir, &watched.module, SCROLLBACK_BYTES).unwrap_or_else(|e| {
                let text = format!("[muster: the log cannot be read: {e}]\n");
                (text, LogCursor::default())
            })
        }
        None => (
            "[muster: this run keeps no log files]\n".to_owned(),
            LogCursor::default(),
        ),
    };
    watched.cursor = cursor;
    send(sink, log_frame(&watched.module, &text, true)).await
}

async fn send_log<K>(sink: &mut K, feed: &JournalFeed, watched: &mut Watched) -> Result<(), Gone>
where
    K: Sink<WsMessage, Error = WsError> + Unpin,
{
    let Some(dir) = feed.logs_dir() else {
        return Ok(());
    };
    loop {
        match LogFiles::read_from(dir, &watched.module, watched.cursor, LOG_FRAME_BYTES) {
            Ok(LogRead::Text(text, next)) => {
                if text.is_empty() {
                    return Ok(());
                }
                watched.cursor = next;
                send(sink, log_frame(&watched.module, &text, false)).await?;
            }
            Ok(LogRead::Rotated) => return send_whole_log(sink, feed, watched).await,
            Err(e) => {
                tracing::debug!("a dashboard viewer cannot read a log: {e}");
                return Ok(());
            }
        }
    }
}

fn log_frame(module: &str, text: &str, reset: bool) -> String {
    json!({"log": {"module": module, "text": text, "reset": reset}}).to_string()
}

/// The worker table, if the scheduler answers in time (it has stopped
/// once the run is over).
async fn workers(commands: &mpsc::Sender<Command>) -> Option<serde_json::Value> {
    let (reply, answer) = oneshot::channel();
    let asked = async {
        commands.send(Command::Workers { reply }).await.ok()?;
        answer.await.ok()
    };
    let views = tokio::time::timeout(WORKERS_ANSWER, asked).await.ok()??;
    serde_json::to_value(views).ok()
}

async fn send<K>(sink: &mut K, text: String) -> Result<(), Gone>
where
    K: Sink<WsMessage, Error = WsError> + Unpin,
{
    match tokio::time::timeout(SEND_LIMIT, sink.send(WsMessage::Text(text))).await {
        Ok(sent) => sent.map_err(Gone::from),
        Err(_) => Err(Gone::Failed(format!(
            "it took nothing for {}",
            humantime::format_duration(SEND_LIMIT)
        ))),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_one_json_array_without_decoding() {
        let frame = records_frame(b"{\"seq\":1}\n{\"seq\":2}\n");
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["records"][1]["seq"], 2);
        assert_eq!(records_frame(b""), "{\"records\":[]}");
    }

    #[test]
    fn a_page_may_only_say_what_it_watches() {
        assert_eq!(parse(r#"{"watch":"build"}"#), Ok(Some("build".into())));
        assert_eq!(parse(r#"{"watch":null}"#), Ok(None));
        assert!(parse(r#"{"watch":"a","cancel":true}"#).is_err());
        assert!(parse("not json").is_err());
        assert!(parse(&format!(r#"{{"watch":"{}"}}"#, "x".repeat(5000))).is_err());
    }
}
