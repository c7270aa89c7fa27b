//! The sizes both ends of the wire must agree on, so that neither side
//! re-derives the other's: the largest record a hub accepts, and how much
//! of a `Complete` record a module's list of artifacts may take.

/// The largest record a hub accepts by default (`docs/protocol.md` §2):
/// workers keep their calls under it, since a larger one closes the
/// connection.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The longest `invocationId` a hub accepts (`docs/protocol.md` §3): the
/// hub echoes it in its answer, so a peer must not make that answer large.
/// The official clients send short counters ("0", "1", ...).
pub const MAX_INVOCATION_ID_BYTES: usize = 256;

/// The longest error text the hub puts in a Completion: errors may quote
/// what the peer sent (a method name, a value of the wrong type), and an
/// answer must stay small whatever that was.
pub const MAX_ERROR_TEXT_BYTES: usize = 1024;

/// `text` cut to at most [`MAX_ERROR_TEXT_BYTES`] (on a character
/// boundary), with "…" where it was cut.
pub fn bounded_error_text(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT_BYTES {
        let mut cut = MAX_ERROR_TEXT_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// How much of a `Complete` record the list of a module's artifacts may
/// take: the hub closes the connection on a record over
/// [`MAX_RECORD_BYTES`], and a worker would re-send that report on every
/// reconnect, so a list that cannot fit fails the module instead (a quarter
/// of the record is left for outputs and the rest).
pub const MAX_LISTED_BYTES: usize = MAX_RECORD_BYTES / 4 * 3;

/// The JSON of one [`Artifact`](super::types::Artifact) besides its path:
/// `{"path":"","size":…,"sha256":"<64 hex>","mode":…}` with the largest
/// size and mode.
pub const LISTED_OVERHEAD: usize = 132;

/// An upper bound on what the artifact at `path` adds to a report's list,
/// its separating comma included.
pub fn listed_bytes(path: &str) -> usize {
    serde_json::to_string(path).map_or(0, |json| json.len()) + LISTED_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::types::Artifact;

    #[test]
    fn an_error_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded_error_text("short".into()), "short");
        let long = "é".repeat(MAX_ERROR_TEXT_BYTES);
        let cut = bounded_error_text(long);
        assert!(cut.len() <= MAX_ERROR_TEXT_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        let exact = "x".repeat(MAX_ERROR_TEXT_BYTES);
        assert_eq!(bounded_error_text(exact.clone()), exact);
    }

    #[test]
    fn the_artifact_list_takes_three_quarters_of_a_record() {
        assert_eq!(MAX_LISTED_BYTES, 768 * 1024);
    }

    /// With the largest possible fields, an artifact and its comma take no
    /// more than [`listed_bytes`] allows for, and the overhead is exact.
    #[test]
    fn listed_bytes_never_undercounts() {
        for path in [
            "",
            "a",
            "out/file-number-1",
            "dir/with \"quotes\" and \\ and \u{7}",
        ] {
            let artifact = Artifact {
                path: path.into(),
                size: u64::MAX,
                sha256: "f".repeat(64),
                mode: u32::MAX,
            };
            let listed = serde_json::to_string(&artifact).unwrap().len() + 1;
            assert!(listed <= listed_bytes(path), "{path:?}");
            assert_eq!(listed, listed_bytes(path), "{path:?}");
        }
    }
}
