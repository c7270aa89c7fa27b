//! The hub's methods as typed values: one enum per direction, converted to
//! and from SignalR invocations. Field names are camelCase, as JavaScript
//! and .NET SignalR clients expect. `docs/protocol.md` documents every type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::signalr::Message;

/// Bumped when a change would break a worker written against an older page
/// of `docs/protocol.md`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest record a hub accepts by default (`docs/protocol.md` §2):
/// workers keep their calls under it, since a larger one closes the
/// connection.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

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

impl Registration {
    /// Checks what the master will print and match on: names and
    /// capabilities come from the network and end up on a terminal, so
    /// only a small, documented character set is accepted
    /// (`docs/protocol.md` §4). The error names the rule broken.
    pub fn check(&self) -> Result<(), String> {
        check_word("worker name", &self.name, MAX_NAME_CHARS, NAME_EXTRA)?;
        if self.capabilities.len() > MAX_CAPABILITIES {
            return Err(format!(
                "{} capabilities listed; at most {MAX_CAPABILITIES} are accepted",
                self.capabilities.len()
            ));
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

fn check_word(what: &str, value: &str, max_chars: usize, extra: &str) -> Result<(), String> {
    let shown = crate::text::escape(&value.chars().take(max_chars).collect::<String>());
    if value.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if value.chars().count() > max_chars {
        return Err(format!(
            "the {what} \"{shown}...\" is longer than {max_chars} characters"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c)))
    {
        let bad = crate::text::escape(&bad.to_string());
        return Err(format!(
            "the {what} \"{shown}\" has the character '{bad}', outside A-Z a-z 0-9 {}",
            extra
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(" ")
        ));
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

/// Worker → hub calls.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerCall {
    /// Join the run; answered with a [`Welcome`].
    Register(Registration),
    /// The worker has spawned the module: from here on it owns the execution.
    Started { module_id: String, attempt: u32 },
    /// A batch of output lines.
    Log {
        module_id: String,
        attempt: u32,
        stream: LogStream,
        text: String,
    },
    /// The attempt ended.
    Complete(Report),
}

/// Hub → worker calls.
#[derive(Debug, Clone, PartialEq)]
pub enum HubCall {
    /// Run this module.
    Assign(Assignment),
    /// Stop this attempt and report it `cancelled`.
    Cancel {
        module_id: String,
        attempt: u32,
        reason: String,
    },
    /// The run is over: stop everything and disconnect. `outcome` says
    /// how it ended (a second, optional argument).
    Shutdown {
        reason: String,
        outcome: Option<RunOutcome>,
    },
}

/// Why an invocation does not match any hub method.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("unknown hub method '{0}'")]
    UnknownMethod(String),
    #[error("'{method}' takes {expected} argument(s), got {got}")]
    Arity {
        method: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("'{method}' argument {index}: {message}")]
    Argument {
        method: &'static str,
        index: usize,
        message: String,
    },
}

fn arg<T: serde::de::DeserializeOwned>(
    method: &'static str,
    args: &mut [Value],
    index: usize,
) -> Result<T, CallError> {
    serde_json::from_value(args[index].take()).map_err(|e| CallError::Argument {
        method,
        index,
        message: e.to_string(),
    })
}

fn arity(method: &'static str, args: &[Value], expected: usize) -> Result<(), CallError> {
    if args.len() == expected {
        Ok(())
    } else {
        Err(CallError::Arity {
            method,
            expected,
            got: args.len(),
        })
    }
}

fn json<T: Serialize>(value: T) -> Value {
    serde_json::to_value(value).expect("wire types always serialize")
}

impl WorkerCall {
    /// Decodes an invocation; method names match case-insensitively, as in
    /// ASP.NET Core SignalR.
    pub fn from_invocation(target: &str, mut args: Vec<Value>) -> Result<Self, CallError> {
        let a = &mut args;
        match target.to_ascii_lowercase().as_str() {
            "register" => {
                arity("Register", a, 1)?;
                Ok(WorkerCall::Register(arg("Register", a, 0)?))
            }
            "started" => {
                arity("Started", a, 2)?;
                Ok(WorkerCall::Started {
                    module_id: arg("Started", a, 0)?,
                    attempt: arg("Started", a, 1)?,
                })
            }
            "log" => {
                arity("Log", a, 4)?;
                Ok(WorkerCall::Log {
                    module_id: arg("Log", a, 0)?,
                    attempt: arg("Log", a, 1)?,
                    stream: arg("Log", a, 2)?,
                    text: arg("Log", a, 3)?,
                })
            }
            "complete" => {
                arity("Complete", a, 1)?;
                Ok(WorkerCall::Complete(arg("Complete", a, 0)?))
            }
            _ => Err(CallError::UnknownMethod(target.to_owned())),
        }
    }

    /// The method name and arguments of this call.
    pub fn into_invocation(self) -> (&'static str, Vec<Value>) {
        match self {
            WorkerCall::Register(r) => ("Register", vec![json(r)]),
            WorkerCall::Started { module_id, attempt } => {
                ("Started", vec![json(module_id), json(attempt)])
            }
            WorkerCall::Log {
                module_id,
                attempt,
                stream,
                text,
            } => (
                "Log",
                vec![json(module_id), json(attempt), json(stream), json(text)],
            ),
            WorkerCall::Complete(report) => ("Complete", vec![json(report)]),
        }
    }

    /// A SignalR invocation message; `invocation_id` asks for a Completion.
    pub fn to_message(self, invocation_id: Option<String>) -> Message {
        let (target, arguments) = self.into_invocation();
        Message::Invocation {
            invocation_id,
            target: target.to_owned(),
            arguments,
        }
    }
}

impl HubCall {
    pub fn from_invocation(target: &str, mut args: Vec<Value>) -> Result<Self, CallError> {
        let a = &mut args;
        match target.to_ascii_lowercase().as_str() {
            "assign" => {
                arity("Assign", a, 1)?;
                Ok(HubCall::Assign(arg("Assign", a, 0)?))
            }
            "cancel" => {
                arity("Cancel", a, 3)?;
                Ok(HubCall::Cancel {
                    module_id: arg("Cancel", a, 0)?,
                    attempt: arg("Cancel", a, 1)?,
                    reason: arg("Cancel", a, 2)?,
                })
            }
            "shutdown" => {
                if a.len() != 2 {
                    arity("Shutdown", a, 1)?;
                }
                Ok(HubCall::Shutdown {
                    reason: arg("Shutdown", a, 0)?,
                    outcome: match a.len() {
                        2 => arg("Shutdown", a, 1)?,
                        _ => None,
                    },
                })
            }
            _ => Err(CallError::UnknownMethod(target.to_owned())),
        }
    }

    pub fn into_invocation(self) -> (&'static str, Vec<Value>) {
        match self {
            HubCall::Assign(a) => ("Assign", vec![json(a)]),
            HubCall::Cancel {
                module_id,
                attempt,
                reason,
            } => ("Cancel", vec![json(module_id), json(attempt), json(reason)]),
            HubCall::Shutdown {
                reason,
                outcome: None,
            } => ("Shutdown", vec![json(reason)]),
            HubCall::Shutdown {
                reason,
                outcome: Some(outcome),
            } => ("Shutdown", vec![json(reason), json(outcome)]),
        }
    }

    /// Hub calls are fire-and-forget: no invocation id.
    pub fn to_message(self) -> Message {
        let (target, arguments) = self.into_invocation();
        Message::Invocation {
            invocation_id: None,
            target: target.to_owned(),
            arguments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
                (Err(e), Err(part)) => assert!(e.contains(part), "{name:?}: {e}"),
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

    #[test]
    fn worker_calls_round_trip() {
        let calls = vec![
            WorkerCall::Register(Registration {
                name: "w1".into(),
                capabilities: vec!["os:linux".into()],
                slots: 2,
                version: "0.1.0".into(),
                resume: None,
            }),
            WorkerCall::Register(Registration {
                name: "w1".into(),
                capabilities: vec![],
                slots: 1,
                version: "0.1.0".into(),
                resume: Some(Resume {
                    worker_id: "w3".into(),
                    key: "k".into(),
                    holding: vec![Held {
                        module_id: "build".into(),
                        attempt: 2,
                    }],
                }),
            }),
            WorkerCall::Started {
                module_id: "build".into(),
                attempt: 1,
            },
            WorkerCall::Log {
                module_id: "build".into(),
                attempt: 1,
                stream: LogStream::Stderr,
                text: "a\nb".into(),
            },
            WorkerCall::Complete(Report {
                module_id: "build".into(),
                attempt: 1,
                status: ReportStatus::TimedOut,
                exit_code: None,
                outputs: BTreeMap::new(),
                error: Some("timed out after 1s".into()),
                duration_ms: 1000,
                artifacts: vec![],
            }),
            WorkerCall::Complete(Report {
                module_id: "build".into(),
                attempt: 2,
                status: ReportStatus::Succeeded,
                exit_code: Some(0),
                outputs: BTreeMap::new(),
                error: None,
                duration_ms: 1000,
                artifacts: vec![Artifact {
                    path: "dist/app.tar.gz".into(),
                    size: 3,
                    sha256: "ab".repeat(32),
                    mode: 0o755,
                }],
            }),
        ];
        for call in calls {
            let (target, args) = call.clone().into_invocation();
            assert_eq!(WorkerCall::from_invocation(target, args).unwrap(), call);
        }
    }

    #[test]
    fn hub_calls_round_trip() {
        let calls = [
            HubCall::Cancel {
                module_id: "m".into(),
                attempt: 2,
                reason: "fail-fast".into(),
            },
            HubCall::Shutdown {
                reason: "done".into(),
                outcome: None,
            },
            HubCall::Shutdown {
                reason: "done".into(),
                outcome: Some(RunOutcome::Failed),
            },
        ];
        for call in calls {
            let (target, args) = call.clone().into_invocation();
            assert_eq!(HubCall::from_invocation(target, args).unwrap(), call);
        }
        assert!(HubCall::from_invocation("Shutdown", vec![]).is_err());
    }

    #[test]
    fn assignment_carries_secret_names_and_defaults_to_none() {
        let assignment = Assignment {
            module_id: "deploy".into(),
            attempt: 1,
            command: "deploy".into(),
            shell: vec!["sh".into(), "-c".into()],
            cwd: ".".into(),
            env: BTreeMap::new(),
            timeout_ms: 1000,
            needs: BTreeMap::new(),
            secrets: vec!["NPM_TOKEN".into()],
            produces: vec!["dist/**".into()],
            consumes: vec![Consumed {
                from: "build".into(),
                artifact: Artifact {
                    path: "target/app".into(),
                    size: 1,
                    sha256: "cd".repeat(32),
                    mode: 0o644,
                },
            }],
        };
        let call = HubCall::Assign(assignment.clone());
        let (target, args) = call.clone().into_invocation();
        assert_eq!(args[0]["secrets"], json!(["NPM_TOKEN"]));
        assert_eq!(HubCall::from_invocation(target, args).unwrap(), call);
        // An Assign from a hub that predates secrets still parses.
        let mut old = json(assignment);
        old.as_object_mut().unwrap().remove("secrets");
        let parsed: Assignment = serde_json::from_value(old).unwrap();
        assert!(parsed.secrets.is_empty());
    }

    #[test]
    fn registration_uses_camel_case_and_defaults() {
        let call = WorkerCall::from_invocation("register", vec![json!({"name": "js"})]).unwrap();
        assert_eq!(
            call,
            WorkerCall::Register(Registration {
                name: "js".into(),
                capabilities: vec![],
                slots: 1,
                version: String::new(),
                resume: None,
            })
        );
        // A Welcome from an older hub still parses.
        let welcome: Welcome = serde_json::from_value(
            json!({"workerId": "w1", "protocolVersion": 1, "pingIntervalMs": 15000}),
        )
        .unwrap();
        assert!(!welcome.resumed && welcome.keep.is_empty());
        let report = json(Report {
            module_id: "m".into(),
            attempt: 1,
            status: ReportStatus::Succeeded,
            exit_code: Some(0),
            outputs: BTreeMap::new(),
            error: None,
            duration_ms: 5,
            artifacts: vec![],
        });
        assert_eq!(report["moduleId"], "m");
        assert_eq!(report["exitCode"], 0);
        assert_eq!(report["durationMs"], 5);
    }

    #[test]
    fn bad_invocations_are_specific_errors() {
        assert_eq!(
            WorkerCall::from_invocation("Explode", vec![]),
            Err(CallError::UnknownMethod("Explode".into()))
        );
        assert_eq!(
            WorkerCall::from_invocation("Started", vec![json!("m")]),
            Err(CallError::Arity {
                method: "Started",
                expected: 2,
                got: 1
            })
        );
        assert!(matches!(
            WorkerCall::from_invocation("Started", vec![json!("m"), json!("one")]),
            Err(CallError::Argument {
                method: "Started",
                index: 1,
                ..
            })
        ));
    }
}
