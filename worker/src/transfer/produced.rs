//! Finding the files a module produced: its artifact patterns are globs
//! walked below the module's cwd, and what they match is checked before it
//! becomes an artifact. Kept apart from the transfers because it is pure
//! file-system work (blocking, run from `spawn_blocking`) with its own
//! safety rule: only regular files inside the cwd are artifacts; a link is
//! followed only to a regular file inside the cwd, links to folders never.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use globset::GlobMatcher;

/// The hub's bound on a report's artifact list, shared through core.
pub use muster_core::wire::limits::{listed_bytes, MAX_LISTED_BYTES};

/// A file a module produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Relative to the module's cwd, `/`-separated, normalised: the
    /// artifact's name for its consumers.
    pub path: String,
    /// The file to read: the path itself, or for a link the file it leads
    /// to (inside the cwd).
    pub file: PathBuf,
}

/// Why the files a module produced could not be listed as its artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ProducedError {
    #[error(
        "its artifact patterns matched {files} files, too many for one report (listing them takes \
         {listed} KiB of the {allowed} KiB allowed): pack them into one archive in the command \
         (e.g. `tar czf out.tar.gz out/`) and produce that"
    )]
    TooMany {
        files: usize,
        listed: usize,
        allowed: usize,
    },
    #[error("artifact pattern {pattern:?} {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error(
        "artifact pattern {pattern:?} matched no file in {} (a folder is not an artifact: \
         `dir/**` names its files; links to folders are not followed; a pattern that may \
         match nothing starts with `?`)",
        cwd.display()
    )]
    NoMatch { pattern: String, cwd: PathBuf },
    #[error("artifact {path} points outside the module's folder (to {})", target.display())]
    OutsideCwd { path: String, target: PathBuf },
    #[error("artifact {path} is a link to {what}; only regular files are artifacts")]
    NotAFile { path: String, what: &'static str },
    /// A local file operation failed; `doing` says on what and why.
    #[error("{doing} {}: {error}", file.display())]
    Io {
        doing: String,
        file: PathBuf,
        error: io::Error,
    },
}

/// Finds the regular files under `cwd` that `patterns` name, each its own
/// artifact at its own relative path, sorted by path. Patterns are relative
/// globs (`target/release/app`, `dist/**/*.tar.gz`, `*` not crossing `/`);
/// one starting with `?` may match nothing. Blocking: call it from
/// `spawn_blocking`.
pub fn find_produced(cwd: &Path, patterns: &[String]) -> Result<Vec<Found>, ProducedError> {
    let real_cwd = cwd.canonicalize().map_err(|error| ProducedError::Io {
        doing: "could not look for artifacts in".into(),
        file: cwd.to_owned(),
        error,
    })?;
    let mut found = BTreeMap::new();
    for raw in patterns {
        let pattern = Pattern::parse(raw)?;
        let mut matched = 0;
        for (path, file) in pattern.walk(cwd)? {
            matched += 1;
            let file = match file {
                Entry::File(file) => file,
                Entry::Link(link) => follow(&real_cwd, &link, &path)?,
            };
            found.insert(path.clone(), Found { path, file });
        }
        if matched == 0 && !pattern.optional {
            return Err(ProducedError::NoMatch {
                pattern: raw.clone(),
                cwd: cwd.to_owned(),
            });
        }
    }
    let listed: usize = found.keys().map(|path| listed_bytes(path)).sum();
    if listed > MAX_LISTED_BYTES {
        return Err(ProducedError::TooMany {
            files: found.len(),
            listed: listed.div_ceil(1024),
            allowed: MAX_LISTED_BYTES / 1024,
        });
    }
    Ok(found.into_values().collect())
}

/// A parsed artifact pattern.
struct Pattern {
    raw: String,
    optional: bool,
    matcher: GlobMatcher,
    /// The leading folders without glob characters: the walk starts there.
    base: Vec<String>,
    /// How many levels below `base` a match can be; `None` with `**`.
    depth: Option<usize>,
}

/// A walked path that matched: a regular file, or a link to resolve.
enum Entry {
    File(PathBuf),
    Link(PathBuf),
}

impl Pattern {
    fn parse(raw: &str) -> Result<Pattern, ProducedError> {
        let bad = |reason: &str| ProducedError::BadPattern {
            pattern: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let (optional, glob) = match raw.strip_prefix('?') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if glob.starts_with('/') {
            return Err(bad("is absolute: name files relative to the module's cwd"));
        }
        let parts: Vec<&str> = glob
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        if parts.contains(&"..") {
            return Err(bad("leaves the module's cwd with `..`"));
        }
        if parts.is_empty() {
            return Err(bad("names no file"));
        }
        let normalised = parts.join("/");
        let matcher = muster_core::glob::compile(&normalised)
            .map_err(|e| bad(&format!("is not a valid glob: {}", e.kind())))?;
        let is_literal = |part: &&&str| !part.contains(['*', '?', '[', ']', '{', '}', '\\']);
        let base: Vec<String> = parts[..parts.len() - 1]
            .iter()
            .take_while(is_literal)
            .map(|part| part.to_string())
            .collect();
        let rest = &parts[base.len()..];
        let depth = (!rest.iter().any(|part| part.contains("**"))).then_some(rest.len());
        Ok(Pattern {
            raw: raw.to_owned(),
            optional,
            matcher,
            base,
            depth,
        })
    }

    /// The matching files and links below the pattern's base, walked
    /// without recursion and without entering links.
    fn walk(&self, cwd: &Path) -> Result<Vec<(String, Entry)>, ProducedError> {
        let unreadable = |file: &Path, error| ProducedError::Io {
            doing: format!("artifact pattern {:?}: could not read", self.raw),
            file: file.to_owned(),
            error,
        };
        let mut start = cwd.to_owned();
        for part in &self.base {
            start.push(part);
            match std::fs::symlink_metadata(&start) {
                Ok(meta) if meta.is_dir() => {}
                // Missing, a file, or a link: nothing below it to match.
                Ok(_) => return Ok(Vec::new()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(unreadable(&start, e)),
            }
        }
        let mut matches = Vec::new();
        let mut folders = vec![(start, self.base.join("/"), 0usize)];
        while let Some((folder, relative, level)) = folders.pop() {
            let entries = std::fs::read_dir(&folder).map_err(|e| unreadable(&folder, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| unreadable(&folder, e))?;
                let kind = entry
                    .file_type()
                    .map_err(|e| unreadable(&entry.path(), e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let path = if relative.is_empty() {
                    name.into_owned()
                } else {
                    format!("{relative}/{name}")
                };
                if kind.is_dir() {
                    let deeper = match self.depth {
                        Some(depth) => level + 1 < depth,
                        None => true,
                    };
                    if deeper {
                        folders.push((entry.path(), path, level + 1));
                    }
                    continue;
                }
                if !(kind.is_file() || kind.is_symlink()) || !self.matcher.is_match(&path) {
                    continue;
                }
                if entry.file_name().to_str().is_none() {
                    return Err(ProducedError::BadPattern {
                        pattern: self.raw.clone(),
                        reason: format!("matched {path:?}, whose name is not UTF-8"),
                    });
                }
                let entry = if kind.is_file() {
                    Entry::File(entry.path())
                } else {
                    Entry::Link(entry.path())
                };
                matches.push((path, entry));
            }
        }
        Ok(matches)
    }
}

/// Where a matched link leads, if that is a regular file inside the cwd.
fn follow(real_cwd: &Path, link: &Path, path: &str) -> Result<PathBuf, ProducedError> {
    let target = std::fs::canonicalize(link).map_err(|_| ProducedError::NotAFile {
        path: path.to_owned(),
        what: "nothing (it is broken)",
    })?;
    if !target.starts_with(real_cwd) {
        return Err(ProducedError::OutsideCwd {
            path: path.to_owned(),
            target,
        });
    }
    match std::fs::metadata(&target) {
        Ok(meta) if meta.is_file() => Ok(target),
        Ok(meta) if meta.is_dir() => Err(ProducedError::NotAFile {
            path: path.to_owned(),
            what: "a folder",
        }),
        _ => Err(ProducedError::NotAFile {
            path: path.to_owned(),
            what: "something that is not a regular file",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_pattern(raw: &str, base: &[&str], depth: Option<usize>) {
        let pattern = Pattern::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(pattern.base, base, "{raw}");
        assert_eq!(pattern.depth, depth, "{raw}");
    }

    #[test]
    fn patterns_walk_from_their_literal_folders() {
        check_pattern("target/release/app", &["target", "release"], Some(1));
        check_pattern("./dist//*.tar.gz", &["dist"], Some(1));
        check_pattern("dist/**/*.tar.gz", &["dist"], None);
        check_pattern("?out/*/x", &["out"], Some(2));
        check_pattern("*.txt", &[], Some(1));
    }
}
