//! The master's lease against a real `redis-server`: only instance 0 starts
//! a run, exactly one contender takes a lapsed lease, the old master's
//! renewal, record write and journal append are all refused from the
//! moment it is taken (one epoch counter fences all three), and a lease
//! that lapsed while nobody took over is taken back by its master.

mod common;

use std::time::Duration;

use common::RedisServer;
use muster_core::journal::epoch_key;
use muster_discovery::lease::{Holder, Renewal, Seen, Taken};
use muster_discovery::record::DiscoveryRecord;
use muster_discovery::store::{DiscoveryStore, Written};

const TTL: Duration = Duration::from_millis(600);
const KEEP: Duration = Duration::from_secs(600);
const BOUND: Duration = Duration::from_secs(5);

fn record(epoch: u64) -> DiscoveryRecord {
    common::discovery_record("r", epoch)
}

async fn take(store: &DiscoveryStore, instance: &str, may_start: bool) -> Taken {
    store
        .take_lease("r", instance, TTL, may_start, KEEP, BOUND)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lapsed_lease_goes_to_one_contender_and_fences_the_old_master() {
    let redis = RedisServer::start();
    let store = DiscoveryStore::open(&redis.url()).unwrap();
    assert_eq!(store.lease("r", BOUND).await.unwrap(), Seen::Never);
    assert_eq!(take(&store, "instance 1", false).await, Taken::NoRunYet);
    let Taken::Won(first) = take(&store, "instance 0", true).await else {
        panic!("instance 0 starts the run");
    };
    assert_eq!(first.epoch, 1);
    assert_eq!(
        take(&store, "instance 1", false).await,
        Taken::Held(first.clone())
    );
    assert_eq!(
        store.renew_lease("r", &first, TTL, BOUND).await.unwrap(),
        Renewal::Kept
    );
    assert_eq!(store.write(&record(1), KEEP).await.unwrap(), Written::Yes);

    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    assert_eq!(
        store.lease("r", BOUND).await.unwrap(),
        Seen::Lapsed { epoch: 1 }
    );
    // Three contenders at once: one wins.
    let contenders =
        ["instance 1", "instance 2", "instance 3"].map(|name| take(&store, name, false));
    let results = futures_util::future::join_all(contenders).await;
    let winners: Vec<&Holder> = results
        .iter()
        .filter_map(|t| match t {
            Taken::Won(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let second = winners[0].clone();
    assert_eq!(second.epoch, 2);

    // The old master: its renewal says who took over, its record write
    // and its journal append are refused.
    assert_eq!(
        store.renew_lease("r", &first, TTL, BOUND).await.unwrap(),
        Renewal::Lost {
            holder: Some(second.clone()),
            epoch: 2
        }
    );
    assert_eq!(
        store.write(&record(1), KEEP).await.unwrap(),
        Written::Superseded
    );
    assert_eq!(store.write(&record(2), KEEP).await.unwrap(), Written::Yes);
    let mut journal = muster_journal::RedisJournal::connect(&redis.url(), "r", 1, KEEP)
        .await
        .unwrap();
    let refused = append_one(&mut journal).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("newer master (epoch 2)")),
        "{refused:?}"
    );
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counter: u64 = redis::cmd("GET")
        .arg(epoch_key("r"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(counter, 2);
}

#[tokio::test]
async fn a_lease_that_lapsed_with_nobody_taking_over_is_taken_back() {
    let redis = RedisServer::start();
    let store = DiscoveryStore::open(&redis.url()).unwrap();
    let Taken::Won(mine) = take(&store, "instance 0", true).await else {
        panic!("instance 0 starts the run");
    };
    // As after a Redis outage longer than the TTL.
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    assert_eq!(
        store.renew_lease("r", &mine, TTL, BOUND).await.unwrap(),
        Renewal::Kept
    );
    assert_eq!(store.lease("r", BOUND).await.unwrap(), Seen::Held(mine));
}

async fn append_one(journal: &mut muster_journal::RedisJournal) -> Result<(), String> {
    use muster_journal::Backend as _;
    let record = muster_core::journal::Record {
        v: muster_core::journal::FORMAT_VERSION,
        seq: 1,
        at: 1,
        entry: muster_core::journal::Entry::CancelRequested {
            reason: "test".into(),
        },
    };
    let mut batch = muster_journal::Batch::default();
    batch.push(record);
    journal.append(&batch).await.map_err(|e| e.to_string())
}
