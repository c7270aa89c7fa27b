//! The hub's methods as typed values: one enum per direction
//! ([`WorkerCall`], [`HubCall`]), converted to and from SignalR
//! invocations. Method names match case-insensitively, as in ASP.NET Core
//! SignalR.

use serde::Serialize;
use serde_json::Value;

use super::signalr::Message;
use super::types::{Assignment, LogStream, Registration, Report, RunOutcome};

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
    /// The module the call is about (none for `Register`).
    pub fn module_id(&self) -> Option<&str> {
        match self {
            WorkerCall::Started { module_id, .. } | WorkerCall::Log { module_id, .. } => {
                Some(module_id)
            }
            WorkerCall::Complete(report) => Some(&report.module_id),
            WorkerCall::Register(_) => None,
        }
    }

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
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::wire::types::{Artifact, Consumed, Held, ReportStatus, Resume, Welcome};

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
