//! Reading the pipeline file: [`load`] reads and checks it, and
//! [`pipeline_dir`] is the folder module `cwd`s are relative to.

use std::fmt;
use std::path::{Path, PathBuf};

use muster_core::{parse_pipeline, PipelineError, Plan};

/// Why a pipeline file cannot run; shown after `muster: error: `.
#[derive(Debug)]
pub enum LoadError {
    /// The file cannot be read (missing, a folder, no permission).
    Unreadable {
        file: PathBuf,
        error: std::io::Error,
    },
    /// The file is not a valid pipeline: where and why.
    Invalid(PipelineError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Unreadable { file, error } => {
                write!(f, "cannot read pipeline file {}: {error}", file.display())?;
                if error.kind() == std::io::ErrorKind::NotFound {
                    write!(f, "\n  = help: pass the path of a pipeline file, or create muster.toml (see examples/)")?;
                }
                Ok(())
            }
            LoadError::Invalid(error) => write!(f, "{error}"),
        }
    }
}

/// Reads and checks a pipeline file.
pub fn load(file: &Path) -> Result<Plan, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|error| LoadError::Unreadable {
        file: file.to_owned(),
        error,
    })?;
    parse_pipeline(&file.display().to_string(), &text).map_err(LoadError::Invalid)
}

/// Module cwds are relative to the pipeline file's folder.
pub fn pipeline_dir(file: &Path) -> PathBuf {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    dir.canonicalize().unwrap_or(dir)
}
