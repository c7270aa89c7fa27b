//! Reading a run's journal stream: all of it (`muster status`, a resume),
//! as it is written (`--follow`, `XREAD BLOCK`), and a failed module's log
//! tail. Readers never write.

use muster_core::journal::codec::decode_one;
use muster_core::journal::{JournalError, Record};
use redis::Value;

use super::link::Link;
use super::{log_tail_key, stream_key, FOLLOW_BLOCK, PAGE};
use crate::error::StoreError;

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
pub(super) fn entries(reply: &Value) -> Result<Vec<StreamEntry<'_>>, String> {
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
