//! The payloads of the hub's methods: what a worker registers with, what
//! the hub assigns, what the worker reports. Field names are camelCase, as
//! JavaScript and .NET SignalR clients expect; `docs/protocol.md` documents
//! every type. [`Registration::check`] holds the rules for what a worker
//! may call itself, since that text ends up on a terminal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped when a change would break a worker written against an older page
/// of `docs/protocol.md`.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a worker says about itself in `Register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub name: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default = "one")]
    pub slots: u32,
    #[serde(default)]
    pub version: String,
    /// Set when reconnecting: who this worker was and what it still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
}

/// A reconnecting worker's claim to its earlier registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resume {
    /// The `workerId` of the earlier [`Welcome`].
    pub worker_id: String,
    /// The `resumeKey` of the earlier [`Welcome`]: proves the claim.
    pub key: String,
    /// Every attempt it still runs or has not had acknowledged.
    #[serde(default)]
    pub holding: Vec<Held>,
}

/// One attempt of one module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    pub module_id: String,
    pub attempt: u32,
}

fn one() -> u32 {
    1
}

/// The longest worker name a hub accepts.
pub const MAX_NAME_CHARS: usize = 64;
/// The longest capability a hub accepts.
pub const MAX_CAPABILITY_CHARS: usize = 128;
/// The most capabilities one registration may list.
pub const MAX_CAPABILITIES: usize = 64;
/// The longest `version` a hub accepts.
pub const MAX_VERSION_CHARS: usize = 64;

/// Characters a worker name may use besides ASCII letters and digits.
const NAME_EXTRA: &str = "._-:@+";
/// Characters a capability or version may use besides ASCII letters and
/// digits.
const CAPABILITY_EXTRA: &str = "._-:@+/=";

/// A registration the hub refuses (`docs/protocol.md` §4); it shows as the
/// rule broken, with the offending text escaped. `what` is "worker name",
/// "capability" or "version".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("the {what} is empty")]
    Empty { what: &'static str },
    #[error("the {what} \"{shown}...\" is longer than {max_chars} characters")]
    TooLong {
        what: &'static str,
        /// The first `max_chars` characters, escaped.
        shown: String,
        max_chars: usize,
    },
    #[error("the {what} \"{shown}\" has the character '{bad}', outside A-Z a-z 0-9 {allowed}")]
    BadCharacter {
        what: &'static str,
        /// The text, escaped.
        shown: String,
        /// The first character outside the set, escaped.
        bad: String,
        /// The characters allowed besides letters and digits, spaced.
        allowed: String,
    },
    #[error("{count} capabilities listed; at most {MAX_CAPABILITIES} are accepted")]
    TooManyCapabilities { count: usize },
}

impl Registration {
    /// Checks what the master will print and match on: names and
    /// capabilities come from the network and end up on a terminal, so
    /// only a small, documented character set is accepted
    /// (`docs/protocol.md` §4). The error names the rule broken.
    pub fn check(&self) -> Result<(), RegistrationError> {
        check_word("worker name", &self.name, MAX_NAME_CHARS, NAME_EXTRA)?;
        if self.capabilities.len() > MAX_CAPABILITIES {
            return Err(RegistrationError::TooManyCapabilities {
                count: self.capabilities.len(),
            });
        }
        for capability in &self.capabilities {
            check_word(
                "capability",
                capability,
                MAX_CAPABILITY_CHARS,
                CAPABILITY_EXTRA,
            )?;
        }
        if !self.version.is_empty() {
            check_word(
                "version",
                &self.version,
                MAX_VERSION_CHARS,
                CAPABILITY_EXTRA,
            )?;
        }
        Ok(())
    }
}

fn check_word(
    what: &'static str,
    value: &str,
    max_chars: usize,
    extra: &str,
) -> Result<(), RegistrationError> {
    let shown = crate::text::escape(&value.chars().take(max_chars).collect::<String>());
    if value.is_empty() {
        return Err(RegistrationError::Empty { what });
    }
    if value.chars().count() > max_chars {
        return Err(RegistrationError::TooLong {
            what,
            shown,
            max_chars,
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c)))
    {
        return Err(RegistrationError::BadCharacter {
            what,
            shown,
            bad: crate::text::escape(&bad.to_string()),
            allowed: extra
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    Ok(())
}

/// The hub's answer to `Register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    pub worker_id: String,
    pub protocol_version: u32,
    /// How often the hub pings; a worker should ping at least as often.
    pub ping_interval_ms: u64,
    /// Secret to present in [`Resume`] when reconnecting.
    #[serde(default)]
    pub resume_key: String,
    /// True when the hub took the worker back under its earlier id.
    #[serde(default)]
    pub resumed: bool,
    /// On a resume: the held attempts the hub still counts as this
    /// worker's. The worker keeps running these and stops every other one.
    #[serde(default)]
    pub keep: Vec<Held>,
}

/// One module to run, pushed by the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub module_id: String,
    pub attempt: u32,
    /// The script, given to the shell as its last argument.
    pub command: String,
    /// Program and leading arguments; the worker runs `shell... command`.
    pub shell: Vec<String>,
    /// Working directory, relative to the worker's own work directory.
    pub cwd: String,
    /// Environment to add: the module's `env` and `MUSTER_NEEDS_*` outputs.
    pub env: BTreeMap<String, String>,
    pub timeout_ms: u64,
    /// Outputs of the module's needs, by module id.
    pub needs: BTreeMap<String, BTreeMap<String, String>>,
    /// Names of environment variables whose values the worker masks in
    /// everything it sends back. Absent from an older hub: none.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Globs (relative to its cwd) of the files to upload once it succeeds;
    /// one starting with `?` may match nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub produces: Vec<String>,
    /// Artifacts of its needs to download, to the same relative paths under
    /// its cwd, before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumes: Vec<Consumed>,
}

/// How a module's execution ended, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReportStatus {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

/// The worker's account of one attempt, sent in `Complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub module_id: String,
    pub attempt: u32,
    pub status: ReportStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
    /// The files the module produced, uploaded to the hub before this
    /// report was sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
}

/// One file a module produced, stored on the hub by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Relative to the module's cwd, `/`-separated, normalised (no `.`,
    /// `..` or empty parts).
    pub path: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content: its name on the hub.
    pub sha256: String,
    /// Unix permission bits (e.g. 0o755 as 493).
    pub mode: u32,
}

/// A file to fetch before a module starts: an artifact of one of its needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consumed {
    /// The module that produced it.
    pub from: String,
    #[serde(flatten)]
    pub artifact: Artifact,
}

/// Which pipe a log batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// How a finished run ended: what every instance of a CI run reports in
/// its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(name: &str, capabilities: &[&str]) -> Registration {
        Registration {
            name: name.into(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            slots: 1,
            version: "0.1.0".into(),
            resume: None,
        }
    }

    #[test]
    fn registrations_are_checked_against_the_documented_rules() {
        fn check(name: &str, capabilities: &[&str], expected: Result<(), &str>) {
            let got = registration(name, capabilities).check();
            match (got, expected) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{name:?}: {e}"),
                (got, expected) => panic!("{name:?}: got {got:?}, expected {expected:?}"),
            }
        }
        check("local-1", &["os:linux", "arch:x86_64", "docker"], Ok(()));
        check("ci-runner.3@host", &["gpu:nvidia/a100", "mem=64g"], Ok(()));
        check("", &[], Err("the worker name is empty"));
        check(&"a".repeat(65), &[], Err("longer than 64 characters"));
        check(
            "evil\n[hold] ** succeeded on evil\x1b[2J",
            &[],
            Err("the worker name \"evil\\n[hold] ** succeeded on evil\\x1b[2J\" has the character '\\n'"),
        );
        check(
            "w",
            &["os:linux", "bad cap"],
            Err("the capability \"bad cap\" has the character ' '"),
        );
        check("w", &["\u{202e}rtl"], Err("has the character '\\u{202e}'"));
        let many: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        check("w", &many, Err("65 capabilities listed"));
    }
}
