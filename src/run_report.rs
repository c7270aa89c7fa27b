//! A run's reports as files: [`gather`] reads the run's journal (a local
//! run folder or a CI run's Redis Stream) and the failed modules' log
//! tails into the report model (`muster_core::report`, no I/O), and
//! [`Outputs::write`] renders each format asked for and writes it
//! atomically (a temporary file beside it, then a rename), or to stdout
//! for `-`. `muster report` does both after the run; the master does both
//! when its run ends, for `--report-json` and `--junit`, and appends the
//! Markdown to `$GITHUB_STEP_SUMMARY` in `muster ci`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use muster_core::report::{junit, markdown, Report};

use crate::failure::Failure;
use crate::flags::ReportFlags;
use crate::journal_source::Source;
use crate::report::write_stdout;

/// Log lines a JUnit failure shows.
pub const TAIL_LINES: usize = 50;

/// The files to write; `-` is stdout. Each format is one field and one
/// step of [`Outputs::write`] (an offline HTML page would be another).
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
}

impl Outputs {
    /// What `--report-json` and `--junit` ask the master for.
    pub fn of(flags: &ReportFlags) -> Outputs {
        Outputs {
            json: flags.report_json.clone(),
            junit: flags.junit.clone(),
            markdown: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.json.is_none() && self.junit.is_none() && self.markdown.is_none()
    }

    /// Renders and writes each file asked for; the first that cannot be
    /// written ends it, with a message naming the file.
    pub fn write(&self, report: &Report) -> Result<(), String> {
        if let Some(path) = &self.json {
            let mut json = serde_json::to_string_pretty(report)
                .map_err(|e| format!("cannot encode the JSON report: {e}"))?;
            json.push('\n');
            write_file(path, "JSON report", json.as_bytes())?;
        }
        if let Some(path) = &self.junit {
            write_file(path, "JUnit report", junit(report).as_bytes())?;
        }
        if let Some(path) = &self.markdown {
            write_file(path, "Markdown report", markdown(report).as_bytes())?;
        }
        Ok(())
    }
}

/// The report of the run `source` holds, with the last log lines of each
/// module that ended without succeeding.
pub async fn gather(source: &Source) -> Result<Report, Failure> {
    let records = source.read().await?;
    let mut report =
        Report::build(&records).map_err(|e| Failure::Usage(format!("{}: {e}", source.shown())))?;
    for module in report.modules.iter_mut().filter(|m| m.did_not_succeed()) {
        module.log_tail = source
            .tail(&module.id, TAIL_LINES)
            .await
            .unwrap_or_default();
    }
    Ok(report)
}

/// Log text an offline page holds per module, and in all.
const HTML_LOG_BYTES: u64 = 1024 * 1024;
const HTML_LOGS_BYTES: u64 = 64 * 1024 * 1024;

/// The live dashboard's page as one static file of the run `source`
/// holds: its records and each module's log written into it.
pub async fn write_html(source: &Source, path: &Path) -> Result<(), Failure> {
    let records = source.read().await?;
    let mut lines = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    for record in &records {
        muster_core::journal::encode_into(record, &mut lines);
        if let muster_core::journal::Entry::Module(module) = &record.entry {
            modules.insert(module.module.clone());
        }
    }
    let mut logs = std::collections::BTreeMap::new();
    let mut room = HTML_LOGS_BYTES;
    for module in modules {
        let Some(text) = source.whole_log(&module, HTML_LOG_BYTES.min(room)).await else {
            continue;
        };
        room = room.saturating_sub(text.len() as u64);
        logs.insert(module, text);
        if room == 0 {
            break;
        }
    }
    let page = muster_hub::offline_page(&lines, &logs);
    write_file(path, "HTML report", page.as_bytes()).map_err(Failure::Usage)
}

/// Appends the run's Markdown summary to the file `$GITHUB_STEP_SUMMARY`
/// names, when it is set (GitHub Actions shows it on the run's page). A
/// summary that cannot be written is a warning: it never fails the run.
pub fn append_step_summary(report: &Report) {
    append_to_step_summary(&markdown(report), "the run's summary");
}

/// Puts the live dashboard's link in the job summary while the run goes
/// on (GitHub Actions), beside the summary the end adds.
pub fn announce_dashboard(link: &str) {
    let text = format!("**muster** — watch the run live: <{link}>\n\n");
    append_to_step_summary(&text, "the dashboard's link");
}

fn append_to_step_summary(text: &str, what: &str) {
    let Some(path) = step_summary_path() else {
        return;
    };
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(e) = appended {
        eprintln!(
            "muster: warning: cannot add {what} to GITHUB_STEP_SUMMARY ({}): {e}",
            path.display()
        );
    }
}

/// The job summary file GitHub Actions names in `$GITHUB_STEP_SUMMARY`.
pub fn step_summary_path() -> Option<PathBuf> {
    std::env::var_os("GITHUB_STEP_SUMMARY")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Writes `bytes` to `path` whole or not at all (`-`: stdout); the error
/// names the file and says what to do.
pub fn write_file(path: &Path, what: &str, bytes: &[u8]) -> Result<(), String> {
    if path.as_os_str() == "-" {
        return write_stdout(bytes).map_err(|e| format!("cannot write the {what} to stdout: {e}"));
    }
    let failed = |e: std::io::Error| {
        format!(
            "cannot write the {what} to {}: {e}\n  = help: make sure its folder exists and is \
             writable, or pass another path",
            path.display()
        )
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(".muster-report-")
        .tempfile_in(folder)
        .map_err(failed)?;
    temporary.write_all(bytes).map_err(failed)?;
    temporary.as_file().sync_all().map_err(failed)?;
    temporary.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_a_missing_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.xml");
        std::fs::write(&path, "old and longer").unwrap();
        write_file(&path, "JUnit report", b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");

        let missing = dir.path().join("no/such/folder/report.xml");
        let error = write_file(&missing, "JUnit report", b"x").unwrap_err();
        assert!(
            error.starts_with(&format!(
                "cannot write the JUnit report to {}: ",
                missing.display()
            )) && error.contains("make sure its folder exists"),
            "{error}"
        );
    }
}
