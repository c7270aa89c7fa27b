//! `approval = { ... }`: a module's gate, each value checked where it is
//! written.

use toml::Spanned;

use super::error::{PipelineError, Source};
use super::fields::duration;
use super::raw::RawApproval;
use crate::gate::{approver_name_ok, Approval, OnTimeout, DEFAULT_GATE_TIMEOUT};

/// Reads module `name`'s gate; `gate_only` when it has no `run`.
pub(super) fn approval(
    source: &Source,
    name: &str,
    raw: &Spanned<RawApproval>,
    gate_only: bool,
) -> Result<Approval, PipelineError> {
    let gate = raw.get_ref();
    let mut approvers = Vec::new();
    for written in &gate.approvers {
        let approver = written.get_ref();
        if !approver_name_ok(approver) {
            return Err(source
                .error(written.span(), format!("approver name {approver:?} is not allowed"))
                .help("use 1 to 64 letters, digits and . _ - @ (the name given with --approver NAME=DIGEST)"));
        }
        if !approvers.contains(approver) {
            approvers.push(approver.clone());
        }
    }
    let mut inputs = Vec::new();
    for written in &gate.inputs {
        let input = written.get_ref();
        let ok = !input.is_empty()
            && input.len() <= 64
            && input.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(source
                .error(
                    written.span(),
                    format!("approval input {input:?} is not allowed"),
                )
                .help(
                    "use letters, digits and '_': it reaches the command as MUSTER_APPROVAL_<NAME>",
                ));
        }
        if inputs.contains(input) {
            return Err(source
                .error(
                    written.span(),
                    format!("approval input {input:?} is listed twice"),
                )
                .help("list each input once"));
        }
        inputs.push(input.clone());
    }
    let timeout = match &gate.timeout {
        Some(t) => duration(source, t)?,
        None => DEFAULT_GATE_TIMEOUT,
    };
    let on_timeout = match &gate.on_timeout {
        Some(written) => OnTimeout::parse(written.get_ref()).ok_or_else(|| {
            source
                .error(
                    written.span(),
                    format!("on_timeout {:?} is not one of fail, skip, approve", written.get_ref()),
                )
                .help("on_timeout = \"fail\" fails the module, \"skip\" skips it, \"approve\" runs it")
        })?,
        None => OnTimeout::Fail,
    };
    let prompt = match &gate.prompt {
        Some(p) if !p.get_ref().trim().is_empty() => p.get_ref().clone(),
        Some(p) => {
            return Err(source
                .error(p.span(), "an empty prompt asks nothing")
                .help("say what is being approved, e.g. prompt = \"Deploy to production?\""))
        }
        None => format!("Approve '{name}'?"),
    };
    Ok(Approval {
        prompt,
        approvers,
        timeout,
        on_timeout,
        inputs,
        not: gate.not.iter().map(|n| n.get_ref().clone()).collect(),
        gate_only,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::gate::OnTimeout;
    use crate::pipeline::check::{check_error, plan};

    #[test]
    fn a_gate_is_read_with_its_defaults() {
        let plan = plan(
            "[modules.build]\nrun = \"make\"\n\
             [modules.deploy]\nneeds = [\"build\"]\nrun = \"./deploy\"\n\
             approval = { prompt = \"Ship $MUSTER_NEEDS_BUILD_VERSION?\", approvers = [\"alice\", \"bob\"], timeout = \"2h\", on_timeout = \"skip\", inputs = [\"ticket\"], not = [\"$GITHUB_ACTOR\"] }\n\
             [modules.gate]\nneeds = [\"deploy\"]\napproval = {}\n",
        );
        let deploy = plan.modules[1].approval.as_ref().unwrap();
        assert_eq!(deploy.prompt, "Ship $MUSTER_NEEDS_BUILD_VERSION?");
        assert_eq!(deploy.approvers, ["alice", "bob"]);
        assert_eq!(deploy.timeout, Duration::from_secs(7200));
        assert_eq!(deploy.on_timeout, OnTimeout::Skip);
        assert_eq!(deploy.inputs, ["ticket"]);
        assert_eq!(deploy.not, ["$GITHUB_ACTOR"]);
        assert!(!deploy.gate_only);
        let gate = plan.modules[2].approval.as_ref().unwrap();
        assert!(gate.gate_only);
        assert_eq!(gate.prompt, "Approve 'gate'?");
        assert_eq!(gate.on_timeout, OnTimeout::Fail);
        assert_eq!(plan.modules[2].run, "");
        assert!(plan.modules[0].approval.is_none());
    }

    #[test]
    fn a_bad_gate_is_refused_where_written() {
        let head = "[modules.d]\nrun = \"x\"\n";
        check_error(
            &format!("{head}approval = {{ on_timeout = \"wait\" }}\n"),
            3,
            27,
            "on_timeout \"wait\" is not one of fail, skip, approve",
        );
        check_error(
            &format!("{head}approval = {{ approvers = [\"a b\"] }}\n"),
            3,
            27,
            "approver name \"a b\" is not allowed",
        );
        check_error(
            &format!("{head}approval = {{ inputs = [\"t-1\"] }}\n"),
            3,
            24,
            "approval input \"t-1\" is not allowed",
        );
        check_error(
            &format!("{head}approval = {{ timeout = \"soon\" }}\n"),
            3,
            24,
            "bad duration",
        );
        check_error(
            &format!("{head}approval = {{ prompt = \"\" }}\n"),
            3,
            23,
            "an empty prompt",
        );
        check_error(
            &format!("{head}approval = {{ asks = 1 }}\n"),
            3,
            14,
            "unknown field `asks`",
        );
    }
}
