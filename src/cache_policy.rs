//! Whether this run may write to the result cache. Reading is always
//! safe; writing is not when the code comes from someone the cache's
//! readers do not trust: a pull request from a fork could store a
//! poisoned entry that the main branch would then be served. So in CI,
//! writes are off for pull requests from forks unless `--cache-write=true`
//! says otherwise. Pure: the environment (and GitHub's event file) come in
//! as lookups.

/// Whether to write, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePolicy {
    pub write: bool,
    pub why: String,
}

/// Decides from `--cache-write` (when given) and the CI's variables.
/// `read_file` reads GitHub's event payload (`GITHUB_EVENT_PATH`).
pub fn write_policy(
    flag: Option<bool>,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Option<String>,
) -> WritePolicy {
    if let Some(write) = flag {
        return WritePolicy {
            write,
            why: format!("--cache-write={write}"),
        };
    }
    match fork(env, read_file) {
        Some(from) => WritePolicy {
            write: false,
            why: format!(
                "a pull request from a fork ({from}): its entries could poison the cache for \
                 the main branch (--cache-write=true overrides)"
            ),
        },
        None => WritePolicy {
            write: true,
            why: "writes allowed".into(),
        },
    }
}

/// The fork a pull request comes from, when the CI says it is one.
fn fork(
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    // GitHub Actions: the event payload names the head repository.
    if let Some(event) = get("GITHUB_EVENT_NAME") {
        if !event.starts_with("pull_request") {
            return None;
        }
        let base = get("GITHUB_REPOSITORY")?;
        let payload = read_file(&get("GITHUB_EVENT_PATH")?);
        let head = payload
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|json| {
                json["pull_request"]["head"]["repo"]["full_name"]
                    .as_str()
                    .map(str::to_owned)
            });
        return match head {
            Some(head) if head != base => Some(head),
            Some(_) => None,
            // A pull request whose head cannot be told: not trusted.
            None => Some("an unknown repository".into()),
        };
    }
    // GitLab: a merge request from another project.
    if let Some(source) = get("CI_MERGE_REQUEST_SOURCE_PROJECT_ID") {
        let target = get("CI_MERGE_REQUEST_PROJECT_ID").or_else(|| get("CI_PROJECT_ID"));
        return (target.as_deref() != Some(source.as_str()))
            .then(|| get("CI_MERGE_REQUEST_SOURCE_PROJECT_PATH").unwrap_or(source));
    }
    // Buildkite: a pull request whose repository is not the pipeline's.
    if let Some(repo) = get("BUILDKITE_PULL_REQUEST_REPO") {
        let own = get("BUILDKITE_REPO");
        let is_pr = get("BUILDKITE_PULL_REQUEST").is_some_and(|v| v != "false");
        return (is_pr && own.as_deref() != Some(repo.as_str())).then_some(repo);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn policy(vars: &[(&str, &str)], event: Option<&str>) -> WritePolicy {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let event = event.map(str::to_owned);
        write_policy(None, &|name| map.get(name).cloned(), &|_| event.clone())
    }

    fn github_pr(head: &str) -> String {
        format!(r#"{{"pull_request": {{"head": {{"repo": {{"full_name": "{head}"}}}}}}}}"#)
    }

    #[test]
    fn a_pull_request_from_a_fork_does_not_write() {
        let vars = [
            ("GITHUB_EVENT_NAME", "pull_request"),
            ("GITHUB_REPOSITORY", "acme/app"),
            ("GITHUB_EVENT_PATH", "/event.json"),
        ];
        let from_fork = policy(&vars, Some(&github_pr("mallory/app")));
        assert!(!from_fork.write);
        assert!(from_fork.why.contains("mallory/app"), "{}", from_fork.why);
        assert!(policy(&vars, Some(&github_pr("acme/app"))).write);
        assert!(
            !policy(&vars, None).write,
            "an unreadable event is not trusted"
        );
        let push = [
            ("GITHUB_EVENT_NAME", "push"),
            ("GITHUB_REPOSITORY", "acme/app"),
        ];
        assert!(policy(&push, None).write);
    }

    #[test]
    fn gitlab_and_buildkite_forks_do_not_write() {
        let gitlab = [
            ("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "9"),
            ("CI_MERGE_REQUEST_PROJECT_ID", "7"),
        ];
        assert!(!policy(&gitlab, None).write);
        let same = [
            ("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "7"),
            ("CI_MERGE_REQUEST_PROJECT_ID", "7"),
        ];
        assert!(policy(&same, None).write);
        let buildkite = [
            ("BUILDKITE_PULL_REQUEST", "12"),
            ("BUILDKITE_PULL_REQUEST_REPO", "git://fork/app.git"),
            ("BUILDKITE_REPO", "git://acme/app.git"),
        ];
        assert!(!policy(&buildkite, None).write);
    }

    #[test]
    fn the_flag_wins() {
        let map: HashMap<String, String> = HashMap::new();
        let off = write_policy(Some(false), &|n| map.get(n).cloned(), &|_| None);
        assert!(!off.write);
        let vars = [
            ("GITHUB_EVENT_NAME", "pull_request"),
            ("GITHUB_REPOSITORY", "acme/app"),
        ];
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let on = write_policy(Some(true), &|n| map.get(n).cloned(), &|_| None);
        assert!(on.write);
    }
}
