//! The journal as a Redis Stream, against a real `redis-server`: records
//! read back as written, a stale master refused by Redis itself with the
//! stream left alone, the TTL set, a failed module's log tail kept,
//! following a run as it is written, a Redis that goes away and comes back
//! (with and without its data), and an unreachable Redis failing within
//! its bound with the password hidden.

mod common;

use std::time::Duration;

use common::RedisServer;
use muster_core::journal::record::Settings;
use muster_core::journal::{Entry, ModuleRecord, Record, RunStart, StateName, FORMAT_VERSION};
use muster_core::mask::Masker;
use muster_core::wire::types::RunOutcome;
use muster_journal::redis::{epoch_key, log_tail_key, stream_key, REDIS_TIMEOUT};
use muster_journal::{
    read_journal, read_log_tail, Backend, Batch, Follower, JournalWriter, RedisJournal, StoreError,
};

const TTL: Duration = Duration::from_secs(600);

fn started(run_id: &str, epoch: u64) -> Entry {
    Entry::RunStarted(RunStart {
        run_id: run_id.into(),
        pipeline: "muster.toml".into(),
        muster_version: "0.1.0".into(),
        stint: 1,
        epoch,
        resumed_from: None,
        took_over: None,
        plan_digest: "abc".into(),
        modules: Vec::new(),
        settings: Settings::default(),
    })
}

fn module(name: &str, state: StateName) -> Entry {
    Entry::Module(ModuleRecord {
        module: name.into(),
        state,
        ..ModuleRecord::default()
    })
}

fn finished() -> Entry {
    Entry::RunFinished {
        outcome: RunOutcome::Failed,
        cancelled: None,
    }
}

fn record(seq: u64, entry: Entry) -> Record {
    Record {
        v: FORMAT_VERSION,
        seq,
        at: 1_764_000_000_000 + seq,
        entry,
    }
}

fn batch(records: impl IntoIterator<Item = Record>) -> Batch {
    let mut batch = Batch::new();
    for record in records {
        batch.push(record);
    }
    batch
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn stream_len(url: &str, run_id: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream_key(run_id))
        .query_async(&mut raw(url).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn appends_read_back_as_written() {
    let redis = RedisServer::start();
    let url = redis.url();
    assert_eq!(read_journal(&url, "r1").await.unwrap(), None);
    let journal = RedisJournal::connect(&url, "r1", 1, TTL).await.unwrap();
    let mut writer = JournalWriter::start(Box::new(journal), None, 1);
    let mut expected = Vec::new();
    let entries = [
        started("r1", 1),
        module("build", StateName::Running),
        module("build", StateName::Succeeded),
        finished(),
    ];
    for (at, entry) in entries.into_iter().enumerate() {
        let seq = writer.append(at as u64, entry.clone());
        expected.push(Record {
            v: FORMAT_VERSION,
            seq,
            at: at as u64,
            entry,
        });
    }
    writer.close().await.unwrap();
    assert_eq!(read_journal(&url, "r1").await.unwrap().unwrap(), expected);

    // More than a page of records reads back whole and in order.
    let mut journal = RedisJournal::connect(&url, "big", 1, TTL).await.unwrap();
    let many: Vec<Record> = (1..=2500)
        .map(|seq| record(seq, module(&format!("m{seq}"), StateName::Ready)))
        .collect();
    journal.append(&batch(many.clone())).await.unwrap();
    assert_eq!(read_journal(&url, "big").await.unwrap().unwrap(), many);
}

#[tokio::test]
async fn a_stale_master_is_refused_by_redis_and_the_stream_is_left_alone() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut newer = RedisJournal::connect(&url, "r", 5, TTL).await.unwrap();
    newer
        .append(&batch([record(1, started("r", 5))]))
        .await
        .unwrap();
    let before = read_journal(&url, "r").await.unwrap().unwrap();

    let mut older = RedisJournal::connect(&url, "r", 3, TTL).await.unwrap();
    let error = older
        .append(&batch([record(2, finished())]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Stale { epoch: 3, newer: 5 }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("a newer master (epoch 5) owns this run's journal"),
        "{error}"
    );
    assert_eq!(read_journal(&url, "r").await.unwrap().unwrap(), before);

    // Through the writer: it stops and says why.
    let mut writer = JournalWriter::start(Box::new(older), None, 2);
    writer.append(9, finished());
    assert!(matches!(
        writer.close().await,
        Err(StoreError::Stale { newer: 5, .. })
    ));
    assert_eq!(read_journal(&url, "r").await.unwrap().unwrap(), before);

    // A master of the same epoch that would write a record again is
    // refused too, without adding anything.
    let mut twin = RedisJournal::connect(&url, "r", 5, TTL).await.unwrap();
    let error = twin
        .append(&batch([record(1, finished())]))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("already holds record 1"), "{error}");
    assert_eq!(stream_len(&url, "r").await, 1);

    // A newer master takes over, and the one before is then refused.
    let mut newest = RedisJournal::connect(&url, "r", 7, TTL).await.unwrap();
    newest
        .append(&batch([record(2, started("r", 7))]))
        .await
        .unwrap();
    assert!(matches!(
        newer.append(&batch([record(3, finished())])).await,
        Err(StoreError::Stale { epoch: 5, newer: 7 })
    ));
    assert_eq!(stream_len(&url, "r").await, 2);
}

#[tokio::test]
async fn the_journal_expires_after_its_ttl() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut journal = RedisJournal::connect(&url, "t", 1, TTL).await.unwrap();
    journal
        .append(&batch([record(1, started("t", 1))]))
        .await
        .unwrap();
    let mut connection = raw(&url).await;
    for key in [stream_key("t"), epoch_key("t")] {
        let left: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(
            left > (TTL - Duration::from_secs(60)).as_millis() as i64
                && left <= TTL.as_millis() as i64,
            "{key}: {left} ms"
        );
    }
    let epoch: u64 = redis::cmd("GET")
        .arg(epoch_key("t"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(epoch, 1);
}

#[tokio::test]
async fn a_failed_modules_log_tail_is_kept_masked() {
    let redis = RedisServer::start();
    let url = redis.url();
    let journal = RedisJournal::connect(&url, "l", 1, TTL)
        .await
        .unwrap()
        .keep_log_tails(Masker::new(["p4ssw0rd-value"]));
    let mut writer = JournalWriter::start(Box::new(journal), None, 1);
    writer.append(1, started("l", 1));
    writer.log("test[os=linux]", &format!("{}\n", "x".repeat(40_000)));
    writer.log("test[os=linux]", "using p4ssw0rd-value\nassertion failed\n");
    writer.log("build", "all good\n");
    writer.append(2, module("build", StateName::Succeeded));
    writer.append(3, module("test[os=linux]", StateName::Failed));
    writer.close().await.unwrap();

    let tail = read_log_tail(&url, "l", "test[os=linux]")
        .await
        .unwrap()
        .unwrap();
    assert!(tail.ends_with("using ***\nassertion failed\n"), "{tail:?}");
    assert!(tail.len() <= muster_journal::redis::LOG_TAIL_BYTES);
    assert_eq!(read_log_tail(&url, "l", "build").await.unwrap(), None);
    let left: i64 = redis::cmd("PTTL")
        .arg(log_tail_key("l", "test[os=linux]"))
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    assert!(left > 0, "{left}");
}

#[tokio::test]
async fn a_follower_sees_records_as_they_are_written() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut follower = Follower::open(&url, "f", None).await.unwrap();
    // Nothing yet: an empty answer after the block time.
    assert!(follower.next().await.unwrap().is_empty());
    assert_eq!(follower.last_id(), "0-0");

    let journal = RedisJournal::connect(&url, "f", 1, TTL).await.unwrap();
    let writing = tokio::spawn(async move {
        let mut writer = JournalWriter::start(Box::new(journal), None, 1);
        writer.append(1, started("f", 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer.append(2, module("a", StateName::Running));
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer.append(3, finished());
        writer.close().await
    });
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        seen.last(),
        Some(Record {
            entry: Entry::RunFinished { .. },
            ..
        })
    ) {
        assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
        seen.extend(follower.next().await.unwrap());
    }
    writing.await.unwrap().unwrap();
    assert_eq!(seen, read_journal(&url, "f").await.unwrap().unwrap());

    // A new follower goes on from where the last one was.
    let mut later = Follower::open(&url, "f", Some(follower.last_id()))
        .await
        .unwrap();
    assert!(later.next().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_record_from_a_newer_muster_or_not_a_record_is_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut connection = raw(&url).await;
    let key = stream_key("odd");
    let line = serde_json::to_string(&record(1, started("odd", 1))).unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("1-1")
        .arg("r")
        .arg(line)
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("2-1")
        .arg("r")
        .arg(r#"{"v":7,"seq":2,"at":1,"type":"later"}"#)
        .query_async(&mut connection)
        .await
        .unwrap();
    let error = read_journal(&url, "odd").await.unwrap_err().to_string();
    assert!(error.contains("format 7"), "{error}");
    assert!(error.contains("upgrade muster"), "{error}");

    let _: String = redis::cmd("XADD")
        .arg(stream_key("bad"))
        .arg("3-1")
        .arg("r")
        .arg("not json")
        .query_async(&mut connection)
        .await
        .unwrap();
    let error = read_journal(&url, "bad").await.unwrap_err();
    assert!(
        matches!(error, StoreError::CorruptEntry { record: 1, .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "Redis stream muster:journal:bad at {url}: entry 3-1 (record 1)"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_redis_that_comes_back_with_its_data_is_written_to_again() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let journal = RedisJournal::connect(&url, "back", 1, TTL).await.unwrap();
    let mut writer = JournalWriter::start(Box::new(journal), None, 1);
    writer.append(1, started("back", 1));
    let mut durable = writer.durable();
    durable.wait_for(|&d| d >= 1).await.unwrap();
    redis.restart();
    writer.append(2, finished());
    writer.close().await.unwrap();
    let records = read_journal(&url, "back").await.unwrap().unwrap();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn a_redis_that_lost_the_journal_fails_the_run_clearly() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let journal = RedisJournal::connect(&url, "gone", 1, TTL).await.unwrap();
    let mut writer = JournalWriter::start(Box::new(journal), None, 1);
    writer.append(1, started("gone", 1));
    let mut durable = writer.durable();
    durable.wait_for(|&d| d >= 1).await.unwrap();
    // No persistence: the restart loses the stream.
    redis.restart();
    writer.append(2, finished());
    let error = writer.close().await.unwrap_err().to_string();
    assert!(error.contains("muster:journal:gone"), "{error}");
    assert!(error.contains("the stream is gone"), "{error}");
    assert_eq!(read_journal(&url, "gone").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_redis_fails_within_the_bound_naming_the_url_without_its_password() {
    let port = common::free_port();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{port}");
    let began = tokio::time::Instant::now();
    let error = RedisJournal::connect(&url, "r", 1, TTL)
        .await
        .err()
        .unwrap();
    assert!(began.elapsed() < REDIS_TIMEOUT + Duration::from_secs(2));
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "Redis at redis://:***@127.0.0.1:{port}: cannot connect: "
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    let error = read_journal(&url, "r").await.unwrap_err().to_string();
    assert!(
        !error.contains("hunter2") && error.contains(":***@"),
        "{error}"
    );

    // A Redis that goes away mid-run: the append keeps trying, within its
    // limit, then fails the writer.
    let mut redis = RedisServer::start();
    let limit = Duration::from_secs(3);
    let journal = RedisJournal::connect(&redis.url(), "away", 1, TTL)
        .await
        .unwrap()
        .append_limit(limit);
    redis.stop();
    let mut writer = JournalWriter::start(Box::new(journal), None, 1);
    writer.append(1, started("away", 1));
    let began = tokio::time::Instant::now();
    let mut failure = writer.failure();
    tokio::time::timeout(limit + REDIS_TIMEOUT, failure.wait_for(Option::is_some))
        .await
        .expect("the append gives up within its limit")
        .unwrap();
    // It kept trying for most of its limit.
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    let error = writer.failed().unwrap().to_string();
    assert!(error.contains(&redis.url()), "{error}");
    // It says what it gave up on, and for how long, whatever the last try
    // failed at (connecting, here).
    assert!(
        error.contains("cannot append to the journal stream muster:journal:away (tried for 3s): "),
        "{error}"
    );
    assert_eq!(*writer.durable().borrow(), 0);
}
