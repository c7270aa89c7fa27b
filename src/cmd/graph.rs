//! `muster graph`: the plan's DAG after matrix expansion, as Graphviz DOT
//! or a mermaid flowchart, for the whole file or a selection of it (as
//! `muster run` would take it).

use clap::{Args, ValueEnum};
use muster_core::graph;

use crate::failure::Failure;
use crate::pipeline::load;
use crate::report::write_stdout;
use crate::selection::Selection;

#[derive(Args)]
pub struct GraphArgs {
    #[command(flatten)]
    selection: Selection,
    /// The syntax to print.
    #[arg(long, value_enum, default_value_t = Format::Dot)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Graphviz: `muster graph | dot -Tsvg > plan.svg`.
    Dot,
    /// A mermaid flowchart, for Markdown that renders mermaid.
    Mermaid,
}

pub fn graph(args: &GraphArgs) -> Result<(), Failure> {
    let file = args.selection.file();
    let plan = args.selection.apply(load(&file)?)?;
    let text = match args.format {
        Format::Dot => graph::dot(&plan),
        Format::Mermaid => graph::mermaid(&plan),
    };
    write_stdout(text.as_bytes())
        .map_err(|e| Failure::infrastructure(format!("cannot write to stdout: {e}")))
}
