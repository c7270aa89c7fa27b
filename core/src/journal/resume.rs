//! What a resumed run keeps from the journal of an earlier one, and what
//! it runs again and why. A module is kept only when it succeeded with
//! the definition it has now, its outputs are all in the journal, and
//! nothing it needs runs again; a kept module whose artifacts are gone
//! runs again when a module that runs consumes them. The decision is a
//! value, so the master can print it before it starts anything.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::journal::digest::ModuleDigest;
use crate::journal::history::{History, ModuleStatus};
use crate::journal::record::{GateRecord, StateName};
use crate::plan::{ModuleIndex, Plan};
use crate::state::Ended;
use crate::wire::types::Artifact;

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumption {
    /// The run the kept modules succeeded in.
    pub from_run: String,
    /// Modules that are not run again, with their result (worker `None`).
    pub kept: Vec<(ModuleIndex, Ended)>,
    /// Per module: the attempt it starts at: the journal's last + 1 when
    /// one started or ended, the one it was ready for, else 1.
    pub first_attempt: Vec<u32>,
    /// Modules that had a result or were in flight and run again, and why.
    pub rerun: Vec<Rerun>,
    /// Approvals the earlier run journaled, by module id: a gate that asks
    /// the same question again (same definition, same needs' outputs)
    /// takes it instead of asking twice.
    pub approvals: BTreeMap<String, GateRecord>,
    /// Reruns that were in flight on a named worker and whose needs are all
    /// kept: a master taking a live run over may adopt them from a worker
    /// that comes back holding that attempt, instead of running them again.
    pub in_flight: Vec<InFlight>,
}

/// An attempt a worker was running when the earlier master stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub module: ModuleIndex,
    pub attempt: u32,
    /// The worker's name as the journal has it.
    pub worker: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerun {
    pub module: ModuleIndex,
    pub why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// It was running (or assigned) when the master stopped.
    InFlight { attempt: u32 },
    /// It ended without succeeding.
    NotSucceeded(StateName),
    /// Its definition changed: these parts.
    Changed(Vec<String>),
    /// A need runs again: the first of its needs that does.
    Downstream { of: String },
    /// A module that runs again consumes its artifacts, and one of them
    /// (`artifact`, its path) is gone: the store that held it is not here.
    ArtifactsGone { consumer: String, artifact: String },
    /// Its outputs held a secret, which the journal does not keep.
    OutputsMasked,
}

/// Decides what `plan` keeps from `history`; `digests` are the plan's,
/// `available` says whether an artifact's blob can still be had.
pub fn decide(
    history: &History,
    plan: &Plan,
    digests: &[ModuleDigest],
    available: &dyn Fn(&Artifact) -> bool,
) -> Resumption {
    let statuses: Vec<Option<&ModuleStatus>> = plan
        .modules
        .iter()
        .map(|module| history.module(&module.id))
        .collect();
    let own: Vec<Fate> = statuses
        .iter()
        .enumerate()
        .map(|(i, status)| own_fate(history, *status, digests.get(i)))
        .collect();
    let mut runs: Vec<bool> = own.iter().map(|f| !matches!(f, Fate::Keep(_))).collect();
    // Why a module that could be kept runs after all.
    let mut forced: Vec<Option<Why>> = vec![None; plan.len()];
    loop {
        run_downstream(plan, &mut runs, &mut forced);
        let gone = artifacts_gone(plan, &own, &runs, available);
        if gone.is_empty() {
            break;
        }
        for (producer, consumer, artifact) in gone {
            if !runs[producer] {
                runs[producer] = true;
                forced[producer] = Some(Why::ArtifactsGone {
                    consumer: plan.modules[consumer].id.clone(),
                    artifact,
                });
            }
        }
    }
    let mut kept = Vec::new();
    let mut rerun = Vec::new();
    for (module, (fate, forced)) in own.into_iter().zip(forced).enumerate() {
        match (fate, forced) {
            (Fate::Keep(status), None) if !runs[module] => kept.push((module, kept_result(status))),
            (Fate::Runs(Some(why)), _) | (Fate::Keep(_), Some(why)) => {
                rerun.push(Rerun { module, why })
            }
            _ => {}
        }
    }
    let kept_set: Vec<bool> = {
        let mut set = vec![false; plan.len()];
        for (module, _) in &kept {
            set[*module] = true;
        }
        set
    };
    let in_flight = rerun
        .iter()
        .filter_map(|r| match r.why {
            Why::InFlight { attempt } => Some((r.module, attempt)),
            _ => None,
        })
        .filter(|&(module, _)| plan.modules[module].needs.iter().all(|&n| kept_set[n]))
        .filter_map(|(module, attempt)| {
            let worker = statuses[module]?.worker.clone()?;
            Some(InFlight {
                module,
                attempt,
                worker,
            })
        })
        .collect();
    Resumption {
        in_flight,
        from_run: history.run_id.clone(),
        kept,
        first_attempt: statuses
            .iter()
            .map(|s| s.map_or(1, first_attempt))
            .collect(),
        rerun,
        approvals: history
            .gates
            .iter()
            .filter(|(_, gate)| gate.decision == "approved")
            .map(|(module, gate)| (module.clone(), gate.clone()))
            .collect(),
    }
}

impl Resumption {
    /// One line: "kept 37 succeeded modules from run X; re-running build
    /// (its command changed) and 4 modules downstream".
    pub fn summary(&self, plan: &Plan) -> String {
        const NAMED: usize = 5;
        let mut line = if self.kept.is_empty() {
            format!("kept nothing from run {}", self.from_run)
        } else {
            format!(
                "kept {} from run {}",
                count(self.kept.len(), "succeeded module", "succeeded modules"),
                self.from_run
            )
        };
        let (downstream, own): (Vec<&Rerun>, Vec<&Rerun>) = self
            .rerun
            .iter()
            .partition(|r| matches!(r.why, Why::Downstream { .. }));
        let mut items: Vec<String> = own
            .iter()
            .take(NAMED)
            .map(|r| format!("{} ({})", id_of(plan, r.module), r.why))
            .collect();
        if own.len() > NAMED {
            items.push(format!("{} more", own.len() - NAMED));
        }
        if !downstream.is_empty() {
            items.push(format!(
                "{} downstream",
                count(downstream.len(), "module", "modules")
            ));
        }
        if !items.is_empty() {
            line.push_str("; re-running ");
            line.push_str(&join_and(&items));
        }
        let not_run = plan
            .len()
            .saturating_sub(self.kept.len() + self.rerun.len());
        if not_run > 0 {
            line.push_str(&format!(
                "; {} not run yet",
                count(not_run, "module has", "modules have")
            ));
        }
        if items.is_empty() && not_run == 0 {
            line.push_str("; nothing runs again");
        }
        line
    }

    /// One line per module that runs again, with why, for a log.
    pub fn lines(&self, plan: &Plan) -> Vec<String> {
        self.rerun
            .iter()
            .map(|r| format!("re-running {}: {}", id_of(plan, r.module), r.why))
            .collect()
    }
}

/// The reason as a clause: "its command changed".
impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::InFlight { attempt } => write!(f, "it was running (attempt {attempt})"),
            Why::NotSucceeded(StateName::Failed) => f.write_str("it failed"),
            Why::NotSucceeded(StateName::TimedOut) => f.write_str("it timed out"),
            Why::NotSucceeded(state) => write!(f, "it was {}", state.word()),
            Why::Changed(parts) if parts.is_empty() => f.write_str("its definition changed"),
            Why::Changed(parts) => write!(f, "its {} changed", join_and(parts)),
            Why::Downstream { of } => write!(f, "it needs {of}, which runs again"),
            Why::ArtifactsGone { consumer, artifact } => write!(
                f,
                "its artifact {artifact} is gone (no copy is in this master's store) and {consumer} needs it"
            ),
            Why::OutputsMasked => f.write_str("its outputs held a secret"),
        }
    }
}

/// What a module's own history says, before its needs are looked at.
enum Fate<'h> {
    /// It succeeded with its current definition: kept unless a need runs
    /// again or a consumer needs artifacts that are gone.
    Keep(&'h ModuleStatus),
    /// It runs: for this reason, or none worth telling (it is new, or
    /// had not started).
    Runs(Option<Why>),
}

fn own_fate<'h>(
    history: &History,
    status: Option<&'h ModuleStatus>,
    digest: Option<&ModuleDigest>,
) -> Fate<'h> {
    let Some(status) = status else {
        return Fate::Runs(None);
    };
    let why = match status.state {
        StateName::Pending | StateName::Ready => return Fate::Runs(None),
        StateName::Assigned | StateName::Running => Why::InFlight {
            attempt: status.attempt.unwrap_or(1),
        },
        StateName::Succeeded => match digest {
            Some(now) if status.succeeded_with.as_deref() == Some(now.digest.as_str()) => {
                if !status.masked {
                    return Fate::Keep(status);
                }
                Why::OutputsMasked
            }
            now => Why::Changed(changed_parts(history, status, now)),
        },
        ended => Why::NotSucceeded(ended),
    };
    Fate::Runs(Some(why))
}

/// The parts of `status`'s definition that differ from `now`; empty when
/// the journal does not say what it succeeded with.
fn changed_parts(
    history: &History,
    status: &ModuleStatus,
    now: Option<&ModuleDigest>,
) -> Vec<String> {
    match (now, history.succeeded_definition(status)) {
        (Some(now), Some(earlier)) => now
            .changed_parts(&earlier)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Marks every module with a need that runs as running too, once; the
/// plan is in topological order, so one pass reaches every descendant.
fn run_downstream(plan: &Plan, runs: &mut [bool], forced: &mut [Option<Why>]) {
    for (module, planned) in plan.modules.iter().enumerate() {
        if runs[module] {
            continue;
        }
        if let Some(&need) = planned.needs.iter().find(|&&need| runs[need]) {
            runs[module] = true;
            forced[module] = Some(Why::Downstream {
                of: plan.modules[need].id.clone(),
            });
        }
    }
}

/// Kept modules that a running module consumes from and whose matching
/// artifacts are not all available, as (producer, consumer, the first
/// missing artifact's path).
fn artifacts_gone(
    plan: &Plan,
    own: &[Fate],
    runs: &[bool],
    available: &dyn Fn(&Artifact) -> bool,
) -> Vec<(ModuleIndex, ModuleIndex, String)> {
    let mut gone = Vec::new();
    for (consumer, planned) in plan.modules.iter().enumerate() {
        if !runs[consumer] {
            continue;
        }
        for consume in &planned.consumes {
            let Fate::Keep(producer) = own[consume.from] else {
                continue;
            };
            if runs[consume.from] {
                continue;
            }
            let missing = producer
                .artifacts
                .iter()
                .filter(|a| consume.glob.as_ref().is_none_or(|g| g.is_match(&a.path)))
                .find(|a| !available(a));
            if let Some(missing) = missing {
                gone.push((consume.from, consumer, missing.path.clone()));
            }
        }
    }
    gone
}

/// A kept module's result as the run starts it: from the journal, with
/// no worker (none of this master's workers ran it).
fn kept_result(status: &ModuleStatus) -> Ended {
    Ended {
        attempt: status.attempt.unwrap_or(1),
        worker: None,
        duration: status.duration_ms.map(Duration::from_millis),
        exit_code: status.exit_code,
        reason: None,
        outputs: status.outputs.clone(),
        artifacts: status.artifacts.clone(),
    }
}

/// The attempt a module runs first as when resumed: the one after the
/// journal's last that started or ended, so a late report from the old
/// run is stale. A ready module had not started its attempt: it keeps
/// that number.
fn first_attempt(status: &ModuleStatus) -> u32 {
    let attempt = match (status.state, status.attempt) {
        (StateName::Pending, _) | (_, None) => 1,
        (StateName::Ready, Some(attempt)) => attempt,
        (_, Some(attempt)) => attempt.saturating_add(1),
    };
    attempt.max(1)
}

fn id_of(plan: &Plan, module: ModuleIndex) -> &str {
    plan.modules.get(module).map_or("?", |m| m.id.as_str())
}

/// "1 module", "3 modules".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "a", "a and b", "a, b and c".
fn join_and<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [only] => only.as_ref().to_owned(),
        [rest @ .., last] => {
            let rest: Vec<&str> = rest.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", rest.join(", "), last.as_ref())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::journal::digest::module_digests;
    use crate::journal::record::{Entry, ModuleRecord, Record, RunStart, Settings};
    use crate::pipeline::parse_pipeline;

    /// build → test (consumes build's bin/*), docs → package (consumes
    /// all of docs), package also needs test; lint stands alone.
    const PIPELINE: &str = r#"
[modules.build]
run = "make"
[modules.docs]
run = "doc"
[modules.test]
run = "test"
needs = ["build"]
consumes = ["build:bin/*"]
[modules.package]
run = "pkg"
needs = ["test", "docs"]
consumes = ["docs"]
[modules.lint]
run = "lint"
"#;
    const BUILD: usize = 0;
    const DOCS: usize = 1;
    const TEST: usize = 2;
    const PACKAGE: usize = 3;
    const LINT: usize = 4;

    fn plan(text: &str) -> Plan {
        parse_pipeline("t.toml", text).unwrap()
    }

    fn artifact(path: &str) -> Artifact {
        Artifact {
            path: path.to_owned(),
            size: 1,
            sha256: format!("{:0>64}", path.len()),
            mode: 0o644,
        }
    }

    fn ended(module: &str, state: StateName, attempt: u32) -> ModuleRecord {
        ModuleRecord {
            module: module.to_owned(),
            state,
            attempt: Some(attempt),
            exit_code: Some(i32::from(state != StateName::Succeeded)),
            duration_ms: Some(2000),
            ..ModuleRecord::default()
        }
    }

    fn succeeded(module: &str) -> ModuleRecord {
        ended(module, StateName::Succeeded, 1)
    }

    /// The journal of run r1 of `text`, with these module records.
    fn journal(text: &str, changes: Vec<ModuleRecord>) -> History {
        let digests = module_digests(&plan(text));
        let start = Entry::RunStarted(RunStart {
            run_id: "r1".to_owned(),
            pipeline: "t.toml".to_owned(),
            muster_version: "0.1.0".to_owned(),
            stint: 1,
            epoch: 1,
            resumed_from: None,
            took_over: None,
            plan_digest: "p".to_owned(),
            modules: digests,
            settings: Settings::default(),
        });
        let entries = std::iter::once(start).chain(changes.into_iter().map(Entry::Module));
        let records: Vec<Record> = entries
            .enumerate()
            .map(|(i, entry)| Record {
                v: 1,
                seq: i as u64 + 1,
                at: 1000 + i as u64,
                entry,
            })
            .collect();
        History::replay(&records).unwrap()
    }

    /// Every module of PIPELINE succeeded, build with bin/app and
    /// notes.txt, docs with site/index.html.
    fn all_succeeded() -> Vec<ModuleRecord> {
        let mut build = succeeded("build");
        build.artifacts = vec![artifact("bin/app"), artifact("notes.txt")];
        build.outputs = BTreeMap::from([("version".to_owned(), "1.2".to_owned())]);
        let mut docs = succeeded("docs");
        docs.artifacts = vec![artifact("site/index.html")];
        vec![
            build,
            docs,
            succeeded("test"),
            succeeded("package"),
            succeeded("lint"),
        ]
    }

    fn resume_with(history: &History, text: &str, gone: &[&str]) -> (Resumption, Plan) {
        let plan = plan(text);
        let available = |a: &Artifact| !gone.contains(&a.path.as_str());
        let resumption = decide(history, &plan, &module_digests(&plan), &available);
        (resumption, plan)
    }

    fn kept(resumption: &Resumption) -> Vec<ModuleIndex> {
        resumption.kept.iter().map(|(m, _)| *m).collect()
    }

    fn reruns(resumption: &Resumption) -> Vec<(ModuleIndex, Why)> {
        resumption
            .rerun
            .iter()
            .map(|r| (r.module, r.why.clone()))
            .collect()
    }

    fn downstream(of: &str) -> Why {
        Why::Downstream { of: of.to_owned() }
    }

    #[test]
    fn an_unchanged_succeeded_run_is_kept_whole_with_its_results() {
        let history = journal(PIPELINE, all_succeeded());
        let (resumption, plan) = resume_with(&history, PIPELINE, &[]);
        assert_eq!(kept(&resumption), [BUILD, DOCS, TEST, PACKAGE, LINT]);
        assert!(resumption.rerun.is_empty());
        assert_eq!(resumption.from_run, "r1");
        assert_eq!(resumption.first_attempt, [2; 5]);
        let (_, build) = &resumption.kept[0];
        assert_eq!(build.attempt, 1);
        assert_eq!(build.exit_code, Some(0));
        assert_eq!(build.duration, Some(Duration::from_secs(2)));
        assert_eq!(build.outputs["version"], "1.2");
        assert_eq!(build.artifacts.len(), 2);
        assert_eq!((build.worker, &build.reason), (None, &None));
        assert_eq!(
            resumption.summary(&plan),
            "kept 5 succeeded modules from run r1; nothing runs again"
        );
    }

    #[test]
    fn a_changed_command_runs_the_module_and_everything_downstream() {
        let history = journal(PIPELINE, all_succeeded());
        let changed = PIPELINE.replace("run = \"make\"", "run = \"make all\"");
        let (resumption, plan) = resume_with(&history, &changed, &[]);
        assert_eq!(kept(&resumption), [DOCS, LINT]);
        assert_eq!(
            reruns(&resumption),
            [
                (BUILD, Why::Changed(vec!["command".to_owned()])),
                (TEST, downstream("build")),
                (PACKAGE, downstream("test")),
            ]
        );
        assert_eq!(
            resumption.summary(&plan),
            "kept 2 succeeded modules from run r1; \
             re-running build (its command changed) and 2 modules downstream"
        );
        assert_eq!(
            resumption.lines(&plan),
            [
                "re-running build: its command changed",
                "re-running test: it needs build, which runs again",
                "re-running package: it needs test, which runs again",
            ]
        );
        let both = changed.replace("run = \"lint\"", "run = \"lint\"\nenv = { STRICT = \"1\" }");
        let both = both.replace(
            "run = \"make all\"",
            "run = \"make all\"\nenv = { CC = \"cc\" }",
        );
        let (resumption, _) = resume_with(&history, &both, &[]);
        assert_eq!(
            resumption.rerun[0].why.to_string(),
            "its command and env changed"
        );
        assert_eq!(resumption.rerun[3].why.to_string(), "its env changed");
    }

    #[test]
    fn modules_in_flight_or_not_succeeded_run_again_at_the_next_attempt() {
        let mut changes = all_succeeded();
        changes[BUILD] = ModuleRecord {
            module: "build".to_owned(),
            state: StateName::Running,
            attempt: Some(2),
            worker: Some("w1".to_owned()),
            ..ModuleRecord::default()
        };
        changes[DOCS] = ended("docs", StateName::Failed, 3);
        changes[TEST] = ModuleRecord {
            module: "test".to_owned(),
            state: StateName::Skipped,
            reason: Some("need 'build' failed".to_owned()),
            ..ModuleRecord::default()
        };
        changes[PACKAGE] = ended("package", StateName::Cancelled, 0);
        changes[LINT] = ended("lint", StateName::TimedOut, 1);
        let history = journal(PIPELINE, changes);
        let (resumption, plan) = resume_with(&history, PIPELINE, &[]);
        assert!(resumption.kept.is_empty());
        assert_eq!(
            reruns(&resumption),
            [
                (BUILD, Why::InFlight { attempt: 2 }),
                (DOCS, Why::NotSucceeded(StateName::Failed)),
                (TEST, Why::NotSucceeded(StateName::Skipped)),
                (PACKAGE, Why::NotSucceeded(StateName::Cancelled)),
                (LINT, Why::NotSucceeded(StateName::TimedOut)),
            ]
        );
        assert_eq!(resumption.first_attempt, [3, 4, 1, 1, 2]);
        // Build needs nothing, so a worker that still runs it may keep it.
        assert_eq!(
            resumption.in_flight,
            [InFlight {
                module: BUILD,
                attempt: 2,
                worker: "w1".to_owned()
            }]
        );
        assert_eq!(
            resumption.summary(&plan),
            "kept nothing from run r1; re-running build (it was running (attempt 2)), \
             docs (it failed), test (it was skipped), package (it was cancelled) \
             and lint (it timed out)"
        );
    }

    #[test]
    fn pending_and_ready_modules_run_without_a_reason_and_keep_their_attempt() {
        let mut changes = all_succeeded();
        changes.truncate(2);
        changes.push(ModuleRecord {
            module: "test".to_owned(),
            state: StateName::Ready,
            attempt: Some(2),
            note: Some("attempt 1 failed; retrying".to_owned()),
            ..ModuleRecord::default()
        });
        let history = journal(PIPELINE, changes);
        let (resumption, plan) = resume_with(&history, PIPELINE, &[]);
        assert_eq!(kept(&resumption), [BUILD, DOCS]);
        assert!(resumption.rerun.is_empty());
        assert_eq!(resumption.first_attempt, [2, 2, 2, 1, 1]);
        assert_eq!(
            resumption.summary(&plan),
            "kept 2 succeeded modules from run r1; 3 modules have not run yet"
        );
    }

    #[test]
    fn a_new_module_runs_and_a_removed_one_is_forgotten() {
        let history = journal(PIPELINE, all_succeeded());
        let text = PIPELINE.replace(
            "[modules.lint]\nrun = \"lint\"",
            "[modules.fmt]\nrun = \"fmt\"",
        );
        let (resumption, plan) = resume_with(&history, &text, &[]);
        assert_eq!(kept(&resumption), [BUILD, DOCS, TEST, PACKAGE]);
        assert!(resumption.rerun.is_empty());
        assert_eq!(resumption.first_attempt[4], 1);
        assert_eq!(
            resumption.summary(&plan),
            "kept 4 succeeded modules from run r1; 1 module has not run yet"
        );
    }

    #[test]
    fn masked_outputs_run_the_module_and_its_dependents_again() {
        let mut changes = all_succeeded();
        changes[BUILD].masked = true;
        let history = journal(PIPELINE, changes);
        let (resumption, plan) = resume_with(&history, PIPELINE, &[]);
        assert_eq!(kept(&resumption), [DOCS, LINT]);
        assert_eq!(
            reruns(&resumption),
            [
                (BUILD, Why::OutputsMasked),
                (TEST, downstream("build")),
                (PACKAGE, downstream("test")),
            ]
        );
        assert!(resumption
            .summary(&plan)
            .contains("re-running build (its outputs held a secret) and 2 modules downstream"));
    }

    #[test]
    fn gone_artifacts_matter_only_when_a_running_module_consumes_them() {
        // Nothing runs again: nobody fetches build's artifacts.
        let history = journal(PIPELINE, all_succeeded());
        let (resumption, _) = resume_with(&history, PIPELINE, &["bin/app", "site/index.html"]);
        assert_eq!(resumption.kept.len(), 5);

        // test runs again and consumes build:bin/*; bin/app is gone.
        let mut changes = all_succeeded();
        changes[TEST] = ended("test", StateName::Failed, 1);
        let history = journal(PIPELINE, changes);
        let (resumption, plan) = resume_with(&history, PIPELINE, &["bin/app"]);
        assert_eq!(kept(&resumption), [DOCS, LINT]);
        assert_eq!(
            reruns(&resumption),
            [
                (
                    BUILD,
                    Why::ArtifactsGone {
                        consumer: "test".to_owned(),
                        artifact: "bin/app".to_owned()
                    }
                ),
                (TEST, Why::NotSucceeded(StateName::Failed)),
                (PACKAGE, downstream("test")),
            ]
        );
        assert_eq!(
            resumption.lines(&plan)[0],
            "re-running build: its artifact bin/app is gone (no copy is in this master's store) and test needs it"
        );

        // notes.txt does not match bin/*: build is kept without it.
        let (resumption, _) = resume_with(&history, PIPELINE, &["notes.txt"]);
        assert_eq!(kept(&resumption), [BUILD, DOCS, LINT]);

        // package consumes every artifact of docs.
        let (resumption, _) = resume_with(&history, PIPELINE, &["site/index.html"]);
        assert_eq!(kept(&resumption), [BUILD, LINT]);
        assert_eq!(
            resumption.rerun[0],
            Rerun {
                module: DOCS,
                why: Why::ArtifactsGone {
                    consumer: "package".to_owned(),
                    artifact: "site/index.html".to_owned()
                }
            }
        );
    }

    #[test]
    fn a_module_run_for_its_artifacts_runs_its_downstream_too() {
        // a → b → c, and d consumes a's artifacts; d failed, a's artifact
        // is gone: a runs again, so b and c run after it.
        let text = r#"
[modules.a]
run = "a"
[modules.b]
run = "b"
needs = ["a"]
[modules.c]
run = "c"
needs = ["b"]
[modules.d]
run = "d"
needs = ["a"]
consumes = ["a"]
"#;
        let mut a = succeeded("a");
        a.artifacts = vec![artifact("out.tar")];
        let changes = vec![
            a,
            succeeded("b"),
            succeeded("c"),
            ended("d", StateName::Failed, 2),
        ];
        let history = journal(text, changes);
        let (resumption, plan) = resume_with(&history, text, &["out.tar"]);
        assert!(resumption.kept.is_empty());
        assert_eq!(
            reruns(&resumption),
            [
                (
                    0,
                    Why::ArtifactsGone {
                        consumer: "d".to_owned(),
                        artifact: "out.tar".to_owned()
                    }
                ),
                (1, downstream("a")),
                (2, downstream("b")),
                (3, Why::NotSucceeded(StateName::Failed)),
            ]
        );
        assert_eq!(resumption.first_attempt, [2, 2, 2, 3]);
        assert_eq!(
            resumption.summary(&plan),
            "kept nothing from run r1; re-running a (its artifact out.tar is gone (no copy is in \
             this master's store) and d needs it), \
             d (it failed) and 2 modules downstream"
        );
    }

    #[test]
    fn the_summary_names_five_modules_then_counts() {
        let text: String = (1..=8)
            .map(|i| format!("[modules.m{i}]\nrun = \"x\"\n"))
            .collect();
        let changes = (1..=8)
            .map(|i| ended(&format!("m{i}"), StateName::Failed, 1))
            .collect();
        let history = journal(&text, changes);
        let (resumption, plan) = resume_with(&history, &text, &[]);
        assert_eq!(
            resumption.summary(&plan),
            "kept nothing from run r1; re-running m1 (it failed), m2 (it failed), \
             m3 (it failed), m4 (it failed), m5 (it failed) and 3 more"
        );
        assert_eq!(resumption.lines(&plan).len(), 8);
    }

    #[test]
    fn every_reason_reads_as_a_clause() {
        let check = |why: Why, expected: &str| assert_eq!(why.to_string(), expected);
        check(Why::Changed(vec![]), "its definition changed");
        check(
            Why::Changed(vec!["command".into(), "env".into(), "timeout".into()]),
            "its command, env and timeout changed",
        );
        check(Why::InFlight { attempt: 1 }, "it was running (attempt 1)");
        check(Why::NotSucceeded(StateName::Cancelled), "it was cancelled");
        check(downstream("build"), "it needs build, which runs again");
    }

    #[test]
    fn a_resumption_starts_a_run_where_the_journal_left_off() {
        let mut changes = all_succeeded();
        changes[TEST] = ended("test", StateName::Failed, 2);
        let history = journal(PIPELINE, changes);
        let (resumption, plan) = resume_with(&history, PIPELINE, &[]);
        let (run, changes) = crate::run::Run::resumed(
            plan,
            crate::run::Limits::default(),
            resumption.kept.clone(),
            resumption.first_attempt.clone(),
            "kept from run r1",
        );
        assert_eq!(changes.len(), 4, "three kept, then test ready: {changes:?}");
        assert_eq!(run.ready().collect::<Vec<_>>(), [TEST]);
        assert_eq!(
            *run.state(TEST),
            crate::state::ModuleState::Ready { attempt: 3 }
        );
    }
}
