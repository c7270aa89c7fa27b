//! The journal as a Redis Stream, for CI: it outlives the runner the
//! master ran on, so a later job can read, follow or resume the run. One
//! stream per run id (`muster:journal:<run-id>`, one entry per record,
//! field `r` holding the record's line), beside it the highest epoch that
//! wrote it (`…:epoch`), both expiring after a TTL.
//!
//! Every append is one Lua script call, so Redis itself refuses a stale
//! master: the script checks the writer's epoch against the stored one
//! before adding anything. It also skips records the stream already holds,
//! so an append whose answer was lost can be sent again without doubling
//! them, and refuses to continue a stream that is gone.
//!
//! A failed module's last log lines are kept for CI status: the backend
//! keeps the last [`LOG_TAIL_BYTES`] of each running module's log in
//! memory, and the call that appends the module's failure stores them
//! (`…:log:<module>`, with the same TTL).
//!
//! Every call is bounded ([`REDIS_TIMEOUT`]); an append that cannot reach
//! Redis tries again, on a new connection, for up to [`APPEND_LIMIT`], then
//! fails the run with the (redacted) URL.

use std::collections::HashMap;
use std::time::Duration;

use muster_core::journal::codec::decode_one;
use muster_core::journal::{Entry, JournalError, Record, StateName};
use muster_core::mask::Masker;
use muster_core::url::redact_url;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, Value};
use tokio::time::{timeout, Instant};

use crate::backend::{AppendFuture, Backend, Batch};
use crate::error::StoreError;

/// How long the stream is kept after its last append.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Bound on connecting and on one call.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an append keeps trying while Redis does not answer.
pub const APPEND_LIMIT: Duration = Duration::from_secs(30);
/// How long one [`Follower::next`] waits for new records.
pub const FOLLOW_BLOCK: Duration = Duration::from_secs(1);
/// Log bytes kept per running module, and stored when it fails.
pub const LOG_TAIL_BYTES: usize = 16 * 1024;

/// Records read per call.
const PAGE: usize = 1000;
/// Pauses between tries of an append: from the first, doubling to the
/// second.
const RETRY_PAUSE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(2));

/// KEYS: the stream, the epoch, then the log tails to store.
/// ARGV: epoch, TTL (ms), whether this is a retry (1/0), the record count
/// n, then n pairs (seq, line), then one text per log tail key.
const APPEND_SCRIPT: &str = r"
local epoch = tonumber(ARGV[1])
local stored = tonumber(redis.call('GET', KEYS[2]) or '0')
if stored > epoch then
  return redis.error_reply('STALE ' .. stored)
end
local n = tonumber(ARGV[4])
local last = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if top[1] then
  local ok, record = pcall(cjson.decode, top[1][2][2])
  if ok and type(record) == 'table' then
    last = tonumber(record['seq']) or 0
  end
end
if n > 0 then
  local first = tonumber(ARGV[5])
  if last == 0 and first > 1 then
    return redis.error_reply('LOST ' .. first)
  end
  if ARGV[3] == '0' and first <= last then
    return redis.error_reply('BEHIND ' .. last)
  end
end
if stored < epoch then
  redis.call('SET', KEYS[2], ARGV[1])
end
local added = 0
for i = 1, n do
  if tonumber(ARGV[3 + 2 * i]) > last then
    redis.call('XADD', KEYS[1], '*', 'r', ARGV[4 + 2 * i])
    added = added + 1
  end
end
for k = 3, #KEYS do
  redis.call('SET', KEYS[k], ARGV[4 + 2 * n + k - 2], 'PX', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return added
";

/// The stream that holds run `run_id`'s journal.
pub fn stream_key(run_id: &str) -> String {
    format!("muster:journal:{run_id}")
}

/// The highest epoch that wrote the run's journal.
pub fn epoch_key(run_id: &str) -> String {
    format!("muster:journal:{run_id}:epoch")
}

/// The last log lines of a module that failed.
pub fn log_tail_key(run_id: &str, module: &str) -> String {
    format!("muster:journal:{run_id}:log:{module}")
}

/// One run's journal in Redis, written by one master (one epoch).
pub struct RedisJournal {
    link: Link,
    run_id: String,
    epoch: u64,
    ttl: Duration,
    append_limit: Duration,
    script: redis::Script,
    /// Kept only when asked for, with the masker to pass them through.
    tails: Option<LogTails>,
}

struct LogTails {
    masker: Masker,
    /// The running modules' last log bytes.
    by_module: HashMap<String, String>,
}

impl RedisJournal {
    /// Connects (within [`REDIS_TIMEOUT`], once: Redis is up by the time a
    /// master writes its journal) to write run `run_id`'s journal as the
    /// master of `epoch`, keeping it `ttl` after each append.
    pub async fn connect(
        url: &str,
        run_id: &str,
        epoch: u64,
        ttl: Duration,
    ) -> Result<RedisJournal, StoreError> {
        let mut link = Link::open(url)?;
        link.connection().await?;
        Ok(RedisJournal {
            link,
            run_id: run_id.to_owned(),
            epoch,
            ttl,
            append_limit: APPEND_LIMIT,
            script: redis::Script::new(APPEND_SCRIPT),
            tails: None,
        })
    }

    /// Keeps each running module's last log lines, masked by `masker`, to
    /// store them when the module fails or times out.
    pub fn keep_log_tails(mut self, masker: Masker) -> RedisJournal {
        self.tails = Some(LogTails {
            masker,
            by_module: HashMap::new(),
        });
        self
    }

    /// How long an append keeps trying while Redis does not answer
    /// (default [`APPEND_LIMIT`]).
    pub fn append_limit(mut self, limit: Duration) -> RedisJournal {
        self.append_limit = limit;
        self
    }

    /// The URL as it may be printed.
    pub fn shown_url(&self) -> &str {
        &self.link.shown
    }

    /// The log tails this batch stores: those of the modules it ends as
    /// failed or timed out. Every module it ends stops being kept.
    fn tails_to_store(&mut self, batch: &Batch) -> Vec<(String, String)> {
        let Some(tails) = &mut self.tails else {
            return Vec::new();
        };
        let mut store = Vec::new();
        for record in batch.records() {
            let Entry::Module(module) = &record.entry else {
                continue;
            };
            if !module.state.is_terminal() {
                continue;
            }
            let tail = tails.by_module.remove(&module.module);
            if matches!(module.state, StateName::Failed | StateName::TimedOut) {
                if let Some(text) = tail {
                    store.push((log_tail_key(&self.run_id, &module.module), text));
                }
            }
        }
        store
    }

    /// One script call for the batch; `retry` when an earlier call for it
    /// may have been stored.
    async fn append_once(
        &mut self,
        batch: &Batch,
        tails: &[(String, String)],
        retry: bool,
    ) -> Result<(), Failed> {
        let mut invocation = self.script.key(stream_key(&self.run_id));
        invocation
            .key(epoch_key(&self.run_id))
            .arg(self.epoch)
            .arg(self.ttl.as_millis().max(1) as u64)
            .arg(u8::from(retry))
            .arg(batch.len());
        for (record, line) in batch.lines() {
            invocation.arg(record.seq).arg(line);
        }
        for (key, _) in tails {
            invocation.key(key);
        }
        for (_, text) in tails {
            invocation.arg(text);
        }
        let doing = format!("append to the journal stream {}", stream_key(&self.run_id));
        let mut connection = self.link.connection().await?;
        let answer = timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self
                .refusal(&e)
                .unwrap_or_else(|| self.link.failed(&doing, e))),
            Err(_) => Err(self.link.silent(&doing)),
        }
    }

    /// The script's own refusals, as errors that say what happened.
    fn refusal(&self, error: &RedisError) -> Option<Failed> {
        let number = error.detail().and_then(|d| d.trim().parse::<u64>().ok());
        let key = stream_key(&self.run_id);
        let reason = match (error.code()?, number) {
            ("STALE", Some(newer)) => {
                return Some(Failed::last(StoreError::Stale {
                    epoch: self.epoch,
                    newer,
                }))
            }
            ("LOST", Some(first)) => format!(
                "the stream is gone (Redis restarted without persistence, or the key expired \
                 or was deleted), so the records before {first} are lost; run the pipeline again"
            ),
            ("BEHIND", Some(last)) => format!(
                "the stream already holds record {last}, at or past this master's next: \
                 another master of epoch {} is writing this run's journal; stop one of them",
                self.epoch
            ),
            _ => return None,
        };
        Some(Failed::last(StoreError::Redis {
            url: self.link.shown.clone(),
            doing: format!("append to the journal stream {key}"),
            reason,
        }))
    }
}

impl Backend for RedisJournal {
    fn append<'a>(&'a mut self, batch: &'a Batch) -> AppendFuture<'a> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let tails = self.tails_to_store(batch);
            let deadline = Instant::now() + self.append_limit;
            let mut pause = RETRY_PAUSE.0;
            let mut retry = false;
            loop {
                let failed = match self.append_once(batch, &tails, retry).await {
                    Ok(()) => return Ok(()),
                    Err(failed) => failed,
                };
                if !failed.transient || Instant::now() + pause >= deadline {
                    return Err(failed.error);
                }
                tracing::warn!("{}; trying again", failed.error);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE.1);
                retry = true;
            }
        })
    }

    fn log(&mut self, module: &str, text: &str) {
        let Some(tails) = &mut self.tails else {
            return;
        };
        let masked = tails.masker.mask(text);
        let tail = tails.by_module.entry(module.to_owned()).or_default();
        tail.push_str(&masked);
        if tail.len() > LOG_TAIL_BYTES {
            let mut cut = tail.len() - LOG_TAIL_BYTES;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }
}

/// Every record of run `run_id`'s journal, or `None` when Redis has no
/// stream for it (never written, or expired).
pub async fn read_journal(url: &str, run_id: &str) -> Result<Option<Vec<Record>>, StoreError> {
    let mut link = Link::open(url)?;
    let mut reader = StreamReader::new(&link, run_id);
    let key = stream_key(run_id);
    let mut records = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let mut command = redis::cmd("XRANGE");
        command
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE);
        let reply: Value = link
            .run(&command, &format!("read the journal stream {key}"))
            .await?;
        let entries = entries(&reply).map_err(|why| reader.corrupt("?", why))?;
        let full = entries.len() == PAGE;
        for (id, line) in entries {
            records.push(reader.record(&id, line)?);
            start = format!("({id}");
        }
        if !full {
            break;
        }
    }
    Ok((!records.is_empty()).then_some(records))
}

/// The stored log tail of `module` of run `run_id`, if it failed and
/// logged something.
pub async fn read_log_tail(
    url: &str,
    run_id: &str,
    module: &str,
) -> Result<Option<String>, StoreError> {
    let mut link = Link::open(url)?;
    let key = log_tail_key(run_id, module);
    let mut command = redis::cmd("GET");
    command.arg(&key);
    Ok(link
        .run(&command, &format!("read the log tail {key}"))
        .await?)
}

/// Reads a run's journal as it is written: each [`Follower::next`] returns
/// the records appended since the last, waiting up to [`FOLLOW_BLOCK`] for
/// some. Loop until a `RunFinished` record (or your own limit).
pub struct Follower {
    link: Link,
    reader: StreamReader,
    key: String,
    last_id: String,
}

impl Follower {
    /// Follows run `run_id`'s journal after the stream entry `after` (a
    /// [`Follower::last_id`] from before), or from its start.
    pub async fn open(
        url: &str,
        run_id: &str,
        after: Option<&str>,
    ) -> Result<Follower, StoreError> {
        let mut link = Link::open(url)?;
        link.connection().await?;
        let reader = StreamReader::new(&link, run_id);
        Ok(Follower {
            link,
            reader,
            key: stream_key(run_id),
            last_id: after.unwrap_or("0-0").to_owned(),
        })
    }

    /// The records appended since the last call, in order; empty when none
    /// came within [`FOLLOW_BLOCK`].
    pub async fn next(&mut self) -> Result<Vec<Record>, StoreError> {
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(PAGE)
            .arg("BLOCK")
            .arg(FOLLOW_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last_id);
        let doing = format!("follow the journal stream {}", self.key);
        let reply: Value = self.link.run(&command, &doing).await?;
        // Nil when nothing came; else one stream: [key, entries].
        let entries = match &reply {
            Value::Nil => Vec::new(),
            Value::Array(streams) => match streams.first() {
                Some(Value::Array(stream)) if stream.len() == 2 => {
                    entries(&stream[1]).map_err(|why| self.reader.corrupt("?", why))?
                }
                _ => {
                    return Err(self.reader.corrupt(
                        "?",
                        format!("an XREAD reply of an unknown shape: {reply:?}"),
                    ))
                }
            },
            _ => {
                return Err(self.reader.corrupt(
                    "?",
                    format!("an XREAD reply of an unknown shape: {reply:?}"),
                ))
            }
        };
        let mut records = Vec::with_capacity(entries.len());
        for (id, line) in entries {
            records.push(self.reader.record(&id, line)?);
            self.last_id = id;
        }
        Ok(records)
    }

    /// The stream id of the last record returned ("0-0" before any): where
    /// a new follower would go on.
    pub fn last_id(&self) -> &str {
        &self.last_id
    }
}

/// Turns stream entries into records, in order, with errors naming the
/// stream and entry.
struct StreamReader {
    url: String,
    key: String,
    /// Records read so far.
    count: usize,
    last_seq: Option<u64>,
}

impl StreamReader {
    fn new(link: &Link, run_id: &str) -> StreamReader {
        StreamReader {
            url: link.shown.clone(),
            key: stream_key(run_id),
            count: 0,
            last_seq: None,
        }
    }

    fn record(&mut self, id: &str, line: Option<&[u8]>) -> Result<Record, StoreError> {
        self.count += 1;
        let Some(line) = line else {
            return Err(self.corrupt(id, "it has no field \"r\"".into()));
        };
        let source = format!("Redis stream {} at {}", self.key, self.url);
        let record = decode_one(line, &source, self.count, 0).map_err(|e| match e {
            JournalError::Corrupt { why, .. } => self.corrupt(id, why),
            newer => StoreError::Journal(newer),
        })?;
        if let Some(last) = self.last_seq.filter(|&last| record.seq <= last) {
            return Err(self.corrupt(id, format!("sequence number {} after {last}", record.seq)));
        }
        self.last_seq = Some(record.seq);
        Ok(record)
    }

    fn corrupt(&self, entry: &str, why: String) -> StoreError {
        StoreError::CorruptEntry {
            url: self.url.clone(),
            key: self.key.clone(),
            entry: entry.to_owned(),
            record: self.count,
            why,
        }
    }
}

/// A stream entry's id, and its `r` field if it has one.
type StreamEntry<'a> = (String, Option<&'a [u8]>);

/// The entries of an XRANGE reply (or of one stream in an XREAD reply):
/// each entry's id and its `r` field.
fn entries(reply: &Value) -> Result<Vec<StreamEntry<'_>>, String> {
    let Value::Array(items) = reply else {
        return Err(format!("the stream reply is not a list: {reply:?}"));
    };
    items
        .iter()
        .map(|item| {
            let Value::Array(pair) = item else {
                return Err("a stream entry is not a list".to_owned());
            };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (pair.first(), pair.get(1))
            else {
                return Err("a stream entry has no id and fields".to_owned());
            };
            let id = String::from_utf8_lossy(id).into_owned();
            let line = fields.chunks(2).find_map(|kv| match kv {
                [Value::BulkString(k), Value::BulkString(v)] if k == b"r" => Some(v.as_slice()),
                _ => None,
            });
            Ok((id, line))
        })
        .collect()
}

/// A failure, and whether trying again may help.
struct Failed {
    error: StoreError,
    transient: bool,
}

impl Failed {
    fn last(error: StoreError) -> Failed {
        Failed {
            error,
            transient: false,
        }
    }
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> StoreError {
        failed.error
    }
}

/// One Redis server: connected when first needed, and again after a
/// connection that failed.
struct Link {
    client: redis::Client,
    /// The URL with any password replaced, for messages.
    shown: String,
    connection: Option<MultiplexedConnection>,
}

impl Link {
    /// Checks the URL; connects later.
    fn open(url: &str) -> Result<Link, StoreError> {
        let shown = redact_url(url);
        let bad = |reason: String| StoreError::BadUrl {
            url: shown.clone(),
            reason,
        };
        if !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(bad("it must start with redis:// or rediss://".into()));
        }
        let client = redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
        Ok(Link {
            client,
            shown,
            connection: None,
        })
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, Failed> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match timeout(REDIS_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => {
                self.connection = Some(connection.clone());
                Ok(connection)
            }
            Ok(Err(e)) => Err(self.failed("connect", e)),
            Err(_) => Err(self.silent("connect")),
        }
    }

    /// Runs one command, within [`REDIS_TIMEOUT`].
    async fn run<T: FromRedisValue>(
        &mut self,
        command: &redis::Cmd,
        doing: &str,
    ) -> Result<T, Failed> {
        let mut connection = self.connection().await?;
        match timeout(REDIS_TIMEOUT, command.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(doing, e)),
            Err(_) => Err(self.silent(doing)),
        }
    }

    /// No answer in time: the connection is dropped, to be made again.
    fn silent(&mut self, doing: &str) -> Failed {
        self.connection = None;
        Failed {
            error: StoreError::Redis {
                url: self.shown.clone(),
                doing: doing.to_owned(),
                reason: format!(
                    "no answer within {} (is Redis up, and reachable from here?)",
                    humantime::format_duration(REDIS_TIMEOUT)
                ),
            },
            transient: true,
        }
    }

    /// A Redis error: no connection, a dropped one, and a server still
    /// loading or failing over may pass (the connection is made again);
    /// anything else Redis answered (a wrong password, out of memory) will
    /// not.
    fn failed(&mut self, doing: &str, error: RedisError) -> Failed {
        use redis::ErrorKind;
        let transient = error.is_connection_refusal()
            || error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || matches!(
                error.kind(),
                ErrorKind::BusyLoadingError
                    | ErrorKind::TryAgain
                    | ErrorKind::ClusterDown
                    | ErrorKind::MasterDown
            );
        let reason = if error.is_connection_refusal() {
            "connection refused (is Redis up, and reachable from here?)".to_owned()
        } else {
            error.to_string()
        };
        if transient {
            self.connection = None;
        }
        Failed {
            error: StoreError::Redis {
                url: self.shown.clone(),
                doing: doing.to_owned(),
                reason,
            },
            transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let error = Link::open("http://:hunter2@host")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("http://:***@host"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn stream_replies_are_read_strictly() {
        let entry = |id: &str, fields: &[(&str, &str)]| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(
                    fields
                        .iter()
                        .flat_map(|(k, v)| {
                            [
                                Value::BulkString(k.as_bytes().to_vec()),
                                Value::BulkString(v.as_bytes().to_vec()),
                            ]
                        })
                        .collect(),
                ),
            ])
        };
        let reply = Value::Array(vec![
            entry("1-0", &[("r", "{}")]),
            entry("2-0", &[("x", "1"), ("r", "[]")]),
            entry("3-0", &[("x", "1")]),
        ]);
        let read = entries(&reply).unwrap();
        assert_eq!(
            read,
            vec![
                ("1-0".to_owned(), Some(&b"{}"[..])),
                ("2-0".to_owned(), Some(&b"[]"[..])),
                ("3-0".to_owned(), None),
            ]
        );
        assert!(entries(&Value::Int(3)).is_err());
        assert!(entries(&Value::Array(vec![Value::Int(1)])).is_err());
    }
}
