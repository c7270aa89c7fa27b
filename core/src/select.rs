//! Running part of a pipeline: targets keep the modules named and what
//! they need, so the result can run on its own; skips remove the modules
//! named and what depends on them, so nothing starts without a need. The
//! result is a [`Plan`] like any other, and the run never knows it was cut.
//!
//! A name is a module (`test`: every matrix instance of it) or one
//! instance id (`test[shard=1]`). A name that matches nothing is refused
//! with the closest one, since a typo must not quietly run everything.

use std::collections::HashSet;

use crate::pipeline::edit_distance;
use crate::plan::{Consume, ModuleIndex, Plan, PlannedModule};

/// How many names a refusal lists before it says how many more there are.
pub const MAX_LISTED: usize = 20;

/// Why a selection has nothing to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// A target or skip that names no module and no instance.
    #[error("{}", unknown_message(.name, .suggestion, .instances_of, .listed, .more))]
    Unknown {
        name: String,
        /// The closest name, when one is close enough to be a typo.
        suggestion: Option<String>,
        /// The module `name` is an instance id of, when that module
        /// exists: `listed` are then its instances.
        instances_of: Option<String>,
        /// What could be named instead, at most [`MAX_LISTED`]: the
        /// module names, or the instances of `instances_of`.
        listed: Vec<String>,
        /// How many were left out of `listed`.
        more: usize,
    },
    /// Every module selected is skipped.
    #[error("{}", empty_message(.targets, .skip))]
    Empty {
        targets: Vec<String>,
        skip: Vec<String>,
    },
}

impl Plan {
    /// The part of the plan that `targets` select and `skip` leaves: with
    /// targets, the modules they name and everything those need, however
    /// deep; without, every module. Then the modules `skip` names go, and
    /// everything that needs them, however deep (also from the targets:
    /// skipping `build` leaves nothing that needs it).
    pub fn select(&self, targets: &[String], skip: &[String]) -> Result<Plan, SelectError> {
        let n = self.len();
        let targeted = self.resolve_all(targets)?;
        let skipped_named = self.resolve_all(skip)?;

        let mut keep = vec![targets.is_empty(); n];
        for i in targeted {
            keep[i] = true;
        }
        // A module's needs come before it, so walking backwards reaches
        // every dependent before its needs.
        for i in (0..n).rev() {
            if keep[i] {
                for &need in &self.modules[i].needs {
                    keep[need] = true;
                }
            }
        }
        let mut skipped = vec![false; n];
        for i in skipped_named {
            skipped[i] = true;
        }
        for i in 0..n {
            if self.modules[i].needs.iter().any(|&need| skipped[need]) {
                skipped[i] = true;
            }
        }

        let mut new_index: Vec<Option<ModuleIndex>> = vec![None; n];
        let mut modules = Vec::new();
        for i in 0..n {
            if keep[i] && !skipped[i] {
                new_index[i] = Some(modules.len());
                modules.push(reindexed(&self.modules[i], &new_index));
            }
        }
        if modules.is_empty() {
            return Err(SelectError::Empty {
                targets: targets.to_vec(),
                skip: skip.to_vec(),
            });
        }
        Ok(Plan::from_ordered(modules))
    }

    /// Every instance each of `names` names, or the refusal of the first
    /// that names none.
    fn resolve_all(&self, names: &[String]) -> Result<Vec<ModuleIndex>, SelectError> {
        let mut found = Vec::new();
        for name in names {
            found.extend(self.resolve(name)?);
        }
        Ok(found)
    }

    /// The instance with id `name`, or every instance of the module
    /// `name`. Ids with a `[` cannot be module names, so the two never
    /// clash.
    fn resolve(&self, name: &str) -> Result<Vec<ModuleIndex>, SelectError> {
        if let Some(i) = self.index_of(name) {
            return Ok(vec![i]);
        }
        let instances: Vec<ModuleIndex> = (0..self.len())
            .filter(|&i| self.modules[i].name == name)
            .collect();
        if instances.is_empty() {
            Err(self.unknown(name))
        } else {
            Ok(instances)
        }
    }

    /// The refusal of `name`, with the closest name and what exists.
    fn unknown(&self, name: &str) -> SelectError {
        let module_names = self.module_names();
        let of_module = name
            .split_once('[')
            .map(|(module, _)| module)
            .filter(|module| module_names.contains(module));
        let (candidates, instances_of): (Vec<&str>, _) = match of_module {
            Some(module) => (
                self.modules
                    .iter()
                    .filter(|m| m.name == module)
                    .map(|m| m.id.as_str())
                    .collect(),
                Some(module.to_owned()),
            ),
            None if name.contains('[') => {
                (self.modules.iter().map(|m| m.id.as_str()).collect(), None)
            }
            None => (module_names.clone(), None),
        };
        let suggestion = candidates
            .iter()
            .map(|c| (edit_distance(name, c), *c))
            .filter(|(distance, _)| *distance <= 2)
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, c)| c.to_owned());
        let listed_from = if instances_of.is_some() {
            candidates
        } else {
            module_names
        };
        SelectError::Unknown {
            name: name.to_owned(),
            suggestion,
            instances_of,
            more: listed_from.len().saturating_sub(MAX_LISTED),
            listed: listed_from
                .into_iter()
                .take(MAX_LISTED)
                .map(String::from)
                .collect(),
        }
    }

    /// Each module name once, in plan order.
    fn module_names(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.modules
            .iter()
            .map(|m| m.name.as_str())
            .filter(|name| seen.insert(*name))
            .collect()
    }
}

/// `module` with its needs and consumes pointing at the new indexes.
fn reindexed(module: &PlannedModule, new_index: &[Option<ModuleIndex>]) -> PlannedModule {
    let moved = |i: ModuleIndex| new_index[i].expect("the needs of a selected module are selected");
    PlannedModule {
        needs: module.needs.iter().map(|&i| moved(i)).collect(),
        consumes: module
            .consumes
            .iter()
            .map(|c| Consume {
                from: moved(c.from),
                glob: c.glob.clone(),
            })
            .collect(),
        ..module.clone()
    }
}

fn unknown_message(
    name: &str,
    suggestion: &Option<String>,
    instances_of: &Option<String>,
    listed: &[String],
    more: &usize,
) -> String {
    let mut message = match instances_of {
        Some(module) => format!("module '{module}' has no instance '{name}'"),
        None => format!("no module '{name}'"),
    };
    if let Some(close) = suggestion {
        message.push_str(&format!("; did you mean '{close}'?"));
    }
    message.push_str(if instances_of.is_some() {
        " (its instances: "
    } else {
        " (modules: "
    });
    message.push_str(&listed.join(", "));
    if *more > 0 {
        message.push_str(&format!(" and {more} more"));
    }
    message.push(')');
    message
}

fn empty_message(targets: &[String], skip: &[String]) -> String {
    let quoted = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (targets.is_empty(), skip.is_empty()) {
        (_, true) => "nothing to run: the pipeline has no modules".to_owned(),
        (true, false) => format!(
            "nothing left to run: skipping {} skips every module (and each module that needs a skipped one)",
            quoted(skip)
        ),
        (false, false) => format!(
            "nothing left to run: skipping {} skips every module of target {} (a module that needs a skipped one is skipped too)",
            quoted(skip),
            quoted(targets)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse_pipeline;

    fn pipeline() -> Plan {
        parse_pipeline(
            "t.toml",
            r#"
[modules.build]
run = "make"
produces = ["app"]
[modules.test]
run = "test"
needs = ["build"]
consumes = ["build"]
matrix = { shard = [1, 2] }
[modules.lint]
run = "lint"
[modules.docs]
run = "doc"
needs = ["build"]
[modules.deploy]
run = "deploy"
needs = ["test", "docs"]
"#,
        )
        .unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Selects from [`pipeline`] and compares the ids left, in order.
    fn check(targets: &[&str], skip: &[&str], expected: &[&str]) {
        let selected = pipeline()
            .select(&names(targets), &names(skip))
            .unwrap_or_else(|e| panic!("{targets:?} skip {skip:?}: {e}"));
        let ids: Vec<&str> = selected.modules.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, expected, "{targets:?} skip {skip:?}");
    }

    fn error(targets: &[&str], skip: &[&str]) -> String {
        pipeline()
            .select(&names(targets), &names(skip))
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn targets_keep_what_they_need_and_skips_take_their_dependents() {
        let all = [
            "build",
            "test[shard=1]",
            "test[shard=2]",
            "lint",
            "docs",
            "deploy",
        ];
        check(&[], &[], &all);
        check(&["test"], &[], &["build", "test[shard=1]", "test[shard=2]"]);
        check(&["test[shard=2]"], &[], &["build", "test[shard=2]"]);
        check(
            &["deploy"],
            &[],
            &["build", "test[shard=1]", "test[shard=2]", "docs", "deploy"],
        );
        check(&["lint", "docs", "lint"], &[], &["build", "lint", "docs"]);
        check(&[], &["build"], &["lint"]);
        check(
            &[],
            &["test[shard=1]"],
            &["build", "test[shard=2]", "lint", "docs"],
        );
        check(
            &["deploy"],
            &["docs"],
            &["build", "test[shard=1]", "test[shard=2]"],
        );
        check(&["deploy", "lint"], &["test"], &["build", "lint", "docs"]);
    }

    #[test]
    fn the_selection_is_a_plan_of_its_own() {
        let selected = pipeline()
            .select(&names(&["deploy"]), &names(&["test[shard=1]"]))
            .unwrap();
        let id = |i: usize| selected.modules[i].id.as_str();
        let test = selected.index_of("test[shard=2]").unwrap();
        assert_eq!(test, 1);
        assert_eq!(selected.modules[test].needs, [0]);
        assert_eq!(selected.modules[test].consumes[0].from, 0);
        assert_eq!(
            selected
                .dependents(0)
                .iter()
                .map(|&i| id(i))
                .collect::<Vec<_>>(),
            ["test[shard=2]", "docs"]
        );
        // deploy needed the skipped shard, so it went too.
        assert_eq!(selected.index_of("deploy"), None);
        assert_eq!(selected.edge_count(), 2);
    }

    #[test]
    fn unknown_names_are_refused_with_the_closest() {
        assert_eq!(
            error(&["tets"], &[]),
            "no module 'tets'; did you mean 'test'? (modules: build, test, lint, docs, deploy)"
        );
        assert_eq!(
            error(&["test"], &["zzz"]),
            "no module 'zzz' (modules: build, test, lint, docs, deploy)"
        );
        assert_eq!(
            error(&["test[shard=3]"], &[]),
            "module 'test' has no instance 'test[shard=3]'; did you mean 'test[shard=1]'? \
             (its instances: test[shard=1], test[shard=2])"
        );
        assert_eq!(
            error(&["tset[shard=2]"], &[]),
            "no module 'tset[shard=2]'; did you mean 'test[shard=2]'? (modules: build, test, lint, docs, deploy)"
        );
        let Err(SelectError::Unknown { suggestion, .. }) =
            pipeline().select(&names(&["lint[x=1]"]), &[])
        else {
            panic!("lint has no matrix");
        };
        assert_eq!(suggestion, None);
    }

    #[test]
    fn long_lists_of_names_are_cut() {
        let text: String = (0..25)
            .map(|i| format!("[modules.m{i}]\nrun = \"x\"\n"))
            .collect();
        let plan = parse_pipeline("t.toml", &text).unwrap();
        let Err(SelectError::Unknown { listed, more, .. }) = plan.select(&names(&["nope"]), &[])
        else {
            panic!("nope is no module");
        };
        assert_eq!(listed.len(), MAX_LISTED);
        assert_eq!(more, 5);
        let message = plan.select(&names(&["nope"]), &[]).unwrap_err().to_string();
        assert!(message.ends_with("m19 and 5 more)"), "{message}");
    }

    #[test]
    fn a_selection_of_nothing_is_refused() {
        assert_eq!(
            error(&["test"], &["build"]),
            "nothing left to run: skipping 'build' skips every module of target 'test' \
             (a module that needs a skipped one is skipped too)"
        );
        assert_eq!(
            error(&[], &["build", "lint"]),
            "nothing left to run: skipping 'build', 'lint' skips every module \
             (and each module that needs a skipped one)"
        );
    }
}
