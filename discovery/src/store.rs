//! The discovery record in Redis. The master writes it with a TTL and keeps
//! re-writing it (every third of the TTL, so a Redis restart without
//! persistence heals itself), each write also published on the run's
//! channel so waiting workers wake at once. A write never replaces a record
//! with a higher epoch (a newer master of the same run id): the check and
//! the write are one Lua script.
//!
//! In CI, Redis is often a service container still starting when the job
//! does: the calls an instance makes at start
//! ([`DiscoveryStore::write_within`], [`DiscoveryStore::wait_for`]) keep
//! trying while Redis does not answer, until their limit, and say so once
//! ([`DiscoveryStore::when_not_answering`]). A refusal that
//! waiting cannot fix (a wrong password) ends them at once.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::record::{notify_channel, record_key, DiscoveryRecord};
// The URL with its password (or a lone user part, which Redis also takes
// as a password) and any `pass`/`password` query value replaced by `***`:
// the same rules as every URL muster prints.
use muster_core::url::redact_url as redact;

/// Bound on connecting to Redis and on one command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// While waiting for a record, look again this often even without a
/// notification: a safety net if the subscription was lost (a Redis
/// restart), not the way workers normally wake.
const RECHECK: Duration = Duration::from_secs(5);

/// While Redis does not answer, the first pause before trying again; it
/// doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(200);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The least time one attempt gets, even when the limit is (nearly) spent:
/// a Redis that answers is always asked once.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// Replaces the record unless the stored one has a higher epoch, or the
/// run's epoch counter (raised by each master that takes the lease) is past
/// the writer's; publishes every write on the channel.
const WRITE_SCRIPT: &str = r"
local fence = tonumber(redis.call('GET', KEYS[3]) or '0')
if fence and fence > tonumber(ARGV[2]) then
  return 0
end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' and tonumber(stored['epoch']) and tonumber(stored['epoch']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the Redis URL {url} is not valid: {reason} (use redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// for TLS)")]
    BadUrl { url: String, reason: String },
    /// No connection, a dropped one, no answer in time, or a Redis that is
    /// still loading its data: trying again later may work.
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Redis answered with an error waiting will not change (a wrong or
    /// missing password, a command it refuses).
    #[error("Redis at {url} refused: {reason}")]
    Refused { url: String, reason: String },
    #[error("no discovery record under key {key} in Redis at {url} after waiting {waited}\n  = help: is instance 0 (the master) of this run up, with the same run id and Redis? Its log says which key it wrote")]
    NotFound {
        key: String,
        url: String,
        waited: String,
    },
    #[error("the discovery record under key {key} is not valid JSON: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Whether a write took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// A record with a higher epoch is there, or a newer master took the
    /// lease: a newer master owns the run id.
    Superseded,
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. })
    }
}

/// Redis did not answer a call that keeps trying: said once per store, the
/// first time (see [`DiscoveryStore::when_not_answering`]).
#[derive(Debug, Clone)]
pub struct NotAnswering {
    /// The URL as it may be printed.
    pub url: String,
    /// Why the first attempt failed, e.g. `connection refused`.
    pub reason: String,
    /// How long the call keeps trying.
    pub limit: Duration,
}

impl fmt::Display for NotAnswering {
    /// `Redis at redis://127.0.0.1:6379 is not answering yet (connection
    /// refused); retrying for up to 40s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole seconds: the limit left is rarely round.
        let limit = if self.limit >= Duration::from_secs(1) {
            Duration::from_secs(self.limit.as_secs_f64().round() as u64)
        } else {
            Duration::from_millis(self.limit.as_millis() as u64)
        };
        write!(
            f,
            "Redis at {} is not answering yet ({}); retrying for up to {}",
            self.url,
            self.reason,
            humantime::format_duration(limit)
        )
    }
}

type NotAnsweringHook = Arc<dyn Fn(&NotAnswering) + Send + Sync>;

/// A Redis server holding discovery records.
#[derive(Clone)]
pub struct DiscoveryStore {
    client: redis::Client,
    /// The URL with any password replaced, for messages.
    shown: String,
    /// Told the first time Redis does not answer a call that keeps trying.
    not_answering: NotAnsweringHook,
    /// Whether it was told; shared by clones, so an instance says it once.
    said_not_answering: Arc<AtomicBool>,
}

impl DiscoveryStore {
    /// Checks the URL; connects lazily.
    pub fn open(url: &str) -> Result<DiscoveryStore, StoreError> {
        let shown = redact(url);
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
        Ok(DiscoveryStore {
            client,
            shown,
            not_answering: Arc::new(|n: &NotAnswering| tracing::warn!("{n}")),
            said_not_answering: Arc::default(),
        })
    }

    /// What to do, once, when Redis does not answer a call that keeps
    /// trying (by default, a warning in the log). The message never holds
    /// a password.
    pub fn when_not_answering(
        mut self,
        hook: impl Fn(&NotAnswering) + Send + Sync + 'static,
    ) -> DiscoveryStore {
        self.not_answering = Arc::new(hook);
        self
    }

    /// The URL as it may be printed.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    fn unreachable(&self, reason: impl ToString) -> StoreError {
        StoreError::Unreachable {
            url: self.shown.clone(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn silent(&self) -> StoreError {
        self.unreachable(format!(
            "no answer within {}",
            humantime::format_duration(REDIS_TIMEOUT)
        ))
    }

    /// A Redis error as a [`StoreError`]: no connection, a dropped one, and
    /// a server still loading or failing over are worth waiting for;
    /// anything else Redis answered (a wrong password, say) is not.
    pub(crate) fn redis_error(&self, error: redis::RedisError) -> StoreError {
        use redis::ErrorKind;
        if error.is_connection_refusal() {
            return self.unreachable("connection refused");
        }
        let transient = error.is_io_error()
            || matches!(
                error.kind(),
                ErrorKind::BusyLoadingError
                    | ErrorKind::TryAgain
                    | ErrorKind::ClusterDown
                    | ErrorKind::MasterDown
            );
        if transient {
            self.unreachable(error)
        } else {
            StoreError::Refused {
                url: self.shown.clone(),
                reason: error.to_string(),
            }
        }
    }

    pub(crate) async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        match timeout(
            REDIS_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(self.redis_error(e)),
            Err(_) => Err(self.silent()),
        }
    }

    /// Runs `attempt` until it succeeds, fails in a way waiting cannot fix,
    /// or `deadline` passes (when a transient failure is returned), pausing
    /// between tries. Each try gets the time left, at least
    /// [`MIN_ATTEMPT`]. The first failure is said once per store, with
    /// `limit` (the caller's whole wait) in the message.
    async fn patiently<T, F, Fut>(
        &self,
        deadline: Instant,
        limit: Duration,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut pause = RETRY_PAUSE;
        loop {
            let bound = deadline.max(Instant::now() + MIN_ATTEMPT);
            let error = match timeout_at(bound, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => e,
                Err(_) => self.silent(),
            };
            let now = Instant::now();
            if !error.is_transient() || now >= deadline {
                return Err(error);
            }
            self.say_not_answering(&error, limit);
            tracing::debug!("{error}; trying again");
            tokio::time::sleep_until((now + pause).min(deadline)).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }

    fn say_not_answering(&self, error: &StoreError, limit: Duration) {
        let StoreError::Unreachable { url, reason } = error else {
            return;
        };
        if !self.said_not_answering.swap(true, Ordering::SeqCst) {
            (self.not_answering)(&NotAnswering {
                url: url.clone(),
                reason: reason.clone(),
                limit,
            });
        }
    }

    /// Writes the record with a TTL and notifies waiting workers, unless a
    /// newer master's record is there.
    pub async fn write(
        &self,
        record: &DiscoveryRecord,
        ttl: Duration,
    ) -> Result<Written, StoreError> {
        let mut connection = self.connection().await?;
        let json = serde_json::to_string(record).expect("records serialize");
        let script = redis::Script::new(WRITE_SCRIPT);
        let mut invocation = script.key(record_key(&record.run_id));
        invocation
            .key(notify_channel(&record.run_id))
            .key(muster_core::journal::epoch_key(&record.run_id))
            .arg(json)
            .arg(record.epoch)
            .arg(ttl.as_secs().max(1));
        let written: i64 = timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| self.silent())?
            .map_err(|e| self.redis_error(e))?;
        Ok(if written == 1 {
            Written::Yes
        } else {
            Written::Superseded
        })
    }

    /// [`DiscoveryStore::write`], trying again for up to `limit` while Redis
    /// does not answer (it may still be starting).
    pub async fn write_within(
        &self,
        record: &DiscoveryRecord,
        ttl: Duration,
        limit: Duration,
    ) -> Result<Written, StoreError> {
        let deadline = Instant::now() + limit;
        self.patiently(deadline, limit, || self.write(record, ttl))
            .await
    }

    /// Waits up to `limit` for Redis to answer a PING (it may still be
    /// starting), saying so once as every patient call does.
    pub async fn answering_within(&self, limit: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + limit;
        self.patiently(deadline, limit, || async {
            let mut connection = self.connection().await?;
            let pong: String = timeout(
                REDIS_TIMEOUT,
                redis::cmd("PING").query_async(&mut connection),
            )
            .await
            .map_err(|_| self.silent())?
            .map_err(|e| self.redis_error(e))?;
            debug_assert_eq!(pong, "PONG");
            Ok(())
        })
        .await
    }

    /// The run's record, if there is one.
    pub async fn read(&self, run_id: &str) -> Result<Option<DiscoveryRecord>, StoreError> {
        let mut connection = self.connection().await?;
        self.read_on(&mut connection, run_id).await
    }

    async fn read_on(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        run_id: &str,
    ) -> Result<Option<DiscoveryRecord>, StoreError> {
        let key = record_key(run_id);
        let text: Option<String> = timeout(REDIS_TIMEOUT, connection.get(&key))
            .await
            .map_err(|_| self.silent())?
            .map_err(|e| self.redis_error(e))?;
        text.map(|text| {
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                key,
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Waits up to `limit` for the run's record: subscribes first, then
    /// reads, so a record written in between is not missed; wakes on every
    /// notification. A Redis that does not answer yet, or goes away
    /// meanwhile, is tried again until `limit`.
    pub async fn wait_for(
        &self,
        run_id: &str,
        limit: Duration,
    ) -> Result<DiscoveryRecord, StoreError> {
        let deadline = Instant::now() + limit;
        let pubsub = self
            .patiently(deadline, limit, || self.subscribe(run_id))
            .await?;
        let mut notifications = pubsub.into_on_message();
        let mut connection = self
            .patiently(deadline, limit, || self.connection())
            .await?;
        let mut subscribed = true;
        loop {
            match self.read_on(&mut connection, run_id).await {
                Ok(Some(record)) => return Ok(record),
                Ok(None) => {}
                // Redis went away (a restart): keep trying until the
                // deadline, re-reading instead of waiting for notifications.
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!("{e}; trying again");
                    tokio::time::sleep_until(deadline.min(Instant::now() + RECHECK)).await;
                    if let Ok(fresh) = self.connection().await {
                        connection = fresh;
                    }
                    subscribed = false;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::NotFound {
                    key: record_key(run_id),
                    url: self.shown.clone(),
                    waited: humantime::format_duration(limit).to_string(),
                });
            }
            let wake = deadline.min(now + RECHECK);
            if subscribed {
                match timeout_at(wake, notifications.next()).await {
                    Ok(Some(_)) | Err(_) => {}
                    // The subscription ended: fall back to re-reading.
                    Ok(None) => subscribed = false,
                }
            } else {
                tokio::time::sleep_until(wake).await;
            }
        }
    }

    /// A connection subscribed to the run's channel.
    async fn subscribe(&self, run_id: &str) -> Result<redis::aio::PubSub, StoreError> {
        let mut pubsub = match timeout(REDIS_TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Err(self.redis_error(e)),
            Err(_) => return Err(self.silent()),
        };
        timeout(REDIS_TIMEOUT, pubsub.subscribe(notify_channel(run_id)))
            .await
            .map_err(|_| self.silent())?
            .map_err(|e| self.redis_error(e))?;
        Ok(pubsub)
    }

    /// Re-writes the record every third of `ttl` until `stop` fires, taking
    /// the latest value from `record`. Errors are logged and retried at the
    /// next tick, so the record comes back after a Redis outage.
    pub async fn keep_fresh(
        self,
        record: tokio::sync::watch::Receiver<DiscoveryRecord>,
        ttl: Duration,
        stop: CancellationToken,
    ) {
        let every = (ttl / 3).max(Duration::from_millis(200));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let current = record.borrow().clone();
            match self.write(&current, ttl).await {
                Ok(Written::Yes) => {}
                Ok(Written::Superseded) => tracing::warn!(
                    key = %record_key(&current.run_id),
                    "a newer master owns this run id; its record stays"
                ),
                Err(e) => tracing::warn!("could not refresh the discovery record: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact("rediss://default:p@ss:w@host.example:6380"),
            "rediss://default:***@host.example:6380"
        );
        assert_eq!(redact("redis://token@host"), "redis://***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact("not a url"), "not a url");
        // Passwords holding '/' or '@', and in the query of a socket URL.
        assert_eq!(
            redact("redis://:ab/cd+ef==@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact("redis://default:ab/c@host:6379"),
            "redis://default:***@host:6379"
        );
        assert_eq!(
            redact("unix:///run/redis.sock?db=1&pass=s3cret"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact("rediss://:pw@h:6380/#insecure"),
            "rediss://:***@h:6380/#insecure"
        );
    }

    #[test]
    fn not_answering_says_the_limit_in_round_seconds() {
        let cases = [
            (Duration::from_secs(40), "40s"),
            (Duration::from_millis(39_600), "40s"),
            (Duration::from_millis(1_400), "1s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_secs(300), "5m"),
        ];
        for (limit, shown) in cases {
            let line = NotAnswering {
                url: "redis://:***@h:6379".into(),
                reason: "connection refused".into(),
                limit,
            }
            .to_string();
            assert_eq!(
                line,
                format!(
                    "Redis at redis://:***@h:6379 is not answering yet (connection refused); \
                     retrying for up to {shown}"
                )
            );
        }
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let error = DiscoveryStore::open("http://:hunter2@host")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("http://:***@host"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
