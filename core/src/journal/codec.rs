//! Records as lines of JSON. A file journal is these lines one after the
//! other; a Redis Stream holds one line per entry. Reading is strict: a
//! record that does not parse is an error naming where it is and what is
//! wrong, except the end of a file cut short by a crash (a last line with
//! no newline), which is reported as a [`TornTail`] for the caller to warn
//! about and cut off.

use super::record::{Record, FORMAT_VERSION};

/// A journal that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("{source_name}: record {record} (byte {offset}) is not a journal record: {why}")]
    Corrupt {
        source_name: String,
        /// 1-based.
        record: usize,
        offset: u64,
        why: String,
    },
    #[error(
        "{source_name}: record {record} was written in journal format {found} by a newer muster; \
         this muster reads format {supported} and older: upgrade muster to read it"
    )]
    Newer {
        source_name: String,
        record: usize,
        found: u32,
        supported: u32,
    },
}

/// The end of a file that holds part of a record: the master died while
/// writing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the partial record starts; the file is whole up to here.
    pub offset: u64,
    pub len: u64,
}

/// The records of a file, and a torn tail if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub records: Vec<Record>,
    pub torn: Option<TornTail>,
}

/// One record as one line, newline included.
pub fn encode(record: &Record) -> Vec<u8> {
    let mut line = Vec::new();
    encode_into(record, &mut line);
    line
}

/// Appends one record as one line, newline included, to `out`.
pub fn encode_into(record: &Record, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, record).expect("a record serializes");
    out.push(b'\n');
}

/// Reads every record of a file's bytes; `source_name` (the file's path)
/// names it in errors.
pub fn decode(bytes: &[u8], source_name: &str) -> Result<Decoded, JournalError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut torn = None;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            torn = Some(TornTail {
                offset: offset as u64,
                len: rest.len() as u64,
            });
            break;
        };
        let line = &rest[..end];
        // A crash can leave zeros where the file system had reserved room.
        if line.iter().all(|&b| b == 0) && rest[end..].iter().all(|&b| b == 0 || b == b'\n') {
            torn = Some(TornTail {
                offset: offset as u64,
                len: rest.len() as u64,
            });
            break;
        }
        let record = decode_one(line, source_name, records.len() + 1, offset as u64)?;
        if let Some(last) = records.last() {
            let last: &Record = last;
            if record.seq <= last.seq {
                return Err(JournalError::Corrupt {
                    source_name: source_name.to_owned(),
                    record: records.len() + 1,
                    offset: offset as u64,
                    why: format!("sequence number {} after {}", record.seq, last.seq),
                });
            }
        }
        records.push(record);
        offset += end + 1;
    }
    Ok(Decoded { records, torn })
}

/// Reads one record; `record` (1-based) and `offset` say where it was.
pub fn decode_one(
    line: &[u8],
    source_name: &str,
    record: usize,
    offset: u64,
) -> Result<Record, JournalError> {
    let corrupt = |why: String| JournalError::Corrupt {
        source_name: source_name.to_owned(),
        record,
        offset,
        why,
    };
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
    let version = value
        .get("v")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| corrupt("it has no format version \"v\"".into()))?;
    if version > u64::from(FORMAT_VERSION) {
        return Err(JournalError::Newer {
            source_name: source_name.to_owned(),
            record,
            found: u32::try_from(version).unwrap_or(u32::MAX),
            supported: FORMAT_VERSION,
        });
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{Entry, ModuleRecord, StateName};

    fn record(seq: u64) -> Record {
        Record {
            v: FORMAT_VERSION,
            seq,
            at: 1_764_000_000_000 + seq,
            entry: Entry::Module(ModuleRecord {
                module: format!("m{seq}"),
                state: StateName::Succeeded,
                attempt: Some(1),
                ..ModuleRecord::default()
            }),
        }
    }

    fn file(n: u64) -> Vec<u8> {
        (1..=n).flat_map(|i| encode(&record(i))).collect()
    }

    #[test]
    fn records_round_trip_as_lines() {
        let bytes = file(3);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 3);
        let decoded = decode(&bytes, "j").unwrap();
        assert_eq!(decoded.records, vec![record(1), record(2), record(3)]);
        assert_eq!(decoded.torn, None);
        let line = String::from_utf8(encode(&record(1))).unwrap();
        assert!(
            line.starts_with(&format!("{{\"v\":{FORMAT_VERSION},\"seq\":1,")),
            "{line}"
        );
        assert!(line.contains("\"type\":\"module\""), "{line}");
    }

    #[test]
    fn a_torn_last_record_is_reported_not_read() {
        let mut bytes = file(2);
        let whole = bytes.len() as u64;
        let third = encode(&record(3));
        bytes.extend_from_slice(&third[..third.len() / 2]);
        let decoded = decode(&bytes, "j").unwrap();
        assert_eq!(decoded.records.len(), 2);
        assert_eq!(
            decoded.torn,
            Some(TornTail {
                offset: whole,
                len: (third.len() / 2) as u64
            })
        );
        // Zeros a crash left behind count as torn too.
        let mut zeros = file(2);
        zeros.extend_from_slice(&[0; 64]);
        zeros.push(b'\n');
        assert_eq!(decode(&zeros, "j").unwrap().torn.unwrap().offset, whole);
    }

    #[test]
    fn a_corrupt_record_before_the_end_is_an_error_naming_it() {
        let mut bytes = file(1);
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(b"{\"v\":1,\"seq\":2,\"at\":5,\"type\":\"nonsense\"}\n");
        bytes.extend_from_slice(&encode(&record(3)));
        let error = decode(&bytes, ".muster/runs/x/journal.jsonl").unwrap_err();
        let JournalError::Corrupt {
            record: number,
            offset: at,
            ..
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!((*number, *at), (2, offset));
        let text = error.to_string();
        assert!(
            text.starts_with(".muster/runs/x/journal.jsonl: record 2 (byte "),
            "{text}"
        );
        assert!(text.contains("nonsense"), "{text}");
        // Not JSON at all, and a line without a version.
        let mut bytes = file(1);
        bytes.extend_from_slice(b"garbage\n");
        assert!(decode(&bytes, "j").is_err());
        assert!(decode(b"{\"seq\":1}\n", "j")
            .unwrap_err()
            .to_string()
            .contains("no format version"));
        // Sequence numbers only go up.
        let mut bytes = file(2);
        bytes.extend_from_slice(&encode(&record(2)));
        assert!(decode(&bytes, "j")
            .unwrap_err()
            .to_string()
            .contains("sequence number 2 after 2"));
    }

    #[test]
    fn a_journal_from_a_newer_format_is_refused_with_its_version() {
        let mut bytes = file(1);
        bytes.extend_from_slice(b"{\"v\":9,\"seq\":2,\"at\":5,\"type\":\"somethingNew\"}\n");
        let error = decode(&bytes, "j").unwrap_err();
        assert_eq!(
            error,
            JournalError::Newer {
                source_name: "j".into(),
                record: 2,
                found: 9,
                supported: FORMAT_VERSION
            }
        );
        assert!(error.to_string().contains("format 9"), "{error}");
    }
}
