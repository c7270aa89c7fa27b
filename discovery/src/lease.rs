//! The master's lease: which instance of a CI run is its master now.
//!
//! A key per run (`muster:run:<id>:lease`, value `EPOCH INSTANCE`) with a
//! short TTL that the master renews well inside it, beside the run's epoch
//! counter ([`epoch_key`], the same key the journal's append script and the
//! record's write script check). Taking the lease is one Lua script:
//! if nobody holds it, raise the counter and take it at the new epoch. So
//! exactly one contender wins, and the moment it wins every write of the
//! old master (a lower epoch) is refused by Redis itself: the fence does not
//! depend on the old master noticing. Renewing checks holder and epoch; a
//! lease that lapsed while Redis was away is taken back only if the counter
//! still says this master's epoch (nobody took over meanwhile).
//!
//! When to compete is a decision without I/O ([`Watch`]): a lease is taken
//! over only once the run had a master and its lease has stayed lapsed for
//! half a TTL, so a master that renews late after a short Redis outage
//! keeps its run.

use std::fmt;
use std::time::{Duration, Instant};

use muster_core::journal::epoch_key;
use redis::Value;
use tokio::time::timeout;

use crate::store::{DiscoveryStore, StoreError};

/// If nobody holds the lease (and, unless ARGV[3] is 1, a master held it
/// before), raises the epoch counter and takes the lease at the new epoch.
/// KEYS: lease, counter. ARGV: instance, lease TTL (ms), may start (1/0),
/// the counter's TTL (ms). Returns {1, value} when taken, {0, value or ''}.
const TAKE_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current}
end
if ARGV[3] ~= '1' and not redis.call('GET', KEYS[2]) then
  return {0, ''}
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local value = epoch .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
";

/// Extends the lease if this master holds it, or takes it back if it
/// lapsed and nobody took the run over since (the counter is still this
/// epoch). KEYS: lease, counter. ARGV: value, lease TTL (ms), epoch.
/// Returns {1, value} when kept, {0, the holder's value or ''} and the
/// counter otherwise.
const RENEW_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
local counter = redis.call('GET', KEYS[2]) or '0'
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, current, counter}
end
if not current and tonumber(counter) == tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ARGV[1], counter}
end
return {0, current or '', counter}
";

/// The Redis key of a run's lease.
pub fn lease_key(run_id: &str) -> String {
    format!("muster:run:{run_id}:lease")
}

/// Who holds (or held) the lease, and at which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub epoch: u64,
    /// The instance, as it names itself (`instance 2`).
    pub instance: String,
}

impl Holder {
    fn parse(value: &str) -> Option<Holder> {
        let (epoch, instance) = value.split_once(' ')?;
        Some(Holder {
            epoch: epoch.parse().ok()?,
            instance: instance.to_owned(),
        })
    }

    fn value(&self) -> String {
        format!("{} {}", self.epoch, self.instance)
    }
}

impl fmt::Display for Holder {
    /// `instance 2 at epoch 5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at epoch {}", self.instance, self.epoch)
    }
}

/// What an attempt to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// This instance is the master now, at this epoch.
    Won(Holder),
    /// Another instance holds it.
    Held(Holder),
    /// Nobody holds it and no master ever did (only instance 0 starts a
    /// run).
    NoRunYet,
}

/// What renewing the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Kept,
    /// Another master took the run over: the holder if it still holds the
    /// lease, and the run's epoch now.
    Lost {
        holder: Option<Holder>,
        epoch: u64,
    },
}

/// The lease as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Held(Holder),
    /// Nobody holds it; a master did (the run's epoch).
    Lapsed {
        epoch: u64,
    },
    /// Nobody holds it and no master ever did.
    Never,
}

impl DiscoveryStore {
    /// Takes run `run_id`'s lease for `instance` if nobody holds it: at
    /// the start of a run only when `may_start` (instance 0), later
    /// whenever it lapsed. The epoch counter is kept for `keep` (the
    /// journal's TTL). Bounded by `bound`.
    pub async fn take_lease(
        &self,
        run_id: &str,
        instance: &str,
        ttl: Duration,
        may_start: bool,
        keep: Duration,
        bound: Duration,
    ) -> Result<Taken, StoreError> {
        let script = redis::Script::new(TAKE_SCRIPT);
        let mut call = script.key(lease_key(run_id));
        call.key(epoch_key(run_id))
            .arg(instance)
            .arg(millis(ttl))
            .arg(if may_start { "1" } else { "0" })
            .arg(millis(keep));
        let (taken, value): (i64, String) = self.lease_call(&call, bound).await?;
        let holder = Holder::parse(&value);
        Ok(match (taken, holder) {
            (1, Some(holder)) => Taken::Won(holder),
            (_, Some(holder)) => Taken::Held(holder),
            (_, None) => Taken::NoRunYet,
        })
    }

    /// Extends `held`, the lease this master took, by `ttl`.
    pub async fn renew_lease(
        &self,
        run_id: &str,
        held: &Holder,
        ttl: Duration,
        bound: Duration,
    ) -> Result<Renewal, StoreError> {
        let script = redis::Script::new(RENEW_SCRIPT);
        let mut call = script.key(lease_key(run_id));
        call.key(epoch_key(run_id))
            .arg(held.value())
            .arg(millis(ttl))
            .arg(held.epoch);
        let (kept, value, counter): (i64, String, String) = self.lease_call(&call, bound).await?;
        Ok(if kept == 1 {
            Renewal::Kept
        } else {
            Renewal::Lost {
                holder: Holder::parse(&value),
                epoch: counter.parse().unwrap_or(0),
            }
        })
    }

    /// Who holds run `run_id`'s lease, if anyone, and whether a master ever
    /// did.
    pub async fn lease(&self, run_id: &str, bound: Duration) -> Result<Seen, StoreError> {
        let mut pipe = redis::pipe();
        pipe.get(lease_key(run_id)).get(epoch_key(run_id));
        let work = async {
            let mut connection = self.connection().await?;
            pipe.query_async::<(Option<String>, Option<String>)>(&mut connection)
                .await
                .map_err(|e| self.redis_error(e))
        };
        let (value, counter) = timeout(bound, work).await.map_err(|_| self.silent())??;
        Ok(match (value.as_deref().and_then(Holder::parse), counter) {
            (Some(holder), _) => Seen::Held(holder),
            (None, Some(counter)) => Seen::Lapsed {
                epoch: counter.parse().unwrap_or(0),
            },
            (None, None) => Seen::Never,
        })
    }

    async fn lease_call<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
        bound: Duration,
    ) -> Result<T, StoreError> {
        let work = async {
            let mut connection = self.connection().await?;
            let value: Value = call
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.redis_error(e))?;
            redis::from_redis_value(&value).map_err(|e| self.redis_error(e))
        };
        timeout(bound, work).await.map_err(|_| self.silent())?
    }
}

fn millis(duration: Duration) -> u64 {
    (duration.as_millis() as u64).max(1)
}

/// A worker instance's decision to compete for the lease, without I/O:
/// only once the run had a master and nobody has held its lease for half a
/// TTL (a master whose renewals were held up by a Redis outage gets that
/// long to take its lease back).
#[derive(Debug, Clone)]
pub struct Watch {
    patience: Duration,
    lapsed_since: Option<Instant>,
}

impl Watch {
    pub fn new(ttl: Duration) -> Watch {
        Watch {
            patience: ttl / 2,
            lapsed_since: None,
        }
    }

    /// Takes in what a look at the lease found at `now`; true when it is
    /// time to try to take it.
    pub fn saw(&mut self, seen: &Seen, now: Instant) -> bool {
        match seen {
            Seen::Lapsed { .. } => {
                let since = *self.lapsed_since.get_or_insert(now);
                now.duration_since(since) >= self.patience
            }
            Seen::Held(_) | Seen::Never => {
                self.lapsed_since = None;
                false
            }
        }
    }

    /// A look failed (Redis did not answer): what was seen before no
    /// longer counts, so an outage is not taken for a lapse.
    pub fn lost_sight(&mut self) {
        self.lapsed_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn held() -> Seen {
        Seen::Held(Holder {
            epoch: 3,
            instance: "instance 0".into(),
        })
    }

    #[test]
    fn a_lapse_is_taken_over_only_after_half_a_ttl() {
        let start = Instant::now();
        let mut watch = Watch::new(TTL);
        let lapsed = Seen::Lapsed { epoch: 3 };
        assert!(!watch.saw(&lapsed, start));
        assert!(!watch.saw(&lapsed, start + Duration::from_secs(4)));
        assert!(watch.saw(&lapsed, start + Duration::from_secs(5)));
    }

    #[test]
    fn a_master_that_takes_its_lease_back_resets_the_wait() {
        let start = Instant::now();
        let mut watch = Watch::new(TTL);
        let lapsed = Seen::Lapsed { epoch: 3 };
        assert!(!watch.saw(&lapsed, start));
        assert!(!watch.saw(&held(), start + Duration::from_secs(3)));
        assert!(!watch.saw(&lapsed, start + Duration::from_secs(6)));
        assert!(watch.saw(&lapsed, start + Duration::from_secs(11)));
    }

    #[test]
    fn no_master_yet_or_redis_silent_never_competes() {
        let start = Instant::now();
        let mut watch = Watch::new(TTL);
        for s in 0..30 {
            assert!(!watch.saw(&Seen::Never, start + Duration::from_secs(s)));
        }
        let lapsed = Seen::Lapsed { epoch: 1 };
        assert!(!watch.saw(&lapsed, start));
        watch.lost_sight();
        assert!(!watch.saw(&lapsed, start + Duration::from_secs(6)));
    }

    #[test]
    fn a_holder_reads_back_as_written() {
        let holder = Holder {
            epoch: 12,
            instance: "instance 2".into(),
        };
        assert_eq!(Holder::parse(&holder.value()), Some(holder.clone()));
        assert_eq!(holder.to_string(), "instance 2 at epoch 12");
        assert_eq!(Holder::parse("nonsense"), None);
    }
}
