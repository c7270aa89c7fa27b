//! CI failover, from an instance's side of the lease
//! (`muster_discovery::lease`): the master renews its lease and gives its
//! run up the moment another instance holds it; every other instance
//! watches the lease and takes the run over once its master stopped
//! renewing. Redis fences the writes; this file only decides when to act
//! and says what happened.

use std::time::{Duration, Instant};

use muster_core::journal::TookOver;
use muster_discovery::lease::{Holder, Renewal, Seen, Taken, Watch};
use muster_discovery::store::DiscoveryStore;
use muster_hub::Canceller;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::journaling::unix_ms;

/// While Redis does not answer a renewal, try again this often: a master
/// back from an outage takes its lease back before anyone may take over.
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// How the lease is held: its TTL and how long the epoch counter lives.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTerms {
    pub ttl: Duration,
    /// The journal's TTL: the counter must outlive the journal it fences.
    pub keep: Duration,
}

impl LeaseTerms {
    /// How often the master renews and the others look: a third of the TTL.
    fn every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// Bound on one lease call: a renewal that waited longer than this
    /// would come too late anyway.
    fn bound(&self) -> Duration {
        self.every().max(Duration::from_secs(1))
    }
}

/// The master's renewals, from the moment it took the lease to the end of
/// its run.
///
/// Dropping it (a master that failed to start) stops the renewals, so the
/// lease lapses and another instance can take the run over.
pub struct Renewing {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    superseded: watch::Receiver<Option<String>>,
}

impl Drop for Renewing {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Renewing {
    /// Renews `held` until stopped, saying so if another instance took the
    /// run over.
    pub fn start(
        store: DiscoveryStore,
        run_id: String,
        held: Holder,
        terms: LeaseTerms,
    ) -> Renewing {
        let stop = CancellationToken::new();
        let (tell, superseded) = watch::channel(None);
        let renewing = renew(store, run_id, held, terms, stop.clone());
        let task = tokio::spawn(async move {
            if let Some(line) = renewing.await {
                crate::report::say(&format!("{line}: this master stops"));
                tell.send_replace(Some(line));
            }
        });
        Renewing {
            stop,
            task: Some(task),
            superseded,
        }
    }

    /// From now on, losing the lease abandons the hub `canceller` stops:
    /// its workers are closed with the superseded line and nothing more is
    /// journaled.
    pub fn abandon_on_loss(&self, canceller: Canceller) {
        let mut superseded = self.superseded.clone();
        tokio::spawn(async move {
            let line = match superseded.wait_for(Option::is_some).await {
                Ok(line) => line.clone().unwrap_or_default(),
                Err(_) => return,
            };
            {
                canceller
                    .abandon(format!("{line}: this master stops; the run goes on there"))
                    .await;
            }
        });
    }

    /// Stops renewing (the run ended); the lease lapses within its TTL.
    /// Returns the superseded line if another master took the run over.
    pub async fn stop(mut self) -> Option<String> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.superseded.borrow().clone()
    }
}

/// Renews until `stop` fires (`None`) or the lease is another's (the line
/// saying so).
async fn renew(
    store: DiscoveryStore,
    run_id: String,
    held: Holder,
    terms: LeaseTerms,
    stop: CancellationToken,
) -> Option<String> {
    let mut failing = false;
    loop {
        let pause = if failing { RENEW_RETRY } else { terms.every() };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return None,
        }
        match store
            .renew_lease(&run_id, &held, terms.ttl, terms.bound())
            .await
        {
            Ok(Renewal::Kept) => {
                if failing {
                    crate::report::say(&format!("Redis answers again; {held} keeps the lease"));
                }
                failing = false;
            }
            Ok(Renewal::Lost { holder, epoch }) => return Some(superseded(holder.as_ref(), epoch)),
            Err(e) => {
                if !failing {
                    eprintln!(
                        "muster: warning: cannot renew the master's lease: {e}; retrying \
                         (the journal fails the run if Redis stays away)"
                    );
                }
                failing = true;
            }
        }
    }
}

/// `superseded by instance 2 at epoch 5`.
pub fn superseded(holder: Option<&Holder>, epoch: u64) -> String {
    match holder {
        Some(holder) => format!("superseded by {holder}"),
        None => format!("superseded by a newer master at epoch {epoch}"),
    }
}

/// What taking the run over found: the lease this instance now holds and
/// what the journal is told about it.
pub struct Takeover {
    pub held: Holder,
    pub took_over: TookOver,
    /// The master that stopped renewing, if it was seen.
    pub lost: Option<Holder>,
}

/// Whether a worker of this name ran on the runner of `lost`, a master
/// that stopped renewing its lease: its local workers (`instance-N-1`, …)
/// or, when it had taken the run over itself, its own (`instance-N`).
pub fn ran_with(lost: &Holder, worker: &str) -> bool {
    let Some(index) = lost.instance.strip_prefix("instance ") else {
        return false;
    };
    let own = format!("instance-{index}");
    worker == own
        || worker
            .strip_prefix(&own)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Watches run `run_id`'s lease until this instance (`me`) takes it over:
/// only once a master held it and it has stayed lapsed for half a TTL, and
/// only while the run's record does not say it finished.
pub async fn contend(
    store: &DiscoveryStore,
    run_id: &str,
    me: &str,
    terms: LeaseTerms,
) -> Takeover {
    let mut lapse = Watch::new(terms.ttl);
    let mut last: Option<Holder> = None;
    let mut lapsed_at: Option<u64> = None;
    loop {
        tokio::time::sleep(terms.every()).await;
        let seen = match store.lease(run_id, terms.bound()).await {
            Ok(seen) => seen,
            Err(e) => {
                tracing::debug!("cannot look at the lease: {e}");
                lapse.lost_sight();
                lapsed_at = None;
                continue;
            }
        };
        match &seen {
            Seen::Held(holder) => {
                last = Some(holder.clone());
                lapsed_at = None;
            }
            Seen::Lapsed { .. } => {
                lapsed_at.get_or_insert_with(unix_ms);
            }
            Seen::Never => {}
        }
        if !lapse.saw(&seen, Instant::now()) {
            continue;
        }
        let finished =
            matches!(store.read(run_id).await, Ok(Some(record)) if record.finished().is_some());
        if finished {
            continue;
        }
        let taken = store
            .take_lease(run_id, me, terms.ttl, false, terms.keep, terms.bound())
            .await;
        match taken {
            Ok(Taken::Won(held)) => {
                let from = last.as_ref().map(Holder::to_string);
                let lost_at = lapsed_at.unwrap_or_else(unix_ms);
                crate::report::say(&format!(
                    "{} stopped renewing its lease (lapsed at {}); {held} takes the run over",
                    from.as_deref().unwrap_or("the master"),
                    clock(lost_at)
                ));
                return Takeover {
                    took_over: TookOver {
                        from,
                        lost_at,
                        by: me.to_owned(),
                        epoch: held.epoch,
                    },
                    held,
                    lost: last,
                };
            }
            Ok(Taken::Held(holder)) => {
                crate::report::say(&format!("{holder} took the run over; following it"));
                last = Some(holder);
            }
            Ok(Taken::NoRunYet) => {}
            Err(e) => tracing::debug!("cannot take the lease: {e}"),
        }
    }
}

/// The failover lines of run `run_id`'s journal in Redis (none when it
/// cannot be read: the end of the run does not wait on it).
pub async fn failovers_in_journal(redis_url: &str, run_id: &str) -> Vec<String> {
    let Ok(Some(records)) = muster_journal::read_journal(redis_url, run_id).await else {
        return Vec::new();
    };
    muster_core::journal::History::replay(&records)
        .map(|history| failover_lines(&history.takeovers))
        .unwrap_or_default()
}

/// A unix-ms time as `12:03:41` (UTC).
pub fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// One line per failover the journal holds, for the end of the run:
/// `instance 0 at epoch 1 lost at 12:03:41; instance 2 took over at
/// 12:03:49, epoch 2`.
pub fn failover_lines(takeovers: &[(TookOver, u64)]) -> Vec<String> {
    takeovers
        .iter()
        .map(|(took, at)| {
            format!(
                "failover: {} lost at {}; {} took over at {}, epoch {}",
                took.from.as_deref().unwrap_or("the master"),
                clock(took.lost_at),
                took.by,
                clock(*at),
                took.epoch
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lost_masters_own_workers_are_known_by_name() {
        let lost = Holder {
            epoch: 2,
            instance: "instance 1".into(),
        };
        assert!(ran_with(&lost, "instance-1"));
        assert!(ran_with(&lost, "instance-1-2"));
        assert!(!ran_with(&lost, "instance-12"));
        assert!(!ran_with(&lost, "instance-2"));
    }

    #[test]
    fn a_failover_reads_as_one_line() {
        let took = TookOver {
            from: Some("instance 0 at epoch 1".into()),
            lost_at: 43_421_000,
            by: "instance 2".into(),
            epoch: 2,
        };
        assert_eq!(
            failover_lines(&[(took, 43_429_000)]),
            ["failover: instance 0 at epoch 1 lost at 12:03:41; instance 2 took over at 12:03:49, epoch 2"]
        );
        let holder = Holder {
            epoch: 5,
            instance: "instance 2".into(),
        };
        assert_eq!(
            superseded(Some(&holder), 5),
            "superseded by instance 2 at epoch 5"
        );
        assert_eq!(
            superseded(None, 6),
            "superseded by a newer master at epoch 6"
        );
    }
}
