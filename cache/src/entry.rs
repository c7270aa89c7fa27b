//! The entry format: one byte stream per key, so an entry is one file in
//! the local folder and one artifact on a Turborepo server.
//!
//! It is a tar archive: `entry.json` first (the [`Manifest`]: outputs,
//! exit code, log, the list of artifacts), then `blobs/<sha256>` once per
//! distinct artifact content. Nothing else: reading refuses any other
//! member, any link, any path, so an entry can only ever write the blobs
//! its manifest lists, to the places the caller picks. Every blob is
//! checked against the manifest's size and SHA-256 before it is moved into
//! place, and none is moved unless all check, so a bad entry restores
//! nothing. Archives are written with zero mtimes and fixed modes, so the
//! same entry gives the same bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tempfile::TempPath;

use crate::digest::{hex, is_sha256_hex, BUFFER_BYTES};
use crate::store::check_key;
use crate::CacheError;

/// The format this crate writes and reads. An entry of another format is
/// a miss (written by another muster version).
pub const FORMAT: u32 = 1;

/// The log kept in an entry: its last MiB, from a line start.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;

/// `entry.json` is at most this large, on both sides.
const MAX_MANIFEST_BYTES: u64 = 2 * 1024 * 1024;

const MANIFEST_NAME: &str = "entry.json";
const BLOBS: &str = "blobs/";

/// What a module's run left, besides its files. Secret values never
/// enter an entry: the caller masks the log, and does not cache a module
/// whose outputs hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The cache key (lowercase hex) this entry was written for.
    pub key: String,
    /// The module's id, for messages.
    pub module: String,
    pub exit_code: i32,
    pub duration_ms: u64,
    /// The outputs passed to dependents.
    pub outputs: BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
    /// The masked log; [`write_entry`] keeps its last [`MAX_LOG_BYTES`].
    pub log: String,
}

/// A file the module produced, restored to `path` on a hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the module's folder, `/`-separated, without `..`.
    pub path: String,
    pub size: u64,
    /// Lowercase hex; names its blob.
    pub sha256: String,
    /// Unix permission bits (`0o755`); the caller applies them.
    pub mode: u32,
}

/// The last [`MAX_LOG_BYTES`] of `log`, starting at a line, with a first
/// line saying what was cut. The end of a log is kept because that is
/// where a build says what it did (and what failed).
pub fn cap_log(log: &str) -> Cow<'_, str> {
    if log.len() <= MAX_LOG_BYTES {
        return Cow::Borrowed(log);
    }
    let note = "[earlier output not cached: the cache keeps a log's last MiB]\n";
    let mut start = log.len() - (MAX_LOG_BYTES - note.len());
    while !log.is_char_boundary(start) {
        start += 1;
    }
    // From the first line that starts in the kept part; one very long last
    // line is kept from a character instead.
    let at_line_start = log.as_bytes()[start - 1] == b'\n';
    if let Some(newline) = log[start..].find('\n').filter(|_| !at_line_start) {
        if start + newline + 1 < log.len() {
            start += newline + 1;
        }
    }
    Cow::Owned(format!("{note}{}", &log[start..]))
}

/// Writes the entry for `manifest` to `out` (created or replaced). Each
/// distinct blob is streamed from the file `blob_source(sha256)`; a file
/// whose size or content is no longer the manifest's is an error, never a
/// wrong entry.
pub fn write_entry(
    manifest: &Manifest,
    blob_source: &dyn Fn(&str) -> PathBuf,
    out: &Path,
) -> Result<(), CacheError> {
    if let Err(reason) = validate(manifest) {
        return Err(CacheError::corrupt(
            out,
            format!("cannot write it: {reason}"),
        ));
    }
    let log = cap_log(&manifest.log);
    let json = match log {
        Cow::Borrowed(_) => serde_json::to_vec(manifest),
        Cow::Owned(log) => serde_json::to_vec(&Manifest {
            log,
            ..manifest.clone()
        }),
    }
    .expect("a manifest is always JSON");
    if json.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(CacheError::ManifestTooLarge {
            module: manifest.module.clone(),
            bytes: json.len() as u64,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let write_error = |e| CacheError::io(out, "write the cache entry", e);
    let file = fs::File::create(out).map_err(write_error)?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(BUFFER_BYTES, file));
    builder
        .append(&header(MANIFEST_NAME, json.len() as u64), json.as_slice())
        .map_err(write_error)?;
    let mut written = HashSet::new();
    for artifact in &manifest.artifacts {
        if written.insert(artifact.sha256.as_str()) {
            append_blob(&mut builder, artifact, &blob_source(&artifact.sha256), out)?;
        }
    }
    let mut writer = builder.into_inner().map_err(write_error)?;
    writer.flush().map_err(write_error)
}

/// Reads the entry at `archive`, written for `key`, and puts each blob at
/// `blob_dest(sha256)` (its folder is created). Returns the manifest. A
/// malformed entry is [`CacheError::Corrupt`], a blob that is not what
/// the manifest says is [`CacheError::Tampered`]: both are misses, and
/// neither moves any blob into place.
pub fn read_entry(
    archive: &Path,
    key: &str,
    blob_dest: &dyn Fn(&str) -> PathBuf,
) -> Result<Manifest, CacheError> {
    let file =
        fs::File::open(archive).map_err(|e| CacheError::io(archive, "open the cache entry", e))?;
    let mut tar = tar::Archive::new(BufReader::with_capacity(BUFFER_BYTES, file));
    let unreadable = |e: io::Error| CacheError::corrupt(archive, format!("cannot be read ({e})"));
    let mut entries = tar.entries().map_err(unreadable)?.raw(true);
    let first = entries
        .next()
        .ok_or_else(|| CacheError::corrupt(archive, "it is empty"))?
        .map_err(unreadable)?;
    let manifest = read_manifest(first, archive, key)?;
    let mut expected = expected_blobs(&manifest).map_err(|r| CacheError::corrupt(archive, r))?;
    let mut pending: Vec<(TempPath, PathBuf)> = Vec::with_capacity(expected.len());
    let mut buffer = vec![0u8; BUFFER_BYTES];
    for entry in entries {
        let mut entry = entry.map_err(unreadable)?;
        let sha = blob_name(&entry).ok_or_else(|| {
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            CacheError::corrupt(archive, format!("it holds {name:?}, which is not a blob"))
        })?;
        let size = expected.remove(&sha).ok_or_else(|| {
            CacheError::corrupt(archive, format!("it holds blob {sha}, unlisted or twice"))
        })?;
        let dest = blob_dest(&sha);
        let temp = extract_blob(&mut entry, &sha, size, &dest, archive, &mut buffer)?;
        pending.push((temp, dest));
    }
    if let Some(sha) = expected.keys().next() {
        return Err(CacheError::corrupt(archive, format!("it lacks blob {sha}")));
    }
    for (temp, dest) in pending {
        temp.persist(&dest)
            .map_err(|e| CacheError::io(&dest, "move the restored blob into place", e.error))?;
    }
    Ok(manifest)
}

/// A regular-file header with fixed metadata.
fn header(path: &str, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(path)
        .expect("entry paths are short and relative");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header
}

/// Streams one blob from `source` into the archive, checking that it is
/// still the size and content the manifest lists.
fn append_blob(
    builder: &mut tar::Builder<BufWriter<fs::File>>,
    artifact: &Artifact,
    source: &Path,
    out: &Path,
) -> Result<(), CacheError> {
    let changed = |reason: String| CacheError::Changed {
        path: source.to_owned(),
        reason,
    };
    let file =
        fs::File::open(source).map_err(|e| CacheError::io(source, "read the artifact", e))?;
    let length = file
        .metadata()
        .map_err(|e| CacheError::io(source, "read the artifact", e))?
        .len();
    if length != artifact.size {
        return Err(changed(format!("{length} bytes, not {}", artifact.size)));
    }
    let mut reader = CheckedReader {
        inner: file.take(artifact.size),
        remaining: artifact.size,
        hasher: Sha256::new(),
        failed: None,
    };
    let name = format!("{BLOBS}{}", artifact.sha256);
    if let Err(error) = builder.append(&header(&name, artifact.size), &mut reader) {
        return Err(match reader.failed.take() {
            Some(reason) => changed(reason),
            None => CacheError::io(out, "write the cache entry", error),
        });
    }
    let digest = hex(&reader.hasher.finalize());
    if digest != artifact.sha256 {
        return Err(changed(format!("its SHA-256 is now {digest}")));
    }
    Ok(())
}

/// Reads exactly `remaining` bytes, hashing them; a short file is an
/// error it records, so the archive never gets a short member.
struct CheckedReader<R> {
    inner: io::Take<R>,
    remaining: u64,
    hasher: Sha256,
    failed: Option<String>,
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(error) => {
                self.failed = Some(format!("reading it failed: {error}"));
                return Err(error);
            }
        };
        if n == 0 && self.remaining > 0 {
            self.failed = Some(format!("it ended {} bytes early", self.remaining));
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.remaining -= n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The first member: it must be `entry.json`, of a bounded size, for this
/// key, in this format, with safe paths.
fn read_manifest<R: Read>(
    mut entry: tar::Entry<'_, R>,
    archive: &Path,
    key: &str,
) -> Result<Manifest, CacheError> {
    let corrupt = |reason: String| CacheError::corrupt(archive, reason);
    if &*entry.path_bytes() != MANIFEST_NAME.as_bytes() || !is_file(&entry) {
        return Err(corrupt(format!("it does not start with {MANIFEST_NAME}")));
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(corrupt(format!(
            "its manifest is {} bytes, over the {MAX_MANIFEST_BYTES} a manifest may be",
            entry.size()
        )));
    }
    let mut json = Vec::with_capacity(entry.size() as usize);
    entry
        .by_ref()
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut json)
        .map_err(|e| corrupt(format!("cannot be read ({e})")))?;
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| corrupt(format!("its manifest is not valid: {e}")))?;
    if manifest.format != FORMAT {
        return Err(corrupt(format!(
            "it is in format {}, not {FORMAT} (written by another muster version)",
            manifest.format
        )));
    }
    if manifest.key != key {
        return Err(corrupt(format!(
            "it was written for key {}, not {key}",
            manifest.key
        )));
    }
    validate(&manifest).map_err(corrupt)?;
    Ok(manifest)
}

/// What [`write_entry`] and [`read_entry`] both insist on.
fn validate(manifest: &Manifest) -> Result<(), String> {
    if manifest.format != FORMAT {
        return Err(format!("format {} is not {FORMAT}", manifest.format));
    }
    check_key(&manifest.key).map_err(|e| e.to_string())?;
    for artifact in &manifest.artifacts {
        if !is_safe_path(&artifact.path) {
            return Err(format!(
                "artifact path {:?} is not relative and inside the module folder",
                artifact.path
            ));
        }
        if !is_sha256_hex(&artifact.sha256) {
            return Err(format!(
                "artifact {} has {:?} as SHA-256",
                artifact.path, artifact.sha256
            ));
        }
    }
    expected_blobs(manifest).map(|_| ())
}

/// The distinct blobs a manifest lists, with their sizes.
fn expected_blobs(manifest: &Manifest) -> Result<HashMap<String, u64>, String> {
    let mut blobs = HashMap::with_capacity(manifest.artifacts.len());
    for artifact in &manifest.artifacts {
        let size = *blobs
            .entry(artifact.sha256.clone())
            .or_insert(artifact.size);
        if size != artifact.size {
            return Err(format!("blob {} is listed with two sizes", artifact.sha256));
        }
    }
    Ok(blobs)
}

/// `a/b.txt` yes; `/a`, `../a`, `a/../b`, `a\b`, `` no.
fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn is_file<R: Read>(entry: &tar::Entry<'_, R>) -> bool {
    matches!(
        entry.header().entry_type(),
        tar::EntryType::Regular | tar::EntryType::Continuous
    )
}

/// The SHA-256 a member is the blob of, if it is one.
fn blob_name<R: Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    let path = entry.path_bytes();
    let sha = std::str::from_utf8(&path).ok()?.strip_prefix(BLOBS)?;
    (is_sha256_hex(sha) && is_file(entry)).then(|| sha.to_owned())
}

/// Copies one blob to a temporary file beside `dest`, checking its size
/// and SHA-256; the file is removed again unless the caller persists it.
fn extract_blob<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    sha: &str,
    size: u64,
    dest: &Path,
    archive: &Path,
    buffer: &mut [u8],
) -> Result<TempPath, CacheError> {
    let tampered = |reason: String| CacheError::Tampered {
        archive: archive.to_owned(),
        blob: sha.to_owned(),
        reason,
    };
    if entry.size() != size {
        return Err(tampered(format!(
            "is {} bytes, not {size} as listed",
            entry.size()
        )));
    }
    let folder = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(folder).map_err(|e| CacheError::io(folder, "create the folder", e))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".muster-restore-")
        .tempfile_in(folder)
        .map_err(|e| CacheError::io(folder, "create a file to restore a blob into", e))?;
    let mut hasher = Sha256::new();
    loop {
        let n = match entry.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CacheError::corrupt(
                    archive,
                    format!("cannot be read ({e})"),
                ))
            }
        };
        hasher.update(&buffer[..n]);
        temp.write_all(&buffer[..n])
            .map_err(|e| CacheError::io(temp.path(), "restore a blob", e))?;
    }
    let digest = hex(&hasher.finalize());
    if digest != sha {
        return Err(tampered(format!("has SHA-256 {digest}")));
    }
    let temp = temp.into_temp_path();
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o644))
        .map_err(|e| CacheError::io(&*temp, "restore a blob", e))?;
    Ok(temp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ab12";

    /// A folder with artifact files and a manifest listing them.
    struct Fixture {
        dir: tempfile::TempDir,
        manifest: Manifest,
    }

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    fn fixture(files: &[(&str, &[u8])]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("src")).unwrap();
        let mut artifacts = Vec::new();
        for (path, data) in files {
            let file = dir.path().join("src").join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, data).unwrap();
            artifacts.push(Artifact {
                path: path.to_string(),
                size: data.len() as u64,
                sha256: sha(data),
                mode: 0o644,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            key: KEY.into(),
            module: "build".into(),
            exit_code: 0,
            duration_ms: 1234,
            outputs: BTreeMap::from([("version".to_owned(), "1.2.3".to_owned())]),
            artifacts,
            log: "compiling\ndone\n".into(),
        };
        Fixture { dir, manifest }
    }

    impl Fixture {
        /// Writes the entry, blobs read by artifact path from `src/`.
        fn write(&self) -> PathBuf {
            let src = self.dir.path().join("src");
            let by_sha: HashMap<String, PathBuf> = self
                .manifest
                .artifacts
                .iter()
                .map(|a| (a.sha256.clone(), src.join(&a.path)))
                .collect();
            let out = self.dir.path().join("entry.tar");
            write_entry(&self.manifest, &|sha| by_sha[sha].clone(), &out).unwrap();
            out
        }

        fn restore_dir(&self) -> PathBuf {
            self.dir.path().join("restored")
        }

        fn read(&self, archive: &Path) -> Result<Manifest, CacheError> {
            let restore = self.restore_dir();
            read_entry(archive, KEY, &|sha| restore.join(sha))
        }
    }

    #[test]
    fn round_trips_the_manifest_and_blobs() {
        let big = vec![9u8; BUFFER_BYTES * 3 + 17];
        let fixture = fixture(&[
            ("a.txt", b"alpha"),
            ("dist/b.bin", &big),
            ("copy.txt", b"alpha"),
        ]);
        let archive = fixture.write();
        let manifest = fixture.read(&archive).unwrap();
        assert_eq!(manifest, fixture.manifest);
        let restored = fixture.restore_dir();
        assert_eq!(fs::read(restored.join(sha(b"alpha"))).unwrap(), b"alpha");
        assert_eq!(fs::read(restored.join(sha(&big))).unwrap(), big);
        // Two distinct blobs, no leftovers.
        assert_eq!(fs::read_dir(&restored).unwrap().count(), 2);
    }

    #[test]
    fn the_same_entry_gives_the_same_bytes() {
        let fixture = fixture(&[("a.txt", b"alpha")]);
        let first = fs::read(fixture.write()).unwrap();
        let second = fs::read(fixture.write()).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn a_changed_artifact_is_not_written() {
        let fixture = fixture(&[("a.txt", b"alpha")]);
        fs::write(fixture.dir.path().join("src/a.txt"), b"ALPHA").unwrap();
        let out = fixture.dir.path().join("entry.tar");
        let src = fixture.dir.path().join("src/a.txt");
        let error = write_entry(&fixture.manifest, &|_| src.clone(), &out).unwrap_err();
        assert!(matches!(error, CacheError::Changed { .. }), "{error}");
        assert!(error.to_string().contains("a.txt"), "{error}");
        fs::write(&src, b"alph").unwrap();
        let error = write_entry(&fixture.manifest, &|_| src.clone(), &out).unwrap_err();
        assert!(error.to_string().contains("4 bytes, not 5"), "{error}");
    }

    /// Rewrites the archive's bytes with `edit`, then reads it.
    fn read_edited(edit: impl Fn(&mut Vec<u8>)) -> (Fixture, Result<Manifest, CacheError>) {
        let fixture = fixture(&[("a.txt", b"alpha"), ("b.txt", b"bravo")]);
        let archive = fixture.write();
        let mut bytes = fs::read(&archive).unwrap();
        edit(&mut bytes);
        fs::write(&archive, &bytes).unwrap();
        let result = fixture.read(&archive);
        (fixture, result)
    }

    #[test]
    fn a_tampered_blob_is_a_miss_and_restores_nothing() {
        let (fixture, result) = read_edited(|bytes| {
            let at = bytes.windows(5).position(|w| w == b"bravo").unwrap();
            bytes[at] = b'B';
        });
        let error = result.unwrap_err();
        assert!(
            matches!(error, CacheError::Tampered { .. }) && error.is_miss(),
            "{error}"
        );
        assert!(error.to_string().contains(&sha(b"bravo")), "{error}");
        let restored = fixture.restore_dir();
        assert_eq!(
            fs::read_dir(restored).unwrap().count(),
            0,
            "nothing moved into place"
        );
    }

    #[test]
    fn a_truncated_entry_is_a_miss() {
        for keep in [0, 100, 512, 1024 + 512 + 3, 2048 + 700] {
            let (_, result) = read_edited(|bytes| bytes.truncate(keep));
            let error = result.unwrap_err();
            assert!(error.is_miss(), "kept {keep}: {error}");
        }
    }

    #[test]
    fn an_entry_for_another_key_is_a_miss() {
        let fixture = fixture(&[("a.txt", b"alpha")]);
        let archive = fixture.write();
        let error =
            read_entry(&archive, "cd34", &|sha| fixture.restore_dir().join(sha)).unwrap_err();
        assert!(
            error.is_miss() && error.to_string().contains("written for key ab12"),
            "{error}"
        );
    }

    /// A member of a hand-made archive: path, type, data.
    type Member<'a> = (&'a str, tar::EntryType, &'a [u8]);

    /// An archive built by hand, as a hostile writer might.
    fn handmade(members: &[Member]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        let mut builder = tar::Builder::new(fs::File::create(&path).unwrap());
        for (name, kind, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            // Bypass set_path's checks, as a hostile writer would.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap();
        (dir, path)
    }

    fn manifest_json(artifacts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut manifest = fixture(&[]).manifest;
        manifest.artifacts = artifacts
            .iter()
            .map(|(path, data)| Artifact {
                path: path.to_string(),
                size: data.len() as u64,
                sha256: sha(data),
                mode: 0o644,
            })
            .collect();
        serde_json::to_vec(&manifest).unwrap()
    }

    #[test]
    fn refuses_members_other_than_the_manifest_and_blobs() {
        let regular = tar::EntryType::Regular;
        let json = manifest_json(&[("a", b"x")]);
        let blob = format!("blobs/{}", sha(b"x"));
        let cases: Vec<(Vec<Member>, &str)> = vec![
            (
                vec![(blob.as_str(), regular, b"x")],
                "does not start with entry.json",
            ),
            (
                vec![("entry.json", regular, &json), ("../evil", regular, b"x")],
                "\"../evil\", which is not a blob",
            ),
            (
                vec![
                    ("entry.json", regular, &json),
                    (blob.as_str(), tar::EntryType::Symlink, b""),
                ],
                "which is not a blob",
            ),
            (
                vec![
                    ("entry.json", regular, &json),
                    (blob.as_str(), regular, b"x"),
                    (blob.as_str(), regular, b"x"),
                ],
                "unlisted or twice",
            ),
            (vec![("entry.json", regular, &json)], "lacks blob"),
            (
                vec![("entry.json", regular, b"{not json")],
                "manifest is not valid",
            ),
        ];
        for (members, expected) in cases {
            let (dir, path) = handmade(&members);
            let error = read_entry(&path, KEY, &|sha| dir.path().join(sha)).unwrap_err();
            assert!(error.is_miss(), "{error}");
            assert!(error.to_string().contains(expected), "{expected}: {error}");
        }
        let (dir, path) = handmade(&[
            ("entry.json", regular, &json),
            (blob.as_str(), regular, b"x"),
        ]);
        read_entry(&path, KEY, &|sha| dir.path().join(sha)).unwrap();
    }

    #[test]
    fn refuses_unsafe_artifact_paths() {
        for path in ["/etc/passwd", "../up", "a/../../b", "", "a\\b"] {
            let json = manifest_json(&[(path, b"x")]);
            let (dir, archive) = handmade(&[("entry.json", tar::EntryType::Regular, &json)]);
            let error = read_entry(&archive, KEY, &|sha| dir.path().join(sha)).unwrap_err();
            assert!(
                error.to_string().contains("not relative"),
                "{path}: {error}"
            );
        }
    }

    #[test]
    fn refuses_an_oversized_manifest_before_reading_it() {
        let (dir, path) = handmade(&[("entry.json", tar::EntryType::Regular, b"{}")]);
        // Claim a 3 MiB manifest in the header.
        let mut bytes = fs::read(&path).unwrap();
        let mut header = tar::Header::new_gnu();
        header.as_mut_bytes().copy_from_slice(&bytes[..512]);
        header.set_size(3 * 1024 * 1024);
        header.set_cksum();
        bytes[..512].copy_from_slice(header.as_bytes());
        fs::write(&path, bytes).unwrap();
        let error = read_entry(&path, KEY, &|sha| dir.path().join(sha)).unwrap_err();
        assert!(error.to_string().contains("over the 2097152"), "{error}");
    }

    #[test]
    fn logs_keep_their_last_mib_from_a_line() {
        assert_eq!(cap_log("short\n"), "short\n");
        let line = "x".repeat(99) + "\n";
        let log = line.repeat(20_000); // 2,000,000 bytes
        let capped = cap_log(&log);
        assert!(capped.len() <= MAX_LOG_BYTES, "{}", capped.len());
        assert!(capped.starts_with("[earlier output not cached"));
        let body = capped.split_once('\n').unwrap().1;
        assert!(body.starts_with(&line) && log.ends_with(body));
        let one_line = "é".repeat(MAX_LOG_BYTES);
        assert!(cap_log(&one_line).len() <= MAX_LOG_BYTES);
    }
}
