//! Where a download may write. An artifact's path and digest come from
//! another module (through the hub), so they are checked before they name a
//! file or a URL: the path is relative, normalised and stays below the
//! module's cwd; its folders are made as real folders (never written
//! through a link); a destination that already holds the right content is
//! left alone.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use muster_core::wire::types::{Artifact, Consumed};

use super::hash::hash_reader;
use super::TransferError;

/// Why an artifact's path or digest is refused before anything is written
/// or requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the path is empty")]
    EmptyPath,
    #[error("the path is absolute")]
    AbsolutePath,
    #[error("the path holds a NUL byte")]
    NulByte,
    #[error("the path has an empty part")]
    EmptyPart,
    #[error("the path has a `.` part")]
    DotPart,
    #[error("the path climbs out with `..`")]
    ClimbsOut,
    #[error("{0:?} is not a SHA-256 digest")]
    NotADigest(String),
    /// A folder on the way (shown as its path below the cwd) is a link.
    #[error("{0} is a link; artifacts are only written through real folders")]
    ThroughLink(String),
    /// A folder on the way (shown as its path below the cwd) is a file.
    #[error("{0} is a file, not a folder")]
    NotAFolder(String),
    #[error("a folder is in its place")]
    FolderInPlace,
}

/// Where a consumed artifact goes under `cwd`, once its path is found safe
/// and its folders are made; `None` if the right content is already there.
pub(super) async fn destination(
    cwd: &Path,
    consumed: &Consumed,
) -> Result<Option<PathBuf>, TransferError> {
    let artifact = &consumed.artifact;
    let from = consumed.from.as_str();
    let refuse = |reason: Refusal| TransferError::UnsafePath {
        from: from.to_owned(),
        path: artifact.path.clone(),
        reason,
    };
    let local = |doing: &str, file: PathBuf, error| TransferError::Io {
        doing: format!(
            "artifact {} from module {from}: could not {doing}",
            artifact.path
        ),
        file,
        error,
    };
    check_digest(&artifact.sha256).map_err(refuse)?;
    let parts: Vec<String> = safe_parts(&artifact.path)
        .map_err(refuse)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (cwd, wanted) = (cwd.to_owned(), artifact.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let destination = prepare_parents(&cwd, &parts)?;
        let there = already_there(&destination, &wanted)
            .map_err(|e| Prepared::Io(destination.clone(), e))?;
        Ok((destination, there))
    })
    .await
    .unwrap_or_else(|e| Err(Prepared::Io(PathBuf::new(), io::Error::other(e))));
    match checked {
        Ok((_, There::Yes)) => Ok(None),
        Ok((destination, There::No)) => Ok(Some(destination)),
        Ok((_, There::Folder)) => Err(refuse(Refusal::FolderInPlace)),
        Err(Prepared::Unsafe(reason)) => Err(refuse(reason)),
        Err(Prepared::Io(file, error)) => Err(local("prepare", file, error)),
    }
}

/// The parts of an artifact path that is relative, normalised and stays
/// below its folder; why not otherwise.
pub(super) fn safe_parts(path: &str) -> Result<Vec<&str>, Refusal> {
    if path.is_empty() {
        return Err(Refusal::EmptyPath);
    }
    if path.starts_with('/') {
        return Err(Refusal::AbsolutePath);
    }
    if path.contains('\0') {
        return Err(Refusal::NulByte);
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err(Refusal::EmptyPart),
            "." => return Err(Refusal::DotPart),
            ".." => return Err(Refusal::ClimbsOut),
            _ => {}
        }
    }
    Ok(parts)
}

/// Refuses anything but 64 lower-case hex digits, before it goes into a URL
/// or a file name.
pub(super) fn check_digest(sha256: &str) -> Result<(), Refusal> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(Refusal::NotADigest(sha256.to_owned()))
    }
}

/// Why a destination's folders could not be made.
enum Prepared {
    Unsafe(Refusal),
    Io(PathBuf, io::Error),
}

/// Makes the folders above `cwd/parts…`, each a real folder (a link, even
/// one that stays inside the cwd, is refused: nothing is written through
/// links), and returns the destination.
fn prepare_parents(cwd: &Path, parts: &[String]) -> Result<PathBuf, Prepared> {
    let (name, folders) = parts
        .split_last()
        .expect("safe_parts gives at least one part");
    std::fs::create_dir_all(cwd).map_err(|e| Prepared::Io(cwd.to_owned(), e))?;
    let mut folder = cwd.to_owned();
    for (i, part) in folders.iter().enumerate() {
        folder.push(part);
        let shown = || parts[..=i].join("/");
        let mut created = false;
        loop {
            match std::fs::symlink_metadata(&folder) {
                Ok(meta) if meta.is_dir() => break,
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Prepared::Unsafe(Refusal::ThroughLink(shown())))
                }
                Ok(_) => return Err(Prepared::Unsafe(Refusal::NotAFolder(shown()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created => {
                    // Someone else may make it meanwhile: look again.
                    match std::fs::create_dir(&folder) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => created = true,
                        Err(e) => return Err(Prepared::Io(folder, e)),
                    }
                }
                Err(e) => return Err(Prepared::Io(folder, e)),
            }
        }
    }
    Ok(folder.join(name))
}

/// What is at a download's destination.
enum There {
    /// A regular file (not a link) with the artifact's content; its mode
    /// has been made the artifact's.
    Yes,
    /// Nothing, or something to replace.
    No,
    /// A folder, which a download does not replace.
    Folder,
}

fn already_there(destination: &Path, artifact: &Artifact) -> io::Result<There> {
    let meta = match std::fs::symlink_metadata(destination) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(There::No),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        return Ok(There::Folder);
    }
    if !meta.is_file() || meta.len() != artifact.size {
        return Ok(There::No);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(destination)?;
    let (_, sha256) = hash_reader(&mut file, None)?;
    if sha256 != artifact.sha256 {
        return Ok(There::No);
    }
    let mode = artifact.mode & 0o7777;
    if meta.permissions().mode() & 0o7777 != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(There::Yes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_must_stay_below_their_folder() {
        for good in ["a", "a/b.txt", ".hidden", "a/..b"] {
            assert!(safe_parts(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/",
            "a/.",
        ] {
            assert!(safe_parts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_64_lower_case_hex_digits() {
        assert!(check_digest(&"ab".repeat(32)).is_ok());
        for bad in ["", "AB", "../x", &"AB".repeat(32), &"ab".repeat(33)] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
    }
}
