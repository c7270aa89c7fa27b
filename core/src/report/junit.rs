//! The report as JUnit XML, the test-result format GitLab
//! (`artifacts:reports:junit`), Buildkite's Test Analytics and GitHub
//! actions that publish test results read: one `<testcase>` per module,
//! `classname` the pipeline, `name` the module id, `time` in seconds. A
//! module that failed or timed out has a `<failure>` holding the last
//! lines of its log; one cancelled, an `<error>`; one skipped, or that
//! never ran because the run ended first, `<skipped/>`.
//!
//! Reasons, worker names and log lines come from the network: every text
//! is escaped, and characters XML 1.0 forbids (control characters from a
//! log) are dropped, colour sequences with them.

use std::fmt::Write as _;

use super::model::{rfc3339_text, ModuleReport, Report};
use crate::journal::StateName;

/// A log line in a failure is cut to this many characters.
const MAX_LINE_CHARS: usize = 1000;
/// Log text the whole document holds at most: past it, failures say their
/// lines were left out (CI systems refuse or truncate huge test reports).
pub const MAX_LOG_BYTES: usize = 8 << 20;

/// The report as one `<testsuites>` document with one `<testsuite>`.
pub fn junit(report: &Report) -> String {
    let failures = report.count(StateName::Failed) + report.count(StateName::TimedOut);
    let errors = report.count(StateName::Cancelled);
    let skipped = report.modules.len() - failures - errors - report.count(StateName::Succeeded);
    let time = seconds(report.duration_ms.unwrap_or(0));
    let suite = text(&report.pipeline);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"muster\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" \
         skipped=\"{skipped}\" time=\"{time}\">",
        report.modules.len()
    );
    let _ = write!(
        out,
        "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" \
         skipped=\"{skipped}\" time=\"{time}\"",
        report.modules.len()
    );
    if let Some(started) = report.started_at {
        // JUnit's timestamp is an ISO 8601 time without a zone.
        let at = rfc3339_text(started);
        let _ = write!(out, " timestamp=\"{}\"", at.trim_end_matches('Z'));
    }
    let _ = writeln!(out, " id=\"{}\">", text(&report.run_id));
    let mut log_budget = MAX_LOG_BYTES;
    for module in &report.modules {
        testcase(&mut out, &suite, module, &mut log_budget);
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn testcase(out: &mut String, suite: &str, module: &ModuleReport, log_budget: &mut usize) {
    let _ = write!(
        out,
        "    <testcase classname=\"{suite}\" name=\"{}\" time=\"{}\"",
        text(&module.id),
        seconds(module.duration_ms.unwrap_or(0))
    );
    let reason = module.reason.as_deref().map(text);
    match module.state {
        StateName::Succeeded => {
            out.push_str("/>\n");
            return;
        }
        StateName::Failed | StateName::TimedOut => {
            let kind = if module.state == StateName::Failed {
                "failed"
            } else {
                "timedOut"
            };
            let message = reason.unwrap_or_else(|| module.state.word().to_owned());
            let _ = write!(
                out,
                ">\n      <failure message=\"{message}\" type=\"{kind}\">{}</failure>\n",
                failure_body(module, log_budget)
            );
        }
        StateName::Cancelled => {
            let message = reason.unwrap_or_else(|| "cancelled".to_owned());
            let _ = write!(
                out,
                ">\n      <error message=\"{message}\" type=\"cancelled\">{}</error>\n",
                failure_body(module, log_budget)
            );
        }
        StateName::Skipped => {
            let message = reason.unwrap_or_else(|| "skipped".to_owned());
            let _ = writeln!(out, ">\n      <skipped message=\"{message}\"/>");
        }
        pending => {
            let _ = writeln!(
                out,
                ">\n      <skipped message=\"did not finish: {} when the report was made\"/>",
                pending.word()
            );
        }
    }
    out.push_str("    </testcase>\n");
}

/// Where it ran, the exit code, and the last log lines while
/// `log_budget` lasts.
fn failure_body(module: &ModuleReport, log_budget: &mut usize) -> String {
    let mut body = String::new();
    if let Some(worker) = &module.worker {
        let _ = writeln!(body, "worker: {}", text(worker));
    }
    let _ = writeln!(body, "attempt: {}", module.attempts);
    if let Some(code) = module.exit_code {
        let _ = writeln!(body, "exit code: {code}");
    }
    if module.log_tail.is_empty() {
        return body;
    }
    let mut lines = String::new();
    for line in &module.log_tail {
        let line: String = line.chars().take(MAX_LINE_CHARS).collect();
        let _ = writeln!(lines, "{}", text(&line));
    }
    if lines.len() > *log_budget {
        body.push_str("log lines left out: this report already holds its limit of log text\n");
        *log_budget = 0;
        return body;
    }
    *log_budget -= lines.len();
    let _ = writeln!(body, "last {} log lines:", module.log_tail.len());
    body.push_str(&lines);
    body
}

/// Milliseconds as seconds with three decimals.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `raw` fit for XML 1.0 text or a quoted attribute: `& < > " '` escaped,
/// colour and other escape sequences removed, characters XML 1.0 does not
/// allow dropped; in an attribute a newline or tab is kept as a character
/// reference (a parser would turn it into a space otherwise).
pub fn text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\x1b' => skip_escape_sequence(&mut chars),
            c if allowed_in_xml(c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// XML 1.0's `Char` production, less `\r` (a parser would drop it).
fn allowed_in_xml(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Skips what follows an ESC: a CSI sequence (`[` … a final byte in
/// `@`..=`~`), or one more character.
fn skip_escape_sequence(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    if chars.peek() == Some(&'[') {
        chars.next();
        for c in chars.by_ref() {
            if ('@'..='~').contains(&c) {
                break;
            }
        }
    } else {
        chars.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::tests::sample;

    #[test]
    fn each_state_has_its_element() {
        let xml = junit(&sample());
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"muster\" tests=\"5\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"12.000\">"), "{xml}");
        assert!(
            xml.contains("<testcase classname=\"muster.toml\" name=\"build\" time=\"2.000\"/>"),
            "{xml}"
        );
        assert!(xml.contains(
            "<failure message=\"exit code 3\" type=\"failed\">worker: w2\nattempt: 2\nexit code: 3\nlast 2 log lines:\ncompiling\nerror: boom\n</failure>"
        ), "{xml}");
        assert!(
            xml.contains("<skipped message=\"need &apos;test&apos; failed\"/>"),
            "{xml}"
        );
        assert!(
            xml.contains("timestamp=\"2023-11-14T22:13:20.000\""),
            "{xml}"
        );
    }

    #[test]
    fn a_cancelled_module_is_an_error_and_an_unfinished_one_skipped() {
        use crate::journal::{Entry, ModuleRecord};
        use crate::report::model::tests::sample_records;
        let mut records = sample_records();
        records.pop(); // The run has not finished.
        let mut moved = |module: &str, state: StateName, reason: Option<&str>| {
            let seq = records.len() as u64 + 1;
            records.push(crate::journal::Record {
                v: 1,
                seq,
                at: 1_700_000_100_000,
                entry: Entry::Module(ModuleRecord {
                    module: module.to_owned(),
                    state,
                    attempt: Some(1),
                    reason: reason.map(str::to_owned),
                    ..ModuleRecord::default()
                }),
            });
        };
        moved("lint", StateName::Cancelled, Some("cancelled by the user"));
        moved("docs", StateName::Running, None);
        let report = Report::build(&records).unwrap();
        let xml = junit(&report);
        assert!(
            xml.contains("failures=\"1\" errors=\"1\" skipped=\"2\""),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<error message=\"cancelled by the user\" type=\"cancelled\">attempt: 1\n</error>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains("<skipped message=\"did not finish: running when the report was made\"/>"),
            "{xml}"
        );
    }

    #[test]
    fn log_text_is_bounded_for_the_whole_document() {
        let mut report = sample();
        let failed = report.module("test").unwrap().clone();
        report.modules = (0..400)
            .map(|i| ModuleReport {
                id: format!("m{i}"),
                log_tail: vec!["x".repeat(5000); 50],
                ..failed.clone()
            })
            .collect();
        let xml = junit(&report);
        assert!(xml.len() < MAX_LOG_BYTES + (1 << 20), "{} bytes", xml.len());
        assert!(xml.contains("log lines left out: this report already holds its limit"));
        assert_eq!(xml.matches("last 50 log lines:").count(), 167);
    }

    #[test]
    fn text_is_escaped_and_forbidden_characters_dropped() {
        let check = |raw: &str, expected: &str| assert_eq!(text(raw), expected, "{raw:?}");
        check("a<b>&\"c'", "a&lt;b&gt;&amp;&quot;c&apos;");
        check("\x1b[31mred\x1b[0m plain", "red plain");
        check("bell\x07 nul\0 cr\r ff\x0c", "bell nul cr ff");
        check("two\nlines\tand tab", "two&#10;lines&#9;and tab");
        check("\u{FFFE}\u{FFFF}ok \u{1F600}", "ok \u{1F600}");
        check("]]>", "]]&gt;");
    }
}
