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

use muster_core::journal::{Entry, StateName};
use muster_core::mask::Masker;
use redis::RedisError;
#[cfg(test)]
use redis::Value;
use tokio::time::{timeout, Instant};

use crate::backend::{AppendFuture, Backend, Batch};
use crate::error::StoreError;

mod link;
mod read;

use link::{Failed, Link};
#[cfg(test)]
use read::entries;
pub use read::{read_journal, read_log_tail, Follower};

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

/// The run's epoch: the highest that wrote its journal, raised by each
/// master that takes the lease.
pub use muster_core::journal::epoch_key;

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

    /// The last of a batch's failed tries, said as the append it was part
    /// of (the last try may have failed to connect, not to append) and how
    /// long it was tried.
    fn gave_up(&self, error: StoreError) -> StoreError {
        let StoreError::Redis { url, doing, reason } = error else {
            return error;
        };
        let append = format!("append to the journal stream {}", stream_key(&self.run_id));
        let reason = if doing == append {
            reason
        } else {
            format!("{doing}: {reason}")
        };
        StoreError::Redis {
            url,
            doing: format!(
                "{append} (tried for {})",
                humantime::format_duration(self.append_limit)
            ),
            reason,
        }
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
                if !failed.transient {
                    return Err(failed.error);
                }
                if Instant::now() + pause >= deadline {
                    return Err(self.gave_up(failed.error));
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
