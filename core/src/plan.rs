//! The expanded DAG: every matrix instance is its own module, needs point at
//! indexes, and modules are in topological order (a module's needs always
//! come before it), so the scheduler never re-sorts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::glob::ArtifactGlob;

/// Position of a module in [`Plan::modules`].
pub type ModuleIndex = usize;

/// One runnable module instance, with everything substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedModule {
    /// `name`, or `name[key=value,...]` for a matrix instance.
    pub id: String,
    /// The `[modules.NAME]` it came from.
    pub name: String,
    pub matrix: BTreeMap<String, String>,
    pub run: String,
    /// Program and leading arguments; the command follows as the last one.
    pub shell: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub needs: Vec<ModuleIndex>,
    pub requires: Vec<String>,
    /// Names of environment variables whose values are masked in its
    /// output: `[defaults] secrets` first, then the module's own, each once.
    pub secrets: Vec<String>,
    /// Globs of files to upload when it succeeds, relative to its cwd;
    /// `?` first marks one that may match nothing.
    pub produces: Vec<String>,
    /// Artifacts of its needs to fetch before it starts.
    pub consumes: Vec<Consume>,
    pub timeout: Duration,
    pub retries: u32,
    /// Globs of the files its result depends on, relative to its cwd, as
    /// written (after matrix substitution); `!` first leaves out what the
    /// glob matches. Empty: it has none, and always runs.
    pub inputs: Vec<String>,
    /// True when its result may come from the cache: it has inputs and
    /// does not set `cache = false`. Read it through [`PlannedModule::cached`].
    pub cache: bool,
    /// Names of environment variables the command reads, whose values go
    /// into its cache key: `[defaults] env_inputs` first, each once.
    pub env_inputs: Vec<String>,
    /// Its approval gate: once its needs succeed it waits for a decision.
    pub approval: Option<crate::gate::Approval>,
    /// What undoes it: run (in reverse order of completion) when the run
    /// fails after it succeeded.
    pub compensate: Option<String>,
}

impl PlannedModule {
    /// Whether a result of an earlier run with the same cache key may stand
    /// for running it: never without inputs, whatever `cache` says.
    pub fn cached(&self) -> bool {
        self.cache && !self.inputs.is_empty()
    }
}

/// What a module takes from one of its needs: every artifact, or those
/// whose path matches `glob`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consume {
    pub from: ModuleIndex,
    /// Compiled once, when the pipeline was read: match artifact paths
    /// with [`ArtifactGlob::is_match`]. It reads as the text written.
    pub glob: Option<ArtifactGlob>,
}

/// The whole pipeline, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub modules: Vec<PlannedModule>,
    dependents: Vec<Vec<ModuleIndex>>,
    by_id: HashMap<String, ModuleIndex>,
}

impl Plan {
    /// Builds a plan from modules already in topological order.
    ///
    /// # Panics
    /// If a module needs one at or after its own index: the pipeline parser
    /// guarantees the order, so this is a bug, not an input error.
    pub(crate) fn from_ordered(modules: Vec<PlannedModule>) -> Plan {
        let mut dependents = vec![Vec::new(); modules.len()];
        let mut by_id = HashMap::with_capacity(modules.len());
        for (index, module) in modules.iter().enumerate() {
            for &need in &module.needs {
                assert!(need < index, "plan is not in topological order");
                dependents[need].push(index);
            }
            let earlier = by_id.insert(module.id.clone(), index);
            assert!(earlier.is_none(), "module id {} appears twice", module.id);
        }
        Plan {
            modules,
            dependents,
            by_id,
        }
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Modules that need `index`.
    pub fn dependents(&self, index: ModuleIndex) -> &[ModuleIndex] {
        &self.dependents[index]
    }

    pub fn index_of(&self, id: &str) -> Option<ModuleIndex> {
        self.by_id.get(id).copied()
    }

    /// How many needs edges the plan has.
    pub fn edge_count(&self) -> usize {
        self.modules.iter().map(|m| m.needs.len()).sum()
    }
}

/// `MUSTER_NEEDS_<MODULE>_<KEY>`: upper case, every run of characters that
/// cannot appear in a variable name becomes one `_`.
pub fn needs_env_name(module_id: &str, key: &str) -> String {
    let mut name = String::from("MUSTER_NEEDS_");
    push_env_word(&mut name, module_id);
    name.push('_');
    push_env_word(&mut name, key);
    name
}

/// The environment variable a compensation reads its module's output
/// `key` from: `MUSTER_OUTPUT_<KEY>`.
pub fn output_env_name(key: &str) -> String {
    let mut name = String::from("MUSTER_OUTPUT_");
    push_env_word(&mut name, key);
    name
}

fn push_env_word(out: &mut String, word: &str) {
    let mut last_underscore = out.ends_with('_');
    for c in word.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_uppercase());
            last_underscore = false;
        } else if !last_underscore {
            out.push('_');
            last_underscore = true;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_sanitised() {
        assert_eq!(
            needs_env_name("build", "version"),
            "MUSTER_NEEDS_BUILD_VERSION"
        );
        assert_eq!(
            needs_env_name("test[os=linux,shard=1]", "sha-256"),
            "MUSTER_NEEDS_TEST_OS_LINUX_SHARD_1_SHA_256"
        );
        assert_eq!(needs_env_name("my-mod", "k"), "MUSTER_NEEDS_MY_MOD_K");
    }
}
