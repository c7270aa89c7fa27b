//! `muster report`: a finished (or running) run's reports, from its
//! journal: JSON (`--json`), JUnit XML (`--junit`), Markdown with a
//! mermaid Gantt chart (`--markdown`) and the dashboard's page as one
//! offline file (`--html`), any combination, for the latest
//! local run or any run by id, a CI run's from its Redis. The run's
//! outcome does not change the exit code: 0 once every file is written.

use std::path::PathBuf;

use clap::Args;

use crate::failure::Failure;
use crate::journal_source::RunChoice;
use crate::run_report::{gather, write_html, Outputs};

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    run: RunChoice,
    /// Write the report as JSON (schema muster-report/1, docs/report.md)
    /// to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE", help_heading = "Reports")]
    json: Option<PathBuf>,
    /// Write JUnit XML, a test case per module, to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE", help_heading = "Reports")]
    junit: Option<PathBuf>,
    /// Write a Markdown summary (a table and a mermaid Gantt chart) to
    /// FILE [default: stdout].
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-", help_heading = "Reports")]
    markdown: Option<PathBuf>,
    /// Write the dashboard's page with this run in it, as one file to
    /// open offline or keep as a CI artifact (`-`: stdout).
    #[arg(long, value_name = "FILE", help_heading = "Reports")]
    html: Option<PathBuf>,
}

pub async fn report(args: ReportArgs) -> Result<(), Failure> {
    let outputs = Outputs {
        json: args.json,
        junit: args.junit,
        markdown: args.markdown,
    };
    if outputs.is_empty() && args.html.is_none() {
        return Err(Failure::Usage(
            "say which report to write: --json FILE, --junit FILE, --html FILE and/or \
             --markdown [FILE] (`-` is stdout)"
                .into(),
        ));
    }
    let stdout = [&outputs.json, &outputs.junit, &outputs.markdown, &args.html]
        .iter()
        .filter(|o| o.as_deref().is_some_and(|p| p.as_os_str() == "-"))
        .count();
    if stdout > 1 {
        return Err(Failure::Usage(
            "only one report can go to stdout (`-`); give the others a file".into(),
        ));
    }
    let source = args.run.source()?;
    if let Some(path) = &args.html {
        write_html(&source, path).await?;
    }
    if outputs.is_empty() {
        return Ok(());
    }
    let report = gather(&source).await?;
    outputs.write(&report).map_err(Failure::Usage)
}
