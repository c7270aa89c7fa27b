//! Hides secret values in text. A module lists the names of its secrets
//! (`secrets = ["NPM_TOKEN"]`); whoever knows their values (the worker from
//! its environment and the module's `env`, the master from its own
//! environment) builds a [`Masker`] and passes every log batch, error and
//! output through it, so a value is replaced by [`MASK`] before it is sent
//! or printed. Text in, text out: no I/O.
//!
//! Rules, in the order a value goes through them:
//! - a value is split into lines and each line is trimmed, so every line of
//!   a multi-line secret (a PEM key) is hidden wherever it shows up, and a
//!   value read from a file with a trailing newline still matches;
//! - a line shorter than [`MIN_SECRET_CHARS`] characters is not masked:
//!   values like `1`, `yes` or `dev` occur everywhere in ordinary output,
//!   masking them would wreck the log, and a value that short is no secret
//!   anyway;
//! - every occurrence is masked, overlapping ones included, and occurrences
//!   that overlap or touch (of the same secret or of different ones) become
//!   one [`MASK`], so no part of either shows.
//!
//! A secret is only found inside one piece of text. The worker cuts its
//! output at line ends, so this holds for log batches except inside a
//! line longer than the worker's line cut; see [`Masker::cut_outside`] for
//! how the worker keeps such a cut from splitting a secret.

use std::borrow::Cow;
use std::ops::Range;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Lines of a secret shorter than this (in characters, after trimming) are
/// not masked.
pub const MIN_SECRET_CHARS: usize = 4;

/// Replaces known secret values in text. Cheap to clone; the default masks
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masker {
    /// Longest first, without duplicates; none is shorter than
    /// [`MIN_SECRET_CHARS`] or holds a line break.
    needles: Vec<String>,
}

impl Masker {
    /// A masker for these secret values; empty and short ones are skipped
    /// (see the module doc).
    pub fn new<I>(values: I) -> Masker
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut needles: Vec<String> = Vec::new();
        for value in values {
            for line in value.as_ref().lines() {
                let line = line.trim();
                if line.chars().count() >= MIN_SECRET_CHARS {
                    needles.push(line.to_owned());
                }
            }
        }
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Masker { needles }
    }

    /// True when it masks nothing.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The length in bytes of the longest text it masks (0 when empty).
    pub fn longest(&self) -> usize {
        self.needles.first().map_or(0, String::len)
    }

    /// `text` with every secret replaced by [`MASK`]; borrowed when there
    /// was nothing to hide.
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let spans = self.spans(text);
        if spans.is_empty() {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(replace(text, spans))
        }
    }

    /// [`Masker::mask`] for an owned string: no copy when there was nothing
    /// to hide.
    pub fn mask_owned(&self, text: String) -> String {
        let spans = self.spans(&text);
        if spans.is_empty() {
            text
        } else {
            replace(&text, spans)
        }
    }

    /// The first position at or after `at` where `bytes` can be cut in two
    /// without splitting an occurrence of a secret. Only occurrences that
    /// lie wholly in `bytes` are seen, so a caller cutting a stream should
    /// hold at least [`Masker::longest`] bytes past `at`.
    pub fn cut_outside(&self, bytes: &[u8], at: usize) -> usize {
        let mut cut = at.min(bytes.len());
        loop {
            let moved = self
                .needles
                .iter()
                .filter_map(|needle| straddling_end(bytes, needle.as_bytes(), cut))
                .max();
            match moved {
                Some(end) if end > cut => cut = end,
                _ => return cut,
            }
        }
    }

    /// Byte ranges of `text` that hold a secret, sorted, with overlapping
    /// and touching ranges merged.
    fn spans(&self, text: &str) -> Vec<Range<usize>> {
        let mut found = Vec::new();
        for needle in &self.needles {
            let mut from = 0;
            while let Some(offset) = text[from..].find(needle.as_str()) {
                let start = from + offset;
                found.push(start..start + needle.len());
                // Look again from the next character: occurrences may overlap.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        found.sort_by_key(|span| span.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
        for span in found {
            match merged.last_mut() {
                Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
                _ => merged.push(span),
            }
        }
        merged
    }
}

/// `text` with each of `spans` (sorted, apart) replaced by [`MASK`].
fn replace(text: &str, spans: Vec<Range<usize>>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push_str(MASK);
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The end of the rightmost occurrence of `needle` in `bytes` that starts
/// before `cut` and ends after it.
fn straddling_end(bytes: &[u8], needle: &[u8], cut: usize) -> Option<usize> {
    let first = (cut + 1).saturating_sub(needle.len());
    let last = cut.checked_sub(1)?;
    (first..=last)
        .rev()
        .find(|&start| bytes[start..].starts_with(needle))
        .map(|start| start + needle.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks `text` with a masker for `secrets` and compares with `expected`.
    fn check(secrets: &[&str], text: &str, expected: &str) {
        let masker = Masker::new(secrets);
        assert_eq!(masker.mask(text), expected, "secrets {secrets:?}");
    }

    #[test]
    fn masks_every_occurrence() {
        check(&["hunter2"], "pw=hunter2 again hunter2", "pw=*** again ***");
        check(&["hunter2"], "nothing here", "nothing here");
        check(&["hunter2"], "hunter2hunter2", "***");
        check(&["abab"], "xababab", "x***");
        check(&["pässwörd"], "é pässwörd é", "é *** é");
        check(&[], "hunter2", "hunter2");
    }

    #[test]
    fn overlapping_secrets_are_hidden_whole() {
        // Longest-first replacement alone would leave "gh" of the second.
        check(&["abcdef", "defgh"], "<abcdefgh>", "<***>");
        check(&["defgh", "abcdef"], "<abcdefgh>", "<***>");
        // One inside another.
        check(
            &["token", "my-token-value"],
            "my-token-value token",
            "*** ***",
        );
        // Touching occurrences read as one.
        check(&["left", "right"], "leftright", "***");
    }

    #[test]
    fn every_line_of_a_multi_line_secret_is_masked() {
        let key = "-----BEGIN KEY-----\r\nMIIEvQIBADAN\nBgkqhkiG9w0B\n-----END KEY-----\n";
        check(
            &[key],
            "cat key:\n-----BEGIN KEY-----\nMIIEvQIBADAN\nBgkqhkiG9w0B\n-----END KEY-----\ndone",
            "cat key:\n***\n***\n***\n***\ndone",
        );
        // A line on its own somewhere else.
        check(&[key], "got BgkqhkiG9w0B", "got ***");
    }

    #[test]
    fn short_and_empty_values_are_not_masked() {
        check(&["", "a", "yes", "  ab  "], "a yes ab", "a yes ab");
        check(&["abc\nlong-enough"], "abc long-enough", "abc ***");
        check(&["four"], "four", "***");
        assert!(Masker::new(["", "no"]).is_empty());
    }

    #[test]
    fn values_are_trimmed_and_deduplicated() {
        let masker = Masker::new(["secret-1\n", "secret-1", " secret-1 "]);
        assert_eq!(masker.longest(), "secret-1".len());
        assert_eq!(masker, Masker::new(["secret-1"]));
    }

    #[test]
    fn borrows_when_there_is_nothing_to_hide() {
        let masker = Masker::new(["hunter2"]);
        assert!(matches!(masker.mask("clean"), Cow::Borrowed(_)));
        assert_eq!(masker.mask_owned("a hunter2".into()), "a ***");
        assert_eq!(masker.mask_owned("clean".into()), "clean");
    }

    #[test]
    fn cuts_never_split_a_secret() {
        let masker = Masker::new(["SECRET"]);
        let bytes = b"0123SECRET789";
        assert_eq!(masker.cut_outside(bytes, 2), 2);
        assert_eq!(masker.cut_outside(bytes, 4), 4);
        assert_eq!(masker.cut_outside(bytes, 6), 10);
        assert_eq!(masker.cut_outside(bytes, 10), 10);
        // A chain of overlapping occurrences moves the cut past all of them.
        let masker = Masker::new(["abab", "b-cdef"]);
        assert_eq!(masker.cut_outside(b"xabab-cdefx", 4), 10);
        assert_eq!(Masker::default().cut_outside(b"abc", 1), 1);
        assert_eq!(masker.cut_outside(b"abc", 10), 3);
    }

    #[test]
    fn large_batches_are_quick() {
        let masker = Masker::new(["hunter2-very-secret", "another-secret-value"]);
        let line = "ordinary build output with a hunter2-very-secret inside\n";
        let text = line.repeat(32 * 1024 / line.len());
        let masked = masker.mask(&text);
        assert!(!masked.contains("hunter2"));
        assert_eq!(masked.matches(MASK).count(), text.lines().count());
    }
}
