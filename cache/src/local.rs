//! The local cache: a folder (default `.muster/cache/` beside the
//! pipeline) shared by every muster run on the machine, with a size cap.
//!
//! Layout: `<dir>/<first two hex digits>/<key>.tar`, and `<key>.tag` (the
//! signature) beside it when the entry is signed. A put writes both to
//! temporary files in the same folder, then renames them into place, so
//! no reader ever sees half an entry; concurrent puts of one key both
//! complete and the last one wins whole.
//!
//! The two renames (and a reader's look at the pair) happen under a
//! `flock` on `<dir>/.lock`, held for microseconds, so an archive is
//! never paired with another put's tag. A get hard-links the archive to a
//! name of its own before it lets go of the lock, so eviction or a later
//! put cannot change what it reads. A crash between the two renames can
//! leave a mismatched pair: its signature fails, it is a miss, and the
//! next put of that key replaces it.
//!
//! Least recently used goes first: a hit sets the archive's mtime to now;
//! after a put that takes the folder over `max_bytes`, the oldest entries
//! are removed until it is under 90% of it. Temporary files that a
//! crashed run left are removed by the same sweep once an hour old.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tempfile::TempPath;

use crate::store::{check_key, Fetched, Store, StoreFuture};
use crate::CacheError;

/// Longest wait for the folder's lock. Holders keep it for a few
/// renames, so reaching this means the lock is stuck (or not supported).
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_RETRY: Duration = Duration::from_millis(5);

/// A tag file longer than this is not one of ours.
const MAX_TAG_BYTES: u64 = 1024;

/// Temporary files older than this belong to a run that died.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Prefix of every temporary file the store makes.
const TEMP_PREFIX: &str = ".muster-";

/// A cache folder. Cheap to clone; clones share the folder.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    lock: PathBuf,
    max_bytes: u64,
    /// The folder's size as last scanned plus what this store put since,
    /// and puts since that scan: a put scans the folder only when the
    /// estimate passes the cap, or every [`RESCAN_EVERY`] puts (other runs
    /// write too), so filling a cache is not quadratic in its entries.
    estimate: std::sync::Mutex<Option<(u64, u32)>>,
}

/// Puts between two scans of the folder at most.
const RESCAN_EVERY: u32 = 256;

impl LocalStore {
    /// Opens (creating it if needed) the cache folder `dir`, to be kept
    /// under `max_bytes`.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<LocalStore, CacheError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, "create the cache folder", e))?;
        let lock = dir.join(".lock");
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lock)
            .map_err(|e| CacheError::io(&lock, "create the cache's lock file", e))?;
        Ok(LocalStore {
            inner: Arc::new(Inner {
                dir,
                lock,
                max_bytes,
                estimate: std::sync::Mutex::new(None),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Runs `job` on a blocking thread: everything here is file system
    /// work, and a large copy must not hold up the runtime.
    fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Inner) -> Result<T, CacheError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let dir = inner.dir.clone();
            match tokio::task::spawn_blocking(move || job(&inner)).await {
                Ok(result) => result,
                Err(error) => match error.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(_) => Err(CacheError::io(
                        dir,
                        "finish: the runtime is shutting down",
                        io::ErrorKind::Interrupted.into(),
                    )),
                },
            }
        })
    }
}

impl Store for LocalStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Fetched>> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.get(&key))
    }

    fn contains<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            check_key(&key)?;
            Ok(inner.archive_path(&key).is_file())
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        archive: &'a Path,
        tag: Option<&'a str>,
        _duration_ms: u64,
    ) -> StoreFuture<'a, ()> {
        let (key, archive, tag) = (key.to_owned(), archive.to_owned(), tag.map(str::to_owned));
        self.blocking(move |inner| {
            inner.put(&key, &archive, tag.as_deref())?;
            let added = fs::metadata(&archive).map_or(0, |m| m.len());
            if inner.may_be_over(added) {
                inner.evict_if_over()?;
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("the local cache at {}", self.inner.dir.display())
    }
}

impl Inner {
    fn shard(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..key.len().min(2)])
    }

    fn archive_path(&self, key: &str) -> PathBuf {
        self.shard(key).join(format!("{key}.tar"))
    }

    fn tag_path(&self, key: &str) -> PathBuf {
        self.shard(key).join(format!("{key}.tag"))
    }

    fn get(&self, key: &str) -> Result<Option<Fetched>, CacheError> {
        check_key(key)?;
        let archive = self.archive_path(key);
        let shard = self.shard(key);
        if !shard.is_dir() {
            return Ok(None);
        }
        let (tag, copy) = {
            let _lock = self.lock(FlockArg::LockSharedNonblock)?;
            let Some(copy) = own_copy(&archive, &shard)? else {
                return Ok(None);
            };
            (read_tag(&self.tag_path(key))?, copy)
        };
        touch(&archive);
        tracing::debug!(key, cache = %self.dir.display(), "local cache hit");
        Ok(Some(Fetched { archive: copy, tag }))
    }

    fn put(&self, key: &str, archive: &Path, tag: Option<&str>) -> Result<(), CacheError> {
        check_key(key)?;
        let shard = self.shard(key);
        fs::create_dir_all(&shard)
            .map_err(|e| CacheError::io(&shard, "create the cache folder", e))?;
        let temp_archive = temp_in(&shard, "put-")?;
        fs::copy(archive, &temp_archive)
            .map_err(|e| CacheError::io(archive, "copy the entry into the cache", e))?;
        let temp_tag = match tag {
            Some(tag) => {
                let temp = temp_in(&shard, "tag-")?;
                fs::write(&temp, tag)
                    .map_err(|e| CacheError::io(&*temp, "write the entry's tag", e))?;
                Some(temp)
            }
            None => None,
        };
        let destination = self.archive_path(key);
        let tag_path = self.tag_path(key);
        let _lock = self.lock(FlockArg::LockExclusiveNonblock)?;
        temp_archive
            .persist(&destination)
            .map_err(|e| CacheError::io(&destination, "move the entry into place", e.error))?;
        match temp_tag {
            Some(temp) => temp.persist(&tag_path).map_err(|e| {
                CacheError::io(&tag_path, "move the entry's tag into place", e.error)
            })?,
            None => remove_if_there(&tag_path)?,
        }
        tracing::debug!(key, cache = %self.dir.display(), "stored in the local cache");
        Ok(())
    }

    /// Removes the least recently used entries while the folder is over
    /// its cap, down to 90% of it.
    /// Adds `added` bytes to the estimate; true when the folder should be
    /// scanned (the estimate passed the cap, or it is time to look again).
    fn may_be_over(&self, added: u64) -> bool {
        let mut estimate = self.estimate.lock().expect("not poisoned");
        match estimate.as_mut() {
            Some((total, puts)) => {
                *total += added;
                *puts += 1;
                *total > self.max_bytes || *puts >= RESCAN_EVERY
            }
            None => true,
        }
    }

    fn evict_if_over(&self) -> Result<(), CacheError> {
        let (mut entries, mut total) = self.scan()?;
        let remember = |total: u64| {
            *self.estimate.lock().expect("not poisoned") = Some((total, 0));
        };
        if total <= self.max_bytes {
            remember(total);
            return Ok(());
        }
        let target = self.max_bytes / 10 * 9;
        entries.sort_by_key(|e| e.used);
        let _lock = self.lock(FlockArg::LockExclusiveNonblock)?;
        let mut removed = 0usize;
        for entry in entries {
            if total <= target {
                break;
            }
            // Used since the scan: a hit touched it, keep it.
            let used = fs::metadata(&entry.archive).and_then(|m| m.modified());
            if used.ok() != Some(entry.used) {
                continue;
            }
            remove_if_there(&entry.archive)?;
            remove_if_there(&entry.archive.with_extension("tag"))?;
            total = total.saturating_sub(entry.bytes);
            removed += 1;
        }
        tracing::debug!(removed, total, cap = self.max_bytes, cache = %self.dir.display(), "evicted");
        remember(total);
        Ok(())
    }

    /// Every entry with its size and last use, and the folder's total.
    /// Removes temporary files a dead run left.
    fn scan(&self) -> Result<(Vec<Scanned>, u64), CacheError> {
        let mut entries = Vec::new();
        let mut total = 0u64;
        let now = SystemTime::now();
        for shard in read_dir(&self.dir)? {
            if !shard.is_dir() {
                continue;
            }
            for file in read_dir(&shard)? {
                let Ok(meta) = fs::symlink_metadata(&file) else {
                    continue; // removed meanwhile
                };
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let modified = meta.modified().unwrap_or(now);
                if name.starts_with(TEMP_PREFIX) {
                    if now.duration_since(modified).unwrap_or_default() > STALE_TEMP {
                        remove_if_there(&file)?;
                    } else {
                        total += meta.len();
                    }
                } else if name.ends_with(".tar") {
                    let tag = fs::metadata(file.with_extension("tag")).map_or(0, |m| m.len());
                    let bytes = meta.len() + tag;
                    total += bytes;
                    entries.push(Scanned {
                        archive: file,
                        bytes,
                        used: modified,
                    });
                }
            }
        }
        Ok((entries, total))
    }

    /// Takes the folder's lock, waiting at most [`LOCK_WAIT`].
    fn lock(&self, kind: FlockArg) -> Result<Flock<fs::File>, CacheError> {
        let waited_since = std::time::Instant::now();
        loop {
            let file = fs::File::open(&self.lock)
                .map_err(|e| CacheError::io(&self.lock, "open the cache's lock file", e))?;
            match Flock::lock(file, kind) {
                Ok(lock) => return Ok(lock),
                Err((_, Errno::EWOULDBLOCK)) if waited_since.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(CacheError::Locked {
                        lock: self.lock.clone(),
                        waited_ms: LOCK_WAIT.as_millis() as u64,
                    })
                }
                Err((_, errno)) => {
                    return Err(CacheError::io(
                        &self.lock,
                        "lock the cache",
                        io::Error::from_raw_os_error(errno as i32),
                    ))
                }
            }
        }
    }
}

/// An entry found by [`Inner::scan`].
struct Scanned {
    archive: PathBuf,
    /// Archive and tag.
    bytes: u64,
    used: SystemTime,
}

/// A name of the caller's own for `archive`: a hard link (no copy), or a
/// copy where the file system has no hard links. `None` when there is no
/// archive.
fn own_copy(archive: &Path, shard: &Path) -> Result<Option<TempPath>, CacheError> {
    let linked = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}get-"))
        .make_in(shard, |path| fs::hard_link(archive, path));
    match linked {
        Ok(file) => Ok(Some(file.into_temp_path())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(_) => {
            let copy = temp_in(shard, "get-")?;
            match fs::copy(archive, &copy) {
                Ok(_) => Ok(Some(copy)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(CacheError::io(archive, "read the cache entry", e)),
            }
        }
    }
}

/// The tag beside an entry, if there is one.
fn read_tag(path: &Path) -> Result<Option<String>, CacheError> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::io(path, "read the entry's tag", e)),
    };
    let mut tag = String::new();
    file.take(MAX_TAG_BYTES)
        .read_to_string(&mut tag)
        .map_err(|e| CacheError::io(path, "read the entry's tag", e))?;
    Ok(Some(tag))
}

/// A new empty temporary file in `folder`, removed unless persisted.
fn temp_in(folder: &Path, kind: &str) -> Result<TempPath, CacheError> {
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{kind}"))
        .tempfile_in(folder)
        .map(|f| f.into_temp_path())
        .map_err(|e| CacheError::io(folder, "create a temporary file", e))
}

/// Marks an entry as just used. Failing to is harmless (it may go sooner).
fn touch(archive: &Path) {
    let result = fs::File::open(archive).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(error) = result {
        tracing::debug!(archive = %archive.display(), %error, "cannot mark the entry as used");
    }
}

fn remove_if_there(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(CacheError::io(path, "remove it from the cache", e))
        }
        _ => Ok(()),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let listing = fs::read_dir(dir).map_err(|e| CacheError::io(dir, "list the cache folder", e))?;
    Ok(listing
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{read_entry, sign, verify, write_entry, Manifest, FORMAT};

    const KEY: &str = "ab12";
    const SIGNING_KEY: &[u8] = b"signing key";

    /// An entry archive for KEY, with no artifacts and `log`, and its tag.
    fn entry(dir: &Path, log: &str) -> (PathBuf, String) {
        let manifest = Manifest {
            format: FORMAT,
            key: KEY.into(),
            module: "build".into(),
            exit_code: 0,
            duration_ms: 5,
            outputs: BTreeMap::new(),
            artifacts: Vec::new(),
            log: log.into(),
        };
        let out = dir.join(format!("entry-{}.tar", log.len()));
        write_entry(&manifest, &|_| unreachable!(), &out).unwrap();
        let tag = sign(SIGNING_KEY, &out).unwrap();
        (out, tag)
    }

    #[tokio::test]
    async fn put_then_get_returns_the_archive_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("cache"), 1 << 30).unwrap();
        assert!(store.get(KEY).await.unwrap().is_none());
        assert!(!store.contains(KEY).await.unwrap());
        let (archive, tag) = entry(dir.path(), "hello\n");
        store.put(KEY, &archive, Some(&tag), 5).await.unwrap();
        assert!(store.contains(KEY).await.unwrap());
        let fetched = store.get(KEY).await.unwrap().unwrap();
        assert_eq!(
            fs::read(fetched.path()).unwrap(),
            fs::read(&archive).unwrap()
        );
        assert_eq!(fetched.tag.as_deref(), Some(tag.as_str()));
        assert!(store
            .inner
            .archive_path(KEY)
            .starts_with(dir.path().join("cache/ab")));
        // Unsigned replaces signed, tag and all.
        store.put(KEY, &archive, None, 5).await.unwrap();
        assert_eq!(store.get(KEY).await.unwrap().unwrap().tag, None);
        let path = fetched.path().to_owned();
        drop(fetched);
        assert!(!path.exists(), "the fetched copy goes with its owner");
        assert!(store.describe().contains("cache"));
        assert!(store.get("../etc").await.is_err());
    }

    #[test]
    fn concurrent_puts_of_one_key_leave_one_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("cache"), 1 << 30).unwrap();
        let entries: Vec<_> = (0..8)
            .map(|i| entry(dir.path(), &"line\n".repeat(1 + i * 2000)))
            .collect();
        std::thread::scope(|scope| {
            for (archive, tag) in &entries {
                let inner = &store.inner;
                scope.spawn(move || {
                    for _ in 0..20 {
                        inner.put(KEY, archive, Some(tag)).unwrap();
                    }
                });
            }
            // A reader meanwhile sees whole, matching pairs only.
            let inner = &store.inner;
            scope.spawn(move || {
                for _ in 0..200 {
                    if let Some(fetched) = inner.get(KEY).unwrap() {
                        let tag = fetched.tag.as_deref().unwrap();
                        assert!(verify(SIGNING_KEY, fetched.path(), tag).unwrap());
                    }
                }
            });
        });
        let fetched = store.inner.get(KEY).unwrap().unwrap();
        assert!(verify(SIGNING_KEY, fetched.path(), fetched.tag.as_deref().unwrap()).unwrap());
        read_entry(fetched.path(), KEY, &|_| unreachable!()).unwrap();
        let shard: Vec<_> = read_dir(&store.inner.shard(KEY)).unwrap();
        let names: Vec<_> = shard
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(
            names.len(),
            3,
            "the archive, its tag and the fetched copy: {names:?}"
        );
    }

    /// Sets an entry's last use to `seconds` after the epoch.
    fn used_at(store: &LocalStore, key: &str, seconds: u64) {
        let file = fs::File::open(store.inner.archive_path(key)).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
            .unwrap();
    }

    #[tokio::test]
    async fn eviction_removes_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("blob.tar");
        fs::write(&archive, vec![0u8; 1000]).unwrap();
        let store = LocalStore::open(dir.path().join("cache"), 2500).unwrap();
        store.put("aa01", &archive, None, 0).await.unwrap();
        store.put("bb02", &archive, None, 0).await.unwrap();
        used_at(&store, "aa01", 1_000);
        used_at(&store, "bb02", 2_000);
        // A hit makes aa01 the most recently used.
        assert!(store.get("aa01").await.unwrap().is_some());
        store.put("cc03", &archive, None, 0).await.unwrap();
        assert!(store.contains("aa01").await.unwrap());
        assert!(!store.contains("bb02").await.unwrap(), "the oldest goes");
        assert!(store.contains("cc03").await.unwrap());
        let (_, total) = store.inner.scan().unwrap();
        assert_eq!(total, 2000);
    }

    #[test]
    fn stale_temporary_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), 10).unwrap();
        let shard = dir.path().join("ab");
        fs::create_dir_all(&shard).unwrap();
        let stale = shard.join(".muster-put-dead");
        let fresh = shard.join(".muster-put-live");
        fs::write(&stale, b"x").unwrap();
        fs::write(&fresh, b"y").unwrap();
        fs::File::open(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMP * 2)
            .unwrap();
        let (_, total) = store.inner.scan().unwrap();
        assert!(!stale.exists() && fresh.exists());
        assert_eq!(total, 1);
    }

    #[tokio::test]
    async fn a_truncated_or_tampered_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("cache"), 1 << 30).unwrap();
        let (archive, tag) = entry(dir.path(), "hello\n");
        store.put(KEY, &archive, Some(&tag), 5).await.unwrap();
        let stored = store.inner.archive_path(KEY);
        let mut bytes = fs::read(&stored).unwrap();

        // Tampered: the signature no longer matches.
        let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
        bytes[at] = b'j';
        fs::write(&stored, &bytes).unwrap();
        let fetched = store.get(KEY).await.unwrap().unwrap();
        assert!(!verify(SIGNING_KEY, fetched.path(), fetched.tag.as_deref().unwrap()).unwrap());

        // Truncated: unreadable, a miss, even unsigned.
        fs::write(&stored, &bytes[..700]).unwrap();
        let fetched = store.get(KEY).await.unwrap().unwrap();
        let error = read_entry(fetched.path(), KEY, &|_| unreachable!()).unwrap_err();
        assert!(error.is_miss(), "{error}");
    }
}
