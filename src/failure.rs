//! Why a command did not succeed: one value per reason, each with its exit
//! code (README.md, "Exit codes"). Commands return a [`Failure`]; `main`
//! prints it and turns it into the process's exit code, in one place.

use muster_core::wire::types::RunOutcome;

use crate::pipeline::LoadError;

/// A command that did not succeed; `main` says why and exits with its code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 1: the run finished and at least one module failed, timed out
    /// or was skipped. The summary table has said so.
    RunFailed,
    /// Exit 1: `muster cancel` found a run that had already finished.
    NothingToCancel(String),
    /// Exit 1: the hub refused a gate's decision (the module is not
    /// waiting, or was decided already); nothing changed.
    DecisionRefused(String),
    /// Exit 2: the command line, the environment or the token is wrong;
    /// nothing ran.
    Usage(String),
    /// Exit 2: the pipeline file cannot be read or is wrong; nothing ran.
    Pipeline(LoadError),
    /// Exit 3: muster itself could not work (cannot listen, a hub out of
    /// reach, Redis refusing it).
    Infrastructure(anyhow::Error),
    /// Exit 3: every module succeeded, but the run's output did not all
    /// reach stdout. The master said so when it happened.
    OutputLost,
    /// Exit 130: the run was cancelled (Ctrl-C, SIGTERM, `muster cancel`)
    /// and has said so, or a worker was told to stop.
    Cancelled,
    /// Exit 130: Ctrl-C or SIGTERM before the run began; says what was
    /// going on.
    Interrupted(&'static str),
    /// Exit 130: a second Ctrl-C or SIGTERM: the run was left without
    /// waiting for its workers; destructors still kill what it started.
    Abandoned,
}

impl Failure {
    /// An infrastructure failure whose message is `error`'s own text, as
    /// users have always seen it (its sources are not appended).
    pub fn infrastructure(error: impl std::fmt::Display) -> Failure {
        Failure::Infrastructure(anyhow::Error::msg(error.to_string()))
    }

    /// What to print on stderr after `muster: `, if anything is left to
    /// say.
    pub fn message(&self) -> Option<String> {
        match self {
            Failure::RunFailed | Failure::OutputLost | Failure::Cancelled | Failure::Abandoned => {
                None
            }
            Failure::NothingToCancel(reason) => Some(format!("nothing to cancel: {reason}")),
            Failure::DecisionRefused(why) => Some(format!("refused: {why}")),
            Failure::Usage(message) => Some(format!("error: {message}")),
            Failure::Pipeline(error) => Some(format!("error: {error}")),
            Failure::Infrastructure(error) => Some(format!("error: {error:#}")),
            Failure::Interrupted(what) => Some((*what).to_owned()),
        }
    }
}

/// A run's outcome as a command's result, the same on every instance.
pub fn outcome_result(outcome: RunOutcome) -> Result<(), Failure> {
    match outcome {
        RunOutcome::Succeeded => Ok(()),
        RunOutcome::Failed => Err(Failure::RunFailed),
        RunOutcome::Cancelled => Err(Failure::Cancelled),
    }
}

impl From<LoadError> for Failure {
    fn from(error: LoadError) -> Failure {
        Failure::Pipeline(error)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::Infrastructure(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::Infrastructure(error.into())
    }
}

impl From<muster_hub::HubError> for Failure {
    fn from(error: muster_hub::HubError) -> Failure {
        Failure::Infrastructure(error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(failure: Failure, message: Option<&str>) {
        assert_eq!(failure.message().as_deref(), message);
    }

    #[test]
    fn messages_read_as_they_always_have() {
        check(Failure::RunFailed, None);
        check(Failure::Cancelled, None);
        check(Failure::Abandoned, None);
        check(Failure::OutputLost, None);
        check(
            Failure::NothingToCancel("the run has finished".into()),
            Some("nothing to cancel: the run has finished"),
        );
        check(Failure::Usage("bad".into()), Some("error: bad"));
        check(
            Failure::Infrastructure(
                anyhow::anyhow!("refused").context("cannot listen on loopback"),
            ),
            Some("error: cannot listen on loopback: refused"),
        );
        check(
            Failure::Interrupted("interrupted while waiting for Redis"),
            Some("interrupted while waiting for Redis"),
        );
        let missing = LoadError::Unreadable {
            file: "/nowhere/muster.toml".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        check(
            Failure::Pipeline(missing),
            Some("error: cannot read pipeline file /nowhere/muster.toml: entity not found\n  = help: pass the path of a pipeline file, or create muster.toml (see examples/)"),
        );
    }
}
