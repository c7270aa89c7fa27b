//! `muster cache explain MODULE`: what goes into a module's cache key now,
//! and, against the last entry this machine stored for it, what changed —
//! the answer to "why did this run again?".

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use muster_cache::hash_inputs;
use muster_core::cache::{explain_change, plan_key_inputs, KeyInputs, NeedKey};
use muster_core::text::escape;
use muster_core::{ModuleIndex, Plan};

use crate::failure::Failure;
use crate::flags::state_root;
use crate::pipeline::{load, pipeline_dir};
use crate::result_cache::read_explain;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Print what goes into a module's cache key, and what changed since
    /// the last entry stored for it here.
    Explain(ExplainArgs),
}

#[derive(Args)]
pub struct ExplainArgs {
    /// The module (its id, e.g. `test[shard=1]`, or its name when it has
    /// one instance).
    module: String,
    /// The pipeline file.
    #[arg(long, short = 'f', default_value = "muster.toml")]
    file: PathBuf,
    /// The state folder [default: .muster beside the pipeline file].
    #[arg(long, env = "MUSTER_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

pub fn cache(command: CacheCommand) -> Result<(), Failure> {
    match command {
        CacheCommand::Explain(args) => explain(&args),
    }
}

fn explain(args: &ExplainArgs) -> Result<(), Failure> {
    let plan = load(&args.file)?;
    let module = find(&plan, &args.module)?;
    let planned = &plan.modules[module];
    if !planned.cached() {
        println!(
            "{} is not cached: {}",
            planned.id,
            if planned.inputs.is_empty() {
                "it declares no inputs (add inputs = [\"src/**\", ...] to its table)"
            } else {
                "cache = false"
            }
        );
        return Ok(());
    }
    let keys = Keys {
        plan: &plan,
        root: state_root(args.state_dir.as_deref(), &args.file),
        workdir: pipeline_dir(&args.file),
        memo: HashMap::new(),
    };
    let mut keys = keys;
    let inputs = keys.inputs(module)?;
    let key = inputs.key().hex;
    println!("{}: key {key}", planned.id);
    for component in inputs.components() {
        println!("  {}  {}", component.name, escape(&component.value));
    }
    match read_explain(&keys.root, &planned.id) {
        None => println!(
            "\nno entry was stored for {} here yet: it runs, and its result is kept",
            planned.id
        ),
        Some(last) if last.key == key => println!(
            "\nunchanged since the last entry stored here: a run takes its result from the cache"
        ),
        Some(last) => {
            println!(
                "\nchanged since the last entry stored here (key {}):",
                last.key
            );
            let changes = explain_change(&last.components, &inputs.components());
            if changes.is_empty() {
                println!("  a secret value changed (secrets show as ***)");
            }
            for change in changes {
                println!("  {}", escape(&change));
            }
        }
    }
    Ok(())
}

/// A module by id, or by name when it has one instance.
fn find(plan: &Plan, name: &str) -> Result<ModuleIndex, Failure> {
    if let Some(index) = plan.index_of(name) {
        return Ok(index);
    }
    let instances: Vec<ModuleIndex> = (0..plan.len())
        .filter(|&i| plan.modules[i].name == name)
        .collect();
    match instances.as_slice() {
        [one] => Ok(*one),
        [] => Err(Failure::Usage(format!(
            "no module '{name}' in this pipeline (`muster validate` lists them)"
        ))),
        many => Err(Failure::Usage(format!(
            "'{name}' has {} instances; name one: {}",
            many.len(),
            many.iter()
                .map(|&i| plan.modules[i].id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Keys as a run would make them now: input files hashed here, each need's
/// key made the same way, and the outputs and artifacts the need's last
/// stored entry left (what a hit would hand over).
struct Keys<'a> {
    plan: &'a Plan,
    root: PathBuf,
    workdir: PathBuf,
    memo: HashMap<ModuleIndex, String>,
}

impl Keys<'_> {
    fn inputs(&mut self, module: ModuleIndex) -> Result<KeyInputs, Failure> {
        let planned = &self.plan.modules[module];
        let files = hash_inputs(&self.workdir, &planned.cwd, &planned.inputs)
            .map_err(|e| Failure::Usage(format!("{}: {e}", planned.id)))?;
        let mut needs = Vec::new();
        for &need in &planned.needs {
            let need_module = &self.plan.modules[need];
            let key = if need_module.cached() {
                self.key(need)?
            } else {
                String::new()
            };
            let last = read_explain(&self.root, &need_module.id);
            let consumed = |path: &str| {
                planned
                    .consumes
                    .iter()
                    .filter(|c| c.from == need)
                    .any(|c| c.glob.as_ref().is_none_or(|g| g.is_match(path)))
            };
            needs.push(NeedKey {
                id: need_module.id.clone(),
                key,
                outputs: last.as_ref().map(|l| l.outputs.clone()).unwrap_or_default(),
                artifacts: last
                    .map(|l| l.artifacts)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(path, _)| consumed(path))
                    .collect(),
            });
        }
        Ok(plan_key_inputs(self.plan, module, files, needs, &|name| {
            std::env::var(name).ok()
        }))
    }

    fn key(&mut self, module: ModuleIndex) -> Result<String, Failure> {
        if let Some(key) = self.memo.get(&module) {
            return Ok(key.clone());
        }
        let key = self.inputs(module)?.key().hex;
        self.memo.insert(module, key.clone());
        Ok(key)
    }
}
