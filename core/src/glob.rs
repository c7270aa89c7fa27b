//! The one glob compiler for artifact paths. The pipeline checks
//! `produces` and `consumes` globs with it, the hub picks the artifacts a
//! module consumes with it, and the worker walks for what a module produced
//! with it, so a pattern means the same thing everywhere.
//!
//! The options, for every caller:
//! - `literal_separator(true)`: `*`, `?` and `[...]` never match `/`; only
//!   `**` crosses folders (`dist/*.tar.gz` does not match
//!   `dist/x/app.tar.gz`, `dist/**/*.tar.gz` does).
//! - `backslash_escape(true)`: `\*` is a literal `*`. This is globset's
//!   default on Unix; it is written out so it holds on every platform.
//! - everything else as globset has it: case-sensitive, `{a,b}`
//!   alternates, no empty alternates.
//!
//! `literal_separator` only changes what a glob matches, never whether it
//! compiles, so the pipeline (which used `Glob::new`) accepts exactly the
//! patterns it accepted before.

use std::fmt;
use std::ops::Deref;

use globset::{GlobBuilder, GlobMatcher};

/// A pattern globset refuses. Shows as globset's own message, which names
/// the pattern: `error parsing glob 'dist/[a': unclosed character class;
/// missing ']'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct GlobError(#[from] globset::Error);

impl GlobError {
    /// What is wrong, without the pattern, for messages that name the
    /// pattern themselves.
    pub fn kind(&self) -> &globset::ErrorKind {
        self.0.kind()
    }
}

/// Compiles `pattern` with the options above.
pub fn compile(pattern: &str) -> Result<GlobMatcher, GlobError> {
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()?;
    Ok(glob.compile_matcher())
}

/// A glob over artifact paths, compiled once, with the text it was written
/// as. It dereferences to that text, so code that reads the pattern as a
/// `&str` (to print it, or `Option::as_deref`) needs no change.
#[derive(Debug, Clone)]
pub struct ArtifactGlob {
    text: String,
    matcher: GlobMatcher,
}

impl ArtifactGlob {
    /// Compiles `pattern` (see [`compile`]).
    pub fn new(pattern: &str) -> Result<ArtifactGlob, GlobError> {
        Ok(ArtifactGlob {
            text: pattern.to_owned(),
            matcher: compile(pattern)?,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `path` (relative, `/`-separated) matches.
    pub fn is_match(&self, path: &str) -> bool {
        self.matcher.is_match(path)
    }
}

/// Two globs are the same when they were written the same: the options
/// are fixed, so the text decides what matches.
impl PartialEq for ArtifactGlob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for ArtifactGlob {}

impl Deref for ArtifactGlob {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ArtifactGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pattern` matches exactly the paths in `yes` and none in `no`.
    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        let glob = ArtifactGlob::new(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        for path in yes {
            assert!(glob.is_match(path), "{pattern} should match {path}");
        }
        for path in no {
            assert!(!glob.is_match(path), "{pattern} should not match {path}");
        }
    }

    #[test]
    fn stars_stay_in_a_folder_and_double_stars_cross() {
        check("dist/*.tar.gz", &["dist/a.tar.gz"], &["dist/x/a.tar.gz"]);
        check(
            "dist/**/*.tar.gz",
            &["dist/a.tar.gz", "dist/x/y/a.tar.gz"],
            &["other/a.tar.gz"],
        );
        check("site/**", &["site/a.html", "site/x/b.css"], &["sites/a"]);
        check("a?c", &["abc"], &["a/c"]);
        check("[ab]/x", &["a/x"], &["/x", "c/x"]);
        check("{x,y}.txt", &["x.txt", "y.txt"], &["z.txt"]);
        check("Build", &["Build"], &["build"]);
    }

    #[test]
    fn backslash_escapes() {
        check(r"lit\*", &["lit*"], &["litx"]);
        let error = compile(r"dangling\").unwrap_err();
        assert_eq!(error.kind(), &globset::ErrorKind::DanglingEscape);
    }

    #[test]
    fn errors_name_the_pattern_and_the_fault() {
        let error = ArtifactGlob::new("dist/[a").unwrap_err();
        assert_eq!(
            error.to_string(),
            "error parsing glob 'dist/[a': unclosed character class; missing ']'"
        );
        assert_eq!(error.kind(), &globset::ErrorKind::UnclosedClass);
        assert!(compile("{a,b").is_err());
    }

    #[test]
    fn reads_as_its_text() {
        let glob = ArtifactGlob::new("site/*.html").unwrap();
        assert_eq!(glob.as_str(), "site/*.html");
        assert_eq!(Some(&glob).map(|g| &**g), Some("site/*.html"));
        assert_eq!(format!("docs:{glob}"), "docs:site/*.html");
        assert_eq!(glob, ArtifactGlob::new("site/*.html").unwrap());
    }
}
