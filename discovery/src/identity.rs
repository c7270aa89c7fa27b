//! Which CI run this is and which instance of it we are: the run id that
//! every instance of one run derives the same way (and that a re-run does
//! not share), and this instance's index and total, from flags or CI
//! variables. Pure: the environment comes in as a lookup function, so tests
//! pass a map and nothing here reads the process environment.

use std::fmt;

/// A lookup into the environment; `std::env::var(name).ok()` in the binary,
/// a map in tests. Empty (or all-blank) values count as unset.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The longest run id accepted; the id becomes part of a Redis key.
pub const MAX_RUN_ID: usize = 200;

/// The run every instance of one CI run shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// Only `[A-Za-z0-9._@-]`, at most [`MAX_RUN_ID`] characters.
    pub run_id: String,
    /// Where the id came from, in words, e.g.
    /// `GITHUB_RUN_ID=123 and GITHUB_RUN_ATTEMPT=2`.
    pub source: String,
    /// The id of the previous attempt of the same CI run, when this is a
    /// re-run (GitHub's `GITHUB_RUN_ATTEMPT`, Azure's
    /// `SYSTEM_STAGEATTEMPT` above 1): a re-run resumes from its journal.
    pub previous: Option<String>,
}

/// This instance's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// 0-based; always `< total`.
    pub index: u32,
    /// At least 1.
    pub total: u32,
    /// Where index and total came from, e.g. `--instance 1 --total 3`.
    pub source: String,
}

/// What an instance does in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instance 0: runs the hub, the tunnel, the discovery record and a
    /// worker of its own.
    Master,
    /// Every other instance: looks the record up and joins the hub.
    Worker,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot tell which CI run this is: none of {looked_for} is set. Pass --run-id <value \
         shared by every instance of this run>, e.g. --run-id local \
         (outside CI the git HEAD is added to it, so the same id on another commit is another run)"
    )]
    NoRunId { looked_for: String },
    #[error(
        "GITHUB_RUN_ID={run_id} is set but GITHUB_RUN_ATTEMPT is not, so a re-run could join the \
         previous attempt's hub. Pass --run-id \"${{{{ github.run_id }}}}-${{{{ github.run_attempt }}}}\""
    )]
    GithubAttemptMissing { run_id: String },
    #[error("the run id is {len} characters long; at most {max} are allowed (it becomes part of a Redis key): pass a shorter --run-id", max = MAX_RUN_ID)]
    RunIdTooLong { len: usize },
    #[error("{given} is set without {missing}: set both (or neither), e.g. {example}")]
    HalfPair {
        given: String,
        missing: String,
        example: String,
    },
    #[error("{name}={value:?} is not {expected}")]
    BadNumber {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("the total number of instances is 0 (from {from}); it must be at least 1")]
    ZeroTotal { from: String },
    #[error(
        "instance {index} does not exist in a run of {total} instance(s) (from {from}); \
         instances are numbered 0 to {last}",
        last = .total - 1
    )]
    IndexOutOfRange {
        index: u32,
        total: u32,
        from: String,
    },
    #[error(
        "cannot tell which instance this is or how many there are. Set them per CI system:\n\
         - anywhere: --instance <0-based index> --total <count>, or MUSTER_INSTANCE and MUSTER_TOTAL\n\
         - GitHub Actions (has no such variables): env MUSTER_INSTANCE: ${{{{ strategy.job-index }}}} \
         and MUSTER_TOTAL: ${{{{ strategy.job-total }}}} on a matrix job\n\
         - Buildkite: give the step `parallelism: N` (sets BUILDKITE_PARALLEL_JOB and BUILDKITE_PARALLEL_JOB_COUNT)\n\
         - GitLab: give the job `parallel: N` (sets CI_NODE_INDEX and CI_NODE_TOTAL)\n\
         - CircleCI: give the job `parallelism: N` (sets CIRCLE_NODE_INDEX and CIRCLE_NODE_TOTAL)\n\
         - Azure Pipelines: give the job `strategy: parallel: N` (sets SYSTEM_JOBPOSITIONINPHASE and SYSTEM_TOTALJOBSINPHASE)\n\
         - anything else: pass --instance and --total"
    )]
    NoInstance,
}

/// Works out the run id. In order:
///
/// 1. `--run-id`, if given, overrides every CI variable.
/// 2. In CI, the provider's run variables:
///    - GitHub Actions: `github-<GITHUB_RUN_ID>-<GITHUB_RUN_ATTEMPT>`; the
///      attempt is part of the id so a re-run never joins the previous
///      attempt's (dead) hub.
///    - Buildkite: `buildkite-<BUILDKITE_BUILD_ID>`. `BUILDKITE_RETRY_COUNT`
///      counts per job, not per build, so it is not used: a single retried
///      job joins the same build's record (and, if the run already ended,
///      finds it finished).
///    - GitLab: `gitlab-<CI_PIPELINE_ID>` (a retried job likewise joins its
///      pipeline's record).
///    - Azure Pipelines: `azure-<BUILD_BUILDID>[-<SYSTEM_STAGEATTEMPT>]`.
///    - CircleCI: `circleci-<CIRCLE_WORKFLOW_ID>` (a re-run gets a new
///      workflow id).
/// 3. Outside CI `--run-id` is required; `git_head` (the commit, when known)
///    is added as `<run-id>@<first 12 of head>` so the same id on another
///    commit is another run.
///
/// The id is then restricted to `[A-Za-z0-9._@-]` (anything else becomes
/// `-`) and to [`MAX_RUN_ID`] characters.
///
/// Every muster job of one CI run derives the same id from these
/// variables, so a run with two separate muster matrices must give each its
/// own `--run-id`.
pub fn resolve_run(
    env: Env<'_>,
    run_id_flag: Option<&str>,
    git_head: Option<&str>,
) -> Result<RunIdentity, IdentityError> {
    let flag = run_id_flag.map(str::trim).filter(|s| !s.is_empty());
    let (raw, source) = match (flag, ci_run(env)) {
        // In CI (even one whose variables are incomplete) the flag is the id.
        (Some(flag), Ok(Some(_)) | Err(_)) => (flag.to_owned(), "--run-id".to_owned()),
        (None, found) => found?.ok_or_else(|| IdentityError::NoRunId {
            looked_for: RUN_VARIABLES.join(", "),
        })?,
        (Some(flag), Ok(None)) => match git_head.map(str::trim).filter(|h| !h.is_empty()) {
            Some(head) => {
                let head: String = head.chars().take(12).collect();
                (
                    format!("{flag}@{head}"),
                    format!("--run-id {flag} at git HEAD {head}"),
                )
            }
            None => (flag.to_owned(), "--run-id (no git HEAD found)".to_owned()),
        },
    };
    let run_id = sanitize(&raw)?;
    let source = if run_id == raw {
        source
    } else {
        format!("{source}, with characters outside [A-Za-z0-9._@-] replaced by '-'")
    };
    let previous = match flag {
        Some(_) => None,
        None => previous_attempt(env),
    };
    Ok(RunIdentity {
        run_id,
        source,
        previous,
    })
}

/// The run id of the attempt before this one, for the CI systems that
/// number attempts in the run id.
fn previous_attempt(env: Env<'_>) -> Option<String> {
    let earlier = |attempt: String| {
        attempt
            .parse::<u32>()
            .ok()
            .filter(|&a| a > 1)
            .map(|a| a - 1)
    };
    if let Some(id) = get(env, "GITHUB_RUN_ID") {
        let attempt = earlier(get(env, "GITHUB_RUN_ATTEMPT")?)?;
        return sanitize(&format!("github-{id}-{attempt}")).ok();
    }
    if let Some(id) = get(env, "BUILD_BUILDID") {
        let attempt = earlier(get(env, "SYSTEM_STAGEATTEMPT")?)?;
        return sanitize(&format!("azure-{id}-{attempt}")).ok();
    }
    None
}

/// Works out this instance's index and total. In order: `--instance` and
/// `--total` (both or neither); `MUSTER_INSTANCE` and `MUSTER_TOTAL` (what a
/// GitHub workflow passes from `strategy.job-index` / `strategy.job-total`,
/// since GitHub has no such variables itself); Buildkite's
/// `BUILDKITE_PARALLEL_JOB` (0-based) and `BUILDKITE_PARALLEL_JOB_COUNT`;
/// GitLab's `CI_NODE_INDEX` (1-based, converted) and `CI_NODE_TOTAL` (a
/// GitLab job without `parallel:` has `CI_NODE_TOTAL=1` and no index: it is
/// instance 0 of 1); CircleCI's `CIRCLE_NODE_INDEX` (0-based) and
/// `CIRCLE_NODE_TOTAL`; Azure Pipelines' `SYSTEM_JOBPOSITIONINPHASE`
/// (1-based) and `SYSTEM_TOTALJOBSINPHASE`.
pub fn resolve_instance(
    env: Env<'_>,
    index_flag: Option<u32>,
    total_flag: Option<u32>,
) -> Result<Instance, IdentityError> {
    let (index, total, source) = match (index_flag, total_flag) {
        (Some(index), Some(total)) => (index, total, format!("--instance {index} --total {total}")),
        (Some(_), None) => return Err(half_flags("--instance", "--total")),
        (None, Some(_)) => return Err(half_flags("--total", "--instance")),
        (None, None) => instance_from_env(env)?,
    };
    if total == 0 {
        return Err(IdentityError::ZeroTotal { from: source });
    }
    if index >= total {
        return Err(IdentityError::IndexOutOfRange {
            index,
            total,
            from: source,
        });
    }
    Ok(Instance {
        index,
        total,
        source,
    })
}

/// Instance 0 is the master; every other instance is a worker.
pub fn role(instance: &Instance) -> Role {
    if instance.index == 0 {
        Role::Master
    } else {
        Role::Worker
    }
}

impl Instance {
    /// Says which role this instance takes and why, e.g. `instance 0 of 3
    /// (from BUILDKITE_PARALLEL_JOB=0 and BUILDKITE_PARALLEL_JOB_COUNT=3):
    /// master`.
    pub fn explain(&self) -> String {
        format!(
            "instance {} of {} (from {}): {}",
            self.index,
            self.total,
            self.source,
            role(self)
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Worker => "worker",
        })
    }
}

/// Every variable [`resolve_run`] looks at, for the error message.
const RUN_VARIABLES: [&str; 5] = [
    "GITHUB_RUN_ID (with GITHUB_RUN_ATTEMPT)",
    "BUILDKITE_BUILD_ID",
    "CI_PIPELINE_ID",
    "BUILD_BUILDID (with SYSTEM_STAGEATTEMPT)",
    "CIRCLE_WORKFLOW_ID",
];

/// A set, non-blank variable, trimmed.
fn get(env: Env<'_>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The run id and its source from the first CI provider whose variables are
/// set, or `None` outside CI.
fn ci_run(env: Env<'_>) -> Result<Option<(String, String)>, IdentityError> {
    if let Some(id) = get(env, "GITHUB_RUN_ID") {
        let Some(attempt) = get(env, "GITHUB_RUN_ATTEMPT") else {
            return Err(IdentityError::GithubAttemptMissing { run_id: id });
        };
        return Ok(Some((
            format!("github-{id}-{attempt}"),
            format!("GITHUB_RUN_ID={id} and GITHUB_RUN_ATTEMPT={attempt}"),
        )));
    }
    if let Some(id) = get(env, "BUILDKITE_BUILD_ID") {
        return Ok(Some((
            format!("buildkite-{id}"),
            format!("BUILDKITE_BUILD_ID={id}"),
        )));
    }
    if let Some(id) = get(env, "CI_PIPELINE_ID") {
        return Ok(Some((
            format!("gitlab-{id}"),
            format!("CI_PIPELINE_ID={id}"),
        )));
    }
    if let Some(id) = get(env, "BUILD_BUILDID") {
        return Ok(Some(match get(env, "SYSTEM_STAGEATTEMPT") {
            Some(attempt) => (
                format!("azure-{id}-{attempt}"),
                format!("BUILD_BUILDID={id} and SYSTEM_STAGEATTEMPT={attempt}"),
            ),
            None => (format!("azure-{id}"), format!("BUILD_BUILDID={id}")),
        }));
    }
    if let Some(id) = get(env, "CIRCLE_WORKFLOW_ID") {
        return Ok(Some((
            format!("circleci-{id}"),
            format!("CIRCLE_WORKFLOW_ID={id}"),
        )));
    }
    Ok(None)
}

/// Keeps `[A-Za-z0-9._@-]`, replaces anything else with `-`.
fn sanitize(raw: &str) -> Result<String, IdentityError> {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let len = clean.chars().count();
    if len > MAX_RUN_ID {
        return Err(IdentityError::RunIdTooLong { len });
    }
    Ok(clean)
}

fn half_flags(given: &str, missing: &str) -> IdentityError {
    IdentityError::HalfPair {
        given: given.to_owned(),
        missing: missing.to_owned(),
        example: "--instance 0 --total 3".to_owned(),
    }
}

/// Index (0-based), total and source from the first pair of variables set.
fn instance_from_env(env: Env<'_>) -> Result<(u32, u32, String), IdentityError> {
    for (index_var, total_var, base) in [
        ("MUSTER_INSTANCE", "MUSTER_TOTAL", 0),
        ("BUILDKITE_PARALLEL_JOB", "BUILDKITE_PARALLEL_JOB_COUNT", 0),
        ("CI_NODE_INDEX", "CI_NODE_TOTAL", 1),
        ("CIRCLE_NODE_INDEX", "CIRCLE_NODE_TOTAL", 0),
        ("SYSTEM_JOBPOSITIONINPHASE", "SYSTEM_TOTALJOBSINPHASE", 1),
    ] {
        match (get(env, index_var), get(env, total_var)) {
            (Some(index), Some(total)) => {
                let source = format!("{index_var}={index} and {total_var}={total}");
                let index = number(index_var, &index, base)?;
                let total = number(total_var, &total, 0)?;
                return Ok((index, total, source));
            }
            // GitLab sets CI_NODE_TOTAL=1 on a job without `parallel:`.
            (None, Some(total)) if index_var == "CI_NODE_INDEX" && total == "1" => {
                return Ok((
                    0,
                    1,
                    "CI_NODE_TOTAL=1, a GitLab job without parallel:".to_owned(),
                ))
            }
            (Some(_), None) => {
                return Err(IdentityError::HalfPair {
                    given: index_var.to_owned(),
                    missing: total_var.to_owned(),
                    example: format!("{index_var}=0 and {total_var}=3"),
                })
            }
            (None, Some(_)) => {
                return Err(IdentityError::HalfPair {
                    given: total_var.to_owned(),
                    missing: index_var.to_owned(),
                    example: format!("{index_var}={base} and {total_var}=3"),
                })
            }
            (None, None) => {}
        }
    }
    Err(IdentityError::NoInstance)
}

/// Parses a count or an index that starts at `base` (0 or 1) into a
/// 0-based number.
fn number(name: &str, value: &str, base: u32) -> Result<u32, IdentityError> {
    let expected = if base == 1 {
        "a whole number from 1 (this CI counts instances from 1)"
    } else {
        "a whole number from 0"
    };
    value
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_sub(base))
        .ok_or_else(|| IdentityError::BadNumber {
            name: name.to_owned(),
            value: value.to_owned(),
            expected,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(
        vars: &[(&str, &str)],
        flag: Option<&str>,
        head: Option<&str>,
    ) -> Result<RunIdentity, IdentityError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve_run(&|name| map.get(name).cloned(), flag, head)
    }

    fn instance(
        vars: &[(&str, &str)],
        index: Option<u32>,
        total: Option<u32>,
    ) -> Result<Instance, IdentityError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve_instance(&|name| map.get(name).cloned(), index, total)
    }

    /// Checks the run id and the source.
    fn check_run(
        vars: &[(&str, &str)],
        flag: Option<&str>,
        head: Option<&str>,
        id: &str,
        source: &str,
    ) {
        let got = run(vars, flag, head).unwrap();
        assert_eq!(got.run_id, id, "{vars:?} {flag:?} {head:?}");
        assert_eq!(got.source, source, "{vars:?} {flag:?} {head:?}");
    }

    #[test]
    fn github_attempts_are_different_runs() {
        let first = [("GITHUB_RUN_ID", "123"), ("GITHUB_RUN_ATTEMPT", "1")];
        let second = [("GITHUB_RUN_ID", "123"), ("GITHUB_RUN_ATTEMPT", "2")];
        check_run(
            &first,
            None,
            None,
            "github-123-1",
            "GITHUB_RUN_ID=123 and GITHUB_RUN_ATTEMPT=1",
        );
        check_run(
            &second,
            None,
            None,
            "github-123-2",
            "GITHUB_RUN_ID=123 and GITHUB_RUN_ATTEMPT=2",
        );
    }

    #[test]
    fn a_rerun_knows_the_attempt_before_it() {
        let previous = |vars: &[(&str, &str)], flag| run(vars, flag, None).unwrap().previous;
        let github = [("GITHUB_RUN_ID", "123"), ("GITHUB_RUN_ATTEMPT", "3")];
        assert_eq!(previous(&github, None).as_deref(), Some("github-123-2"));
        let first = [("GITHUB_RUN_ID", "123"), ("GITHUB_RUN_ATTEMPT", "1")];
        assert_eq!(previous(&first, None), None);
        let azure = [("BUILD_BUILDID", "88"), ("SYSTEM_STAGEATTEMPT", "2")];
        assert_eq!(previous(&azure, None).as_deref(), Some("azure-88-1"));
        // An explicit id says nothing about earlier attempts.
        assert_eq!(previous(&github, Some("mine")), None);
        assert_eq!(previous(&[("BUILDKITE_BUILD_ID", "b")], None), None);
    }

    #[test]
    fn github_without_attempt_is_refused() {
        let err = run(&[("GITHUB_RUN_ID", "123")], None, None).unwrap_err();
        assert_eq!(
            err,
            IdentityError::GithubAttemptMissing {
                run_id: "123".into()
            }
        );
        assert!(
            err.to_string()
                .ends_with("--run-id \"${{ github.run_id }}-${{ github.run_attempt }}\""),
            "{err}"
        );
        check_run(
            &[("GITHUB_RUN_ID", "123")],
            Some("123-9"),
            None,
            "123-9",
            "--run-id",
        );
    }

    #[test]
    fn other_ci_systems() {
        let build = "01890f2e-5b6a-4c3d-9e8f-0123456789ab";
        check_run(
            &[
                ("BUILDKITE_BUILD_ID", build),
                ("BUILDKITE_RETRY_COUNT", "2"),
            ],
            None,
            None,
            &format!("buildkite-{build}"),
            &format!("BUILDKITE_BUILD_ID={build}"),
        );
        check_run(
            &[("CI_PIPELINE_ID", "4711")],
            None,
            None,
            "gitlab-4711",
            "CI_PIPELINE_ID=4711",
        );
        check_run(
            &[("BUILD_BUILDID", "88")],
            None,
            None,
            "azure-88",
            "BUILD_BUILDID=88",
        );
        check_run(
            &[("BUILD_BUILDID", "88"), ("SYSTEM_STAGEATTEMPT", "2")],
            None,
            None,
            "azure-88-2",
            "BUILD_BUILDID=88 and SYSTEM_STAGEATTEMPT=2",
        );
        check_run(
            &[("CIRCLE_WORKFLOW_ID", "a1b2-c3")],
            None,
            None,
            "circleci-a1b2-c3",
            "CIRCLE_WORKFLOW_ID=a1b2-c3",
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        check_run(
            &[("GITHUB_RUN_ID", ""), ("CI_PIPELINE_ID", "9")],
            None,
            None,
            "gitlab-9",
            "CI_PIPELINE_ID=9",
        );
        assert!(matches!(
            run(&[("CI_PIPELINE_ID", " ")], None, None),
            Err(IdentityError::NoRunId { .. })
        ));
    }

    #[test]
    fn flag_overrides_ci_variables() {
        let ci = [("GITHUB_RUN_ID", "123"), ("GITHUB_RUN_ATTEMPT", "1")];
        check_run(
            &ci,
            Some("release-42"),
            Some("0123456789abcdef"),
            "release-42",
            "--run-id",
        );
    }

    #[test]
    fn outside_ci_the_flag_is_combined_with_git_head() {
        let head = "0123456789abcdef0123456789abcdef01234567";
        check_run(
            &[],
            Some("nightly"),
            Some(head),
            "nightly@0123456789ab",
            "--run-id nightly at git HEAD 0123456789ab",
        );
        check_run(
            &[],
            Some("nightly"),
            None,
            "nightly",
            "--run-id (no git HEAD found)",
        );
    }

    #[test]
    fn outside_ci_without_flag_says_what_to_do() {
        let err = run(&[], None, Some("0123456789abcdef"))
            .unwrap_err()
            .to_string();
        for name in [
            "GITHUB_RUN_ID",
            "GITHUB_RUN_ATTEMPT",
            "BUILDKITE_BUILD_ID",
            "CI_PIPELINE_ID",
            "BUILD_BUILDID",
            "SYSTEM_STAGEATTEMPT",
            "CIRCLE_WORKFLOW_ID",
            "--run-id <value shared by every instance",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn run_ids_are_sanitised() {
        let got = run(&[], Some("feature/x y:z"), None).unwrap();
        assert_eq!(got.run_id, "feature-x-y-z");
        assert!(got.source.contains("replaced by '-'"), "{}", got.source);
        check_run(
            &[("CI_PIPELINE_ID", "a.b_c@d-e")],
            None,
            None,
            "gitlab-a.b_c@d-e",
            "CI_PIPELINE_ID=a.b_c@d-e",
        );
        check_run(
            &[],
            Some("ünï"),
            None,
            "-n-",
            "--run-id (no git HEAD found), with characters outside [A-Za-z0-9._@-] replaced by '-'",
        );
    }

    #[test]
    fn run_ids_have_a_maximum_length() {
        assert!(run(&[], Some(&"a".repeat(200)), None).is_ok());
        let err = run(&[], Some(&"a".repeat(201)), None).unwrap_err();
        assert_eq!(err, IdentityError::RunIdTooLong { len: 201 });
        // The git HEAD counts too.
        assert!(run(&[], Some(&"a".repeat(190)), Some("0123456789abcdef")).is_err());
    }

    /// Checks index, total and the explanation.
    fn check_instance(
        vars: &[(&str, &str)],
        index: Option<u32>,
        total: Option<u32>,
        explained: &str,
    ) {
        let got = instance(vars, index, total).unwrap();
        assert_eq!(got.explain(), explained, "{vars:?} {index:?} {total:?}");
    }

    #[test]
    fn instance_from_each_source() {
        check_instance(
            &[],
            Some(1),
            Some(3),
            "instance 1 of 3 (from --instance 1 --total 3): worker",
        );
        check_instance(
            &[("MUSTER_INSTANCE", "0"), ("MUSTER_TOTAL", "5")],
            None,
            None,
            "instance 0 of 5 (from MUSTER_INSTANCE=0 and MUSTER_TOTAL=5): master",
        );
        check_instance(&[("BUILDKITE_PARALLEL_JOB", "0"), ("BUILDKITE_PARALLEL_JOB_COUNT", "3")], None, None,
            "instance 0 of 3 (from BUILDKITE_PARALLEL_JOB=0 and BUILDKITE_PARALLEL_JOB_COUNT=3): master");
        check_instance(&[("BUILDKITE_PARALLEL_JOB", "2"), ("BUILDKITE_PARALLEL_JOB_COUNT", "3")], None, None,
            "instance 2 of 3 (from BUILDKITE_PARALLEL_JOB=2 and BUILDKITE_PARALLEL_JOB_COUNT=3): worker");
        check_instance(
            &[("CIRCLE_NODE_INDEX", "1"), ("CIRCLE_NODE_TOTAL", "4")],
            None,
            None,
            "instance 1 of 4 (from CIRCLE_NODE_INDEX=1 and CIRCLE_NODE_TOTAL=4): worker",
        );
        check_instance(&[("SYSTEM_JOBPOSITIONINPHASE", "1"), ("SYSTEM_TOTALJOBSINPHASE", "2")], None, None,
            "instance 0 of 2 (from SYSTEM_JOBPOSITIONINPHASE=1 and SYSTEM_TOTALJOBSINPHASE=2): master");
    }

    #[test]
    fn gitlab_counts_from_one() {
        let first = instance(
            &[("CI_NODE_INDEX", "1"), ("CI_NODE_TOTAL", "3")],
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            (first.index, first.total, role(&first)),
            (0, 3, Role::Master)
        );
        let last = instance(
            &[("CI_NODE_INDEX", "3"), ("CI_NODE_TOTAL", "3")],
            None,
            None,
        )
        .unwrap();
        assert_eq!((last.index, role(&last)), (2, Role::Worker));
        let err = instance(
            &[("CI_NODE_INDEX", "0"), ("CI_NODE_TOTAL", "3")],
            None,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("counts instances from 1"), "{err}");
        check_instance(
            &[("CI_NODE_TOTAL", "1")],
            None,
            None,
            "instance 0 of 1 (from CI_NODE_TOTAL=1, a GitLab job without parallel:): master",
        );
    }

    #[test]
    fn flags_then_muster_variables_then_ci() {
        let all = [
            ("MUSTER_INSTANCE", "1"),
            ("MUSTER_TOTAL", "4"),
            ("BUILDKITE_PARALLEL_JOB", "0"),
            ("BUILDKITE_PARALLEL_JOB_COUNT", "2"),
        ];
        assert_eq!(instance(&all, Some(2), Some(3)).unwrap().index, 2);
        assert_eq!(instance(&all, None, None).unwrap().index, 1);
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        let err = instance(
            &[("MUSTER_INSTANCE", "one"), ("MUSTER_TOTAL", "3")],
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "MUSTER_INSTANCE=\"one\" is not a whole number from 0"
        );
        let err = instance(
            &[
                ("BUILDKITE_PARALLEL_JOB", "0"),
                ("BUILDKITE_PARALLEL_JOB_COUNT", "-2"),
            ],
            None,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("BUILDKITE_PARALLEL_JOB_COUNT=\"-2\""),
            "{err}"
        );
    }

    #[test]
    fn index_must_be_below_total() {
        let err = instance(&[], Some(3), Some(3)).unwrap_err();
        assert_eq!(err.to_string(), "instance 3 does not exist in a run of 3 instance(s) (from --instance 3 --total 3); instances are numbered 0 to 2");
        let err = instance(
            &[("MUSTER_INSTANCE", "0"), ("MUSTER_TOTAL", "0")],
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::ZeroTotal { .. }), "{err}");
    }

    #[test]
    fn one_flag_without_the_other() {
        let err = instance(&[], Some(0), None).unwrap_err().to_string();
        assert!(
            err.starts_with("--instance is set without --total"),
            "{err}"
        );
        let err = instance(&[], None, Some(3)).unwrap_err().to_string();
        assert!(
            err.starts_with("--total is set without --instance"),
            "{err}"
        );
        let err = instance(&[("MUSTER_TOTAL", "3")], None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("MUSTER_TOTAL is set without MUSTER_INSTANCE"),
            "{err}"
        );
    }

    #[test]
    fn no_instance_says_what_to_set_per_ci_system() {
        let err = instance(&[("GITHUB_RUN_ID", "1")], None, None)
            .unwrap_err()
            .to_string();
        for needle in [
            "--instance",
            "--total",
            "MUSTER_INSTANCE",
            "MUSTER_INSTANCE: ${{ strategy.job-index }}",
            "MUSTER_TOTAL: ${{ strategy.job-total }}",
            "BUILDKITE_PARALLEL_JOB",
            "parallelism",
            "CI_NODE_INDEX",
            "parallel: N",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }
}
