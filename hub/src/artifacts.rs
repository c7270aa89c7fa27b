//! The artifact store: files a module produces on one worker and another
//! module consumes on a different one go through the hub, kept by content
//! (SHA-256) and moved over plain HTTP beside the SignalR hub:
//!
//! - `HEAD /hub/artifacts/{sha256}`: 200 with `Content-Length` if stored,
//!   else 404; workers ask first and skip what the hub already has.
//! - `PUT /hub/artifacts/{sha256}`: 201 once stored, 200 if it already was,
//!   422 if the body's digest differs, 413 past `max_artifact_bytes`, 408
//!   when no byte comes for `transfer_stall_timeout`.
//! - `GET /hub/artifacts/{sha256}`: 200 streaming the file with
//!   `Content-Length`, else 404.
//!
//! A malformed digest is 400 on every verb. The token is checked in
//! `server.rs` before any handler here runs, so a refused request is never
//! read.
//!
//! Invariants: the only thing from a client ever used as a file name is a
//! validated digest (64 lower-case hex characters); bodies go to and from
//! disk chunk by chunk and are never buffered whole; a file is under its
//! final name only once all of it arrived and matched its digest (written
//! in `tmp/`, then renamed, which is atomic); a temp file is removed on
//! every way out but that rename, including a client that goes away
//! mid-upload (a drop guard).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put, MethodRouter};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use crate::ids::random_id;

/// Where stored artifacts live under the store's folder.
const BLOBS: &str = "sha256";
/// Where uploads are written until their digest is checked.
const TMP: &str = "tmp";
/// Bytes gathered before a write to disk, and read per chunk when serving.
const CHUNK: usize = 256 * 1024;

/// The handlers for `/hub/artifacts/{sha256}`. Only PUT reads a body, and
/// it streams it, so axum's 2 MB default limit is lifted there; the store's
/// own `max_bytes` bounds it instead.
pub(crate) fn routes() -> MethodRouter<Arc<ArtifactStore>> {
    get(download)
        .head(exists)
        .merge(put(upload).layer(DefaultBodyLimit::disable()))
}

/// A lower-case hex SHA-256 digest: the only client input ever used as a
/// file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sha256Hex(String);

impl Sha256Hex {
    pub(crate) fn parse(text: &str) -> Result<Sha256Hex, ArtifactError> {
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if text.len() == 64 && text.bytes().all(hex) {
            Ok(Sha256Hex(text.to_owned()))
        } else {
            Err(ArtifactError::BadDigest)
        }
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The folder artifacts are kept in, and the bounds on an upload.
#[derive(Debug)]
pub(crate) struct ArtifactStore {
    blobs: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    stall_timeout: Duration,
}

/// How a complete, verified upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// It is now under its final name.
    Created,
    /// Another upload stored the same content first; this copy was dropped.
    AlreadyThere,
}

impl ArtifactStore {
    /// Creates `root/sha256` and `root/tmp` if needed; an error names the
    /// folder.
    pub(crate) async fn open(
        root: &Path,
        max_bytes: u64,
        stall_timeout: Duration,
    ) -> io::Result<ArtifactStore> {
        let store = ArtifactStore {
            blobs: root.join(BLOBS),
            tmp: root.join(TMP),
            max_bytes,
            stall_timeout,
        };
        for dir in [&store.blobs, &store.tmp] {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                let text = format!(
                    "cannot create the artifact store folder {}: {e}",
                    dir.display()
                );
                io::Error::new(e.kind(), text)
            })?;
        }
        Ok(store)
    }

    /// Where the artifact with this digest lives: `sha256/<first two>/<all>`.
    pub(crate) fn path_of(&self, digest: &Sha256Hex) -> PathBuf {
        self.blobs.join(&digest.0[..2]).join(&digest.0)
    }
}

/// Where a store in `dir` keeps the artifact with digest `sha256` (for a
/// resume checking that a kept module's files are still there). A digest
/// that is not one names no file.
pub fn stored_artifact(dir: &Path, sha256: &str) -> PathBuf {
    match Sha256Hex::parse(sha256).ok() {
        Some(digest) => dir.join(BLOBS).join(&digest.0[..2]).join(&digest.0),
        None => dir.join(BLOBS).join("not-a-digest"),
    }
}

impl ArtifactStore {
    /// The size of the stored artifact, or `None` when the hub lacks it.
    pub(crate) async fn size_of(&self, digest: &Sha256Hex) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path_of(digest)).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `body` to a temp file chunk by chunk while hashing it, then
    /// renames it to its final name if its digest is `expected`. On every
    /// error (and if this future is dropped) the temp file is removed.
    pub(crate) async fn receive<S, E>(
        &self,
        expected: &Sha256Hex,
        mut body: S,
    ) -> Result<(Stored, u64), ArtifactError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: fmt::Display,
    {
        let (temp, file) = TempFile::create(&self.tmp, expected)
            .await
            .map_err(ArtifactError::Io)?;
        let mut out = BufWriter::with_capacity(CHUNK, file);
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        loop {
            let chunk = match tokio::time::timeout(self.stall_timeout, body.next()).await {
                Err(_) => {
                    let after = self.stall_timeout;
                    return Err(ArtifactError::Stalled { after, received });
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, received, "artifact upload broken off");
                    return Err(ArtifactError::BodyFailed);
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            received += chunk.len() as u64;
            if received > self.max_bytes {
                return Err(ArtifactError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(ArtifactError::Io)?;
        }
        // No fsync: the store lives as long as one run, and a master that
        // crashes ends the run, so durability across a power loss buys
        // nothing here.
        out.flush().await.map_err(ArtifactError::Io)?;
        drop(out);
        let actual = format!("{:x}", hasher.finalize());
        if actual != expected.0 {
            return Err(ArtifactError::Mismatch {
                expected: expected.0.clone(),
                actual,
            });
        }
        if self
            .size_of(expected)
            .await
            .map_err(ArtifactError::Io)?
            .is_some()
        {
            return Ok((Stored::AlreadyThere, received));
        }
        let target = self.path_of(expected);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(ArtifactError::Io)?;
        }
        // Two uploads of the same content may both get here; the rename is
        // atomic and the contents are identical, so either order is fine.
        temp.persist(&target).await.map_err(ArtifactError::Io)?;
        Ok((Stored::Created, received))
    }
}

/// Why an artifact request was refused. The text is what the client reads:
/// it never includes paths or I/O details (those are logged).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArtifactError {
    #[error("not a SHA-256 digest: expected 64 lower-case hex characters")]
    BadDigest,
    #[error("the hub has no artifact with this digest")]
    NotFound,
    #[error("the artifact is larger than the hub's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no bytes for {}, after {received} bytes: upload aborted", humantime::format_duration(*after))]
    Stalled { after: Duration, received: u64 },
    #[error("the body's SHA-256 is {actual}, not {expected} as named in the URL")]
    Mismatch { expected: String, actual: String },
    #[error("the upload ended before its body was complete")]
    BodyFailed,
    #[error("the hub could not store or read the artifact")]
    Io(#[source] io::Error),
}

impl IntoResponse for ArtifactError {
    fn into_response(self) -> Response {
        let status = match &self {
            ArtifactError::BadDigest | ArtifactError::BodyFailed => StatusCode::BAD_REQUEST,
            ArtifactError::NotFound => StatusCode::NOT_FOUND,
            ArtifactError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ArtifactError::Stalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ArtifactError::Mismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ArtifactError::Io(e) => {
                tracing::error!(error = %e, "artifact store");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, self.to_string()).into_response()
    }
}

/// `HEAD`: whether the hub has it, and its size.
async fn exists(
    State(store): State<Arc<ArtifactStore>>,
    UrlPath(digest): UrlPath<String>,
) -> Result<Response, ArtifactError> {
    let digest = Sha256Hex::parse(&digest)?;
    let size = store
        .size_of(&digest)
        .await
        .map_err(ArtifactError::Io)?
        .ok_or(ArtifactError::NotFound)?;
    Ok(([(header::CONTENT_LENGTH, size)], Body::empty()).into_response())
}

/// `PUT`: stores the body if it matches its digest. What the hub already
/// has is answered 200 without reading the body.
async fn upload(
    State(store): State<Arc<ArtifactStore>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ArtifactError> {
    let digest = Sha256Hex::parse(&digest)?;
    if store
        .size_of(&digest)
        .await
        .map_err(ArtifactError::Io)?
        .is_some()
    {
        tracing::debug!(%peer, sha256 = %digest, "artifact already stored, upload skipped");
        return Ok((StatusCode::OK, "already stored").into_response());
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > store.max_bytes) {
        let limit = store.max_bytes;
        tracing::debug!(%peer, sha256 = %digest, ?announced, limit, "artifact upload too large");
        return Err(ArtifactError::TooLarge { limit });
    }
    let started = Instant::now();
    match store.receive(&digest, body.into_data_stream()).await {
        Ok((stored, bytes)) => {
            let rate = Rate(bytes, started.elapsed());
            tracing::debug!(%peer, sha256 = %digest, bytes, %rate, ?stored, "artifact received");
            Ok(match stored {
                Stored::Created => (StatusCode::CREATED, "stored").into_response(),
                Stored::AlreadyThere => (StatusCode::OK, "already stored").into_response(),
            })
        }
        Err(e @ ArtifactError::Mismatch { .. }) => {
            tracing::warn!(%peer, error = %e, "artifact upload refused");
            Err(e)
        }
        Err(e) => {
            tracing::debug!(%peer, sha256 = %digest, error = %e, "artifact upload refused");
            Err(e)
        }
    }
}

/// `GET`: streams the stored file from disk as it is (consumers verify the
/// digest themselves).
async fn download(
    State(store): State<Arc<ArtifactStore>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(digest): UrlPath<String>,
) -> Result<Response, ArtifactError> {
    let digest = Sha256Hex::parse(&digest)?;
    let file = match File::open(store.path_of(&digest)).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ArtifactError::NotFound),
        Err(e) => return Err(ArtifactError::Io(e)),
    };
    let size = file.metadata().await.map_err(ArtifactError::Io)?.len();
    let mut sent = Sent {
        peer,
        digest,
        size,
        bytes: 0,
        started: Instant::now(),
    };
    // `sent` lives in the closure, so it logs when the body is dropped:
    // after the last chunk, or when the client goes away.
    let stream = ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
        if let Ok(chunk) = &chunk {
            sent.add(chunk.len());
        }
        chunk
    });
    let headers = [
        (header::CONTENT_LENGTH, size.to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// A download in progress; logs what was sent when dropped.
struct Sent {
    peer: SocketAddr,
    digest: Sha256Hex,
    size: u64,
    bytes: u64,
    started: Instant,
}

impl Sent {
    /// A method, not a field update: the closure must own all of `Sent`
    /// (a closure capturing only `bytes` would drop it at once).
    fn add(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        let rate = Rate(self.bytes, self.started.elapsed());
        tracing::debug!(
            peer = %self.peer,
            sha256 = %self.digest,
            bytes = self.bytes,
            size = self.size,
            %rate,
            complete = self.bytes == self.size,
            "artifact sent"
        );
    }
}

/// Bytes over a duration, shown as MiB/s.
struct Rate(u64, Duration);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.1.as_secs_f64().max(1e-6);
        write!(f, "{:.1} MiB/s", self.0 as f64 / secs / (1024.0 * 1024.0))
    }
}

/// An upload's temp file in `tmp/`, removed when dropped unless it was
/// renamed to its final name.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    /// A new file with a unique name, so concurrent uploads of the same
    /// digest never share one.
    async fn create(dir: &Path, digest: &Sha256Hex) -> io::Result<(TempFile, File)> {
        let path = dir.join(format!("{digest}.{}.part", random_id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((TempFile { path: Some(path) }, file))
    }

    async fn persist(mut self, target: &Path) -> io::Result<()> {
        let path = self.path.as_ref().expect("only persist takes the path");
        tokio::fs::rename(path, target).await?;
        self.path = None;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // A blocking unlink in a destructor: one short syscall, and the
        // only way to also cover a handler future dropped mid-upload.
        if let Some(path) = self.path.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a temp upload")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, valid: bool) {
        assert_eq!(Sha256Hex::parse(text).is_ok(), valid, "{text:?}");
    }

    #[test]
    fn digests() {
        let good = "a".repeat(64);
        check(&good, true);
        check(&format!("{:x}", Sha256::digest(b"x")), true);
        check(&"a".repeat(63), false);
        check(&"a".repeat(65), false);
        check(&"A".repeat(64), false);
        check(&"g".repeat(64), false);
        check("../../etc/passwd", false);
        check(&format!("../{}", &good[3..]), false);
        check("", false);
    }

    #[tokio::test]
    async fn layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 10, Duration::from_secs(1))
            .await
            .unwrap();
        let digest = Sha256Hex::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(
            store.path_of(&digest),
            dir.path().join("sha256").join("ab").join("ab".repeat(32))
        );
        assert!(dir.path().join("tmp").is_dir());
    }

    #[tokio::test]
    async fn a_dropped_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20, Duration::from_secs(5))
            .await
            .unwrap();
        let digest = Sha256Hex::parse(&format!("{:x}", Sha256::digest(b"hello"))).unwrap();
        // A body that sends one chunk and then never ends.
        let body = futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"hel"))])
            .chain(futures_util::stream::pending());
        let upload = store.receive(&digest, Box::pin(body));
        let _ = tokio::time::timeout(Duration::from_millis(200), upload).await;
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(store.size_of(&digest).await.unwrap(), None);
    }
}
