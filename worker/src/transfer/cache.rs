//! The worker's local blob cache (`<cache>/<sha256>`): one digest is
//! fetched from the hub once per worker, kept as a verified copy, and
//! copied to each module that consumes it. A per-digest lock makes modules
//! that want the same file at the same time wait for the first download
//! instead of repeating it, and every file is written as a temp file beside
//! its destination ([`Part`]) and renamed over it only once checked, so
//! nothing half-written is ever seen at a destination or in the cache.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, Weak};

use muster_core::wire::types::Artifact;
use tokio::sync::Mutex as AsyncMutex;

use super::hash::hash_reader;
use super::http::Failure;
use super::{Transfer, TransferError};

/// One lock per digest being fetched, shared by the clones of a
/// [`Transfer`]; dead entries are pruned.
#[derive(Clone, Default)]
pub(super) struct DigestLocks(Arc<StdMutex<HashMap<String, Weak<AsyncMutex<()>>>>>);

impl DigestLocks {
    /// The lock of one digest, shared by everyone fetching it now.
    pub(super) fn lock_for(&self, sha256: &str) -> Arc<AsyncMutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(sha256).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(AsyncMutex::new(()));
        locks.insert(sha256.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

/// Whether the cache holds a file of this size under the digest.
pub(super) async fn cache_holds(cached: &Path, size: u64) -> bool {
    tokio::fs::symlink_metadata(cached)
        .await
        .is_ok_and(|meta| meta.is_file() && meta.len() == size)
}

/// Why a copy from the cache failed.
pub(super) enum Placed {
    /// The cached file does not have the artifact's content.
    Corrupt(Failure),
    Io(&'static str, PathBuf, io::Error),
}

impl Placed {
    pub(super) fn into_error(
        self,
        transfer: &Transfer,
        from: &str,
        artifact: &Artifact,
    ) -> TransferError {
        match self {
            Placed::Corrupt(failure) => TransferError::Transfer {
                path: artifact.path.clone(),
                module: from.to_owned(),
                method: "GET",
                url: transfer.shown_url(&artifact.sha256),
                attempts: 1,
                failure: Box::new(failure),
            },
            Placed::Io(doing, file, error) => TransferError::Io {
                doing: format!(
                    "artifact {} from module {from}: could not {doing}",
                    artifact.path
                ),
                file,
                error,
            },
        }
    }
}

/// Copies the cached content to a temp file beside `destination`, checking
/// size and digest on the way, sets the mode and renames it over the
/// destination. A copy, not a hard link: a module that changes the file it
/// consumed (or its mode) must not change the cache under other modules.
pub(super) async fn place(
    cached: &Path,
    destination: &Path,
    artifact: &Artifact,
) -> Result<(), Placed> {
    let (cached, destination, artifact) =
        (cached.to_owned(), destination.to_owned(), artifact.clone());
    tokio::task::spawn_blocking(move || {
        let mut input = std::fs::File::open(&cached)
            .map_err(|e| Placed::Io("read the cached copy", cached.clone(), e))?;
        let (part, mut output) = Part::create(&destination)
            .map_err(|e| Placed::Io("create a file beside", destination.clone(), e))?;
        let written = hash_reader(&mut input, Some(&mut output))
            .map_err(|e| Placed::Io("copy to", part.path.clone(), e))?;
        let (size, sha256) = written;
        if size != artifact.size {
            return Err(Placed::Corrupt(Failure::SizeMismatch {
                expected: artifact.size,
                sent: format!("{size} bytes from the cache"),
            }));
        }
        if sha256 != artifact.sha256 {
            return Err(Placed::Corrupt(Failure::DigestMismatch {
                expected: artifact.sha256.clone(),
                got: sha256,
            }));
        }
        let mode = std::fs::Permissions::from_mode(artifact.mode & 0o7777);
        output
            .set_permissions(mode)
            .map_err(|e| Placed::Io("set the mode of", part.path.clone(), e))?;
        drop(output);
        part.persist(&destination)
            .map_err(|e| Placed::Io("rename into", destination.clone(), e))
    })
    .await
    .unwrap_or_else(|e| Err(Placed::Io("copy to", PathBuf::new(), io::Error::other(e))))
}

/// A temp file beside a destination, removed when dropped unless renamed
/// over it: nothing half-written outlives a failure, a panic or a cancel.
pub(super) struct Part {
    pub(super) path: PathBuf,
    kept: bool,
}

impl Part {
    /// Creates `.<name>.muster-<random>.part` beside `destination`, new
    /// (never through an existing file or link), readable only by the
    /// worker until its mode is set.
    pub(super) fn create(destination: &Path) -> io::Result<(Part, std::fs::File)> {
        let folder = destination.parent().unwrap_or(Path::new("."));
        let name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Keeps the temp name within the usual 255-byte limit.
        let mut cut = name.len().min(200);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        loop {
            let path = folder.join(format!(
                ".{}.muster-{:016x}.part",
                &name[..cut],
                rand::random::<u64>()
            ));
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match created {
                Ok(file) => return Ok((Part { path, kept: false }, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames the file over `destination` (atomically: readers see the
    /// old file or the whole new one).
    pub(super) fn persist(mut self, destination: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, destination)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_part_file_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("out.bin");
        let (part, _) = Part::create(&destination).unwrap();
        let name = part.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with(".out.bin.muster-") && name.ends_with(".part"));
        drop(part);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let (part, mut file) = Part::create(&destination).unwrap();
        file.write_all(b"x").unwrap();
        part.persist(&destination).unwrap();
        assert_eq!(std::fs::read(&destination).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
