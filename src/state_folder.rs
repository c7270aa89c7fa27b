//! Where a master keeps its run's state (the artifact store): the folder
//! `--state-dir` names, or a temporary one made for the run and removed
//! when the run ends.

use std::path::{Path, PathBuf};

use crate::failure::Failure;

/// The run's state folder; a temporary one lives as long as this value.
pub struct StateFolder {
    path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl StateFolder {
    /// `dir` when given (kept after the run), else a new temporary folder
    /// `muster-run-*`, removed when this value is dropped.
    pub fn given_or_temporary(dir: Option<&Path>) -> Result<StateFolder, Failure> {
        if let Some(dir) = dir {
            return Ok(StateFolder {
                path: dir.to_owned(),
                _temporary: None,
            });
        }
        let temporary = tempfile::Builder::new()
            .prefix("muster-run-")
            .tempdir()
            // Exit 2, as muster always has for this, though no input is wrong.
            .map_err(|e| Failure::Usage(format!("cannot make a temporary state folder: {e}")))?;
        Ok(StateFolder {
            path: temporary.path().to_owned(),
            _temporary: Some(temporary),
        })
    }

    /// Where the hub stores artifacts.
    pub fn artifacts(&self) -> PathBuf {
        self.path.join("artifacts")
    }
}
