//! `muster validate`: checks a pipeline file and prints the expanded DAG
//! without running anything.

use clap::Args;

use crate::failure::Failure;
use crate::flags::FileArg;
use crate::pipeline::load;
use crate::report;

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    file: FileArg,
}

pub fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    let file = &args.file.file;
    let plan = load(file)?;
    print!("{}", report::describe_plan(&plan));
    println!(
        "{}: ok, {} modules, {} needs edges",
        file.display(),
        plan.len(),
        plan.edge_count()
    );
    Ok(())
}
