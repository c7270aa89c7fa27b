//! Where a master keeps its run's state without a journal
//! (`--no-journal`): a temporary folder made for the run and removed when
//! the run ends.

use std::path::PathBuf;

use crate::failure::Failure;

/// The run's state folder; a temporary one lives as long as this value.
pub struct StateFolder {
    path: PathBuf,
    _temporary: tempfile::TempDir,
}

impl StateFolder {
    /// A new temporary folder `muster-run-*`, removed when this value is
    /// dropped.
    pub fn temporary() -> Result<StateFolder, Failure> {
        let temporary = tempfile::Builder::new()
            .prefix("muster-run-")
            .tempdir()
            // Exit 2, as muster always has for this, though no input is wrong.
            .map_err(|e| Failure::Usage(format!("cannot make a temporary state folder: {e}")))?;
        Ok(StateFolder {
            path: temporary.path().to_owned(),
            _temporary: temporary,
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Where the hub stores artifacts.
    pub fn artifacts(&self) -> PathBuf {
        self.path.join("artifacts")
    }
}
