//! Module outputs: `key=value` lines a module writes to `$MUSTER_OUTPUT`.
//! Outputs are small values for dependents (versions, digests, flags); a
//! cap keeps large data out of the hub's messages, since artifacts are the
//! way to move files.

use std::collections::BTreeMap;

/// The most bytes a module may write to `$MUSTER_OUTPUT`.
pub const OUTPUT_CAP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("$MUSTER_OUTPUT is larger than the {cap}-byte cap for outputs; move large data through files instead")]
    TooLarge { cap: usize },
    #[error("$MUSTER_OUTPUT line {line}: expected key=value, got {text:?}")]
    NotKeyValue { line: usize, text: String },
    #[error(
        "$MUSTER_OUTPUT line {line}: key {key:?} may only hold letters, digits, '_', '-' and '.'"
    )]
    BadKey { line: usize, key: String },
}

/// Parses the output file (its first `OUTPUT_CAP + 1` bytes are enough to
/// tell it is too large). Blank lines are skipped; a later value for the
/// same key wins, as with `$GITHUB_OUTPUT`.
pub fn parse_outputs(bytes: &[u8]) -> Result<BTreeMap<String, String>, OutputError> {
    if bytes.len() > OUTPUT_CAP {
        return Err(OutputError::TooLarge { cap: OUTPUT_CAP });
    }
    let text = String::from_utf8_lossy(bytes);
    let mut outputs = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(OutputError::NotKeyValue {
                line: number + 1,
                text: line.chars().take(80).collect(),
            });
        };
        let key = key.trim();
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !key_ok {
            return Err(OutputError::BadKey {
                line: number + 1,
                key: key.to_owned(),
            });
        }
        outputs.insert(key.to_owned(), value.to_owned());
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_values() {
        let outputs = parse_outputs(b"version=1.2\n\nsha=abc=def\r\nversion=1.3\n").unwrap();
        assert_eq!(outputs["version"], "1.3");
        assert_eq!(outputs["sha"], "abc=def");
        assert_eq!(outputs.len(), 2);
    }

    #[test]
    fn refuses_bad_lines_and_large_files() {
        assert_eq!(
            parse_outputs(b"ok=1\njust text\n"),
            Err(OutputError::NotKeyValue {
                line: 2,
                text: "just text".into()
            })
        );
        assert!(matches!(
            parse_outputs(b"bad key=1"),
            Err(OutputError::BadKey { line: 1, .. })
        ));
        let big = vec![b'a'; OUTPUT_CAP + 1];
        assert!(matches!(
            parse_outputs(&big),
            Err(OutputError::TooLarge { .. })
        ));
    }
}
