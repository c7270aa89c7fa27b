//! Module log text, beside the journal (never in it): one file per module
//! under the run's `logs/` folder, secrets masked before they are written.
//! Each module gets at most `cap` bytes: when its file would pass half of
//! it, the file becomes `<name>.log.1` (replacing the older one) and a new
//! one begins. Nothing is synced: log text is not worth an fsync, and the
//! writer flushes after every batch so `muster status` sees it live.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use muster_core::mask::Masker;

use crate::error::StoreError;

/// Log bytes kept per module when the caller has no opinion.
pub const DEFAULT_LOG_CAP: u64 = 8 * 1024 * 1024;

/// At most this many files are open at once; the least recently written
/// is closed to open another.
const MAX_OPEN: usize = 64;

/// [`LogFiles::tail`] reads at most this much from the end of each file.
const TAIL_READ: u64 = 1024 * 1024;

/// File names longer than this (before `.log`) are cut and given a hash.
const MAX_NAME_BYTES: usize = 180;

/// The open log files of one run.
#[derive(Debug)]
pub struct LogFiles {
    dir: PathBuf,
    masker: Masker,
    /// Bytes per file: half the cap.
    half: u64,
    open: HashMap<String, LogFile>,
    /// Counts writes, to find the least recently written file.
    tick: u64,
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    used: u64,
}

impl LogFiles {
    /// Log files in `dir` (created if missing), text passed through
    /// `masker`, at most `cap_bytes` kept per module.
    pub fn new(dir: &Path, masker: Masker, cap_bytes: u64) -> Result<LogFiles, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(dir, "create the log folder", e))?;
        Ok(LogFiles {
            dir: dir.to_owned(),
            masker,
            half: (cap_bytes / 2).max(1),
            open: HashMap::new(),
            tick: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `module`'s text, masked. Text longer than half the cap
    /// keeps only its end.
    pub fn write(&mut self, module: &str, text: &str) -> Result<(), StoreError> {
        let masked = self.masker.mask(text);
        let text = last_bytes(&masked, self.half as usize);
        if text.is_empty() {
            return Ok(());
        }
        let half = self.half;
        let file = self.file(module)?;
        if file.size > 0 && file.size + text.len() as u64 > half {
            file.rotate()?;
        }
        file.out
            .write_all(text.as_bytes())
            .map_err(|e| StoreError::io(&file.path, "write the log", e))?;
        file.size += text.len() as u64;
        Ok(())
    }

    /// Hands everything written so far to the operating system.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let mut first = Ok(());
        for file in self.open.values_mut() {
            if let Err(e) = file.out.flush() {
                first = first.and(Err(StoreError::io(&file.path, "write the log", e)));
            }
        }
        first
    }

    /// The file that holds `module`'s log in `dir`.
    pub fn path_of(dir: &Path, module: &str) -> PathBuf {
        dir.join(file_name(module))
    }

    /// The last `max_lines` lines of `module`'s log in `dir` (from the
    /// rotated file too when the current one has fewer), or `None` when it
    /// logged nothing. Reads at most 1 MiB of each file.
    pub fn tail(
        dir: &Path,
        module: &str,
        max_lines: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let path = LogFiles::path_of(dir, module);
        let Some((current, cut)) = read_end(&path)? else {
            return Ok(None);
        };
        let mut bytes = current;
        if !cut && lines_in(&bytes) < max_lines {
            if let Some((older, _)) = read_end(&rotated(&path))? {
                bytes = [older, bytes].concat();
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(max_lines);
        Ok(Some(
            lines[from..].iter().map(|l| (*l).to_owned()).collect(),
        ))
    }

    /// `module`'s whole log as kept (the rotated file, then the current
    /// one), at most its last `max` bytes, and the cursor to follow it
    /// from with [`LogFiles::read_from`]. Empty when it logged nothing.
    pub fn read_whole(
        dir: &Path,
        module: &str,
        max: u64,
    ) -> Result<(String, LogCursor), StoreError> {
        let path = LogFiles::path_of(dir, module);
        let file = file_id(&path);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let current = read_range(&path, len.saturating_sub(max), max)?.unwrap_or_default();
        let cursor = LogCursor {
            file,
            offset: len.saturating_sub(max) + current.len() as u64,
        };
        let mut bytes = current;
        let room = max.saturating_sub(bytes.len() as u64);
        if room > 0 {
            let older = rotated(&path);
            let len = std::fs::metadata(&older).map_or(0, |m| m.len());
            if let Some(older) = read_range(&older, len.saturating_sub(room), room)? {
                bytes = [older, bytes].concat();
            }
        }
        Ok((String::from_utf8_lossy(&bytes).into_owned(), cursor))
    }

    /// `module`'s log text after `cursor` (at most about `max` bytes, cut
    /// after a line when there is more), or word that the file was
    /// rotated since and must be read whole again.
    pub fn read_from(
        dir: &Path,
        module: &str,
        cursor: LogCursor,
        max: u64,
    ) -> Result<LogRead, StoreError> {
        let path = LogFiles::path_of(dir, module);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let file = file_id(&path);
        // A file made since (the first text, or a rotation) is read whole.
        if file != cursor.file || len < cursor.offset {
            return Ok(LogRead::Rotated);
        }
        let mut bytes = read_range(&path, cursor.offset, max)?.unwrap_or_default();
        if cursor.offset + (bytes.len() as u64) < len {
            if let Some(newline) = bytes.iter().rposition(|&b| b == b'\n') {
                bytes.truncate(newline + 1);
            }
        }
        // A character cut at the end is read again next time.
        let whole = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => bytes.len(),
        };
        bytes.truncate(whole);
        let next = LogCursor {
            offset: cursor.offset + bytes.len() as u64,
            ..cursor
        };
        Ok(LogRead::Text(
            String::from_utf8_lossy(&bytes).into_owned(),
            next,
        ))
    }

    /// The open file of `module`, opening it (and closing the least
    /// recently written one) if needed.
    fn file(&mut self, module: &str) -> Result<&mut LogFile, StoreError> {
        self.tick += 1;
        if !self.open.contains_key(module) {
            if self.open.len() >= MAX_OPEN {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, f)| f.used)
                    .map(|(m, _)| m.clone());
                if let Some(mut file) = oldest.and_then(|m| self.open.remove(&m)) {
                    file.out
                        .flush()
                        .map_err(|e| StoreError::io(&file.path, "write the log", e))?;
                }
            }
            let file = LogFile::open(LogFiles::path_of(&self.dir, module))?;
            self.open.insert(module.to_owned(), file);
        }
        let file = self.open.get_mut(module).expect("opened above");
        file.used = self.tick;
        Ok(file)
    }
}

impl LogFile {
    fn open(path: PathBuf) -> Result<LogFile, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, "open the log", e))?;
        let size = file
            .metadata()
            .map_err(|e| StoreError::io(&path, "open the log", e))?
            .len();
        Ok(LogFile {
            path,
            out: BufWriter::new(file),
            size,
            used: 0,
        })
    }

    /// The file becomes `.log.1` and a new one begins.
    fn rotate(&mut self) -> Result<(), StoreError> {
        self.out
            .flush()
            .map_err(|e| StoreError::io(&self.path, "write the log", e))?;
        std::fs::rename(&self.path, rotated(&self.path))
            .map_err(|e| StoreError::io(&self.path, "rotate the log", e))?;
        let fresh = LogFile::open(self.path.clone())?;
        *self = LogFile {
            used: self.used,
            ..fresh
        };
        Ok(())
    }
}

/// Where a reader of a module's log is: which file (rotation makes a new
/// one) and how far into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCursor {
    /// The file's inode; 0 before it exists.
    file: u64,
    offset: u64,
}

/// The inode of `path`, or 0 when there is no file.
fn file_id(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.ino())
}

/// What [`LogFiles::read_from`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRead {
    /// Text after the cursor (maybe empty), and the cursor after it.
    Text(String, LogCursor),
    /// The file was rotated since the cursor was taken.
    Rotated,
}

/// At most `max` bytes of a file from `start`; `None` when there is no file.
fn read_range(path: &Path, start: u64, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, "read the log", e)),
    };
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.take(max).read_to_end(&mut bytes))
        .map_err(|e| StoreError::io(path, "read the log", e))?;
    Ok(Some(bytes))
}

/// `module` as a file name: letters, digits, `.`, `_` and `-` kept, every
/// other byte as `%XX`, so two modules never share a file; a very long
/// name is cut and ends in `~` and a hash of the whole.
pub fn file_name(module: &str) -> String {
    let mut name = String::with_capacity(module.len() + 4);
    for byte in module.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            name.push(byte as char);
        } else {
            let _ = write!(name, "%{byte:02X}");
        }
    }
    if name.len() > MAX_NAME_BYTES {
        // ASCII only, so any cut is on a character boundary.
        name.truncate(MAX_NAME_BYTES - 17);
        let _ = write!(name, "~{:016x}", fnv1a(module.as_bytes()));
    }
    name.push_str(".log");
    name
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The last at most `max` bytes of `text`, starting on a character.
fn last_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn lines_in(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

/// The whole lines among the last [`TAIL_READ`] bytes of a file, and
/// whether that is not all of it; `None` when there is no file.
fn read_end(path: &Path) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, "read the log", e)),
    };
    let read = |file: &mut File| -> std::io::Result<(Vec<u8>, bool)> {
        let len = file.metadata()?.len();
        // One byte before the window, to tell whether it starts a line.
        let start = len.saturating_sub(TAIL_READ + 1);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity((len - start) as usize);
        file.take(TAIL_READ + 1).read_to_end(&mut bytes)?;
        if start == 0 {
            return Ok((bytes, false));
        }
        let first_line = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |n| n + 1);
        bytes.drain(..first_line);
        Ok((bytes, true))
    };
    read(&mut file)
        .map(Some)
        .map_err(|e| StoreError::io(path, "read the log", e))
}

/// 64-bit FNV-1a: a stable hash for cut file names (no need to resist
/// anyone; module ids come from the pipeline file).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_read_whole_then_followed_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = LogFiles::new(dir.path(), Masker::default(), 40).unwrap();
        let (none, at) = LogFiles::read_whole(dir.path(), "m", 1024).unwrap();
        assert_eq!(none, "");
        files.write("m", "one\ntwo\n").unwrap();
        files.flush().unwrap();
        // The first text makes the file: the reader starts over.
        assert_eq!(
            LogFiles::read_from(dir.path(), "m", at, 1024).unwrap(),
            LogRead::Rotated
        );
        let (text, cursor) = LogFiles::read_whole(dir.path(), "m", 1024).unwrap();
        assert_eq!(text, "one\ntwo\n");
        files.write("m", "three\n").unwrap();
        files.flush().unwrap();
        let LogRead::Text(next, cursor) =
            LogFiles::read_from(dir.path(), "m", cursor, 1024).unwrap()
        else {
            panic!("not rotated yet");
        };
        assert_eq!(next, "three\n");
        // Past half the cap (20 bytes) the file rotates.
        files.write("m", "a long line of text\n").unwrap();
        files.flush().unwrap();
        assert_eq!(
            LogFiles::read_from(dir.path(), "m", cursor, 1024).unwrap(),
            LogRead::Rotated
        );
        let (whole, _) = LogFiles::read_whole(dir.path(), "m", 1024).unwrap();
        assert_eq!(whole, "one\ntwo\nthree\na long line of text\n");
        let (quiet, _) = LogFiles::read_whole(dir.path(), "quiet", 1024).unwrap();
        assert_eq!(quiet, "");
    }

    #[test]
    fn module_ids_become_distinct_safe_file_names() {
        let cases = [
            ("build", "build.log"),
            (
                "test[os=linux,arch=x64]",
                "test%5Bos%3Dlinux%2Carch%3Dx64%5D.log",
            ),
            ("a/b", "a%2Fb.log"),
            ("..", "...log"),
            ("50%", "50%25.log"),
            ("é", "%C3%A9.log"),
        ];
        for (module, expected) in cases {
            assert_eq!(file_name(module), expected, "{module}");
        }
        // '%' is encoded too, so an id that looks encoded stays distinct.
        assert_ne!(file_name("a%2Fb"), file_name("a/b"));
        let long = "m".repeat(300);
        let longer = format!("{long}x");
        let (a, b) = (file_name(&long), file_name(&longer));
        assert!(a.len() <= MAX_NAME_BYTES + 4 && a.ends_with(".log"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn text_is_masked_and_tailed() {
        let dir = tempfile::tempdir().unwrap();
        let masker = Masker::new(["hunter22"]);
        let mut logs = LogFiles::new(&dir.path().join("logs"), masker, DEFAULT_LOG_CAP).unwrap();
        logs.write("m[x=1]", "one\ntwo password=hunter22\n")
            .unwrap();
        logs.write("m[x=1]", "three\n").unwrap();
        logs.flush().unwrap();
        let dir = logs.dir().to_owned();
        let tail = LogFiles::tail(&dir, "m[x=1]", 2).unwrap().unwrap();
        assert_eq!(tail, ["two password=***", "three"]);
        let whole = std::fs::read_to_string(LogFiles::path_of(&dir, "m[x=1]")).unwrap();
        assert!(!whole.contains("hunter22"), "{whole}");
        assert_eq!(LogFiles::tail(&dir, "other", 5).unwrap(), None);
    }

    #[test]
    fn a_module_keeps_at_most_its_cap_rotating_at_half() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 1000;
        let mut logs = LogFiles::new(dir.path(), Masker::default(), cap).unwrap();
        for i in 0..200 {
            logs.write("m", &format!("line {i:04}\n")).unwrap();
        }
        logs.flush().unwrap();
        let path = LogFiles::path_of(dir.path(), "m");
        let (current, older) = (
            std::fs::metadata(&path).unwrap().len(),
            std::fs::metadata(rotated(&path)).unwrap().len(),
        );
        assert!(current <= cap / 2 && older <= cap / 2, "{current} {older}");
        // The tail reaches back into the rotated file.
        let tail = LogFiles::tail(dir.path(), "m", 60).unwrap().unwrap();
        assert_eq!(tail.len(), 60);
        assert_eq!(tail.last().unwrap(), "line 0199");
        assert_eq!(tail[0], "line 0140");
        // One text longer than half the cap keeps its end.
        logs.write("big", &"x".repeat(2000)).unwrap();
        logs.flush().unwrap();
        assert_eq!(
            std::fs::metadata(LogFiles::path_of(dir.path(), "big"))
                .unwrap()
                .len(),
            cap / 2
        );
    }

    #[test]
    fn many_modules_share_a_bounded_number_of_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = LogFiles::new(dir.path(), Masker::default(), DEFAULT_LOG_CAP).unwrap();
        for round in 0..2 {
            for m in 0..(MAX_OPEN * 2) {
                logs.write(&format!("m{m}"), &format!("round {round}\n"))
                    .unwrap();
            }
        }
        assert!(logs.open.len() <= MAX_OPEN);
        logs.flush().unwrap();
        let tail = LogFiles::tail(dir.path(), "m0", 10).unwrap().unwrap();
        assert_eq!(tail, ["round 0", "round 1"]);
    }

    #[test]
    fn a_tail_of_a_large_file_reads_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = LogFiles::path_of(dir.path(), "m");
        let line = format!("{}\n", "y".repeat(99));
        std::fs::write(&path, line.repeat(20_000)).unwrap();
        let tail = LogFiles::tail(dir.path(), "m", 100_000).unwrap().unwrap();
        // 1 MiB of 100-byte lines, the first one partial and dropped.
        assert_eq!(tail.len(), (TAIL_READ / 100) as usize);
        assert!(tail.iter().all(|l| l.len() == 99));
    }
}
