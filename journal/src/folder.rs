//! The state folder of a local run: `.muster/` next to the pipeline file,
//! holding one folder per run, `runs/<run-id>/`, with its journal, its
//! modules' logs and the artifacts it stored. Only the last few runs are
//! kept; the run in progress is never pruned.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::StoreError;

/// The state folder's name, next to the pipeline file.
pub const STATE_DIR: &str = ".muster";
/// Runs kept when the user has no opinion.
pub const DEFAULT_KEEP: usize = 20;

const RUNS: &str = "runs";
const JOURNAL: &str = "journal.jsonl";
const LOGS: &str = "logs";
const ARTIFACTS: &str = "artifacts";

/// The state folder for the pipeline file at `pipeline`.
pub fn state_root(pipeline: &Path) -> PathBuf {
    match pipeline.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(STATE_DIR),
        _ => PathBuf::from(STATE_DIR),
    }
}

/// `<state root>/runs/<run-id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFolder {
    id: String,
    path: PathBuf,
}

impl RunFolder {
    /// The folder of run `id` under `root`, whether or not it exists. The
    /// id must be a plain name (it becomes a folder).
    pub fn at(root: &Path, id: &str) -> Result<RunFolder, StoreError> {
        if !is_run_id(id) {
            return Err(StoreError::BadRunId { id: id.to_owned() });
        }
        Ok(RunFolder {
            id: id.to_owned(),
            path: root.join(RUNS).join(id),
        })
    }

    /// Creates the folder of a new run, with its `logs/` and `artifacts/`,
    /// and makes it durable. A run id already used is an error.
    pub fn create(root: &Path, id: &str) -> Result<RunFolder, StoreError> {
        let folder = RunFolder::at(root, id)?;
        let runs = root.join(RUNS);
        std::fs::create_dir_all(&runs)
            .map_err(|e| StoreError::io(&runs, "create the state folder", e))?;
        std::fs::create_dir(&folder.path)
            .map_err(|e| StoreError::io(&folder.path, "create the run's folder", e))?;
        for inner in [folder.logs(), folder.artifacts()] {
            std::fs::create_dir(&inner)
                .map_err(|e| StoreError::io(&inner, "create the run's folder", e))?;
        }
        crate::file::sync_folder(&folder.path)?;
        crate::file::sync_folder(&runs)?;
        Ok(folder)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn journal(&self) -> PathBuf {
        self.path.join(JOURNAL)
    }

    pub fn logs(&self) -> PathBuf {
        self.path.join(LOGS)
    }

    pub fn artifacts(&self) -> PathBuf {
        self.path.join(ARTIFACTS)
    }
}

/// A new run id for a run starting at `now`: the UTC time, then four
/// random hex digits, e.g. `2026-12-01T102205Z-3f9a`. Ids sort by time.
pub fn new_run_id(now: SystemTime) -> String {
    let time = humantime::format_rfc3339_seconds(now).to_string();
    format!("{}-{:04x}", time.replace(':', ""), rand::random::<u16>())
}

/// A run found in the state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEntry {
    pub id: String,
    pub path: PathBuf,
    /// When its journal was last written (the folder's time when it has
    /// none).
    pub modified: SystemTime,
}

/// The runs under `root`, the most recently written first (ties by id,
/// later first); none when there is no state folder yet.
pub fn list_runs(root: &Path) -> Result<Vec<RunEntry>, StoreError> {
    let runs = root.join(RUNS);
    let entries = match std::fs::read_dir(&runs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(&runs, "list the runs in", e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(&runs, "list the runs in", e))?;
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let path = entry.path();
        if !is_run_id(&id) || !path.is_dir() {
            continue;
        }
        let modified = std::fs::metadata(path.join(JOURNAL))
            .or_else(|_| std::fs::metadata(&path))
            .and_then(|m| m.modified())
            .map_err(|e| StoreError::io(&path, "read the time of", e))?;
        found.push(RunEntry { id, path, modified });
    }
    found.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| b.id.cmp(&a.id)));
    Ok(found)
}

/// Removes the oldest runs so that at most `keep` remain, never the run
/// `except` (which counts as one kept); returns the runs removed.
pub fn prune(root: &Path, keep: usize, except: &str) -> Result<Vec<RunEntry>, StoreError> {
    let runs = list_runs(root)?;
    let mut kept = usize::from(runs.iter().any(|r| r.id == except));
    let mut removed = Vec::new();
    for run in runs {
        if run.id == except {
            continue;
        }
        if kept < keep {
            kept += 1;
            continue;
        }
        std::fs::remove_dir_all(&run.path)
            .map_err(|e| StoreError::io(&run.path, "remove the old run", e))?;
        tracing::debug!(run = %run.id, "removed an old run's folder");
        removed.push(run);
    }
    Ok(removed)
}

/// A name that can be a folder: letters, digits, `.`, `_`, `-`, not
/// starting with `.`.
fn is_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn run_ids_are_utc_times_with_a_random_tail() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_120_525);
        let id = new_run_id(at);
        assert!(id.starts_with("2026-12-01T102205Z-"), "{id}");
        let tail = &id["2026-12-01T102205Z-".len()..];
        assert_eq!(tail.len(), 4);
        assert!(tail.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(is_run_id(&id));
    }

    #[test]
    fn a_run_folder_holds_its_journal_logs_and_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let root = state_root(&dir.path().join("muster.toml"));
        assert_eq!(root, dir.path().join(".muster"));
        assert_eq!(state_root(Path::new("muster.toml")), Path::new(".muster"));
        let run = RunFolder::create(&root, "r1").unwrap();
        assert_eq!(run.path(), root.join("runs/r1"));
        assert_eq!(run.journal(), root.join("runs/r1/journal.jsonl"));
        assert!(run.logs().is_dir() && run.artifacts().is_dir());
        assert_eq!(RunFolder::at(&root, "r1").unwrap(), run);
        let again = RunFolder::create(&root, "r1").unwrap_err().to_string();
        assert!(
            again.contains("runs/r1: cannot create the run's folder"),
            "{again}"
        );
        for bad in ["", "..", ".hidden", "a/b", "a b"] {
            assert!(
                matches!(RunFolder::at(&root, bad), Err(StoreError::BadRunId { .. })),
                "{bad:?}"
            );
        }
    }

    /// Runs `ids` with journals written `ids.len()`, ..., 1 seconds ago.
    fn runs(root: &Path, ids: &[&str]) {
        let now = SystemTime::now();
        for (age, id) in ids.iter().rev().enumerate() {
            let run = RunFolder::create(root, id).unwrap();
            let journal = std::fs::File::create(run.journal()).unwrap();
            journal
                .set_modified(now - Duration::from_secs(age as u64 + 1))
                .unwrap();
        }
    }

    fn ids(entries: &[RunEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn runs_are_listed_newest_first_and_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(".muster");
        assert!(list_runs(&root).unwrap().is_empty());
        runs(&root, &["a", "b", "c", "d", "e"]);
        std::fs::write(root.join("runs/stray-file"), "").unwrap();
        assert_eq!(ids(&list_runs(&root).unwrap()), ["e", "d", "c", "b", "a"]);

        // The run in progress counts as kept and is never removed, even
        // when it is the oldest.
        let removed = prune(&root, 3, "a").unwrap();
        assert_eq!(ids(&removed), ["c", "b"]);
        assert!(!root.join("runs/b").exists());
        assert_eq!(ids(&list_runs(&root).unwrap()), ["e", "d", "a"]);
        assert!(prune(&root, 3, "a").unwrap().is_empty());
        assert_eq!(ids(&prune(&root, 0, "e").unwrap()), ["d", "a"]);
        assert_eq!(ids(&list_runs(&root).unwrap()), ["e"]);
    }
}
