//! Naming files by content: size, SHA-256 and mode of a produced file
//! ([`describe_artifact`]), and the chunked hash-while-copying that
//! downloads and the cache use to check what they write. One place reads
//! and hashes files, in [`CHUNK`]s, so every digest is computed the same
//! way.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;

use muster_core::wire::types::Artifact;
use sha2::{Digest, Sha256};

use super::produced::{Found, ProducedError};

/// Bytes read, hashed and written at a time.
pub(super) const CHUNK: usize = 64 * 1024;

/// Size, SHA-256 and mode bits of a found file, read in [`CHUNK`]s.
pub async fn describe_artifact(found: &Found) -> Result<Artifact, ProducedError> {
    let file = found.file.clone();
    let hashed = tokio::task::spawn_blocking(move || -> io::Result<(u64, String, u32)> {
        let mut input = std::fs::File::open(&file)?;
        let mode = input.metadata()?.permissions().mode() & 0o7777;
        let (size, sha256) = hash_reader(&mut input, None)?;
        Ok((size, sha256, mode))
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)));
    let (size, sha256, mode) = hashed.map_err(|error| ProducedError::Io {
        doing: format!("artifact {}: could not read", found.path),
        file: found.file.clone(),
        error,
    })?;
    Ok(Artifact {
        path: found.path.clone(),
        size,
        sha256,
        mode,
    })
}

/// Reads `input` to its end in [`CHUNK`]s, hashing and, if given, writing
/// each chunk: the size and the lower-case hex SHA-256.
pub(super) fn hash_reader(
    input: &mut impl Read,
    mut output: Option<&mut std::fs::File>,
) -> io::Result<(u64, String)> {
    let mut buffer = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        if let Some(output) = output.as_mut() {
            output.write_all(&buffer[..n])?;
        }
        size += n as u64;
    }
    Ok((size, hex(hasher)))
}

/// The lower-case hex digest.
pub(super) fn hex(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}
