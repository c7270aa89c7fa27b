//! `muster validate`: checks a pipeline file and prints the expanded DAG
//! without running anything, for the whole file or a selection of it (as
//! `muster run` would take it).

use clap::Args;

use crate::failure::Failure;
use crate::pipeline::load;
use crate::report;
use crate::selection::Selection;

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    selection: Selection,
}

pub fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    let file = args.selection.file();
    let plan = args.selection.apply(load(&file)?)?;
    print!("{}", report::describe_plan(&plan));
    let uncached: Vec<&str> = plan
        .modules
        .iter()
        .filter(|m| !m.cached())
        .map(|m| m.id.as_str())
        .collect();
    let cached = plan.len() - uncached.len();
    if cached > 0 && !uncached.is_empty() {
        println!(
            "not cached (no inputs, or cache = false): {}",
            uncached.join(", ")
        );
    }
    println!(
        "{}: ok, {} modules, {} needs edges, {cached} cached",
        file.display(),
        plan.len(),
        plan.edge_count()
    );
    Ok(())
}
