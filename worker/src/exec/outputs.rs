//! The module's outputs file, `$MUSTER_OUTPUT`: a temp file the module
//! writes `key=value` lines to, read back after it ended. The module
//! controls that path, so it is read defensively: at most one byte past the
//! cap, and only if it is still a regular file.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use muster_core::outputs::{parse_outputs, OutputError, OUTPUT_CAP};

/// Why the module's outputs could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputsError {
    #[error("cannot read $MUSTER_OUTPUT: {0}")]
    Unreadable(io::Error),
    /// A FIFO would block, a link to /dev/zero would never end.
    #[error("$MUSTER_OUTPUT was replaced by something that is not a regular file")]
    NotAFile,
    #[error(transparent)]
    Parse(#[from] OutputError),
    /// The blocking read was lost (a panic, a runtime shutting down).
    #[error("{0}")]
    Lost(#[from] tokio::task::JoinError),
}

/// Reads and parses the outputs file at `path`, off the async threads.
pub(crate) async fn collect_outputs(path: &Path) -> Result<BTreeMap<String, String>, OutputsError> {
    let path = path.to_owned();
    let bytes = tokio::task::spawn_blocking(move || read_outputs(&path)).await??;
    Ok(parse_outputs(&bytes)?)
}

/// Reads at most one byte past the cap of `$MUSTER_OUTPUT`, refusing
/// anything the module put in the file's place that is not a regular file
/// (a FIFO would block, a link to /dev/zero would never end).
fn read_outputs(path: &Path) -> Result<Vec<u8>, OutputsError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(OutputsError::Unreadable)?;
    if !file.metadata().map_err(OutputsError::Unreadable)?.is_file() {
        return Err(OutputsError::NotAFile);
    }
    let mut bytes = Vec::new();
    file.take(OUTPUT_CAP as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(OutputsError::Unreadable)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_stay_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_outputs(&fifo)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_outputs(&link)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; OUTPUT_CAP * 2]).unwrap();
        assert_eq!(read_outputs(&big).unwrap().len(), OUTPUT_CAP + 1);
    }
}
