//! Approval gates: a module that waits for a person's yes before it runs.
//! What a gate asks ([`Approval`], from the pipeline file), who decided
//! ([`Decider`]) and what ([`Decision`]), and the rules a decision must
//! pass ([`check`]) — without I/O, so the hub's machine and every test
//! judge a decision the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// How long a gate waits when its `timeout` is not written.
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest text an approver's input value or reason may have.
pub const MAX_DECISION_TEXT: usize = 1024;

/// `approval = { ... }` on a module, as checked at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The question, as written: `$MUSTER_NEEDS_...` names are filled in
    /// from the needs' outputs when the gate opens ([`prompt`]).
    pub prompt: String,
    /// Who may decide, by name; empty: any approver, or the run token.
    pub approvers: Vec<String>,
    /// How long the gate waits for a decision once its needs succeeded.
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// Names of the values an approval must give; each reaches the command
    /// as `MUSTER_APPROVAL_<NAME>` and becomes an output of the module.
    pub inputs: Vec<String>,
    /// Who may not decide, as written (`$GITHUB_ACTOR` is read from the
    /// master's environment when a decision comes).
    pub not: Vec<String>,
    /// A gate with no `run`: approving it is its success.
    pub gate_only: bool,
}

impl Approval {
    /// Who may decide it, as the run and `muster validate` say it.
    pub fn deciders(&self) -> String {
        if self.approvers.is_empty() {
            "any approver or the run token".to_owned()
        } else {
            self.approvers.join(", ")
        }
    }
}

/// What an expired gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// The module fails; dependents are skipped.
    Fail,
    /// The module is skipped, and so are its dependents.
    Skip,
    /// The module runs as if approved (by nobody).
    Approve,
}

impl OnTimeout {
    pub fn parse(text: &str) -> Option<OnTimeout> {
        match text {
            "fail" => Some(OnTimeout::Fail),
            "skip" => Some(OnTimeout::Skip),
            "approve" => Some(OnTimeout::Approve),
            _ => None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            OnTimeout::Fail => "fail",
            OnTimeout::Skip => "skip",
            OnTimeout::Approve => "approve",
        }
    }
}

/// Who sent a decision, as the hub knows from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// A named approver's own token.
    Approver(String),
    /// The run token: may decide gates that name no approvers.
    RunToken,
}

impl Decider {
    /// The name the journal and the summary give.
    pub fn name(&self) -> &str {
        match self {
            Decider::Approver(name) => name,
            Decider::RunToken => "the run token",
        }
    }
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Yes or no, with what came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve {
        inputs: BTreeMap<String, String>,
        reason: Option<String>,
    },
    Reject {
        reason: String,
    },
}

impl Decision {
    pub fn word(&self) -> &'static str {
        match self {
            Decision::Approve { .. } => "approved",
            Decision::Reject { .. } => "rejected",
        }
    }
}

/// Why a decision was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no module '{0}' in this run")]
    UnknownModule(String),
    #[error("module '{0}' has no approval gate")]
    NoGate(String),
    #[error("module '{module}' is not waiting for approval (it is {state})")]
    NotWaiting { module: String, state: String },
    #[error("module '{module}' was already {decision} by {by}")]
    AlreadyDecided {
        module: String,
        decision: String,
        by: String,
    },
    #[error("{by} may not decide '{module}': its approvers are {approvers}")]
    NotAnApprover {
        module: String,
        by: String,
        approvers: String,
    },
    #[error("{by} may not decide '{module}' (its gate says not = [{not}])")]
    Excluded {
        module: String,
        by: String,
        not: String,
    },
    #[error("approving '{module}' needs {missing}: give --input {example}=VALUE")]
    MissingInput {
        module: String,
        missing: String,
        example: String,
    },
    #[error("'{module}' asks for no input named '{name}' (it asks for: {asked})")]
    UnknownInput {
        module: String,
        name: String,
        asked: String,
    },
    #[error("{what} is longer than {MAX_DECISION_TEXT} bytes or holds control characters")]
    BadText { what: String },
    #[error("rejecting '{0}' needs a reason: give --reason TEXT")]
    NoReason(String),
}

/// Checks `decision` by `decider` on `module`'s gate; `env` reads the
/// master's environment for `not = ["$VAR"]`. Whether the module is
/// waiting is the caller's (the state machine's) to say.
pub fn check(
    module: &str,
    gate: &Approval,
    decider: &Decider,
    decision: &Decision,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Refused> {
    match (decider, gate.approvers.is_empty()) {
        (Decider::RunToken, true) => {}
        (Decider::Approver(name), _)
            if gate.approvers.is_empty() || gate.approvers.contains(name) => {}
        (by, _) => {
            return Err(Refused::NotAnApprover {
                module: module.to_owned(),
                by: by.name().to_owned(),
                approvers: gate.approvers.join(", "),
            })
        }
    }
    if let Decider::Approver(name) = decider {
        let excluded = gate.not.iter().any(|written| {
            let resolved = match written.strip_prefix('$') {
                Some(var) => env(var.trim_start_matches('{').trim_end_matches('}')),
                None => Some(written.clone()),
            };
            resolved.is_some_and(|n| !n.is_empty() && n == *name)
        });
        if excluded {
            return Err(Refused::Excluded {
                module: module.to_owned(),
                by: name.clone(),
                not: gate.not.join(", "),
            });
        }
    }
    match decision {
        Decision::Approve { inputs, reason } => {
            if let Some(name) = inputs.keys().find(|n| !gate.inputs.contains(n)) {
                return Err(Refused::UnknownInput {
                    module: module.to_owned(),
                    name: crate::text::escape(name),
                    asked: if gate.inputs.is_empty() {
                        "none".to_owned()
                    } else {
                        gate.inputs.join(", ")
                    },
                });
            }
            let missing: Vec<&str> = gate
                .inputs
                .iter()
                .filter(|n| inputs.get(*n).is_none_or(|v| v.trim().is_empty()))
                .map(String::as_str)
                .collect();
            if let Some(first) = missing.first() {
                return Err(Refused::MissingInput {
                    module: module.to_owned(),
                    missing: missing.join(", "),
                    example: (*first).to_owned(),
                });
            }
            for (name, value) in inputs {
                plain_text(&format!("input '{name}'"), value)?;
            }
            if let Some(reason) = reason {
                plain_text("the reason", reason)?;
            }
        }
        Decision::Reject { reason } => {
            if reason.trim().is_empty() {
                return Err(Refused::NoReason(module.to_owned()));
            }
            plain_text("the reason", reason)?;
        }
    }
    Ok(())
}

/// Text from an approver goes into the journal, logs and environment
/// variables: bounded, and one line without control characters.
fn plain_text(what: &str, text: &str) -> Result<(), Refused> {
    if text.len() > MAX_DECISION_TEXT || text.chars().any(char::is_control) {
        return Err(Refused::BadText {
            what: what.to_owned(),
        });
    }
    Ok(())
}

/// A digest of what a gate's needs gave it (each need's id and outputs),
/// so a decision is bound to the outputs it was asked about.
pub fn needs_digest<'a>(
    needs: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut field = |text: &str| {
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    };
    for (id, outputs) in needs {
        field(id);
        field(&outputs.len().to_string());
        for (key, value) in outputs {
            field(key);
            field(value);
        }
    }
    format!("{:x}", hasher.finalize())[..16].to_owned()
}

/// The names an approver may have (`approvers = [...]`, `--approver
/// NAME=DIGEST`): 1 to 64 letters, digits and `. _ - @`.
pub fn approver_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Reads `NAME=SHA256` (the hex SHA-256 of the approver's token), as
/// `--approver` takes it.
pub fn parse_approver(text: &str) -> Result<(String, [u8; 32]), String> {
    let (name, hex) = text.split_once('=').ok_or_else(|| {
        "expected NAME=SHA256 (the SHA-256 of the approver's token, e.g. from `printf %s \"$TOKEN\" | sha256sum`)".to_owned()
    })?;
    if !approver_name_ok(name) {
        return Err(format!(
            "approver name {:?} is not allowed: use 1 to 64 letters, digits and . _ - @",
            crate::text::escape(name)
        ));
    }
    // The value is never echoed: it may be a token given by mistake.
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the digest for approver '{name}' must be 64 hex digits (the SHA-256 of their token, never the token itself)"
        ));
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked: hex digits");
    }
    Ok((name.to_owned(), digest))
}

/// The environment variable an approval input reaches the command as.
pub fn input_env_name(name: &str) -> String {
    format!("MUSTER_APPROVAL_{}", name.to_ascii_uppercase())
}

/// The prompt with `$NAME` and `${NAME}` filled in from `vars` (the
/// outputs of the needs as `MUSTER_NEEDS_...`, and the module's `env`);
/// names it does not know stay as written.
pub fn prompt(written: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(written.len());
    let mut rest = written;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        // `used`: how much of `after` the reference takes (none when
        // there is no name: the `$` is plain text).
        let (name, used) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match (!name.is_empty()).then(|| vars(name)).flatten() {
            Some(value) => out.push_str(&value),
            None => {
                out.push('$');
                out.push_str(&after[..used]);
            }
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Approval {
        Approval {
            prompt: "Deploy $MUSTER_NEEDS_BUILD_VERSION?".into(),
            approvers: vec!["alice".into(), "bob".into()],
            timeout: Duration::from_secs(60),
            on_timeout: OnTimeout::Fail,
            inputs: vec!["ticket".into()],
            not: vec!["$GITHUB_ACTOR".into()],
            gate_only: false,
        }
    }

    fn approve(inputs: &[(&str, &str)]) -> Decision {
        Decision::Approve {
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reason: None,
        }
    }

    fn env(var: &str) -> Option<String> {
        (var == "GITHUB_ACTOR").then(|| "bob".to_owned())
    }

    fn alice() -> Decider {
        Decider::Approver("alice".into())
    }

    #[test]
    fn a_named_approver_with_every_input_may_approve() {
        let ok = check(
            "deploy",
            &gate(),
            &alice(),
            &approve(&[("ticket", "OPS-12")]),
            &env,
        );
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn who_may_decide() {
        let yes = approve(&[("ticket", "OPS-12")]);
        let carol = Decider::Approver("carol".into());
        let e = check("deploy", &gate(), &carol, &yes, &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "carol may not decide 'deploy': its approvers are alice, bob"
        );
        let e = check("deploy", &gate(), &Decider::RunToken, &yes, &env).unwrap_err();
        assert!(matches!(e, Refused::NotAnApprover { .. }), "{e}");
        // bob is an approver, but the gate says not = ["$GITHUB_ACTOR"].
        let bob = Decider::Approver("bob".into());
        let e = check("deploy", &gate(), &bob, &yes, &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bob may not decide 'deploy' (its gate says not = [$GITHUB_ACTOR])"
        );
        // A gate without approvers: the run token and any approver.
        let open = Approval {
            approvers: vec![],
            inputs: vec![],
            ..gate()
        };
        let plain = approve(&[]);
        assert_eq!(check("g", &open, &Decider::RunToken, &plain, &env), Ok(()));
        assert_eq!(check("g", &open, &carol, &plain, &env), Ok(()));
        // An unset variable excludes nobody.
        assert_eq!(check("g", &open, &bob, &plain, &|_| None), Ok(()));
    }

    #[test]
    fn what_a_decision_must_carry() {
        let e = check("deploy", &gate(), &alice(), &approve(&[]), &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "approving 'deploy' needs ticket: give --input ticket=VALUE"
        );
        let e = check(
            "deploy",
            &gate(),
            &alice(),
            &approve(&[("ticket", "1"), ("color", "red")]),
            &env,
        )
        .unwrap_err();
        assert!(matches!(e, Refused::UnknownInput { .. }), "{e}");
        let e = check(
            "deploy",
            &gate(),
            &alice(),
            &approve(&[("ticket", "a\u{1b}[2J")]),
            &env,
        )
        .unwrap_err();
        assert!(matches!(e, Refused::BadText { .. }), "{e}");
        let long = "x".repeat(MAX_DECISION_TEXT + 1);
        let e = check(
            "deploy",
            &gate(),
            &alice(),
            &approve(&[("ticket", &long)]),
            &env,
        )
        .unwrap_err();
        assert!(matches!(e, Refused::BadText { .. }), "{e}");
        let no = Decision::Reject {
            reason: "  ".into(),
        };
        let e = check("deploy", &gate(), &alice(), &no, &env).unwrap_err();
        assert_eq!(e, Refused::NoReason("deploy".into()));
        let no = Decision::Reject {
            reason: "not on a Friday".into(),
        };
        assert_eq!(check("deploy", &gate(), &alice(), &no, &env), Ok(()));
    }

    #[test]
    fn approvers_are_given_by_name_and_digest() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let (name, digest) = parse_approver(&format!("alice={hex}")).unwrap();
        assert_eq!(name, "alice");
        assert_eq!(digest[0], 0x9f);
        assert_eq!(digest[31], 0x08);
        assert!(parse_approver("alice").unwrap_err().contains("NAME=SHA256"));
        assert!(parse_approver("alice=secret-token")
            .unwrap_err()
            .contains("64 hex digits"));
        assert!(parse_approver(&format!("a b={hex}"))
            .unwrap_err()
            .contains("not allowed"));
    }

    #[test]
    fn the_needs_digest_changes_with_any_output() {
        let a: BTreeMap<String, String> = [("version".to_owned(), "1.0".to_owned())].into();
        let b: BTreeMap<String, String> = [("version".to_owned(), "1.1".to_owned())].into();
        let one = needs_digest([("build", &a)]);
        assert_eq!(one, needs_digest([("build", &a)]));
        assert_ne!(one, needs_digest([("build", &b)]));
        assert_ne!(one, needs_digest([("test", &a)]));
        assert_ne!(
            needs_digest([("ab", &BTreeMap::new())]),
            needs_digest([("a", &a)])
        );
    }

    #[test]
    fn the_prompt_is_filled_from_what_the_gate_knows() {
        let vars = |name: &str| (name == "MUSTER_NEEDS_BUILD_VERSION").then(|| "1.4.2".to_owned());
        assert_eq!(
            prompt("Deploy $MUSTER_NEEDS_BUILD_VERSION?", &vars),
            "Deploy 1.4.2?"
        );
        assert_eq!(
            prompt("Deploy ${MUSTER_NEEDS_BUILD_VERSION}!", &vars),
            "Deploy 1.4.2!"
        );
        assert_eq!(
            prompt("cost $5 and $UNKNOWN", &vars),
            "cost $5 and $UNKNOWN"
        );
        assert_eq!(prompt("a ${OPEN", &vars), "a ${OPEN");
        assert_eq!(prompt("ends with $", &vars), "ends with $");
    }
}
