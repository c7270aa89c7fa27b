//! The discovery record in Redis. The master writes it with a TTL and keeps
//! re-writing it (every third of the TTL, so a Redis restart without
//! persistence heals itself), each write also published on the run's
//! channel so waiting workers wake at once. A write never replaces a record
//! with a higher epoch (a newer master of the same run id): the check and
//! the write are one Lua script.

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::record::{notify_channel, record_key, DiscoveryRecord};

/// Bound on connecting to Redis and on one command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// While waiting for a record, look again this often even without a
/// notification: a safety net if the subscription was lost (a Redis
/// restart), not the way workers normally wake.
const RECHECK: Duration = Duration::from_secs(5);

/// Replaces the record unless the stored one has a higher epoch; publishes
/// every write on the channel.
const WRITE_SCRIPT: &str = r"
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
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
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
    /// A record with a higher epoch is there: a newer master owns the run id.
    Superseded,
}

/// A Redis server holding discovery records.
#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    /// The URL with any password replaced, for messages.
    shown: String,
}

impl Store {
    /// Checks the URL; connects lazily.
    pub fn open(url: &str) -> Result<Store, StoreError> {
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
        Ok(Store { client, shown })
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

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        match timeout(
            REDIS_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable(format!("no answer within {REDIS_TIMEOUT:?}"))),
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
            .arg(json)
            .arg(record.epoch)
            .arg(ttl.as_secs().max(1));
        let written: i64 = timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {REDIS_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(e))?;
        Ok(if written == 1 {
            Written::Yes
        } else {
            Written::Superseded
        })
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
            .map_err(|_| self.unreachable(format!("no answer within {REDIS_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(e))?;
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
    /// notification.
    pub async fn wait_for(
        &self,
        run_id: &str,
        limit: Duration,
    ) -> Result<DiscoveryRecord, StoreError> {
        let deadline = Instant::now() + limit;
        let mut pubsub = match timeout(REDIS_TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Err(self.unreachable(e)),
            Err(_) => return Err(self.unreachable(format!("no answer within {REDIS_TIMEOUT:?}"))),
        };
        timeout(REDIS_TIMEOUT, pubsub.subscribe(notify_channel(run_id)))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {REDIS_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(e))?;
        let mut notifications = pubsub.into_on_message();
        let mut connection = self.connection().await?;
        let mut subscribed = true;
        loop {
            match self.read_on(&mut connection, run_id).await {
                Ok(Some(record)) => return Ok(record),
                Ok(None) => {}
                Err(e @ StoreError::Corrupt { .. }) => return Err(e),
                // Redis went away (a restart): keep trying until the
                // deadline, re-reading instead of waiting for notifications.
                Err(e) if Instant::now() + RECHECK < deadline => {
                    tracing::warn!("{e}; trying again");
                    tokio::time::sleep(RECHECK).await;
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

/// The URL with its password (or a lone user part, which Redis also takes
/// as a password) and any `pass`/`password` query value replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last '@' before the query or fragment: a
    // password may itself hold '/' or '@'.
    let (main, tail) = rest.split_at(rest.find(['?', '#']).unwrap_or(rest.len()));
    let main = match main.rfind('@') {
        Some(at) => {
            let user = match main[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{user}@{}", &main[at + 1..])
        }
        None => main.to_owned(),
    };
    let (query, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    let query: Vec<String> = query
        .trim_start_matches('?')
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if matches!(key, "pass" | "password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    format!("{scheme}://{main}{query}{fragment}")
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
    fn a_bad_url_is_named_without_its_password() {
        let error = Store::open("http://:hunter2@host")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("http://:***@host"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
